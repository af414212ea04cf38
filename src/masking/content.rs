//! What a mask leaves the image encoder: the share of the images' patch contrast in the kept
//! patches. At an equal keep count (M7) random masking keeps about k/L of it whatever the image;
//! cluster masking keeps more or less depending on where its clusters form. This is the study's
//! diagnosis of why cluster masking can trail random masking at equal compute (issue 11).

use super::config::MaskError;
use super::features::{patch_features_of, patch_grid, pixel_transform};
use super::{
    MaskFeatures, MaskResult, MaskRng, MaskStrategy, PatchFeatures, cluster_mask, no_mask,
    random_mask,
};

/// A patch whose pixels in [0, 1] have a standard deviation under this (about 5 grey levels of
/// 255) counts as plain: a background, a sky, a flat fill.
pub const PLAIN_STD: f32 = 0.02;

/// The content of the kept patches of a batch, as shares in [0, 1].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MaskContent {
    /// Kept patches / all patches, k/L.
    pub kept: f64,
    /// The kept patches' summed contrast (standard deviation of each patch's pixels in [0, 1])
    /// over the summed contrast of all patches.
    pub kept_contrast: f64,
    /// Share of the kept patches that are plain (`PLAIN_STD`).
    pub kept_plain: f64,
    /// Share of all patches that are plain.
    pub plain: f64,
    /// Share of all patches in `MaskResult::masked`: the clusters' own coverage before k is
    /// applied (cluster masking), the dropped share (random).
    pub covered: f64,
}

impl MaskContent {
    /// Mean contrast of a kept patch over the mean of all patches: 1 for an unbiased sample
    /// (random masking in expectation), above 1 when the mask drops plain regions first.
    pub fn kept_std_ratio(&self) -> f64 {
        if self.kept > 0.0 {
            self.kept_contrast / self.kept
        } else {
            0.0
        }
    }
}

/// The contrast of every patch: the standard deviation of its 3p² values in [0, 1] pixels,
/// `images` being CLIP-normalised [n, 3, h, w]; [n, L] in raster order.
pub fn patch_contrast(images: &[f32], n: usize, h: usize, w: usize, p: usize) -> Vec<f32> {
    assert_eq!(images.len(), n * 3 * h * w, "images must be [n, 3, h, w]");
    let (rows, cols, patches) = patch_grid(h, w, p);
    let transform = pixel_transform(MaskFeatures::Rgb);
    let mut out = Vec::with_capacity(n * patches);
    for image in 0..n {
        for (row, col) in (0..rows).flat_map(|r| (0..cols).map(move |c| (r, c))) {
            let (mut sum, mut sum_sq) = (0.0f64, 0.0f64);
            for (c, &(scale, shift)) in transform.iter().enumerate() {
                let plane = &images[(image * 3 + c) * h * w..(image * 3 + c + 1) * h * w];
                for y in row * p..(row + 1) * p {
                    for &x in &plane[y * w + col * p..y * w + (col + 1) * p] {
                        let v = (x * scale + shift) as f64;
                        sum += v;
                        sum_sq += v * v;
                    }
                }
            }
            let count = (3 * p * p) as f64;
            let mean = sum / count;
            out.push((sum_sq / count - mean * mean).max(0.0).sqrt() as f32);
        }
    }
    out
}

/// The content `mask` keeps of a batch whose patch contrasts are `contrast` ([n, L]).
pub fn mask_content(contrast: &[f32], mask: &MaskResult) -> MaskContent {
    let patches = mask.patches;
    assert_eq!(
        contrast.len(),
        mask.images() * patches,
        "contrast [n, L] vs mask"
    );
    let total: f64 = contrast.iter().map(|&c| c as f64).sum();
    let kept = (0..mask.images()).flat_map(|i| {
        mask.kept_of(i)
            .iter()
            .map(move |&j| contrast[i * patches + j as usize])
    });
    let (mut kept_sum, mut kept_plain, mut kept_count) = (0.0f64, 0usize, 0usize);
    for c in kept {
        kept_sum += c as f64;
        kept_plain += (c < PLAIN_STD) as usize;
        kept_count += 1;
    }
    let plain = contrast.iter().filter(|&&c| c < PLAIN_STD).count();
    let covered: usize = mask.masked.iter().map(Vec::len).sum();
    MaskContent {
        kept: mask.keep_count as f64 / patches as f64,
        // An all-plain batch has no contrast to lose: call it all kept.
        kept_contrast: if total > 0.0 { kept_sum / total } else { 1.0 },
        kept_plain: kept_plain as f64 / kept_count.max(1) as f64,
        plain: plain as f64 / contrast.len().max(1) as f64,
        covered: covered as f64 / contrast.len().max(1) as f64,
    }
}

/// The mask of one batch by the CPU references of the training kernels (bit-identical to them,
/// tests/masking*.rs). `images` is CLIP-normalised [n, 3, size, size]. Cluster-embed needs a
/// model's patch embeddings and is refused here.
pub fn reference_mask(
    strategy: &MaskStrategy,
    images: &[f32],
    n: usize,
    (size, patch): (usize, usize),
    rng: MaskRng,
) -> Result<MaskResult, MaskError> {
    let patches = patch_grid(size, size, patch).2;
    match strategy {
        MaskStrategy::None => Ok(no_mask(n, patches)),
        MaskStrategy::Random { mask_ratio } => random_mask(n, patches, *mask_ratio, rng),
        MaskStrategy::Cluster(config) => {
            let features = patch_features_of(images, n, size, size, patch, config.features);
            cluster_mask(&PatchFeatures::new(&features, n, patches)?, config, rng)
        }
        MaskStrategy::ClusterEmbed(_) => Err(MaskError::Settings(
            "cluster-embed masks need a model's patch embeddings".into(),
        )),
    }
}

/// Mean content over batches of CLIP-normalised images, batch i masked as training step i of
/// `seed` is.
pub fn content_over_batches(
    strategy: &MaskStrategy,
    batches: &[&[f32]],
    (size, patch): (usize, usize),
    seed: u64,
) -> Result<MaskContent, MaskError> {
    let image_len = 3 * size * size;
    let mut sum = MaskContent::default();
    for (step, images) in batches.iter().enumerate() {
        let n = images.len() / image_len;
        let mask = reference_mask(
            strategy,
            images,
            n,
            (size, patch),
            MaskRng::new(seed, step as u32),
        )?;
        let c = mask_content(&patch_contrast(images, n, size, size, patch), &mask);
        sum.kept += c.kept;
        sum.kept_contrast += c.kept_contrast;
        sum.kept_plain += c.kept_plain;
        sum.plain += c.plain;
        sum.covered += c.covered;
    }
    let count = batches.len().max(1) as f64;
    Ok(MaskContent {
        kept: sum.kept / count,
        kept_contrast: sum.kept_contrast / count,
        kept_plain: sum.kept_plain / count,
        plain: sum.plain / count,
        covered: sum.covered / count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::image_ops::{CLIP_MEAN, CLIP_STD};

    /// A 2-image batch of 4×4 pixels in 2×2 patches, from pixels in [0, 1] (same in every channel).
    fn normalised(pixels: &[[f32; 16]; 2]) -> Vec<f32> {
        pixels
            .iter()
            .flat_map(|image| {
                (0..3)
                    .flat_map(move |c| image.iter().map(move |&v| (v - CLIP_MEAN[c]) / CLIP_STD[c]))
            })
            .collect()
    }

    #[test]
    fn contrast_is_the_patch_std_in_rgb_pixels() {
        // Top-left patch alternates 0 and 1 (std 0.5); the rest is a uniform grey 0.3.
        let mut image = [0.3f32; 16];
        image[0] = 0.0;
        image[1] = 1.0;
        image[4] = 1.0;
        image[5] = 0.0;
        let images = normalised(&[image, [0.3; 16]]);
        let contrast = patch_contrast(&images, 2, 4, 4, 2);
        assert_eq!(contrast.len(), 8);
        assert!((contrast[0] - 0.5).abs() < 1e-5, "{contrast:?}");
        assert!(contrast[1..].iter().all(|&c| c < 1e-5), "{contrast:?}");

        // Keeping patch 0 of image 0 (and patch 3 of image 1) keeps all the contrast, 1 of the
        // 2 kept patches is plain, and 7 of the 8 patches are.
        let mask = MaskResult::new(
            4,
            1,
            vec![0, 3],
            vec![Vec::new(); 2],
            vec![vec![1, 2, 3], vec![0, 1, 2]],
        );
        let c = mask_content(&contrast, &mask);
        assert_eq!(c.kept, 0.25);
        assert!((c.kept_contrast - 1.0).abs() < 1e-9);
        assert_eq!(c.kept_plain, 0.5);
        assert_eq!(c.plain, 7.0 / 8.0);
        assert_eq!(c.covered, 6.0 / 8.0);
        assert!((c.kept_std_ratio() - 4.0).abs() < 1e-9);
        // Dropping it keeps none.
        let mask = MaskResult::new(4, 1, vec![1, 3], vec![Vec::new(); 2], vec![vec![]; 2]);
        assert_eq!(mask_content(&contrast, &mask).kept_contrast, 0.0);
    }
}
