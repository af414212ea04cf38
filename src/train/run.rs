//! The training run as a library function: settings in, steps run, a summary out (the CLI only
//! parses flags). Everything that feeds a step is restorable from a checkpoint (parameters,
//! moments, optimizer step, data position; the mask RNG is keyed by (seed, step)), so
//! N steps + `--resume latest` + N steps equals 2N steps straight, bit for bit.

use std::path::PathBuf;
use std::time::Instant;

use crate::data::loader::{LoaderConfig, ReadOptions, check_max_bad_fraction};
use crate::data::spec::{DatasetType, resolve_spec};
use crate::graph::Backend;
use crate::masking::{ClusterMaskConfig, MaskRng, calibrate_on_images, check_ratio};
use crate::model::{Clip, ClipConfig, ClipInputs};

use super::checkpoint::{CheckpointError, LATEST, TrainState, load_checkpoint, save_checkpoint};
use super::logs::{RunLogs, check_new_run_folder, default_run_name, format_duration};
use super::mask_step::{MaskStrategy, compute_mask};
use super::optimizer::AdamWConfig;
use super::schedule::{LrScheduler, learning_rate};
use super::step::{Trainer, split_inputs};
use super::stream::{TrainStream, is_builtin_train};
use crate::eval::tasks::{
    BUILTIN_ZEROSHOT, CaptionSet, LabelledSet, caption_set, logit_scale, retrieval_eval,
    retrieval_json, zeroshot_eval, zeroshot_json, zeroshot_set,
};

/// Smallest batch of frozen feature extraction at evaluation (larger training batches are used
/// as they are): few large passes cost far less than many small ones.
const MIN_EVAL_BATCH: usize = 64;

/// Batches `--threshold auto` bisects over (M3.6: "on the first batches").
const CALIBRATION_BATCHES: usize = 2;

#[derive(Clone, Debug, PartialEq)]
pub enum ResumeFrom {
    /// `--resume latest`: `LOGS/NAME/checkpoints/epoch_latest.safetensors`.
    Latest,
    Path(PathBuf),
}

/// Every setting of a run; field names follow OpenCLIP's flags.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Preset name (for the run name and params.json).
    pub model_name: String,
    pub model: ClipConfig,
    pub train_data: String,
    /// Retrieval and validation loss on this spec; None: no validation.
    pub val_data: Option<String>,
    /// Zero-shot task; None: no zero-shot evaluation.
    pub zeroshot_data: Option<String>,
    pub batch_size: usize,
    pub epochs: u64,
    /// Samples per epoch.
    pub train_num_samples: u64,
    pub lr: f32,
    pub warmup: u64,
    pub lr_scheduler: LrScheduler,
    pub adamw: AdamWConfig,
    pub accum_freq: usize,
    pub seed: u64,
    pub logs: PathBuf,
    pub name: Option<String>,
    /// Write `epoch_N` every this many epochs (0: only `epoch_latest`).
    pub save_frequency: u64,
    pub resume: Option<ResumeFrom>,
    /// Evaluate every this many epochs (0: never).
    pub val_frequency: u64,
    pub zeroshot_frequency: u64,
    pub log_every_n_steps: u64,
    /// Stop after this many optimizer steps in all (the schedule still spans all epochs).
    pub steps: Option<u64>,
    /// How --train-data and --val-data are read (`--dataset-type`, CSV/WebDataset keys,
    /// `--workers`, `--max-bad-fraction`, `--dataset-resampled` for training data only).
    pub data: ReadOptions,
    pub mask: MaskStrategy,
    /// `--threshold auto`: calibrate the cluster threshold to this mask ratio (M3.6).
    pub target_mask_ratio: Option<f64>,
    /// Images of the zero-shot set and samples of the validation set used per evaluation.
    pub eval_limit: Option<usize>,
}

impl TrainConfig {
    /// OpenCLIP-like defaults for `model` (the CLI's defaults live in `cli/train.rs`).
    pub fn new(model_name: &str, model: ClipConfig) -> TrainConfig {
        TrainConfig {
            model_name: model_name.to_string(),
            model,
            train_data: "builtin:shapes".into(),
            val_data: None,
            zeroshot_data: None,
            batch_size: 64,
            epochs: 1,
            train_num_samples: 6400,
            lr: 5e-4,
            warmup: 0,
            lr_scheduler: LrScheduler::Cosine,
            adamw: AdamWConfig::default(),
            accum_freq: 1,
            seed: 0,
            logs: PathBuf::from("./logs"),
            name: None,
            save_frequency: 1,
            resume: None,
            val_frequency: 1,
            zeroshot_frequency: 1,
            log_every_n_steps: 10,
            steps: None,
            data: ReadOptions::default(),
            mask: MaskStrategy::Cluster(ClusterMaskConfig::default()),
            target_mask_ratio: None,
            eval_limit: None,
        }
    }

    /// Samples per optimizer step.
    pub fn step_samples(&self) -> u64 {
        (self.batch_size * self.accum_freq) as u64
    }

    pub fn steps_per_epoch(&self) -> u64 {
        self.train_num_samples / self.step_samples().max(1)
    }

    pub fn total_steps(&self) -> u64 {
        self.steps_per_epoch() * self.epochs
    }

    /// Checks every setting; the error is one line naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("--batch-size", self.batch_size as u64),
            ("--epochs", self.epochs),
            ("--accum-freq", self.accum_freq as u64),
            ("--log-every-n-steps", self.log_every_n_steps),
        ];
        for (flag, value) in positive {
            if value == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        if self.steps == Some(0) {
            return Err("--steps must be at least 1".into());
        }
        if self.steps_per_epoch() == 0 {
            return Err(format!(
                "--train-num-samples {} is less than one step ({} = --batch-size × --accum-freq)",
                self.train_num_samples,
                self.step_samples()
            ));
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return Err(format!("--lr {} must be a finite number ≥ 0", self.lr));
        }
        let a = &self.adamw;
        if !(a.weight_decay.is_finite() && a.weight_decay >= 0.0) {
            return Err(format!(
                "--wd {} must be a finite number ≥ 0",
                a.weight_decay
            ));
        }
        for (flag, beta) in [("--beta1", a.beta1), ("--beta2", a.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(format!("{flag} {beta} is outside [0, 1)"));
            }
        }
        if !(a.eps.is_finite() && a.eps > 0.0) {
            return Err(format!("--eps {} must be positive", a.eps));
        }
        if let Some(norm) = a.grad_clip_norm.filter(|n| !(n.is_finite() && *n > 0.0)) {
            return Err(format!("--grad-clip-norm {norm} must be positive"));
        }
        match &self.mask {
            MaskStrategy::None => {}
            MaskStrategy::Random { mask_ratio } => {
                check_ratio("mask-ratio", *mask_ratio).map_err(|e| e.to_string())?
            }
            MaskStrategy::Cluster(c) | MaskStrategy::ClusterEmbed(c) => {
                c.validate().map_err(|e| e.to_string())?
            }
        }
        check_max_bad_fraction(self.data.max_bad_fraction).map_err(|e| e.to_string())?;
        if let Some(target) = self.target_mask_ratio {
            check_ratio("target-mask-ratio", target).map_err(|e| e.to_string())?;
        }
        if let Some(name) = &self.name {
            check_run_name(name)?;
        }
        if self.resume == Some(ResumeFrom::Latest) && self.name.is_none() {
            return Err(
                "--resume latest needs --name (the run whose checkpoints to resume)".into(),
            );
        }
        self.model.validate().map_err(|e| format!("--model: {e}"))?;
        // Specs are resolved up front, so one that matches nothing fails before anything starts.
        let dataset_type = self.data.dataset_type;
        resolve_spec(&self.train_data, dataset_type).map_err(|e| format!("--train-data: {e}"))?;
        if let Some(spec) = &self.val_data {
            resolve_spec(spec, dataset_type).map_err(|e| format!("--val-data: {e}"))?;
        }
        match &self.zeroshot_data {
            Some(spec) if spec != BUILTIN_ZEROSHOT => {
                resolve_spec(spec, DatasetType::Auto)
                    .map_err(|e| format!("--zeroshot-data: {e}"))?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The run folder name (OpenCLIP's default when `--name` is absent).
    pub fn run_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            default_run_name(
                &self.model_name,
                self.lr,
                self.batch_size,
                self.data.workers,
            )
        })
    }

    /// Settings as `params.json` holds them.
    pub fn to_json(&self) -> serde_json::Value {
        let (mask_ratio, cluster) = match &self.mask {
            MaskStrategy::None => (None, None),
            MaskStrategy::Random { mask_ratio } => (Some(*mask_ratio), None),
            MaskStrategy::Cluster(c) | MaskStrategy::ClusterEmbed(c) => (None, Some(*c)),
        };
        let d = &self.data;
        let mut params = serde_json::json!({
            "model": self.model_name,
            "model_config": super::checkpoint::config_json(&self.model),
            "train_data": self.train_data, "val_data": self.val_data, "zeroshot_data": self.zeroshot_data,
            "batch_size": self.batch_size, "epochs": self.epochs, "train_num_samples": self.train_num_samples,
            "lr": self.lr, "wd": self.adamw.weight_decay, "beta1": self.adamw.beta1, "beta2": self.adamw.beta2,
            "eps": self.adamw.eps, "grad_clip_norm": self.adamw.grad_clip_norm, "warmup": self.warmup,
            "lr_scheduler": match self.lr_scheduler { LrScheduler::Cosine => "cosine", LrScheduler::Const => "const" },
            "accum_freq": self.accum_freq, "seed": self.seed, "logs": self.logs, "name": self.name,
            "save_frequency": self.save_frequency, "val_frequency": self.val_frequency,
            "zeroshot_frequency": self.zeroshot_frequency, "log_every_n_steps": self.log_every_n_steps,
            "steps": self.steps, "workers": d.workers, "mask": self.mask.name(), "mask_ratio": mask_ratio,
            "anchor_ratio": cluster.map(|c| c.anchor_ratio), "threshold": cluster.map(|c| c.threshold),
            "min_mask_ratio": cluster.map(|c| c.min_mask_ratio), "max_mask_ratio": cluster.map(|c| c.max_mask_ratio),
            "mask_features": cluster.map(|c| c.features.name()),
            "target_mask_ratio": self.target_mask_ratio,
            "resume": self.resume.as_ref().map(|r| match r { ResumeFrom::Latest => "latest".to_string(), ResumeFrom::Path(p) => p.display().to_string() }),
            "steps_per_epoch": self.steps_per_epoch(), "total_steps": self.total_steps(),
        });
        // A second object: one json! of every setting exceeds the macro recursion limit.
        let reader = serde_json::json!({
            "dataset_type": d.dataset_type.to_string(), "csv_separator": (d.keys.csv_separator as char).to_string(),
            "csv_img_key": d.keys.csv_img_key, "csv_caption_key": d.keys.csv_caption_key,
            "image_key": d.keys.image_keys.join(";"), "text_key": d.keys.text_key,
            "max_bad_fraction": d.max_bad_fraction, "dataset_resampled": d.resampled,
        });
        if let (Some(all), serde_json::Value::Object(reader)) = (params.as_object_mut(), reader) {
            all.extend(reader);
        }
        params
    }

    fn loader_config(&self) -> LoaderConfig {
        let m = &self.model;
        let mut config = LoaderConfig::new(
            &self.train_data,
            m.vision.image_size,
            m.text.context_length,
            m.text.vocab_size,
            self.batch_size,
        )
        .with_options(&self.data);
        config.seed = self.seed;
        config
    }

    /// How the zero-shot set is read: its type comes from its own spec (`imagefolder:DIR`),
    /// never from `--dataset-type`, which names the type of the captioned data.
    fn zeroshot_read_options(&self) -> ReadOptions {
        ReadOptions {
            dataset_type: DatasetType::Auto,
            ..self.data.clone()
        }
    }
}

/// `--name` is one folder under `--logs`: empty, it would write into `--logs` itself; a path
/// would write elsewhere.
fn check_run_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("--name is empty: the run would be written straight into --logs".into());
    }
    if name == "." || name == ".." || name.contains(['/', '\\']) {
        return Err(format!(
            "--name '{name}' must be one folder name under --logs (no '/', '\\', '.' or '..')"
        ));
    }
    Ok(())
}

/// Why a run stopped early.
#[derive(Debug)]
pub enum TrainError {
    /// A flag out of range, a missing checkpoint: nothing ran.
    Config(String),
    /// A NaN or infinite loss (or parameter) at `step`; the last good checkpoint stays.
    NonFinite {
        step: u64,
        what: String,
        last_checkpoint: Option<PathBuf>,
    },
    Run(String),
}

impl std::fmt::Display for TrainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrainError::Config(e) | TrainError::Run(e) => f.write_str(e),
            TrainError::NonFinite {
                step,
                what,
                last_checkpoint,
            } => {
                write!(f, "{what} at step {step}; training stopped, ")?;
                match last_checkpoint {
                    Some(path) => write!(f, "last good checkpoint: {}", path.display()),
                    None => f.write_str("no checkpoint was saved"),
                }
            }
        }
    }
}

impl std::error::Error for TrainError {}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub steps: u64,
    pub epochs_completed: u64,
    pub samples_seen: u64,
    pub last_loss: Option<f32>,
    /// Metrics of the last evaluation (CLIP_benchmark names), if any.
    pub last_metrics: Option<serde_json::Value>,
    pub mean_mask_ratio: f64,
    pub wall_seconds: f64,
    pub seconds_per_step: f64,
    pub last_checkpoint: Option<PathBuf>,
}

/// The evaluation sets, loaded once.
struct EvalSets {
    val: Option<CaptionSet>,
    zeroshot: Option<LabelledSet>,
}

fn run_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Run(e.to_string())
}

/// The mask strategy with `--threshold auto` resolved: the stored threshold on resume, else a
/// bisection over the stream's first batches (M3.6).
fn resolve_threshold(
    config: &TrainConfig,
    state: &mut TrainState,
) -> Result<MaskStrategy, TrainError> {
    let (Some(target), MaskStrategy::Cluster(c) | MaskStrategy::ClusterEmbed(c)) =
        (config.target_mask_ratio, &config.mask)
    else {
        return Ok(config.mask.clone());
    };
    let threshold = match state.calibrated_threshold {
        Some(r) => r,
        None => {
            let v = &config.model.vision;
            let mut stream =
                TrainStream::open(&config.loader_config(), 0, 0).map_err(TrainError::Config)?;
            let batches: Vec<Vec<f32>> = (0..CALIBRATION_BATCHES)
                .map(|_| stream.next_batch().map(|b| b.images))
                .collect::<Result<_, _>>()
                .map_err(TrainError::Config)?;
            let batches: Vec<&[f32]> = batches.iter().map(Vec::as_slice).collect();
            let geometry = (v.image_size, v.image_size, v.patch_size);
            calibrate_on_images(&batches, geometry, c, target, config.seed)
                .map_err(|e| TrainError::Config(e.to_string()))?
                .threshold
        }
    };
    state.calibrated_threshold = Some(threshold);
    Ok(config.mask.with_threshold(threshold))
}

/// Runs training as `config` says on `backend`.
pub fn train(config: &TrainConfig, backend: Backend) -> Result<TrainSummary, TrainError> {
    config.validate().map_err(TrainError::Config)?;
    let run_dir = config.logs.join(config.run_name());
    // Refused at once here; `RunLogs::open` checks again under the folder's lock.
    if config.resume.is_none() {
        check_new_run_folder(&run_dir).map_err(TrainError::Config)?;
    }
    let resume_path = match &config.resume {
        None => None,
        Some(ResumeFrom::Path(p)) => Some(p.clone()),
        Some(ResumeFrom::Latest) => Some(run_dir.join("checkpoints").join(LATEST)),
    };
    let checkpoint = match &resume_path {
        Some(path) if !path.exists() => {
            return Err(TrainError::Config(format!(
                "--resume: no checkpoint at {}",
                path.display()
            )));
        }
        Some(path) => Some(
            load_checkpoint(path, None)
                .map_err(|e| TrainError::Config(format!("--resume: {e}")))?,
        ),
        None => None,
    };
    // Batches whose activations exceed one storage binding (WebGPU's 128 MiB; a ViT-B/16 at
    // batch 56+) run as micro-batches of one contrastive batch (Trainer::step), not refused.
    let micro_batch = match backend.gpu() {
        Some(gpu) => {
            let limit = gpu.binding_limit_words();
            let largest_param = crate::model::init::param_specs(&config.model)
                .iter()
                .map(|p| p.numel())
                .max()
                .unwrap_or(0);
            if config.model.largest_activation_words(1).max(largest_param) > limit {
                return Err(TrainError::Config(format!(
                    "--model {}: one image needs {:.0} KiB tensors, over this GPU's {:.0} KiB \
                     per storage binding",
                    config.model_name,
                    (config.model.largest_activation_words(1).max(largest_param) * 4) as f64
                        / 1024.0,
                    (limit * 4) as f64 / 1024.0,
                )));
            }
            config
                .batch_size
                .min(config.model.largest_batch_within(limit))
        }
        None => config.batch_size,
    };
    let (clip, mut state) = match &checkpoint {
        Some(ck) => {
            if ck.config != config.model {
                return Err(TrainError::Config(format!(
                    "--resume: {} holds a different model than --model {}",
                    ck.path.display(),
                    config.model_name
                )));
            }
            if ck.moments.is_none() {
                return Err(TrainError::Config(format!(
                    "--resume: {} holds weights only, no optimizer state",
                    ck.path.display()
                )));
            }
            (ck.model(&backend), ck.state.clone())
        }
        None => (
            Clip::new(config.model.clone(), &backend, config.seed).map_err(TrainError::Config)?,
            TrainState {
                seed: config.seed,
                ..TrainState::default()
            },
        ),
    };
    if state.seed != config.seed {
        return Err(TrainError::Config(format!(
            "--seed {} differs from the checkpoint's seed {}",
            config.seed, state.seed
        )));
    }
    let mut trainer = Trainer::new(clip, backend.clone(), config.adamw.clone());
    if let Some(ck) = &checkpoint {
        ck.restore_optimizer(&mut trainer.optimizer, &backend)
            .map_err(TrainError::Config)?;
    }
    let strategy = resolve_threshold(config, &mut state)?;

    let sets = EvalSets {
        val: match &config.val_data {
            Some(spec) if config.val_frequency > 0 => Some(
                caption_set(spec, &trainer.clip, config.eval_limit, &config.data)
                    .map_err(|e| TrainError::Config(format!("--val-data: {e}")))?,
            ),
            _ => None,
        },
        zeroshot: match &config.zeroshot_data {
            Some(spec) if config.zeroshot_frequency > 0 => Some(
                zeroshot_set(
                    spec,
                    &trainer.clip,
                    config.eval_limit,
                    &config.zeroshot_read_options(),
                )
                .map_err(|e| TrainError::Config(format!("--zeroshot-data: {e}")))?,
            ),
            _ => None,
        },
    };
    let mut stream = TrainStream::open(
        &config.loader_config(),
        state.data_pass,
        state.pass_position,
    )
    .map_err(TrainError::Config)?;
    // The folder is taken only once every input has opened, so a run refused for a bad flag
    // or file leaves no folder that would refuse its corrected rerun.
    let mut logs = RunLogs::open(&run_dir, config.resume.is_some()).map_err(TrainError::Config)?;
    let mut params = config.to_json();
    params["calibrated_threshold"] = state.calibrated_threshold.into();
    logs.write_params(&params).map_err(run_err)?;
    let run_config = params.to_string();

    let steps_per_epoch = config.steps_per_epoch();
    let total_steps = config.total_steps();
    let stop_at = config.steps.map_or(total_steps, |s| s.min(total_steps));
    logs.message(&format!(
        "clusterclip train: {} ({} parameters) on {}, mask {}, batch {}×{}, {} steps ({} per epoch × {} epochs){}; logs in {}",
        config.model_name,
        trainer.clip.params.numel(),
        crate::eval::tasks::backend_name(&backend),
        strategy.name(),
        config.batch_size,
        config.accum_freq,
        total_steps,
        steps_per_epoch,
        config.epochs,
        match &resume_path { Some(p) => format!(", resumed at step {} from {}", state.step, p.display()), None => String::new() },
        run_dir.display()
    ));
    if micro_batch < config.batch_size {
        logs.message(&format!(
            "batch {} runs as micro-batches of at most {micro_batch} (activations over one storage \
             binding); the loss stays one contrastive batch",
            config.batch_size
        ));
    }
    if let Some(r) = state
        .calibrated_threshold
        .filter(|_| config.target_mask_ratio.is_some())
    {
        logs.message(&format!(
            "threshold auto: r = {r:.4} (target mask ratio {})",
            config.target_mask_ratio.unwrap_or_default()
        ));
    }

    // Evaluation batches as large as one storage binding allows (b16 at 64 would not fit 128 MiB).
    let eval_batch = match backend.gpu() {
        Some(gpu) => config
            .batch_size
            .max(MIN_EVAL_BATCH)
            .min(config.model.largest_batch_within(gpu.binding_limit_words()))
            .max(1),
        None => config.batch_size.max(MIN_EVAL_BATCH),
    };
    let started = Instant::now();
    let first_step = state.step;
    let mut last_checkpoint = resume_path.clone();
    let mut last_metrics = None;
    let mut last_loss = None;
    let mut last_scale = logit_scale(&trainer.clip);
    let (mut window_start, mut window_steps, mut window_ratio) = (Instant::now(), 0u64, 0.0f64);
    let (mut eval_ratio_sum, mut eval_ratio_steps, mut ratio_sum) = (0.0f64, 0u64, 0.0f64);
    let mut eval_seconds = 0.0;
    while state.step < stop_at {
        let step = state.step;
        let epoch_done = (step + 1) % steps_per_epoch == 0;
        let read_loss =
            (step + 1) % config.log_every_n_steps == 0 || step + 1 == stop_at || epoch_done;
        let progress = (step / steps_per_epoch) as f32 / config.epochs as f32;
        let mut batches = Vec::with_capacity(config.accum_freq);
        for micro in 0..config.accum_freq as u64 {
            let batch = stream.next_batch().map_err(run_err)?;
            let rng = MaskRng::new(state.seed, (step * config.accum_freq as u64 + micro) as u32);
            let mask = compute_mask(
                &trainer.clip,
                &backend,
                &strategy,
                &batch.images,
                config.batch_size,
                rng,
                progress,
            )
            .map_err(run_err)?;
            batches.push((batch, mask));
        }
        let ratio = batches
            .iter()
            .map(|(_, m)| m.as_ref().map_or(0.0, |m| m.mask_ratio as f64))
            .sum::<f64>()
            / batches.len() as f64;
        let inputs: Vec<ClipInputs> = batches
            .iter()
            .flat_map(|(b, m)| {
                let whole = ClipInputs {
                    images: &b.images,
                    tokens: &b.tokens,
                    batch: config.batch_size,
                    kept: m.as_ref().map(|m| m.kept.as_slice()),
                };
                split_inputs(whole, micro_batch)
            })
            .collect();
        let lr = learning_rate(
            config.lr_scheduler,
            config.lr,
            config.warmup,
            total_steps,
            step,
        );
        let report = trainer.step(&inputs, lr, read_loss).map_err(run_err)?;
        state.step += 1;
        state.samples_seen += config.step_samples();
        state.pass_position = stream.position;
        state.data_pass = stream.pass;
        window_steps += 1;
        window_ratio += ratio;
        ratio_sum += ratio;
        eval_ratio_sum += ratio;
        eval_ratio_steps += 1;
        if let Some(loss) = report.loss {
            if !loss.is_finite() {
                return Err(TrainError::NonFinite {
                    step: state.step,
                    what: format!("loss is {loss}"),
                    last_checkpoint,
                });
            }
            state.loss_history.push((state.step, loss));
            last_loss = Some(loss);
        }
        if read_loss {
            last_scale = logit_scale(&trainer.clip);
        }
        let milestone = report.loss.is_some()
            && (state.step % config.log_every_n_steps == 0 || state.step == stop_at);
        let elapsed = started.elapsed().as_secs_f64() - eval_seconds;
        let per_step = elapsed / (state.step - first_step) as f64;
        let window = window_start.elapsed().as_secs_f64().max(1e-9);
        let line = format!(
            "step {}/{} epoch {}/{} | loss {} | {:.1} img/s | mask {:.3} | lr {:.3e} | scale {:.2} | eta {} | data wait {:.0}%",
            state.step,
            stop_at,
            state.step.div_ceil(steps_per_epoch).min(config.epochs),
            config.epochs,
            last_loss.map_or("-".into(), |l| format!("{l:.4}")),
            (window_steps * config.step_samples()) as f64 / window,
            window_ratio / window_steps as f64,
            lr,
            last_scale,
            format_duration(per_step * (stop_at - state.step) as f64),
            100.0 * stream.wait_seconds / elapsed.max(1e-9),
        );
        logs.progress(&line, milestone);
        if milestone {
            (window_start, window_steps, window_ratio) = (Instant::now(), 0, 0.0);
        }

        let end_of_run = state.step == stop_at;
        if epoch_done || end_of_run {
            let span = if epoch_done {
                String::new()
            } else {
                format!(" (to step {})", state.step)
            };
            logs.message(&format!(
                "data: epoch {}{span}: {}",
                state.step.div_ceil(steps_per_epoch),
                stream.take_data_stats().bad_records_line()
            ));
            let completed = state.step / steps_per_epoch;
            state.epoch = completed;
            // epoch_N before epoch_latest: a crash between the two must not leave a latest
            // past an epoch_N that was never written (a resume would start after it).
            let latest = logs.checkpoint_dir().join(LATEST);
            let mut paths = Vec::with_capacity(2);
            if epoch_done
                && config.save_frequency > 0
                && completed.is_multiple_of(config.save_frequency)
            {
                paths.push(
                    logs.checkpoint_dir()
                        .join(format!("epoch_{completed}.safetensors")),
                );
            }
            paths.push(latest.clone());
            for path in &paths {
                save_checkpoint(path, &trainer, &state, &run_config).map_err(|e| match e {
                    CheckpointError::NonFinite(what) => TrainError::NonFinite {
                        step: state.step,
                        what,
                        last_checkpoint: last_checkpoint.clone(),
                    },
                    CheckpointError::Write(e) => run_err(e),
                })?;
            }
            last_checkpoint = Some(latest);
            let due = |freq: u64| {
                freq > 0 && (end_of_run || (epoch_done && completed.is_multiple_of(freq)))
            };
            let (do_val, do_zeroshot) = (
                due(config.val_frequency) && sets.val.is_some(),
                due(config.zeroshot_frequency) && sets.zeroshot.is_some(),
            );
            if do_val || do_zeroshot {
                let eval_started = Instant::now();
                let mut metrics = serde_json::Map::new();
                if let (true, Some(set)) = (do_zeroshot, &sets.zeroshot) {
                    let m = zeroshot_eval(&trainer.clip, set, eval_batch).map_err(run_err)?;
                    metrics.insert("zeroshot".into(), zeroshot_json(&m));
                }
                if let (true, Some(set)) = (do_val, &sets.val) {
                    let (m, loss) =
                        retrieval_eval(&trainer.clip, set, eval_batch).map_err(run_err)?;
                    let mut val = retrieval_json(&m);
                    val["clip_val_loss"] = loss.into();
                    metrics.insert("val".into(), val);
                }
                eval_seconds += eval_started.elapsed().as_secs_f64();
                let metrics = serde_json::Value::Object(metrics);
                let result = serde_json::json!({
                    "step": state.step, "epoch": completed, "samples_seen": state.samples_seen,
                    "wall_seconds": started.elapsed().as_secs_f64(), "metrics": metrics,
                    "mean_mask_ratio": eval_ratio_sum / eval_ratio_steps.max(1) as f64,
                });
                logs.append_result(&result).map_err(run_err)?;
                logs.message(&format!(
                    "eval at step {} (epoch {completed}): {metrics}",
                    state.step
                ));
                (eval_ratio_sum, eval_ratio_steps) = (0.0, 0);
                last_metrics = Some(metrics);
                write_plot(&logs, &state);
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let done = state.step - first_step;
    logs.message(&format!(
        "done: step {} of {}, {} samples, {} ({:.3} s/step), checkpoint {}",
        state.step,
        total_steps,
        state.samples_seen,
        format_duration(wall),
        (wall - eval_seconds) / done.max(1) as f64,
        last_checkpoint
            .as_ref()
            .map_or("none".into(), |p| p.display().to_string())
    ));
    Ok(TrainSummary {
        run_dir,
        steps: state.step,
        epochs_completed: state.epoch,
        samples_seen: state.samples_seen,
        last_loss,
        last_metrics,
        mean_mask_ratio: ratio_sum / done.max(1) as f64,
        wall_seconds: wall,
        seconds_per_step: (wall - eval_seconds) / done.max(1) as f64,
        last_checkpoint,
    })
}

/// `loss.png` from the loss history and `results.jsonl` (the last result of each step wins,
/// so a resumed run's repeated evaluations replace the old ones); a failure is only reported.
fn write_plot(logs: &RunLogs, state: &TrainState) {
    let mut by_step = std::collections::BTreeMap::new();
    for result in logs.read_results() {
        if let Some(step) = result["step"].as_u64().filter(|&s| s <= state.step) {
            by_step.insert(step, result);
        }
    }
    let series = |path: &[&str]| -> Vec<(u64, f64)> {
        by_step
            .iter()
            .filter_map(|(&step, r)| {
                path.iter()
                    .try_fold(&r["metrics"], |cur, key| cur.get(*key))
                    .and_then(|v| v.as_f64())
                    .map(|v| (step, v))
            })
            .collect()
    };
    let metrics = [
        series(&["zeroshot", "acc1"]),
        series(&["zeroshot", "acc5"]),
        series(&["val", "image_retrieval_recall@1"]),
        series(&["val", "text_retrieval_recall@1"]),
    ];
    let path = logs.dir.join("loss.png");
    if let Err(e) = super::plot::write_loss_plot(
        &path,
        &state.loss_history,
        &series(&["val", "clip_val_loss"]),
        &metrics,
    ) {
        eprintln!("warning: {e}");
    }
}

/// Default zero-shot and validation data for a training spec: the built-in splits when training
/// on `builtin:shapes`, none otherwise.
pub fn default_eval_data(train_data: &str) -> (Option<String>, Option<String>) {
    if is_builtin_train(train_data) {
        (
            Some("builtin:shapes-val".into()),
            Some(BUILTIN_ZEROSHOT.into()),
        )
    } else {
        (None, None)
    }
}
