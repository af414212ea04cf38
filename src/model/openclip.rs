//! Interchange with OpenCLIP: the folder its `local-dir:` / `hf-hub:` loader reads
//! (`open_clip_model.safetensors` + `open_clip_config.json`, as OpenCLIP's `push_to_hf_hub`
//! writes it: `{"model_cfg": {...}, "preprocess_cfg": {...}}`).

use std::collections::HashMap;
use std::path::Path;

use super::ClipConfig;
use super::init::param_specs;
use super::io::write_bytes_atomic;
use super::params::layout;
use crate::data::image_ops::{CLIP_MEAN, CLIP_STD};
use crate::train::checkpoint::{Checkpoint, config_json, model_file_bytes};

/// OpenCLIP's weights file name in an exported folder (`HF_SAFE_WEIGHTS_NAME`).
pub const WEIGHTS_FILE: &str = "open_clip_model.safetensors";
/// OpenCLIP's configuration file name (`HF_CONFIG_NAME`).
pub const CONFIG_FILE: &str = "open_clip_config.json";

/// `model_cfg` in the layout of OpenCLIP's `model_configs/*.json`: the vision tower gives
/// `head_width` (OpenCLIP derives heads as width / head_width), the text tower `heads`.
pub fn model_cfg(config: &ClipConfig) -> serde_json::Value {
    let (v, t) = (&config.vision, &config.text);
    serde_json::json!({
        "embed_dim": config.embed_dim,
        "vision_cfg": {
            "image_size": v.image_size,
            "layers": v.layers,
            "width": v.width,
            "head_width": v.head_dim(),
            "patch_size": v.patch_size,
        },
        "text_cfg": {
            "context_length": t.context_length,
            "vocab_size": t.vocab_size,
            "width": t.width,
            "heads": t.heads,
            "layers": t.layers,
        },
    })
}

/// `open_clip_config.json`: the model and the preprocessing this crate's evaluation uses
/// (CLIP mean/std, bicubic resize of the shorter side, centre crop: `data::image_ops`).
pub fn open_clip_config(config: &ClipConfig) -> serde_json::Value {
    serde_json::json!({
        "model_cfg": model_cfg(config),
        "preprocess_cfg": {
            "mean": CLIP_MEAN,
            "std": CLIP_STD,
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    })
}

/// Writes `checkpoint`'s weights and configuration into `out` (created if needed) as OpenCLIP
/// loads them: `open_clip.create_model_and_transforms('local-dir:OUT')`.
pub fn export_open_clip(checkpoint: &Checkpoint, out: &Path) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let specs = param_specs(&checkpoint.config);
    let (offsets, _) = layout(&specs);
    let mut metadata = HashMap::new();
    metadata.insert(
        "model_config".to_string(),
        config_json(&checkpoint.config).to_string(),
    );
    let weights = model_file_bytes(&specs, &offsets, &checkpoint.params, metadata)
        .map_err(|e| format!("{}: {e}", out.join(WEIGHTS_FILE).display()))?;
    write_bytes_atomic(&out.join(WEIGHTS_FILE), &weights)?;
    let text = serde_json::to_string_pretty(&open_clip_config(&checkpoint.config))
        .map_err(|e| e.to_string())?;
    write_bytes_atomic(&out.join(CONFIG_FILE), text.as_bytes())
}
