//! The Zero-shot panel's weights: a safetensors state_dict read in memory (the file the user
//! picks, or the shipped one), features of the current image and of prompts, and the Train
//! panel's weights written back as a state_dict `clusterclip eval --checkpoint` reads.

use clusterclip::data::shapes;
use clusterclip::data::tokenizer::Tokenizer;
use clusterclip::eval::{class_embeddings, encode_images_async, encode_texts_async};
use clusterclip::graph::Backend;
use clusterclip::model::config::PRESETS;
use clusterclip::model::init::param_specs;
use clusterclip::model::state_dict::{read_state_dict, state_dict_bytes};
use clusterclip::model::{Clip, ClipConfig, ParamStore};

use crate::image_source::SourceImage;

/// Parameters of the largest model this page loads: `micro`'s geometry trains and ranks in a
/// tab; a ViT-B/16 (150M) would exhaust a tab's memory before it answered.
pub const MAX_PARAMETERS: usize = 20_000_000;
/// CLIP's largest logit scale (M1 clamps it at 100): it turns the cosines into the page's
/// percentages; the ranking does not depend on it.
const DISPLAY_SCALE: f64 = 100.0;

/// The model in `bytes`: its stored configuration, else the first small preset whose tensor
/// shapes match (an OpenCLIP-style export without metadata).
pub fn read(bytes: &[u8], name: &str, backend: &Backend) -> Result<Clip, String> {
    let (config, flat) = match read_state_dict(bytes, name, None) {
        Ok(found) => found,
        Err(e) if e.contains("no model configuration stored") => PRESETS
            .iter()
            .filter_map(|p| ClipConfig::preset(p).ok())
            .filter(|c| count(c) <= MAX_PARAMETERS)
            .find_map(|c| read_state_dict(bytes, name, Some(&c)).ok())
            .ok_or_else(|| {
                format!(
                    "{name}: stores no model configuration and its tensors match none of the \
                     presets this page runs (nano, micro, tiny)"
                )
            })?,
        Err(e) => return Err(e),
    };
    let parameters = count(&config);
    if parameters > MAX_PARAMETERS {
        return Err(format!(
            "{name}: a model of {parameters} parameters; this page runs models up to \
             {MAX_PARAMETERS} (nano, micro, tiny)"
        ));
    }
    Ok(Clip {
        params: ParamStore::from_flat(param_specs(&config), &flat, backend),
        config,
    })
}

fn count(config: &ClipConfig) -> usize {
    param_specs(config).iter().map(|s| s.numel()).sum()
}

/// One line about a loaded model.
pub fn describe(config: &ClipConfig, name: &str) -> String {
    let v = &config.vision;
    format!(
        "{name}: {} parameters, {} px images in {} px patches, width {}, {} layers",
        count(config),
        v.image_size,
        v.patch_size,
        v.width,
        v.layers
    )
}

async fn image_features(clip: &Clip, image: &SourceImage) -> Result<Vec<f32>, String> {
    let pixels = image.normalised(clip.config.vision.image_size);
    encode_images_async(clip, &pixels, 1)
        .await
        .map_err(|e| e.to_string())
}

async fn text_features(clip: &Clip, texts: &[String]) -> Result<Vec<f32>, String> {
    let t = &clip.config.text;
    let tokens: Vec<u32> = texts
        .iter()
        .flat_map(|text| Tokenizer::shared().encode(text, t.context_length, t.vocab_size))
        .collect();
    encode_texts_async(clip, &tokens, texts.len().max(1))
        .await
        .map_err(|e| e.to_string())
}

/// Ranks the comma- or line-separated `classes` against `image`: JSON list of
/// {class, cosine, probability}, best first.
pub async fn zero_shot(clip: &Clip, image: &SourceImage, classes: &str) -> Result<String, String> {
    let names: Vec<String> = classes
        .split([',', '\n'])
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    if names.len() < 2 {
        return Err("type at least two class names, separated by commas".into());
    }
    let templates = shapes::ZEROSHOT_TEMPLATES;
    let prompts: Vec<String> = names
        .iter()
        .flat_map(|name| templates.iter().map(move |t| t.replace("{}", name)))
        .collect();
    let dim = clip.config.embed_dim;
    let per_template = text_features(clip, &prompts).await?;
    let classes = class_embeddings(&per_template, names.len(), templates.len(), dim);
    let image = image_features(clip, image).await?;
    let cosines: Vec<f64> = classes
        .chunks(dim)
        .map(|c| {
            c.iter()
                .zip(&image)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum()
        })
        .collect();
    let top = cosines.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = cosines
        .iter()
        .map(|c| ((c - top) * DISPLAY_SCALE).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut ranked: Vec<(usize, f64)> = cosines.iter().cloned().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let rows: Vec<serde_json::Value> = ranked
        .into_iter()
        .map(|(i, cosine)| {
            serde_json::json!({"class": names[i], "cosine": cosine, "probability": weights[i] / total})
        })
        .collect();
    Ok(serde_json::Value::from(rows).to_string())
}

/// Features of `image` and of each of `texts`, as `clusterclip embed` prints them.
pub async fn features_json(
    clip: &Clip,
    image: &SourceImage,
    texts: &[String],
) -> Result<String, String> {
    let dim = clip.config.embed_dim;
    let rows = |features: Vec<f32>| -> Vec<Vec<f32>> {
        features.chunks(dim).map(<[f32]>::to_vec).collect()
    };
    let image = rows(image_features(clip, image).await?);
    let text = rows(text_features(clip, texts).await?);
    Ok(serde_json::json!({"image_features": image, "text_features": text}).to_string())
}

/// `clip`'s weights as a model-only safetensors state_dict.
pub async fn state_dict(clip: &Clip) -> Result<Vec<u8>, String> {
    let g = clusterclip::Graph::new(clip.params.values_backend());
    let tensors = clip.params.to_host_async(&g).await;
    state_dict_bytes(&clip.config, &tensors)
}
