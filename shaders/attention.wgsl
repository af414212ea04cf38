// Multi-head scaled dot-product self-attention, the core of OpenCLIP's nn.MultiheadAttention
// (M1): qkv [B, T, 3·D] is the in_proj output (q | k | v, head h owning columns h·hd..(h+1)·hd
// of each), out [B, T, D] the concatenated heads before out_proj;
// out_i = Σ_j softmax_j(q_i·k_j · scale) v_j with keys j > i left out when causal (the text
// tower's mask).
//
// The scores and products run as batched matmuls over the B·H heads (shaders/matmul.wgsl, the
// fastest kernel we have) with the row softmax of shaders/softmax.wgsl in between; this file
// holds the layout changes around them: heads are cut out into [B, H, Tp, hd] with the token
// axis padded to Tp (a multiple of 4, so every product takes the vec4 path) and zeros in the
// padding rows, and put back. A fused one-invocation-per-query kernel measured about 4x slower on
// lavapipe (per-lane arrays and gathers), see src/ops/attention.rs.

struct Params {
    batch: u32,
    tokens: u32,
    heads: u32,
    head_dim: u32,
    // token axis of the head layout (≥ tokens)
    padded: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// [B, T, parts·D] with parts = 3 (qkv) or 1 (a gradient of out)
// split_qkv: [B, T, 3·D] in, q, k, v [B, H, Tp, hd] out
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> q: array<f32>;
@group(0) @binding(3) var<storage, read_write> k: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
// split_heads: a gradient of out [B, T, D] in, [B, H, Tp, hd] out
@group(0) @binding(5) var<storage, read> d_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> d_heads: array<f32>;
// merge_heads: [B, H, Tp, hd] in, [B, T, D] out
@group(0) @binding(7) var<storage, read> heads: array<f32>;
@group(0) @binding(8) var<storage, read_write> out: array<f32>;
// merge_qkv: dq, dk, dv [B, H, Tp, hd] in, dqkv [B, T, 3·D] out
@group(0) @binding(9) var<storage, read> dq: array<f32>;
@group(0) @binding(10) var<storage, read> dk: array<f32>;
@group(0) @binding(11) var<storage, read> dv: array<f32>;
@group(0) @binding(12) var<storage, read_write> dqkv: array<f32>;
// The same bindings four values at a time, for the `*4` entries (head_dim a multiple of 4;
// callers bind by either name): lavapipe loads a storage value with a loop over the SIMD lanes,
// so a vec4 per load is close to four times fewer loads (src/ops/attention.rs picks these
// wherever head_dim allows).
@group(0) @binding(1) var<storage, read> qkv4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> q4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> k4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> v4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> d_out4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> d_heads4: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> heads4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> out4: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read> dq4: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read> dk4: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read> dv4: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read_write> dqkv4: array<vec4<f32>>;

const WG: u32 = 64u;

// The invocation's head row (b, h, t) of [B, H, Tp, hd] and the offset of its first element in
// one [B, T, parts·D]-wide part. One invocation moves a whole row of hd values: the index
// arithmetic (integer divisions, slow on CPU drivers) is paid per row, not per element.
struct HeadRow {
    token: u32,
    head_offset: u32,
    token_offset: u32,
}

fn head_row(index: u32, parts: u32) -> HeadRow {
    let hd = params.head_dim;
    let t = index % params.padded;
    let h = (index / params.padded) % params.heads;
    let b = index / (params.padded * params.heads);
    let width = params.heads * hd;
    return HeadRow(t, index * hd, (b * params.tokens + t) * parts * width + h * hd);
}

fn head_rows() -> u32 {
    return params.batch * params.heads * params.padded;
}

// qkv [B, T, 3·D] -> q, k, v [B, H, Tp, hd] (padding rows zero).
@compute @workgroup_size(WG)
fn split_qkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let index = linear_index(wid, nwg, lid, WG);
    if index >= head_rows() {
        return;
    }
    let row = head_row(index, 3u);
    let width = params.heads * params.head_dim;
    let live = row.token < params.tokens;
    for (var e = 0u; e < params.head_dim; e++) {
        let src = row.token_offset + e;
        let dst = row.head_offset + e;
        q[dst] = select(0.0, qkv[src], live);
        k[dst] = select(0.0, qkv[src + width], live);
        v[dst] = select(0.0, qkv[src + 2u * width], live);
    }
}

// A gradient of out [B, T, D] -> [B, H, Tp, hd] (padding rows zero).
@compute @workgroup_size(WG)
fn split_heads(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let index = linear_index(wid, nwg, lid, WG);
    if index >= head_rows() {
        return;
    }
    let row = head_row(index, 1u);
    let live = row.token < params.tokens;
    for (var e = 0u; e < params.head_dim; e++) {
        d_heads[row.head_offset + e] = select(0.0, d_out[row.token_offset + e], live);
    }
}

// The heads [B, H, Tp, hd] -> out [B, T, D] (padding rows dropped).
@compute @workgroup_size(WG)
fn merge_heads(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let index = linear_index(wid, nwg, lid, WG);
    if index >= head_rows() {
        return;
    }
    let row = head_row(index, 1u);
    if row.token >= params.tokens {
        return;
    }
    for (var e = 0u; e < params.head_dim; e++) {
        out[row.token_offset + e] = heads[row.head_offset + e];
    }
}

// dq, dk, dv [B, H, Tp, hd] -> dqkv [B, T, 3·D].
@compute @workgroup_size(WG)
fn merge_qkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let index = linear_index(wid, nwg, lid, WG);
    if index >= head_rows() {
        return;
    }
    let row = head_row(index, 3u);
    if row.token >= params.tokens {
        return;
    }
    let width = params.heads * params.head_dim;
    for (var e = 0u; e < params.head_dim; e++) {
        let dst = row.token_offset + e;
        let src = row.head_offset + e;
        dqkv[dst] = dq[src];
        dqkv[dst + width] = dk[src];
        dqkv[dst + 2u * width] = dv[src];
    }
}

// The `*4` entries: the same moves as above, a vec4 at a time (offsets and widths in vec4s).

@compute @workgroup_size(WG)
fn split_qkv4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let index = linear_index(wid, nwg, lid, WG);
    if index >= head_rows() {
        return;
    }
    let row = head_row(index, 3u);
    let width = params.heads * params.head_dim / 4u;
    let quads = params.head_dim / 4u;
    let live = row.token < params.tokens;
    for (var e = 0u; e < quads; e++) {
        let src = row.token_offset / 4u + e;
        let dst = row.head_offset / 4u + e;
        q4[dst] = select(vec4(0.0), qkv4[src], live);
        k4[dst] = select(vec4(0.0), qkv4[src + width], live);
        v4[dst] = select(vec4(0.0), qkv4[src + 2u * width], live);
    }
}

@compute @workgroup_size(WG)
fn split_heads4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let index = linear_index(wid, nwg, lid, WG);
    if index >= head_rows() {
        return;
    }
    let row = head_row(index, 1u);
    let live = row.token < params.tokens;
    for (var e = 0u; e < params.head_dim / 4u; e++) {
        let src = d_out4[row.token_offset / 4u + e];
        d_heads4[row.head_offset / 4u + e] = select(vec4(0.0), src, live);
    }
}

@compute @workgroup_size(WG)
fn merge_heads4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let index = linear_index(wid, nwg, lid, WG);
    if index >= head_rows() {
        return;
    }
    let row = head_row(index, 1u);
    if row.token >= params.tokens {
        return;
    }
    for (var e = 0u; e < params.head_dim / 4u; e++) {
        out4[row.token_offset / 4u + e] = heads4[row.head_offset / 4u + e];
    }
}

@compute @workgroup_size(WG)
fn merge_qkv4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let index = linear_index(wid, nwg, lid, WG);
    if index >= head_rows() {
        return;
    }
    let row = head_row(index, 3u);
    if row.token >= params.tokens {
        return;
    }
    let width = params.heads * params.head_dim / 4u;
    let quads = params.head_dim / 4u;
    for (var e = 0u; e < quads; e++) {
        let dst = row.token_offset / 4u + e;
        let src = row.head_offset / 4u + e;
        dqkv4[dst] = dq4[src];
        dqkv4[dst + width] = dk4[src];
        dqkv4[dst + 2u * width] = dv4[src];
    }
}
