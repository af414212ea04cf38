//! CPU reference of FLIP random masking (M4) and of no masking (plain CLIP).

use super::MaskResult;
use super::config::{MaskError, check_ratio, random_keep_count};
use super::rng::{MaskRng, Stream, smallest_keys};

/// FLIP masking (M4): per image keep the k = round(L · (1 − mask_ratio)) patches with the
/// smallest uniform noise; `masked` lists the dropped patches.
pub fn random_mask(
    images: usize,
    patches: usize,
    mask_ratio: f64,
    rng: MaskRng,
) -> Result<MaskResult, MaskError> {
    check_ratio("mask-ratio", mask_ratio)?;
    let keep_count = random_keep_count(patches, mask_ratio);
    let mut kept = Vec::with_capacity(images * keep_count);
    let mut masked = Vec::with_capacity(images);
    for image in 0..images as u32 {
        let noise: Vec<u32> = (0..patches as u32)
            .map(|j| rng.bits24(image, Stream::Random, j))
            .collect();
        let image_kept = smallest_keys(&noise, keep_count);
        let mut dropped = vec![true; patches];
        image_kept.iter().for_each(|&j| dropped[j as usize] = false);
        masked.push(
            (0..patches as u32)
                .filter(|&j| dropped[j as usize])
                .collect(),
        );
        kept.extend(image_kept);
    }
    Ok(MaskResult::new(
        patches,
        keep_count,
        kept,
        vec![Vec::new(); images],
        masked,
    ))
}

/// Plain CLIP: every patch kept.
pub fn no_mask(images: usize, patches: usize) -> MaskResult {
    let kept = (0..images).flat_map(|_| 0..patches as u32).collect();
    MaskResult::new(
        patches,
        patches,
        kept,
        vec![Vec::new(); images],
        vec![Vec::new(); images],
    )
}
