//! One training step: forward, loss, backward, gradients into the flat buffer, AdamW — all
//! recorded into one command encoder and one submit; the loss is read back only on request.

use crate::graph::{Backend, Graph, ShapeError, Storage};
use crate::model::{Clip, ClipInputs};

use super::optimizer::{AdamWConfig, Optimizer};

pub struct Trainer {
    pub clip: Clip,
    pub optimizer: Optimizer,
    pub backend: Backend,
}

/// What one step reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepReport {
    /// The loss before the update, if it was read back.
    pub loss: Option<f32>,
}

impl Trainer {
    pub fn new(clip: Clip, backend: Backend, config: AdamWConfig) -> Trainer {
        let optimizer = Optimizer::new(&clip.params, &backend, config);
        Trainer {
            clip,
            optimizer,
            backend,
        }
    }

    /// Forward + backward of one micro-batch into the flat gradients (added when `accumulate`).
    /// Returns the loss, still on the device.
    pub fn accumulate_gradients(
        &mut self,
        inputs: &ClipInputs,
        accumulate: bool,
    ) -> Result<Storage, ShapeError> {
        let mut g = Graph::new(self.backend.clone());
        let out = self.clip.forward(&mut g, inputs)?;
        g.backward(out.loss)?;
        self.optimizer.gather_grads(&g, &out.params, accumulate);
        Ok(g.storage(out.loss).clone())
    }

    /// Blocking [`Trainer::step_async`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn step(
        &mut self,
        micro_batches: &[ClipInputs],
        lr: f32,
        read_loss: bool,
    ) -> Result<StepReport, ShapeError> {
        crate::gpu::block_on(self.step_async(micro_batches, lr, read_loss))
    }

    /// One optimizer step at learning rate `lr` on the batch made of `micro_batches`.
    ///
    /// Several micro-batches are one contrastive batch, as OpenCLIP's `--accum-freq`: a first
    /// pass computes every micro-batch's features without keeping activations, the loss over all
    /// of them gives the gradients of the features and `logit_scale`, and a second pass per
    /// micro-batch back-propagates its slice of those gradients. The update equals one step on
    /// the whole batch (every image still meets every caption as a negative) at the cost of a
    /// second forward, while only one micro-batch's activations exist at a time.
    pub async fn step_async(
        &mut self,
        micro_batches: &[ClipInputs<'_>],
        lr: f32,
        read_loss: bool,
    ) -> Result<StepReport, ShapeError> {
        let loss = match micro_batches {
            [] => return Ok(StepReport { loss: None }),
            [one] => self.accumulate_gradients(one, false)?,
            many => self.accumulate_feature_cached(many)?,
        };
        self.optimizer
            .step(&mut self.clip.params, &self.backend, lr);
        // The read submits the whole step at once; otherwise submit without waiting.
        let loss = if read_loss {
            Some(read_storage_async(&self.backend, &loss).await[0])
        } else {
            if let Backend::Gpu(gpu) = &self.backend {
                gpu.flush();
            }
            None
        };
        Ok(StepReport { loss })
    }

    /// The gradients of one contrastive loss over all `micro_batches` (see [`Trainer::step`]).
    fn accumulate_feature_cached(
        &mut self,
        micro_batches: &[ClipInputs],
    ) -> Result<Storage, ShapeError> {
        let backend = self.backend.clone();
        // Pass 1: features only; each graph (and its activations) is dropped at once.
        let mut image_parts = Vec::with_capacity(micro_batches.len());
        let mut text_parts = Vec::with_capacity(micro_batches.len());
        for inputs in micro_batches {
            let mut g = Graph::new(backend.clone());
            let (_, image, text) = self.clip.features(&mut g, inputs)?;
            image_parts.push(g.storage(image).clone());
            text_parts.push(g.storage(text).clone());
        }
        let total: usize = micro_batches.iter().map(|m| m.batch).sum();
        let dim = self.clip.config.embed_dim;
        // The loss over the whole batch: gradients of all features and of logit_scale.
        let mut g = Graph::new(backend.clone());
        let params = self.clip.params.bind(&mut g);
        let image = g.from_storage(
            backend.concat(&image_parts.iter().collect::<Vec<_>>()),
            &[total, dim],
            true,
        )?;
        let text = g.from_storage(
            backend.concat(&text_parts.iter().collect::<Vec<_>>()),
            &[total, dim],
            true,
        )?;
        let loss = g.contrastive_loss(image, text, params.get("logit_scale"))?;
        g.backward(loss)?;
        let (d_image, d_text) = match (g.grad(image), g.grad(text)) {
            (Some(a), Some(b)) => (a.clone(), b.clone()),
            _ => unreachable!("the contrastive loss reaches both feature sets"),
        };
        let loss_graph = (g, params);
        // Pass 2: per micro-batch, back-propagate its rows of the feature gradients through the
        // towers: the gradient of Σ features ∘ d_features (a constant) is exactly that.
        let mut row = 0;
        for inputs in micro_batches {
            let mut g = Graph::new(backend.clone());
            let (params, image, text) = self.clip.features(&mut g, inputs)?;
            let n = inputs.batch * dim;
            let seeds = [
                backend.slice(&d_image, row * dim, n),
                backend.slice(&d_text, row * dim, n),
            ];
            let mut surrogate = None;
            for (features, seed) in [image, text].into_iter().zip(seeds) {
                let seed = g.from_storage(seed, &[inputs.batch, dim], false)?;
                let product = g.mul(features, seed)?;
                let sum = g.sum_all(product)?;
                surrogate = Some(match surrogate {
                    None => sum,
                    Some(other) => g.add(other, sum)?,
                });
            }
            g.backward(surrogate.expect("two feature sets"))?;
            self.optimizer.gather_grads(&g, &params, row > 0);
            row += inputs.batch;
        }
        // Only logit_scale has a gradient in the loss graph: added to what the towers left.
        let (g, params) = loss_graph;
        self.optimizer.gather_grads(&g, &params, true);
        Ok(g.storage(loss).clone())
    }
}

/// `inputs` cut into micro-batches of at most `size` images, in order (a kept-patch list has
/// the same count per image, so it is cut at the same images).
pub fn split_inputs(inputs: ClipInputs<'_>, size: usize) -> Vec<ClipInputs<'_>> {
    let size = size.max(1);
    if inputs.batch <= size {
        return vec![inputs];
    }
    let per_image = |len: usize| len / inputs.batch.max(1);
    let (image_len, token_len) = (
        per_image(inputs.images.len()),
        per_image(inputs.tokens.len()),
    );
    let kept_len = inputs.kept.map_or(0, |k| per_image(k.len()));
    (0..inputs.batch)
        .step_by(size)
        .map(|first| {
            let n = size.min(inputs.batch - first);
            ClipInputs {
                images: &inputs.images[first * image_len..(first + n) * image_len],
                tokens: &inputs.tokens[first * token_len..(first + n) * token_len],
                batch: n,
                kept: inputs
                    .kept
                    .map(|k| &k[first * kept_len..(first + n) * kept_len]),
            }
        })
        .collect()
}

/// Reads storage of `backend` to the host (the loss, parameters and moments of a checkpoint).
pub async fn read_storage_async(backend: &Backend, value: &Storage) -> Vec<f32> {
    match (backend, value) {
        (_, Storage::Cpu(v)) => v.to_vec(),
        (Backend::Gpu(gpu), Storage::Gpu(b)) => gpu
            .read_f32_async(b)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        (Backend::Cpu, Storage::Gpu(_)) => panic!("GPU storage on the CPU backend"),
    }
}

/// Blocking [`read_storage_async`] (native only).
#[cfg(not(target_arch = "wasm32"))]
pub fn read_storage(backend: &Backend, value: &Storage) -> Vec<f32> {
    crate::gpu::block_on(read_storage_async(backend, value))
}
