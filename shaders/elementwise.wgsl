// Elementwise arithmetic and the row sum that reverses broadcasting.
// b is either as long as a or broadcast over a's leading dims: b[i % b_len].

struct Params {
    len: u32,
    b_len: u32,
    rows: u32,
    cols: u32,
    factor: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
// The same bindings four values at a time, for the `*4` entries (lengths multiples of 4; callers
// bind by either name). Lavapipe loads a storage value with a loop over the SIMD lanes, so a
// vec4 per load is close to four times fewer loads; src/ops/elementwise.rs picks these
// wherever the lengths allow.
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out4: array<vec4<f32>>;

const WG: u32 = 256u;
// Rows a `sum_rows_partial4` invocation sums.
const SUM_CHUNK: u32 = 32u;

// The vec4 of b under vec4 i of a: b repeats every b_len / 4 vec4s (no division when b is as
// long as a: a vector integer division is a loop over the lanes too).
fn b4_at(i: u32) -> vec4<f32> {
    if params.b_len == params.len {
        return b4[i];
    }
    return b4[i % (params.b_len / 4u)];
}

// add, four values per invocation.
@compute @workgroup_size(WG)
fn add4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid, WG);
    if i >= params.len / 4u {
        return;
    }
    out4[i] = a4[i] + b4_at(i);
}

// mul, four values per invocation.
@compute @workgroup_size(WG)
fn mul4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid, WG);
    if i >= params.len / 4u {
        return;
    }
    out4[i] = a4[i] * b4_at(i);
}

// The first pass of a column sum of [rows, cols] (cols a multiple of 4): out4[chunk, q] = the
// sum of column quad q over rows chunk·SUM_CHUNK.. (SUM_CHUNK of them, fewer in the last), one
// invocation per (chunk, quad). `sum_rows` then adds the chunks. One invocation per column
// alone left a bias gradient (192 columns) to one workgroup, so to one core of a CPU driver.
@compute @workgroup_size(WG)
fn sum_rows_partial4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = linear_index(wid, nwg, lid, WG);
    let quads = params.cols / 4u;
    let chunks = (params.rows + SUM_CHUNK - 1u) / SUM_CHUNK;
    if e >= chunks * quads {
        return;
    }
    let first = (e / quads) * SUM_CHUNK;
    let end = min(first + SUM_CHUNK, params.rows);
    let q = e % quads;
    var acc = vec4(0.0);
    for (var row = first; row < end; row++) {
        acc += a4[row * quads + q];
    }
    out4[e] = acc;
}

// out[i] = a[i] + b[i % b_len]
@compute @workgroup_size(WG)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid, WG);
    if i >= params.len {
        return;
    }
    out[i] = a[i] + b[i % params.b_len];
}

// out[i] = a[i] * b[i % b_len]
@compute @workgroup_size(WG)
fn mul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid, WG);
    if i >= params.len {
        return;
    }
    out[i] = a[i] * b[i % params.b_len];
}

// out[i] = factor * a[i]
@compute @workgroup_size(WG)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid, WG);
    if i >= params.len {
        return;
    }
    out[i] = params.factor * a[i];
}

// out[col] = sum over rows of a[row, col]; one invocation per column (columns are contiguous
// across invocations, so reads coalesce). Accumulates in f32 pairs to limit rounding.
@compute @workgroup_size(WG)
fn sum_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let col = linear_index(wid, nwg, lid, WG);
    if col >= params.cols {
        return;
    }
    var even = 0.0;
    var odd = 0.0;
    var row = 0u;
    for (; row + 1u < params.rows; row += 2u) {
        even += a[row * params.cols + col];
        odd += a[(row + 1u) * params.cols + col];
    }
    if row < params.rows {
        even += a[row * params.cols + col];
    }
    out[col] = even + odd;
}
