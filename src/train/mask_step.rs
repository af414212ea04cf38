//! The mask of one training step (M3, M4): which patches each image keeps. Cluster masking runs
//! on the GPU on the GPU backend (its CPU twin on the CPU backend); only the batch keep count
//! and the kept indices come back to the host, in one read. Random masking is N·L hashes of a
//! counter-based generator, cheaper on the host than a device round trip, and bit-identical to
//! its GPU kernel (tests/masking*.rs).

use crate::graph::{Backend, Graph};
pub use crate::masking::MaskStrategy;
use crate::masking::{
    GpuEmbedding, GpuImages, MaskError, MaskResult, MaskRng, PatchFeatures, cluster_mask,
    cluster_mask_gpu, embedding_features, patch_features_of, random_mask,
};
use crate::model::{Clip, vision};

/// [`compute_mask`] for this rank's part of a global batch (`rng` keyed from its first image).
/// M3.4's one keep count per batch is the global batch's: the smallest of every rank's (k is
/// monotone in the fewest unmasked patches), and a rank above it masks again pinned to it.
/// So a run's masks do not depend on how many ranks share the batch.
#[cfg(not(target_arch = "wasm32"))]
pub fn compute_mask_on_ranks(
    clip: &Clip,
    backend: &Backend,
    strategy: &MaskStrategy,
    (images, batch): (&[f32], usize),
    rng: MaskRng,
    progress: f32,
    ranks: &dyn super::ranks::Ranks,
) -> Result<Option<MaskResult>, MaskError> {
    use crate::masking::ClusterMaskConfig;
    let mask = compute_mask(clip, backend, strategy, images, batch, rng, progress)?;
    let (Some(local), MaskStrategy::Cluster(c) | MaskStrategy::ClusterEmbed(c)) = (&mask, strategy)
    else {
        return Ok(mask);
    };
    if ranks.size() == 1 {
        return Ok(mask);
    }
    let k = ranks.all_reduce_min(local.keep_count as u64) as usize;
    if k == local.keep_count {
        return Ok(mask);
    }
    // min = max mask ratio = 1 − k/L: keep_bounds gives round(L · k/L) = k both ways.
    let ratio = 1.0 - k as f64 / local.patches as f64;
    let pinned = ClusterMaskConfig {
        min_mask_ratio: ratio,
        max_mask_ratio: ratio,
        ..*c
    };
    let pinned = match strategy {
        MaskStrategy::ClusterEmbed(_) => MaskStrategy::ClusterEmbed(pinned),
        _ => MaskStrategy::Cluster(pinned),
    };
    compute_mask(clip, backend, &pinned, images, batch, rng, progress)
}

/// Blocking [`compute_mask_async`] (native only).
#[cfg(not(target_arch = "wasm32"))]
pub fn compute_mask(
    clip: &Clip,
    backend: &Backend,
    strategy: &MaskStrategy,
    images: &[f32],
    batch: usize,
    rng: MaskRng,
    progress: f32,
) -> Result<Option<MaskResult>, MaskError> {
    crate::gpu::block_on(compute_mask_async(
        clip, backend, strategy, images, batch, rng, progress,
    ))
}

/// The kept patches of one batch of normalised images [batch, 3, S, S]; `None` keeps all.
/// `progress` in [0, 1] weighs the embedding similarity of `ClusterEmbed` (M3.7).
pub async fn compute_mask_async(
    clip: &Clip,
    backend: &Backend,
    strategy: &MaskStrategy,
    images: &[f32],
    batch: usize,
    rng: MaskRng,
    progress: f32,
) -> Result<Option<MaskResult>, MaskError> {
    let v = &clip.config.vision;
    let (size, patch, patches) = (v.image_size, v.patch_size, v.patches());
    let config = match strategy {
        MaskStrategy::None => return Ok(None),
        MaskStrategy::Random { mask_ratio } => {
            return random_mask(batch, patches, *mask_ratio, rng).map(Some);
        }
        MaskStrategy::Cluster(config) | MaskStrategy::ClusterEmbed(config) => config,
    };
    let embed = matches!(strategy, MaskStrategy::ClusterEmbed(_));
    // Patch embeddings + positions, detached (M3.7): a frozen forward of the embedding.
    let tokens = if embed {
        let mut g = Graph::new(backend.clone());
        let params = clip.params.bind_frozen(&mut g);
        let x = g
            .constant(images, &[batch, 3, size, size])
            .map_err(|e| MaskError::Shape(e.to_string()))?;
        let t =
            vision::embed(&mut g, &params, v, x).map_err(|e| MaskError::Shape(e.to_string()))?;
        Some(g.storage(t).clone())
    } else {
        None
    };
    match backend {
        Backend::Gpu(gpu) => {
            let pixels = gpu.upload_f32(images);
            let gpu_images = GpuImages {
                pixels: &pixels,
                images: batch,
                height: size,
                width: size,
                patch,
            };
            let embedding = tokens.as_ref().map(|t| GpuEmbedding {
                tokens: t.gpu(),
                tokens_per_image: patches + 1,
                first_patch: 1,
                dim: v.width,
                weight: progress,
            });
            let mask = cluster_mask_gpu(gpu, &gpu_images, embedding.as_ref(), config, rng)?;
            let read = gpu
                .read_many_u32_async(&[&mask.keep_count, &mask.kept])
                .await
                .map_err(|e| MaskError::Shape(e.to_string()))?;
            let keep_count = read[0][0] as usize;
            let kept = read[1][..batch * keep_count].to_vec();
            Ok(Some(MaskResult {
                patches,
                keep_count,
                kept,
                anchors: vec![Vec::new(); batch],
                masked: vec![Vec::new(); batch],
                mask_ratio: 1.0 - keep_count as f32 / patches as f32,
            }))
        }
        Backend::Cpu => {
            let pixels = patch_features_of(images, batch, size, size, patch, config.features);
            let mut features = PatchFeatures::new(&pixels, batch, patches)?;
            let embedded;
            if let Some(tokens) = &tokens {
                // Drop the class token: patch j is token 1 + j.
                let all = tokens.cpu();
                let rows: Vec<f32> = all
                    .chunks(v.width)
                    .enumerate()
                    .filter(|(i, _)| i % (patches + 1) != 0)
                    .flat_map(|(_, row)| row.iter().copied())
                    .collect();
                embedded = embedding_features(&rows, v.width);
                features = features.with_embedding(&embedded, progress)?;
            }
            cluster_mask(&features, config, rng).map(Some)
        }
    }
}
