//! Masking strategies (shared/method.md M3, M4): cluster masking, random (FLIP) masking, none.
//!
//! Each strategy turns one batch into a `MaskResult`: one keep count k for the batch and the k
//! patch indices (raster order) each image's encoder sees. Randomness comes from the
//! counter-based `MaskRng`, keyed by (seed, step, image), so the GPU kernels and these CPU
//! references give the same mask.

mod cluster;
mod config;
mod content;
mod features;
pub(crate) mod gpu;
mod random;
mod rng;
mod strategy;

pub use cluster::{
    CALIBRATION_TOLERANCE, Calibration, ClusterScores, EmbeddingMix, PatchFeatures,
    calibrate_on_images, calibrate_threshold, cluster_mask, mask_from_scores, select_anchors,
    select_kept,
};
pub use config::{
    ClusterMaskConfig, KeepBounds, MaskError, MaskFeatures, check_ratio, random_keep_count,
};
pub use content::{
    MaskContent, PLAIN_STD, content_over_batches, mask_content, patch_contrast, reference_mask,
};
pub use features::{
    FLAT_VARIANCE, embedding_features, patch_features, patch_features_of, patch_grid,
    pixel_transform,
};
pub use gpu::{
    GpuEmbedding, GpuImages, GpuMask, MAX_GPU_PATCHES, cluster_mask_gpu, random_mask_gpu,
};
pub use random::{no_mask, random_mask};
pub use rng::{MaskRng, Stream, UNIFORM_BITS, hash_u32, smallest_keys};
pub use strategy::{MaskFlags, MaskKind, MaskPlan, MaskStrategy, Threshold};

/// One batch's mask.
#[derive(Clone, Debug, PartialEq)]
pub struct MaskResult {
    /// Patches per image, L.
    pub patches: usize,
    /// Patches each image keeps, k (one per batch, M3.4).
    pub keep_count: usize,
    /// Kept patch indices [images, keep_count], each row in ascending raster order.
    pub kept: Vec<u32>,
    /// Anchor indices per image (empty for random and no masking).
    pub anchors: Vec<Vec<u32>>,
    /// Per image, the patches the clusters cover (cluster masking) or the dropped ones (random).
    pub masked: Vec<Vec<u32>>,
    /// Realised mask ratio 1 − k/L, logged every step (M3.8).
    pub mask_ratio: f32,
}

impl MaskResult {
    fn new(
        patches: usize,
        keep_count: usize,
        kept: Vec<u32>,
        anchors: Vec<Vec<u32>>,
        masked: Vec<Vec<u32>>,
    ) -> Self {
        assert_eq!(
            kept.len(),
            anchors.len() * keep_count,
            "kept indices vs images × keep_count"
        );
        let mask_ratio = 1.0 - keep_count as f32 / patches as f32;
        Self {
            patches,
            keep_count,
            kept,
            anchors,
            masked,
            mask_ratio,
        }
    }

    pub fn images(&self) -> usize {
        self.anchors.len()
    }

    /// The kept indices of one image.
    pub fn kept_of(&self, image: usize) -> &[u32] {
        &self.kept[image * self.keep_count..(image + 1) * self.keep_count]
    }
}

// `cargo test --release` runs this: the guard must not be debug-only.
#[cfg(test)]
mod tests {
    #[test]
    #[should_panic(expected = "kept indices")]
    fn a_mask_whose_kept_list_disagrees_with_its_keep_count_panics() {
        let two = || vec![Vec::new(), Vec::new()];
        super::MaskResult::new(4, 2, vec![0, 1, 2], two(), two());
    }
}
