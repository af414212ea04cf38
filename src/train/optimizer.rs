//! AdamW over the flat parameter buffer with OpenCLIP's decay rule (M2), gradient gathering
//! and accumulation, global-norm gradient clipping, and the logit_scale clamp (M1).
//! Shaders: `shaders/adamw.wgsl`, `shaders/grad_flat.wgsl`. The CPU twin follows each step.

use std::sync::Arc;

use crate::gpu::BINDING_ALIGN_WORDS;
use crate::graph::{Backend, Graph, Storage};
use crate::model::config::LOGIT_SCALE_MAX;
use crate::model::params::{BoundParams, ParamStore};

/// AdamW settings (M2's defaults: β 0.9/0.98, ε 1e-6, weight decay 0.2).
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Clip gradients to this global L2 norm (`--grad-clip-norm`).
    pub grad_clip_norm: Option<f32>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            weight_decay: 0.2,
            grad_clip_norm: None,
        }
    }
}

/// A contiguous stretch of the flat layout with one decay setting. Padding between
/// parameters holds zeros in parameters and gradients, so AdamW leaves it at zero.
#[derive(Clone, Copy, Debug)]
struct Run {
    offset: usize,
    len: usize,
    decay: bool,
}

/// Gradients and both Adam moments in the parameters' flat layout.
pub struct Optimizer {
    pub config: AdamWConfig,
    pub grads: ParamStore,
    pub moment1: ParamStore,
    pub moment2: ParamStore,
    /// Optimizer steps taken (t of the bias corrections).
    pub steps: u64,
    runs: Vec<Run>,
    logit_scale_offset: Option<usize>,
    /// First-pass sums of the gradient norm, and [norm, clip coefficient].
    norm_partial: Storage,
    clip: Storage,
}

crate::kernel_params! {
    pub(crate) struct AdamParams for "adamw" {
        offset: u32,
        len: u32,
        lr: f32,
        weight_decay: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        correction1: f32,
        correction2: f32,
        lo: f32,
        hi: f32,
    }
}

crate::kernel_params! {
    pub(crate) struct FlatParams for "grad_flat" {
        offset: u32,
        len: u32,
        max_norm: f32,
        parts: u32,
    }
}

/// Workgroups of the first pass of the gradient norm.
const NORM_PARTS: usize = 256;

impl Optimizer {
    pub fn new(params: &ParamStore, backend: &Backend, config: AdamWConfig) -> Optimizer {
        let mut runs: Vec<Run> = Vec::new();
        for (i, (spec, &offset)) in params.specs.iter().zip(&params.offsets).enumerate() {
            // A frozen parameter is in no run: no step touches it (`--lock-image`).
            if params.is_frozen(i) {
                continue;
            }
            let decay = spec.decays();
            let end = offset
                + spec
                    .numel()
                    .next_multiple_of(crate::model::params::ALIGN_WORDS);
            match runs.last_mut() {
                Some(run) if run.decay == decay && run.offset + run.len == offset => {
                    run.len = end - run.offset
                }
                _ => runs.push(Run {
                    offset,
                    len: end - offset,
                    decay,
                }),
            }
        }
        let logit_scale_offset = params.position("logit_scale").map(|i| params.offsets[i]);
        Optimizer {
            grads: params.zeros_like(backend),
            moment1: params.zeros_like(backend),
            moment2: params.zeros_like(backend),
            norm_partial: backend.zeros(
                NORM_PARTS
                    * backend
                        .gpu()
                        .map_or(1, |gpu| gpu.binding_chunks(0, params.total).len()),
            ),
            clip: backend.zeros(2),
            config,
            steps: 0,
            runs,
            logit_scale_offset,
        }
    }

    /// Copies (or, with `accumulate`, adds) the graph's parameter gradients into the flat
    /// gradient buffer; a parameter the loss did not reach gets zeros.
    pub fn gather_grads(&mut self, g: &Graph, bound: &BoundParams, accumulate: bool) {
        let backend = g.backend.clone();
        match &backend {
            Backend::Cpu => {
                let flat = cpu_flat_mut(&mut self.grads.values);
                for (i, tensor) in bound.tensors.iter().enumerate() {
                    let offset = self.grads.offsets[i];
                    let len = self.grads.specs[i].numel();
                    let dst = &mut flat[offset..offset + len];
                    match g.grad(*tensor) {
                        Some(grad) => {
                            for (d, s) in dst.iter_mut().zip(grad.cpu()) {
                                *d = if accumulate { *d + s } else { *s };
                            }
                        }
                        None if !accumulate => dst.fill(0.0),
                        None => {}
                    }
                }
            }
            Backend::Gpu(gpu) => {
                let kernel = gpu.kernel(&crate::shader!("grad_flat"), "accumulate");
                let flat = self.grads.values.gpu();
                for (i, tensor) in bound.tensors.iter().enumerate() {
                    let offset = self.grads.offsets[i];
                    let len = self.grads.specs[i].numel();
                    let piece = match g.grad(*tensor) {
                        Some(grad) => grad.clone(),
                        None if accumulate => continue,
                        None => backend.zeros(len),
                    };
                    if !accumulate {
                        // A buffer copy: a memcpy on CPU drivers, where a kernel pays a loop
                        // over the lanes per value (and copies have no binding-size limit).
                        gpu.copy_range(piece.gpu(), 0, flat, offset, len);
                        continue;
                    }
                    // The flat buffer outgrows one binding at ViT-B/16 (598 MB): bind pieces.
                    for chunk in gpu.binding_chunks(offset, len) {
                        let params = FlatParams {
                            offset: chunk.inner as u32,
                            len: chunk.len as u32,
                            max_norm: 0.0,
                            parts: 0,
                        };
                        let source = piece.gpu().view(chunk.at, chunk.len);
                        gpu.dispatch_linear(
                            &kernel,
                            &params,
                            &[("flat", &chunk.view(flat)), ("piece", &source)],
                            chunk.len,
                        );
                    }
                }
            }
        }
    }

    /// Multiplies the flat gradients by `factor` (averaging accumulated micro-batches).
    pub fn scale_grads(&mut self, backend: &Backend, factor: f32) {
        if factor == 1.0 {
            return;
        }
        match backend {
            Backend::Cpu => cpu_flat_mut(&mut self.grads.values)
                .iter_mut()
                .for_each(|x| *x *= factor),
            Backend::Gpu(gpu) => {
                let kernel = gpu.kernel(&crate::shader!("grad_flat"), "scale");
                let flat = self.grads.values.gpu();
                for chunk in gpu.binding_chunks(0, self.grads.total) {
                    let params = FlatParams {
                        offset: chunk.inner as u32,
                        len: chunk.len as u32,
                        max_norm: factor,
                        parts: 0,
                    };
                    let flat = [("flat", &chunk.view(flat))];
                    gpu.dispatch_linear(&kernel, &params, &flat, chunk.len);
                }
            }
        }
    }

    /// One AdamW step at learning rate `lr` on `params`, then the logit_scale clamp.
    pub fn step(&mut self, params: &mut ParamStore, backend: &Backend, lr: f32) {
        self.steps += 1;
        let t = self.steps as i32;
        let c = &self.config;
        let correction1 = 1.0 - (c.beta1 as f64).powi(t);
        let correction2 = 1.0 - (c.beta2 as f64).powi(t);
        match backend {
            Backend::Cpu => {
                let clip = c.grad_clip_norm.map(|max| {
                    let norm = self
                        .grads
                        .values
                        .cpu()
                        .iter()
                        .map(|g| (*g as f64).powi(2))
                        .sum::<f64>()
                        .sqrt();
                    (max as f64 / (norm + 1e-6)).min(1.0) as f32
                });
                let grads = self.grads.values.cpu().to_vec();
                let p = cpu_flat_mut(&mut params.values);
                let m = cpu_flat_mut(&mut self.moment1.values);
                let v = cpu_flat_mut(&mut self.moment2.values);
                for run in &self.runs {
                    let wd = if run.decay { c.weight_decay } else { 0.0 };
                    for i in run.offset..run.offset + run.len {
                        let g = grads[i] * clip.unwrap_or(1.0);
                        p[i] -= lr * wd * p[i];
                        m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * g;
                        v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * g * g;
                        let denom = v[i].sqrt() / (correction2 as f32).sqrt() + c.eps;
                        p[i] -= (lr / correction1 as f32) * m[i] / denom;
                    }
                }
                if let Some(at) = self.logit_scale_offset {
                    p[at] = p[at].clamp(0.0, LOGIT_SCALE_MAX);
                }
            }
            Backend::Gpu(gpu) => {
                if let Some(max_norm) = c.grad_clip_norm {
                    let shader = crate::shader!("grad_flat");
                    // NORM_PARTS partial sums per binding-sized piece of the flat gradients.
                    let chunks = gpu.binding_chunks(0, self.grads.total);
                    if self.norm_partial.len() < chunks.len() * NORM_PARTS {
                        self.norm_partial = backend.zeros(chunks.len() * NORM_PARTS);
                    }
                    let (partial, result) = (self.norm_partial.gpu(), self.clip.gpu());
                    let flat = self.grads.values.gpu();
                    for (c, chunk) in chunks.iter().enumerate() {
                        let params = FlatParams {
                            offset: chunk.inner as u32,
                            len: chunk.len as u32,
                            max_norm,
                            parts: NORM_PARTS as u32,
                        };
                        let view = chunk.view(flat);
                        gpu.dispatch(
                            &gpu.kernel(&shader, "norm_partial"),
                            &params,
                            &[
                                ("flat", &view),
                                ("partial", &partial.view(c * NORM_PARTS, NORM_PARTS)),
                            ],
                            [NORM_PARTS as u32, 1, 1],
                        );
                    }
                    let params = FlatParams {
                        offset: 0,
                        len: 0,
                        max_norm,
                        parts: (chunks.len() * NORM_PARTS) as u32,
                    };
                    gpu.dispatch(
                        &gpu.kernel(&shader, "norm_final"),
                        &params,
                        &[("partial", partial), ("clip", result)],
                        [1, 1, 1],
                    );
                }
                let shader = crate::shader!("adamw");
                let entry = match c.grad_clip_norm {
                    Some(_) => "adamw_clipped",
                    None => "adamw",
                };
                // Four values per invocation where a run allows.
                let (kernel, kernel4) = (
                    gpu.kernel_in_width(&shader, entry, false),
                    gpu.kernel_in_width(&shader, entry, true),
                );
                let p = params.values.gpu();
                for (run, chunk) in self.runs.iter().flat_map(|run| {
                    gpu.binding_chunks(run.offset, run.len)
                        .into_iter()
                        .map(move |c| (run, c))
                }) {
                    let adam = AdamParams {
                        offset: chunk.inner as u32,
                        len: chunk.len as u32,
                        lr,
                        weight_decay: if run.decay { c.weight_decay } else { 0.0 },
                        beta1: c.beta1,
                        beta2: c.beta2,
                        eps: c.eps,
                        correction1: correction1 as f32,
                        correction2: correction2 as f32,
                        lo: 0.0,
                        hi: 0.0,
                    };
                    let (param, grad) = (chunk.view(p), chunk.view(self.grads.values.gpu()));
                    let moment1 = chunk.view(self.moment1.values.gpu());
                    let moment2 = chunk.view(self.moment2.values.gpu());
                    let mut buffers = vec![
                        ("param", &param),
                        ("grad", &grad),
                        ("moment1", &moment1),
                        ("moment2", &moment2),
                    ];
                    if c.grad_clip_norm.is_some() {
                        buffers.push(("clip", self.clip.gpu()));
                    }
                    if chunk.inner.is_multiple_of(4) && chunk.len.is_multiple_of(4) {
                        gpu.dispatch_linear(&kernel4, &adam, &buffers, chunk.len / 4);
                    } else {
                        gpu.dispatch_linear(&kernel, &adam, &buffers, chunk.len);
                    }
                }
                if let Some(at) = self.logit_scale_offset {
                    let clamp = AdamParams {
                        offset: at as u32,
                        len: 1,
                        lo: 0.0,
                        hi: LOGIT_SCALE_MAX,
                        ..bytemuck::Zeroable::zeroed()
                    };
                    let at_view = at / BINDING_ALIGN_WORDS * BINDING_ALIGN_WORDS;
                    let clamp = AdamParams {
                        offset: (at - at_view) as u32,
                        ..clamp
                    };
                    let view = p.view(at_view, at - at_view + 1);
                    gpu.dispatch(
                        &gpu.kernel(&shader, "clamp_value"),
                        &clamp,
                        &[("param", &view)],
                        [1, 1, 1],
                    );
                }
            }
        }
    }
}

/// Mutable access to CPU flat storage (copy-on-write if a graph still shares it).
fn cpu_flat_mut(storage: &mut Storage) -> &mut Vec<f32> {
    match storage {
        Storage::Cpu(values) => Arc::make_mut(values),
        Storage::Gpu(_) => panic!("CPU optimizer on GPU storage"),
    }
}
