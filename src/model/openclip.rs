//! Interchange with OpenCLIP: its model names and model config JSON, its state_dicts as
//! `--pretrained` weights (checked against the model, QuickGELU included), and the folder its
//! `local-dir:` / `hf-hub:` loader reads (`open_clip_model.safetensors` + `open_clip_config.json`,
//! as OpenCLIP's `push_to_hf_hub` writes it: `{"model_cfg": {...}, "preprocess_cfg": {...}}`).

use std::collections::HashMap;
use std::path::Path;

use super::config::{Activation, PRESETS};
use super::init::param_specs;
use super::io::write_bytes_atomic;
use super::params::layout;
use super::{ClipConfig, TextConfig, VisionConfig};
use crate::data::image_ops::Normalisation;
use crate::train::checkpoint::{
    Checkpoint, config_json, load_model, model_file_bytes, normalisation_metadata,
};

/// OpenCLIP's weights file name in an exported folder (`HF_SAFE_WEIGHTS_NAME`).
pub const WEIGHTS_FILE: &str = "open_clip_model.safetensors";
/// OpenCLIP's configuration file name (`HF_CONFIG_NAME`).
pub const CONFIG_FILE: &str = "open_clip_config.json";

/// OpenCLIP's model configs (`src/open_clip/model_configs/NAME.json` of open_clip 3.3, copied
/// as they are) whose architecture is the one built here: a plain ViT with a learned class
/// token and positions, pre-norm blocks with a 4× MLP, a causal text transformer pooled at the
/// end token. The others (SigLIP, CoCa, EVA, ConvNeXt, timm or Hugging Face towers, layer scale,
/// attentional pooling, ...) are refused by name.
const OPENCLIP_MODELS: &[(&str, &str)] = &[
    (
        "ViT-S-16",
        r#"{"embed_dim":384,"vision_cfg":{"image_size":224,"layers":12,"width":384,"patch_size":16},"text_cfg":{"context_length":77,"vocab_size":49408,"width":384,"heads":6,"layers":12}}"#,
    ),
    (
        "ViT-S-32",
        r#"{"embed_dim":384,"vision_cfg":{"image_size":224,"layers":12,"width":384,"patch_size":32},"text_cfg":{"context_length":77,"vocab_size":49408,"width":384,"heads":6,"layers":12}}"#,
    ),
    (
        "ViT-M-16",
        r#"{"embed_dim":512,"vision_cfg":{"image_size":224,"layers":12,"width":512,"patch_size":16},"text_cfg":{"context_length":77,"vocab_size":49408,"width":512,"heads":8,"layers":12}}"#,
    ),
    (
        "ViT-M-32",
        r#"{"embed_dim":512,"vision_cfg":{"image_size":224,"layers":12,"width":512,"patch_size":32},"text_cfg":{"context_length":77,"vocab_size":49408,"width":512,"heads":8,"layers":12}}"#,
    ),
    (
        "ViT-B-16",
        r#"{"embed_dim":512,"vision_cfg":{"image_size":224,"layers":12,"width":768,"patch_size":16},"text_cfg":{"context_length":77,"vocab_size":49408,"width":512,"heads":8,"layers":12}}"#,
    ),
    (
        "ViT-B-32",
        r#"{"embed_dim":512,"vision_cfg":{"image_size":224,"layers":12,"width":768,"patch_size":32},"text_cfg":{"context_length":77,"vocab_size":49408,"width":512,"heads":8,"layers":12}}"#,
    ),
    (
        "ViT-B-32-256",
        r#"{"embed_dim":512,"vision_cfg":{"image_size":256,"layers":12,"width":768,"patch_size":32},"text_cfg":{"context_length":77,"vocab_size":49408,"width":512,"heads":8,"layers":12}}"#,
    ),
    (
        "ViT-B-16-plus",
        r#"{"embed_dim":640,"vision_cfg":{"image_size":224,"layers":12,"width":896,"patch_size":16},"text_cfg":{"context_length":77,"vocab_size":49408,"width":640,"heads":10,"layers":12}}"#,
    ),
    (
        "ViT-B-16-plus-240",
        r#"{"embed_dim":640,"vision_cfg":{"image_size":240,"layers":12,"width":896,"patch_size":16},"text_cfg":{"context_length":77,"vocab_size":49408,"width":640,"heads":10,"layers":12}}"#,
    ),
    (
        "ViT-L-14",
        r#"{"embed_dim":768,"vision_cfg":{"image_size":224,"layers":24,"width":1024,"patch_size":14},"text_cfg":{"context_length":77,"vocab_size":49408,"width":768,"heads":12,"layers":12}}"#,
    ),
    (
        "ViT-L-14-336",
        r#"{"embed_dim":768,"vision_cfg":{"image_size":336,"layers":24,"width":1024,"patch_size":14},"text_cfg":{"context_length":77,"vocab_size":49408,"width":768,"heads":12,"layers":12}}"#,
    ),
    (
        "ViT-L-16",
        r#"{"embed_dim":768,"vision_cfg":{"image_size":224,"layers":24,"width":1024,"patch_size":16},"text_cfg":{"context_length":77,"vocab_size":49408,"width":768,"heads":12,"layers":12}}"#,
    ),
    (
        "ViT-H-14",
        r#"{"embed_dim":1024,"vision_cfg":{"image_size":224,"layers":32,"width":1280,"head_width":80,"patch_size":14},"text_cfg":{"context_length":77,"vocab_size":49408,"width":1024,"heads":16,"layers":24}}"#,
    ),
];

/// OpenCLIP's model-name suffix for QuickGELU weights (OpenAI, MetaCLIP, DFN lineages).
const QUICK_GELU_SUFFIX: &str = "-quickgelu";

/// The configuration `--model` names: a preset (`micro`, `tiny`, `s16`, `b16`), an OpenCLIP
/// model name with or without `-quickgelu` (`ViT-B-16`, `ViT-B-16-quickgelu`, ...), or an
/// OpenCLIP model config file (`*.json`, bare or as `open_clip_config.json`'s `model_cfg`).
pub fn model_config(name: &str) -> Result<ClipConfig, String> {
    if PRESETS.contains(&name) {
        return ClipConfig::preset(name);
    }
    if name.ends_with(".json") {
        let path = Path::new(name);
        let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{name}: not valid JSON ({e})"))?;
        let cfg = json.get("model_cfg").unwrap_or(&json);
        return config_from_model_cfg(cfg).map_err(|e| format!("{name}: {e}"));
    }
    let (base, quick) = match name.strip_suffix(QUICK_GELU_SUFFIX) {
        Some(base) => (base, true),
        None => (name, false),
    };
    let Some((_, json)) = OPENCLIP_MODELS.iter().find(|(n, _)| *n == base) else {
        let names: Vec<&str> = OPENCLIP_MODELS.iter().map(|(n, _)| *n).collect();
        return Err(format!(
            "unknown model '{name}': expected a preset ({}), an OpenCLIP model built here ({}, \
             each also as NAME{QUICK_GELU_SUFFIX}) or an OpenCLIP model config .json; OpenCLIP's \
             other models (SigLIP, CoCa, EVA, ConvNeXt, timm and Hugging Face towers) are not \
             supported",
            PRESETS.join(", "),
            names.join(", ")
        ));
    };
    let json: serde_json::Value = serde_json::from_str(json).expect("the table is valid JSON");
    let mut config = config_from_model_cfg(&json).expect("the table's configs are supported");
    if quick {
        config.activation = Activation::QuickGelu;
    }
    Ok(config)
}

/// The preset or OpenCLIP name of `config`, if it has one (for results files).
pub fn model_name_of(config: &ClipConfig) -> Option<String> {
    let suffix = match config.activation {
        Activation::Gelu => "",
        Activation::QuickGelu => QUICK_GELU_SUFFIX,
    };
    let plain = ClipConfig {
        activation: Activation::Gelu,
        ..config.clone()
    };
    OPENCLIP_MODELS
        .iter()
        .map(|(name, _)| *name)
        .find(|name| model_config(name).is_ok_and(|c| c == plain))
        .map(|name| format!("{name}{suffix}"))
        .or_else(|| {
            PRESETS
                .iter()
                .find(|p| suffix.is_empty() && ClipConfig::preset(p).is_ok_and(|c| c == plain))
                .map(|p| p.to_string())
        })
}

/// A `model_cfg` of OpenCLIP's layout as a configuration; keys that would change the
/// architecture into one not built here are refused by name.
pub fn config_from_model_cfg(json: &serde_json::Value) -> Result<ClipConfig, String> {
    let object = |value: &serde_json::Value,
                  at: &str|
     -> Result<serde_json::Map<String, serde_json::Value>, String> {
        value
            .as_object()
            .cloned()
            .ok_or_else(|| format!("{at} is not an object"))
    };
    let top = object(json, "model_cfg")?;
    let vision = object(
        top.get("vision_cfg").unwrap_or(&serde_json::Value::Null),
        "vision_cfg",
    )?;
    let text = object(
        top.get("text_cfg").unwrap_or(&serde_json::Value::Null),
        "text_cfg",
    )?;
    let allowed: [(&str, &serde_json::Map<String, serde_json::Value>, &[&str]); 3] = [
        (
            "",
            &top,
            &["embed_dim", "vision_cfg", "text_cfg", "quick_gelu"],
        ),
        (
            "vision_cfg.",
            &vision,
            &[
                "image_size",
                "layers",
                "width",
                "patch_size",
                "head_width",
                "mlp_ratio",
            ],
        ),
        (
            "text_cfg.",
            &text,
            &[
                "context_length",
                "vocab_size",
                "width",
                "heads",
                "layers",
                "mlp_ratio",
            ],
        ),
    ];
    for (prefix, map, keys) in allowed {
        if let Some(other) = map.keys().find(|k| !keys.contains(&k.as_str())) {
            return Err(format!(
                "model_cfg key {prefix}{other} is not supported (only plain ViT CLIPs are built)"
            ));
        }
        if let Some(ratio) = map.get("mlp_ratio").filter(|r| r.as_f64() != Some(4.0)) {
            return Err(format!(
                "model_cfg {prefix}mlp_ratio {ratio} is not supported (only 4)"
            ));
        }
    }
    let count = |map: &serde_json::Map<String, serde_json::Value>, at: &str, key: &str| {
        map.get(key)
            .ok_or_else(|| format!("model_cfg {at}{key} is missing"))?
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| format!("model_cfg {at}{key} is not a count"))
    };
    let width = count(&vision, "vision_cfg.", "width")?;
    // OpenCLIP's VisionCfg default head_width.
    let head_width = if vision.contains_key("head_width") {
        count(&vision, "vision_cfg.", "head_width")?
    } else {
        64
    };
    if head_width == 0 || !width.is_multiple_of(head_width) {
        return Err(format!(
            "model_cfg vision_cfg.head_width {head_width} does not divide vision_cfg.width {width}"
        ));
    }
    let activation = match top.get("quick_gelu") {
        None | Some(serde_json::Value::Bool(false)) => Activation::Gelu,
        Some(serde_json::Value::Bool(true)) => Activation::QuickGelu,
        Some(other) => return Err(format!("model_cfg quick_gelu is {other}, not a bool")),
    };
    let config = ClipConfig {
        embed_dim: count(&top, "", "embed_dim")?,
        vision: VisionConfig {
            image_size: count(&vision, "vision_cfg.", "image_size")?,
            patch_size: count(&vision, "vision_cfg.", "patch_size")?,
            width,
            layers: count(&vision, "vision_cfg.", "layers")?,
            heads: width / head_width,
        },
        text: TextConfig {
            context_length: count(&text, "text_cfg.", "context_length")?,
            vocab_size: count(&text, "text_cfg.", "vocab_size")?,
            width: count(&text, "text_cfg.", "width")?,
            layers: count(&text, "text_cfg.", "layers")?,
            heads: count(&text, "text_cfg.", "heads")?,
        },
        activation,
    };
    config.validate()?;
    Ok(config)
}

/// Which activation a name gives, for messages.
fn activation_name(activation: Activation) -> &'static str {
    match activation {
        Activation::Gelu => "GELU",
        Activation::QuickGelu => "QuickGELU",
    }
}

/// `--pretrained PATH` for `--model NAME` (configuration `config`): an OpenCLIP state_dict
/// (f32, f16 or bf16) or a folder holding `open_clip_model.safetensors`. The weights' own
/// configuration, where one is known (this crate's metadata, or `open_clip_config.json` beside
/// the file), must be the model's, activation included: QuickGELU weights in a GELU model load
/// without error in PyTorch and silently give wrong features.
pub fn load_pretrained(path: &Path, name: &str, config: &ClipConfig) -> Result<Checkpoint, String> {
    let file = if path.is_dir() {
        path.join(WEIGHTS_FILE)
    } else {
        path.to_path_buf()
    };
    if !file.is_file() {
        return Err(format!("--pretrained: {} does not exist", file.display()));
    }
    let weights = load_model(&file, Some(config)).map_err(|e| format!("--pretrained: {e}"))?;
    let beside = file.with_file_name(CONFIG_FILE);
    let (stated, source) = if weights.config != *config {
        (Some(weights.config.clone()), file.display().to_string())
    } else if beside.is_file() {
        let text =
            std::fs::read_to_string(&beside).map_err(|e| format!("{}: {e}", beside.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("--pretrained: {}: not valid JSON ({e})", beside.display()))?;
        let cfg = json.get("model_cfg").unwrap_or(&json);
        let stated = config_from_model_cfg(cfg)
            .map_err(|e| format!("--pretrained: {}: {e}", beside.display()))?;
        (Some(stated), beside.display().to_string())
    } else {
        (None, String::new())
    };
    if let Some(stated) = stated {
        if stated.activation != config.activation {
            let hint = match config.activation {
                Activation::Gelu => format!("use --model {name}{QUICK_GELU_SUFFIX}"),
                Activation::QuickGelu => "use the model name without -quickgelu".to_string(),
            };
            return Err(format!(
                "--pretrained: {source} says the weights use {} but --model {name} uses {}; {hint}",
                activation_name(stated.activation),
                activation_name(config.activation)
            ));
        }
        if stated != *config {
            return Err(format!(
                "--pretrained: {source} holds another architecture than --model {name}: {} vs {}",
                serde_json::to_string(&model_cfg(&stated)).unwrap_or_default(),
                serde_json::to_string(&model_cfg(config)).unwrap_or_default()
            ));
        }
    }
    Ok(Checkpoint {
        config: config.clone(),
        ..weights
    })
}

/// `model_cfg` in the layout of OpenCLIP's `model_configs/*.json`: the vision tower gives
/// `head_width` (OpenCLIP derives heads as width / head_width), the text tower `heads`.
pub fn model_cfg(config: &ClipConfig) -> serde_json::Value {
    let (v, t) = (&config.vision, &config.text);
    let mut cfg = serde_json::json!({
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
    });
    if config.activation == Activation::QuickGelu {
        cfg["quick_gelu"] = true.into();
    }
    cfg
}

/// `open_clip_config.json`: the model and the preprocessing this crate's evaluation uses
/// (the weights' mean/std, bicubic resize of the shorter side, centre crop: `data::image_ops`).
pub fn open_clip_config(config: &ClipConfig, normalisation: &Normalisation) -> serde_json::Value {
    serde_json::json!({
        "model_cfg": model_cfg(config),
        "preprocess_cfg": {
            "mean": normalisation.mean,
            "std": normalisation.std,
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
    metadata.extend(normalisation_metadata(&checkpoint.normalisation));
    let weights = model_file_bytes(&specs, &offsets, &checkpoint.params, metadata)
        .map_err(|e| format!("{}: {e}", out.join(WEIGHTS_FILE).display()))?;
    write_bytes_atomic(&out.join(WEIGHTS_FILE), &weights)?;
    let text = serde_json::to_string_pretty(&open_clip_config(
        &checkpoint.config,
        &checkpoint.normalisation,
    ))
    .map_err(|e| e.to_string())?;
    write_bytes_atomic(&out.join(CONFIG_FILE), text.as_bytes())
}
