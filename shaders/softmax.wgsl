// Softmax of scale·x over the last axis of [rows, cols], one invocation per row (a CPU driver
// such as lavapipe runs a workgroup as SIMD lanes and pays dearly for the barriers of a
// workgroup-per-row reduction; rows are many, so a GPU still gets thousands of invocations).
// Only the first `keys` columns take part (the rest are padding and get probability 0);
// causal: x is [.., cols, cols] and in row r (query i = r % cols) keys j > i get 0 too
// (CLIP's text mask). Backward: dx = scale · y ∘ (dy − Σ_j dy_j y_j).

struct Params {
    rows: u32,
    cols: u32,
    // 1: causal mask
    causal: u32,
    scale: f32,
    // columns that take part (≤ cols)
    keys: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
// The same bindings four columns at a time, for the `*4` entries (cols a multiple of 4;
// callers bind by either name): lavapipe loads a storage value with a loop over the SIMD
// lanes, so a vec4 per load is close to four times fewer loads.
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> dy4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out4: array<vec4<f32>>;

const WG: u32 = 64u;
const LOWEST: f32 = -3.402823e38;

// Columns of row `row` that take part: the keys, or 0..=i of them under the causal mask.
fn live_cols(row: u32) -> u32 {
    if params.causal != 0u {
        return min(row % params.cols + 1u, params.keys);
    }
    return params.keys;
}

@compute @workgroup_size(WG)
fn softmax_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = linear_index(wid, nwg, lid, WG);
    if row >= params.rows {
        return;
    }
    let base = row * params.cols;
    let live = live_cols(row);
    var row_max = LOWEST;
    for (var j = 0u; j < live; j++) {
        row_max = max(row_max, params.scale * x[base + j]);
    }
    var sum = 0.0;
    for (var j = 0u; j < live; j++) {
        sum += exp(params.scale * x[base + j] - row_max);
    }
    let inv_sum = 1.0 / sum;
    for (var j = 0u; j < params.cols; j++) {
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
    let row = linear_index(wid, nwg, lid, WG);
    if row >= params.rows {
        return;
    }
    let base = row * params.cols;
    var dot = 0.0;
    for (var j = 0u; j < params.cols; j++) {
        dot = fma(dy[base + j], x[base + j], dot);
    }
    for (var j = 0u; j < params.cols; j++) {
        out[base + j] = params.scale * x[base + j] * (dy[base + j] - dot);
    }
}

// Which of columns 4q..4q+3 take part, of the first `live`.
fn live4(q: u32, live: u32) -> vec4<bool> {
    return vec4(4u * q) + vec4(0u, 1u, 2u, 3u) < vec4(live);
}

// softmax_forward, four columns per load.
@compute @workgroup_size(WG)
fn softmax_forward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = linear_index(wid, nwg, lid, WG);
    if row >= params.rows {
        return;
    }
    let quads = params.cols / 4u;
    let base = row * quads;
    let live = live_cols(row);
    let used = (live + 3u) / 4u;
    var max4 = vec4(LOWEST);
    for (var q = 0u; q < used; q++) {
        max4 = max(max4, select(vec4(LOWEST), params.scale * x4[base + q], live4(q, live)));
    }
    let row_max = max(max(max4.x, max4.y), max(max4.z, max4.w));
    var sum4 = vec4(0.0);
    for (var q = 0u; q < used; q++) {
        let e = exp(params.scale * x4[base + q] - row_max);
        sum4 += select(vec4(0.0), e, live4(q, live));
    }
    let inv_sum = 1.0 / ((sum4.x + sum4.y) + (sum4.z + sum4.w));
    for (var q = 0u; q < quads; q++) {
        let y = exp(params.scale * x4[base + q] - row_max) * inv_sum;
        out4[base + q] = select(vec4(0.0), y, live4(q, live));
    }
}

// softmax_backward, four columns per load.
@compute @workgroup_size(WG)
fn softmax_backward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = linear_index(wid, nwg, lid, WG);
    if row >= params.rows {
        return;
    }
    let quads = params.cols / 4u;
    let base = row * quads;
    var dot4 = vec4(0.0);
    for (var q = 0u; q < quads; q++) {
        dot4 = fma(dy4[base + q], x4[base + q], dot4);
    }
    let dot = (dot4.x + dot4.y) + (dot4.z + dot4.w);
    for (var q = 0u; q < quads; q++) {
        out4[base + q] = params.scale * x4[base + q] * (dy4[base + q] - dot);
    }
}
