// LayerNorm over the last axis (M1: pre-norm blocks, ln_pre, ln_post, ln_final), as PyTorch:
// y = (x - mean) / sqrt(var + eps) · gain + bias with the biased variance.
// Row kernels run one invocation per row (the grid folds into y past 65,535 workgroups); the
// parameter gradients are column sums in two passes (row chunks here, then elementwise
// sum_rows), since WGSL has no float atomics.

struct Params {
    rows: u32,
    cols: u32,
    // rows per chunk of the parameter-gradient partial sums
    chunk_rows: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gain: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> grad: array<f32>;
// per row: mean, 1/sqrt(var + eps); written by the forward, read by the backward
@group(0) @binding(5) var<storage, read_write> stats: array<f32>;
// y (forward) or dx (backward_input)
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
// [chunks, cols] partial sums of the gain and bias gradients (backward_params)
@group(0) @binding(7) var<storage, read_write> partial_gain: array<f32>;
@group(0) @binding(8) var<storage, read_write> partial_bias: array<f32>;
// The same bindings four columns at a time, for the `*4` entries (cols a multiple of 4; callers
// bind by either name): lavapipe loads a storage value with a loop over the SIMD lanes, so a
// vec4 per load is close to four times fewer loads (src/ops/layer_norm.rs picks these wherever
// cols allows).
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> gain4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> grad4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> out4: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> partial_gain4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> partial_bias4: array<vec4<f32>>;

const WG: u32 = 64u;

// One invocation per row: a CPU driver (lavapipe) runs a workgroup as SIMD lanes and pays
// dearly for barriers, so a row's reductions stay in one invocation (measured 7x faster
// than a workgroup-per-row tree at 4160x192 there). Rows are many (tokens x batch), so a
// GPU still gets thousands of invocations.
@compute @workgroup_size(WG)
fn layer_norm_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = linear_index(wid, nwg, lid, WG);
    if row >= params.rows {
        return;
    }
    let base = row * params.cols;
    let n = f32(params.cols);
    var sum = 0.0;
    for (var c = 0u; c < params.cols; c++) {
        sum += x[base + c];
    }
    let mean = sum / n;
    // Two passes (mean, then squared deviations) as PyTorch: no cancellation for large means.
    var sq = 0.0;
    for (var c = 0u; c < params.cols; c++) {
        let d = x[base + c] - mean;
        sq = fma(d, d, sq);
    }
    let rstd = 1.0 / sqrt(sq / n + params.eps);
    for (var c = 0u; c < params.cols; c++) {
        out[base + c] = fma((x[base + c] - mean) * rstd, gain[c], bias[c]);
    }
    stats[2u * row] = mean;
    stats[2u * row + 1u] = rstd;
}

// dx = rstd · (g - mean(g) - x̂ · mean(g · x̂)) with g = dy · gain, x̂ = (x - mean) · rstd.
@compute @workgroup_size(WG)
fn layer_norm_backward_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = linear_index(wid, nwg, lid, WG);
    if row >= params.rows {
        return;
    }
    let base = row * params.cols;
    let n = f32(params.cols);
    let mean = stats[2u * row];
    let rstd = stats[2u * row + 1u];
    var sum_g = 0.0;
    var sum_gx = 0.0;
    for (var c = 0u; c < params.cols; c++) {
        let g = grad[base + c] * gain[c];
        sum_g += g;
        sum_gx = fma(g, (x[base + c] - mean) * rstd, sum_gx);
    }
    let mean_g = sum_g / n;
    let mean_gx = sum_gx / n;
    for (var c = 0u; c < params.cols; c++) {
        let g = grad[base + c] * gain[c];
        let xhat = (x[base + c] - mean) * rstd;
        out[base + c] = rstd * (g - mean_g - xhat * mean_gx);
    }
}

// Partial column sums over chunk `wid.y` of rows: partial_gain = Σ dy · x̂, partial_bias = Σ dy,
// both [chunks, cols]. One invocation per (column, chunk).
@compute @workgroup_size(WG)
fn layer_norm_backward_params(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let col = wid.x * WG + lid.x;
    let chunk = wid.y;
    if col >= params.cols {
        return;
    }
    let first = chunk * params.chunk_rows;
    let last = min(first + params.chunk_rows, params.rows);
    var sum_gain = 0.0;
    var sum_bias = 0.0;
    for (var row = first; row < last; row++) {
        let dy = grad[row * params.cols + col];
        let xhat = (x[row * params.cols + col] - stats[2u * row]) * stats[2u * row + 1u];
        sum_gain += dy * xhat;
        sum_bias += dy;
    }
    partial_gain[chunk * params.cols + col] = sum_gain;
    partial_bias[chunk * params.cols + col] = sum_bias;
}

fn sum4(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

// layer_norm_forward, four columns per load.
@compute @workgroup_size(WG)
fn layer_norm_forward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = linear_index(wid, nwg, lid, WG);
    if row >= params.rows {
        return;
    }
    let quads = params.cols / 4u;
    let base = row * quads;
    let n = f32(params.cols);
    var sum = vec4(0.0);
    for (var c = 0u; c < quads; c++) {
        sum += x4[base + c];
    }
    let mean = sum4(sum) / n;
    var sq = vec4(0.0);
    for (var c = 0u; c < quads; c++) {
        let d = x4[base + c] - mean;
        sq = fma(d, d, sq);
    }
    let rstd = 1.0 / sqrt(sum4(sq) / n + params.eps);
    for (var c = 0u; c < quads; c++) {
        out4[base + c] = fma((x4[base + c] - mean) * rstd, gain4[c], bias4[c]);
    }
    stats[2u * row] = mean;
    stats[2u * row + 1u] = rstd;
}

// layer_norm_backward_input, four columns per load.
@compute @workgroup_size(WG)
fn layer_norm_backward_input4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = linear_index(wid, nwg, lid, WG);
    if row >= params.rows {
        return;
    }
    let quads = params.cols / 4u;
    let base = row * quads;
    let n = f32(params.cols);
    let mean = stats[2u * row];
    let rstd = stats[2u * row + 1u];
    var sum_g = vec4(0.0);
    var sum_gx = vec4(0.0);
    for (var c = 0u; c < quads; c++) {
        let g = grad4[base + c] * gain4[c];
        sum_g += g;
        sum_gx = fma(g, (x4[base + c] - mean) * rstd, sum_gx);
    }
    let mean_g = sum4(sum_g) / n;
    let mean_gx = sum4(sum_gx) / n;
    for (var c = 0u; c < quads; c++) {
        let g = grad4[base + c] * gain4[c];
        let xhat = (x4[base + c] - mean) * rstd;
        out4[base + c] = rstd * (g - mean_g - xhat * mean_gx);
    }
}

// layer_norm_backward_params, one invocation per (column quad, chunk).
@compute @workgroup_size(WG)
fn layer_norm_backward_params4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let quad = wid.x * WG + lid.x;
    let quads = params.cols / 4u;
    let chunk = wid.y;
    if quad >= quads {
        return;
    }
    let first = chunk * params.chunk_rows;
    let last = min(first + params.chunk_rows, params.rows);
    var sum_gain = vec4(0.0);
    var sum_bias = vec4(0.0);
    for (var row = first; row < last; row++) {
        let dy = grad4[row * quads + quad];
        let xhat = (x4[row * quads + quad] - stats[2u * row]) * stats[2u * row + 1u];
        sum_gain = fma(dy, xhat, sum_gain);
        sum_bias += dy;
    }
    partial_gain4[chunk * quads + quad] = sum_gain;
    partial_bias4[chunk * quads + quad] = sum_bias;
}
