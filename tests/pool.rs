//! The buffer pool in a steady state: a training step returns every buffer it takes, so the
//! pool's high-water mark (bytes and buffers held) stops moving after the first steps.

mod common;

use clusterclip::graph::Backend;
use clusterclip::masking::{MaskRng, random_mask};
use clusterclip::model::config::Activation;
use clusterclip::model::{Clip, ClipConfig, ClipInputs, TextConfig, VisionConfig};
use clusterclip::train::{AdamWConfig, Trainer};
use common::Rng;

const STEPS: u32 = 1000;
/// By this step every shape of the loop (masks differ per step, their sizes do not) has run.
const SETTLED_AT: u32 = 10;
/// The loss is read (and the step waited for) this often, as `train` does at its log interval;
/// the other steps are submitted without waiting.
const READ_EVERY: u32 = 100;

/// Every part of a CLIP (both towers, attention, MLP, projections) at one block each and a
/// width of 32: the same kernels and buffers as the presets, at a cost that lets 1,000 steps
/// run in a test (the nano preset at batch 4 took 127 s on lavapipe with 2 cores).
fn small_config() -> ClipConfig {
    ClipConfig {
        embed_dim: 32,
        vision: VisionConfig {
            image_size: 16,
            patch_size: 8,
            width: 32,
            layers: 1,
            heads: 2,
        },
        text: TextConfig {
            context_length: 8,
            vocab_size: 50,
            width: 32,
            layers: 1,
            heads: 2,
        },
        activation: Activation::Gelu,
    }
}

#[test]
fn the_pool_high_water_mark_stays_flat_over_1000_training_steps() {
    // A device of its own, so the counters are this test's alone; no NaN poisoning (speed).
    let gpu = common::fresh_gpu();
    gpu.set_poison(false);
    let backend = Backend::Gpu(gpu.clone());
    let config = small_config();
    let (batch, side) = (2, config.vision.image_size);
    let (context, vocab) = (config.text.context_length, config.text.vocab_size as u32);
    let patches = (side / config.vision.patch_size).pow(2);
    let mut rng = Rng::new(15);
    let images = rng.vec(batch * 3 * side * side);
    let tokens: Vec<u32> = (0..batch * context).map(|_| rng.below(vocab)).collect();
    let adam = AdamWConfig {
        grad_clip_norm: Some(1.0),
        ..Default::default()
    };
    let clip = Clip::new(config, &backend, 7).unwrap();
    let mut trainer = Trainer::new(clip, backend, adam);
    let mut settled = None;
    for step in 1..=STEPS {
        let mask = random_mask(batch, patches, 0.5, MaskRng::new(3, step)).unwrap();
        let inputs = ClipInputs::host(&images, &tokens, batch, Some(&mask.kept));
        let read_loss = step % READ_EVERY == 0;
        let report = trainer
            .step(std::slice::from_ref(&inputs), 1e-4, read_loss)
            .unwrap();
        if let Some(loss) = report.loss {
            assert!(loss.is_finite(), "step {step}: loss {loss}");
        }
        if step == SETTLED_AT {
            settled = Some(gpu.pool_stats());
        }
    }
    gpu.sync();
    let (settled, end) = (settled.unwrap(), gpu.pool_stats());
    assert!(settled.peak_bytes > 0 && settled.peak_buffers > 0);
    assert_eq!(
        (end.peak_bytes, end.peak_buffers, end.created),
        (settled.peak_bytes, settled.peak_buffers, settled.created),
        "pool peak bytes, peak buffers and buffers created: after step {STEPS} vs step \
         {SETTLED_AT}"
    );
}
