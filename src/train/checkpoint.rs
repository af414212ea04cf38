//! Resumable checkpoints as safetensors: the weights under their OpenCLIP names, the AdamW
//! moments under PyTorch's state names (`optimizer.exp_avg.NAME`, `optimizer.exp_avg_sq.NAME`),
//! and every counter that feeds a step (optimizer step, data position, mask seed), so a resumed
//! run repeats the straight run bit for bit. Written atomically (temporary file, fsync, rename:
//! `model::io::write_bytes_atomic`), so a crash mid-write leaves the previous checkpoint; the
//! next start in the run folder removes the temporary file it left (`logs::RunLogs::open`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use safetensors::tensor::TensorView;

use crate::graph::{Backend, Storage};
use crate::model::init::param_specs;
use crate::model::io::{TensorFile, write_bytes_atomic};
use crate::model::params::ParamStore;
pub use crate::model::state_dict::{config_from_json, config_json};
use crate::model::state_dict::{flat_from_file, stored_config};
use crate::model::{Clip, ClipConfig};

use super::optimizer::Optimizer;
use super::step::{Trainer, read_storage};

/// `format` metadata of the checkpoints this module writes.
pub const CHECKPOINT_FORMAT: &str = "clusterclip-checkpoint-1";
/// Name of the checkpoint `--resume latest` picks up.
pub const LATEST: &str = "epoch_latest.safetensors";

/// Everything besides tensors that decides the next step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainState {
    /// Optimizer steps taken.
    pub step: u64,
    /// Epochs completed.
    pub epoch: u64,
    /// Training samples consumed (all micro-batches).
    pub samples_seen: u64,
    /// Pass over a finite training set, and samples consumed within it (the data position).
    pub data_pass: u64,
    pub pass_position: u64,
    /// Seed of the run: initialisation, data order and the mask RNG, keyed by (seed, step).
    pub seed: u64,
    /// The threshold `--threshold auto` settled on (M3.6), reused on resume.
    pub calibrated_threshold: Option<f32>,
    /// (step, loss) of every loss read so far, for `loss.png`.
    pub loss_history: Vec<(u64, f32)>,
}

/// A checkpoint read back to the host.
pub struct Checkpoint {
    pub path: PathBuf,
    pub config: ClipConfig,
    /// Flat layouts of `param_specs(config)` (padding included).
    pub params: Vec<f32>,
    /// Absent in weight-only files (an OpenCLIP export).
    pub moments: Option<(Vec<f32>, Vec<f32>)>,
    pub optimizer_steps: u64,
    pub state: TrainState,
    /// The run's settings as JSON (`params.json`), when stored.
    pub run_config: Option<String>,
}

/// Counters as I64 tensors (PyTorch has no u64; the reader widens every integer dtype).
fn i64_tensor(values: &[u64]) -> Vec<u8> {
    let signed: Vec<i64> = values.iter().map(|&v| v as i64).collect();
    bytemuck::cast_slice(&signed).to_vec()
}

/// Why a checkpoint was not written.
#[derive(Debug)]
pub enum CheckpointError {
    /// A parameter is NaN or infinite: the checkpoint would be useless, the previous one stays.
    NonFinite(String),
    Write(String),
}

impl std::fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckpointError::NonFinite(what) | CheckpointError::Write(what) => f.write_str(what),
        }
    }
}

/// The bytes of a checkpoint of `trainer` at `state` (reads the device once per buffer); refuses
/// non-finite parameters.
pub fn checkpoint_bytes(
    trainer: &Trainer,
    state: &TrainState,
    run_config: &str,
) -> Result<Vec<u8>, CheckpointError> {
    let backend = &trainer.backend;
    let params = &trainer.clip.params;
    let flats = [
        read_storage(backend, &params.values),
        read_storage(backend, &trainer.optimizer.moment1.values),
        read_storage(backend, &trainer.optimizer.moment2.values),
    ];
    for (spec, &offset) in params.specs.iter().zip(&params.offsets) {
        if let Some(bad) = flats[0][offset..offset + spec.numel()]
            .iter()
            .find(|x| !x.is_finite())
        {
            return Err(CheckpointError::NonFinite(format!(
                "parameter {} holds {bad}",
                spec.name
            )));
        }
    }
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (prefix, flat) in ["", "optimizer.exp_avg.", "optimizer.exp_avg_sq."]
        .iter()
        .zip(&flats)
    {
        for (spec, &offset) in params.specs.iter().zip(&params.offsets) {
            let values = &flat[offset..offset + spec.numel()];
            owned.push((
                format!("{prefix}{}", spec.name),
                Dtype::F32,
                spec.shape.clone(),
                bytemuck::cast_slice(values).to_vec(),
            ));
        }
    }
    let counters = [
        ("optimizer.step", trainer.optimizer.steps),
        ("train.step", state.step),
        ("train.epoch", state.epoch),
        ("train.samples_seen", state.samples_seen),
        ("data.pass", state.data_pass),
        ("data.pass_position", state.pass_position),
        ("rng.seed", state.seed),
    ];
    for (name, value) in counters {
        owned.push((name.to_string(), Dtype::I64, vec![1], i64_tensor(&[value])));
    }
    let history_steps: Vec<u64> = state.loss_history.iter().map(|&(s, _)| s).collect();
    let history_losses: Vec<f32> = state.loss_history.iter().map(|&(_, l)| l).collect();
    owned.push((
        "train.loss_history.step".into(),
        Dtype::I64,
        vec![history_steps.len()],
        i64_tensor(&history_steps),
    ));
    owned.push((
        "train.loss_history.loss".into(),
        Dtype::F32,
        vec![history_losses.len()],
        bytemuck::cast_slice(&history_losses).to_vec(),
    ));
    let views = owned
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| CheckpointError::Write(format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>, CheckpointError>>()?;
    let mut metadata = HashMap::new();
    metadata.insert("format".to_string(), CHECKPOINT_FORMAT.to_string());
    metadata.insert(
        "model_config".to_string(),
        config_json(&trainer.clip.config).to_string(),
    );
    metadata.insert("run_config".to_string(), run_config.to_string());
    metadata.insert("step".to_string(), state.step.to_string());
    metadata.insert("epoch".to_string(), state.epoch.to_string());
    if let Some(r) = state.calibrated_threshold {
        metadata.insert("calibrated_threshold".to_string(), format!("{r:e}"));
    }
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| CheckpointError::Write(format!("checkpoint serialisation: {e}")))
}

/// Writes a checkpoint of `trainer` to `path` atomically.
pub fn save_checkpoint(
    path: &Path,
    trainer: &Trainer,
    state: &TrainState,
    run_config: &str,
) -> Result<(), CheckpointError> {
    let bytes = checkpoint_bytes(trainer, state, run_config)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| CheckpointError::Write(format!("{}: {e}", dir.display())))?;
    }
    write_bytes_atomic(path, &bytes).map_err(CheckpointError::Write)
}

fn counter(file: &TensorFile, name: &str) -> Result<u64, String> {
    let tensor = file
        .tensors
        .get(name)
        .ok_or_else(|| format!("{}: missing tensor {name}", file.path.display()))?;
    match &tensor.data {
        crate::model::io::TensorData::Int(v) if v.len() == 1 => Ok(v[0] as u64),
        _ => Err(format!(
            "{}: tensor {name} is not one integer",
            file.path.display()
        )),
    }
}

/// Reads a checkpoint. `model` gives the configuration of files without one in their metadata
/// (weight-only OpenCLIP exports); the stored configuration wins otherwise.
pub fn load_checkpoint(path: &Path, model: Option<&ClipConfig>) -> Result<Checkpoint, String> {
    let file = TensorFile::read(path)?;
    let config = stored_config(&file, model)?;
    let params = flat_from_file(&file, &config, "")?;
    let resumable = file.metadata.get("format").map(String::as_str) == Some(CHECKPOINT_FORMAT);
    if !resumable {
        return Ok(Checkpoint {
            path: path.to_path_buf(),
            config,
            params,
            moments: None,
            optimizer_steps: 0,
            state: TrainState::default(),
            run_config: None,
        });
    }
    let moments = (
        flat_from_file(&file, &config, "optimizer.exp_avg.")?,
        flat_from_file(&file, &config, "optimizer.exp_avg_sq.")?,
    );
    let steps = file.u32("train.loss_history.step").map(|(_, v)| v);
    let history = match (steps, file.f32("train.loss_history.loss")) {
        (Ok(s), Ok((_, l))) if s.len() == l.len() => s.into_iter().map(u64::from).zip(l).collect(),
        _ => Vec::new(),
    };
    let calibrated_threshold = match file.metadata.get("calibrated_threshold") {
        Some(text) => Some(
            text.parse::<f32>()
                .map_err(|e| format!("{}: calibrated_threshold: {e}", path.display()))?,
        ),
        None => None,
    };
    let state = TrainState {
        step: counter(&file, "train.step")?,
        epoch: counter(&file, "train.epoch")?,
        samples_seen: counter(&file, "train.samples_seen")?,
        data_pass: counter(&file, "data.pass")?,
        pass_position: counter(&file, "data.pass_position")?,
        seed: counter(&file, "rng.seed")?,
        calibrated_threshold,
        loss_history: history,
    };
    Ok(Checkpoint {
        path: path.to_path_buf(),
        config,
        params,
        moments: Some(moments),
        optimizer_steps: counter(&file, "optimizer.step")?,
        state,
        run_config: file.metadata.get("run_config").cloned(),
    })
}

impl Checkpoint {
    /// The model on `backend`.
    pub fn model(&self, backend: &Backend) -> Clip {
        Clip {
            params: ParamStore::from_flat(param_specs(&self.config), &self.params, backend),
            config: self.config.clone(),
        }
    }

    /// Puts the stored moments and step count into `optimizer` (same model layout).
    pub fn restore_optimizer(
        &self,
        optimizer: &mut Optimizer,
        backend: &Backend,
    ) -> Result<(), String> {
        let (m, v) = self
            .moments
            .as_ref()
            .ok_or_else(|| format!("{}: holds no optimizer state", self.path.display()))?;
        if m.len() != optimizer.moment1.total {
            return Err(format!(
                "{}: optimizer state does not match the model",
                self.path.display()
            ));
        }
        optimizer.moment1.values = backend.upload(m);
        optimizer.moment2.values = backend.upload(v);
        optimizer.steps = self.optimizer_steps;
        Ok(())
    }
}

/// Host copy of a flat store (tests compare runs with it).
pub fn flat_values(backend: &Backend, values: &Storage) -> Vec<f32> {
    read_storage(backend, values)
}
