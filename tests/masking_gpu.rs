//! The masking kernels (`shaders/cluster_mask.wgsl`) against their CPU twins: same (seed, step),
//! same anchors, clusters, keep count and kept patches. Patches whose similarity lies within
//! 1e-5 of r may differ (f32 sums in another order); the inputs here have none, and the tests
//! assert that rather than assume it.

mod common;

use clusterclip::gpu::{Gpu, validate_wgsl};
use clusterclip::masking::{
    ClusterMaskConfig, ClusterScores, GpuEmbedding, GpuImages, MAX_GPU_PATCHES, MaskFeatures,
    MaskResult, MaskRng, PatchFeatures, cluster_mask, cluster_mask_gpu, embedding_features,
    patch_features_of, random_mask, random_mask_gpu,
};
use common::{Rng, gpu};

const SHADER: &str = include_str!("../shaders/cluster_mask.wgsl");

/// Similarities closer than this to r may land on either side on the GPU (f32 dot products of
/// up to 3p² = 768 unit-scale terms in another order differ by ~1e-6).
const BORDER: f32 = 1e-5;

#[test]
fn shader_validates_and_agrees_with_the_rust_constants() {
    let (module, _) = validate_wgsl("cluster_mask", SHADER).unwrap_or_else(|e| panic!("{e}"));
    let constant = |name: &str| -> u32 {
        let (_, c) = module
            .constants
            .iter()
            .find(|(_, c)| c.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no const {name}"));
        match module.global_expressions[c.init] {
            naga::Expression::Literal(naga::Literal::U32(v)) => v,
            ref other => panic!("{name} = {other:?}"),
        }
    };
    assert_eq!(constant("MAX_PATCHES") as usize, MAX_GPU_PATCHES);
    let (_, flat) = module
        .constants
        .iter()
        .find(|(_, c)| c.name.as_deref() == Some("FLAT_VARIANCE"))
        .expect("const FLAT_VARIANCE");
    assert!(matches!(
        module.global_expressions[flat.init],
        naga::Expression::Literal(naga::Literal::F32(v)) if v == clusterclip::masking::FLAT_VARIANCE
    ));
    assert_eq!(constant("UNIFORM_BITS"), clusterclip::masking::UNIFORM_BITS);
    let workgroup_bytes: u32 = module
        .global_variables
        .iter()
        .filter(|(_, g)| g.space == naga::AddressSpace::WorkGroup)
        .map(|(_, g)| module.types[g.ty].inner.size(module.to_ctx()))
        .sum();
    // Every entry point together stays within WebGPU's 16 KiB of workgroup memory.
    assert!(workgroup_bytes <= 16 * 1024, "{workgroup_bytes} bytes");
}

/// Runs both twins on one batch and returns (cpu, gpu, number of borderline patches).
fn both(
    gpu: &Gpu,
    images: &[f32],
    (n, h, w, p): (usize, usize, usize, usize),
    embedding: Option<(&[f32], usize, usize, f32)>,
    config: &ClusterMaskConfig,
    rng: MaskRng,
) -> (MaskResult, MaskResult, usize) {
    let l = (h / p) * (w / p);
    let pixels = patch_features_of(images, n, h, w, p, config.features);
    let mut input = PatchFeatures::new(&pixels, n, l).unwrap();
    // CPU twin of the embedding: the patch tokens without the class token.
    let emb_cpu: Vec<f32> = embedding
        .map(|(tokens, tokens_per_image, dim, _)| {
            let patch_tokens: Vec<f32> = tokens
                .chunks_exact(tokens_per_image * dim)
                .flat_map(|image| image[(tokens_per_image - l) * dim..].iter().copied())
                .collect();
            embedding_features(&patch_tokens, dim)
        })
        .unwrap_or_default();
    if let Some((_, _, _, weight)) = embedding {
        input = input.with_embedding(&emb_cpu, weight).unwrap();
    }
    let cpu = cluster_mask(&input, config, rng).unwrap();
    let scores = ClusterScores::compute(&input, rng, config.anchor_count(l));
    let borderline = scores
        .nearest_anchor
        .iter()
        .filter(|&&s| (s - config.threshold).abs() <= BORDER)
        .count();

    let pixels_gpu = gpu.upload_f32(images);
    let batch = GpuImages {
        pixels: &pixels_gpu,
        images: n,
        height: h,
        width: w,
        patch: p,
    };
    let tokens_gpu = embedding.map(|(tokens, _, _, _)| gpu.upload_f32(tokens));
    let emb_gpu = embedding.map(|(_, tokens_per_image, dim, weight)| GpuEmbedding {
        tokens: tokens_gpu.as_ref().unwrap(),
        tokens_per_image,
        first_patch: tokens_per_image - l,
        dim,
        weight,
    });
    let mask = cluster_mask_gpu(gpu, &batch, emb_gpu.as_ref(), config, rng).unwrap();
    let on_gpu = mask.read(gpu).unwrap();
    (cpu, on_gpu, borderline)
}

fn assert_same_mask(what: &str, cpu: &MaskResult, on_gpu: &MaskResult, borderline: usize) {
    assert_eq!(
        borderline, 0,
        "{what}: the input should have no borderline similarity"
    );
    assert_eq!(on_gpu.anchors, cpu.anchors, "{what}: anchors");
    assert_eq!(on_gpu.masked, cpu.masked, "{what}: cluster flags");
    assert_eq!(on_gpu.keep_count, cpu.keep_count, "{what}: keep count");
    assert_eq!(on_gpu.kept, cpu.kept, "{what}: kept patches");
}

/// Smooth random images [n, 3, h, w] plus pixel noise (neighbouring patches correlate).
fn smooth_images(rng: &mut Rng, n: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * 3 * h * w);
    for _ in 0..n * 3 {
        let (fy, fx, phase) = (rng.signed() * 0.5, rng.signed() * 0.5, rng.signed() * 3.0);
        for y in 0..h {
            for x in 0..w {
                out.push((fy * y as f32 + fx * x as f32 + phase).sin() + 0.3 * rng.signed());
            }
        }
    }
    out
}

#[test]
fn gpu_cluster_mask_equals_the_cpu_twin_on_random_smooth_and_flat_images() {
    let gpu = gpu();
    let mut rng = Rng::new(41);
    // 7 x 5 patches of 4 x 4 (an image width that is not a multiple of the patch: 22).
    let shape = (6, 28, 22, 4);
    let noise = rng.vec(6 * 3 * 28 * 22);
    let smooth = smooth_images(&mut rng, 6, 28, 22);
    let mut mixed = smooth.clone();
    mixed[..3 * 28 * 22].fill(0.25); // one flat image in the batch
    let configs = [
        ClusterMaskConfig {
            anchor_ratio: 0.1,
            threshold: 0.3,
            ..Default::default()
        },
        ClusterMaskConfig {
            anchor_ratio: 0.2,
            threshold: 0.6,
            min_mask_ratio: 0.5,
            max_mask_ratio: 0.8,
            ..Default::default()
        },
        ClusterMaskConfig {
            anchor_ratio: 0.1,
            threshold: 0.3,
            features: MaskFeatures::Rgb, // un-normalised inside the feature kernel (M3.1)
            ..Default::default()
        },
    ];
    let mut keep_counts = std::collections::BTreeSet::new();
    for (name, images) in [("noise", &noise), ("smooth", &smooth), ("one flat", &mixed)] {
        for (i, config) in configs.iter().enumerate() {
            let seed = MaskRng::new(0x1234_5678_9abc_def0 + i as u64, 17);
            let (cpu, on_gpu, borderline) = both(&gpu, images, shape, None, config, seed);
            assert_same_mask(&format!("{name}, config {i}"), &cpu, &on_gpu, borderline);
            keep_counts.insert(cpu.keep_count);
        }
    }
    // The cases cover the cap (24 = floor(35 · 0.7)), the floor (4 = ceil(35 · 0.1)) and the
    // fewest-unmasked rule in between, where masked patches are restored.
    assert!(
        keep_counts.contains(&24) && keep_counts.contains(&4) && keep_counts.len() >= 4,
        "{keep_counts:?}"
    );
}

#[test]
fn gpu_cluster_mask_with_embedding_mix_equals_the_cpu_twin() {
    let gpu = gpu();
    let mut rng = Rng::new(43);
    let (n, h, w, p, dim) = (4, 24, 24, 6, 20); // 16 patches of 6 x 6 (108 values)
    let images = smooth_images(&mut rng, n, h, w);
    let tokens_per_image = 1 + 16; // class token first
    let tokens = rng.vec(n * tokens_per_image * dim);
    let config = ClusterMaskConfig {
        anchor_ratio: 0.15,
        threshold: 0.25,
        ..Default::default()
    };
    for (step, weight) in [(0, 0.0), (1, 0.35), (2, 1.0)] {
        let embedding = Some((&tokens[..], tokens_per_image, dim, weight));
        let (cpu, on_gpu, borderline) = both(
            &gpu,
            &images,
            (n, h, w, p),
            embedding,
            &config,
            MaskRng::new(5, step),
        );
        assert_same_mask(&format!("weight {weight}"), &cpu, &on_gpu, borderline);
    }
}

#[test]
fn gpu_random_mask_equals_the_cpu_twin() {
    let gpu = gpu();
    for (n, l, ratio, seed) in [
        (3, 49, 0.5, 1u64),
        (5, 196, 0.75, u64::MAX),
        (1, 1024, 0.3, 77),
    ] {
        let rng = MaskRng::new(seed, 9);
        let cpu = random_mask(n, l, ratio, rng).unwrap();
        let (keep_count, kept) = random_mask_gpu(&gpu, n, l, ratio, rng).unwrap();
        assert_eq!(keep_count, cpu.keep_count);
        assert_eq!(gpu.read_u32(&kept).unwrap(), cpu.kept, "N {n}, L {l}");
    }
}

#[test]
fn gpu_masking_refuses_shapes_it_cannot_hold() {
    let gpu = gpu();
    let pixels = gpu.alloc(3 * 132 * 132);
    let batch = GpuImages {
        pixels: &pixels,
        images: 1,
        height: 132,
        width: 132,
        patch: 4,
    };
    let config = ClusterMaskConfig::default();
    let err = cluster_mask_gpu(&gpu, &batch, None, &config, MaskRng::new(0, 0))
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "mask input shape: 1089 patches per image; the GPU kernels take 1 to 1024"
    );
    let short = GpuImages { images: 2, ..batch };
    assert!(cluster_mask_gpu(&gpu, &short, None, &config, MaskRng::new(0, 0)).is_err());
    assert!(random_mask_gpu(&gpu, 2, 49, 1.0, MaskRng::new(0, 0)).is_err());
}

#[test]
fn gpu_cluster_mask_equals_the_cpu_twin_on_built_in_images() {
    let gpu = gpu();
    let (n, size, p) = (8, 64, 8); // the tiny preset's input: L = 64
    let mut images = vec![0.0f32; n * 3 * size * size];
    for (i, image) in images.chunks_exact_mut(3 * size * size).enumerate() {
        let sample = clusterclip::data::shapes::train_sample(7, i as u64, size);
        clusterclip::data::image_ops::normalise_rgb(&sample.rgb, size, image);
    }
    for features in [MaskFeatures::Normalized, MaskFeatures::Rgb] {
        let config = ClusterMaskConfig {
            anchor_ratio: 0.05,
            features,
            ..Default::default()
        };
        let mut masked = 0;
        for step in 0..3 {
            let (cpu, on_gpu, borderline) = both(
                &gpu,
                &images,
                (n, size, size, p),
                None,
                &config,
                MaskRng::new(11, step),
            );
            let what = format!("shapes, {features}, step {step}");
            assert_same_mask(&what, &cpu, &on_gpu, borderline);
            masked += cpu.masked.iter().map(Vec::len).sum::<usize>();
        }
        eprintln!("{features}: {masked} patches covered in 3 batches of {n}");
    }
}
