//! The Mask panel: the cluster mask of the training kernels (`cluster_mask_gpu`, M3) over the
//! current image, and FLIP random masking (`random_mask_gpu`, M4) at the same keep count beside
//! it, so both drop the same number of patches (M7).

use clusterclip::gpu::Gpu;
use clusterclip::masking::{
    GpuImages, MaskFlags, MaskResult, MaskRng, cluster_mask_gpu, random_mask_gpu,
};

use crate::draw::{self, PatchMarks};
use crate::image_source::{SourceImage, picture_rgba};

/// Canvases of the two masks.
const CLUSTER_CANVAS: &str = "mask-cluster";
const RANDOM_CANVAS: &str = "mask-random";

/// The sliders, named as `clusterclip mask`'s flags.
pub struct MaskSettings {
    pub size: usize,
    pub patch: usize,
    pub threshold: f64,
    pub anchor_ratio: f64,
    pub min_mask_ratio: f64,
    pub max_mask_ratio: f64,
    pub seed: u64,
    pub features: String,
}

/// Computes and draws both masks; returns them as JSON.
pub async fn run(gpu: &Gpu, image: &SourceImage, s: &MaskSettings) -> Result<String, String> {
    if s.patch == 0 || s.size < s.patch || !s.size.is_multiple_of(s.patch) {
        return Err(format!(
            "image size {} is not a multiple of patch size {}",
            s.size, s.patch
        ));
    }
    // The CLI's one parser of mask settings, so the page refuses what `clusterclip mask` does.
    let flags = MaskFlags {
        threshold: s.threshold.to_string(),
        anchor_ratio: s.anchor_ratio,
        min_mask_ratio: s.min_mask_ratio,
        max_mask_ratio: s.max_mask_ratio,
        mask_features: s.features.clone(),
        ..MaskFlags::default()
    };
    let plan = flags.plan().map_err(|e| e.to_string())?;
    let config = plan
        .strategy
        .cluster()
        .ok_or("the default mask strategy is cluster")?;
    // `clusterclip mask` draws its generator with `--step 0`.
    let rng = MaskRng::new(s.seed, 0);
    let pixels = image.normalised(s.size);
    let uploaded = gpu.upload_f32(&pixels);
    let images = GpuImages {
        pixels: &uploaded,
        images: 1,
        height: s.size,
        width: s.size,
        patch: s.patch,
    };
    let cluster = cluster_mask_gpu(gpu, &images, None, config, rng).map_err(|e| e.to_string())?;
    let cluster: MaskResult = cluster.read_async(gpu).await.map_err(|e| e.to_string())?;
    let patches = cluster.patches;
    let (random_keep, random_kept) = random_mask_gpu(
        gpu,
        1,
        patches,
        1.0 - cluster.keep_count as f64 / patches as f64,
        rng,
    )
    .map_err(|e| e.to_string())?;
    let random_kept = gpu
        .read_many_u32_async(&[&random_kept])
        .await
        .map_err(|e| e.to_string())?
        .remove(0);
    let random_kept = &random_kept[..random_keep];

    let rgba = picture_rgba(&pixels, s.size);
    draw::picture(
        CLUSTER_CANVAS,
        &rgba,
        s.size,
        s.patch,
        Some(PatchMarks {
            kept: cluster.kept_of(0),
            anchors: &cluster.anchors[0],
        }),
    )?;
    draw::picture(
        RANDOM_CANVAS,
        &rgba,
        s.size,
        s.patch,
        Some(PatchMarks {
            kept: random_kept,
            anchors: &[],
        }),
    )?;
    Ok(serde_json::json!({
        "patches": patches,
        "anchors": cluster.anchors[0],
        "masked": cluster.masked[0],
        "kept": cluster.kept_of(0),
        "keep_count": cluster.keep_count,
        "mask_ratio": cluster.mask_ratio,
        "threshold": config.threshold,
        "random_kept": random_kept,
        "random_keep_count": random_keep,
        "random_mask_ratio": 1.0 - random_keep as f64 / patches as f64,
    })
    .to_string())
}
