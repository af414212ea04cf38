//! The Train panel: pre-training on built-in shapes rendered here, one optimizer step per call,
//! as `clusterclip train` steps (same batches, mask generator keys, schedule and AdamW), so the
//! browser test can compare its losses with the CLI's; a zero-shot evaluation ends each epoch.

use clusterclip::data::image_ops::normalise_rgb;
use clusterclip::data::shapes;
use clusterclip::data::tokenizer::{Tokenizer, frame_tokens};
use clusterclip::eval::{class_embeddings, encode_images_async, encode_texts_async, zero_shot};
use clusterclip::graph::Backend;
use clusterclip::masking::{MaskFlags, MaskRng, MaskStrategy};
use clusterclip::model::{Clip, ClipConfig, ClipInputs, Input};
use clusterclip::train::mask_step::{StepMask, compute_mask_async};
use clusterclip::train::step::split_inputs;
use clusterclip::train::{AdamWConfig, LrScheduler, Trainer, learning_rate};

use crate::draw;

/// Canvas of the loss curve.
const LOSS_CANVAS: &str = "train-loss";
/// Images of `builtin:shapes-zeroshot` scored after each epoch: 4 per class (its indices are
/// class-balanced), a few seconds on SwiftShader.
const ZERO_SHOT_IMAGES: usize = 256;
/// Largest batch the page offers: one step must stay interactive.
const MAX_BATCH: usize = 256;

/// The panel's settings, named as `clusterclip train`'s flags.
pub struct TrainSettings {
    pub preset: String,
    pub mask: String,
    pub batch_size: usize,
    pub epochs: u64,
    pub samples_per_epoch: u64,
    pub lr: f32,
    pub warmup: u64,
    pub seed: u64,
}

pub struct TrainSession {
    settings: TrainSettings,
    strategy: MaskStrategy,
    trainer: Trainer,
    /// Largest micro-batch one storage binding holds (WebGPU's default 128 MiB).
    micro_batch: usize,
    step: u64,
    losses: Vec<(f64, f64)>,
    /// Milliseconds spent in steps (evaluations excluded), for images/s.
    step_ms: f64,
}

impl TrainSession {
    pub fn new(settings: TrainSettings, backend: Backend) -> Result<TrainSession, String> {
        let config = ClipConfig::preset(&settings.preset)?;
        if config.vision.image_size > 64 {
            return Err(format!(
                "model {}: this page trains nano and micro (tiny is slow without a GPU)",
                settings.preset
            ));
        }
        if !(1..=MAX_BATCH).contains(&settings.batch_size) {
            return Err(format!(
                "batch size {} is outside 1..={MAX_BATCH}",
                settings.batch_size
            ));
        }
        if settings.epochs == 0 || settings.samples_per_epoch < settings.batch_size as u64 {
            return Err("an epoch needs at least one batch of samples".into());
        }
        if !(settings.lr.is_finite() && settings.lr > 0.0) {
            return Err(format!("learning rate {} must be positive", settings.lr));
        }
        let flags = MaskFlags {
            mask: settings.mask.clone(),
            ..MaskFlags::default()
        };
        let strategy = flags.plan().map_err(|e| e.to_string())?.strategy;
        let micro_batch = match &backend {
            Backend::Gpu(gpu) => settings
                .batch_size
                .min(config.largest_batch_within(gpu.binding_limit_words())),
            Backend::Cpu => settings.batch_size,
        };
        let clip = Clip::new(config, &backend, settings.seed)?;
        let trainer = Trainer::new(clip, backend, AdamWConfig::default());
        Ok(TrainSession {
            settings,
            strategy,
            trainer,
            micro_batch,
            step: 0,
            losses: Vec::new(),
            step_ms: 0.0,
        })
    }

    fn steps_per_epoch(&self) -> u64 {
        self.settings.samples_per_epoch / self.settings.batch_size as u64
    }

    fn total_steps(&self) -> u64 {
        self.steps_per_epoch() * self.settings.epochs
    }

    pub fn describe(&self) -> String {
        let s = &self.settings;
        format!(
            "{} ({} parameters), mask {}, batch {}, {} steps ({} per epoch x {} epochs), seed {}",
            s.preset,
            self.trainer.clip.params.numel(),
            self.strategy.name(),
            s.batch_size,
            self.total_steps(),
            self.steps_per_epoch(),
            s.epochs,
            s.seed
        )
    }

    /// The model being trained (its parameters shared, not copied).
    pub fn clip(&self) -> Clip {
        Clip {
            params: self.trainer.clip.params.clone(),
            config: self.trainer.clip.config.clone(),
        }
    }

    /// Batch `step` of `builtin:shapes` as `clusterclip train` reads it: samples
    /// `step * batch ..`, normalised, captions tokenized and framed.
    fn batch(&self, step: u64) -> (Vec<f32>, Vec<u32>) {
        let (t, size) = (
            &self.trainer.clip.config.text,
            self.trainer.clip.config.vision.image_size,
        );
        let batch = self.settings.batch_size as u64;
        let mut images = vec![0f32; batch as usize * 3 * size * size];
        let mut tokens = Vec::with_capacity(batch as usize * t.context_length);
        for (i, out) in images.chunks_mut(3 * size * size).enumerate() {
            let sample = shapes::train_sample(self.settings.seed, step * batch + i as u64, size);
            normalise_rgb(&sample.rgb, size, out);
            let ids = Tokenizer::shared().encode_ids(&sample.caption);
            tokens.extend(frame_tokens(&ids, t.context_length, t.vocab_size));
        }
        (images, tokens)
    }

    /// One optimizer step; JSON report. Past the last step it reports `done`.
    pub async fn step(&mut self) -> Result<String, String> {
        if self.step >= self.total_steps() {
            return Ok(serde_json::json!({"done": true, "step": self.step}).to_string());
        }
        let started = crate::now_ms();
        let step = self.step;
        let steps_per_epoch = self.steps_per_epoch();
        let batch = self.settings.batch_size;
        let (images, tokens) = self.batch(step);
        let progress = (step / steps_per_epoch) as f32 / self.settings.epochs as f32;
        let rng = MaskRng::new(self.settings.seed, step as u32);
        let clip = &self.trainer.clip;
        let backend = &self.trainer.backend;
        // Uploaded once: the mask and the step read this copy.
        let pixels = backend.upload(&images);
        let mask = compute_mask_async(clip, backend, &self.strategy, &pixels, batch, rng, progress)
            .await
            .map_err(|e| e.to_string())?;
        let mask_ratio = mask
            .as_ref()
            .and_then(StepMask::mask_ratio)
            .map_or(0.0, f64::from);
        let whole = ClipInputs {
            images: Input::Stored(pixels),
            tokens: &tokens,
            batch,
            kept: mask.as_ref().map(StepMask::kept),
        };
        let inputs = split_inputs(backend, whole, self.micro_batch);
        let lr = learning_rate(
            LrScheduler::Cosine,
            self.settings.lr,
            self.settings.warmup,
            self.total_steps(),
            step,
        );
        let report = self
            .trainer
            .step_async(&inputs, lr, true)
            .await
            .map_err(|e| e.to_string())?;
        let loss = report.loss.unwrap_or(f32::NAN);
        let seconds = (crate::now_ms() - started) / 1000.0;
        self.step_ms += seconds * 1000.0;
        self.step += 1;
        if !loss.is_finite() {
            return Err(format!(
                "loss is {loss} at step {}; training stopped",
                self.step
            ));
        }
        self.losses.push((self.step as f64, loss as f64));
        draw::curve(
            LOSS_CANVAS,
            &self.losses,
            &format!("contrastive loss, step {}", self.step),
        )?;
        let epoch_done = self.step.is_multiple_of(steps_per_epoch);
        let zero_shot = if epoch_done {
            Some(self.zero_shot_top1().await?)
        } else {
            None
        };
        Ok(serde_json::json!({
            "step": self.step,
            "total_steps": self.total_steps(),
            "epoch": self.step.div_ceil(steps_per_epoch),
            "loss": loss,
            "lr": lr,
            "mask_ratio": mask_ratio,
            "step_seconds": seconds,
            "images_per_second": batch as f64 / seconds,
            "mean_images_per_second": (self.step as f64 * batch as f64) / (self.step_ms / 1000.0),
            "zero_shot_top1": zero_shot,
            "zero_shot_images": ZERO_SHOT_IMAGES,
            "done": self.step >= self.total_steps(),
        })
        .to_string())
    }

    /// Zero-shot top-1 on the first `ZERO_SHOT_IMAGES` of `builtin:shapes-zeroshot` (prompt
    /// ensembling over its templates, M6).
    async fn zero_shot_top1(&self) -> Result<f64, String> {
        let clip = &self.trainer.clip;
        let (t, size, dim) = (
            &clip.config.text,
            clip.config.vision.image_size,
            clip.config.embed_dim,
        );
        let mut images = vec![0f32; ZERO_SHOT_IMAGES * 3 * size * size];
        let mut labels = Vec::with_capacity(ZERO_SHOT_IMAGES);
        for (i, out) in images.chunks_mut(3 * size * size).enumerate() {
            let sample = shapes::zeroshot_sample(i as u64, size);
            normalise_rgb(&sample.rgb, size, out);
            labels.push(sample.label);
        }
        let classes = shapes::zeroshot_classes();
        let templates = shapes::ZEROSHOT_TEMPLATES;
        let tokens: Vec<u32> = classes
            .iter()
            .flat_map(|c| templates.iter().map(move |t| t.replace("{}", c)))
            .flat_map(|prompt| Tokenizer::shared().encode(&prompt, t.context_length, t.vocab_size))
            .collect();
        let batch = self.micro_batch.max(1);
        let image_features = encode_images_async(clip, &images, batch)
            .await
            .map_err(|e| e.to_string())?;
        let text_features = encode_texts_async(clip, &tokens, batch)
            .await
            .map_err(|e| e.to_string())?;
        let class_features = class_embeddings(&text_features, classes.len(), templates.len(), dim);
        Ok(zero_shot(&image_features, &labels, &class_features, dim).acc1)
    }
}
