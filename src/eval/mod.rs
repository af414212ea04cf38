//! Evaluation as OpenCLIP / CLIP_benchmark (M6): zero-shot classification (prompt-ensembled
//! class embeddings; top-1, top-5, mean per-class recall) and image-text retrieval
//! (Recall@1/5/10 both ways, mean and median rank). No masking at evaluation (M2).

use std::cmp::Ordering;

#[cfg(feature = "cli")]
pub mod benchmark;
pub mod features;
pub mod imagenet_names;
pub mod linear_probe;
#[cfg(feature = "cli")]
pub mod tasks;

#[cfg(not(target_arch = "wasm32"))]
pub use features::{encode_images, encode_texts};
pub use features::{encode_images_async, encode_texts_async};

/// Zero-shot classification metrics, named as CLIP_benchmark.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ZeroShotMetrics {
    pub acc1: f64,
    pub acc5: f64,
    pub mean_per_class_recall: f64,
}

/// Retrieval metrics, named as CLIP_benchmark: `text_retrieval` = image -> text,
/// `image_retrieval` = text -> image.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RetrievalMetrics {
    pub text_retrieval_recall: [f64; 3],
    pub image_retrieval_recall: [f64; 3],
    pub text_retrieval_mean_rank: f64,
    pub text_retrieval_median_rank: f64,
    pub image_retrieval_mean_rank: f64,
    pub image_retrieval_median_rank: f64,
}

/// The k of Recall@k.
pub const RECALL_AT: [usize; 3] = [1, 5, 10];

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// L2-normalises each row of `rows` (width `dim`) in place.
pub fn normalize_rows(rows: &mut [f32], dim: usize) {
    for row in rows.chunks_mut(dim) {
        let norm = row
            .iter()
            .map(|x| (*x as f64).powi(2))
            .sum::<f64>()
            .sqrt()
            .max(1e-12);
        row.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
    }
}

/// Class embeddings from per-template text embeddings [classes, templates, dim]: the mean over
/// templates of the normalised embeddings, normalised again (CLIP's prompt ensembling).
pub fn class_embeddings(
    per_template: &[f32],
    classes: usize,
    templates: usize,
    dim: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; classes * dim];
    for c in 0..classes {
        for t in 0..templates {
            let row = &per_template[(c * templates + t) * dim..][..dim];
            let norm = row
                .iter()
                .map(|x| (*x as f64).powi(2))
                .sum::<f64>()
                .sqrt()
                .max(1e-12);
            for (o, x) in out[c * dim..(c + 1) * dim].iter_mut().zip(row) {
                *o += (*x as f64 / norm / templates as f64) as f32;
            }
        }
    }
    normalize_rows(&mut out, dim);
    out
}

/// Rank (0-based) of `target` among `scores` sorted descending. Pessimistic: every other
/// candidate counts as ahead unless it scores strictly below the target, so ties count against
/// the target (CLIP_benchmark's `topk` breaks ties by index instead) and a NaN target ranks
/// last; a broken model can never score a hit by accident.
pub fn rank_of(scores: &[f64], target: usize) -> usize {
    let score = scores[target];
    scores
        .iter()
        .enumerate()
        .filter(|&(i, s)| i != target && s.partial_cmp(&score) != Some(Ordering::Less))
        .count()
}

/// Rows of `features` (width `dim`) holding a NaN or an infinity.
pub fn non_finite_rows(features: &[f32], dim: usize) -> usize {
    features
        .chunks(dim.max(1))
        .filter(|row| row.iter().any(|x| !x.is_finite()))
        .count()
}

/// An error naming which features hold NaN or Inf and how many, if any do: metrics of such
/// features are meaningless (a NaN model used to score 100%, issue 10). `text_kind` says what
/// the texts are (prompts, captions).
pub fn check_features(
    image: &[f32],
    text: &[f32],
    text_kind: &str,
    dim: usize,
) -> Result<(), String> {
    let count = |features: &[f32], what: &str| {
        let bad = non_finite_rows(features, dim);
        (bad > 0).then(|| format!("{bad} of {} {what}", features.len() / dim.max(1)))
    };
    let broken: Vec<String> = [
        count(image, "image features"),
        count(text, &format!("{text_kind} features")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if broken.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} hold NaN or Inf: the model's weights (or its inputs) are broken, so no metric is \
         meaningful",
        broken.join(" and ")
    ))
}

/// Zero-shot metrics of normalised image features [n, dim] against class embeddings.
pub fn zero_shot(
    image_features: &[f32],
    labels: &[usize],
    classes: &[f32],
    dim: usize,
) -> ZeroShotMetrics {
    let n = labels.len();
    let class_count = classes.len() / dim;
    let (mut top1, mut top5) = (0usize, 0usize);
    let mut per_class = vec![(0usize, 0usize); class_count];
    for (i, &label) in labels.iter().enumerate() {
        let image = &image_features[i * dim..(i + 1) * dim];
        let scores: Vec<f64> = (0..class_count)
            .map(|c| dot(image, &classes[c * dim..(c + 1) * dim]))
            .collect();
        let rank = rank_of(&scores, label);
        top1 += usize::from(rank < 1);
        top5 += usize::from(rank < 5);
        per_class[label].1 += 1;
        per_class[label].0 += usize::from(rank < 1);
    }
    let seen: Vec<f64> = per_class
        .iter()
        .filter(|(_, total)| *total > 0)
        .map(|(hit, total)| *hit as f64 / *total as f64)
        .collect();
    ZeroShotMetrics {
        acc1: top1 as f64 / n.max(1) as f64,
        acc5: top5 as f64 / n.max(1) as f64,
        mean_per_class_recall: seen.iter().sum::<f64>() / seen.len().max(1) as f64,
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Retrieval between normalised image features [n, dim] and text features [m, dim], where text
/// j belongs to image `text_image[j]`. A hit at k if any matching item is in the top k; ranks
/// are 1-based ranks of the best-placed match.
pub fn retrieval(
    image_features: &[f32],
    text_features: &[f32],
    text_image: &[usize],
    dim: usize,
) -> RetrievalMetrics {
    let n = image_features.len() / dim;
    let m = text_image.len();
    let sim = |i: usize, j: usize| {
        dot(
            &image_features[i * dim..(i + 1) * dim],
            &text_features[j * dim..(j + 1) * dim],
        )
    };
    // image -> text
    let mut text_ranks = Vec::with_capacity(n);
    for i in 0..n {
        let scores: Vec<f64> = (0..m).map(|j| sim(i, j)).collect();
        let best = (0..m)
            .filter(|&j| text_image[j] == i)
            .map(|j| rank_of(&scores, j))
            .min();
        if let Some(rank) = best {
            text_ranks.push(rank as f64 + 1.0);
        }
    }
    // text -> image
    let mut image_ranks = Vec::with_capacity(m);
    for (j, &image) in text_image.iter().enumerate() {
        let scores: Vec<f64> = (0..n).map(|i| sim(i, j)).collect();
        image_ranks.push(rank_of(&scores, image) as f64 + 1.0);
    }
    let recall = |ranks: &[f64], k: usize| {
        ranks.iter().filter(|&&r| r <= k as f64).count() as f64 / ranks.len().max(1) as f64
    };
    let mean = |ranks: &[f64]| ranks.iter().sum::<f64>() / ranks.len().max(1) as f64;
    RetrievalMetrics {
        text_retrieval_recall: RECALL_AT.map(|k| recall(&text_ranks, k)),
        image_retrieval_recall: RECALL_AT.map(|k| recall(&image_ranks, k)),
        text_retrieval_mean_rank: mean(&text_ranks),
        image_retrieval_mean_rank: mean(&image_ranks),
        text_retrieval_median_rank: median(&mut text_ranks.clone()),
        image_retrieval_median_rank: median(&mut image_ranks.clone()),
    }
}
