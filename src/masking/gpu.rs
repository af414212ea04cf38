//! GPU masking: records the kernels of `shaders/cluster_mask.wgsl` into the step's encoder.
//! Same (seed, step) → same mask as the CPU twin (`cluster_mask`, `random_mask`), except where a
//! similarity lies within float rounding of the threshold.

use super::MaskResult;
use super::config::{ClusterMaskConfig, MaskError, check_ratio, random_keep_count};
use super::rng::MaskRng;
use crate::gpu::{Binding, Gpu, GpuBuf, GpuError, MAX_GROUPS_PER_DIM, Shader};

/// Largest patch count L the selection kernels hold in workgroup memory (`MAX_PATCHES` in the
/// shader; `tests/masking_gpu.rs` checks the two agree).
pub const MAX_GPU_PATCHES: usize = 1024;

fn shader() -> Shader {
    crate::shader!("cluster_mask")
}

crate::kernel_params! {
    /// The shader's `Params`, field for field.
    #[derive(Default)]
    pub(crate) struct Params for "cluster_mask" {
        images: u32,
        patches: u32,
        height: u32,
        width: u32,
        patch_size: u32,
        grid_cols: u32,
        embed_dim: u32,
        embed_tokens: u32,
        embed_first: u32,
        anchors: u32,
        keep_floor: u32,
        keep_cap: u32,
        random_keep: u32,
        threshold: f32,
        embed_weight: f32,
        seed_lo: u32,
        seed_hi: u32,
        step: u32,
        /// Per channel x · scale + shift before standardising (`pixel_transform`, M3.1).
        scale_r: f32,
        scale_g: f32,
        scale_b: f32,
        shift_r: f32,
        shift_g: f32,
        shift_b: f32,
        /// Global index of image 0 (`MaskRng::first_image`).
        first_image: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

impl Params {
    fn new(images: usize, patches: usize, rng: MaskRng) -> Self {
        let [seed_lo, seed_hi] = rng.seed_words();
        Params {
            images: images as u32,
            patches: patches as u32,
            seed_lo,
            seed_hi,
            step: rng.step,
            first_image: rng.first_image,
            ..Default::default()
        }
    }
}

/// A batch of CLIP-normalised images on the GPU, [images, 3, height, width]; the `rgb` features
/// un-normalise inside the feature kernel, so the batch is uploaded once.
#[derive(Clone, Copy)]
pub struct GpuImages<'a> {
    pub pixels: &'a GpuBuf,
    pub images: usize,
    pub height: usize,
    pub width: usize,
    pub patch: usize,
}

impl GpuImages<'_> {
    pub fn patches(&self) -> usize {
        super::patch_grid(self.height, self.width, self.patch).2
    }
}

/// Patch tokens (patch embeddings + positions) mixed into the similarity (M3.7).
#[derive(Clone, Copy)]
pub struct GpuEmbedding<'a> {
    /// [images, tokens_per_image, dim]; patch j of an image is token `first_patch + j`.
    pub tokens: &'a GpuBuf,
    pub tokens_per_image: usize,
    /// 1 when the class token comes first.
    pub first_patch: usize,
    pub dim: usize,
    /// Training progress w in [0, 1].
    pub weight: f32,
}

/// One batch's cluster mask, on the GPU (read it with [`GpuMask::read`]).
pub struct GpuMask {
    pub images: usize,
    pub patches: usize,
    pub anchor_count: usize,
    /// [images, anchor_count], each row ascending.
    pub anchors: GpuBuf,
    /// [images, patches]: 1 where the clusters cover the patch.
    pub masked: GpuBuf,
    /// [1]: the batch keep count k (M3.4).
    pub keep_count: GpuBuf,
    /// [images, k] rows, ascending, at the front of an [images, patches] buffer.
    pub kept: GpuBuf,
}

/// The shader's buffer list, bindings 1..=8, passed whole to every dispatch.
fn check_patches(patches: usize) -> Result<(), MaskError> {
    if patches == 0 || patches > MAX_GPU_PATCHES {
        return Err(MaskError::Shape(format!(
            "{patches} patches per image; the GPU kernels take 1 to {MAX_GPU_PATCHES}"
        )));
    }
    Ok(())
}

fn check_images(images: usize) -> Result<(), MaskError> {
    if images == 0 || images > MAX_GROUPS_PER_DIM as usize {
        return Err(MaskError::Shape(format!(
            "{images} images; the GPU kernels take 1 to 65535"
        )));
    }
    Ok(())
}

/// Records cluster masking (M3.1–M3.4, M3.7) of `batch` into the step's encoder.
pub fn cluster_mask_gpu(
    gpu: &Gpu,
    batch: &GpuImages,
    embedding: Option<&GpuEmbedding>,
    config: &ClusterMaskConfig,
    rng: MaskRng,
) -> Result<GpuMask, MaskError> {
    config.validate()?;
    let (n, p) = (batch.images, batch.patch);
    if p == 0 || p > batch.height || p > batch.width {
        return Err(MaskError::Shape(format!(
            "patch size {p} does not fit a {}x{} image",
            batch.height, batch.width
        )));
    }
    if batch.pixels.len() != n * 3 * batch.height * batch.width {
        return Err(MaskError::Shape(format!(
            "{} pixels for {n} images of 3x{}x{}",
            batch.pixels.len(),
            batch.height,
            batch.width
        )));
    }
    let l = batch.patches();
    check_patches(l)?;
    check_images(n)?;
    let anchor_count = config.anchor_count(l);
    let bounds = config.keep_bounds(l);
    let mut params = Params {
        height: batch.height as u32,
        width: batch.width as u32,
        patch_size: p as u32,
        grid_cols: (batch.width / p) as u32,
        anchors: anchor_count as u32,
        keep_floor: bounds.floor as u32,
        keep_cap: bounds.cap as u32,
        threshold: config.threshold,
        ..Params::new(n, l, rng)
    };
    let transform = super::features::pixel_transform(config.features);
    [params.scale_r, params.scale_g, params.scale_b] = transform.map(|(scale, _)| scale);
    [params.shift_r, params.shift_g, params.shift_b] = transform.map(|(_, shift)| shift);
    let embedding = match embedding {
        Some(e) => {
            if e.dim == 0
                || e.first_patch + l > e.tokens_per_image
                || e.tokens.len() != n * e.tokens_per_image * e.dim
                || !(0.0..=1.0).contains(&e.weight)
            {
                return Err(MaskError::Shape(format!(
                    "embedding tokens: {} values for {n} images x {} tokens x {} dims, patches \
                     from token {}, weight {}",
                    e.tokens.len(),
                    e.tokens_per_image,
                    e.dim,
                    e.first_patch,
                    e.weight
                )));
            }
            params.embed_dim = e.dim as u32;
            params.embed_tokens = e.tokens_per_image as u32;
            params.embed_first = e.first_patch as u32;
            params.embed_weight = e.weight;
            Some((e.tokens.clone(), gpu.alloc(n * l * e.dim)))
        }
        None => None,
    };
    let pixel_features = gpu.alloc(n * l * 3 * p * p);
    let anchors = gpu.alloc(n * anchor_count);
    let masked = gpu.alloc(n * l);
    let keep_count = gpu.alloc(1);
    let kept = gpu.alloc(n * l);
    let shader = shader();
    let per_patch = |entry: &str, buffers: &[Binding]| {
        gpu.dispatch_linear(&gpu.kernel(&shader, entry), &params, buffers, n * l);
    };
    let per_image = |entry: &str, buffers: &[Binding]| {
        let groups = [n as u32, 1, 1];
        gpu.dispatch(&gpu.kernel(&shader, entry), &params, buffers, groups);
    };
    per_patch(
        "patch_features",
        &[
            ("images", batch.pixels),
            ("pixel_features", &pixel_features),
        ],
    );
    if let Some((tokens, embed_features)) = &embedding {
        per_patch(
            "embedding_features",
            &[("embeddings", tokens), ("embed_features", embed_features)],
        );
    }
    per_image("select_anchors", &[("anchors", &anchors)]);
    let flags = [
        ("pixel_features", &pixel_features),
        ("anchors", &anchors),
        ("masked", &masked),
    ];
    match &embedding {
        Some((_, embed_features)) => per_patch(
            "cluster_flags_mixed",
            &[
                flags[0],
                flags[1],
                flags[2],
                ("embed_features", embed_features),
            ],
        ),
        None => per_patch("cluster_flags", &flags),
    }
    gpu.dispatch(
        &gpu.kernel(&shader, "keep_count"),
        &params,
        &[("masked", &masked), ("keep", &keep_count)],
        [1, 1, 1],
    );
    per_image(
        "select_kept",
        &[("masked", &masked), ("keep", &keep_count), ("kept", &kept)],
    );
    Ok(GpuMask {
        images: n,
        patches: l,
        anchor_count,
        anchors,
        masked,
        keep_count,
        kept,
    })
}

impl GpuMask {
    /// Blocking [`GpuMask::read_async`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(&self, gpu: &Gpu) -> Result<MaskResult, GpuError> {
        crate::gpu::block_on(self.read_async(gpu))
    }

    /// Reads the mask back (submits the step's encoder once).
    pub async fn read_async(&self, gpu: &Gpu) -> Result<MaskResult, GpuError> {
        let (n, l) = (self.images, self.patches);
        let [keep_count, kept, anchors, flags]: [Vec<u32>; 4] = gpu
            .read_many_u32_async(&[&self.keep_count, &self.kept, &self.anchors, &self.masked])
            .await?
            .try_into()
            .expect("one vector per buffer read");
        let keep_count = keep_count[0] as usize;
        let kept = kept[..n * keep_count].to_vec();
        let anchors = (0..n)
            .map(|i| anchors[i * self.anchor_count..(i + 1) * self.anchor_count].to_vec())
            .collect();
        let masked = flags
            .chunks_exact(l)
            .map(|f| (0..l as u32).filter(|&j| f[j as usize] != 0).collect())
            .collect();
        Ok(MaskResult::new(l, keep_count, kept, anchors, masked))
    }
}

/// Records FLIP random masking (M4): returns k and the kept indices [images, k], rows ascending.
pub fn random_mask_gpu(
    gpu: &Gpu,
    images: usize,
    patches: usize,
    mask_ratio: f64,
    rng: MaskRng,
) -> Result<(usize, GpuBuf), MaskError> {
    check_ratio("mask-ratio", mask_ratio)?;
    check_patches(patches)?;
    check_images(images)?;
    let keep_count = random_keep_count(patches, mask_ratio);
    let params = Params {
        random_keep: keep_count as u32,
        ..Params::new(images, patches, rng)
    };
    let kept = gpu.alloc(images * keep_count);
    let kernel = gpu.kernel(&shader(), "random_kept");
    gpu.dispatch(&kernel, &params, &[("kept", &kept)], [images as u32, 1, 1]);
    Ok((keep_count, kept))
}
