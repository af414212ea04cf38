//! Patch features whose dot product is the similarity of cluster masking (M3.1, M3.7).

use super::config::MaskFeatures;
use crate::data::image_ops::{CLIP_MEAN, CLIP_STD};

/// Variance (in pixel units²) at or below which a patch counts as flat: a standard deviation of
/// 1e-5, under a hundredth of one 8-bit grey level in either pixel space of M3.1, yet far above
/// the rounding noise of a mean over 3p² values.
pub const FLAT_VARIANCE: f32 = 1e-10;

/// Per channel (scale, shift) taking a CLIP-normalised value to the pixels `features` compares:
/// x · std + mean back to [0, 1] for `Rgb`, the identity for `Normalized` (M3.1). The GPU kernel
/// receives the same pairs, so both twins compute x · scale + shift.
pub fn pixel_transform(features: MaskFeatures) -> [(f32, f32); 3] {
    match features {
        MaskFeatures::Normalized => [(1.0, 0.0); 3],
        MaskFeatures::Rgb => std::array::from_fn(|c| (CLIP_STD[c], CLIP_MEAN[c])),
    }
}

/// Embedding rows shorter than this are treated as zero (no direction, similarity 0).
pub const ZERO_NORM: f32 = 1e-12;

/// Side of the patch grid and patch count L of an `height` × `width` image cut into p × p patches.
pub fn patch_grid(height: usize, width: usize, patch: usize) -> (usize, usize, usize) {
    let (rows, cols) = (height / patch, width / patch);
    (rows, cols, rows * cols)
}

/// Unit feature vector of every patch: `images` is [n, 3, h, w] (normalised pixels), the result
/// [n, L, 3p²] with patches in raster order and each patch flattened as (channel, row, col).
///
/// M3.1 standardises each patch, (v − mean) / sqrt(var + 1e-6), and compares patches by cosine.
/// The cosine of two standardised patches is their Pearson correlation, so we store the centred
/// patch scaled to unit length: dot product = Pearson correlation, and the 1e-6 only matters for
/// flat patches, which become the zero vector (similarity 0 to everything, M3.1).
pub fn patch_features(images: &[f32], n: usize, h: usize, w: usize, p: usize) -> Vec<f32> {
    patch_features_of(images, n, h, w, p, MaskFeatures::Normalized)
}

/// `patch_features` of the pixels `features` names (M3.1): `images` is CLIP-normalised, and
/// `Rgb` un-normalises each value before standardising its patch.
pub fn patch_features_of(
    images: &[f32],
    n: usize,
    h: usize,
    w: usize,
    p: usize,
    features: MaskFeatures,
) -> Vec<f32> {
    assert_eq!(images.len(), n * 3 * h * w, "images must be [n, 3, h, w]");
    assert!(
        p > 0 && p <= h && p <= w,
        "patch size {p} must fit the {h}x{w} image"
    );
    let (_, cols, patches) = patch_grid(h, w, p);
    let dim = 3 * p * p;
    let transform = pixel_transform(features);
    let mut out = vec![0.0f32; n * patches * dim];
    let mut values = vec![0.0f32; dim];
    for image in 0..n {
        for (patch, feature) in out[image * patches * dim..(image + 1) * patches * dim]
            .chunks_exact_mut(dim)
            .enumerate()
        {
            let (top, left) = ((patch / cols) * p, (patch % cols) * p);
            for (c, (scale, shift)) in transform.into_iter().enumerate() {
                for y in 0..p {
                    let row = ((image * 3 + c) * h + top + y) * w + left;
                    for (v, x) in values[(c * p + y) * p..(c * p + y + 1) * p]
                        .iter_mut()
                        .zip(&images[row..row + p])
                    {
                        *v = x * scale + shift;
                    }
                }
            }
            unit_centred(&values, feature);
        }
    }
    out
}

/// Writes (v − mean) / ‖v − mean‖ into `out`, or zeros when v is flat (see `FLAT_VARIANCE`).
fn unit_centred(values: &[f32], out: &mut [f32]) {
    let dim = values.len() as f32;
    let mean = values.iter().sum::<f32>() / dim;
    let sum_sq: f32 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
    if sum_sq / dim <= FLAT_VARIANCE {
        out.fill(0.0);
        return;
    }
    let inv_norm = 1.0 / sum_sq.sqrt();
    for (o, v) in out.iter_mut().zip(values) {
        *o = (v - mean) * inv_norm;
    }
}

/// The embedding features of M3.7: each patch token (patch embedding + its positional embedding,
/// [n, L, dim]) scaled to unit length; zero tokens stay zero (no direction, similarity 0).
pub fn embedding_features(patch_tokens: &[f32], dim: usize) -> Vec<f32> {
    assert!(
        dim > 0 && patch_tokens.len().is_multiple_of(dim),
        "patch tokens must be [.., {dim}]"
    );
    let mut out = patch_tokens.to_vec();
    for row in out.chunks_exact_mut(dim) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        let scale = if norm > ZERO_NORM { 1.0 / norm } else { 0.0 };
        row.iter_mut().for_each(|v| *v *= scale);
    }
    out
}
