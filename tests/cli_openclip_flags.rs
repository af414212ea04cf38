//! OpenCLIP command lines run (issue 13, part 4): `--force-patch-dropout`,
//! `--save-most-recent` / `--delete-previous-checkpoint`, `--image-mean` / `--image-std`,
//! `--precision` and `--report-to`, each checked by its effect on a short tiny run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use clap::Parser;
use clusterclip::cli::train::TrainArgs;
use clusterclip::data::image_ops::Normalisation;
use clusterclip::data::loader::ReadOptions;
use clusterclip::eval::encode_images;
use clusterclip::eval::tasks::{BUILTIN_ZEROSHOT, zeroshot_set};
use clusterclip::graph::Backend;
use clusterclip::masking::MaskStrategy;
use clusterclip::train::checkpoint::load_model;
use clusterclip::train::tensorboard::{
    FILE_VERSION, crc32c, masked_crc32c, scalar_event, tensorboard_requested, tfrecord,
};
use common::cli::{clusterclip, error_line, short_train, stderr, temp_dir};

#[derive(Parser)]
struct Train {
    #[command(flatten)]
    args: TrainArgs,
}

fn params(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("params.json")).unwrap()).unwrap()
}

/// The lines of stderr that mention `--precision`.
fn precision_lines(out: &Output) -> Vec<String> {
    stderr(out)
        .lines()
        .filter(|l| l.contains("--precision"))
        .map(str::to_string)
        .collect()
}

#[test]
fn force_patch_dropout_is_random_masking_at_its_ratio() {
    let config = Train::try_parse_from(["train", "--force-patch-dropout", "0.25"])
        .unwrap()
        .args
        .to_config()
        .unwrap();
    assert_eq!(config.mask, MaskStrategy::Random { mask_ratio: 0.25 });

    // tiny has L = 64 patches: ratio 0.5 keeps 32, and the logged ratio is exactly 0.500.
    let logs = temp_dir("force-dropout");
    let out = short_train(
        &logs,
        &[
            "--epochs",
            "1",
            "--force-patch-dropout",
            "0.5",
            "--precision",
            "amp_bf16",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let run = logs.join("smoke");
    assert_eq!(
        (
            params(&run)["mask"].as_str(),
            params(&run)["mask_ratio"].as_f64()
        ),
        (Some("random"), Some(0.5))
    );
    let log = std::fs::read_to_string(run.join("out.log")).unwrap();
    let ratios: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("step "))
        .filter_map(|l| l.split(" | mask ").nth(1)?.split(' ').next())
        .collect();
    assert_eq!(ratios, ["0.500", "0.500"], "{log}");
    // --precision other than fp32: exactly one line, saying the run is fp32.
    let lines = precision_lines(&out);
    assert_eq!(lines.len(), 1, "{}", stderr(&out));
    assert!(
        lines[0].contains("amp_bf16") && lines[0].contains("fp32"),
        "{lines:?}"
    );
    let _ = std::fs::remove_dir_all(&logs);
}

#[test]
fn force_patch_dropout_with_an_explicit_mask_is_one_error_naming_both() {
    for mask in [["--mask", "cluster"], ["--mask-ratio", "0.3"]] {
        let out = clusterclip(&["train", mask[0], mask[1], "--force-patch-dropout", "0.5"]);
        assert!(!out.status.success());
        let err = stderr(&out);
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(errors.len(), 1, "{err}");
        assert!(
            errors[0].contains("--force-patch-dropout") && errors[0].contains(mask[0]),
            "{err}"
        );
    }
    let line = error_line(&clusterclip(&["train", "--force-patch-dropout", "1.5"]));
    assert!(line.contains("--force-patch-dropout 1.5"), "{line}");
}

#[test]
fn delete_previous_checkpoint_leaves_only_the_last_epoch_pair() {
    let logs = temp_dir("delete-previous");
    let out = short_train(
        &logs,
        &[
            "--epochs",
            "3",
            "--val-data",
            "none",
            "--save-most-recent",
            "--delete-previous-checkpoint",
            "--precision",
            "fp32",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let run = logs.join("smoke");
    let mut files: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "epoch_3.safetensors",
            "epoch_3.state.safetensors",
            "epoch_latest.safetensors",
            "epoch_latest.state.safetensors",
        ]
    );
    let p = params(&run);
    assert_eq!(
        (
            p["save_most_recent"].as_bool(),
            p["delete_previous_checkpoint"].as_bool()
        ),
        (Some(true), Some(true))
    );
    // The survivor resumes: the pair is whole.
    let out = short_train(
        &logs,
        &[
            "--epochs",
            "4",
            "--val-data",
            "none",
            "--resume",
            run.join("checkpoints/epoch_3.safetensors")
                .to_str()
                .unwrap(),
            "--delete-previous-checkpoint",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!run.join("checkpoints/epoch_3.safetensors").exists());
    assert!(run.join("checkpoints/epoch_4.state.safetensors").exists());
    assert!(precision_lines(&out).is_empty(), "no --precision, no line");
    let _ = std::fs::remove_dir_all(&logs);
}

/// Zero-shot images of the builtin task read as `normalisation` says, encoded by `checkpoint`.
fn zeroshot_features(checkpoint: &Path, normalisation: Normalisation) -> (Vec<f32>, Vec<f32>) {
    let clip = load_model(checkpoint, None).unwrap().model(&Backend::Cpu);
    let options = ReadOptions {
        normalisation,
        ..ReadOptions::default()
    };
    let set = zeroshot_set(BUILTIN_ZEROSHOT, &clip, Some(2), &options).unwrap();
    let mut images = Vec::new();
    set.for_each_batch(2, &mut |batch| {
        images.extend_from_slice(&batch.images);
        Ok(())
    })
    .unwrap();
    let features = encode_images(&clip, &images, 2).unwrap();
    assert_eq!(set.encode(&clip, 2).unwrap().features, features);
    (images, features)
}

#[test]
fn image_mean_and_std_reach_params_the_checkpoint_and_the_features() {
    let logs = temp_dir("image-norm");
    let out = short_train(
        &logs,
        &[
            "--epochs",
            "1",
            "--mask",
            "random",
            "--image-mean",
            "0.5",
            "0.25",
            "0.125",
            "--image-std",
            "0.5",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let run = logs.join("smoke");
    let p = params(&run);
    assert_eq!(p["image_mean"], serde_json::json!([0.5, 0.25, 0.125]));
    assert_eq!(p["image_std"], serde_json::json!([0.5, 0.5, 0.5]));
    let want = Normalisation {
        mean: [0.5, 0.25, 0.125],
        std: [0.5; 3],
    };
    let checkpoint: PathBuf = run.join("checkpoints/epoch_1.safetensors");
    let stored = load_model(&checkpoint, None).unwrap().normalisation;
    assert_eq!(stored, want, "eval and embed read the run's values back");

    let (ours, ours_features) = zeroshot_features(&checkpoint, stored);
    let (clip, clip_features) = zeroshot_features(&checkpoint, Normalisation::CLIP);
    // A pixel of value u reads (u - mean) / std: the two readings differ by a known affine map.
    let plane = ours.len() / 6;
    for (i, (&a, &b)) in ours.iter().zip(&clip).enumerate().step_by(97) {
        let c = i / plane % 3;
        let unit = b * Normalisation::CLIP.std[c] + Normalisation::CLIP.mean[c];
        assert!(
            (a - (unit - want.mean[c]) / want.std[c]).abs() < 1e-4,
            "{a} vs {b}"
        );
    }
    let moved = ours_features
        .iter()
        .zip(&clip_features)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(moved > 1e-3, "features moved by {moved} only");
    let _ = std::fs::remove_dir_all(&logs);
}

#[test]
fn bad_image_mean_and_std_give_one_error_line() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["--image-mean", "0.5", "0.5"],
            "--image-mean takes 3 values",
        ),
        (
            &["--image-std", "0.2", "0", "0.2"],
            "--image-std 0 must be positive",
        ),
        (
            &["--image-std", "-0.5"],
            "--image-std -0.5 must be positive",
        ),
        // The default mask compares rgb pixels, which assume CLIP's mean/std.
        (&["--image-mean", "0.5"], "--mask-features rgb"),
    ];
    for (flags, needle) in cases {
        let mut args = vec!["train"];
        args.extend_from_slice(flags);
        let line = error_line(&clusterclip(&args));
        assert!(line.contains(needle), "{flags:?}: {line}");
    }
}

#[test]
fn unknown_precision_is_clap_s_error() {
    let err = Train::try_parse_from(["train", "--precision", "fp8"])
        .err()
        .expect("fp8 is not a choice");
    assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
    for choice in [
        "amp",
        "amp_bf16",
        "amp_bfloat16",
        "fp16",
        "bf16",
        "fp32",
        "pure_bf16",
        "pure_fp16",
    ] {
        let args = Train::try_parse_from(["train", "--precision", choice])
            .unwrap()
            .args;
        assert_eq!(
            args.precision_note().is_none(),
            choice == "fp32",
            "{choice}"
        );
    }
}

#[test]
fn report_to_wandb_is_one_refusal_naming_the_flag() {
    for backend in ["wandb", "all"] {
        let line = error_line(&clusterclip(&["train", "--report-to", backend]));
        assert!(
            line.contains("--report-to") && line.contains(backend),
            "{line}"
        );
    }
}

/// One decoded `Event`: step, and either the file version or (tag, value) scalars.
#[derive(Debug, Default)]
struct Event {
    step: u64,
    file_version: Option<String>,
    scalars: Vec<(String, f32)>,
}

fn read_varint(bytes: &[u8], at: &mut usize) -> u64 {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = bytes[*at];
        *at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            break;
        }
    }
    value
}

/// The fields of one protobuf message: (field number, wire type, payload bytes).
fn fields(bytes: &[u8]) -> Vec<(u64, u64, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let key = read_varint(bytes, &mut at);
        let start = at;
        let len = match key & 7 {
            0 => {
                read_varint(bytes, &mut at);
                0
            }
            1 => 8,
            2 => read_varint(bytes, &mut at) as usize,
            5 => 4,
            t => panic!("wire type {t}"),
        };
        let payload = if key & 7 == 0 {
            &bytes[start..at]
        } else {
            &bytes[at..at + len]
        };
        at += len;
        out.push((key >> 3, key & 7, payload));
    }
    out
}

fn decode_event(data: &[u8]) -> Event {
    let mut event = Event::default();
    for (field, _, payload) in fields(data) {
        match field {
            2 => event.step = read_varint(payload, &mut 0),
            3 => event.file_version = Some(String::from_utf8(payload.to_vec()).unwrap()),
            5 => {
                for (_, _, value) in fields(payload).into_iter().filter(|f| f.0 == 1) {
                    let (mut tag, mut simple) = (String::new(), f32::NAN);
                    for (f, _, p) in fields(value) {
                        match f {
                            1 => tag = String::from_utf8(p.to_vec()).unwrap(),
                            2 => simple = f32::from_le_bytes(p.try_into().unwrap()),
                            _ => {}
                        }
                    }
                    event.scalars.push((tag, simple));
                }
            }
            _ => {}
        }
    }
    event
}

/// Every record of a TFRecord file, both CRCs checked.
fn read_records(bytes: &[u8]) -> Vec<&[u8]> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let length_bytes = &bytes[at..at + 8];
        let len = u64::from_le_bytes(length_bytes.try_into().unwrap()) as usize;
        let crc = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap());
        assert_eq!(crc(&bytes[at + 8..at + 12]), masked_crc32c(length_bytes));
        let data = &bytes[at + 12..at + 12 + len];
        assert_eq!(
            crc(&bytes[at + 12 + len..at + 16 + len]),
            masked_crc32c(data)
        );
        records.push(data);
        at += 16 + len;
    }
    records
}

#[test]
fn report_to_tensorboard_writes_openclip_s_scalars() {
    let logs = temp_dir("tensorboard");
    let out = short_train(
        &logs,
        &[
            "--epochs",
            "1",
            "--mask",
            "random",
            "--report-to",
            "tensorboard",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = logs.join("smoke").join("tensorboard");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    let bytes = std::fs::read(&files[0]).unwrap();
    let events: Vec<Event> = read_records(&bytes).into_iter().map(decode_event).collect();
    assert_eq!(events[0].file_version.as_deref(), Some(FILE_VERSION));
    let scalars: Vec<(String, u64, f32)> = events[1..]
        .iter()
        .flat_map(|e| e.scalars.iter().map(|(t, v)| (t.clone(), e.step, *v)))
        .collect();
    let steps_of = |tag: &str| -> Vec<u64> {
        scalars
            .iter()
            .filter(|(t, _, _)| t == tag)
            .map(|&(_, s, _)| s)
            .collect()
    };
    for tag in [
        "train/loss",
        "train/contrastive_loss",
        "train/lr",
        "train/logit_scale",
        "train/samples_per_second",
        "train/mask_ratio",
    ] {
        assert_eq!(steps_of(tag), [1, 2], "{tag}: {scalars:?}");
    }
    // OpenCLIP logs validation at the completed epoch.
    for tag in ["val/clip_val_loss", "val/image_retrieval_recall@1"] {
        assert_eq!(steps_of(tag), [1], "{tag}: {scalars:?}");
    }
    let value = |tag: &str| scalars.iter().find(|(t, _, _)| t == tag).unwrap().2;
    assert_eq!(
        value("train/mask_ratio"),
        0.5,
        "--mask random at its 0.5 default"
    );
    assert!(value("train/loss") > 0.0 && value("train/loss").is_finite());
    assert_eq!(value("train/loss"), value("train/contrastive_loss"));
    assert!(value("train/samples_per_second") > 0.0);
    let _ = std::fs::remove_dir_all(&logs);
}

// The events file format, piece by piece (src/train/tensorboard.rs).

#[test]
fn crc32c_matches_known_vectors() {
    // The check value of CRC-32C, and RFC 3720 (iSCSI) B.4's 32 zero and 32 0xff bytes.
    assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
    assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
    assert_eq!(crc32c(b""), 0);
}

#[test]
fn record_frames_length_and_data_with_masked_crcs() {
    let data = b"hello";
    let record = tfrecord(data);
    assert_eq!(record.len(), 8 + 4 + data.len() + 4);
    assert_eq!(&record[..8], &5u64.to_le_bytes());
    let length_crc = u32::from_le_bytes(record[8..12].try_into().unwrap());
    assert_eq!(length_crc, masked_crc32c(&5u64.to_le_bytes()));
    assert_eq!(&record[12..17], data);
    let data_crc = u32::from_le_bytes(record[17..21].try_into().unwrap());
    let crc = crc32c(data);
    assert_eq!(data_crc, crc.rotate_right(15).wrapping_add(0xa282_ead8));
}

#[test]
fn scalar_event_encodes_the_protobuf_fields() {
    let event = scalar_event(1.5, 300, "train/loss", 0.25);
    let mut want = vec![0x09];
    want.extend_from_slice(&1.5f64.to_le_bytes());
    want.extend_from_slice(&[0x10, 0xac, 0x02]); // step 300 as a varint
    // summary (field 5) { value (1) { tag (1) "train/loss", simple_value (2) 0.25 } }
    want.extend_from_slice(&[0x2a, 19, 0x0a, 17, 0x0a, 10]);
    want.extend_from_slice(b"train/loss");
    want.push(0x15);
    want.extend_from_slice(&0.25f32.to_le_bytes());
    assert_eq!(event, want);
}

#[test]
fn report_to_takes_tensorboard_and_refuses_network_backends() {
    assert_eq!(tensorboard_requested(""), Ok(false));
    assert_eq!(tensorboard_requested("tensorboard"), Ok(true));
    for refused in ["wandb", "all", "tensorboard,wandb"] {
        let err = tensorboard_requested(refused).unwrap_err();
        assert!(
            err.starts_with("--report-to ") && !err.contains('\n'),
            "{err}"
        );
    }
    assert!(tensorboard_requested("csv").is_err());
}
