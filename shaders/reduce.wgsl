// Sums over one axis of a row-major tensor viewed as [outer, n, inner], times a factor (1 for a
// sum, 1/n for a mean), and the broadcast that is its backward.

struct Params {
    outer: u32,
    n: u32,
    inner: u32,
    factor: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;

var<workgroup> partial: array<f32, WG>;

// One invocation per output element (many outputs, short axis): reads coalesce along inner.
@compute @workgroup_size(WG)
fn sum_axis(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let o = linear_index(wid, nwg, lid, WG);
    if o >= params.outer * params.inner {
        return;
    }
    let base = (o / params.inner) * params.n * params.inner + o % params.inner;
    var even = 0.0;
    var odd = 0.0;
    var j = 0u;
    for (; j + 1u < params.n; j += 2u) {
        even += x[base + j * params.inner];
        odd += x[base + (j + 1u) * params.inner];
    }
    if j < params.n {
        even += x[base + j * params.inner];
    }
    out[o] = params.factor * (even + odd);
}

// One workgroup per output element (few outputs, long axis): a strided sum per lane, then a tree.
@compute @workgroup_size(WG)
fn sum_axis_wide(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let o = workgroup_index(wid, nwg);
    if o >= params.outer * params.inner {
        return;
    }
    let base = (o / params.inner) * params.n * params.inner + o % params.inner;
    var acc = 0.0;
    for (var j = lid.x; j < params.n; j += WG) {
        acc += x[base + j * params.inner];
    }
    partial[lid.x] = acc;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if lid.x < half {
            partial[lid.x] += partial[lid.x + half];
        }
        workgroupBarrier();
    }
    if lid.x == 0u {
        out[o] = params.factor * partial[0];
    }
}

// Backward: out[o, j, i] = factor * x[o, i] for every j.
@compute @workgroup_size(WG)
fn broadcast_axis(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = linear_index(wid, nwg, lid, WG);
    if e >= params.outer * params.n * params.inner {
        return;
    }
    let o = e / (params.n * params.inner);
    let i = e % params.inner;
    out[e] = params.factor * x[o * params.inner + i];
}
