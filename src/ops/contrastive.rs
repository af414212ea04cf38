//! The CLIP loss (M1): logits = exp(logit_scale) · img · txtᵀ on L2-normalised features,
//! loss = (CE(logits, arange) + CE(logitsᵀ, arange)) / 2. The similarity matrix comes from the
//! matmul kernel; a fused kernel takes row and column log-sum-exps, the loss, and the
//! gradients of the similarities and of logit_scale. Shader: `shaders/contrastive.wgsl`.
//!
//! OpenCLIP's `--local-loss` is the same loss over a rank's own lines of the global batch (its
//! images against every caption and its captions against every image), divided by 2n for n own
//! lines: [`Graph::local_contrastive_loss`]. Averaged over ranks it is the full loss.

use std::ops::Range;
use std::sync::Arc;

use crate::gpu::{Gpu, MAX_GROUPS_PER_DIM, linear_grid};
use crate::graph::{Backend, Graph, Op, OpResult, Storage, Tensor, shape_error};
use crate::ops::matmul::{self, MatmulDims};

/// What the tape keeps: the inputs, the similarities S = img · txtᵀ [B, B] and the per-line
/// statistics [4B] (row and column log-sum-exps, then row and column cross-entropies).
#[derive(Clone)]
pub struct ContrastiveOp {
    pub image: Tensor,
    pub text: Tensor,
    pub logit_scale: Tensor,
    pub sims: Storage,
    pub stats: Storage,
    pub batch: usize,
    pub dim: usize,
    /// The lines (rows and columns) the loss averages: all B, or one rank's with --local-loss.
    pub own: Range<usize>,
}

impl std::fmt::Debug for ContrastiveOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContrastiveOp")
            .field("image", &self.image)
            .field("text", &self.text)
            .field("logit_scale", &self.logit_scale)
            .field("batch", &self.batch)
            .field("dim", &self.dim)
            .field("own", &self.own)
            .finish()
    }
}

impl Graph {
    /// Symmetric InfoNCE of matching rows (M1), shape [1]. `image_features` and `text_features`
    /// are [B, D] and already L2-normalised; `logit_scale` is [1] (the log of the temperature's
    /// inverse). Gradients reach both feature sets and `logit_scale`.
    pub fn contrastive_loss(
        &mut self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
    ) -> OpResult {
        let batch = self.shape(image_features).first().copied().unwrap_or(0);
        self.local_contrastive_loss(image_features, text_features, logit_scale, 0..batch)
    }

    /// [`Graph::contrastive_loss`] averaged over the `own` rows and columns only (OpenCLIP's
    /// `--local-loss`: `own` is this rank's slice of the gathered batch).
    pub fn local_contrastive_loss(
        &mut self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        own: Range<usize>,
    ) -> OpResult {
        let (si, st) = (
            self.shape(image_features).to_vec(),
            self.shape(text_features).to_vec(),
        );
        let ss = self.shape(logit_scale).to_vec();
        if si.len() != 2 || si != st || si[0] == 0 {
            return Err(shape_error(
                "contrastive_loss",
                format!(
                    "image features {si:?} and text features {st:?} must both be [B, D] with B > 0"
                ),
            ));
        }
        if ss != [1] {
            return Err(shape_error(
                "contrastive_loss",
                format!("logit_scale {ss:?} must be [1] (features {si:?})"),
            ));
        }
        let (batch, dim) = (si[0], si[1]);
        if own.is_empty() || own.end > batch {
            return Err(shape_error(
                "contrastive_loss",
                format!("own lines {own:?} must be a non-empty part of 0..{batch}"),
            ));
        }
        let sims = matmul::forward(
            &self.backend,
            self.storage(image_features),
            self.storage(text_features),
            None,
            MatmulDims {
                batch: 1,
                m: batch,
                n: batch,
                k: dim,
                trans_a: false,
                trans_b: true,
                shared_b: false,
            },
        );
        let (loss, stats) = loss_storage(
            &self.backend,
            &sims,
            self.storage(logit_scale),
            batch,
            own.clone(),
        );
        let op = Op::ContrastiveLoss(ContrastiveOp {
            image: image_features,
            text: text_features,
            logit_scale,
            sims,
            stats,
            batch,
            dim,
            own,
        });
        Ok(self.push_op(
            loss,
            vec![1],
            &[image_features, text_features, logit_scale],
            op,
        ))
    }
}

/// dS = g·t·(P_row + P_col − 2I)/(2B) (own rows and columns only, over 2n); d img = dS · txt, d txt = dSᵀ · img, d logit_scale =
/// Σ dLoss/dlogits ∘ logits.
pub fn backward(g: &mut Graph, op: &ContrastiveOp, grad: &Storage) {
    let backend = g.backend.clone();
    let scale = g.storage(op.logit_scale).clone();
    let (b, d) = (op.batch, op.dim);
    let needs_features = g.requires_grad(op.image) || g.requires_grad(op.text);
    if needs_features {
        let own = op.own.clone();
        let dsims = grad_sims_storage(&backend, &op.sims, &scale, &op.stats, grad, b, own);
        if g.requires_grad(op.image) {
            let text = g.storage(op.text).clone();
            let dims = MatmulDims {
                batch: 1,
                m: b,
                n: d,
                k: b,
                trans_a: false,
                trans_b: false,
                shared_b: false,
            };
            let di = matmul::forward(&backend, &dsims, &text, None, dims);
            g.accumulate(op.image, di);
        }
        if g.requires_grad(op.text) {
            let image = g.storage(op.image).clone();
            let dims = MatmulDims {
                batch: 1,
                m: b,
                n: d,
                k: b,
                trans_a: true,
                trans_b: false,
                shared_b: false,
            };
            let dt = matmul::forward(&backend, &dsims, &image, None, dims);
            g.accumulate(op.text, dt);
        }
    }
    if g.requires_grad(op.logit_scale) {
        let own = op.own.clone();
        let ds = grad_logit_scale_storage(&backend, &op.sims, &scale, &op.stats, grad, b, own);
        g.accumulate(op.logit_scale, ds);
    }
}

crate::kernel_params! {
    pub(crate) struct Params for "contrastive" {
        batch: u32,
        first: u32,
        count: u32,
        _pad0: u32,
    }
}

fn params(batch: usize, own: &Range<usize>) -> Params {
    Params {
        batch: batch as u32,
        first: own.start as u32,
        count: own.len() as u32,
        ..bytemuck::Zeroable::zeroed()
    }
}

fn kernel(gpu: &Gpu, entry: &str) -> Arc<crate::gpu::Kernel> {
    gpu.kernel(&crate::shader!("contrastive"), entry)
}

/// (loss [1] over the `own` lines, per-line statistics [4B]) from the similarities [B, B].
pub fn loss_storage(
    backend: &Backend,
    sims: &Storage,
    logit_scale: &Storage,
    batch: usize,
    own: Range<usize>,
) -> (Storage, Storage) {
    match backend {
        Backend::Cpu => {
            let stats = cpu::line_stats(sims.cpu(), logit_scale.cpu()[0], batch);
            let loss = cpu::loss(&stats, batch, own);
            (
                Storage::Cpu(Arc::new(vec![loss])),
                Storage::Cpu(Arc::new(stats)),
            )
        }
        Backend::Gpu(gpu) => {
            let stats = gpu.alloc(4 * batch);
            let loss = gpu.alloc(1);
            let lines = 2 * batch;
            let max = MAX_GROUPS_PER_DIM as usize;
            let groups = [lines.min(max) as u32, lines.div_ceil(max) as u32, 1];
            let inputs = [("sims", sims.gpu()), ("logit_scale", logit_scale.gpu())];
            let line_stats = [inputs[0], inputs[1], ("stats", &stats)];
            gpu.dispatch(
                &kernel(gpu, "line_stats"),
                &params(batch, &own),
                &line_stats,
                groups,
            );
            let buffers = [("stats", &stats), ("out", &loss)];
            let params = params(batch, &own);
            gpu.dispatch(&kernel(gpu, "loss"), &params, &buffers, [1, 1, 1]);
            (Storage::Gpu(loss), Storage::Gpu(stats))
        }
    }
}

/// dLoss/dS [B, B] for an upstream gradient `grad` [1].
pub fn grad_sims_storage(
    backend: &Backend,
    sims: &Storage,
    logit_scale: &Storage,
    stats: &Storage,
    grad: &Storage,
    batch: usize,
    own: Range<usize>,
) -> Storage {
    match backend {
        Backend::Cpu => Storage::Cpu(Arc::new(cpu::grad_sims(
            sims.cpu(),
            logit_scale.cpu()[0],
            stats.cpu(),
            grad.cpu()[0],
            batch,
            own,
        ))),
        Backend::Gpu(gpu) => {
            let inputs = [sims, logit_scale, stats, grad];
            let outputs = Some(batch * batch);
            dispatch_backward(gpu, "grad_sims", inputs, batch, own, outputs)
        }
    }
}

/// dLoss/dlogit_scale [1] for an upstream gradient `grad` [1].
pub fn grad_logit_scale_storage(
    backend: &Backend,
    sims: &Storage,
    logit_scale: &Storage,
    stats: &Storage,
    grad: &Storage,
    batch: usize,
    own: Range<usize>,
) -> Storage {
    match backend {
        Backend::Cpu => Storage::Cpu(Arc::new(vec![cpu::grad_logit_scale(
            sims.cpu(),
            logit_scale.cpu()[0],
            grad.cpu()[0],
            batch,
            own,
        )])),
        Backend::Gpu(gpu) => {
            let inputs = [sims, logit_scale, stats, grad];
            dispatch_backward(gpu, "grad_logit_scale", inputs, batch, own, None)
        }
    }
}

/// Records backward kernel `entry` on (sims, logit_scale, stats, upstream gradient): one
/// invocation per element of its `outputs`, or one workgroup for a single output.
fn dispatch_backward(
    gpu: &Gpu,
    entry: &str,
    [sims, logit_scale, stats, upstream]: [&Storage; 4],
    batch: usize,
    own: Range<usize>,
    outputs: Option<usize>,
) -> Storage {
    let out = gpu.alloc(outputs.unwrap_or(1));
    let k = kernel(gpu, entry);
    let buffers = [
        ("sims", sims.gpu()),
        ("logit_scale", logit_scale.gpu()),
        ("stats", stats.gpu()),
        ("upstream", upstream.gpu()),
        ("out", &out),
    ];
    let groups = outputs.map_or([1, 1, 1], |n| linear_grid(n, k.lanes()));
    gpu.dispatch(&k, &params(batch, &own), &buffers, groups);
    Storage::Gpu(out)
}

/// Plain-Rust references in f64.
pub mod cpu {
    use std::ops::Range;

    /// Logit (i, j) of line `line` at position k (rows first, then columns).
    fn line_logits(sims: &[f32], t: f64, b: usize, line: usize) -> Vec<f64> {
        (0..b)
            .map(|k| {
                let e = if line < b {
                    line * b + k
                } else {
                    k * b + (line - b)
                };
                t * sims[e] as f64
            })
            .collect()
    }

    /// [4B]: lse of rows, lse of columns, CE of rows, CE of columns.
    pub fn line_stats(sims: &[f32], logit_scale: f32, b: usize) -> Vec<f32> {
        let t = (logit_scale as f64).exp();
        let mut stats = vec![0f32; 4 * b];
        for line in 0..2 * b {
            let l = line_logits(sims, t, b, line);
            let diag = l[line % b];
            // log Σ exp(l − diag), shifted by the largest difference.
            let m = l.iter().map(|x| x - diag).fold(f64::NEG_INFINITY, f64::max);
            let ce = m + l.iter().map(|x| (x - diag - m).exp()).sum::<f64>().ln();
            stats[line] = (diag + ce) as f32;
            stats[2 * b + line] = ce as f32;
        }
        stats
    }

    /// Mean cross-entropy of the `own` rows, then columns.
    pub fn loss(stats: &[f32], b: usize, own: Range<usize>) -> f32 {
        let n = own.len();
        let rows = &stats[2 * b + own.start..2 * b + own.end];
        let cols = &stats[3 * b + own.start..3 * b + own.end];
        let sum: f64 = rows.iter().chain(cols).map(|&x| x as f64).sum();
        (sum / (2 * n) as f64) as f32
    }

    /// Row softmax P_row and column softmax P_col of the logits, in f64.
    fn softmaxes(sims: &[f32], t: f64, b: usize) -> (Vec<f64>, Vec<f64>) {
        let mut rows = vec![0f64; b * b];
        let mut cols = vec![0f64; b * b];
        for line in 0..2 * b {
            let l = line_logits(sims, t, b, line);
            let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = l.iter().map(|x| (x - m).exp()).sum();
            for (k, x) in l.iter().enumerate() {
                let p = (x - m).exp() / sum;
                if line < b {
                    rows[line * b + k] = p;
                } else {
                    cols[k * b + (line - b)] = p;
                }
            }
        }
        (rows, cols)
    }

    pub fn grad_sims(
        sims: &[f32],
        logit_scale: f32,
        _stats: &[f32],
        grad: f32,
        b: usize,
        own: Range<usize>,
    ) -> Vec<f32> {
        let t = (logit_scale as f64).exp();
        let (rows, cols) = softmaxes(sims, t, b);
        let coef = grad as f64 * t / (2 * own.len()) as f64;
        (0..b * b)
            .map(|e| {
                let (i, j) = (e / b, e % b);
                let diag = if i == j { 1.0 } else { 0.0 };
                let row = if own.contains(&i) {
                    rows[e] - diag
                } else {
                    0.0
                };
                let col = if own.contains(&j) {
                    cols[e] - diag
                } else {
                    0.0
                };
                (coef * (row + col)) as f32
            })
            .collect()
    }

    /// Σ_ij dLoss/dlogits_ij · logits_ij (d logits / d logit_scale = logits).
    pub fn grad_logit_scale(
        sims: &[f32],
        logit_scale: f32,
        grad: f32,
        b: usize,
        own: Range<usize>,
    ) -> f32 {
        let t = (logit_scale as f64).exp();
        let (rows, cols) = softmaxes(sims, t, b);
        let mut acc = 0f64;
        for i in 0..b {
            for j in 0..b {
                let s = sims[i * b + j] as f64;
                if own.contains(&i) {
                    acc += rows[i * b + j] * (s - sims[i * b + i] as f64);
                }
                if own.contains(&j) {
                    acc += cols[i * b + j] * (s - sims[j * b + j] as f64);
                }
            }
        }
        (grad as f64 * t * acc / (2 * own.len()) as f64) as f32
    }
}
