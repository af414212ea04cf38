//! The model's weights as a safetensors state_dict in memory: tensors under OpenCLIP's names,
//! f32, with the model configuration in the `model_config` metadata. Training checkpoints
//! (`train::checkpoint`) and the browser demo's upload and download share these, so a file the
//! demo writes is one `clusterclip eval --checkpoint` reads, and the other way round.

use std::collections::HashMap;
use std::path::Path;

use super::config::Activation;
use super::init::param_specs;
use super::io::{TensorFile, TensorOut, serialize};
use super::params::layout;
use super::{ClipConfig, TextConfig, VisionConfig};

/// Metadata key of the model configuration (JSON of [`config_json`]).
pub const MODEL_CONFIG_KEY: &str = "model_config";

/// Model configuration as JSON, in the metadata of every checkpoint.
pub fn config_json(config: &ClipConfig) -> serde_json::Value {
    let v = &config.vision;
    let t = &config.text;
    serde_json::json!({
        "embed_dim": config.embed_dim,
        "vision": {"image_size": v.image_size, "patch_size": v.patch_size, "width": v.width, "layers": v.layers, "heads": v.heads},
        "text": {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width, "layers": t.layers, "heads": t.heads},
        "quick_gelu": config.activation == Activation::QuickGelu,
    })
}

/// The inverse of [`config_json`]; the error names the missing field. `quick_gelu` may be
/// absent (files written before QuickGELU existed: GELU).
pub fn config_from_json(json: &serde_json::Value) -> Result<ClipConfig, String> {
    let field = |path: &[&str]| -> Result<usize, String> {
        let mut cur = json;
        for key in path {
            cur = cur
                .get(*key)
                .ok_or_else(|| format!("model config field {} is missing", path.join(".")))?;
        }
        cur.as_u64()
            .map(|x| x as usize)
            .ok_or_else(|| format!("model config field {} is not a count", path.join(".")))
    };
    let config = ClipConfig {
        embed_dim: field(&["embed_dim"])?,
        vision: VisionConfig {
            image_size: field(&["vision", "image_size"])?,
            patch_size: field(&["vision", "patch_size"])?,
            width: field(&["vision", "width"])?,
            layers: field(&["vision", "layers"])?,
            heads: field(&["vision", "heads"])?,
        },
        text: TextConfig {
            context_length: field(&["text", "context_length"])?,
            vocab_size: field(&["text", "vocab_size"])?,
            width: field(&["text", "width"])?,
            layers: field(&["text", "layers"])?,
            heads: field(&["text", "heads"])?,
        },
        activation: match json.get("quick_gelu") {
            None | Some(serde_json::Value::Bool(false)) => Activation::Gelu,
            Some(serde_json::Value::Bool(true)) => Activation::QuickGelu,
            Some(other) => {
                return Err(format!(
                    "model config field quick_gelu is {other}, not a bool"
                ));
            }
        },
    };
    config.validate()?;
    Ok(config)
}

/// The configuration stored in `file`'s metadata, else `model`; the error says to give one.
pub fn stored_config(file: &TensorFile, model: Option<&ClipConfig>) -> Result<ClipConfig, String> {
    let path = file.path.display();
    match (file.metadata.get(MODEL_CONFIG_KEY), model) {
        (Some(text), _) => {
            let json: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| format!("{path}: {MODEL_CONFIG_KEY} metadata: {e}"))?;
            config_from_json(&json).map_err(|e| format!("{path}: {e}"))
        }
        (None, Some(config)) => Ok(config.clone()),
        (None, None) => Err(format!(
            "{path}: no model configuration stored; pass --model"
        )),
    }
}

/// Flat values (the layout of `param_specs(config)`, padding included) of the tensors named
/// `prefix + name`; the error names the first missing or misshapen tensor.
pub fn flat_from_file(
    file: &TensorFile,
    config: &ClipConfig,
    prefix: &str,
) -> Result<Vec<f32>, String> {
    let specs = param_specs(config);
    let (offsets, total) = layout(&specs);
    let mut flat = vec![0.0; total];
    for (spec, offset) in specs.iter().zip(offsets) {
        let name = format!("{prefix}{}", spec.name);
        let (shape, values) = file.f32(&name)?;
        let same = shape == spec.shape || (spec.shape.is_empty() && shape == [1]);
        if !same || values.len() != spec.numel() {
            return Err(format!(
                "{}: tensor {name} has shape {shape:?}, the model needs {:?}",
                file.path.display(),
                spec.shape
            ));
        }
        flat[offset..offset + values.len()].copy_from_slice(&values);
    }
    Ok(flat)
}

/// The model configuration and flat weights of a state_dict's bytes (`origin` names the file
/// in errors). Tensors besides the model's (optimizer moments, counters) are ignored.
pub fn read_state_dict(
    bytes: &[u8],
    origin: &str,
    model: Option<&ClipConfig>,
) -> Result<(ClipConfig, Vec<f32>), String> {
    let file = TensorFile::parse(bytes, Path::new(origin))?;
    let config = stored_config(&file, model)?;
    let flat = flat_from_file(&file, &config, "")?;
    Ok((config, flat))
}

/// The bytes of a model-only state_dict: `tensors` (name, shape, values, as
/// `ParamStore::to_host` gives them) and the configuration in the metadata.
pub fn state_dict_bytes(
    config: &ClipConfig,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
) -> Result<Vec<u8>, String> {
    let out = tensors
        .iter()
        .map(|(name, shape, values)| (name.clone(), shape.clone(), TensorOut::F32(values)))
        .collect();
    let metadata = HashMap::from([(
        MODEL_CONFIG_KEY.to_string(),
        config_json(config).to_string(),
    )]);
    serialize(out, metadata)
}
