//! Evaluation tasks on a data spec, shared by `clusterclip eval` and the training loop (M6):
//! zero-shot classification on `builtin:shapes-zeroshot` (64 colour × shape classes, chance
//! 1/64) or `imagefolder:DIR`, and retrieval plus the contrastive validation loss on any
//! captioned spec (`builtin:shapes-val`, `builtin:shapes-test`, shards, CSV).

use std::collections::HashMap;

use crate::data::loader::{LoaderConfig, ReadOptions, open_loader};
use crate::data::shapes;
use crate::data::tokenizer::Tokenizer;
use crate::graph::Backend;
use crate::model::Clip;
use crate::train::step::read_storage;

use super::{
    RECALL_AT, RetrievalMetrics, ZeroShotMetrics, check_features, class_embeddings, encode_images,
    encode_texts, retrieval, zero_shot,
};

/// The built-in zero-shot task: `shapes::zeroshot_sample` images, `shapes::ZEROSHOT_TEMPLATES`.
pub const BUILTIN_ZEROSHOT: &str = "builtin:shapes-zeroshot";
/// Images of the built-in zero-shot task: 16 per class (indices are class-balanced).
pub const BUILTIN_ZEROSHOT_IMAGES: usize = 1024;

/// Labelled images with their class names and prompt templates.
pub struct LabelledSet {
    /// [n, 3, S, S], normalised as the read options say (CLIP's by default).
    pub images: Vec<f32>,
    pub labels: Vec<usize>,
    pub classes: Vec<String>,
    pub templates: Vec<String>,
}

/// Distinct images with their captions, one or several each: records whose preprocessed images
/// are identical are one image (a CSV that repeats a filepath with another caption; shards that
/// repeat an image), as CLIP_benchmark's retrieval sets list several captions per image.
pub struct CaptionSet {
    /// [images, 3, S, S], each distinct.
    pub images: Vec<f32>,
    /// [n, context]
    pub tokens: Vec<u32>,
    /// Captions (records).
    pub n: usize,
    /// The image of each caption: an index into `images`.
    pub text_image: Vec<usize>,
}

impl CaptionSet {
    /// Distinct images.
    pub fn image_count(&self) -> usize {
        self.text_image.iter().max().map_or(0, |&i| i + 1)
    }
}

/// Keeps the first copy of every distinct image of `images` ([n, plane]); returns the distinct
/// images and, per record, the index of its image among them.
fn distinct_images(images: &[f32], plane: usize) -> (Vec<f32>, Vec<usize>) {
    let bits = |image: &[f32]| -> u64 {
        // FNV-1a over the values' bits: a key for the exact comparison below.
        image.iter().fold(0xcbf2_9ce4_8422_2325, |hash, v| {
            (hash ^ u64::from(v.to_bits())).wrapping_mul(0x0100_0000_01b3)
        })
    };
    let mut distinct: Vec<f32> = Vec::new();
    let mut by_hash: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut text_image = Vec::with_capacity(images.len() / plane.max(1));
    for image in images.chunks(plane) {
        let candidates = by_hash.entry(bits(image)).or_default();
        let same = |&u: &usize| {
            distinct[u * plane..(u + 1) * plane]
                .iter()
                .zip(image)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        };
        match candidates.iter().copied().find(same) {
            Some(u) => text_image.push(u),
            None => {
                let u = distinct.len() / plane;
                distinct.extend_from_slice(image);
                candidates.push(u);
                text_image.push(u);
            }
        }
    }
    (distinct, text_image)
}

fn eval_loader(
    spec: &str,
    clip: &Clip,
    batch_size: usize,
    options: &ReadOptions,
) -> Result<crate::data::loader::Loader, String> {
    let c = &clip.config;
    let mut config = LoaderConfig::new(
        spec,
        c.vision.image_size,
        c.text.context_length,
        c.text.vocab_size,
        batch_size.max(1),
    )
    .with_options(options);
    config.train = false;
    // An evaluation reads each record once, in stored order.
    config.resampled = false;
    open_loader(&config).map_err(|e| e.to_string())
}

/// The zero-shot set of `spec` (at most `limit` images), read as `options` say.
pub fn zeroshot_set(
    spec: &str,
    clip: &Clip,
    limit: Option<usize>,
    options: &ReadOptions,
) -> Result<LabelledSet, String> {
    let size = clip.config.vision.image_size;
    if spec == BUILTIN_ZEROSHOT {
        // `limit` is at most: a huge --samples must not allocate past the task's images.
        let n = limit.map_or(BUILTIN_ZEROSHOT_IMAGES, |l| l.min(BUILTIN_ZEROSHOT_IMAGES));
        let plane = 3 * size * size;
        let mut images = vec![0f32; n * plane];
        let mut labels = Vec::with_capacity(n);
        for (i, out) in images.chunks_mut(plane).enumerate() {
            let sample = shapes::zeroshot_sample(i as u64, size);
            options.normalisation.normalise_rgb(&sample.rgb, size, out);
            labels.push(sample.label);
        }
        let templates = shapes::ZEROSHOT_TEMPLATES
            .iter()
            .map(|t| t.to_string())
            .collect();
        return Ok(LabelledSet {
            images,
            labels,
            classes: shapes::zeroshot_classes(),
            templates,
        });
    }
    if spec.starts_with("builtin:") {
        return Err(format!(
            "{spec}: the labelled built-in set is {BUILTIN_ZEROSHOT}"
        ));
    }
    let mut loader = eval_loader(spec, clip, 64, options)?;
    let classes = loader
        .class_names()
        .map(<[String]>::to_vec)
        .ok_or_else(|| format!("{spec}: no class labels (labelled tasks need imagefolder:DIR)"))?;
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    while let Some(batch) = loader.next_batch().map_err(|e| e.to_string())? {
        let batch_labels = batch
            .labels
            .ok_or_else(|| format!("{spec}: a batch without labels"))?;
        images.extend(batch.images);
        labels.extend(batch_labels);
        if limit.is_some_and(|l| labels.len() >= l) {
            break;
        }
    }
    if let Some(l) = limit.filter(|&l| labels.len() > l) {
        labels.truncate(l);
        images.truncate(l * 3 * size * size);
    }
    if labels.is_empty() {
        return Err(format!("{spec}: no images"));
    }
    let templates = crate::data::prompts::ZERO_SHOT_TEMPLATES
        .iter()
        .map(|t| t.to_string())
        .collect();
    Ok(LabelledSet {
        images,
        labels,
        classes,
        templates,
    })
}

/// Zero-shot top-1, top-5 and mean per-class recall of `clip` on `set` (M6).
pub fn zeroshot_eval(
    clip: &Clip,
    set: &LabelledSet,
    batch_size: usize,
) -> Result<ZeroShotMetrics, String> {
    let t = &clip.config.text;
    let tokenizer = Tokenizer::shared();
    let tokens: Vec<u32> = set
        .classes
        .iter()
        .flat_map(|class| {
            set.templates
                .iter()
                .map(move |template| template.replace("{}", class))
        })
        .flat_map(|prompt| tokenizer.encode(&prompt, t.context_length, t.vocab_size))
        .collect();
    let dim = clip.config.embed_dim;
    let text = encode_texts(clip, &tokens, batch_size).map_err(|e| e.to_string())?;
    let image = encode_images(clip, &set.images, batch_size).map_err(|e| e.to_string())?;
    check_features(&image, &text, "prompt text", dim)?;
    let classes = class_embeddings(&text, set.classes.len(), set.templates.len(), dim);
    Ok(zero_shot(&image, &set.labels, &classes, dim))
}

/// The captioned set of `spec` (at most `limit` samples), read as `options` say.
pub fn caption_set(
    spec: &str,
    clip: &Clip,
    limit: Option<usize>,
    options: &ReadOptions,
) -> Result<CaptionSet, String> {
    let mut loader = eval_loader(spec, clip, 64, options)?;
    let (mut images, mut tokens, mut n) = (Vec::new(), Vec::new(), 0);
    while let Some(batch) = loader.next_batch().map_err(|e| e.to_string())? {
        images.extend(batch.images);
        tokens.extend(batch.tokens);
        n += batch.n;
        if limit.is_some_and(|l| n >= l) {
            break;
        }
    }
    if let Some(l) = limit.filter(|&l| n > l) {
        let size = clip.config.vision.image_size;
        images.truncate(l * 3 * size * size);
        tokens.truncate(l * clip.config.text.context_length);
        n = l;
    }
    if n == 0 {
        return Err(format!("{spec}: no samples"));
    }
    let plane = 3 * clip.config.vision.image_size.pow(2);
    let (images, text_image) = distinct_images(&images, plane);
    Ok(CaptionSet {
        images,
        tokens,
        n,
        text_image,
    })
}

/// exp(logit_scale) of `clip`, read from its backend.
pub fn logit_scale(clip: &Clip) -> f32 {
    let i = clip
        .params
        .position("logit_scale")
        .expect("the model declares logit_scale");
    read_storage(&clip.params.values_backend(), &clip.params.storage(i))[0].exp()
}

/// Symmetric InfoNCE (M1) of normalised features over consecutive batches of `batch_size`,
/// averaged over batches (OpenCLIP's validation loss).
pub fn contrastive_loss(
    image: &[f32],
    text: &[f32],
    dim: usize,
    scale: f32,
    batch_size: usize,
) -> f64 {
    let n = image.len() / dim;
    let (mut total, mut batches) = (0.0, 0);
    for start in (0..n).step_by(batch_size.max(1)) {
        let b = batch_size.min(n - start);
        let logit = |i: usize, j: usize| -> f64 {
            let (x, y) = (
                &image[(start + i) * dim..][..dim],
                &text[(start + j) * dim..][..dim],
            );
            scale as f64
                * x.iter()
                    .zip(y)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum::<f64>()
        };
        let logits: Vec<Vec<f64>> = (0..b)
            .map(|i| (0..b).map(|j| logit(i, j)).collect())
            .collect();
        let ce = |row: &dyn Fn(usize) -> f64, target: usize| -> f64 {
            let max = (0..b).map(row).fold(f64::NEG_INFINITY, f64::max);
            let lse = max + (0..b).map(|k| (row(k) - max).exp()).sum::<f64>().ln();
            lse - row(target)
        };
        let image_to_text: f64 = (0..b).map(|i| ce(&|k| logits[i][k], i)).sum();
        let text_to_image: f64 = (0..b).map(|j| ce(&|k| logits[k][j], j)).sum();
        total += (image_to_text + text_to_image) / (2.0 * b as f64);
        batches += 1;
    }
    total / batches.max(1) as f64
}

/// Retrieval metrics (a hit when any of an image's captions is in the top k, as
/// CLIP_benchmark) and the validation loss over (caption, its image) pairs of `clip` on `set`.
pub fn retrieval_eval(
    clip: &Clip,
    set: &CaptionSet,
    batch_size: usize,
) -> Result<(RetrievalMetrics, f64), String> {
    let dim = clip.config.embed_dim;
    let image = encode_images(clip, &set.images, batch_size).map_err(|e| e.to_string())?;
    let text = encode_texts(clip, &set.tokens, batch_size).map_err(|e| e.to_string())?;
    check_features(&image, &text, "caption text", dim)?;
    let paired: Vec<f32> = set
        .text_image
        .iter()
        .flat_map(|&i| image[i * dim..(i + 1) * dim].iter().copied())
        .collect();
    let loss = contrastive_loss(&paired, &text, dim, logit_scale(clip), batch_size);
    Ok((retrieval(&image, &text, &set.text_image, dim), loss))
}

/// CLIP_benchmark's names.
pub fn zeroshot_json(m: &ZeroShotMetrics) -> serde_json::Value {
    serde_json::json!({"acc1": m.acc1, "acc5": m.acc5, "mean_per_class_recall": m.mean_per_class_recall})
}

/// CLIP_benchmark's names (`image_retrieval` = text -> image), plus mean and median ranks.
pub fn retrieval_json(m: &RetrievalMetrics) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (i, k) in RECALL_AT.iter().enumerate() {
        map.insert(
            format!("image_retrieval_recall@{k}"),
            m.image_retrieval_recall[i].into(),
        );
        map.insert(
            format!("text_retrieval_recall@{k}"),
            m.text_retrieval_recall[i].into(),
        );
    }
    map.insert(
        "image_retrieval_mean_rank".into(),
        m.image_retrieval_mean_rank.into(),
    );
    map.insert(
        "image_retrieval_median_rank".into(),
        m.image_retrieval_median_rank.into(),
    );
    map.insert(
        "text_retrieval_mean_rank".into(),
        m.text_retrieval_mean_rank.into(),
    );
    map.insert(
        "text_retrieval_median_rank".into(),
        m.text_retrieval_median_rank.into(),
    );
    serde_json::Value::Object(map)
}

/// The backend a model lives on (for messages).
pub fn backend_name(backend: &Backend) -> String {
    match backend {
        Backend::Cpu => "cpu (reference backend)".to_string(),
        Backend::Gpu(gpu) => gpu.describe(),
    }
}
