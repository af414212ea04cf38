//! `clusterclip mask`: JSON and picture of one mask, and one clear error line for bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("clusterclip-mask-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `width` x `height` PNG: left third reddish, the rest bluish, with a seeded per-pixel
/// texture so no patch is flat.
fn write_two_colour_png(path: &Path, width: u32, height: u32, seed: u64) {
    let mut state = seed | 1;
    let image = image::RgbImage::from_fn(width, height, |x, _| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let texture = (state % 24) as u8;
        if x < width / 3 {
            image::Rgb([200 + texture, 40 + texture, 30])
        } else {
            image::Rgb([30, 60 + texture, 190 + texture])
        }
    });
    image.save(path).unwrap();
}

fn run(args: &[&str]) -> (bool, String, String) {
    // Says once which adapter the binary's choice lands on (the same choice as in this process).
    let _ = common::gpu();
    let output = Command::new(env!("CARGO_BIN_EXE_clusterclip"))
        .arg("mask")
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

fn indices(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

#[test]
fn cluster_mask_json_and_picture() {
    let dir = temp_dir("cluster");
    let (a, b, out) = (dir.join("a.png"), dir.join("b.png"), dir.join("mask.png"));
    write_two_colour_png(&a, 96, 64, 1); // resized to 48 x 32, centre-cropped to 32 x 32
    write_two_colour_png(&b, 40, 40, 2);
    let common = [
        "--image-size",
        "32",
        "--patch-size",
        "4",
        "--anchor-ratio",
        "0.05",
        "--seed",
        "3",
    ];
    let args: Vec<&str> = [
        "--image",
        a.to_str().unwrap(),
        "--image",
        b.to_str().unwrap(),
        "--json",
    ]
    .into_iter()
    .chain(common)
    .chain(["--out", out.to_str().unwrap()])
    .collect();
    let (ok, stdout, stderr) = run(&args);
    assert!(ok, "{stderr}");
    let json: Value = serde_json::from_str(&stdout).unwrap();
    let masks = json.as_array().expect("a list for two images");
    assert_eq!(masks.len(), 2);
    let keep_count = masks[0]["keep_count"].as_u64().unwrap();
    for mask in masks {
        assert_eq!(mask["patches"], 64);
        assert_eq!(
            mask["keep_count"].as_u64().unwrap(),
            keep_count,
            "one k per batch (M3.4)"
        );
        let (anchors, masked, kept) = (
            indices(&mask["anchors"]),
            indices(&mask["masked"]),
            indices(&mask["kept"]),
        );
        assert_eq!(anchors.len(), 4); // 64 - floor(60.8)
        assert!(anchors.iter().all(|a| masked.contains(a)));
        assert_eq!(kept.len() as u64, keep_count);
        assert!(kept.windows(2).all(|w| w[0] < w[1]) && kept.iter().all(|&j| j < 64));
        let ratio = mask["mask_ratio"].as_f64().unwrap();
        assert!((ratio - (1.0 - keep_count as f64 / 64.0)).abs() < 1e-6);
        // Two colours: the clusters cover whole colour regions, so far more than the anchors.
        assert!(masked.len() >= 16, "{masked:?}");
    }
    // Panels scaled 8x (nearest neighbour) to 256 px: every 8 x 8 block is one input pixel.
    let picture = image::open(&out).unwrap().into_rgb8();
    assert_eq!(picture.dimensions(), (2 * 256 + 8, 2 * 256 + 8));
    for (bx, by) in [(0, 0), (13, 7), (31, 31)] {
        let corner = picture.get_pixel(bx * 8, by * 8);
        for (dx, dy) in [(7, 0), (0, 7), (5, 3), (7, 7)] {
            assert_eq!(picture.get_pixel(bx * 8 + dx, by * 8 + dy), corner);
        }
    }
    // The same seed gives the same mask.
    let (_, again, _) = run(&args);
    assert_eq!(again, stdout);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn random_strategy_and_threshold_calibration() {
    let dir = temp_dir("random");
    let a = dir.join("a.png");
    write_two_colour_png(&a, 48, 48, 5);
    let image = a.to_str().unwrap();
    let sizes = ["--image-size", "48", "--patch-size", "8"]; // L = 36
    let random: Vec<&str> = [
        "--image",
        image,
        "--json",
        "--strategy",
        "random",
        "--mask-ratio",
        "0.75",
    ]
    .into_iter()
    .chain(sizes)
    .collect();
    let (ok, stdout, stderr) = run(&random);
    assert!(ok, "{stderr}");
    let json: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["keep_count"], 9); // round(36 * 0.25)
    assert_eq!(indices(&json["masked"]).len(), 27);
    // `--strategy` is the hidden old name of `--mask`.
    let renamed: Vec<&str> = random
        .iter()
        .map(|a| if *a == "--strategy" { "--mask" } else { a })
        .collect();
    assert_eq!(run(&renamed).1, stdout);

    let auto: Vec<&str> = [
        "--image",
        image,
        "--json",
        "--threshold",
        "auto",
        "--target-mask-ratio",
        "0.5",
    ]
    .into_iter()
    .chain(sizes)
    .collect();
    let (ok, stdout, stderr) = run(&auto);
    assert!(ok, "{stderr}");
    assert!(stderr.starts_with("threshold auto: r = "), "{stderr}");
    let json: Value = serde_json::from_str(&stdout).unwrap();
    let threshold = json["threshold"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&threshold));
    // Calibration reports the ratio the mask realises, 1 - k/L (M3.6).
    let reported: f64 = stderr
        .split("realised mask ratio ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        (reported - json["mask_ratio"].as_f64().unwrap()).abs() < 1e-4,
        "{stderr}"
    );
    assert_realised_ratio_near(&json, 36, 0.5);
    std::fs::remove_dir_all(dir).unwrap();
}

/// The realised mask ratio 1 − k/L of a `mask --json` result lands within 0.02 of `target`
/// (M3.6 calibrates r so the encoder sees the targeted share of patches).
fn assert_realised_ratio_near(json: &Value, patches: u64, target: f64) {
    let first = json.as_array().map_or(json, |list| &list[0]);
    let keep_count = first["keep_count"].as_u64().unwrap();
    let realised = first["mask_ratio"].as_f64().unwrap();
    assert!(
        (realised - (1.0 - keep_count as f64 / patches as f64)).abs() < 1e-6,
        "mask_ratio {realised} is not 1 - {keep_count}/{patches}"
    );
    assert!(
        (realised - target).abs() <= 0.02,
        "realised mask ratio {realised} (k = {keep_count} of {patches}), target {target}"
    );
}

/// With several images one k serves the batch (M3.4), so calibrating the clusters' mean
/// coverage would miss the realised ratio (coverage 0.50 gave k = 12 of 36, a ratio of 0.67).
#[test]
fn threshold_auto_lands_the_realised_ratio_of_a_batch_near_its_target() {
    let dir = temp_dir("auto-batch");
    let (a, b) = (dir.join("a.png"), dir.join("b.png"));
    write_two_colour_png(&a, 48, 48, 5);
    write_two_colour_png(&b, 40, 40, 2);
    for target in ["0.4", "0.5"] {
        let args = [
            "--image",
            a.to_str().unwrap(),
            "--image",
            b.to_str().unwrap(),
            "--json",
            "--threshold",
            "auto",
            "--target-mask-ratio",
            target,
            "--image-size",
            "48",
            "--patch-size",
            "8",
        ];
        let (ok, stdout, stderr) = run(&args);
        assert!(ok, "{stderr}");
        let json: Value = serde_json::from_str(&stdout).unwrap();
        assert_realised_ratio_near(&json, 36, target.parse().unwrap());
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_input_gives_one_clear_error_line() {
    let dir = temp_dir("bad");
    let (good, text, tiny) = (
        dir.join("good.png"),
        dir.join("notes.png"),
        dir.join("tiny.png"),
    );
    write_two_colour_png(&good, 32, 32, 9);
    std::fs::write(&text, "not an image").unwrap();
    write_two_colour_png(&tiny, 12, 20, 9);
    let missing = dir.join("missing.png");
    let path = |p: &PathBuf| p.to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--image".into(), path(&missing)],
            format!("{}: image file missing", missing.display()),
        ),
        // A device is read only up to the data readers' cap, never whole (issue 10).
        (
            vec!["--image".into(), "/dev/zero".into()],
            "/dev/zero: image file /dev/zero is over the 64 MiB cap per image".into(),
        ),
        (
            vec!["--image".into(), path(&text)],
            format!("{}: image does not decode", text.display()),
        ),
        (
            vec!["--image".into(), path(&tiny)],
            format!(
                "{}: 12x20 pixels is smaller than one 16x16 patch",
                tiny.display()
            ),
        ),
        (
            vec![
                "--image".into(),
                path(&good),
                "--anchor-ratio".into(),
                "1".into(),
            ],
            "--anchor-ratio 1 is outside [0, 1)".into(),
        ),
        (
            vec![
                "--image".into(),
                path(&good),
                "--min-mask-ratio".into(),
                "0.7".into(),
                "--max-mask-ratio".into(),
                "0.6".into(),
            ],
            "--min-mask-ratio 0.7 is above --max-mask-ratio 0.6".into(),
        ),
        (
            vec![
                "--image".into(),
                path(&good),
                "--strategy".into(),
                "random".into(),
                "--mask-ratio=-0.5".into(),
            ],
            "--mask-ratio -0.5 is outside [0, 1)".into(),
        ),
        (
            vec![
                "--image".into(),
                path(&good),
                "--threshold".into(),
                "auto".into(),
            ],
            "--threshold auto needs --target-mask-ratio".into(),
        ),
        (
            vec![
                "--image".into(),
                path(&good),
                "--threshold".into(),
                "auto".into(),
                "--target-mask-ratio".into(),
                "0.95".into(),
            ],
            "--target-mask-ratio 0.95 is outside [--min-mask-ratio 0.3, --max-mask-ratio 0.9]"
                .into(),
        ),
        (
            vec![
                "--image".into(),
                path(&good),
                "--mask".into(),
                "random".into(),
                "--threshold".into(),
                "auto".into(),
                "--target-mask-ratio".into(),
                "0.5".into(),
            ],
            "--threshold auto calibrates cluster masking, not --mask random".into(),
        ),
        (
            vec![
                "--image".into(),
                path(&good),
                "--target-mask-ratio".into(),
                "0.5".into(),
            ],
            "--target-mask-ratio needs --threshold auto".into(),
        ),
        (
            vec![
                "--image".into(),
                path(&good),
                "--image-size".into(),
                "100".into(),
            ],
            "--image-size 100 is not a positive multiple of --patch-size 16".into(),
        ),
    ];
    for (args, message) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, stdout, stderr) = run(&args);
        assert!(!ok && stdout.is_empty(), "{args:?} should fail");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!("error: {message}")),
            "{args:?}: {stderr}"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn preset_sizes_and_cluster_embed_with_an_initialised_model() {
    let dir = temp_dir("embed");
    let a = dir.join("a.png");
    write_two_colour_png(&a, 80, 64, 4);
    let image = a.to_str().unwrap();
    let (ok, stdout, stderr) = run(&["--image", image, "--preset", "tiny", "--json"]);
    assert!(ok, "{stderr}");
    let pixels: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(pixels["patches"], 64); // tiny: 64 px, 8 px patches
    let embed = [
        "--image",
        image,
        "--preset",
        "tiny",
        "--json",
        "--strategy",
        "cluster-embed",
    ];
    let at = |progress: &str| {
        let args: Vec<&str> = embed
            .iter()
            .copied()
            .chain(["--progress", progress])
            .collect();
        let (ok, stdout, stderr) = run(&args);
        assert!(ok, "{stderr}");
        serde_json::from_str::<Value>(&stdout).unwrap()
    };
    // Weight 0 is the pixel similarity alone (M3.7): the same mask as --strategy cluster.
    let (zero, full) = (at("0"), at("1"));
    assert_eq!(zero["masked"], pixels["masked"]);
    assert_eq!(zero["kept"], pixels["kept"]);
    assert_eq!(full["anchors"], pixels["anchors"]);
    assert_eq!(
        indices(&full["kept"]).len() as u64,
        full["keep_count"].as_u64().unwrap()
    );
    let (ok, _, stderr) = run(&["--image", image, "--strategy", "cluster-embed"]);
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        "error: --mask cluster-embed needs --preset or --checkpoint (M3.7)"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// `bench step --versus`: cluster masking pinned to both bounds ρ keeps exactly random masking's
/// k (M7), both strategies time in one run, and the ratio printed is the ratio of the medians.
#[test]
fn bench_step_compares_two_strategies_at_equal_compute() {
    let out = common::cli::clusterclip(&[
        "bench",
        "step",
        "--preset",
        "micro",
        "--batch-size",
        "2",
        "--repeats",
        "1",
        "--mask",
        "cluster",
        "--min-mask-ratio",
        "0.5",
        "--max-mask-ratio",
        "0.5",
        "--versus",
        "random",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["mask"], "cluster");
    assert_eq!(report["versus"]["mask"], "random");
    for side in [&report, &report["versus"]] {
        assert_eq!(side["mask_ratio"].as_f64(), Some(0.5), "{report}");
        let (step, mask) = (
            side["seconds_per_step"].as_f64().unwrap(),
            side["mask_seconds"].as_f64().unwrap(),
        );
        assert!(mask > 0.0 && mask < step, "{report}");
    }
    let ratio = report["ratio"].as_f64().unwrap();
    let expected = report["seconds_per_step"].as_f64().unwrap()
        / report["versus"]["seconds_per_step"].as_f64().unwrap();
    assert!((ratio - expected).abs() < 1e-12, "{report}");
    // Pinned to one keep count, the cluster mask's kept indices stay on the device: one submit
    // for mask and step, nothing read back (issue 15). So does an unpinned k, which the step
    // leaves on the device too, replaying a dispatch plan over k's range (src/gpu/plan.rs).
    assert_eq!(
        (&report["submits_per_step"], &report["host_reads_per_step"]),
        (&Value::from(1), &Value::from(0)),
        "{report}"
    );
    let unpinned = common::cli::clusterclip(&[
        "bench",
        "step",
        "--preset",
        "micro",
        "--batch-size",
        "2",
        "--repeats",
        "1",
        "--mask",
        "cluster",
        "--json",
    ]);
    let unpinned: Value = serde_json::from_slice(&unpinned.stdout).unwrap();
    assert_eq!(
        (
            &unpinned["submits_per_step"],
            &unpinned["host_reads_per_step"]
        ),
        (&Value::from(1), &Value::from(0)),
        "{unpinned}"
    );
    // Its realised ratio read after the timed step: 1 − k/L with k in the bounds 0.3 / 0.9.
    let realised = unpinned["mask_ratio"].as_f64().unwrap();
    assert!((0.3..=0.9).contains(&realised), "{unpinned}");

    let bad = common::cli::clusterclip(&["bench", "step", "--versus", "blocks"]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.trim().starts_with("error: --versus: --mask:") && stderr.lines().count() == 1,
        "{stderr}"
    );
}
