//! The mask of one training step (M3, M4): which patches each image keeps. Cluster masking runs
//! on the GPU on the GPU backend (its CPU twin on the CPU backend) on the step's images where
//! they were uploaded. Where k was known before the mask ran (min = max mask ratio, as the study
//! pins it, M7) the kept indices stay on the device and the step reads nothing. Otherwise every
//! shape of the image tower depends on a k only the GPU knows (M3.4: a dense [N, 1 + k, D]
//! tensor, no padding): [`compute_mask_counted`] leaves k there too and the step replays a
//! dispatch plan over k's range (src/gpu/plan.rs), still with no read; [`compute_mask`] reads
//! k and the kept indices back (several ranks agree on k on the host). Random masking is N·L
//! hashes of a
//! counter-based generator, cheaper on the host than a device round trip, and bit-identical to
//! its GPU kernel (tests/masking*.rs).

use crate::graph::{Backend, Graph, Storage};
pub use crate::masking::MaskStrategy;
use crate::masking::{
    GpuEmbedding, GpuImages, MaskError, MaskResult, MaskRng, PatchFeatures, cluster_mask,
    cluster_mask_gpu, embedding_features, patch_features_of, random_mask,
};
use crate::model::{Clip, Input, vision};

/// The kept patches of one step's batch: on the host (read back, or drawn there), or left on
/// the device where k was known before the mask ran.
pub enum StepMask {
    Host(MaskResult),
    /// [images, keep_count] raster indices, rows ascending.
    Device {
        patches: usize,
        keep_count: usize,
        kept: Storage,
    },
    /// k too left on the device (an unpinned cluster mask): the step replays a dispatch plan
    /// over k's range ([`crate::train::step::Trainer::step_counted`]).
    Counted {
        patches: usize,
        keep: DeviceKeep,
        /// [images, keep.cap]: [images, k] raster indices at the front, rows ascending.
        kept: Storage,
    },
}

/// A step's mask ratio: on the host, or still to be read as k from the device.
pub enum MaskRatio {
    Known(f64),
    OnDevice {
        count: crate::gpu::GpuBuf,
        patches: usize,
    },
}

impl MaskRatio {
    /// The ratio of no mask.
    pub const NONE: MaskRatio = MaskRatio::Known(0.0);

    /// 1 − k/L for a k read back from the device.
    pub fn of_count(k: u32, patches: usize) -> f64 {
        1.0 - k as f64 / patches as f64
    }
}

/// A keep count the GPU computed and the host does not know: in `floor..=cap` (M3.4's bounds).
#[derive(Clone)]
pub struct DeviceKeep {
    /// [1] u32.
    pub count: crate::gpu::GpuBuf,
    pub floor: usize,
    pub cap: usize,
}

impl StepMask {
    /// k, where the host knows it.
    pub fn keep_count(&self) -> Option<usize> {
        match self {
            StepMask::Host(mask) => Some(mask.keep_count),
            StepMask::Device { keep_count, .. } => Some(*keep_count),
            StepMask::Counted { .. } => None,
        }
    }

    pub fn patches(&self) -> usize {
        match self {
            StepMask::Host(mask) => mask.patches,
            StepMask::Device { patches, .. } | StepMask::Counted { patches, .. } => *patches,
        }
    }

    /// 1 − k/L, where the host knows k.
    pub fn mask_ratio(&self) -> Option<f32> {
        let k = self.keep_count()?;
        Some(1.0 - k as f32 / self.patches() as f32)
    }

    /// The realised mask ratio 1 − k/L, known now or to be read with k.
    pub fn ratio(&self) -> MaskRatio {
        match self {
            StepMask::Counted { keep, patches, .. } => MaskRatio::OnDevice {
                count: keep.count.clone(),
                patches: *patches,
            },
            _ => MaskRatio::Known(self.mask_ratio().expect("a mask on the host knows k") as f64),
        }
    }

    /// The device keep count of a [`StepMask::Counted`] mask.
    pub fn device_keep(&self) -> Option<&DeviceKeep> {
        match self {
            StepMask::Counted { keep, .. } => Some(keep),
            _ => None,
        }
    }

    /// The kept indices as the step's input ([images, cap] for a counted mask).
    pub fn kept(&self) -> Input<'_, u32> {
        match self {
            StepMask::Host(mask) => Input::Host(&mask.kept),
            StepMask::Device { kept, .. } | StepMask::Counted { kept, .. } => {
                Input::Stored(kept.clone())
            }
        }
    }

    /// The whole host mask (anchors and clusters too where the CPU made it), if on the host.
    pub fn into_host(self) -> Option<MaskResult> {
        match self {
            StepMask::Host(mask) => Some(mask),
            StepMask::Device { .. } | StepMask::Counted { .. } => None,
        }
    }
}

/// [`compute_mask`] for this rank's part of a global batch (`rng` keyed from its first image).
/// M3.4's one keep count per batch is the global batch's: the smallest of every rank's (k is
/// monotone in the fewest unmasked patches), and a rank above it masks again pinned to it.
/// So a run's masks do not depend on how many ranks share the batch.
#[cfg(not(target_arch = "wasm32"))]
pub fn compute_mask_on_ranks(
    clip: &Clip,
    backend: &Backend,
    strategy: &MaskStrategy,
    (images, batch): (&Storage, usize),
    rng: MaskRng,
    progress: f32,
    ranks: &dyn super::ranks::Ranks,
) -> Result<Option<StepMask>, MaskError> {
    use crate::masking::ClusterMaskConfig;
    let mask = compute_mask(clip, backend, strategy, images, batch, rng, progress)?;
    let (Some(local), MaskStrategy::Cluster(c) | MaskStrategy::ClusterEmbed(c)) = (&mask, strategy)
    else {
        return Ok(mask);
    };
    // A pinned k is every rank's already (the ranks agreed on the flags at start-up).
    if ranks.size() == 1 || c.min_mask_ratio == c.max_mask_ratio {
        return Ok(mask);
    }
    let local_k = local
        .keep_count()
        .expect("ranks ask for a mask whose k the host reads");
    let k = ranks.all_reduce_min(local_k as u64) as usize;
    if k == local_k {
        return Ok(mask);
    }
    // min = max mask ratio = 1 − k/L: keep_bounds gives round(L · k/L) = k both ways.
    let ratio = 1.0 - k as f64 / local.patches() as f64;
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

/// [`compute_mask`], but an unpinned cluster mask on the GPU leaves k on the device too
/// ([`StepMask::Counted`]), for a step that replays a dispatch plan: no read at all.
#[cfg(not(target_arch = "wasm32"))]
pub fn compute_mask_counted(
    clip: &Clip,
    backend: &Backend,
    strategy: &MaskStrategy,
    images: &Storage,
    batch: usize,
    rng: MaskRng,
    progress: f32,
) -> Result<Option<StepMask>, MaskError> {
    crate::gpu::block_on(mask_async(
        clip, backend, strategy, images, batch, rng, progress, true,
    ))
}

/// Blocking [`compute_mask_async`] (native only).
#[cfg(not(target_arch = "wasm32"))]
pub fn compute_mask(
    clip: &Clip,
    backend: &Backend,
    strategy: &MaskStrategy,
    images: &Storage,
    batch: usize,
    rng: MaskRng,
    progress: f32,
) -> Result<Option<StepMask>, MaskError> {
    crate::gpu::block_on(compute_mask_async(
        clip, backend, strategy, images, batch, rng, progress,
    ))
}

/// The kept patches of one batch of normalised images [batch, 3, S, S] on `backend` (uploaded
/// once for the mask and the step); `None` keeps all. `progress` in [0, 1] weighs the embedding
/// similarity of `ClusterEmbed` (M3.7).
pub async fn compute_mask_async(
    clip: &Clip,
    backend: &Backend,
    strategy: &MaskStrategy,
    images: &Storage,
    batch: usize,
    rng: MaskRng,
    progress: f32,
) -> Result<Option<StepMask>, MaskError> {
    mask_async(clip, backend, strategy, images, batch, rng, progress, false).await
}

#[allow(clippy::too_many_arguments)]
async fn mask_async(
    clip: &Clip,
    backend: &Backend,
    strategy: &MaskStrategy,
    images: &Storage,
    batch: usize,
    rng: MaskRng,
    progress: f32,
    counted: bool,
) -> Result<Option<StepMask>, MaskError> {
    let v = &clip.config.vision;
    let (size, patch, patches) = (v.image_size, v.patch_size, v.patches());
    let config = match strategy {
        MaskStrategy::None => return Ok(None),
        MaskStrategy::Random { mask_ratio } => {
            return random_mask(batch, patches, *mask_ratio, rng).map(|m| Some(StepMask::Host(m)));
        }
        MaskStrategy::Cluster(config) | MaskStrategy::ClusterEmbed(config) => config,
    };
    let embed = matches!(strategy, MaskStrategy::ClusterEmbed(_));
    // Patch embeddings + positions, detached (M3.7): a frozen forward of the embedding.
    let tokens = if embed {
        let mut g = Graph::new(backend.clone());
        let params = clip.params.bind_frozen(&mut g);
        let x = g
            .from_storage(images.clone(), &[batch, 3, size, size], false)
            .map_err(|e| MaskError::Shape(e.to_string()))?;
        let t =
            vision::embed(&mut g, &params, v, x).map_err(|e| MaskError::Shape(e.to_string()))?;
        Some(g.storage(t).clone())
    } else {
        None
    };
    match backend {
        Backend::Gpu(gpu) => {
            let gpu_images = GpuImages {
                pixels: images.gpu(),
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
            let bounds = config.keep_bounds(patches);
            if bounds.floor == bounds.cap {
                // k = cap = floor whatever the clusters (M3.4): the step records its shapes
                // now and reads its kept rows on the device.
                let keep_count = bounds.cap;
                return Ok(Some(StepMask::Device {
                    patches,
                    keep_count,
                    kept: Storage::Gpu(mask.kept.view(0, batch * keep_count)),
                }));
            }
            if counted {
                // The floor wins where the bounds cross (KeepBounds::keep_count).
                let cap = bounds.cap.max(bounds.floor);
                return Ok(Some(StepMask::Counted {
                    patches,
                    keep: DeviceKeep {
                        count: mask.keep_count,
                        floor: bounds.floor,
                        cap,
                    },
                    kept: Storage::Gpu(mask.kept.view(0, batch * cap)),
                }));
            }
            let read = gpu
                .read_many_u32_async(&[&mask.keep_count, &mask.kept])
                .await
                .map_err(|e| MaskError::Shape(e.to_string()))?;
            let keep_count = read[0][0] as usize;
            let kept = read[1][..batch * keep_count].to_vec();
            Ok(Some(StepMask::Host(MaskResult {
                patches,
                keep_count,
                kept,
                anchors: vec![Vec::new(); batch],
                masked: vec![Vec::new(); batch],
                mask_ratio: 1.0 - keep_count as f32 / patches as f32,
            })))
        }
        Backend::Cpu => {
            let pixels = patch_features_of(images.cpu(), batch, size, size, patch, config.features);
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
            cluster_mask(&features, config, rng).map(|m| Some(StepMask::Host(m)))
        }
    }
}
