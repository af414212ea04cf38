//! `clusterclip train` and `clusterclip eval` as a user runs them: a short run writes every file
//! of the run folder, resumes, and its checkpoint evaluates; bad flags give one error line.

mod common;

use std::path::Path;
use std::process::Output;

use clap::Parser;
use clusterclip::cli::train::TrainArgs;
use clusterclip::model::ClipConfig;
use clusterclip::train::run::{TrainConfig, default_eval_data};
use common::cli::{clusterclip, clusterclip_with_env, error_line, short_train, stderr, temp_dir};

#[derive(Parser)]
struct Train {
    #[command(flatten)]
    args: TrainArgs,
}

/// `clusterclip train` with no flags and `TrainConfig::new` hold the same settings, every one
/// (issue 14: one source per default), and they are the defaults the README measures with.
#[test]
fn train_flag_defaults_are_the_library_defaults() {
    let cli = Train::try_parse_from(["train"])
        .unwrap()
        .args
        .to_config()
        .unwrap();
    let model = ClipConfig::preset(TrainConfig::DEFAULT_MODEL).unwrap();
    let mut library = TrainConfig::new(TrainConfig::DEFAULT_MODEL, model);
    (library.val_data, library.zeroshot_data) = default_eval_data(&library.train_data);
    assert_eq!(cli.to_json(), library.to_json());
    // README: "tiny preset, cluster masking, builtin:shapes, batch 32, 4 × 50 steps", lr 1e-3
    // and 20 warm-up steps.
    assert_eq!(
        (
            cli.lr,
            cli.warmup,
            cli.batch_size,
            cli.epochs,
            cli.train_num_samples
        ),
        (1e-3, 20, 32, 4, 1600)
    );
    assert_eq!(
        (cli.model_name.as_str(), cli.mask.name()),
        ("tiny", "cluster")
    );
}

/// [`short_train`] over 2 epochs.
fn short_run(logs: &Path, extra: &[&str]) -> Output {
    short_train(logs, &[&["--epochs", "2"], extra].concat())
}

#[test]
fn train_writes_the_run_folder_resumes_and_evaluates() {
    let logs = temp_dir("smoke");
    let out = short_run(&logs, &["--steps", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = logs.join("smoke");
    let params: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("params.json")).unwrap()).unwrap();
    assert_eq!(params["batch_size"], 4);
    assert_eq!(params["mask"], "cluster");
    assert_eq!(params["total_steps"], 4);
    let log = std::fs::read_to_string(run.join("out.log")).unwrap();
    for needle in [
        "step 1/2",
        "img/s",
        "mask 0.",
        "lr ",
        "scale ",
        "eta ",
        "data wait",
    ] {
        assert!(log.contains(needle), "out.log lacks {needle:?}:\n{log}");
    }
    let results: Vec<serde_json::Value> = std::fs::read_to_string(run.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 1, "one evaluation at the end of the run");
    let r = &results[0];
    assert_eq!(
        (
            r["step"].as_u64(),
            r["epoch"].as_u64(),
            r["samples_seen"].as_u64()
        ),
        (Some(2), Some(1), Some(8))
    );
    let val = &r["metrics"]["val"];
    let r1 = val["image_retrieval_recall@1"].as_f64().unwrap();
    let r5 = val["image_retrieval_recall@5"].as_f64().unwrap();
    assert!(0.0 <= r1 && r1 <= r5 && r5 <= 1.0, "{val}");
    assert!(val["clip_val_loss"].as_f64().unwrap() > 0.0);
    assert!(
        r["metrics"].get("zeroshot").is_none(),
        "--zeroshot-data none"
    );
    // Each step's logged ratio is a realised 1 − k/L of whole patches (tiny: L = 64), with k
    // within the flags' bounds (M3.4: ceil(64 · 0.1) = 7 ≤ k ≤ floor(64 · 0.7) = 44), and the
    // evaluation record holds their mean.
    let keep_counts: Vec<f64> = logged_mask_ratios(&log)
        .into_iter()
        .map(|m| {
            let k = ((1.0 - m) * 64.0).round();
            assert!(
                // out.log prints 3 decimals: 0.3125 (k = 44) reads 0.312.
                (1.0 - k / 64.0 - m).abs() <= 5e-4 + 1e-9,
                "mask {m} is not 1 - k/64"
            );
            assert!(
                (7.0..=44.0).contains(&k),
                "k = {k} outside the flags' bounds"
            );
            k
        })
        .collect();
    assert_eq!(keep_counts.len(), 2, "{log}");
    let mean = keep_counts.iter().map(|k| 1.0 - k / 64.0).sum::<f64>() / 2.0;
    let ratio = r["mean_mask_ratio"].as_f64().unwrap();
    assert!(
        (ratio - mean).abs() < 1e-6,
        "mean_mask_ratio {ratio}, steps {keep_counts:?}"
    );
    let png = image::open(run.join("loss.png")).expect("loss.png decodes");
    assert!(png.width() > 0 && png.height() > 0);
    assert!(run.join("checkpoints/epoch_1.safetensors").exists());

    let out = short_run(&logs, &["--resume", "latest"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("resumed at step 2"),
        "{}",
        stderr(&out)
    );
    assert!(run.join("checkpoints/epoch_2.safetensors").exists());

    let checkpoint = run.join("checkpoints/epoch_latest.safetensors");
    let ck = checkpoint.to_str().unwrap();
    let out = clusterclip(&[
        "eval",
        "--checkpoint",
        ck,
        "--data",
        "builtin:shapes-zeroshot",
        "--task",
        "zeroshot",
        "--json",
        "--samples",
        "64",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["acc1", "acc5", "mean_per_class_recall"] {
        let v = json[key]
            .as_f64()
            .unwrap_or_else(|| panic!("no {key} in {json}"));
        assert!((0.0..=1.0).contains(&v), "{key} = {v}");
    }
    assert!(json["acc5"].as_f64() >= json["acc1"].as_f64());
    let out = clusterclip(&[
        "eval",
        "--checkpoint",
        ck,
        "--data",
        "builtin:shapes-test",
        "--task",
        "retrieval",
        "--json",
        "--samples",
        "16",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in [1, 5, 10] {
        for way in ["image", "text"] {
            let v = json[format!("{way}_retrieval_recall@{k}")]
                .as_f64()
                .unwrap();
            assert!((0.0..=1.0).contains(&v));
        }
    }
    assert!(
        json["image_retrieval_recall@10"].as_f64() >= json["image_retrieval_recall@1"].as_f64()
    );
    let _ = std::fs::remove_dir_all(&logs);
}

/// The `mask X` values of the progress lines in `out.log`.
fn logged_mask_ratios(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.starts_with("step "))
        .filter_map(|l| l.split(" | mask ").nth(1))
        .map(|rest| rest.split(' ').next().unwrap().parse().unwrap())
        .collect()
}

/// Random masking keeps k = round(L · (1 − --mask-ratio)) whole patches (M4) and logs the
/// realised 1 − k/L: tiny has L = 64, so --mask-ratio 0.3 keeps 45 and logs 0.297, not 0.300.
#[test]
fn random_masking_logs_the_realised_ratio_of_whole_patches() {
    let logs = temp_dir("random");
    let out = short_run(
        &logs,
        &[
            "--mask",
            "random",
            "--mask-ratio",
            "0.3",
            "--steps",
            "1",
            "--val-frequency",
            "0",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let log = std::fs::read_to_string(logs.join("smoke").join("out.log")).unwrap();
    let expected = 1.0 - 45.0 / 64.0;
    let ratios = logged_mask_ratios(&log);
    assert_eq!(ratios.len(), 1, "{log}");
    assert!(
        (ratios[0] - expected).abs() <= 5e-4,
        "mask {} logged",
        ratios[0]
    );
    let _ = std::fs::remove_dir_all(&logs);
}

/// Each bad setting fails at once, with one line that names its flag.
#[test]
fn bad_flags_give_one_error_line_naming_the_flag() {
    let logs = temp_dir("flags");
    let l = logs.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--min-mask-ratio", "0.8", "--max-mask-ratio", "0.5"],
            "--min-mask-ratio",
        ),
        (&["--batch-size", "0"], "--batch-size"),
        (&["--mask", "random", "--mask-ratio", "1.5"], "--mask-ratio"),
        (&["--anchor-ratio=-0.1"], "--anchor-ratio"),
        (&["--model", "huge"], "--model"),
        (&["--mask", "blocks"], "--mask"),
        (&["--threshold", "auto"], "--target-mask-ratio"),
        (&["--lr-scheduler", "linear"], "--lr-scheduler"),
        (&["--resume", "latest"], "--name"),
        (&["--name", ""], "--name"),
        (&["--name", "../escape"], "--name"),
        (
            &["--train-data", "/nonexistent/shards-{000..003}.tar"],
            "--train-data",
        ),
    ];
    for (flags, flag) in cases {
        let mut args = vec!["train", "--logs", l];
        args.extend_from_slice(flags);
        let out = clusterclip(&args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{flags:?} was accepted");
        let lines: Vec<&str> = err.lines().filter(|line| !line.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{flags:?}: expected one line, got:\n{err}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(flag),
            "{flags:?}: {err}"
        );
    }
    let out = clusterclip(&["eval", "--checkpoint", "/nonexistent.safetensors"]);
    assert!(
        !out.status.success() && stderr(&out).contains("--checkpoint"),
        "{}",
        stderr(&out)
    );
    let out = clusterclip(&["eval", "--checkpoint", "x", "--task", "caption"]);
    assert!(
        !out.status.success() && stderr(&out).contains("--task"),
        "{}",
        stderr(&out)
    );
    let _ = std::fs::remove_dir_all(&logs);
}

/// A batch whose activations exceed one storage binding runs as micro-batches of one contrastive
/// batch (a ViT-B/16 at batch 56+ on 128 MiB bindings); a model whose single image does not fit
/// fails with one line naming --model.
#[test]
fn batches_over_one_binding_run_as_micro_batches() {
    let logs = temp_dir("micro");
    let l = logs.to_str().unwrap();
    let args = [
        "train",
        "--batch-size",
        "8",
        "--steps",
        "2",
        "--logs",
        l,
        "--name",
        "micro",
        "--val-frequency",
        "0",
        "--zeroshot-frequency",
        "0",
        "--workers",
        "1",
    ];
    // The tiny preset's largest activation is 195 KiB per image: 800 kB bindings hold 4 images.
    let out = clusterclip_with_env(&args, &[("CLUSTERCLIP_MAX_BINDING_BYTES", "800000")]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("batch 8 runs as micro-batches of at most 4"),
        "{err}"
    );
    assert!(err.contains("done: step 2"), "{err}");
    // Evaluation batches shrink to fit the same bindings, with the same result.
    let checkpoint = logs.join("micro/checkpoints/epoch_latest.safetensors");
    let eval = [
        "eval",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--samples",
        "16",
    ];
    let split = clusterclip_with_env(&eval, &[("CLUSTERCLIP_MAX_BINDING_BYTES", "800000")]);
    let whole = clusterclip(&eval);
    assert!(split.status.success(), "{}", stderr(&split));
    let result = |out: &Output| {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find(|l| l.starts_with("zero-shot"))
            .map(str::to_string)
    };
    assert!(result(&split).is_some(), "{}", stderr(&split));
    assert_eq!(result(&split), result(&whole));
    // A new name: a new run refuses the folder of the first (issue 10).
    let mut args = args;
    args[args.iter().position(|&a| a == "micro").unwrap()] = "micro-too-small";
    let out = clusterclip_with_env(&args, &[("CLUSTERCLIP_MAX_BINDING_BYTES", "4096")]);
    let line = error_line(&out);
    assert!(
        line.starts_with("error: --model tiny") && line.contains("per storage binding"),
        "{line}"
    );
    let _ = std::fs::remove_dir_all(&logs);
}
