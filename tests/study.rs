//! `clusterclip study`: a 2 strategies × 2 ratios × 1 seed micro-grid of the micro preset runs in
//! seconds, writes one table row per (strategy, ratio) with the realised mask ratio each implies,
//! skips finished runs and resumes an unfinished one; bad grids give one error line.

mod common;

use clusterclip::graph::Backend;
use clusterclip::model::ClipConfig;
use clusterclip::study::{Arm, Grid, run_grid, write_report};
use clusterclip::train::run::TrainConfig;
use common::cli::{clusterclip, error_line, temp_dir};

fn base(logs: &std::path::Path) -> TrainConfig {
    let mut config = TrainConfig::new("micro", ClipConfig::preset("micro").unwrap());
    config.batch_size = 4;
    config.train_num_samples = 8;
    config.epochs = 1;
    config.warmup = 1;
    config.logs = logs.to_path_buf();
    config.val_data = Some("builtin:shapes-val".into());
    config.zeroshot_data = Some("builtin:shapes-zeroshot".into());
    config.eval_limit = Some(8);
    config.log_every_n_steps = 1;
    config
}

fn grid() -> Grid {
    Grid {
        arms: vec![Arm::Random, Arm::Cluster],
        ratios: vec![0.25, 0.5],
        features: vec!["rgb".into()],
        seeds: vec![7],
    }
}

#[test]
fn micro_grid_writes_one_row_per_setting_and_resumes() {
    let out = temp_dir("study");
    let backend = Backend::Gpu(common::gpu());
    let mut lines = Vec::new();
    let outcomes = run_grid(&base(&out), &grid(), &out, &backend, None, &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    assert_eq!(outcomes.len(), 4);
    assert!(lines.iter().all(|l| l.ends_with(": training")), "{lines:?}");
    // Equal compute (M7): random at ρ and cluster pinned at ρ keep the same count of the 64
    // patches, round(64 · (1 − ρ)): 48 and 32.
    for outcome in &outcomes {
        let rho = outcome.run.ratio.unwrap();
        let kept = (64.0 * (1.0 - rho)).round();
        assert!(
            (outcome.mean_mask_ratio - (1.0 - kept / 64.0)).abs() < 1e-9,
            "{}: realised {}",
            outcome.run.row(),
            outcome.mean_mask_ratio
        );
        assert_eq!(outcome.steps, 2);
        assert_eq!(outcome.samples_seen, 8);
        assert!(outcome.metrics["zeroshot"]["acc1"].is_number());
        assert_eq!(outcome.curve.len(), 1);
        // Mask content: random masking keeps about 1 − ρ of the patch contrast (32 images), an
        // unbiased sample.
        let content = outcome.content;
        assert!((content.kept - kept / 64.0).abs() < 1e-9, "{content:?}");
        if outcome.run.arm == Arm::Random {
            assert!(
                (content.kept_contrast - (1.0 - rho)).abs() < 0.08,
                "{content:?}"
            );
            assert!((content.kept_std_ratio() - 1.0).abs() < 0.15, "{content:?}");
        }
        assert!((0.0..=1.0).contains(&content.kept_plain), "{content:?}");
    }
    let report = write_report(&out, &outcomes, "micro").unwrap();
    let rows: Vec<&str> = report
        .table
        .lines()
        .filter(|l| l.starts_with("| random") || l.starts_with("| cluster"))
        .filter(|l| !l.contains(" − "))
        .collect();
    assert_eq!(rows.len(), 4, "{}", report.table);
    // With one seed the equal-compute comparison names no winner (M7 needs a std).
    let comparisons: Vec<&str> = report.table.lines().filter(|l| l.contains(" − ")).collect();
    // Two ρ × five metrics (no linear probe was asked for).
    assert_eq!(comparisons.len(), 2 * 5, "{}", report.table);
    assert!(
        comparisons
            .iter()
            .all(|l| l.ends_with("| one seed: no verdict |"))
    );
    assert!(
        rows[0].starts_with("| random ρ=0.25 | 1 | 0.250 |"),
        "{}",
        rows[0]
    );
    assert!(
        rows[3].starts_with("| cluster ρ=0.5 rgb | 1 | 0.500 |"),
        "{}",
        rows[3]
    );
    for file in [
        "study.md",
        "study.json",
        "metric_vs_step.png",
        "metric_vs_time.png",
    ] {
        assert!(out.join(file).metadata().unwrap().len() > 100, "{file}");
    }

    // A second pass skips every finished run; a run whose outcome is missing resumes from its
    // checkpoint (already at its last step) instead of starting over.
    let again = out.join("runs/cluster-r0.25-rgb-s7/study_run.json");
    std::fs::remove_file(&again).unwrap();
    let mut lines = Vec::new();
    let second = run_grid(&base(&out), &grid(), &out, &backend, None, &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    let skipped = lines
        .iter()
        .filter(|l| l.ends_with("finished before, skipped"))
        .count();
    assert_eq!(skipped, 3, "{lines:?}");
    assert!(
        lines[2].ends_with("cluster ρ=0.25 rgb seed 7: resuming"),
        "{lines:?}"
    );
    assert_eq!(second[2].steps, 2);
    assert!(again.exists());
}

#[test]
fn bad_grids_give_one_error_line() {
    let out = temp_dir("study-bad");
    let out = out.to_str().unwrap();
    for (flags, needle) in [
        (
            &["--strategies", "none,flip"][..],
            "--strategies: unknown strategy 'flip'",
        ),
        (
            &["--ratios", "0.5,1.0"][..],
            "--ratios: 1 is outside [0, 1)",
        ),
        (&["--ratios=-0.1"][..], "--ratios: -0.1 is outside [0, 1)"),
        (
            &["--ratios", "half"][..],
            "--ratios: 'half' is not a number",
        ),
        (&["--seeds", "a"][..], "--seeds: 'a' is not a seed"),
        (&["--feature-modes", "hsv"][..], "--feature-modes"),
    ] {
        let mut args = vec!["study", "--out", out, "--model", "micro"];
        args.extend_from_slice(flags);
        let line = error_line(&clusterclip(&args));
        assert!(line.contains(needle), "{flags:?}: {line}");
    }
}
