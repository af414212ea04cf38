//! Every setting of a run and its defaults, in one place: the CLI's flags take their defaults
//! from the constants here, so the README, `clusterclip train` and `TrainConfig::new` agree.

use std::path::PathBuf;

use crate::data::image_ops::Normalisation;
use crate::data::loader::{LoaderConfig, ReadOptions, check_max_bad_fraction};
use crate::data::records::read_csv_records;
use crate::data::spec::{DataSource, DatasetType, resolve_spec};
use crate::eval::tasks::BUILTIN_ZEROSHOT;
use crate::masking::{ClusterMaskConfig, MaskFeatures, check_ratio};
use crate::model::ClipConfig;
use crate::train::logs::default_run_name;
use crate::train::mask_step::MaskStrategy;
use crate::train::optimizer::AdamWConfig;
use crate::train::schedule::LrScheduler;
use crate::train::stream::is_builtin_train;

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
    /// OpenCLIP's `--imagenet-val`: ImageNet zero-shot on this folder when zero-shot is due.
    pub imagenet_val: Option<PathBuf>,
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
    /// OpenCLIP's `--save-most-recent`: keep `epoch_latest`. Always on here (`--resume latest`
    /// and a stop mid-epoch need it); recorded for OpenCLIP command lines.
    pub save_most_recent: bool,
    /// OpenCLIP's `--delete-previous-checkpoint`: once `epoch_N` and `epoch_latest` are
    /// written, remove the pair of `epoch_{N - save_frequency}`.
    pub delete_previous_checkpoint: bool,
    /// `--report-to tensorboard`: scalars into `<logs>/<name>/tensorboard/`.
    pub tensorboard: bool,
    pub resume: Option<ResumeFrom>,
    /// Start from these weights (an OpenCLIP state_dict or export folder; `--resume` wins).
    pub pretrained: Option<PathBuf>,
    /// Freeze the image tower: no gradients, no updates (OpenCLIP's `--lock-image`).
    pub lock_image: bool,
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
    /// Data-parallel processes (OpenCLIP's world size, `mpirun -np`): a step reads
    /// `batch_size` samples on each, so the contrastive batch is `world_size` × `batch_size`.
    pub world_size: usize,
    /// OpenCLIP's `--gather-with-grad` and `--local-loss` (see `train::step::DataParallel`).
    pub gather_with_grad: bool,
    pub local_loss: bool,
}

impl TrainConfig {
    // The defaults of `clusterclip train` (the README documents them): 4 epochs × 50 steps of 32
    // on builtin:shapes, about 10 minutes on a 2-core CPU with lavapipe.
    pub const DEFAULT_MODEL: &str = "tiny";
    pub const DEFAULT_TRAIN_DATA: &str = "builtin:shapes";
    pub const DEFAULT_BATCH_SIZE: usize = 32;
    pub const DEFAULT_EPOCHS: u64 = 4;
    pub const DEFAULT_TRAIN_NUM_SAMPLES: u64 = 1600;
    pub const DEFAULT_LR: f32 = 1e-3;
    pub const DEFAULT_WARMUP: u64 = 20;
    pub const DEFAULT_LR_SCHEDULER: LrScheduler = LrScheduler::Cosine;
    pub const DEFAULT_ACCUM_FREQ: usize = 1;
    pub const DEFAULT_SEED: u64 = 0;
    pub const DEFAULT_LOGS: &str = "./logs";
    pub const DEFAULT_SAVE_FREQUENCY: u64 = 1;
    pub const DEFAULT_VAL_FREQUENCY: u64 = 1;
    pub const DEFAULT_ZEROSHOT_FREQUENCY: u64 = 1;
    pub const DEFAULT_LOG_EVERY_N_STEPS: u64 = 10;

    /// The defaults above for `model`, with no evaluation sets (the CLI picks them with
    /// `default_eval_data`) and cluster masking at its defaults.
    pub fn new(model_name: &str, model: ClipConfig) -> TrainConfig {
        TrainConfig {
            model_name: model_name.to_string(),
            model,
            train_data: Self::DEFAULT_TRAIN_DATA.into(),
            val_data: None,
            zeroshot_data: None,
            imagenet_val: None,
            batch_size: Self::DEFAULT_BATCH_SIZE,
            epochs: Self::DEFAULT_EPOCHS,
            train_num_samples: Self::DEFAULT_TRAIN_NUM_SAMPLES,
            lr: Self::DEFAULT_LR,
            warmup: Self::DEFAULT_WARMUP,
            lr_scheduler: Self::DEFAULT_LR_SCHEDULER,
            adamw: AdamWConfig::default(),
            accum_freq: Self::DEFAULT_ACCUM_FREQ,
            seed: Self::DEFAULT_SEED,
            logs: PathBuf::from(Self::DEFAULT_LOGS),
            name: None,
            save_frequency: Self::DEFAULT_SAVE_FREQUENCY,
            save_most_recent: false,
            delete_previous_checkpoint: false,
            tensorboard: false,
            resume: None,
            pretrained: None,
            lock_image: false,
            val_frequency: Self::DEFAULT_VAL_FREQUENCY,
            zeroshot_frequency: Self::DEFAULT_ZEROSHOT_FREQUENCY,
            log_every_n_steps: Self::DEFAULT_LOG_EVERY_N_STEPS,
            steps: None,
            data: ReadOptions::default(),
            mask: MaskStrategy::Cluster(ClusterMaskConfig::default()),
            target_mask_ratio: None,
            eval_limit: None,
            world_size: 1,
            gather_with_grad: false,
            local_loss: false,
        }
    }

    /// Samples per optimizer step.
    pub fn step_samples(&self) -> u64 {
        (self.batch_size * self.accum_freq * self.world_size.max(1)) as u64
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
                "--train-num-samples {} is less than one step ({} = --batch-size × --accum-freq × ranks)",
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
        self.data.normalisation.validate()?;
        if let MaskStrategy::Cluster(c) | MaskStrategy::ClusterEmbed(c) = &self.mask
            && c.features == MaskFeatures::Rgb
            && self.data.normalisation != Normalisation::CLIP
        {
            // masking::features::pixel_transform undoes CLIP's mean/std, not these.
            return Err(format!(
                "--image-mean/--image-std with --mask {} --mask-features rgb: the rgb features \
                 assume CLIP's mean/std; use --mask-features normalized, or --mask random",
                self.mask.name()
            ));
        }
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
        if let Some(dir) = self.imagenet_val.as_ref().filter(|d| !d.is_dir()) {
            return Err(format!("--imagenet-val: {} is not a folder", dir.display()));
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
            "model_config": crate::train::checkpoint::config_json(&self.model),
            "train_data": self.train_data, "val_data": self.val_data, "zeroshot_data": self.zeroshot_data, "imagenet_val": self.imagenet_val,
            "batch_size": self.batch_size, "epochs": self.epochs, "train_num_samples": self.train_num_samples,
            "lr": self.lr, "wd": self.adamw.weight_decay, "beta1": self.adamw.beta1, "beta2": self.adamw.beta2,
            "eps": self.adamw.eps, "grad_clip_norm": self.adamw.grad_clip_norm, "warmup": self.warmup,
            "lr_scheduler": self.lr_scheduler.name(),
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
        params["pretrained"] = self
            .pretrained
            .as_ref()
            .map(|p| p.display().to_string())
            .into();
        params["lock_image"] = self.lock_image.into();
        params["image_mean"] = serde_json::json!(self.data.normalisation.mean);
        params["image_std"] = serde_json::json!(self.data.normalisation.std);
        params["save_most_recent"] = self.save_most_recent.into();
        params["delete_previous_checkpoint"] = self.delete_previous_checkpoint.into();
        params["report_to"] = if self.tensorboard { "tensorboard" } else { "" }.into();
        params["world_size"] = self.world_size.into();
        params["gather_with_grad"] = self.gather_with_grad.into();
        params["local_loss"] = self.local_loss.into();
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

    pub(crate) fn loader_config(&self) -> LoaderConfig {
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
    pub(super) fn zeroshot_read_options(&self) -> ReadOptions {
        ReadOptions {
            dataset_type: DatasetType::Auto,
            ..self.data.clone()
        }
    }
}

/// Where an epoch's sample count came from, for the one line a run prints about it.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochSamples {
    pub samples: u64,
    /// Set when `--train-num-samples` was given but OpenCLIP would not read it (CSV, folders).
    pub note: Option<String>,
}

/// Samples per epoch of `spec` as OpenCLIP counts them (issue 13): a CSV's rows and an image
/// folder's images, whatever `--train-num-samples` says (OpenCLIP's CSV and folder datasets
/// have their own length); shards: `--train-num-samples`, else their `sizes.json` (or an error
/// asking for the flag, as OpenCLIP's); the built-in stream (OpenCLIP's synthetic data):
/// `--train-num-samples`, else the default. `--samples-per-epoch`, clusterclip's own, sets an
/// epoch of any data.
pub fn epoch_samples(
    spec: &str,
    options: &ReadOptions,
    train_num_samples: Option<u64>,
    samples_per_epoch: Option<u64>,
) -> Result<EpochSamples, String> {
    if let Some(samples) = samples_per_epoch {
        return Ok(EpochSamples {
            samples,
            note: None,
        });
    }
    let source =
        resolve_spec(spec, options.dataset_type).map_err(|e| format!("--train-data: {e}"))?;
    let own_length = |samples: u64, what: &str| EpochSamples {
        samples,
        note: train_num_samples.filter(|&n| n != samples).map(|n| {
            format!(
                "--train-num-samples {n} is not read for {what}: an epoch is its {samples} \
                 records, as in OpenCLIP (--samples-per-epoch sets another length)"
            )
        }),
    };
    Ok(match source {
        DataSource::Csv { files } => {
            let mut rows = 0u64;
            for file in &files {
                rows += read_csv_records(file, &options.keys)
                    .map_err(|e| format!("--train-data: {e}"))?
                    .len() as u64;
            }
            own_length(rows, "a CSV")
        }
        DataSource::ImageFolder(folder) => own_length(folder.items.len() as u64, "an image folder"),
        DataSource::WebDataset { num_samples, .. } => EpochSamples {
            samples: train_num_samples.or(num_samples).ok_or_else(|| {
                format!(
                    "--train-num-samples: {spec} has no sizes.json listing every shard; give \
                     the number of samples"
                )
            })?,
            note: None,
        },
        DataSource::Builtin(_) => EpochSamples {
            samples: train_num_samples.unwrap_or(TrainConfig::DEFAULT_TRAIN_NUM_SAMPLES),
            note: None,
        },
    })
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
