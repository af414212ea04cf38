//! One training step: forward, loss, backward, gradients into the flat buffer, AdamW — all
//! recorded into one command encoder and one submit; the loss is read back only on request.
//! With several ranks (issue 14) the features are all-gathered and the gradients all-reduced
//! in between (see [`DataParallel`]).

use std::collections::HashMap;
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;

use crate::gpu::DispatchPlan;
use crate::graph::{Backend, Graph, ShapeError, Storage, Tensor, shape_error};
use crate::model::params::BoundParams;
use crate::model::{Clip, ClipInputs, Input};

use super::mask_step::DeviceKeep;

use super::optimizer::{AdamWConfig, Optimizer};
use super::ranks::Ranks;

pub struct Trainer {
    pub clip: Clip,
    pub optimizer: Optimizer,
    pub backend: Backend,
    /// The other ranks of a data-parallel run; `None` trains alone.
    pub parallel: Option<DataParallel>,
    /// Dispatch plans of steps on a device keep count, by (batch, floor, cap); an error says
    /// why a shape has none (its steps then read k).
    plans: HashMap<(usize, usize, usize), Result<Arc<DispatchPlan>, String>>,
}

/// How the ranks of a data-parallel run share a step, with OpenCLIP's flags and semantics
/// (src/train/gather.rs derives them and tests/gather_semantics.rs checks the derivation):
///
/// - Every rank's image and text features are all-gathered, in rank order, and the contrastive
///   loss runs over the global batch (`local_loss`: over this rank's rows and columns only).
/// - The gradient reaching this rank's own features is that loss's gradient of its own rows
///   (OpenCLIP's default: the gathered copies of other ranks are constants), or with
///   `gather_with_grad` the sum over ranks of every rank's loss gradient of these rows (the
///   backward of a differentiable all-gather).
/// - The flat gradients are then averaged over ranks (DDP's mean) and AdamW runs identically
///   on every rank.
///
/// So `gather_with_grad`, with or without `local_loss`, gives exactly the gradient of one
/// process on the whole batch; the default gives the logit scale's exactly and 1/R of the
/// towers' (AdamW is nearly blind to that scale); `local_loss` alone drops the column terms.
pub struct DataParallel {
    pub ranks: Rc<dyn Ranks>,
    pub gather_with_grad: bool,
    pub local_loss: bool,
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
            parallel: None,
            plans: HashMap::new(),
        }
    }

    /// One line per dispatch plan built so far (see [`Trainer::step_counted`]).
    pub fn plan_summaries(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .plans
            .iter()
            .map(|(&(batch, floor, cap), plan)| match plan {
                Ok(plan) => format!(
                    "batch {batch}, k {floor}..={cap}: {} dispatches, {} sized by k, {} \
                     kernel choices held to a form for every k, built in {:.2} s",
                    plan.dispatches(),
                    plan.dynamic_dispatches(),
                    plan.forced_sites(),
                    plan.build_seconds()
                ),
                Err(why) => format!("batch {batch}, k {floor}..={cap}: none ({why})"),
            })
            .collect();
        lines.sort();
        lines
    }

    /// The ranks this trainer shares steps with, if more than one.
    fn ranks(&self) -> Option<&DataParallel> {
        self.parallel.as_ref().filter(|p| p.ranks.size() > 1)
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
            _ if self.ranks().is_some() => self.accumulate_across_ranks(micro_batches).await?,
            [one] => self.accumulate_gradients(one, false)?,
            many => self.accumulate_feature_cached(many)?,
        };
        self.finish_step_async(loss, lr, read_loss).await
    }

    /// Blocking [`Trainer::step_counted_async`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn step_counted(
        &mut self,
        inputs: &ClipInputs,
        keep: &DeviceKeep,
        lr: f32,
        read_loss: bool,
    ) -> Result<StepReport, ShapeError> {
        crate::gpu::block_on(self.step_counted_async(inputs, keep, lr, read_loss))
    }

    /// One optimizer step on one batch whose keep count k is on the device (an unpinned
    /// cluster mask, M3.4): `inputs.kept` holds [batch, keep.cap] indices, [batch, k] of them
    /// at the front. The step replays a dispatch plan (src/gpu/plan.rs), built on the first
    /// step of each shape: one submit, no read, and the image tower computes on k tokens.
    /// Where no plan can be built (an adapter without indirect dispatch) the step reads k.
    pub async fn step_counted_async(
        &mut self,
        inputs: &ClipInputs<'_>,
        keep: &DeviceKeep,
        lr: f32,
        read_loss: bool,
    ) -> Result<StepReport, ShapeError> {
        let gpu = match &self.backend {
            Backend::Gpu(gpu) => gpu.clone(),
            Backend::Cpu => panic!("a device keep count on the CPU backend"),
        };
        let kept = match &inputs.kept {
            Some(Input::Stored(Storage::Gpu(kept)))
                if kept.len() == inputs.batch * keep.cap && self.ranks().is_none() =>
            {
                kept.clone()
            }
            _ => {
                return Err(shape_error(
                    "step_counted",
                    format!(
                        "kept indices must be [{}, {}] on the GPU, for one rank",
                        inputs.batch, keep.cap
                    ),
                ));
            }
        };
        let key = (inputs.batch, keep.floor, keep.cap);
        if !self.plans.contains_key(&key) {
            let plan = gpu.build_plan(keep.floor..=keep.cap, |k| {
                let at_k = ClipInputs {
                    kept: Some(Input::Stored(Storage::Gpu(kept.view(0, inputs.batch * k)))),
                    ..inputs.clone()
                };
                self.accumulate_gradients(&at_k, false)
                    .map(drop)
                    .map_err(|e| e.to_string())
            });
            if let Err(why) = &plan {
                eprintln!(
                    "no dispatch plan for batch {} ({why}): each step reads k",
                    inputs.batch
                );
            }
            self.plans.insert(key, plan.map(Arc::new));
        }
        let loss = match &self.plans[&key] {
            Ok(plan) => {
                let plan = plan.clone();
                gpu.begin_plan(&plan, &keep.count);
                let loss = self.accumulate_gradients(inputs, false);
                let ended = gpu.end_plan();
                let loss = loss?;
                ended.map_err(|why| shape_error("step_counted", why))?;
                loss
            }
            Err(_) => {
                let read = gpu
                    .read_many_u32_async(&[&keep.count, &kept])
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let k = (read[0][0] as usize).clamp(keep.floor, keep.cap);
                let host_kept = &read[1][..inputs.batch * k];
                let at_k = ClipInputs {
                    kept: Some(Input::Host(host_kept)),
                    ..inputs.clone()
                };
                self.accumulate_gradients(&at_k, false)?
            }
        };
        self.finish_step_async(loss, lr, read_loss).await
    }

    /// AdamW at `lr` on the gathered gradients, then the loss read back or the step submitted.
    async fn finish_step_async(
        &mut self,
        loss: Storage,
        lr: f32,
        read_loss: bool,
    ) -> Result<StepReport, ShapeError> {
        self.optimizer
            .step(&mut self.clip.params, &self.backend, lr);
        // The read submits the whole step at once; otherwise submit without waiting.
        let loss = if read_loss {
            let mut loss = read_storage_async(&self.backend, &loss).await;
            if let Some(parallel) = self.ranks() {
                // The mean over ranks: the global loss also under --local-loss (OpenCLIP
                // logs rank 0's own).
                parallel.ranks.all_reduce_sum(&mut loss);
                loss[0] /= parallel.ranks.size() as f32;
            }
            Some(loss[0])
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
        let (image_parts, text_parts, _) = self.features_only(micro_batches, false)?;
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
        // Pass 2: per micro-batch, back-propagate its rows of the feature gradients.
        self.backprop_features(micro_batches, None, [&d_image, &d_text], 0)?;
        // Only logit_scale has a gradient in the loss graph: added to what the towers left.
        let (g, params) = loss_graph;
        self.optimizer.gather_grads(&g, &params, true);
        Ok(g.storage(loss).clone())
    }

    /// The image and text features of each micro-batch; with `keep_single` and one
    /// micro-batch, also its forward graph (for its backward), else every graph is dropped.
    #[allow(clippy::type_complexity)]
    fn features_only(
        &self,
        micro_batches: &[ClipInputs],
        keep_single: bool,
    ) -> Result<(Vec<Storage>, Vec<Storage>, Option<FeatureGraph>), ShapeError> {
        let mut kept = None;
        let mut image_parts = Vec::with_capacity(micro_batches.len());
        let mut text_parts = Vec::with_capacity(micro_batches.len());
        for inputs in micro_batches {
            let mut g = Graph::new(self.backend.clone());
            let (params, image, text) = self.clip.features(&mut g, inputs)?;
            image_parts.push(g.storage(image).clone());
            text_parts.push(g.storage(text).clone());
            if keep_single && micro_batches.len() == 1 {
                kept = Some((g, params, image, text));
            }
        }
        Ok((image_parts, text_parts, kept))
    }

    /// Back-propagates rows `first_row..` of the feature gradients `[d_image, d_text]` through
    /// the towers into the flat gradients, micro-batch by micro-batch: the gradient of
    /// Σ features ∘ d_features (a constant) is exactly that. A graph `kept` from the forward of
    /// a single micro-batch is reused instead of a second forward.
    fn backprop_features(
        &mut self,
        micro_batches: &[ClipInputs],
        kept: Option<FeatureGraph>,
        [d_image, d_text]: [&Storage; 2],
        first_row: usize,
    ) -> Result<(), ShapeError> {
        let backend = self.backend.clone();
        let dim = self.clip.config.embed_dim;
        let mut kept = kept;
        let mut row = first_row;
        for inputs in micro_batches {
            let (mut g, params, image, text) = match kept.take() {
                Some(features) => features,
                None => {
                    let mut g = Graph::new(backend.clone());
                    let (params, image, text) = self.clip.features(&mut g, inputs)?;
                    (g, params, image, text)
                }
            };
            let n = inputs.batch * dim;
            let seeds = [
                backend.slice(d_image, row * dim, n),
                backend.slice(d_text, row * dim, n),
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
            self.optimizer.gather_grads(&g, &params, row > first_row);
            row += inputs.batch;
        }
        Ok(())
    }

    /// The gradients of one data-parallel step (see [`DataParallel`]): features of this rank's
    /// micro-batches, all-gathered; the loss over the global batch; this rank's rows of its
    /// gradient (summed over ranks with `gather_with_grad`) back-propagated; the flat gradients
    /// averaged over ranks. Returns this rank's loss, on the device.
    async fn accumulate_across_ranks(
        &mut self,
        micro_batches: &[ClipInputs<'_>],
    ) -> Result<Storage, ShapeError> {
        let backend = self.backend.clone();
        let dim = self.clip.config.embed_dim;
        let parallel = self.ranks().expect("several ranks");
        let (ranks, gather_with_grad, local_loss) = (
            parallel.ranks.clone(),
            parallel.gather_with_grad,
            parallel.local_loss,
        );
        let (rank, size) = (ranks.rank(), ranks.size());
        // Pass 1: features; a single micro-batch keeps its graph for the backward.
        let (mut parts, text_parts, kept) = self.features_only(micro_batches, true)?;
        parts.extend(text_parts);
        let local: usize = micro_batches.iter().map(|m| m.batch).sum();
        let (global, own) = (local * size, rank * local..(rank + 1) * local);
        // This rank's [images; texts] in one read, gathered in rank order.
        let mine = backend.concat(&parts.iter().collect::<Vec<_>>());
        let gathered = ranks.all_gather(&read_storage_async(&backend, &mine).await);
        let (images, texts) = split_by_rank(&gathered, size, local * dim);
        let mut g = Graph::new(backend.clone());
        let params = self.clip.params.bind(&mut g);
        let image = g.variable(&images, &[global, dim])?;
        let text = g.variable(&texts, &[global, dim])?;
        let scale = params.get("logit_scale");
        let lines = if local_loss { own.clone() } else { 0..global };
        let loss = g.local_contrastive_loss(image, text, scale, lines)?;
        g.backward(loss)?;
        let (d_image, d_text) = match (g.grad(image), g.grad(text)) {
            (Some(a), Some(b)) => (a.clone(), b.clone()),
            _ => unreachable!("the contrastive loss reaches both feature sets"),
        };
        let (d_image, d_text, first_row) = if gather_with_grad {
            // The backward of a differentiable all-gather: every rank's loss gradient of these
            // rows, summed (a reduce-scatter, done as an all-reduce of [d_image; d_text]).
            let both = backend.concat(&[&d_image, &d_text]);
            let mut both = read_storage_async(&backend, &both).await;
            ranks.all_reduce_sum(&mut both);
            let mine = own_rows(&both, global * dim, own.clone(), dim);
            let (d_image, d_text) = mine.split_at(local * dim);
            (backend.upload(d_image), backend.upload(d_text), 0)
        } else {
            (d_image, d_text, own.start)
        };
        self.backprop_features(micro_batches, kept, [&d_image, &d_text], first_row)?;
        self.optimizer.gather_grads(&g, &params, true);
        // DDP's mean over ranks: the sum on the host, the division by the optimizer's kernel.
        let mut flat = read_storage_async(&backend, &self.optimizer.grads.values).await;
        ranks.all_reduce_sum(&mut flat);
        self.optimizer.grads.values = backend.upload(&flat);
        self.optimizer.scale_grads(&backend, 1.0 / size as f32);
        Ok(g.storage(loss).clone())
    }
}

/// A forward graph kept for its backward: the graph, its bound parameters, and the image and
/// text features.
type FeatureGraph = (Graph, BoundParams, Tensor, Tensor);

/// The gathered [images; texts] blocks of `ranks` ranks (`per_rank` words each) as all images
/// then all texts, in rank order.
fn split_by_rank(gathered: &[f32], ranks: usize, per_rank: usize) -> (Vec<f32>, Vec<f32>) {
    let mut images = Vec::with_capacity(ranks * per_rank);
    let mut texts = Vec::with_capacity(ranks * per_rank);
    for block in gathered.chunks(2 * per_rank) {
        images.extend_from_slice(&block[..per_rank]);
        texts.extend_from_slice(&block[per_rank..]);
    }
    (images, texts)
}

/// Rows `own` of both halves of [d_images; d_texts] (`half` words each), as [images; texts].
fn own_rows(both: &[f32], half: usize, own: Range<usize>, dim: usize) -> Vec<f32> {
    let rows = own.start * dim..own.end * dim;
    let (images, texts) = both.split_at(half);
    [&images[rows.clone()], &texts[rows]].concat()
}

/// `inputs` cut into micro-batches of at most `size` images, in order (a kept-patch list has
/// the same count per image, so it is cut at the same images).
pub fn split_inputs<'a>(
    backend: &Backend,
    inputs: ClipInputs<'a>,
    size: usize,
) -> Vec<ClipInputs<'a>> {
    let size = size.max(1);
    if inputs.batch <= size {
        return vec![inputs];
    }
    let per_image = |len: usize| len / inputs.batch.max(1);
    let (image_len, token_len) = (
        per_image(inputs.images.len()),
        per_image(inputs.tokens.len()),
    );
    let kept_len = inputs.kept.as_ref().map_or(0, |k| per_image(k.len()));
    (0..inputs.batch)
        .step_by(size)
        .map(|first| {
            let n = size.min(inputs.batch - first);
            let images = first * image_len..(first + n) * image_len;
            let kept = first * kept_len..(first + n) * kept_len;
            ClipInputs {
                images: inputs.images.slice(backend, images),
                tokens: &inputs.tokens[first * token_len..(first + n) * token_len],
                batch: n,
                kept: inputs.kept.as_ref().map(|k| k.slice(backend, kept)),
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
