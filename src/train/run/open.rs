//! Opening a run: settings checked, the model built or restored from a checkpoint, the mask
//! threshold calibrated, the data and evaluation sets opened, and only then the run folder taken.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use crate::data::records::RankShare;
use crate::eval::tasks::{backend_name, logit_scale};
use crate::graph::Backend;
use crate::masking::calibrate_on_images;
use crate::model::Clip;
use crate::model::openclip::load_pretrained;
use crate::train::checkpoint::{Checkpoint, LATEST, TrainState, load_checkpoint};
use crate::train::logs::{RunLogs, check_new_run_folder};
use crate::train::mask_step::MaskStrategy;
use crate::train::ranks::{OneProcess, Ranks};
use crate::train::step::{DataParallel, Trainer, read_storage};
use crate::train::stream::TrainStream;
use crate::train::tensorboard::{EventWriter, TENSORBOARD_DIR};

use super::evals::EvalSets;
use super::{ResumeFrom, TrainConfig, TrainError, TrainRun, Window, agree_on_start, run_err};

/// What a rank has opened before the run folder is taken: everything that can fail for a bad
/// flag or input.
struct Prepared {
    run_dir: PathBuf,
    resume_path: Option<PathBuf>,
    micro_batch: usize,
    trainer: Trainer,
    state: TrainState,
    strategy: MaskStrategy,
    evals: EvalSets,
    stream: TrainStream,
}

/// Batches `--threshold auto` bisects over (M3.6: "on the first batches").
const CALIBRATION_BATCHES: usize = 2;

impl<'a> TrainRun<'a> {
    /// Checks `config`, builds (or restores, with `--resume`) everything a step needs, and takes
    /// the run folder; every refusal is a `TrainError::Config` naming its flag.
    pub fn open(config: &'a TrainConfig, backend: Backend) -> Result<TrainRun<'a>, TrainError> {
        Self::open_on(config, backend, Rc::new(OneProcess))
    }

    /// [`TrainRun::open`] as one of `ranks`. The ranks agree at each stage (settings, inputs,
    /// run folder, parameters), so one that fails stops them all with one error instead of
    /// leaving the others waiting; ranks started with different settings or weights stop here.
    pub fn open_on(
        config: &'a TrainConfig,
        backend: Backend,
        ranks: Rc<dyn Ranks>,
    ) -> Result<TrainRun<'a>, TrainError> {
        agree_on_start(&*ranks, same_settings(config, &*ranks))?;
        let prepared = prepare(config, backend, &ranks);
        let failed = prepared.as_ref().err().map(ToString::to_string);
        agree_on_start(&*ranks, failed.map_or(Ok(()), Err))?;
        let prepared = prepared?;
        let run = Self::take_folder(config, prepared, ranks.clone());
        let failed = run.as_ref().err().map(ToString::to_string);
        agree_on_start(&*ranks, failed.map_or(Ok(()), Err))?;
        let run = run?;
        if ranks.size() > 1 {
            agree_on_start(&*ranks, same_parameters(&run.trainer, &*ranks))?;
        }
        Ok(run)
    }

    /// Takes the run folder (rank 0; the others write nothing) and starts the logs.
    fn take_folder(
        config: &'a TrainConfig,
        prepared: Prepared,
        ranks: Rc<dyn Ranks>,
    ) -> Result<TrainRun<'a>, TrainError> {
        let Prepared {
            run_dir,
            resume_path,
            micro_batch,
            trainer,
            state,
            strategy,
            evals,
            stream,
        } = prepared;
        let backend = trainer.backend.clone();
        let leader = ranks.rank() == 0;
        // The folder is taken only once every input has opened, so a run refused for a bad flag
        // or file leaves no folder that would refuse its corrected rerun.
        let mut logs = if leader {
            RunLogs::open(&run_dir, config.resume.is_some()).map_err(TrainError::Config)?
        } else {
            RunLogs::silent(&run_dir)
        };
        let tensorboard = config
            .tensorboard
            .then_some(leader)
            .filter(|&l| l)
            .map(|_| EventWriter::create(&run_dir.join(TENSORBOARD_DIR)))
            .transpose()
            .map_err(run_err)?;
        let mut params = config.to_json();
        params["calibrated_threshold"] = state.calibrated_threshold.into();
        logs.write_params(&params).map_err(run_err)?;

        let total_steps = config.total_steps();
        let stop_at = config.steps.map_or(total_steps, |s| s.min(total_steps));
        let ranks_note = if ranks.size() > 1 {
            format!(" on each of {} ranks", ranks.size())
        } else {
            String::new()
        };
        logs.message(&format!(
            "clusterclip train: {} ({} parameters) on {}, mask {}, batch {}×{}{ranks_note}, {} steps ({} per epoch × {} epochs){}; logs in {}",
            config.model_name,
            trainer.clip.params.numel(),
            backend_name(&backend),
            strategy.name(),
            config.batch_size,
            config.accum_freq,
            total_steps,
            config.steps_per_epoch(),
            config.epochs,
            match &resume_path { Some(p) => format!(", resumed at step {} from {}", state.step, p.display()), None => String::new() },
            run_dir.display()
        ));
        if micro_batch < config.batch_size {
            logs.message(&format!(
                "batch {} runs as micro-batches of at most {micro_batch} (activations over one \
                 storage binding); the loss stays one contrastive batch",
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

        Ok(TrainRun {
            config,
            ranks,
            run_dir,
            run_config: params.to_string(),
            micro_batch,
            stop_at,
            strategy,
            evals,
            stream,
            logs,
            tensorboard,
            started: Instant::now(),
            first_step: state.step,
            last_scale: logit_scale(&trainer.clip),
            trainer,
            state,
            last_checkpoint: resume_path,
            last_metrics: None,
            last_loss: None,
            window: Window::new(),
            eval_ratio: (0.0, 0),
            ratio_sum: 0.0,
            pending_keep: Vec::new(),
            eval_seconds: 0.0,
        })
    }
}

/// Ok when every rank was started with the settings of rank 0; else the first setting that
/// differs, with both values.
fn same_settings(config: &TrainConfig, ranks: &dyn Ranks) -> Result<(), String> {
    if ranks.size() == 1 {
        return Ok(());
    }
    let mine = config.to_json();
    let all = ranks.all_gather_bytes(mine.to_string().as_bytes());
    let first: serde_json::Value = serde_json::from_slice(&all[0]).map_err(|e| e.to_string())?;
    for (rank, other) in all.iter().enumerate().skip(1) {
        let other: serde_json::Value = serde_json::from_slice(other).map_err(|e| e.to_string())?;
        if let (Some(a), Some(b)) = (first.as_object(), other.as_object()) {
            for (key, value) in a {
                let theirs = b.get(key).unwrap_or(&serde_json::Value::Null);
                if theirs != value {
                    let (theirs, value) = (setting_text(theirs), setting_text(value));
                    return Err(format!(
                        "rank {rank} was started with different settings than rank 0: \
                         {key} is {theirs} there and {value} on rank 0; start every rank with \
                         the same flags"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A setting as its flag was written: an f32 flag (`--lr 5e-4`) as the f32 it is, not the f64
/// JSON widened it to (0.0005000000237487257).
fn setting_text(value: &serde_json::Value) -> String {
    match value.as_f64() {
        Some(x) if value.is_f64() && (x as f32) as f64 == x => (x as f32).to_string(),
        _ => value.to_string(),
    }
}

/// Ok when every rank holds rank 0's parameters (a `--pretrained` or `--resume` file that
/// differs between machines would train different models); compared by a 64-bit FNV-1a hash.
fn same_parameters(trainer: &Trainer, ranks: &dyn Ranks) -> Result<(), String> {
    let values = read_storage(&trainer.backend, &trainer.clip.params.values);
    let hash = values.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        x.to_bits()
            .to_le_bytes()
            .iter()
            .fold(h, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
    });
    let all = ranks.all_gather_bytes(&hash.to_le_bytes());
    match all.iter().position(|h| *h != all[0]) {
        None => Ok(()),
        Some(rank) => Err(format!(
            "rank {rank} holds different starting weights than rank 0 (--pretrained or \
             --resume read a different file there)"
        )),
    }
}

/// Everything a rank opens before the run folder: settings checked, the model built or
/// restored, the data stream (this rank's share) and, on rank 0, the evaluation sets.
fn prepare(
    config: &TrainConfig,
    backend: Backend,
    ranks: &Rc<dyn Ranks>,
) -> Result<Prepared, TrainError> {
    {
        config.validate().map_err(TrainError::Config)?;
        let run_dir = config.logs.join(config.run_name());
        // Refused at once here; `RunLogs::open` checks again under the folder's lock.
        if config.resume.is_none() && ranks.rank() == 0 {
            check_new_run_folder(&run_dir).map_err(TrainError::Config)?;
        }
        let resume_path = match &config.resume {
            None => None,
            Some(ResumeFrom::Path(p)) => Some(p.clone()),
            Some(ResumeFrom::Latest) => Some(run_dir.join("checkpoints").join(LATEST)),
        };
        let checkpoint = resume_path.as_deref().map(load_resume).transpose()?;
        let micro_batch = micro_batch(config, &backend)?;
        let (clip, mut state) = match &checkpoint {
            Some(ck) => {
                if ck.config != config.model {
                    return Err(TrainError::Config(format!(
                        "--resume: {} holds a different model than --model {}",
                        ck.path.display(),
                        config.model_name
                    )));
                }
                if ck.normalisation != config.data.normalisation {
                    return Err(TrainError::Config(format!(
                        "--image-mean/--image-std: {} was trained with mean {:?} std {:?}; \
                         resume with the same values",
                        ck.path.display(),
                        ck.normalisation.mean,
                        ck.normalisation.std
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
                match &config.pretrained {
                    Some(path) => load_pretrained(path, &config.model_name, &config.model)
                        .map_err(TrainError::Config)?
                        .model(&backend),
                    None => Clip::new(config.model.clone(), &backend, config.seed)
                        .map_err(TrainError::Config)?,
                },
                TrainState {
                    seed: config.seed,
                    ..TrainState::default()
                },
            ),
        };
        let mut clip = clip;
        if config.lock_image {
            clip.params.freeze(|spec| spec.name.starts_with("visual."));
        }
        if state.seed != config.seed {
            return Err(TrainError::Config(format!(
                "--seed {} differs from the checkpoint's seed {}",
                config.seed, state.seed
            )));
        }
        let mut trainer = Trainer::new(clip, backend.clone(), config.adamw.clone());
        trainer.parallel = (ranks.size() > 1).then(|| DataParallel {
            ranks: ranks.clone(),
            gather_with_grad: config.gather_with_grad,
            local_loss: config.local_loss,
        });
        if let Some(ck) = &checkpoint {
            ck.restore_optimizer(&mut trainer.optimizer, &backend)
                .map_err(TrainError::Config)?;
        }
        let strategy = resolve_threshold(config, &mut state)?;
        // Rank 0 evaluates (the replicas are equal); the others skip the sets.
        let evals = if ranks.rank() == 0 {
            EvalSets::load(config, &trainer.clip, &backend)?
        } else {
            EvalSets::none()
        };
        let mut loader = config.loader_config();
        loader.share = RankShare {
            rank: ranks.rank(),
            ranks: ranks.size(),
            block: config.batch_size,
        };
        let stream = TrainStream::open(&loader, state.data_pass, state.pass_position)
            .map_err(TrainError::Config)?;
        Ok(Prepared {
            run_dir,
            resume_path,
            micro_batch,
            trainer,
            state,
            strategy,
            evals,
            stream,
        })
    }
}

/// The checkpoint `--resume` names, refused if absent or unreadable.
fn load_resume(path: &Path) -> Result<Checkpoint, TrainError> {
    if !path.exists() {
        return Err(TrainError::Config(format!(
            "--resume: no checkpoint at {}",
            path.display()
        )));
    }
    load_checkpoint(path, None).map_err(|e| TrainError::Config(format!("--resume: {e}")))
}

/// The largest micro-batch one storage binding holds. Batches whose activations exceed one
/// binding (WebGPU's 128 MiB; a ViT-B/16 at batch 56+) run as micro-batches of one contrastive
/// batch (Trainer::step), not refused; a model whose single image does not fit is.
fn micro_batch(config: &TrainConfig, backend: &Backend) -> Result<usize, TrainError> {
    let Some(gpu) = backend.gpu() else {
        return Ok(config.batch_size);
    };
    let limit = gpu.binding_limit_words();
    let largest_param = crate::model::init::param_specs(&config.model)
        .iter()
        .map(|p| p.numel())
        .max()
        .unwrap_or(0);
    let one_image = config.model.largest_activation_words(1).max(largest_param);
    if one_image > limit {
        return Err(TrainError::Config(format!(
            "--model {}: one image needs {:.0} KiB tensors, over this GPU's {:.0} KiB per \
             storage binding",
            config.model_name,
            (one_image * 4) as f64 / 1024.0,
            (limit * 4) as f64 / 1024.0,
        )));
    }
    Ok(config
        .batch_size
        .min(config.model.largest_batch_within(limit)))
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
