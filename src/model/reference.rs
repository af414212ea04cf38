//! Checking the model against an OpenCLIP reference export (`verify-openclip`): a
//! `PREFIX.safetensors` + `PREFIX.json` pair in the layout of `shared/fixtures/README.md`.

use std::path::Path;

use super::config::Activation;
use super::io::TensorFile;
use super::{Clip, ClipConfig, ClipInputs, TextConfig, VisionConfig};
use crate::graph::{Backend, Graph};

/// One compared quantity.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: String,
    /// ‖ours − reference‖ / ‖reference‖.
    pub rel_err: f64,
    pub limit: f64,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.rel_err <= self.limit
    }
}

pub fn rel_err(ours: &[f32], reference: &[f32]) -> f64 {
    if ours.len() != reference.len() {
        return f64::INFINITY;
    }
    let num: f64 = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum();
    let den: f64 = reference.iter().map(|b| (*b as f64).powi(2)).sum();
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

fn field(v: &serde_json::Value, path: &str) -> Result<usize, String> {
    let mut cur = v;
    for key in path.split('.') {
        cur = cur
            .get(key)
            .ok_or_else(|| format!("config field {path} is missing"))?;
    }
    cur.as_u64()
        .map(|x| x as usize)
        .ok_or_else(|| format!("config field {path} is not a non-negative integer"))
}

/// The model configuration of a reference JSON (OpenCLIP's vision `head_width` or `heads`).
pub fn config_from_json(v: &serde_json::Value) -> Result<ClipConfig, String> {
    let width = field(v, "vision.width")?;
    let heads = match field(v, "vision.heads") {
        Ok(h) => h,
        Err(_) => {
            let head_width = field(v, "vision.head_width")?;
            if head_width == 0 || width % head_width != 0 {
                return Err(format!(
                    "config field vision.head_width {head_width} does not divide vision.width {width}"
                ));
            }
            width / head_width
        }
    };
    let config = ClipConfig {
        embed_dim: field(v, "embed_dim")?,
        vision: VisionConfig {
            image_size: field(v, "vision.image_size")?,
            patch_size: field(v, "vision.patch_size")?,
            width,
            layers: field(v, "vision.layers")?,
            heads,
        },
        text: TextConfig {
            context_length: field(v, "text.context_length")?,
            vocab_size: field(v, "text.vocab_size")?,
            width: field(v, "text.width")?,
            layers: field(v, "text.layers")?,
            heads: field(v, "text.heads")?,
        },
        activation: Activation::Gelu,
    };
    config.validate()?;
    Ok(config)
}

/// A reference export, loaded.
pub struct Reference {
    pub json: serde_json::Value,
    pub config: ClipConfig,
    pub file: TensorFile,
}

impl Reference {
    pub fn load(prefix: &Path) -> Result<Reference, String> {
        let json_path = prefix.with_extension("json");
        let json_path = if json_path == prefix {
            prefix.to_path_buf()
        } else {
            json_path
        };
        let text = std::fs::read_to_string(&json_path)
            .map_err(|e| format!("{}: {e}", json_path.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not valid JSON ({e})", json_path.display()))?;
        let config =
            config_from_json(&json).map_err(|e| format!("{}: {e}", json_path.display()))?;
        let file = TensorFile::read(&prefix.with_extension("safetensors"))?;
        Ok(Reference { json, config, file })
    }

    /// The model with the reference's initial parameters (`param.*`).
    pub fn model(&self, backend: &Backend) -> Result<Clip, String> {
        Clip::from_named(self.config.clone(), backend, |name| {
            self.file.f32(&format!("param.{name}")).ok()
        })
        .map_err(|e| format!("{}: {e}", self.file.path.display()))
    }

    /// Compares features, loss and every gradient, unmasked (prefix "") or masked ("masked.").
    pub fn check_forward_backward(
        &self,
        backend: &Backend,
        masked: bool,
        limit: f64,
    ) -> Result<Vec<Check>, String> {
        let clip = self.model(backend)?;
        let (_, images) = self.file.f32("input.images")?;
        let (text_shape, tokens) = self.file.u32("input.text")?;
        let batch = text_shape[0];
        let kept = if masked {
            Some(self.file.u32("input.keep")?.1)
        } else {
            None
        };
        let mut g = Graph::new(backend.clone());
        let inputs = ClipInputs::host(&images, &tokens, batch, kept.as_deref());
        let out = clip.forward(&mut g, &inputs).map_err(|e| e.to_string())?;
        g.backward(out.loss).map_err(|e| e.to_string())?;
        let prefix = if masked { "masked." } else { "" };
        let mut checks = Vec::new();
        let mut check = |name: String, ours: Vec<f32>, reference: &str| -> Result<(), String> {
            let (_, want) = self.file.f32(reference)?;
            checks.push(Check {
                name,
                rel_err: rel_err(&ours, &want),
                limit,
            });
            Ok(())
        };
        check(
            format!("{prefix}image_features"),
            g.to_vec(out.image_features),
            &format!("{prefix}output.image_features"),
        )?;
        check(
            format!("{prefix}text_features"),
            g.to_vec(out.text_features),
            &format!("{prefix}output.text_features"),
        )?;
        check(
            format!("{prefix}loss"),
            g.to_vec(out.loss),
            &format!("{prefix}output.loss"),
        )?;
        for (spec, tensor) in clip.params.specs.iter().zip(&out.params.tensors) {
            let grad = g
                .grad_vec(*tensor)
                .unwrap_or_else(|| vec![0.0; spec.numel()]);
            check(
                format!("{prefix}grad.{}", spec.name),
                grad,
                &format!("{prefix}grad.{}", spec.name),
            )?;
        }
        Ok(checks)
    }
}
