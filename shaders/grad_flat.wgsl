// Gradients into the flat gradient buffer: accumulate one parameter's gradient at its offset
// (gradient accumulation; the first store is a buffer copy, src/train/optimizer.rs), and the
// global L2 norm for clipping, in two passes (no float atomics in WGSL).

struct Params {
    offset: u32,
    len: u32,
    // norm_final: the clip threshold; partial count in `parts`.
    max_norm: f32,
    parts: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> flat: array<f32>;
@group(0) @binding(2) var<storage, read> piece: array<f32>;
@group(0) @binding(3) var<storage, read_write> partial: array<f32>;
// [0] = total norm, [1] = clip coefficient min(1, max_norm / (norm + 1e-6)).
@group(0) @binding(4) var<storage, read_write> clip: array<f32>;

const WG: u32 = 256u;

var<workgroup> sums: array<f32, WG>;

@compute @workgroup_size(WG)
fn accumulate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid, WG);
    if i < params.len {
        flat[params.offset + i] += piece[i];
    }
}

// Averaging accumulated micro-batches: flat[offset + i] *= factor (carried in max_norm).
@compute @workgroup_size(WG)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid, WG);
    if i < params.len {
        flat[params.offset + i] *= params.max_norm;
    }
}

fn reduce_workgroup(lane: u32, value: f32) -> f32 {
    sums[lane] = value;
    workgroupBarrier();
    for (var width = WG / 2u; width > 0u; width /= 2u) {
        if lane < width {
            sums[lane] += sums[lane + width];
        }
        workgroupBarrier();
    }
    return sums[0];
}

// Workgroup w sums the squares of elements offset + w·WG + lane, stepping by parts·WG (one
// binding-sized piece of the flat gradients per dispatch).
@compute @workgroup_size(WG)
fn norm_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    var acc = 0.0;
    for (var i = wid.x * WG + lid.x; i < params.len; i += params.parts * WG) {
        let g = flat[params.offset + i];
        acc += g * g;
    }
    let total = reduce_workgroup(lid.x, acc);
    if lid.x == 0u {
        partial[wid.x] = total;
    }
}

@compute @workgroup_size(WG)
fn norm_final(@builtin(local_invocation_id) lid: vec3<u32>) {
    var acc = 0.0;
    for (var i = lid.x; i < params.parts; i += WG) {
        acc += partial[i];
    }
    let total = reduce_workgroup(lid.x, acc);
    if lid.x == 0u {
        let norm = sqrt(total);
        clip[0] = norm;
        clip[1] = min(1.0, params.max_norm / (norm + 1e-6));
    }
}
