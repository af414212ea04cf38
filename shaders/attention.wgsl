// Multi-head scaled dot-product self-attention, the core of OpenCLIP's nn.MultiheadAttention
// (M1): qkv [B, T, 3·D] is the in_proj output (q | k | v, head h owning columns h·hd..(h+1)·hd
// of each), out [B, T, D] the concatenated heads before out_proj;
// out_i = Σ_j softmax_j(q_i·k_j · scale) v_j with keys j > i left out when causal (the text
// tower's mask). Fused: one invocation per (batch, head, query) for the forward and the query
// gradient, one per (batch, head, key) for the key and value gradients; probabilities are
// recomputed from the saved log-sum-exp instead of stored.

struct Params {
    batch: u32,
    tokens: u32,
    heads: u32,
    head_dim: u32,
    // 1: keys after the query are masked
    causal: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
// the forward's output [B, T, D] (written by the forward, read by the backward)
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
// log Σ_j exp(s_ij) per (batch, head, query)
@group(0) @binding(3) var<storage, read_write> lse: array<f32>;
@group(0) @binding(4) var<storage, read> grad: array<f32>;
// dO_i · O_i per (batch, head, query)
@group(0) @binding(5) var<storage, read_write> delta: array<f32>;
@group(0) @binding(6) var<storage, read_write> dqkv: array<f32>;

const WG: u32 = 64u;
// Largest head dimension (OpenCLIP's presets use 64); the Rust side checks it.
const MAX_HEAD_DIM: u32 = 128u;

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

struct Row {
    batch: u32,
    head: u32,
    token: u32,
}

// (batch, head, token) of a linear index over [B, H, T].
fn split(index: u32) -> Row {
    let t = params.tokens;
    return Row(index / (t * params.heads), (index / t) % params.heads, index % t);
}

// Offset of the q (part 0), k (1) or v (2) vector of `token` for `r`'s batch and head in qkv.
fn qkv_offset(r: Row, token: u32, part: u32) -> u32 {
    let width = params.heads * params.head_dim;
    return (r.batch * params.tokens + token) * 3u * width + part * width + r.head * params.head_dim;
}

// Offset of `token`'s head vector in out / grad [B, T, D].
fn out_offset(r: Row, token: u32) -> u32 {
    let width = params.heads * params.head_dim;
    return (r.batch * params.tokens + token) * width + r.head * params.head_dim;
}

fn dot_qk(q: u32, k: u32) -> f32 {
    var s = 0.0;
    for (var e = 0u; e < params.head_dim; e++) {
        s = fma(qkv[q + e], qkv[k + e], s);
    }
    return s * params.scale;
}

// Keys a query attends to: 0..=query when causal, all otherwise.
fn key_end(query: u32) -> u32 {
    return select(params.tokens, query + 1u, params.causal != 0u);
}

@compute @workgroup_size(WG)
fn attention_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let index = linear_index(wid, nwg, lid);
    if index >= params.batch * params.heads * params.tokens {
        return;
    }
    let r = split(index);
    let hd = min(params.head_dim, MAX_HEAD_DIM);
    let q = qkv_offset(r, r.token, 0u);
    // Online softmax: the running maximum starts at key 0 (every query sees it), so no
    // infinities; the accumulator is rescaled only when the maximum grows.
    var m = dot_qk(q, qkv_offset(r, 0u, 1u));
    var l = 1.0;
    var acc: array<f32, MAX_HEAD_DIM>;
    let v0 = qkv_offset(r, 0u, 2u);
    for (var e = 0u; e < hd; e++) {
        acc[e] = qkv[v0 + e];
    }
    let end = key_end(r.token);
    for (var j = 1u; j < end; j++) {
        let s = dot_qk(q, qkv_offset(r, j, 1u));
        if s > m {
            let correction = exp(m - s);
            l *= correction;
            for (var e = 0u; e < hd; e++) {
                acc[e] *= correction;
            }
            m = s;
        }
        let p = exp(s - m);
        l += p;
        let v = qkv_offset(r, j, 2u);
        for (var e = 0u; e < hd; e++) {
            acc[e] = fma(p, qkv[v + e], acc[e]);
        }
    }
    let o = out_offset(r, r.token);
    for (var e = 0u; e < hd; e++) {
        out[o + e] = acc[e] / l;
    }
    lse[index] = m + log(l);
}

// dq_i = scale · Σ_j p_ij (dO_i·v_j − δ_i) k_j with δ_i = dO_i·O_i; also stores δ_i.
@compute @workgroup_size(WG)
fn attention_backward_query(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let index = linear_index(wid, nwg, lid);
    if index >= params.batch * params.heads * params.tokens {
        return;
    }
    let r = split(index);
    let hd = min(params.head_dim, MAX_HEAD_DIM);
    let q = qkv_offset(r, r.token, 0u);
    let o = out_offset(r, r.token);
    var d = 0.0;
    for (var e = 0u; e < hd; e++) {
        d = fma(grad[o + e], out[o + e], d);
    }
    delta[index] = d;
    let log_sum = lse[index];
    var dq: array<f32, MAX_HEAD_DIM>;
    for (var e = 0u; e < hd; e++) {
        dq[e] = 0.0;
    }
    let end = key_end(r.token);
    for (var j = 0u; j < end; j++) {
        let k = qkv_offset(r, j, 1u);
        let v = qkv_offset(r, j, 2u);
        let p = exp(dot_qk(q, k) - log_sum);
        var dp = 0.0;
        for (var e = 0u; e < hd; e++) {
            dp = fma(grad[o + e], qkv[v + e], dp);
        }
        let ds = p * (dp - d);
        for (var e = 0u; e < hd; e++) {
            dq[e] = fma(ds, qkv[k + e], dq[e]);
        }
    }
    let dst = qkv_offset(r, r.token, 0u);
    for (var e = 0u; e < hd; e++) {
        dqkv[dst + e] = dq[e] * params.scale;
    }
}

// For key/value j: dv_j = Σ_i p_ij dO_i, dk_j = scale · Σ_i p_ij (dO_i·v_j − δ_i) q_i, over
// the queries i that see key j.
@compute @workgroup_size(WG)
fn attention_backward_key_value(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let index = linear_index(wid, nwg, lid);
    if index >= params.batch * params.heads * params.tokens {
        return;
    }
    let r = split(index);
    let hd = min(params.head_dim, MAX_HEAD_DIM);
    let k = qkv_offset(r, r.token, 1u);
    let v = qkv_offset(r, r.token, 2u);
    var dk: array<f32, MAX_HEAD_DIM>;
    var dv: array<f32, MAX_HEAD_DIM>;
    for (var e = 0u; e < hd; e++) {
        dk[e] = 0.0;
        dv[e] = 0.0;
    }
    let first = select(0u, r.token, params.causal != 0u);
    let row0 = index - r.token;
    for (var i = first; i < params.tokens; i++) {
        let q = qkv_offset(r, i, 0u);
        let o = out_offset(r, i);
        let p = exp(dot_qk(q, k) - lse[row0 + i]);
        var dp = 0.0;
        for (var e = 0u; e < hd; e++) {
            dp = fma(grad[o + e], qkv[v + e], dp);
            dv[e] = fma(p, grad[o + e], dv[e]);
        }
        let ds = p * (dp - delta[row0 + i]);
        for (var e = 0u; e < hd; e++) {
            dk[e] = fma(ds, qkv[q + e], dk[e]);
        }
    }
    for (var e = 0u; e < hd; e++) {
        dqkv[k + e] = dk[e] * params.scale;
        dqkv[v + e] = dv[e];
    }
}
