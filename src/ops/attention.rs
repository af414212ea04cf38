//! Multi-head scaled dot-product self-attention, the core of OpenCLIP's
//! `nn.MultiheadAttention` between in_proj and out_proj (M1; causal in the text tower).
//! Shader: `shaders/attention.wgsl` (fused: scores and probabilities are never stored; the
//! backward recomputes them from the forward's log-sum-exp).

use std::sync::Arc;

use crate::gpu::Gpu;
use crate::graph::{Backend, Graph, Op, OpResult, Storage, Tensor, shape_error};

/// Largest head dimension the shader holds in registers (`MAX_HEAD_DIM` in the WGSL).
pub const MAX_HEAD_DIM: usize = 128;

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
    /// The forward's output [B, T, D].
    pub out: Storage,
    /// log Σ_j exp(score) per (batch, head, query) [B, H, T].
    pub lse: Storage,
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
        if dims.head_dim > MAX_HEAD_DIM {
            return Err(err(format!(
                "head dimension {} exceeds {MAX_HEAD_DIM}",
                dims.head_dim
            )));
        }
        let (out, lse) = forward(&self.backend, self.storage(qkv), dims);
        let op = Op::Attention(AttentionOp {
            qkv,
            dims,
            out: out.clone(),
            lse,
        });
        Ok(self.push_op(out, vec![dims.batch, dims.tokens, width], &[qkv], op))
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    tokens: u32,
    heads: u32,
    head_dim: u32,
    causal: u32,
    scale: f32,
    _pad: [u32; 2],
}

impl Params {
    fn new(d: AttentionDims) -> Self {
        Params {
            batch: d.batch as u32,
            tokens: d.tokens as u32,
            heads: d.heads as u32,
            head_dim: d.head_dim as u32,
            causal: u32::from(d.causal),
            scale: d.scale(),
            _pad: [0; 2],
        }
    }
}

fn kernel(gpu: &Gpu, entry: &str) -> Arc<crate::gpu::Kernel> {
    gpu.kernel(&crate::shader!("attention"), entry)
}

/// (out [B, T, D], lse [B, H, T]).
pub fn forward(backend: &Backend, qkv: &Storage, d: AttentionDims) -> (Storage, Storage) {
    match backend {
        Backend::Cpu => {
            let (out, lse) = cpu::forward(qkv.cpu(), d);
            (Storage::Cpu(Arc::new(out)), Storage::Cpu(Arc::new(lse)))
        }
        Backend::Gpu(gpu) => {
            let rows = d.batch * d.heads * d.tokens;
            let (out, lse) = (gpu.alloc(d.batch * d.tokens * d.width()), gpu.alloc(rows));
            gpu.dispatch_linear(
                &kernel(gpu, "attention_forward"),
                &Params::new(d),
                &[qkv.gpu(), &out, &lse],
                rows,
            );
            (Storage::Gpu(out), Storage::Gpu(lse))
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
            let rows = d.batch * d.heads * d.tokens;
            let (delta, dqkv) = (gpu.alloc(rows), gpu.alloc(qkv.len()));
            let buffers = [
                qkv.gpu(),
                op.out.gpu(),
                op.lse.gpu(),
                grad.gpu(),
                &delta,
                &dqkv,
            ];
            let params = Params::new(d);
            gpu.dispatch_linear(
                &kernel(gpu, "attention_backward_query"),
                &params,
                &buffers,
                rows,
            );
            gpu.dispatch_linear(
                &kernel(gpu, "attention_backward_key_value"),
                &params,
                &buffers,
                rows,
            );
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
