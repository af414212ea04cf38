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

const WG: u32 = 256u;

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
