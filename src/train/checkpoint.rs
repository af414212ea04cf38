//! Resumable checkpoints as a pair of safetensors files. `epoch_N.safetensors` is the model's
//! state_dict alone (OpenCLIP names, f32: OpenCLIP's strict loader and `eval --checkpoint` read
//! it); `epoch_N.state.safetensors` holds the AdamW moments under PyTorch's state names
//! (`optimizer.exp_avg.NAME`, `optimizer.exp_avg_sq.NAME`), every counter that feeds a step
//! (optimizer step, data position, mask seed) and the loss history, so a resumed run repeats the
//! straight run bit for bit. Each file is written atomically (temporary file, fsync, rename:
//! `model::io::write_bytes_atomic`); the next start in the run folder removes the temporary files
//! a crash left (`logs::RunLogs::open`). Single-file checkpoints of format
//! `clusterclip-checkpoint-1` (everything in one file) still load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use safetensors::tensor::TensorView;

use crate::data::image_ops::Normalisation;
use crate::graph::{Backend, Storage};
use crate::model::init::param_specs;
use crate::model::io::{TensorFile, write_bytes_atomic};
use crate::model::params::{ParamSpec, ParamStore};
pub use crate::model::state_dict::{config_from_json, config_json};
use crate::model::state_dict::{flat_from_file, stored_config};
use crate::model::{Clip, ClipConfig};

use super::optimizer::Optimizer;
use super::step::{Trainer, read_storage};

/// `format` metadata of the single-file checkpoints written before the model/state split.
pub const LEGACY_FORMAT: &str = "clusterclip-checkpoint-1";
/// `format` metadata of the state files this module writes.
pub const STATE_FORMAT: &str = "clusterclip-state-1";
/// `epoch_N.safetensors` keeps its state in `epoch_N` + this.
pub const STATE_SUFFIX: &str = ".state.safetensors";
/// Name of the checkpoint `--resume latest` picks up.
pub const LATEST: &str = "epoch_latest.safetensors";
/// Model-file metadata keys of the image normalisation the weights were trained with (JSON
/// arrays of 3); files without them (OpenCLIP exports, older checkpoints) mean CLIP's.
pub const IMAGE_MEAN_KEY: &str = "image_mean";
pub const IMAGE_STD_KEY: &str = "image_std";

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
    /// The image normalisation the weights were trained with (evaluation uses it).
    pub normalisation: Normalisation,
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

/// The two files of one checkpoint, serialised.
pub struct CheckpointFiles {
    /// `epoch_N.safetensors`: the state_dict alone (OpenCLIP names, f32).
    pub model: Vec<u8>,
    /// `epoch_N.state.safetensors`: moments, counters, loss history, run settings.
    pub state: Vec<u8>,
}

/// `DIR/epoch_N.state.safetensors` beside `DIR/epoch_N.safetensors`.
pub fn state_path(model_path: &Path) -> PathBuf {
    let name = model_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".safetensors").unwrap_or(&name);
    model_path.with_file_name(format!("{stem}{STATE_SUFFIX}"))
}

/// The model file a path names: itself, or the model beside a `.state.safetensors` path.
fn model_path_of(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.strip_suffix(STATE_SUFFIX) {
        Some(stem) => path.with_file_name(format!("{stem}.safetensors")),
        None => path.to_path_buf(),
    }
}

/// FNV-1a over the model file's bytes: the state file names the model it belongs to.
fn model_checksum(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// A state_dict file: every parameter of `specs` (laid out at `offsets` in `flat`) under its
/// OpenCLIP name as f32, plus `metadata`. OpenCLIP's strict `load_state_dict` takes it as is.
pub fn model_file_bytes(
    specs: &[ParamSpec],
    offsets: &[usize],
    flat: &[f32],
    mut metadata: HashMap<String, String>,
) -> Result<Vec<u8>, String> {
    let views = specs
        .iter()
        .zip(offsets)
        .map(|(spec, &offset)| {
            let values = &flat[offset..offset + spec.numel()];
            TensorView::new(Dtype::F32, spec.shape.clone(), bytemuck::cast_slice(values))
                .map(|v| (spec.name.clone(), v))
                .map_err(|e| format!("tensor {}: {e}", spec.name))
        })
        .collect::<Result<Vec<_>, String>>()?;
    // What `safetensors.torch.save_file` writes, so tools that check it take the file.
    metadata.insert("format".into(), "pt".into());
    safetensors::serialize(views, Some(metadata.into_iter().collect()))
        .map_err(|e| format!("serialisation: {e}"))
}

/// The bytes of a checkpoint of `trainer` at `state` (reads the device once per buffer); refuses
/// non-finite parameters.
pub fn checkpoint_bytes(
    trainer: &Trainer,
    state: &TrainState,
    normalisation: &Normalisation,
    run_config: &str,
) -> Result<CheckpointFiles, CheckpointError> {
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
    let mut metadata = HashMap::new();
    metadata.insert(
        "model_config".to_string(),
        config_json(&trainer.clip.config).to_string(),
    );
    metadata.insert("step".to_string(), state.step.to_string());
    metadata.insert("epoch".to_string(), state.epoch.to_string());
    metadata.extend(normalisation_metadata(normalisation));
    let model = model_file_bytes(&params.specs, &params.offsets, &flats[0], metadata.clone())
        .map_err(|e| CheckpointError::Write(format!("checkpoint {e}")))?;

    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (prefix, flat) in ["optimizer.exp_avg.", "optimizer.exp_avg_sq."]
        .iter()
        .zip(&flats[1..])
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
    metadata.insert("format".to_string(), STATE_FORMAT.to_string());
    metadata.insert("run_config".to_string(), run_config.to_string());
    metadata.insert("model_checksum".to_string(), model_checksum(&model));
    if let Some(r) = state.calibrated_threshold {
        metadata.insert("calibrated_threshold".to_string(), format!("{r:e}"));
    }
    let state = safetensors::serialize(views, Some(metadata.into_iter().collect()))
        .map_err(|e| CheckpointError::Write(format!("checkpoint serialisation: {e}")))?;
    Ok(CheckpointFiles { model, state })
}

/// Writes a checkpoint of `trainer`: the model to `path`, then its state beside it
/// ([`state_path`]), each atomically. Model first: a crash between the two leaves a new model
/// beside the old state, which names another model by checksum, so resume refuses the pair
/// instead of pairing new weights with old moments; `eval` still reads the model.
pub fn save_checkpoint(
    path: &Path,
    trainer: &Trainer,
    state: &TrainState,
    normalisation: &Normalisation,
    run_config: &str,
) -> Result<(), CheckpointError> {
    let files = checkpoint_bytes(trainer, state, normalisation, run_config)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| CheckpointError::Write(format!("{}: {e}", dir.display())))?;
    }
    write_bytes_atomic(path, &files.model).map_err(CheckpointError::Write)?;
    write_bytes_atomic(&state_path(path), &files.state).map_err(CheckpointError::Write)
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

/// Tensors of a legacy single-file checkpoint that are not parameters.
fn is_legacy_state_tensor(name: &str) -> bool {
    ["optimizer.", "train.", "data.", "rng."]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Refuses a state_dict whose names differ from the model's (OpenCLIP's strict load), naming
/// the missing and unexpected keys (the first few of each, and their counts).
pub fn check_state_dict_names(file: &TensorFile, config: &ClipConfig) -> Result<(), String> {
    let legacy = file.metadata.get("format").map(String::as_str) == Some(LEGACY_FORMAT);
    let specs = param_specs(config);
    let wanted: std::collections::HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let mut missing: Vec<&str> = specs
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| !file.tensors.contains_key(*n))
        .collect();
    let mut unexpected: Vec<&str> = file
        .tensors
        .keys()
        .map(String::as_str)
        .filter(|n| !(wanted.contains(n) || (legacy && is_legacy_state_tensor(n))))
        .collect();
    if missing.is_empty() && unexpected.is_empty() {
        return Ok(());
    }
    missing.sort_unstable();
    unexpected.sort_unstable();
    let list = |names: &[&str]| {
        let shown: Vec<&str> = names.iter().take(4).copied().collect();
        let more = names.len().saturating_sub(shown.len());
        let tail = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        format!("{}{tail}", shown.join(", "))
    };
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!(
            "missing {} key(s): {}",
            missing.len(),
            list(&missing)
        ));
    }
    if !unexpected.is_empty() {
        parts.push(format!(
            "unexpected {} key(s): {}",
            unexpected.len(),
            list(&unexpected)
        ));
    }
    Err(format!(
        "{}: state_dict does not fit the model: {}",
        file.path.display(),
        parts.join("; ")
    ))
}

/// Reads the weights of a model file (a checkpoint's `epoch_N.safetensors`, a legacy single-file
/// checkpoint, or an OpenCLIP state_dict in f32, f16 or bf16); no optimizer state. `model` gives
/// the configuration of files without one in their metadata; the stored one wins otherwise.
pub fn load_model(path: &Path, model: Option<&ClipConfig>) -> Result<Checkpoint, String> {
    let file = TensorFile::read(path)?;
    weights_of(&file, model)
}

/// The metadata entries that record `normalisation` in a model file.
pub fn normalisation_metadata(normalisation: &Normalisation) -> [(String, String); 2] {
    let json = |values: &[f32; 3]| serde_json::json!(values).to_string();
    [
        (IMAGE_MEAN_KEY.into(), json(&normalisation.mean)),
        (IMAGE_STD_KEY.into(), json(&normalisation.std)),
    ]
}

/// The normalisation a model file records; CLIP's when it records none.
fn stored_normalisation(file: &TensorFile) -> Result<Normalisation, String> {
    let read = |key: &str, default: [f32; 3]| -> Result<[f32; 3], String> {
        match file.metadata.get(key) {
            None => Ok(default),
            Some(text) => serde_json::from_str(text)
                .map_err(|e| format!("{}: metadata {key}: {e}", file.path.display())),
        }
    };
    let clip = Normalisation::CLIP;
    let normalisation = Normalisation {
        mean: read(IMAGE_MEAN_KEY, clip.mean)?,
        std: read(IMAGE_STD_KEY, clip.std)?,
    };
    normalisation
        .validate()
        .map_err(|e| format!("{}: metadata: {e}", file.path.display()))?;
    Ok(normalisation)
}

fn weights_of(file: &TensorFile, model: Option<&ClipConfig>) -> Result<Checkpoint, String> {
    let config = stored_config(file, model)?;
    check_state_dict_names(file, &config)?;
    let params = flat_from_file(file, &config, "")?;
    Ok(Checkpoint {
        path: file.path.clone(),
        normalisation: stored_normalisation(file)?,
        config,
        params,
        moments: None,
        optimizer_steps: 0,
        state: TrainState::default(),
        run_config: None,
    })
}

/// Reads a checkpoint for resuming: the model file and, when present, its state file (or both
/// from one legacy single-file checkpoint). `path` may name either file of the pair.
pub fn load_checkpoint(path: &Path, model: Option<&ClipConfig>) -> Result<Checkpoint, String> {
    let path = model_path_of(path);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file = TensorFile::parse(&bytes, &path)?;
    let mut checkpoint = weights_of(&file, model)?;
    let legacy = file.metadata.get("format").map(String::as_str) == Some(LEGACY_FORMAT);
    let sibling = state_path(&path);
    let state_file = if legacy {
        file
    } else if sibling.exists() {
        let state = TensorFile::read(&sibling)?;
        if state.metadata.get("format").map(String::as_str) != Some(STATE_FORMAT) {
            return Err(format!(
                "{}: not a clusterclip state file (format {:?})",
                sibling.display(),
                state.metadata.get("format")
            ));
        }
        let checksum = model_checksum(&bytes);
        if state.metadata.get("model_checksum") != Some(&checksum) {
            return Err(format!(
                "{}: belongs to another model file than {} (an interrupted checkpoint write; \
                 resume from an epoch_N.safetensors whose state matches)",
                sibling.display(),
                path.display()
            ));
        }
        let state_config = stored_config(&state, None)?;
        if state_config != checkpoint.config {
            return Err(format!(
                "{}: model configuration differs from {}",
                sibling.display(),
                path.display()
            ));
        }
        state
    } else {
        return Ok(checkpoint);
    };
    let config = &checkpoint.config;
    let moments = (
        flat_from_file(&state_file, config, "optimizer.exp_avg.")?,
        flat_from_file(&state_file, config, "optimizer.exp_avg_sq.")?,
    );
    let steps = state_file.u32("train.loss_history.step").map(|(_, v)| v);
    let history = match (steps, state_file.f32("train.loss_history.loss")) {
        (Ok(s), Ok((_, l))) if s.len() == l.len() => s.into_iter().map(u64::from).zip(l).collect(),
        _ => Vec::new(),
    };
    let calibrated_threshold = match state_file.metadata.get("calibrated_threshold") {
        Some(text) => Some(
            text.parse::<f32>()
                .map_err(|e| format!("{}: calibrated_threshold: {e}", state_file.path.display()))?,
        ),
        None => None,
    };
    checkpoint.state = TrainState {
        step: counter(&state_file, "train.step")?,
        epoch: counter(&state_file, "train.epoch")?,
        samples_seen: counter(&state_file, "train.samples_seen")?,
        data_pass: counter(&state_file, "data.pass")?,
        pass_position: counter(&state_file, "data.pass_position")?,
        seed: counter(&state_file, "rng.seed")?,
        calibrated_threshold,
        loss_history: history,
    };
    checkpoint.moments = Some(moments);
    checkpoint.optimizer_steps = counter(&state_file, "optimizer.step")?;
    checkpoint.run_config = state_file.metadata.get("run_config").cloned();
    Ok(checkpoint)
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
