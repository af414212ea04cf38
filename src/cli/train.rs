//! `clusterclip train`: OpenCLIP's flag names, parsed into a `TrainConfig`; the run itself is
//! `train::run::train`. With no flags: the tiny preset, cluster masking, `builtin:shapes`, about
//! ten minutes on a 2-core CPU with lavapipe.

use std::path::PathBuf;

use crate::data::image_ops::Normalisation;
use crate::graph::Backend;
use crate::masking::{MaskFlags, MaskKind, check_ratio};
use crate::model::openclip::model_config;
use std::rc::Rc;

use crate::train::ranks::{Ranks, ranks_of_launch};
use crate::train::run::{
    ResumeFrom, TrainConfig, agree_on_start, default_eval_data, epoch_samples, train_on,
};
use crate::train::tensorboard::tensorboard_requested;
use crate::train::{AdamWConfig, LrScheduler};

use super::data::DataFlags;
use super::{CliResult, GpuArgs, ReportedByRankZero};

#[derive(clap::Args, Clone, Debug)]
pub struct TrainArgs {
    /// A preset (micro, tiny, s16, b16), an OpenCLIP model name (ViT-B-16, ViT-B-16-quickgelu,
    /// ViT-S-16, ViT-B-32, ...) or an OpenCLIP model config .json.
    #[arg(long, default_value = TrainConfig::DEFAULT_MODEL)]
    pub model: String,
    /// Training data: builtin:shapes, WebDataset shards (dir/shard-{000..009}.tar), a CSV, imagefolder:DIR.
    #[arg(long, default_value = TrainConfig::DEFAULT_TRAIN_DATA)]
    pub train_data: String,
    /// Validation data for retrieval and the validation loss; `none` to skip (default:
    /// builtin:shapes-val when training on builtin:shapes).
    #[arg(long)]
    pub val_data: Option<String>,
    /// Zero-shot task: builtin:shapes-zeroshot or imagefolder:DIR; `none` to skip (default:
    /// builtin:shapes-zeroshot when training on builtin:shapes).
    #[arg(long)]
    pub zeroshot_data: Option<String>,
    /// OpenCLIP's --imagenet-val: ImageNet zero-shot (its 1,000 class names, OpenAI's 80
    /// templates) on an ImageNet-layout folder when zero-shot is due, reported as
    /// imagenet-zeroshot-val-top1 and -top5.
    #[arg(long, value_name = "DIR")]
    pub imagenet_val: Option<PathBuf>,
    /// Defaults (`TrainConfig::DEFAULT_*`): 4 epochs × 50 steps of 32 on builtin:shapes, about
    /// 10 minutes on a 2-core CPU with lavapipe (2.6 s/step measured with cluster masking, plus
    /// four evaluations).
    #[arg(long, default_value_t = TrainConfig::DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    #[arg(long, default_value_t = TrainConfig::DEFAULT_EPOCHS)]
    pub epochs: u64,
    /// Samples per epoch, as in OpenCLIP: read for shards (default: their sizes.json) and the
    /// built-in stream (default: TrainConfig::DEFAULT_TRAIN_NUM_SAMPLES); a CSV or an image folder
    /// is one epoch whatever it says.
    #[arg(long)]
    pub train_num_samples: Option<u64>,
    /// Samples per epoch of any data, CSV and folders included (clusterclip's own; overrides
    /// --train-num-samples).
    #[arg(long, conflicts_with = "train_num_samples")]
    pub samples_per_epoch: Option<u64>,
    #[arg(long, default_value_t = TrainConfig::DEFAULT_LR)]
    pub lr: f32,
    /// Weight decay (M2: 0.2; AdamW's defaults live in `AdamWConfig::default`).
    #[arg(long, default_value_t = AdamWConfig::default().weight_decay)]
    pub wd: f32,
    #[arg(long, default_value_t = AdamWConfig::default().beta1)]
    pub beta1: f32,
    #[arg(long, default_value_t = AdamWConfig::default().beta2)]
    pub beta2: f32,
    #[arg(long, default_value_t = AdamWConfig::default().eps)]
    pub eps: f32,
    /// Warm-up steps.
    #[arg(long, default_value_t = TrainConfig::DEFAULT_WARMUP)]
    pub warmup: u64,
    /// cosine or const.
    #[arg(long, default_value = TrainConfig::DEFAULT_LR_SCHEDULER.name())]
    pub lr_scheduler: String,
    #[arg(long)]
    pub grad_clip_norm: Option<f32>,
    /// Micro-batches of --batch-size per optimizer step, trained as one contrastive batch of
    /// batch-size × accum-freq with cached features (OpenCLIP's --accum-freq).
    #[arg(long, default_value_t = TrainConfig::DEFAULT_ACCUM_FREQ)]
    pub accum_freq: usize,
    /// With several ranks (mpirun, srun): each rank's loss covers only its own samples against
    /// the gathered batch (OpenCLIP's --local-loss).
    #[arg(long)]
    pub local_loss: bool,
    /// With several ranks: gradients flow back through the feature all-gather, so the step
    /// equals one process on the whole batch (OpenCLIP's --gather-with-grad).
    #[arg(long)]
    pub gather_with_grad: bool,
    #[arg(long, default_value_t = TrainConfig::DEFAULT_SEED)]
    pub seed: u64,
    #[arg(long, default_value = TrainConfig::DEFAULT_LOGS)]
    pub logs: PathBuf,
    /// Run folder under --logs (default: date, model, lr and batch size, as OpenCLIP). A new
    /// run refuses an existing folder, as OpenCLIP does; --resume continues one.
    #[arg(long)]
    pub name: Option<String>,
    /// Keep epoch_N checkpoints every this many epochs (epoch_latest is always written).
    #[arg(long, default_value_t = TrainConfig::DEFAULT_SAVE_FREQUENCY)]
    pub save_frequency: u64,
    /// Keep epoch_latest (OpenCLIP's flag; always on here: --resume latest needs it).
    #[arg(long)]
    pub save_most_recent: bool,
    /// Once epoch_N is written, delete the previous epoch_N pair (model and state).
    #[arg(long)]
    pub delete_previous_checkpoint: bool,
    /// `latest` (needs --name) or a checkpoint file.
    #[arg(long)]
    pub resume: Option<String>,
    /// Start from OpenCLIP weights: a state_dict .safetensors (f32, f16 or bf16) or an
    /// exported folder; must fit --model (QuickGELU weights need a -quickgelu name).
    #[arg(long)]
    pub pretrained: Option<PathBuf>,
    /// Freeze the image tower (no gradients, no updates), as OpenCLIP's --lock-image.
    #[arg(long)]
    pub lock_image: bool,
    /// Validate every this many epochs (0: never); always after the last.
    #[arg(long, default_value_t = TrainConfig::DEFAULT_VAL_FREQUENCY)]
    pub val_frequency: u64,
    /// Zero-shot evaluation every this many epochs (0: never); always after the last.
    #[arg(long, default_value_t = TrainConfig::DEFAULT_ZEROSHOT_FREQUENCY)]
    pub zeroshot_frequency: u64,
    /// Read the loss and print a progress line every this many steps.
    #[arg(long, default_value_t = TrainConfig::DEFAULT_LOG_EVERY_N_STEPS)]
    pub log_every_n_steps: u64,
    /// Stop after N optimizer steps in all (the schedule still spans --epochs; resume later).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Use at most this many images (zero-shot) and samples (validation) per evaluation.
    #[arg(long)]
    pub eval_samples: Option<usize>,
    #[command(flatten)]
    pub mask: MaskFlags,
    /// OpenCLIP's patch dropout at this ratio, which is random (FLIP) masking: the same as
    /// --mask random --mask-ratio RATIO.
    #[arg(long, value_name = "RATIO", conflicts_with_all = ["mask", "mask_ratio"])]
    pub force_patch_dropout: Option<f64>,
    /// Per-channel mean of the image normalisation (R G B, or one value for all), for training
    /// and evaluation; stored in the checkpoint (default: CLIP's).
    #[arg(long, num_args = 1.., value_name = "MEAN", allow_negative_numbers = true)]
    pub image_mean: Option<Vec<f32>>,
    /// Per-channel standard deviation of the image normalisation (R G B, or one value).
    #[arg(long, num_args = 1.., value_name = "STD", allow_negative_numbers = true)]
    pub image_std: Option<Vec<f32>>,
    /// OpenCLIP's precision choices; the kernels compute in f32, so every run trains in fp32.
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// Logging backends, comma-separated: tensorboard (event files under
    /// LOGS/NAME/tensorboard/) or '' for none; wandb and all are refused (no network).
    #[arg(long, default_value = "")]
    pub report_to: String,
    /// Run on the CPU reference backend (slow; for checks).
    #[arg(long)]
    pub cpu: bool,
    // Reader flags of --train-data and --val-data, as `data` and `eval` take them.
    #[command(flatten)]
    pub data: DataFlags,
    #[command(flatten)]
    pub gpu: GpuArgs,
}

/// OpenCLIP's `--precision` choices.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    #[value(name = "amp")]
    Amp,
    #[value(name = "amp_bf16")]
    AmpBf16,
    #[value(name = "amp_bfloat16")]
    AmpBfloat16,
    #[value(name = "bf16")]
    Bf16,
    #[value(name = "fp16")]
    Fp16,
    #[value(name = "pure_bf16")]
    PureBf16,
    #[value(name = "pure_fp16")]
    PureFp16,
    #[value(name = "fp32")]
    Fp32,
}

impl TrainArgs {
    /// The one line a `--precision` other than fp32 earns: what the run does instead.
    pub fn precision_note(&self) -> Option<String> {
        let precision = self.precision.filter(|p| *p != Precision::Fp32)?;
        let name = clap::ValueEnum::to_possible_value(&precision)?;
        Some(format!(
            "--precision {}: the kernels compute in f32, so this run trains in fp32",
            name.get_name()
        ))
    }
}

fn optional_spec(flag: Option<&String>, default: Option<String>) -> Option<String> {
    match flag.map(String::as_str) {
        Some("none") => None,
        Some(spec) => Some(spec.to_string()),
        None => default,
    }
}

impl TrainArgs {
    /// The run's settings; the error is one line naming the flag.
    pub fn to_config(&self) -> Result<TrainConfig, String> {
        self.to_config_for(1)
    }

    /// The run's settings for `world_size` data-parallel ranks.
    pub fn to_config_for(&self, world_size: usize) -> Result<TrainConfig, String> {
        let model = model_config(&self.model).map_err(|e| format!("--model: {e}"))?;
        let mut mask_flags = self.mask.clone();
        if let Some(ratio) = self.force_patch_dropout {
            check_ratio("force-patch-dropout", ratio).map_err(|e| e.to_string())?;
            mask_flags.mask = MaskKind::Random.to_string();
            mask_flags.mask_ratio = ratio;
        }
        let mask = mask_flags.plan().map_err(|e| e.to_string())?;
        let mut data = self.data.read_options()?;
        data.normalisation =
            Normalisation::from_flags(self.image_mean.as_deref(), self.image_std.as_deref())?;
        let resume = self.resume.as_deref().map(|r| {
            if r == "latest" {
                ResumeFrom::Latest
            } else {
                ResumeFrom::Path(PathBuf::from(r))
            }
        });
        let (default_val, default_zeroshot) = default_eval_data(&self.train_data);
        let epoch = epoch_samples(
            &self.train_data,
            &data,
            self.train_num_samples,
            self.samples_per_epoch,
        )?;
        if let Some(note) = &epoch.note {
            eprintln!("{note}");
        }
        let config = TrainConfig {
            model_name: self.model.clone(),
            model,
            train_data: self.train_data.clone(),
            val_data: optional_spec(self.val_data.as_ref(), default_val),
            zeroshot_data: optional_spec(self.zeroshot_data.as_ref(), default_zeroshot),
            imagenet_val: self.imagenet_val.clone(),
            batch_size: self.batch_size,
            epochs: self.epochs,
            train_num_samples: epoch.samples,
            lr: self.lr,
            warmup: self.warmup,
            lr_scheduler: LrScheduler::parse(&self.lr_scheduler)?,
            adamw: AdamWConfig {
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
                weight_decay: self.wd,
                grad_clip_norm: self.grad_clip_norm,
            },
            accum_freq: self.accum_freq,
            seed: self.seed,
            logs: self.logs.clone(),
            name: self.name.clone(),
            save_frequency: self.save_frequency,
            save_most_recent: self.save_most_recent,
            delete_previous_checkpoint: self.delete_previous_checkpoint,
            tensorboard: tensorboard_requested(&self.report_to)?,
            resume,
            pretrained: self.pretrained.clone(),
            lock_image: self.lock_image,
            val_frequency: self.val_frequency,
            zeroshot_frequency: self.zeroshot_frequency,
            log_every_n_steps: self.log_every_n_steps,
            steps: self.steps,
            data,
            mask: mask.strategy,
            target_mask_ratio: mask.target_mask_ratio,
            eval_limit: self.eval_samples,
            world_size,
            gather_with_grad: self.gather_with_grad,
            local_loss: self.local_loss,
        };
        config.validate()?;
        Ok(config)
    }
}

pub fn run(args: TrainArgs) -> CliResult {
    // Under mpirun or srun (with the `mpi` feature): one rank of a data-parallel run.
    let ranks: Rc<dyn Ranks> = Rc::from(ranks_of_launch()?);
    let leader = ranks.rank() == 0;
    // Every rank parses its flags and opens its adapter; then they agree, so that a rank that
    // failed (mpirun's MPMD form may give ranks different flags) stops them all, named.
    let config = args.to_config_for(ranks.size());
    if let (Some(note), true, true) = (args.precision_note(), leader, config.is_ok()) {
        eprintln!("{note}");
    }
    let backend = config.as_ref().map_err(String::clone).and_then(|_| {
        if args.cpu {
            return Ok(Backend::Cpu);
        }
        let mut options = args.gpu.options()?;
        options.local_rank = (ranks.size() > 1).then(|| ranks.local_rank());
        let gpu = crate::gpu::Gpu::new(&options).map_err(|e| e.to_string())?;
        Ok(Backend::Gpu(gpu))
    });
    agree_on_start(&*ranks, backend.as_ref().map(|_| ()).map_err(String::clone))
        .map_err(|e| reported_by_rank_zero(&*ranks, e))?;
    let (config, backend) = (config?, backend?);
    // Start-up errors are agreed by all ranks (`TrainRun::open_on`): rank 0 reports.
    let summary =
        train_on(&config, backend, ranks.clone()).map_err(|e| reported_by_rank_zero(&*ranks, e))?;
    if let (Some(metrics), true) = (&summary.last_metrics, leader) {
        println!("{metrics}");
    }
    Ok(())
}

/// An error every rank shares. Alone, it is returned. With several ranks, rank 0 prints it and
/// every rank returns a [`ReportedByRankZero`] after a barrier: a rank that exited first would
/// have the launcher kill rank 0 before its line is out.
fn reported_by_rank_zero(
    ranks: &dyn Ranks,
    error: impl Into<Box<dyn std::error::Error>>,
) -> Box<dyn std::error::Error> {
    if ranks.size() == 1 {
        return error.into();
    }
    if ranks.rank() == 0 {
        eprintln!("error: {}", error.into());
    }
    ranks.barrier();
    ReportedByRankZero.into()
}
