// Patch extraction (a stride-p convolution's input as a gather, M1) and its inverse, plus the
// class-token row prepended to every sequence and its two gradients.
// Patch (i, j) of the (H/p)×(W/p) grid is row i·(W/p)+j; each patch is flattened in
// (channel, row, col) order, the order of OpenCLIP's conv1.weight [width, C, p, p].

struct Params {
    // patchify: images, channels, height, width; prepend: sequences, rows (L), cols (D), unused
    n: u32,
    channels: u32,
    height: u32,
    width: u32,
    patch_size: u32,
    // elements this dispatch writes
    len: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> row: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;

// Index into images [N, C, H, W] of element `k` of patch `l` of image `n`.
fn image_index(n: u32, l: u32, k: u32) -> u32 {
    let p = params.patch_size;
    let grid_w = params.width / p;
    let channel = k / (p * p);
    let dy = (k / p) % p;
    let dx = k % p;
    let y = (l / grid_w) * p + dy;
    let x = (l % grid_w) * p + dx;
    return ((n * params.channels + channel) * params.height + y) * params.width + x;
}

// out [N, L, C·p·p] gathered from src = images [N, C, H, W].
@compute @workgroup_size(WG)
fn patchify(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let o = linear_index(wid, nwg, lid, WG);
    if o >= params.len {
        return;
    }
    let p = params.patch_size;
    let patch_len = params.channels * p * p;
    let patches = (params.height / p) * (params.width / p);
    let k = o % patch_len;
    let l = (o / patch_len) % patches;
    let n = o / (patch_len * patches);
    out[o] = src[image_index(n, l, k)];
}

// The inverse permutation (backward): out = d images [N, C, H, W] gathered from
// src = d patches [N, L, C·p·p].
@compute @workgroup_size(WG)
fn unpatchify(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = linear_index(wid, nwg, lid, WG);
    if e >= params.len {
        return;
    }
    let p = params.patch_size;
    let x = e % params.width;
    let y = (e / params.width) % params.height;
    let channel = (e / (params.width * params.height)) % params.channels;
    let n = e / (params.width * params.height * params.channels);
    let patches = (params.height / p) * (params.width / p);
    let l = (y / p) * (params.width / p) + x / p;
    let k = (channel * p + y % p) * p + x % p;
    out[e] = src[(n * patches + l) * (params.channels * p * p) + k];
}

// out [N, 1+L, D]: row [D] first, then src [N, L, D]. Params: n = N, height = L, width = D.
@compute @workgroup_size(WG)
fn prepend_row(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let o = linear_index(wid, nwg, lid, WG);
    if o >= params.len {
        return;
    }
    let d = params.width;
    let rows = params.height;
    let col = o % d;
    let t = (o / d) % (rows + 1u);
    let n = o / (d * (rows + 1u));
    if t == 0u {
        out[o] = row[col];
    } else {
        out[o] = src[(n * rows + t - 1u) * d + col];
    }
}

// d x [N, L, D] = d out [N, 1+L, D] without its first row (src = d out).
@compute @workgroup_size(WG)
fn prepend_row_grad_rest(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = linear_index(wid, nwg, lid, WG);
    if e >= params.len {
        return;
    }
    let d = params.width;
    let rows = params.height;
    let col = e % d;
    let t = (e / d) % rows;
    let n = e / (d * rows);
    out[e] = src[(n * (rows + 1u) + t + 1u) * d + col];
}

// d row [D] = Σ over sequences of d out[n, 0, :]; one invocation per column.
@compute @workgroup_size(WG)
fn prepend_row_grad_row(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let col = linear_index(wid, nwg, lid, WG);
    if col >= params.len {
        return;
    }
    let d = params.width;
    let stride = (params.height + 1u) * d;
    var sum = 0.0;
    for (var n = 0u; n < params.n; n++) {
        sum += src[n * stride + col];
    }
    out[col] = sum;
}
