//! The training run as a library object: `TrainRun::open` (settings in), `step` and `end_epoch`
//! (the loop), `finish` (a summary out); `train` is the loop over them and the CLI only parses
//! flags. Everything that feeds a step is restorable from a checkpoint (parameters, moments,
//! optimizer step, data position; the mask RNG is keyed by (seed, step)), so N steps +
//! `--resume latest` + N steps equals 2N steps straight, bit for bit.

mod config;
mod evals;
mod open;

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use crate::eval::tasks::logit_scale;
use crate::gpu::GpuBuf;
use crate::graph::Backend;
use crate::masking::MaskRng;
use crate::model::{ClipInputs, Input};

use super::checkpoint::{CheckpointError, LATEST, TrainState, save_checkpoint, state_path};
use super::logs::{RunLogs, format_duration};
use super::mask_step::{
    MaskRatio, MaskStrategy, StepMask, compute_mask_counted, compute_mask_on_ranks,
};
use super::ranks::{OneProcess, Ranks};
use super::schedule::learning_rate;
use super::step::{Trainer, split_inputs};
use super::stream::TrainStream;
use super::tensorboard::EventWriter;

pub use config::{EpochSamples, ResumeFrom, TrainConfig, default_eval_data, epoch_samples};
use evals::{EvalSets, write_plot};

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

fn run_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Run(e.to_string())
}

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

/// The evaluation metrics as OpenCLIP's `val/` scalars: retrieval under their own names
/// (`val/clip_val_loss`), zero-shot prefixed (`val/zeroshot_acc1`), top-level numbers as they
/// are (`val/imagenet-zeroshot-val-top1`).
fn val_scalars(metrics: &serde_json::Value) -> Vec<(String, f32)> {
    let Some(groups) = metrics.as_object() else {
        return Vec::new();
    };
    let numbers = groups
        .iter()
        .filter_map(|(name, v)| Some((format!("val/{name}"), v.as_f64()? as f32)));
    groups
        .iter()
        .flat_map(|(group, values)| {
            let prefix = if group == "val" {
                "val/".to_string()
            } else {
                format!("val/{group}_")
            };
            values
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(move |(name, v)| Some((format!("{prefix}{name}"), v.as_f64()? as f32)))
        })
        .chain(numbers)
        .collect()
}

/// Runs training as `config` says on `backend`.
pub fn train(config: &TrainConfig, backend: Backend) -> Result<TrainSummary, TrainError> {
    train_on(config, backend, Rc::new(OneProcess))
}

/// [`train`] as one of `ranks` (data-parallel, issue 14). A start-up error is agreed by all
/// ranks and returned on each; an error of one rank mid-run is printed with its rank and ends
/// every rank (the others would wait for it in the next collective).
pub fn train_on(
    config: &TrainConfig,
    backend: Backend,
    ranks: Rc<dyn Ranks>,
) -> Result<TrainSummary, TrainError> {
    let mut run = TrainRun::open_on(config, backend, ranks.clone())?;
    let result = (|| {
        while !run.is_done() {
            run.step()?;
            if run.at_epoch_end() {
                run.end_epoch()?;
            }
        }
        Ok(())
    })();
    match result {
        Err(e) if ranks.size() > 1 => {
            eprintln!("error: rank {} of {}: {e}", ranks.rank(), ranks.size());
            ranks.abort(1)
        }
        Err(e) => Err(e),
        Ok(()) => Ok(run.finish()),
    }
}

/// Every rank's start-up `result`, agreed: Ok when all are, else the same error on every rank:
/// the failing rank's message, prefixed with its rank unless all ranks failed alike. One
/// collective; one process returns `result` as it is.
pub fn agree_on_start(ranks: &dyn Ranks, result: Result<(), String>) -> Result<(), TrainError> {
    if ranks.size() == 1 {
        return result.map_err(TrainError::Config);
    }
    let mine = result.err().unwrap_or_default();
    let all: Vec<String> = ranks
        .all_gather_bytes(mine.as_bytes())
        .into_iter()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .collect();
    let Some((first, error)) = all.iter().enumerate().find(|(_, e)| !e.is_empty()) else {
        return Ok(());
    };
    if all.iter().all(|e| e == error) {
        return Err(TrainError::Config(error.clone()));
    }
    Err(TrainError::Config(format!(
        "rank {first} of {}: {error}",
        all.len()
    )))
}

/// The steps since the last progress milestone: the throughput and mask ratio a line shows.
struct Window {
    start: Instant,
    steps: u64,
    ratio_sum: f64,
    /// Steps in `ratio_sum`: a ratio whose k is on the device joins at the next loss read.
    ratio_steps: u64,
}

impl Window {
    fn new() -> Window {
        Window {
            start: Instant::now(),
            steps: 0,
            ratio_sum: 0.0,
            ratio_steps: 0,
        }
    }
}

/// One training run between `open` and `finish`: the model and optimizer, the data stream, the
/// run folder, and the running statistics its log lines and summary report. With several
/// ranks, each reads its share of the data and trains a replica; the trainer exchanges
/// features and gradients; only rank 0 evaluates and writes logs, results and checkpoints.
pub struct TrainRun<'a> {
    config: &'a TrainConfig,
    ranks: Rc<dyn Ranks>,
    run_dir: PathBuf,
    /// `params.json` as one string, stored in every checkpoint.
    run_config: String,
    /// Largest micro-batch one storage binding holds (≤ batch size).
    micro_batch: usize,
    /// The step the run stops at (`--steps`, or the end of the schedule).
    stop_at: u64,
    /// The mask strategy with `--threshold auto` resolved.
    strategy: MaskStrategy,
    evals: EvalSets,
    trainer: Trainer,
    state: TrainState,
    stream: TrainStream,
    logs: RunLogs,
    /// `--report-to tensorboard`: the scalars OpenCLIP logs, plus the mask ratio.
    tensorboard: Option<EventWriter>,
    started: Instant,
    /// The step this session started at (after a resume, not 0).
    first_step: u64,
    last_checkpoint: Option<PathBuf>,
    last_metrics: Option<serde_json::Value>,
    last_loss: Option<f32>,
    last_scale: f32,
    window: Window,
    /// Mask ratio summed over the steps since the last evaluation, and their count.
    eval_ratio: (f64, u64),
    /// Mask ratio summed over this session's steps.
    ratio_sum: f64,
    /// Keep counts left on the device by the steps since the last loss read (buffer, patches
    /// L): read with the next loss, so a step itself reads nothing.
    pending_keep: Vec<(GpuBuf, usize)>,
    /// Seconds spent evaluating, left out of the per-step timing.
    eval_seconds: f64,
}

impl TrainRun<'_> {
    /// Whether the run has reached its last step.
    pub fn is_done(&self) -> bool {
        self.state.step >= self.stop_at
    }

    /// Whether the last step ended an epoch or the run: `end_epoch` is due.
    pub fn at_epoch_end(&self) -> bool {
        self.state
            .step
            .is_multiple_of(self.config.steps_per_epoch())
            || self.is_done()
    }

    /// One optimizer step: `accum_freq` batches read and masked, trained as one contrastive
    /// batch, then a progress line; a non-finite loss stops the run.
    pub fn step(&mut self) -> Result<(), TrainError> {
        let config = self.config;
        let steps_per_epoch = config.steps_per_epoch();
        let step = self.state.step;
        let stop_at = self.stop_at;
        let epoch_done = (step + 1).is_multiple_of(steps_per_epoch);
        let read_loss = (step + 1).is_multiple_of(config.log_every_n_steps)
            || step + 1 == stop_at
            || epoch_done;
        let progress = (step / steps_per_epoch) as f32 / config.epochs as f32;
        let step_started = Instant::now();
        // One batch on one GPU: an unpinned cluster mask leaves k on the device and the step
        // replays a dispatch plan (src/gpu/plan.rs), so the step neither reads nor waits.
        let counted = matches!(self.trainer.backend, Backend::Gpu(_))
            && self.ranks.size() == 1
            && config.accum_freq == 1
            && self.micro_batch >= config.batch_size;
        let mut batches = Vec::with_capacity(config.accum_freq);
        // This rank's images are keyed by their index in the global batch.
        let first_image = (self.ranks.rank() * config.batch_size) as u32;
        for micro in 0..config.accum_freq as u64 {
            let batch = self.stream.next_batch().map_err(run_err)?;
            let rng = MaskRng::new(
                self.state.seed,
                (step * config.accum_freq as u64 + micro) as u32,
            )
            .from_image(first_image);
            // Uploaded once: the mask and both towers' passes read this copy.
            let pixels = self.trainer.backend.upload(&batch.images);
            let mask = if counted {
                compute_mask_counted(
                    &self.trainer.clip,
                    &self.trainer.backend,
                    &self.strategy,
                    &pixels,
                    config.batch_size,
                    rng,
                    progress,
                )
            } else {
                compute_mask_on_ranks(
                    &self.trainer.clip,
                    &self.trainer.backend,
                    &self.strategy,
                    (&pixels, config.batch_size),
                    rng,
                    progress,
                    &*self.ranks,
                )
            }
            .map_err(run_err)?;
            batches.push((batch, pixels, mask));
        }
        // Ratios the host knows now; a device k joins at the next loss read.
        let mut known = Vec::new();
        for (_, _, mask) in &batches {
            match mask.as_ref().map_or(MaskRatio::NONE, StepMask::ratio) {
                MaskRatio::Known(ratio) => known.push(ratio),
                MaskRatio::OnDevice { count, patches } => self.pending_keep.push((count, patches)),
            }
        }
        let backend = &self.trainer.backend;
        let inputs: Vec<ClipInputs> = batches
            .iter()
            .flat_map(|(b, pixels, m)| {
                let whole = ClipInputs {
                    images: Input::Stored(pixels.clone()),
                    tokens: &b.tokens,
                    batch: config.batch_size,
                    kept: m.as_ref().map(StepMask::kept),
                };
                split_inputs(backend, whole, self.micro_batch)
            })
            .collect();
        let lr = learning_rate(
            config.lr_scheduler,
            config.lr,
            config.warmup,
            config.total_steps(),
            step,
        );
        let keep = batches
            .first()
            .and_then(|(_, _, m)| m.as_ref())
            .and_then(StepMask::device_keep);
        let report = match (keep, inputs.as_slice()) {
            (Some(keep), [one]) => self.trainer.step_counted(one, keep, lr, read_loss),
            _ => self.trainer.step(&inputs, lr, read_loss),
        }
        .map_err(run_err)?;
        // Device keep counts are read with the loss; this step's is then the last.
        let resolved = if read_loss {
            self.read_pending_keep()?
        } else {
            Vec::new()
        };
        // Each step's ratio is the mean over its batches (one batch where k is on the device).
        let this_step = match known.len() == batches.len() {
            true => Some(known.iter().sum::<f64>() / known.len() as f64),
            false => None,
        };

        let state = &mut self.state;
        state.step += 1;
        state.samples_seen += config.step_samples();
        state.pass_position = self.stream.position;
        state.data_pass = self.stream.pass;
        self.window.steps += 1;
        for &ratio in this_step.iter().chain(&resolved) {
            self.window.ratio_sum += ratio;
            self.window.ratio_steps += 1;
            self.ratio_sum += ratio;
            self.eval_ratio.0 += ratio;
            self.eval_ratio.1 += 1;
        }
        let ratio = this_step.or(resolved.last().copied()).unwrap_or(0.0);
        if let Some(loss) = report.loss {
            if !loss.is_finite() {
                return Err(TrainError::NonFinite {
                    step: state.step,
                    what: format!("loss is {loss}"),
                    last_checkpoint: self.last_checkpoint.clone(),
                });
            }
            state.loss_history.push((state.step, loss));
            self.last_loss = Some(loss);
        }
        if read_loss {
            self.last_scale = logit_scale(&self.trainer.clip);
        }
        if let (Some(writer), Some(loss)) = (&mut self.tensorboard, report.loss) {
            // OpenCLIP's train/ scalars (its only loss here is the contrastive one).
            let samples_per_second =
                config.step_samples() as f64 / step_started.elapsed().as_secs_f64().max(1e-9);
            let scalars = [
                ("train/loss", loss),
                ("train/contrastive_loss", loss),
                ("train/lr", lr),
                ("train/logit_scale", self.last_scale),
                ("train/samples_per_second", samples_per_second as f32),
                ("train/mask_ratio", ratio as f32),
            ];
            for (tag, value) in scalars {
                writer.scalar(tag, state.step, value).map_err(run_err)?;
            }
            writer.flush().map_err(run_err)?;
        }
        let milestone = report.loss.is_some()
            && (state.step.is_multiple_of(config.log_every_n_steps) || state.step == stop_at);
        self.log_progress(lr, milestone);
        Ok(())
    }

    /// The mask ratios of the steps whose k stayed on the device, in step order (one read).
    fn read_pending_keep(&mut self) -> Result<Vec<f64>, TrainError> {
        if self.pending_keep.is_empty() {
            return Ok(Vec::new());
        }
        let Backend::Gpu(gpu) = &self.trainer.backend else {
            unreachable!("device keep counts come from the GPU backend")
        };
        let pending = std::mem::take(&mut self.pending_keep);
        let counts = gpu
            .read_many_u32(&pending.iter().map(|(count, _)| count).collect::<Vec<_>>())
            .map_err(run_err)?;
        Ok(counts
            .iter()
            .zip(&pending)
            .map(|(k, &(_, patches))| MaskRatio::of_count(k[0], patches))
            .collect())
    }

    /// The progress line after a step; a milestone stays in `out.log` and restarts the window.
    fn log_progress(&mut self, lr: f32, milestone: bool) {
        let (config, state, window) = (self.config, &self.state, &self.window);
        let steps_per_epoch = config.steps_per_epoch();
        let elapsed = self.started.elapsed().as_secs_f64() - self.eval_seconds;
        let per_step = elapsed / (state.step - self.first_step) as f64;
        let window_seconds = window.start.elapsed().as_secs_f64().max(1e-9);
        let line = format!(
            "step {}/{} epoch {}/{} | loss {} | {:.1} img/s | mask {} | lr {:.3e} | scale {:.2} | eta {} | data wait {:.0}%",
            state.step,
            self.stop_at,
            state.step.div_ceil(steps_per_epoch).min(config.epochs),
            config.epochs,
            self.last_loss.map_or("-".into(), |l| format!("{l:.4}")),
            (window.steps * config.step_samples()) as f64 / window_seconds,
            // A device k is read with the loss: "-" until then.
            match window.ratio_steps {
                0 => "-".to_string(),
                n => format!("{:.3}", window.ratio_sum / n as f64),
            },
            lr,
            self.last_scale,
            format_duration(per_step * (self.stop_at - state.step) as f64),
            100.0 * self.stream.wait_seconds / elapsed.max(1e-9),
        );
        self.logs.progress(&line, milestone);
        if milestone {
            self.window = Window::new();
        }
    }

    /// At the end of an epoch (or of the run, mid-epoch): the data line, `epoch_N` when due and
    /// `epoch_latest`, then the evaluations due.
    pub fn end_epoch(&mut self) -> Result<(), TrainError> {
        let config = self.config;
        let steps_per_epoch = config.steps_per_epoch();
        let epoch_done = self.state.step.is_multiple_of(steps_per_epoch);
        let end_of_run = self.is_done();
        let span = if epoch_done {
            String::new()
        } else {
            format!(" (to step {})", self.state.step)
        };
        self.logs.message(&format!(
            "data: epoch {}{span}: {}",
            self.state.step.div_ceil(steps_per_epoch),
            self.stream.take_data_stats().bad_records_line()
        ));
        let completed = self.state.step / steps_per_epoch;
        self.state.epoch = completed;
        self.save_checkpoints(
            epoch_done
                && config.save_frequency > 0
                && completed.is_multiple_of(config.save_frequency),
        )?;
        let (do_val, do_zeroshot) = self.evals.due(config, completed, epoch_done, end_of_run);
        if !(do_val || do_zeroshot) {
            return Ok(());
        }
        let eval_started = Instant::now();
        let metrics = self
            .evals
            .evaluate(&self.trainer.clip, do_val, do_zeroshot)?;
        self.eval_seconds += eval_started.elapsed().as_secs_f64();
        let (ratio_sum, ratio_steps) = self.eval_ratio;
        let result = serde_json::json!({
            "step": self.state.step, "epoch": completed, "samples_seen": self.state.samples_seen,
            "wall_seconds": self.started.elapsed().as_secs_f64(), "metrics": metrics,
            "mean_mask_ratio": ratio_sum / ratio_steps.max(1) as f64,
        });
        self.logs.append_result(&result).map_err(run_err)?;
        self.logs.message(&format!(
            "eval at step {} (epoch {completed}): {metrics}",
            self.state.step
        ));
        if let Some(writer) = &mut self.tensorboard {
            // OpenCLIP logs val/ scalars at the completed epoch.
            for (tag, value) in val_scalars(&metrics) {
                writer.scalar(&tag, completed, value).map_err(run_err)?;
            }
            writer.flush().map_err(run_err)?;
        }
        self.eval_ratio = (0.0, 0);
        self.last_metrics = Some(metrics);
        write_plot(&self.logs, &self.state);
        Ok(())
    }

    /// `epoch_N` (when `keep_epoch`) then `epoch_latest`, then with `--delete-previous-checkpoint`
    /// the previous `epoch_N` pair; a non-finite parameter stops the run.
    fn save_checkpoints(&mut self, keep_epoch: bool) -> Result<(), TrainError> {
        // epoch_N before epoch_latest: a crash between the two must not leave a latest past an
        // epoch_N that was never written (a resume would start after it).
        let latest = self.logs.checkpoint_dir().join(LATEST);
        if self.ranks.rank() != 0 {
            // Rank 0 writes the checkpoints of the run.
            self.last_checkpoint = Some(latest);
            return Ok(());
        }
        let mut paths = Vec::with_capacity(2);
        if keep_epoch {
            let epoch = self.state.epoch;
            paths.push(
                self.logs
                    .checkpoint_dir()
                    .join(format!("epoch_{epoch}.safetensors")),
            );
        }
        paths.push(latest.clone());
        for path in &paths {
            save_checkpoint(
                path,
                &self.trainer,
                &self.state,
                &self.config.data.normalisation,
                &self.run_config,
            )
            .map_err(|e| match e {
                CheckpointError::NonFinite(what) => TrainError::NonFinite {
                    step: self.state.step,
                    what,
                    last_checkpoint: self.last_checkpoint.clone(),
                },
                CheckpointError::Write(e) => run_err(e),
            })?;
        }
        self.last_checkpoint = Some(latest);
        if keep_epoch && self.config.delete_previous_checkpoint {
            self.delete_previous_epoch();
        }
        Ok(())
    }

    /// OpenCLIP's `--delete-previous-checkpoint`: `epoch_{N - save_frequency}`, state first (a
    /// crash between the two leaves weights that still evaluate). Runs only once the new pair and
    /// `epoch_latest` are written, so the only good checkpoint is never the one removed; a
    /// failure is reported, not fatal.
    fn delete_previous_epoch(&mut self) {
        let Some(previous) = self
            .state
            .epoch
            .checked_sub(self.config.save_frequency)
            .filter(|&e| e > 0)
        else {
            return;
        };
        let model = self
            .logs
            .checkpoint_dir()
            .join(format!("epoch_{previous}.safetensors"));
        for path in [state_path(&model), model] {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    let line = format!("warning: could not delete {}: {e}", path.display());
                    self.logs.message(&line);
                }
                _ => {}
            }
        }
    }

    /// The closing log line and the run's summary.
    pub fn finish(mut self) -> TrainSummary {
        let wall = self.started.elapsed().as_secs_f64();
        let done = (self.state.step - self.first_step).max(1) as f64;
        let seconds_per_step = (wall - self.eval_seconds) / done;
        self.logs.message(&format!(
            "done: step {} of {}, {} samples, {} ({seconds_per_step:.3} s/step), checkpoint {}",
            self.state.step,
            self.config.total_steps(),
            self.state.samples_seen,
            format_duration(wall),
            self.last_checkpoint
                .as_ref()
                .map_or("none".into(), |p| p.display().to_string())
        ));
        TrainSummary {
            run_dir: self.run_dir,
            steps: self.state.step,
            epochs_completed: self.state.epoch,
            samples_seen: self.state.samples_seen,
            last_loss: self.last_loss,
            last_metrics: self.last_metrics,
            mean_mask_ratio: self.ratio_sum / done,
            wall_seconds: wall,
            seconds_per_step,
            last_checkpoint: self.last_checkpoint,
        }
    }
}
