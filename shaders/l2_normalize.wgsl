// L2 normalisation over the last axis, x / max(‖x‖, 1e-12), as F.normalize (M1: both
// embeddings before the logits). One workgroup per row (the grid folds into y past 65,535
// rows); the forward keeps each row's norm for the backward.

struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
// per row: ‖x‖
@group(0) @binding(3) var<storage, read_write> norms: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const WG: u32 = 128u;
// F.normalize's default eps: the norm is clamped from below.
const MIN_NORM: f32 = 1e-12;

var<workgroup> partial: array<f32, WG>;

// Sum of `value` over the workgroup's lanes (every lane gets it).
fn workgroup_sum(lane: u32, value: f32) -> f32 {
    partial[lane] = value;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if lane < stride {
            partial[lane] += partial[lane + stride];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(WG)
fn l2_normalize_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = workgroup_index(wid, nwg);
    if row >= params.rows {
        return;
    }
    let lane = lid.x;
    let base = row * params.cols;
    var sq = 0.0;
    for (var c = lane; c < params.cols; c += WG) {
        sq = fma(x[base + c], x[base + c], sq);
    }
    let norm = sqrt(workgroup_sum(lane, sq));
    let denom = max(norm, MIN_NORM);
    for (var c = lane; c < params.cols; c += WG) {
        out[base + c] = x[base + c] / denom;
    }
    if lane == 0u {
        norms[row] = norm;
    }
}

// Above the clamp, dx = (dy − x·(x·dy)/‖x‖²) / ‖x‖; below it the norm is a constant 1e-12
// (the clamp's gradient is zero), so dx = dy / 1e-12.
@compute @workgroup_size(WG)
fn l2_normalize_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = workgroup_index(wid, nwg);
    if row >= params.rows {
        return;
    }
    let lane = lid.x;
    let base = row * params.cols;
    let norm = norms[row];
    var dot = 0.0;
    for (var c = lane; c < params.cols; c += WG) {
        dot = fma(x[base + c], grad[base + c], dot);
    }
    dot = workgroup_sum(lane, dot);
    let clamped = norm <= MIN_NORM;
    let denom = max(norm, MIN_NORM);
    let projection = select(dot / (denom * denom), 0.0, clamped);
    for (var c = lane; c < params.cols; c += WG) {
        out[base + c] = (grad[base + c] - x[base + c] * projection) / denom;
    }
}
