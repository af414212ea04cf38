//! Images/s of whole training steps (mask, forward, loss, backward, AdamW) by masking strategy,
//! as `clusterclip bench step`: none, random (50%) and cluster for the tiny preset at batch 64
//! and the s16 preset at batch 8.
//!
//! `cargo bench --bench step [-- FILTER]` (FILTER matches "tiny", "s16" or a mask name); the
//! Last, "tiny equal": cluster masking pinned to k = L/2 (both mask-ratio bounds 0.5, both feature
//! modes) against random 50%, interleaved in one run, with the mask's share of the step (M7).
//! The adapter follows `CLUSTERCLIP_BACKEND` / `CLUSTERCLIP_ADAPTER`. On lavapipe the s16 runs take
//! a few minutes. `benches/pytorch_step.py` runs the same step in PyTorch for a ratio.

use clusterclip::cli::GpuArgs;
use clusterclip::cli::bench_model::{StepArgs, run_step};
use clusterclip::masking::{MaskFlags, MaskKind};

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    for (preset, batch, repeats) in [("tiny", 64, 3), ("s16", 8, 1)] {
        for mask in [MaskKind::None, MaskKind::Random, MaskKind::Cluster] {
            let name = format!("{preset} {mask}");
            if !filter.iter().all(|f| name.contains(f.as_str())) {
                continue;
            }
            let flags = MaskFlags {
                mask: mask.to_string(),
                ..MaskFlags::default()
            };
            let args = step_args(preset, batch, flags, repeats, None);
            if let Err(e) = run_step(args) {
                eprintln!("{name}: {e}");
                std::process::exit(1);
            }
        }
    }
    for features in ["normalized", "rgb"] {
        let name = format!("tiny equal {features}");
        if !filter.iter().all(|f| name.contains(f.as_str())) {
            continue;
        }
        let flags = MaskFlags {
            mask: MaskKind::Cluster.to_string(),
            min_mask_ratio: 0.5,
            max_mask_ratio: 0.5,
            mask_features: features.into(),
            ..MaskFlags::default()
        };
        let args = step_args("tiny", 64, flags, 5, Some(MaskKind::Random.to_string()));
        if let Err(e) = run_step(args) {
            eprintln!("{name}: {e}");
            std::process::exit(1);
        }
    }
}

/// `bench step`'s arguments on the default adapter, printed as text.
fn step_args(
    preset: &str,
    batch_size: usize,
    mask: MaskFlags,
    repeats: usize,
    versus: Option<String>,
) -> StepArgs {
    StepArgs {
        preset: preset.into(),
        batch_size,
        mask,
        repeats,
        versus,
        profile: false,
        json: false,
        gpu: GpuArgs {
            backend: None,
            adapter: None,
        },
    }
}
