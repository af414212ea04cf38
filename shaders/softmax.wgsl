// Softmax of scale·x over the last axis of [rows, cols], one workgroup per row. Causal: x is
// [.., T, T] and in row r (query i = r % T) keys j > i get probability 0 (CLIP's text mask).
// Backward: dx = scale · y ∘ (dy − Σ_j dy_j y_j).

struct Params {
    rows: u32,
    cols: u32,
    // 1: causal mask
    causal: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WG: u32 = 64u;

var<workgroup> partial: array<f32, WG>;

fn row_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

// Columns of row `row` that take part: all, or 0..=i under the causal mask.
fn live_cols(row: u32) -> u32 {
    if params.causal != 0u {
        return min(row % params.cols + 1u, params.cols);
    }
    return params.cols;
}

fn reduce_max(lane: u32, value: f32) -> f32 {
    partial[lane] = value;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if lane < half {
            partial[lane] = max(partial[lane], partial[lane + half]);
        }
        workgroupBarrier();
    }
    let result = partial[0];
    workgroupBarrier();
    return result;
}

fn reduce_sum(lane: u32, value: f32) -> f32 {
    partial[lane] = value;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if lane < half {
            partial[lane] += partial[lane + half];
        }
        workgroupBarrier();
    }
    let result = partial[0];
    workgroupBarrier();
    return result;
}

@compute @workgroup_size(WG)
fn softmax_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = row_index(wid, nwg);
    if row >= params.rows {
        return;
    }
    let base = row * params.cols;
    let live = live_cols(row);
    var local_max = -3.402823e38;
    for (var j = lid.x; j < live; j += WG) {
        local_max = max(local_max, params.scale * x[base + j]);
    }
    let row_max = reduce_max(lid.x, local_max);
    var local_sum = 0.0;
    for (var j = lid.x; j < live; j += WG) {
        local_sum += exp(params.scale * x[base + j] - row_max);
    }
    let inv_sum = 1.0 / reduce_sum(lid.x, local_sum);
    for (var j = lid.x; j < params.cols; j += WG) {
        var y = 0.0;
        if j < live {
            y = exp(params.scale * x[base + j] - row_max) * inv_sum;
        }
        out[base + j] = y;
    }
}

// x holds the forward output y here.
@compute @workgroup_size(WG)
fn softmax_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = row_index(wid, nwg);
    if row >= params.rows {
        return;
    }
    let base = row * params.cols;
    var local_dot = 0.0;
    for (var j = lid.x; j < params.cols; j += WG) {
        local_dot += dy[base + j] * x[base + j];
    }
    let dot = reduce_sum(lid.x, local_dot);
    for (var j = lid.x; j < params.cols; j += WG) {
        out[base + j] = params.scale * x[base + j] * (dy[base + j] - dot);
    }
}
