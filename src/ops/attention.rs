//! Multi-head scaled dot-product self-attention, the core of OpenCLIP's
//! `nn.MultiheadAttention` between in_proj and out_proj (M1; causal in the text tower).
//! Shader: `shaders/attention.wgsl` (head layout changes); the products are batched matmuls over
//! the B·H heads and the softmax is `ops::softmax`'s kernel. The GPU keeps the probabilities
//! [B·H, Tp, Tp] for the backward, as PyTorch's non-fused attention does (OpenCLIP's default).
//! A fused FlashAttention-style kernel (one invocation per query, online softmax) measured
//! 3.8 s of a 9.6 s tiny batch-64 step on lavapipe; as matmuls it is a fraction of that.

use std::sync::Arc;

use crate::gpu::Gpu;
use crate::graph::{Backend, Graph, Op, OpResult, Storage, Tensor, shape_error};
use crate::ops::matmul::{self, MatmulDims};
use crate::ops::softmax::{self, SoftmaxDims};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    pub batch: usize,
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub causal: bool,
}

impl AttentionDims {
    /// Width D = heads · head_dim.
    pub fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// 1/sqrt(head_dim), as PyTorch.
    pub fn scale(&self) -> f32 {
        (1.0 / (self.head_dim as f64).sqrt()) as f32
    }
}

#[derive(Clone)]
pub struct AttentionOp {
    pub qkv: Tensor,
    pub dims: AttentionDims,
    /// GPU: the softmax probabilities [B·H, Tp, Tp] (the backward recomputes the rest from qkv).
    /// CPU: empty; the reference backward recomputes everything.
    pub probs: Storage,
}

impl std::fmt::Debug for AttentionOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttentionOp")
            .field("qkv", &self.qkv)
            .field("dims", &self.dims)
            .finish()
    }
}

impl Graph {
    /// qkv [B, T, 3·D] (q | k | v, head h owning columns h·hd..(h+1)·hd of each) ->
    /// the concatenated heads [B, T, D] of softmax(q·kᵀ / sqrt(hd)) · v, keys after the query
    /// masked when `causal`.
    pub fn attention(&mut self, qkv: Tensor, heads: usize, causal: bool) -> OpResult {
        let shape = self.shape(qkv).to_vec();
        let err = |why: String| {
            shape_error(
                "attention",
                format!("qkv {shape:?} with {heads} heads: {why}"),
            )
        };
        if shape.len() != 3 || !shape[2].is_multiple_of(3) {
            return Err(err("qkv must be [B, T, 3·D]".into()));
        }
        let width = shape[2] / 3;
        if heads == 0 || !width.is_multiple_of(heads) || width == 0 {
            return Err(err(format!(
                "width {width} is not a positive multiple of the heads"
            )));
        }
        let dims = AttentionDims {
            batch: shape[0],
            tokens: shape[1],
            heads,
            head_dim: width / heads,
            causal,
        };
        let (out, probs) = forward(&self.backend, self.storage(qkv), dims);
        let op = Op::Attention(AttentionOp { qkv, dims, probs });
        Ok(self.push_op(out, vec![dims.batch, dims.tokens, width], &[qkv], op))
    }
}

crate::kernel_params! {
    pub(crate) struct Params for "attention" {
        batch: u32,
        tokens: u32,
        heads: u32,
        head_dim: u32,
        padded: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

impl AttentionDims {
    /// The token axis of the head layout: padded to a multiple of 4 so that every product of
    /// the attention runs on the vec4 matmul kernels.
    pub fn padded_tokens(&self) -> usize {
        self.tokens.next_multiple_of(4)
    }

    fn head_len(&self) -> usize {
        self.head_rows() * self.head_dim
    }

    /// Rows of the head layout, B·H·Tp: one invocation each in the layout kernels.
    fn head_rows(&self) -> usize {
        self.batch * self.heads * self.padded_tokens()
    }

    fn params(&self) -> Params {
        Params {
            batch: self.batch as u32,
            tokens: self.tokens as u32,
            heads: self.heads as u32,
            head_dim: self.head_dim as u32,
            padded: self.padded_tokens() as u32,
            ..bytemuck::Zeroable::zeroed()
        }
    }

    /// A product over the B·H heads: [Tp or hd] x [Tp or hd] as `m`, `n`, `k` say.
    fn per_head(&self, m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> MatmulDims {
        MatmulDims {
            batch: self.batch * self.heads,
            m,
            n,
            k,
            trans_a,
            trans_b,
            shared_b: false,
        }
    }

    /// The row softmax of the scores [B·H·Tp, Tp]: padding keys and (causal) later keys out.
    fn softmax(&self) -> SoftmaxDims {
        let tp = self.padded_tokens();
        SoftmaxDims {
            rows: self.batch * self.heads * tp,
            cols: tp,
            scale: self.scale(),
            causal: self.causal,
            keys: self.tokens,
        }
    }
}

/// A layout change of the shader over `buffers`, one invocation per head row; four values per
/// load (its `entry4` form) where head_dim allows.
fn move_rows(gpu: &Gpu, entry: &str, d: AttentionDims, buffers: &[crate::gpu::Binding]) {
    let shader = crate::shader!("attention");
    let kernel = gpu.kernel_in_width(&shader, entry, d.head_dim.is_multiple_of(4));
    gpu.dispatch_linear(&kernel, &d.params(), buffers, d.head_rows());
}

/// q, k, v [B·H, Tp, hd] cut out of qkv [B, T, 3·D].
fn split_qkv(gpu: &Gpu, qkv: &Storage, d: AttentionDims) -> [Storage; 3] {
    let [q, k, v] = std::array::from_fn(|_| gpu.alloc(d.head_len()));
    let buffers = [("qkv", qkv.gpu()), ("q", &q), ("k", &k), ("v", &v)];
    move_rows(gpu, "split_qkv", d, &buffers);
    [q, k, v].map(Storage::Gpu)
}

/// (out [B, T, D], the probabilities the GPU backward needs).
pub fn forward(backend: &Backend, qkv: &Storage, d: AttentionDims) -> (Storage, Storage) {
    match backend {
        Backend::Cpu => {
            let (out, _lse) = cpu::forward(qkv.cpu(), d);
            (
                Storage::Cpu(Arc::new(out)),
                Storage::Cpu(Arc::new(Vec::new())),
            )
        }
        Backend::Gpu(gpu) => {
            let (tp, hd) = (d.padded_tokens(), d.head_dim);
            let [q, k, v] = split_qkv(gpu, qkv, d);
            let scores =
                matmul::forward(backend, &q, &k, None, d.per_head(tp, tp, hd, false, true));
            let probs = softmax::forward(backend, &scores, d.softmax());
            let heads = matmul::forward(
                backend,
                &probs,
                &v,
                None,
                d.per_head(tp, hd, tp, false, false),
            );
            let out = gpu.alloc(d.batch * d.tokens * d.width());
            move_rows(
                gpu,
                "merge_heads",
                d,
                &[("heads", heads.gpu()), ("out", &out)],
            );
            (Storage::Gpu(out), probs)
        }
    }
}

/// d qkv from d out.
pub fn backward(g: &mut Graph, op: &AttentionOp, grad: &Storage) {
    if !g.requires_grad(op.qkv) {
        return;
    }
    let d = op.dims;
    let qkv = g.storage(op.qkv);
    let dqkv = match &g.backend {
        Backend::Cpu => Storage::Cpu(Arc::new(cpu::backward(qkv.cpu(), grad.cpu(), d))),
        Backend::Gpu(gpu) => {
            let backend = &g.backend;
            let (tp, hd) = (d.padded_tokens(), d.head_dim);
            let [q, k, v] = split_qkv(gpu, qkv, d);
            let d_heads = gpu.alloc(d.head_len());
            let buffers = [("d_out", grad.gpu()), ("d_heads", &d_heads)];
            move_rows(gpu, "split_heads", d, &buffers);
            let d_heads = Storage::Gpu(d_heads);
            let p = &op.probs;
            // dP = dO·Vᵀ, dV = Pᵀ·dO, dS = softmax backward (with the scale), dQ = dS·K,
            // dK = dSᵀ·Q.
            let dp = matmul::forward(
                backend,
                &d_heads,
                &v,
                None,
                d.per_head(tp, tp, hd, false, true),
            );
            let dv = matmul::forward(
                backend,
                p,
                &d_heads,
                None,
                d.per_head(tp, hd, tp, true, false),
            );
            let ds = softmax::backward_storage(backend, p, &dp, d.softmax());
            let dq = matmul::forward(backend, &ds, &k, None, d.per_head(tp, hd, tp, false, false));
            let dk = matmul::forward(backend, &ds, &q, None, d.per_head(tp, hd, tp, true, false));
            let dqkv = gpu.alloc(qkv.len());
            let buffers = [
                ("dq", dq.gpu()),
                ("dk", dk.gpu()),
                ("dv", dv.gpu()),
                ("dqkv", &dqkv),
            ];
            move_rows(gpu, "merge_qkv", d, &buffers);
            Storage::Gpu(dqkv)
        }
    };
    g.accumulate(op.qkv, dqkv);
}

/// Plain-Rust reference: per (batch, head) the explicit probability matrix, in f64.
pub mod cpu {
    use super::AttentionDims;

    /// Row-major [T, hd] copies of q, k and v of one (batch, head).
    fn head(qkv: &[f32], d: AttentionDims, b: usize, h: usize) -> [Vec<f64>; 3] {
        let (t, hd, w) = (d.tokens, d.head_dim, d.width());
        std::array::from_fn(|part| {
            let mut m = Vec::with_capacity(t * hd);
            for i in 0..t {
                let at = (b * t + i) * 3 * w + part * w + h * hd;
                m.extend(qkv[at..at + hd].iter().map(|&x| x as f64));
            }
            m
        })
    }

    /// Softmax probabilities [T, T] of one head (masked entries 0) and each row's log-sum-exp.
    fn probabilities(q: &[f64], k: &[f64], d: AttentionDims) -> (Vec<f64>, Vec<f64>) {
        let (t, hd) = (d.tokens, d.head_dim);
        let scale = 1.0 / (hd as f64).sqrt();
        let mut p = vec![0.0; t * t];
        let mut lse = vec![0.0; t];
        for i in 0..t {
            let end = if d.causal { i + 1 } else { t };
            let scores: Vec<f64> = (0..end)
                .map(|j| (0..hd).map(|e| q[i * hd + e] * k[j * hd + e]).sum::<f64>() * scale)
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            for (j, s) in scores.iter().enumerate() {
                p[i * t + j] = (s - max).exp() / sum;
            }
            lse[i] = max + sum.ln();
        }
        (p, lse)
    }

    /// (out [B, T, D], lse [B, H, T]).
    pub fn forward(qkv: &[f32], d: AttentionDims) -> (Vec<f32>, Vec<f32>) {
        let (t, hd, w) = (d.tokens, d.head_dim, d.width());
        let mut out = vec![0f32; d.batch * t * w];
        let mut lse_all = Vec::with_capacity(d.batch * d.heads * t);
        for b in 0..d.batch {
            for h in 0..d.heads {
                let [q, k, v] = head(qkv, d, b, h);
                let (p, lse) = probabilities(&q, &k, d);
                for i in 0..t {
                    for e in 0..hd {
                        let o: f64 = (0..t).map(|j| p[i * t + j] * v[j * hd + e]).sum();
                        out[(b * t + i) * w + h * hd + e] = o as f32;
                    }
                }
                lse_all.extend(lse.iter().map(|&x| x as f32));
            }
        }
        (out, lse_all)
    }

    /// d qkv: dV = Pᵀ dO, dS = P ∘ (dO Vᵀ − rowsum(P ∘ dO Vᵀ)), dQ = scale · dS K,
    /// dK = scale · dSᵀ Q.
    pub fn backward(qkv: &[f32], grad: &[f32], d: AttentionDims) -> Vec<f32> {
        let (t, hd, w) = (d.tokens, d.head_dim, d.width());
        let scale = 1.0 / (hd as f64).sqrt();
        let mut dqkv = vec![0f32; qkv.len()];
        for b in 0..d.batch {
            for h in 0..d.heads {
                let [q, k, v] = head(qkv, d, b, h);
                let (p, _) = probabilities(&q, &k, d);
                let dout: Vec<f64> = (0..t)
                    .flat_map(|i| {
                        let at = (b * t + i) * w + h * hd;
                        grad[at..at + hd].iter().map(|&x| x as f64)
                    })
                    .collect();
                let mut ds = vec![0.0; t * t];
                for i in 0..t {
                    let dp: Vec<f64> = (0..t)
                        .map(|j| (0..hd).map(|e| dout[i * hd + e] * v[j * hd + e]).sum())
                        .collect();
                    let row: f64 = (0..t).map(|j| p[i * t + j] * dp[j]).sum();
                    for j in 0..t {
                        ds[i * t + j] = p[i * t + j] * (dp[j] - row);
                    }
                }
                for i in 0..t {
                    let base = (b * t + i) * 3 * w + h * hd;
                    for e in 0..hd {
                        let dq: f64 = (0..t).map(|j| ds[i * t + j] * k[j * hd + e]).sum();
                        let dk: f64 = (0..t).map(|j| ds[j * t + i] * q[j * hd + e]).sum();
                        let dv: f64 = (0..t).map(|j| p[j * t + i] * dout[j * hd + e]).sum();
                        dqkv[base + e] = (dq * scale) as f32;
                        dqkv[base + w + e] = (dk * scale) as f32;
                        dqkv[base + 2 * w + e] = dv as f32;
                    }
                }
            }
        }
        dqkv
    }
}
