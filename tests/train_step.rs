//! The training step: one full step (forward, loss, backward, AdamW) equal on the GPU and the
//! CPU backend, and OpenCLIP's 10-step AdamW trajectory reproduced on the GPU.

mod common;

use std::path::Path;

use clusterclip::graph::Backend;
use clusterclip::model::reference::{Reference, rel_err};
use clusterclip::model::{Clip, ClipConfig, ClipInputs, TextConfig, VisionConfig};
use clusterclip::train::{AdamWConfig, Trainer};
use common::*;

fn small_config() -> ClipConfig {
    ClipConfig {
        embed_dim: 32,
        vision: VisionConfig {
            image_size: 24,
            patch_size: 8,
            width: 32,
            layers: 2,
            heads: 2,
        },
        text: TextConfig {
            context_length: 7,
            vocab_size: 50,
            width: 32,
            layers: 2,
            heads: 2,
        },
        activation: clusterclip::model::config::Activation::Gelu,
    }
}

/// `small_config` at width 6 (head_dim 3): layer norm rows, attention heads and AdamW's
/// parameter runs are not multiples of 4 long, so those kernels run their scalar forms.
fn odd_config() -> ClipConfig {
    let mut config = small_config();
    config.embed_dim = 10;
    for width in [&mut config.vision.width, &mut config.text.width] {
        *width = 6;
    }
    config
}

/// Two steps (forward, loss, backward, clipped AdamW) on `backend`: (first loss, second loss,
/// parameters after).
fn two_steps(backend: &Backend) -> (f32, f32, Vec<f32>) {
    two_steps_of(backend, small_config())
}

fn two_steps_of(backend: &Backend, config: ClipConfig) -> (f32, f32, Vec<f32>) {
    let batch = 5;
    let mut rng = Rng::new(11);
    let images = rng.vec(batch * 3 * 24 * 24);
    let tokens: Vec<u32> = (0..batch * 7)
        .map(|i| if i % 7 == 4 { 49 } else { rng.below(48) })
        .collect();
    // Three of the nine patches per image, one from each row, ascending.
    let kept: Vec<u32> = (0..batch)
        .flat_map(|i| [i % 3, 3 + (i + 1) % 3, 6 + (i + 2) % 3])
        .map(|j| j as u32)
        .collect();
    {
        let backend = backend.clone();
        let clip = Clip::new(config.clone(), &backend, 3).unwrap();
        let adam = AdamWConfig {
            grad_clip_norm: Some(0.5),
            ..Default::default()
        };
        let mut trainer = Trainer::new(clip, backend.clone(), adam);
        let inputs = ClipInputs::host(&images, &tokens, batch, Some(&kept));
        let first = trainer
            .step(std::slice::from_ref(&inputs), 1e-3, true)
            .unwrap()
            .loss
            .unwrap();
        let second = trainer
            .step(std::slice::from_ref(&inputs), 1e-3, true)
            .unwrap()
            .loss
            .unwrap();
        let g = clusterclip::Graph::new(backend.clone());
        (first, second, trainer.clip.params.flat_host(&g))
    }
}

#[test]
fn one_full_step_is_equal_on_gpu_and_cpu() {
    for config in [small_config(), odd_config()] {
        let cpu = &two_steps_of(&Backend::Cpu, config.clone());
        let gpu = &two_steps_of(&Backend::Gpu(gpu()), config);
        assert_steps_agree(cpu, gpu);
    }
}

fn assert_steps_agree(cpu: &(f32, f32, Vec<f32>), gpu: &(f32, f32, Vec<f32>)) {
    assert!(
        (cpu.0 - gpu.0).abs() < 1e-5 * cpu.0.abs(),
        "loss {} vs {}",
        cpu.0,
        gpu.0
    );
    assert!(
        (cpu.1 - gpu.1).abs() < 1e-4 * cpu.1.abs(),
        "loss after a step {} vs {}",
        cpu.1,
        gpu.1
    );
    assert!(
        cpu.1 < cpu.0,
        "the step should lower the loss on its own batch"
    );
    // Adam divides by sqrt(v): f32 rounding differences of ~1e-7 in tiny gradients move a
    // parameter by at most lr·(a few %), so compare the whole vector's relative error.
    let err = rel_err(&gpu.2, &cpu.2);
    assert!(err < 1e-5, "parameters after two steps differ by {err:.2e}");
}

#[test]
fn one_full_step_is_equal_with_the_hardware_gpu_matmul() {
    // Non-CPU adapters run every matmul on `matmul_tiled`; lavapipe runs it here on request.
    let tiled = fresh_gpu();
    tiled.set_tiled_matmul(true);
    let (cpu, gpu) = (two_steps(&Backend::Cpu), two_steps(&Backend::Gpu(tiled)));
    assert!(
        (cpu.0 - gpu.0).abs() < 1e-5 * cpu.0.abs(),
        "loss {} vs {}",
        cpu.0,
        gpu.0
    );
    let err = rel_err(&gpu.2, &cpu.2);
    assert!(err < 1e-5, "parameters after two steps differ by {err:.2e}");
}

#[test]
fn flat_buffers_larger_than_one_binding_are_split() {
    // A ViT-B/16's flat parameter, gradient and moment buffers (598 MB each) exceed WebGPU's
    // 128 MiB per binding; here a device that pretends to bind 64 KiB at most makes the small
    // model's ~220 KB buffers go through the same splitting.
    let split = fresh_gpu();
    split.set_binding_limit(Some(64 << 10));
    let limit = split.binding_limit_words();
    let total = Clip::new(small_config(), &Backend::Cpu, 3)
        .unwrap()
        .params
        .total;
    let chunks = split.binding_chunks(0, total);
    assert!(
        chunks.len() >= 3,
        "{total} words in {} chunks",
        chunks.len()
    );
    // Pieces tile the range in order, start binding-aligned views and each fits one binding.
    for offset in [0, 64, 100, 4095] {
        let pieces = split.binding_chunks(offset, 3 * limit + 17);
        let mut next = 0;
        for c in &pieces {
            assert_eq!(c.at, next);
            assert_eq!(c.view_offset + c.inner, offset + c.at);
            assert_eq!(c.view_offset % clusterclip::gpu::BINDING_ALIGN_WORDS, 0);
            assert_eq!(c.at % clusterclip::gpu::BINDING_ALIGN_WORDS, 0);
            assert!(c.inner + c.len <= limit, "{c:?} exceeds {limit}");
            next += c.len;
        }
        assert_eq!(next, 3 * limit + 17);
    }
    let whole = two_steps(&Backend::Gpu(gpu()));
    let pieces = two_steps(&Backend::Gpu(split.clone()));
    assert_eq!(whole.0, pieces.0, "first loss");
    // Only the clip norm's summation order differs (per-piece partial sums).
    let err = rel_err(&pieces.2, &whole.2);
    assert!(err < 1e-6, "parameters differ by {err:.2e} when split");
    // A tensor too large for one binding that no op splits fails naming the kernel and sizes.
    split.set_binding_limit(Some(1 << 10));
    let message = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        two_steps(&Backend::Gpu(split.clone()))
    }))
    .expect_err("a 1 KiB binding limit cannot hold the activations");
    let message = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("MiB per storage binding") && message.contains("--batch-size"),
        "{message}"
    );
}

/// Parameters after one step on 6 images given as `splits` micro-batches (e.g. [6] or [2, 4]).
fn step_in_micro_batches(backend: &Backend, splits: &[usize]) -> (f32, Vec<f32>) {
    let config = small_config();
    let batch: usize = splits.iter().sum();
    let mut rng = Rng::new(21);
    let image_len = 3 * 24 * 24;
    let images = rng.vec(batch * image_len);
    let tokens: Vec<u32> = (0..batch * 7)
        .map(|i| if i % 7 == 5 { 49 } else { rng.below(48) })
        .collect();
    let kept: Vec<u32> = (0..batch)
        .flat_map(|i| [i % 4, 4 + i % 5])
        .map(|j| j as u32)
        .collect();
    let clip = Clip::new(config, backend, 5).unwrap();
    let adam = AdamWConfig {
        grad_clip_norm: Some(1.0),
        ..Default::default()
    };
    let mut trainer = Trainer::new(clip, backend.clone(), adam);
    let mut first = 0;
    let micro: Vec<ClipInputs> = splits
        .iter()
        .map(|&n| {
            let range = first..first + n;
            first += n;
            ClipInputs::host(
                &images[range.start * image_len..range.end * image_len],
                &tokens[range.start * 7..range.end * 7],
                n,
                Some(&kept[range.start * 2..range.end * 2]),
            )
        })
        .collect();
    let loss = trainer.step(&micro, 1e-3, true).unwrap().loss.unwrap();
    let g = clusterclip::Graph::new(backend.clone());
    (loss, trainer.clip.params.flat_host(&g))
}

#[test]
fn micro_batches_make_one_contrastive_batch() {
    // OpenCLIP's --accum-freq: micro-batches of 2 + 4 images train exactly as one batch of 6
    // (every caption is a negative for every image), not as two averaged small batches.
    for backend in [Backend::Cpu, Backend::Gpu(gpu())] {
        let (loss_whole, whole) = step_in_micro_batches(&backend, &[6]);
        let (loss_split, split) = step_in_micro_batches(&backend, &[2, 4]);
        let (loss_three, three) = step_in_micro_batches(&backend, &[1, 2, 3]);
        assert!(
            (loss_whole - loss_split).abs() < 1e-6 * loss_whole.abs()
                && (loss_whole - loss_three).abs() < 1e-6 * loss_whole.abs(),
            "{}: loss {loss_whole} vs {loss_split} / {loss_three}",
            backend.name()
        );
        for (name, other) in [("2+4", &split), ("1+2+3", &three)] {
            let err = rel_err(other, &whole);
            assert!(
                err < 1e-5,
                "{}: {name} differs by {err:.2e}",
                backend.name()
            );
        }
        // The comparison means something: the step moved the parameters.
        let initial = Clip::new(small_config(), &backend, 5).unwrap();
        let g = clusterclip::Graph::new(backend.clone());
        let moved = rel_err(&whole, &initial.params.flat_host(&g));
        assert!(
            moved > 1e-4,
            "the step moved the parameters by only {moved:.2e}"
        );
    }
}

#[test]
fn reproduces_the_openclip_adamw_trajectory_on_the_gpu() {
    let prefix =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/openclip_tiny_golden");
    let reference = Reference::load(&prefix).unwrap();
    let args = clusterclip::cli::verify::VerifyArgs {
        prefix: prefix.clone(),
        trajectory: true,
        cpu: false,
        tolerance: 1e-4,
        param_tolerance: 1e-3,
        json: false,
        gpu: Default::default(),
    };
    let checks = clusterclip::cli::verify::verify(&reference, &Backend::Gpu(gpu()), &args).unwrap();
    let trajectory: Vec<_> = checks
        .iter()
        .filter(|c| c.name.starts_with("trajectory."))
        .collect();
    assert_eq!(
        trajectory
            .iter()
            .filter(|c| c.name.starts_with("trajectory.losses"))
            .count(),
        10
    );
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.passed())
        .map(|c| format!("{} {:.2e}", c.name, c.rel_err))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
}

/// A cluster mask pinned to one keep count (the study's equal-compute setting, M7) leaves its
/// kept indices on the device: mask and step are one submit with no read back (issue 15), and
/// the step trains exactly as with the same indices given from the host. Micro-batches cut the
/// stored images and indices on the device.
#[test]
fn a_pinned_cluster_mask_stays_on_the_gpu_and_trains_as_its_host_copy() {
    use clusterclip::masking::{ClusterMaskConfig, MaskRng, MaskStrategy};
    use clusterclip::model::Input;
    use clusterclip::train::mask_step::{StepMask, compute_mask};
    use clusterclip::train::step::split_inputs;

    // A device of its own, so the submit and read counters are this test's alone.
    let gpu = fresh_gpu();
    let backend = Backend::Gpu(gpu.clone());
    let config = small_config();
    let (batch, patches) = (5, 9);
    let mut rng = Rng::new(21);
    let images = rng.vec(batch * 3 * 24 * 24);
    let tokens: Vec<u32> = (0..batch * 7).map(|_| rng.below(50)).collect();
    let pinned = ClusterMaskConfig {
        min_mask_ratio: 0.6,
        max_mask_ratio: 0.6,
        ..Default::default()
    };
    for (strategy, micro) in [
        (MaskStrategy::Cluster(pinned), batch),
        (MaskStrategy::ClusterEmbed(pinned), 2),
    ] {
        let trainer = || {
            Trainer::new(
                Clip::new(config.clone(), &backend, 3).unwrap(),
                backend.clone(),
                AdamWConfig::default(),
            )
        };
        let (mut on_device, mut from_host) = (trainer(), trainer());
        gpu.sync();
        let (submits, reads) = (gpu.submit_count(), gpu.read_count());
        let uploaded = gpu.uploaded_bytes();
        let pixels = backend.upload(&images);
        let rng = MaskRng::new(4, 1);
        let mask = compute_mask(
            &on_device.clip,
            &backend,
            &strategy,
            &pixels,
            batch,
            rng,
            0.5,
        )
        .unwrap()
        .unwrap();
        // round(9 · 0.4) = 4 kept patches per image.
        assert_eq!((mask.keep_count(), mask.patches()), (Some(4), patches));
        let StepMask::Device { kept, .. } = &mask else {
            panic!("a pinned cluster mask came back to the host");
        };
        let whole = ClipInputs {
            images: Input::Stored(pixels),
            tokens: &tokens,
            batch,
            kept: Some(mask.kept()),
        };
        let inputs = split_inputs(&backend, whole, micro);
        on_device.step(&inputs, 1e-3, false).unwrap();
        gpu.sync();
        assert_eq!(
            (gpu.submit_count() - submits, gpu.read_count() - reads),
            (1, 0),
            "submits and reads of a masked step ({})",
            strategy.name()
        );
        // The images once (the mask, the embedding mask and the towers read one copy), then
        // only token ids and small index lists.
        let image_bytes = 4 * images.len() as u64;
        let uploaded = gpu.uploaded_bytes() - uploaded;
        assert!(
            (image_bytes..image_bytes + image_bytes / 4).contains(&uploaded),
            "{uploaded} bytes uploaded for {image_bytes} bytes of images ({})",
            strategy.name()
        );

        let kept = gpu.read_u32(kept.gpu()).unwrap();
        for row in kept.chunks(4) {
            assert!(
                row.windows(2).all(|w| w[0] < w[1]) && row[3] < 9,
                "kept row {row:?}"
            );
        }
        let host = ClipInputs::host(&images, &tokens, batch, Some(&kept));
        from_host
            .step(&split_inputs(&backend, host, micro), 1e-3, false)
            .unwrap();
        let g = clusterclip::Graph::new(backend.clone());
        let (a, b) = (
            on_device.clip.params.flat_host(&g),
            from_host.clip.params.flat_host(&g),
        );
        assert!(
            a == b,
            "parameters after a step differ ({})",
            strategy.name()
        );
    }
}

/// An unpinned cluster mask leaves k on the device too: the step replays a dispatch plan over
/// k's range (src/gpu/plan.rs), so mask and step are one submit with no read (issue 15). Its
/// gradients equal those of the step given the same k and indices from the host, for a k at
/// the cap, one inside the range and one at the floor, all replayed from one plan.
#[test]
fn an_unpinned_cluster_mask_keeps_k_on_the_gpu_and_trains_as_its_host_copy() {
    use clusterclip::masking::{ClusterMaskConfig, MaskRng, MaskStrategy};
    use clusterclip::model::Input;
    use clusterclip::train::mask_step::{StepMask, compute_mask_counted};

    let gpu = fresh_gpu();
    let backend = Backend::Gpu(gpu.clone());
    let (batch, patches) = (5, 9);
    let mut rng = Rng::new(22);
    let images = rng.vec(batch * 3 * 24 * 24);
    let tokens: Vec<u32> = (0..batch * 7).map(|_| rng.below(50)).collect();
    // Bounds 0.3 / 0.9: k in 1..=6 of 9 patches. With no cluster (threshold 1) the anchors
    // alone are masked: 1 of 9 keeps the cap, 5 of 9 keep 4; with every patch an anchor the
    // floor holds.
    let unpinned = |anchor_ratio, threshold| ClusterMaskConfig {
        anchor_ratio,
        threshold,
        ..Default::default()
    };
    let cases = [
        (unpinned(0.03, 1.0), 6),
        (unpinned(0.5, 1.0), 4),
        (unpinned(0.95, 0.0), 1),
    ];
    for embed in [false, true] {
        // lr 0: the parameters stay put, so every case's gradients compare on one model.
        let mut trainer = Trainer::new(
            Clip::new(small_config(), &backend, 5).unwrap(),
            backend.clone(),
            AdamWConfig::default(),
        );
        for (step, (config, expected_k)) in cases.iter().enumerate() {
            let strategy = match embed {
                false => MaskStrategy::Cluster(*config),
                true => MaskStrategy::ClusterEmbed(*config),
            };
            gpu.sync();
            let (submits, reads) = (gpu.submit_count(), gpu.read_count());
            let pixels = backend.upload(&images);
            let mask = compute_mask_counted(
                &trainer.clip,
                &backend,
                &strategy,
                &pixels,
                batch,
                MaskRng::new(9, step as u32),
                0.5,
            )
            .unwrap()
            .unwrap();
            let StepMask::Counted { keep, kept, .. } = &mask else {
                panic!("an unpinned cluster mask read k back");
            };
            assert_eq!((keep.floor, keep.cap, mask.patches()), (1, 6, patches));
            let inputs = ClipInputs {
                images: Input::Stored(pixels.clone()),
                tokens: &tokens,
                batch,
                kept: Some(mask.kept()),
            };
            trainer.step_counted(&inputs, keep, 0.0, false).unwrap();
            gpu.sync();
            assert_eq!(
                (gpu.submit_count() - submits, gpu.read_count() - reads),
                (1, 0),
                "submits and reads of a step on a device k ({})",
                strategy.name()
            );
            let on_device = gpu.read_f32(trainer.optimizer.grads.values.gpu()).unwrap();

            let k = gpu.read_u32(&keep.count).unwrap()[0] as usize;
            assert_eq!(k, *expected_k, "keep count ({})", strategy.name());
            let kept = gpu.read_u32(kept.gpu()).unwrap()[..batch * k].to_vec();
            let host = ClipInputs {
                images: Input::Stored(pixels),
                tokens: &tokens,
                batch,
                kept: Some(Input::Host(&kept)),
            };
            trainer.step(&[host], 0.0, false).unwrap();
            let from_host = gpu.read_f32(trainer.optimizer.grads.values.gpu()).unwrap();
            // The plan holds k-dependent kernel choices to their general forms (a scalar
            // softmax, the strided matmul): the same sums in another order.
            let scale = from_host.iter().fold(0f32, |m, g| m.max(g.abs()));
            let worst = on_device
                .iter()
                .zip(&from_host)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                scale > 0.0 && worst <= 1e-4 * scale,
                "k = {k}: gradients differ by {worst} (largest {scale}, {})",
                strategy.name()
            );
        }
    }
}
