//! CPU reference of cluster masking (M3): anchors, clusters, the batch keep count, kept patches,
//! threshold calibration. The GPU kernels in `shaders/cluster_mask.wgsl` follow it step by step.

use super::MaskResult;
use super::config::{ClusterMaskConfig, KeepBounds, MaskError};
use super::features::{patch_features_of, patch_grid};
use super::rng::{MaskRng, Stream, UNIFORM_BITS, smallest_keys};

/// Calibration stops once the batch-mean mask ratio is this close to its target (M3.6).
pub const CALIBRATION_TOLERANCE: f64 = 0.01;

/// Bisection steps of the calibration: 2^-32 is below f32 resolution on [0, 1].
const CALIBRATION_STEPS: u32 = 32;

/// What cluster masking compares, patch against patch (M3.1, M3.7).
#[derive(Clone, Copy, Debug)]
pub struct PatchFeatures<'a> {
    pub images: usize,
    pub patches: usize,
    /// Unit pixel features [images, patches, pixel_dim] (see `patch_features`).
    pub pixels: &'a [f32],
    /// The embedding mix of M3.7, if any.
    pub embedding: Option<EmbeddingMix<'a>>,
}

/// Embedding similarity mixed into the pixel similarity (M3.7):
/// sim = weight · cos(embeddings) + (1 − weight) · pixel sim.
#[derive(Clone, Copy, Debug)]
pub struct EmbeddingMix<'a> {
    /// Unit embedding features [images, patches, dim] (see `embedding_features`).
    pub features: &'a [f32],
    /// Training progress in [0, 1] (epoch / total epochs).
    pub weight: f32,
}

impl<'a> PatchFeatures<'a> {
    pub fn new(pixels: &'a [f32], images: usize, patches: usize) -> Result<Self, MaskError> {
        let rows = images * patches;
        if rows == 0 || pixels.is_empty() || !pixels.len().is_multiple_of(rows) {
            return Err(MaskError::Shape(format!(
                "{} pixel feature values do not split into {images} images x {patches} patches",
                pixels.len()
            )));
        }
        Ok(Self {
            images,
            patches,
            pixels,
            embedding: None,
        })
    }

    pub fn with_embedding(mut self, features: &'a [f32], weight: f32) -> Result<Self, MaskError> {
        let rows = self.images * self.patches;
        if features.is_empty() || !features.len().is_multiple_of(rows) {
            return Err(MaskError::Shape(format!(
                "{} embedding values do not split into {} images x {} patches",
                features.len(),
                self.images,
                self.patches
            )));
        }
        if !(0.0..=1.0).contains(&weight) {
            return Err(MaskError::Shape(format!(
                "embedding weight {weight} is outside [0, 1]"
            )));
        }
        self.embedding = Some(EmbeddingMix { features, weight });
        Ok(self)
    }

    pub fn pixel_dim(&self) -> usize {
        self.pixels.len() / (self.images * self.patches)
    }

    /// Similarity of patches `a` and `j` of `image`: Pearson correlation of the pixels, mixed
    /// with the embedding cosine when present (M3.7). Flat patches give 0 (zero features, M3.1).
    pub fn similarity(&self, image: usize, a: usize, j: usize) -> f32 {
        let pixel = dot(
            row(
                self.pixels,
                self.images * self.patches,
                image * self.patches + a,
            ),
            row(
                self.pixels,
                self.images * self.patches,
                image * self.patches + j,
            ),
        );
        match self.embedding {
            None => pixel,
            Some(mix) => {
                let rows = self.images * self.patches;
                let emb = dot(
                    row(mix.features, rows, image * self.patches + a),
                    row(mix.features, rows, image * self.patches + j),
                );
                mix.weight * emb + (1.0 - mix.weight) * pixel
            }
        }
    }
}

fn row(values: &[f32], rows: usize, index: usize) -> &[f32] {
    let dim = values.len() / rows;
    &values[index * dim..(index + 1) * dim]
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The anchors of one image: the `count` patches with the smallest anchor draws, i.e. a uniform
/// choice without replacement (M3.2). Ascending raster order.
pub fn select_anchors(rng: MaskRng, image: u32, patches: usize, count: usize) -> Vec<u32> {
    let keys: Vec<u32> = (0..patches as u32)
        .map(|j| rng.bits24(image, Stream::Anchor, j))
        .collect();
    smallest_keys(&keys, count)
}

/// Anchors and, per patch, its highest similarity to any anchor of its image: everything the
/// cluster rule needs, so a threshold can be tried without recomputing similarities (M3.6).
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterScores {
    pub patches: usize,
    /// Anchor indices per image, ascending.
    pub anchors: Vec<Vec<u32>>,
    /// max over anchors a of sim(a, j), [images, patches]; −∞ when there are no anchors.
    pub nearest_anchor: Vec<f32>,
}

impl ClusterScores {
    pub fn compute(features: &PatchFeatures, rng: MaskRng, anchor_count: usize) -> Self {
        let (images, patches) = (features.images, features.patches);
        let mut nearest_anchor = vec![f32::NEG_INFINITY; images * patches];
        let anchors: Vec<Vec<u32>> = (0..images)
            .map(|image| select_anchors(rng, image as u32, patches, anchor_count))
            .collect();
        for (image, image_anchors) in anchors.iter().enumerate() {
            for j in 0..patches {
                let best = &mut nearest_anchor[image * patches + j];
                for &a in image_anchors {
                    *best = best.max(features.similarity(image, a as usize, j));
                }
            }
        }
        Self {
            patches,
            anchors,
            nearest_anchor,
        }
    }

    pub fn images(&self) -> usize {
        self.anchors.len()
    }

    /// Cluster flags of one image at threshold r: anchor, or sim(a, j) > r for some anchor
    /// (strict, M3.3).
    pub fn masked_flags(&self, image: usize, threshold: f32) -> Vec<bool> {
        let nearest = &self.nearest_anchor[image * self.patches..(image + 1) * self.patches];
        let mut flags: Vec<bool> = nearest.iter().map(|&s| s > threshold).collect();
        for &a in &self.anchors[image] {
            flags[a as usize] = true;
        }
        flags
    }

    /// Mean over images of the fraction of patches the clusters cover at threshold r.
    pub fn coverage(&self, threshold: f32) -> f64 {
        let covered: usize = (0..self.images())
            .map(|image| self.unmasked_count(image, threshold))
            .map(|unmasked| self.patches - unmasked)
            .sum();
        covered as f64 / (self.images() * self.patches) as f64
    }

    /// The realised mask ratio 1 − k/L of this batch at threshold r (M3.4, M3.8): k follows the
    /// image with the fewest unmasked patches, within the keep-count bounds.
    pub fn realised_ratio(&self, threshold: f32, bounds: KeepBounds) -> f64 {
        let fewest_unmasked = (0..self.images())
            .map(|image| self.unmasked_count(image, threshold))
            .min()
            .unwrap_or(self.patches);
        1.0 - bounds.keep_count(fewest_unmasked) as f64 / self.patches as f64
    }

    fn unmasked_count(&self, image: usize, threshold: f32) -> usize {
        self.masked_flags(image, threshold)
            .iter()
            .filter(|&&m| !m)
            .count()
    }
}

/// The `keep_count` patches of one image the encoder sees (M3.4): key_j = masked_j · 2^24 + u_j
/// with u_j a 24-bit uniform draw, keep the smallest keys. Unmasked patches come first, extra ones
/// dropped at random (not in raster order, the released code's bug); where there are too few,
/// masked ones are restored at random. Ascending raster order.
pub fn select_kept(rng: MaskRng, image: u32, masked: &[bool], keep_count: usize) -> Vec<u32> {
    let keys: Vec<u32> = masked
        .iter()
        .enumerate()
        .map(|(j, &m)| ((m as u32) << UNIFORM_BITS) | rng.bits24(image, Stream::Keep, j as u32))
        .collect();
    smallest_keys(&keys, keep_count)
}

/// Cluster masking of one batch (M3.2–M3.4, M3.8).
pub fn cluster_mask(
    features: &PatchFeatures,
    config: &ClusterMaskConfig,
    rng: MaskRng,
) -> Result<MaskResult, MaskError> {
    config.validate()?;
    let scores = ClusterScores::compute(features, rng, config.anchor_count(features.patches));
    Ok(mask_from_scores(&scores, config, rng))
}

/// The keep-count rule and kept-patch choice applied to precomputed scores (M3.4).
pub fn mask_from_scores(
    scores: &ClusterScores,
    config: &ClusterMaskConfig,
    rng: MaskRng,
) -> MaskResult {
    let patches = scores.patches;
    let flags: Vec<Vec<bool>> = (0..scores.images())
        .map(|image| scores.masked_flags(image, config.threshold))
        .collect();
    let fewest_unmasked = flags
        .iter()
        .map(|f| f.iter().filter(|&&m| !m).count())
        .min()
        .unwrap_or(patches);
    let keep_count = config.keep_bounds(patches).keep_count(fewest_unmasked);
    let kept = flags
        .iter()
        .enumerate()
        .flat_map(|(image, f)| select_kept(rng, image as u32, f, keep_count))
        .collect();
    let masked = flags
        .iter()
        .map(|f| (0..patches as u32).filter(|&j| f[j as usize]).collect())
        .collect();
    MaskResult::new(patches, keep_count, kept, scores.anchors.clone(), masked)
}

/// Result of threshold calibration (M3.6).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Calibration {
    /// The threshold r settled on.
    pub threshold: f32,
    /// Realised mask ratio 1 − k/L at that threshold, averaged over the batches (M3.6).
    pub mask_ratio: f64,
    /// Whether `mask_ratio` is within `CALIBRATION_TOLERANCE` of the target; false when the
    /// target lies inside a jump of the realised ratio. The realised ratio follows the most
    /// covered image of each batch (M3.4), so it moves in steps of 1/L per batch and can jump
    /// far where an image has many identical patches (their similarity is 1, so every r < 1
    /// covers them all).
    pub converged: bool,
}

/// Bisects r in [0, 1] until the realised mask ratio 1 − k/L of step M3.4, averaged over
/// `batches`, is within 0.01 of `target_mask_ratio` (M3.6). The ratio falls as r rises. The
/// target must lie within [min_mask_ratio, max_mask_ratio] (`check_target`); inside a jump of
/// the ratio the closest r seen is returned with `converged` false.
pub fn calibrate_threshold(
    batches: &[(PatchFeatures, MaskRng)],
    config: &ClusterMaskConfig,
    target_mask_ratio: f64,
) -> Result<Calibration, MaskError> {
    config.validate()?;
    config.check_target(target_mask_ratio)?;
    if batches.is_empty() {
        return Err(MaskError::Shape(
            "calibration needs at least one batch".into(),
        ));
    }
    let scores: Vec<ClusterScores> = batches
        .iter()
        .map(|(f, rng)| ClusterScores::compute(f, *rng, config.anchor_count(f.patches)))
        .collect();
    let realised = |r: f32| -> f64 {
        scores
            .iter()
            .map(|s| s.realised_ratio(r, config.keep_bounds(s.patches)))
            .sum::<f64>()
            / scores.len() as f64
    };
    let (mut low, mut high) = (0.0f32, 1.0f32);
    let mut best = Calibration {
        threshold: 0.0,
        mask_ratio: realised(0.0),
        converged: false,
    };
    for _ in 0..CALIBRATION_STEPS {
        let r = 0.5 * (low + high);
        let ratio = realised(r);
        if (ratio - target_mask_ratio).abs() < (best.mask_ratio - target_mask_ratio).abs() {
            best = Calibration {
                threshold: r,
                mask_ratio: ratio,
                converged: false,
            };
        }
        if (ratio - target_mask_ratio).abs() <= CALIBRATION_TOLERANCE {
            break;
        }
        if ratio > target_mask_ratio {
            low = r
        } else {
            high = r
        }
    }
    best.converged = (best.mask_ratio - target_mask_ratio).abs() <= CALIBRATION_TOLERANCE;
    Ok(best)
}

/// Calibrates r (M3.6) on batches of CLIP-normalised images, each [n, 3, height, width] (n may
/// differ between batches), compared in the pixel space of `config.features`; batch i draws its
/// anchors as training step i of `seed` does.
pub fn calibrate_on_images(
    batches: &[&[f32]],
    (height, width, patch): (usize, usize, usize),
    config: &ClusterMaskConfig,
    target_mask_ratio: f64,
    seed: u64,
) -> Result<Calibration, MaskError> {
    let image_len = 3 * height * width;
    let patches = patch_grid(height, width, patch).2;
    if image_len == 0 || patch == 0 || patches == 0 {
        return Err(MaskError::Shape(format!(
            "patch size {patch} does not fit a {height}x{width} image"
        )));
    }
    let features = batches
        .iter()
        .map(|images| {
            if images.is_empty() || !images.len().is_multiple_of(image_len) {
                return Err(MaskError::Shape(format!(
                    "{} values are not a batch of 3x{height}x{width} images",
                    images.len()
                )));
            }
            let n = images.len() / image_len;
            Ok((
                n,
                patch_features_of(images, n, height, width, patch, config.features),
            ))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let inputs = features
        .iter()
        .enumerate()
        .map(|(step, (n, pixels))| {
            Ok((
                PatchFeatures::new(pixels, *n, patches)?,
                MaskRng::new(seed, step as u32),
            ))
        })
        .collect::<Result<Vec<_>, MaskError>>()?;
    calibrate_threshold(&inputs, config, target_mask_ratio)
}
