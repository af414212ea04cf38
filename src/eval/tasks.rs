//! Evaluation tasks on a data spec, shared by `clusterclip eval` and the training loop (M6):
//! zero-shot classification on `builtin:shapes-zeroshot` (64 colour × shape classes, chance
//! 1/64) or `imagefolder:DIR`, and retrieval plus the contrastive validation loss on any
//! captioned spec (`builtin:shapes-val`, `builtin:shapes-test`, shards, CSV).

use std::collections::HashMap;

use crate::data::image_ops::Normalisation;
use crate::data::loader::{Batch, LoaderConfig, ReadOptions, open_loader};
use crate::data::shapes;
use crate::data::tokenizer::Tokenizer;
use crate::graph::Backend;
use crate::model::Clip;
use crate::train::step::read_storage;

use super::imagenet_names::{IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES};
use super::{
    RECALL_AT, RetrievalMetrics, ZeroShotMetrics, check_features, class_embeddings, encode_images,
    encode_texts, retrieval, zero_shot,
};

/// The built-in zero-shot task: `shapes::zeroshot_sample` images, `shapes::ZEROSHOT_TEMPLATES`.
pub const BUILTIN_ZEROSHOT: &str = "builtin:shapes-zeroshot";
/// Images of the built-in zero-shot task: 16 per class (indices are class-balanced).
pub const BUILTIN_ZEROSHOT_IMAGES: usize = 1024;

/// Where an evaluation set's images come from. They are read again, one batch at a time, at
/// every evaluation, and only their features are kept: ImageNet val at 224 px is 30 GB of pixels
/// but 100 MB of ViT-B/16 features (issue 13).
enum Source {
    /// The built-in zero-shot images, rendered per batch.
    BuiltinZeroshot {
        count: usize,
        image_size: usize,
        normalisation: Normalisation,
    },
    /// A data spec, read in stored order by a fresh loader per pass, at most `limit` records.
    Spec {
        loader: Box<LoaderConfig>,
        limit: Option<usize>,
    },
    /// Images [n, 3, S, S] and labels in memory: small sets a caller builds.
    Held {
        images: Vec<f32>,
        labels: Vec<usize>,
    },
}

impl Source {
    /// The spec, for messages.
    fn name(&self) -> &str {
        match self {
            Source::BuiltinZeroshot { .. } => BUILTIN_ZEROSHOT,
            Source::Spec { loader, .. } => &loader.spec,
            Source::Held { .. } => "images in memory",
        }
    }

    /// Calls `each` on consecutive batches of at most `batch_size` records, in stored order.
    fn for_each_batch(
        &self,
        batch_size: usize,
        each: &mut dyn FnMut(&Batch) -> Result<(), String>,
    ) -> Result<(), String> {
        let batch_size = batch_size.max(1);
        match self {
            Source::BuiltinZeroshot {
                count,
                image_size,
                normalisation,
            } => {
                let plane = 3 * image_size * image_size;
                for start in (0..*count).step_by(batch_size) {
                    let n = batch_size.min(count - start);
                    let mut images = vec![0f32; n * plane];
                    let mut labels = Vec::with_capacity(n);
                    for (i, out) in images.chunks_mut(plane).enumerate() {
                        let sample = shapes::zeroshot_sample((start + i) as u64, *image_size);
                        normalisation.normalise_rgb(&sample.rgb, *image_size, out);
                        labels.push(sample.label);
                    }
                    each(&Batch {
                        images,
                        labels: Some(labels),
                        n,
                        ..Batch::empty()
                    })?;
                }
            }
            Source::Held { images, labels } => {
                let plane = images.len() / labels.len().max(1);
                for (images, labels) in images
                    .chunks(plane * batch_size)
                    .zip(labels.chunks(batch_size))
                {
                    each(&Batch {
                        images: images.to_vec(),
                        labels: Some(labels.to_vec()),
                        n: labels.len(),
                        ..Batch::empty()
                    })?;
                }
            }
            Source::Spec { loader, limit } => {
                let config = LoaderConfig {
                    batch_size,
                    ..(**loader).clone()
                };
                let mut loader = open_loader(&config).map_err(|e| e.to_string())?;
                let mut batch = Batch::empty();
                let mut seen = 0;
                while limit.is_none_or(|l| seen < l)
                    && loader
                        .next_batch_into(&mut batch)
                        .map_err(|e| e.to_string())?
                {
                    if let Some(keep) = limit.map(|l| l - seen) {
                        batch.truncate(keep);
                    }
                    seen += batch.n;
                    each(&batch)?;
                }
            }
        }
        Ok(())
    }
}

/// A spec's source for `clip` (checked by opening it once) and its class names, if labelled.
fn spec_source(
    spec: &str,
    clip: &Clip,
    limit: Option<usize>,
    options: &ReadOptions,
) -> Result<(Source, Option<Vec<String>>), String> {
    let c = &clip.config;
    let mut loader = LoaderConfig::new(
        spec,
        c.vision.image_size,
        c.text.context_length,
        c.text.vocab_size,
        EVAL_READ_BATCH,
    )
    .with_options(options);
    loader.train = false;
    // An evaluation reads each record once, in stored order.
    loader.resampled = false;
    let classes = open_loader(&loader)
        .map_err(|e| e.to_string())?
        .class_names()
        .map(<[String]>::to_vec);
    Ok((
        Source::Spec {
            loader: Box::new(loader),
            limit,
        },
        classes,
    ))
}

/// Records per loader batch while a set is checked (evaluation reads in its own batch size).
const EVAL_READ_BATCH: usize = 64;

/// Labelled images with their class names and prompt templates.
pub struct LabelledSet {
    images: Source,
    pub classes: Vec<String>,
    pub templates: Vec<String>,
}

/// Normalised image features of a labelled set and their labels.
pub struct LabelledImages {
    /// [n, embed_dim]
    pub features: Vec<f32>,
    pub labels: Vec<usize>,
}

impl LabelledSet {
    /// A set of images [n, 3, S, S] (normalised) held in memory.
    pub fn held(
        images: Vec<f32>,
        labels: Vec<usize>,
        classes: Vec<String>,
        templates: Vec<String>,
    ) -> LabelledSet {
        LabelledSet {
            images: Source::Held { images, labels },
            classes,
            templates,
        }
    }

    /// Calls `each` on consecutive batches of the set's images (with labels), as evaluation
    /// reads them.
    pub fn for_each_batch(
        &self,
        batch_size: usize,
        each: &mut dyn FnMut(&Batch) -> Result<(), String>,
    ) -> Result<(), String> {
        self.images.for_each_batch(batch_size, each)
    }

    /// The set's image features and labels, with one batch of images in memory at a time.
    pub fn encode(&self, clip: &Clip, batch_size: usize) -> Result<LabelledImages, String> {
        let name = self.images.name();
        let mut out = LabelledImages {
            features: Vec::new(),
            labels: Vec::new(),
        };
        self.for_each_batch(batch_size, &mut |batch| {
            let labels = batch
                .labels
                .as_ref()
                .ok_or_else(|| format!("{name}: a batch without labels"))?;
            out.features
                .extend(encode_images(clip, &batch.images, batch_size).map_err(|e| e.to_string())?);
            out.labels.extend(labels);
            Ok(())
        })?;
        if out.labels.is_empty() {
            return Err(format!("{name}: no images"));
        }
        Ok(out)
    }
}

/// Distinct images with their captions, one or several each: records whose preprocessed images
/// are identical are one image (a CSV that repeats a filepath with another caption; shards that
/// repeat an image), as CLIP_benchmark's retrieval sets list several captions per image.
pub struct CaptionSet {
    records: Source,
}

/// Normalised features of a captioned set.
pub struct CaptionFeatures {
    /// [images, embed_dim]: each distinct image once, in order of first appearance.
    pub image: Vec<f32>,
    /// [captions, embed_dim]: every record's caption.
    pub text: Vec<f32>,
    /// The image of each caption: a row of `image`.
    pub text_image: Vec<usize>,
}

impl CaptionFeatures {
    pub fn images(&self) -> usize {
        self.text_image.iter().max().map_or(0, |&i| i + 1)
    }

    pub fn captions(&self) -> usize {
        self.text_image.len()
    }
}

/// A 128-bit FNV-1a key of an image's values: distinct images collide with a chance of about
/// n² / 2¹²⁹, so the key stands for the image and the image need not be kept.
fn image_key(image: &[f32]) -> u128 {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    image.iter().fold(OFFSET, |hash, v| {
        (hash ^ u128::from(v.to_bits())).wrapping_mul(PRIME)
    })
}

impl CaptionSet {
    /// Calls `each` on consecutive batches of records (images and tokens), as evaluation reads
    /// them.
    pub fn for_each_batch(
        &self,
        batch_size: usize,
        each: &mut dyn FnMut(&Batch) -> Result<(), String>,
    ) -> Result<(), String> {
        self.records.for_each_batch(batch_size, each)
    }

    /// Features of every caption and of each distinct image, with one batch of images in memory
    /// at a time.
    pub fn encode(&self, clip: &Clip, batch_size: usize) -> Result<CaptionFeatures, String> {
        let plane = 3 * clip.config.vision.image_size.pow(2);
        let mut out = CaptionFeatures {
            image: Vec::new(),
            text: Vec::new(),
            text_image: Vec::new(),
        };
        let mut image_of_key: HashMap<u128, usize> = HashMap::new();
        // Distinct images not yet encoded.
        let mut pending: Vec<f32> = Vec::new();
        let flush = |pending: &mut Vec<f32>, out: &mut CaptionFeatures| {
            if !pending.is_empty() {
                out.image
                    .extend(encode_images(clip, pending, batch_size).map_err(|e| e.to_string())?);
                pending.clear();
            }
            Ok::<(), String>(())
        };
        self.for_each_batch(batch_size, &mut |batch| {
            for image in batch.images.chunks(plane) {
                let next = image_of_key.len();
                let index = *image_of_key.entry(image_key(image)).or_insert_with(|| {
                    pending.extend_from_slice(image);
                    next
                });
                out.text_image.push(index);
            }
            out.text
                .extend(encode_texts(clip, &batch.tokens, batch_size).map_err(|e| e.to_string())?);
            if pending.len() >= batch_size * plane {
                flush(&mut pending, &mut out)?;
            }
            Ok(())
        })?;
        flush(&mut pending, &mut out)?;
        if out.text_image.is_empty() {
            return Err(format!("{}: no samples", self.records.name()));
        }
        Ok(out)
    }
}

/// The zero-shot set of `spec` (at most `limit` images), read as `options` say; images are
/// read when the set is encoded.
pub fn zeroshot_set(
    spec: &str,
    clip: &Clip,
    limit: Option<usize>,
    options: &ReadOptions,
) -> Result<LabelledSet, String> {
    if spec == BUILTIN_ZEROSHOT {
        let templates = shapes::ZEROSHOT_TEMPLATES
            .iter()
            .map(|t| t.to_string())
            .collect();
        return Ok(LabelledSet {
            // `limit` is at most: a huge --samples must not read past the task's images.
            images: Source::BuiltinZeroshot {
                count: limit.map_or(BUILTIN_ZEROSHOT_IMAGES, |l| l.min(BUILTIN_ZEROSHOT_IMAGES)),
                image_size: clip.config.vision.image_size,
                normalisation: options.normalisation,
            },
            classes: shapes::zeroshot_classes(),
            templates,
        });
    }
    if spec.starts_with("builtin:") {
        return Err(format!(
            "{spec}: the labelled built-in set is {BUILTIN_ZEROSHOT}"
        ));
    }
    let (images, classes) = spec_source(spec, clip, limit, options)?;
    let classes = classes
        .ok_or_else(|| format!("{spec}: no class labels (labelled tasks need imagefolder:DIR)"))?;
    let templates = crate::data::prompts::ZERO_SHOT_TEMPLATES
        .iter()
        .map(|t| t.to_string())
        .collect();
    Ok(LabelledSet {
        images,
        classes,
        templates,
    })
}

/// OpenCLIP's `--imagenet-val DIR`: an ImageNet-layout folder (one folder per synset, sorted
/// as torchvision's ImageFolder sorts them) with ImageNet's class names and OpenAI's 80
/// templates.
pub fn imagenet_val_set(
    dir: &std::path::Path,
    clip: &Clip,
    limit: Option<usize>,
    options: &ReadOptions,
) -> Result<LabelledSet, String> {
    let spec = format!("imagefolder:{}", dir.display());
    let mut set = zeroshot_set(&spec, clip, limit, options)?;
    if set.classes.len() != IMAGENET_CLASSNAMES.len() {
        return Err(format!(
            "{}: {} class folders; ImageNet val has {} (one folder per synset, n01440764 first)",
            dir.display(),
            set.classes.len(),
            IMAGENET_CLASSNAMES.len()
        ));
    }
    set.classes = IMAGENET_CLASSNAMES.iter().map(|c| c.to_string()).collect();
    set.templates = OPENAI_IMAGENET_TEMPLATES
        .iter()
        .map(|t| t.to_string())
        .collect();
    Ok(set)
}

/// OpenCLIP's names for ImageNet zero-shot in its results (`imagenet-zeroshot-val-top1`).
pub fn imagenet_json(m: &ZeroShotMetrics) -> serde_json::Map<String, serde_json::Value> {
    let mut map = serde_json::Map::new();
    map.insert("imagenet-zeroshot-val-top1".into(), m.acc1.into());
    map.insert("imagenet-zeroshot-val-top5".into(), m.acc5.into());
    map
}

/// Zero-shot top-1, top-5 and mean per-class recall of `clip` on `set` (M6).
pub fn zeroshot_eval(
    clip: &Clip,
    set: &LabelledSet,
    batch_size: usize,
) -> Result<ZeroShotMetrics, String> {
    let images = set.encode(clip, batch_size)?;
    zeroshot_of(clip, set, &images, batch_size)
}

/// Zero-shot metrics of `images`, encoded from `set`, against `set`'s prompt-ensembled classes.
pub fn zeroshot_of(
    clip: &Clip,
    set: &LabelledSet,
    images: &LabelledImages,
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
    check_features(&images.features, &text, "prompt text", dim)?;
    let classes = class_embeddings(&text, set.classes.len(), set.templates.len(), dim);
    Ok(zero_shot(&images.features, &images.labels, &classes, dim))
}

/// The captioned set of `spec` (at most `limit` samples), read as `options` say; records are
/// read when the set is encoded.
pub fn caption_set(
    spec: &str,
    clip: &Clip,
    limit: Option<usize>,
    options: &ReadOptions,
) -> Result<CaptionSet, String> {
    let (records, _) = spec_source(spec, clip, limit, options)?;
    Ok(CaptionSet { records })
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
    retrieval_of(clip, &set.encode(clip, batch_size)?, batch_size)
}

/// [`retrieval_eval`] of features already encoded; the loss runs over batches of `batch_size`.
pub fn retrieval_of(
    clip: &Clip,
    features: &CaptionFeatures,
    batch_size: usize,
) -> Result<(RetrievalMetrics, f64), String> {
    let dim = clip.config.embed_dim;
    let (image, text) = (&features.image, &features.text);
    check_features(image, text, "caption text", dim)?;
    let paired: Vec<f32> = features
        .text_image
        .iter()
        .flat_map(|&i| image[i * dim..(i + 1) * dim].iter().copied())
        .collect();
    let loss = contrastive_loss(&paired, text, dim, logit_scale(clip), batch_size);
    Ok((retrieval(image, text, &features.text_image, dim), loss))
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
