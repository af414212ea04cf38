// Elementwise arithmetic and the row sum that reverses broadcasting.
// out[i] = a[i] + b[i % b_len]: b is either as long as a or broadcast over a's leading dims.

struct Params {
    len: u32,
    b_len: u32,
    rows: u32,
    cols: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

@compute @workgroup_size(WG)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid);
    if i >= params.len {
        return;
    }
    out[i] = a[i] + b[i % params.b_len];
}

// out[col] = sum over rows of a[row, col]; one invocation per column (columns are contiguous
// across invocations, so reads coalesce). Accumulates in f32 pairs to limit rounding.
@compute @workgroup_size(WG)
fn sum_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let col = linear_index(wid, nwg, lid);
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
