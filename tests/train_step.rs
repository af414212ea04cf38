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
    }
}

#[test]
fn one_full_step_is_equal_on_gpu_and_cpu() {
    let config = small_config();
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
    let mut results = Vec::new();
    for backend in [Backend::Cpu, Backend::Gpu(gpu())] {
        let clip = Clip::new(config.clone(), &backend, 3).unwrap();
        let adam = AdamWConfig {
            grad_clip_norm: Some(0.5),
            ..Default::default()
        };
        let mut trainer = Trainer::new(clip, backend.clone(), adam);
        let inputs = ClipInputs {
            images: &images,
            tokens: &tokens,
            batch,
            kept: Some(&kept),
        };
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
        results.push((first, second, trainer.clip.params.flat_host(&g)));
    }
    let (cpu, gpu) = (&results[0], &results[1]);
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
