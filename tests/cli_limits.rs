//! Hostile sizes and broken models at the command line (issue 10): each gives one error line
//! naming the flag and its allowed range, with no backtrace even under RUST_BACKTRACE=1; a NaN
//! checkpoint fails `eval` instead of scoring 100%; GPU commands print nothing of Mesa's.

mod common;

use std::path::Path;
use std::process::Command;

use clusterclip::data::image_ops::Normalisation;
use clusterclip::eval::tasks::{LabelledSet, zeroshot_eval};
use clusterclip::graph::Backend;
use clusterclip::model::{Clip, ClipConfig};
use clusterclip::train::checkpoint::{TrainState, checkpoint_bytes, load_checkpoint};
use clusterclip::train::{AdamWConfig, Trainer};
use common::cli::{clusterclip, clusterclip_with_env, error_line, stderr, temp_dir};

/// The error line of a run under RUST_BACKTRACE=1, which must be all of stderr.
fn only_error(args: &[&str]) -> String {
    let out = clusterclip_with_env(args, &[("RUST_BACKTRACE", "1")]);
    let line = error_line(&out);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    line
}

#[test]
fn tokenize_context_length_has_a_range() {
    for length in ["0", "1", "8193", "100000000000"] {
        let line = only_error(&["tokenize", "hello", "--context-length", length]);
        assert_eq!(
            line,
            format!("error: --context-length {length} is outside 2..=8192")
        );
    }
    let out = clusterclip(&["tokenize", "hello", "--context-length", "8192"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ids = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .count();
    assert_eq!(ids, 8192);
}

#[test]
fn mask_image_size_has_a_range() {
    let dir = temp_dir("limits-mask");
    let image = dir.join("grey.png");
    image::RgbImage::from_pixel(32, 32, image::Rgb([90, 120, 150]))
        .save(&image)
        .unwrap();
    let image = image.to_str().unwrap();
    let line = only_error(&["mask", "--image", image, "--image-size", "100000"]);
    assert_eq!(
        line,
        "error: --image-size 100000 is outside 16..=4096 (a multiple of --patch-size 16)"
    );
    // Within the size limit, but 512 x 512 patches of 4 pixels: cluster masking is quadratic.
    let line = only_error(&[
        "mask",
        "--image",
        image,
        "--image-size",
        "2048",
        "--patch-size",
        "4",
    ]);
    assert!(
        line.starts_with(
            "error: --image-size 2048 with --patch-size 4 gives 262144 patches, over the limit of 16384"
        ),
        "{line}"
    );
}

#[test]
fn zero_counts_are_errors() {
    assert_eq!(
        only_error(&["eval", "--checkpoint", "none.safetensors", "--samples", "0"]),
        "error: --samples must be at least 1 (leave it out to use every sample)"
    );
    for command in [
        &["bench", "matmul"][..],
        &["bench", "tower"],
        &["bench", "step"],
    ] {
        let args = [command, &["--repeats", "0"]].concat();
        assert_eq!(
            only_error(&args),
            "error: --repeats must be at least 1 (the median of the timed runs is reported)",
            "{args:?}"
        );
    }
}

#[test]
fn bench_sizes_are_checked_against_the_device() {
    let gpu = common::gpu();
    // The same preset and binding limit the binary sees.
    let most = ClipConfig::preset("tiny")
        .unwrap()
        .largest_batch_within(gpu.binding_limit_words());
    for batch in ["0".to_string(), (most + 1).to_string()] {
        let line = only_error(&["bench", "tower", "--batch-size", &batch]);
        assert!(
            line.starts_with(&format!(
                "error: --batch-size {batch} is outside 1..={most} (the most that fits"
            )),
            "{line}"
        );
    }
    let line = only_error(&[
        "bench", "matmul", "--m", "100000", "--n", "100000", "--k", "8",
    ]);
    let words = gpu.binding_limit_words();
    assert!(
        line.starts_with(&format!(
            "error: bench matmul: C (--batch x --m x --n = 1 x 100000 x 100000) holds more than \
             the {words} floats"
        )),
        "{line}"
    );
    let groups = gpu.limits.max_compute_workgroups_per_dimension;
    let over = (groups + 1).to_string();
    let line = only_error(&[
        "bench", "matmul", "--m", "1", "--n", "1", "--k", "1", "--batch", &over,
    ]);
    assert_eq!(
        line,
        format!("error: --batch {over} is outside 1..={groups}")
    );
}

/// A tiny checkpoint (seed 0) whose image and text projections are NaN, as the trial made.
fn nan_checkpoint(path: &Path) {
    let backend = Backend::Cpu;
    let clip = Clip::new(ClipConfig::preset("tiny").unwrap(), &backend, 0).unwrap();
    let trainer = Trainer::new(clip, backend, AdamWConfig::default());
    let bytes = checkpoint_bytes(&trainer, &TrainState::default(), &Normalisation::CLIP, "{}")
        .unwrap()
        .model;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let mut data = view.data().to_vec();
            if name == "visual.proj" || name == "text_projection" {
                data = bytemuck::cast_slice(&vec![f32::NAN; data.len() / 4]).to_vec();
            }
            (name, view.dtype(), view.shape().to_vec(), data)
        })
        .collect();
    assert_eq!(
        owned
            .iter()
            .filter(|t| t.0 == "visual.proj" || t.0 == "text_projection")
            .count(),
        2
    );
    let views = owned.iter().map(|(name, dtype, shape, data)| {
        (
            name.clone(),
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap(),
        )
    });
    let bytes = safetensors::serialize(views, header.metadata().clone()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_nan_model_fails_eval_instead_of_scoring() {
    let dir = temp_dir("limits-nan");
    let checkpoint = dir.join("nan.safetensors");
    nan_checkpoint(&checkpoint);
    let path = checkpoint.to_str().unwrap();
    let line = only_error(&[
        "eval",
        "--checkpoint",
        path,
        "--cpu",
        "--task",
        "retrieval",
        "--samples",
        "6",
    ]);
    assert_eq!(
        line,
        format!(
            "error: --checkpoint {path}: 6 of 6 image features and 6 of 6 caption text features \
             hold NaN or Inf: the model's weights (or its inputs) are broken, so no metric is \
             meaningful"
        )
    );
    // Zero-shot through the library: the CLI's builtin task encodes 384 prompts (a minute on
    // the CPU backend), 2 classes of 1 prompt say the same.
    let clip = load_checkpoint(&checkpoint, None)
        .unwrap()
        .model(&Backend::Cpu);
    let size = clip.config.vision.image_size;
    let set = LabelledSet::held(
        vec![0.0; 3 * 3 * size * size],
        vec![0, 1, 1],
        vec!["red square".into(), "blue circle".into()],
        vec!["a picture of one {}".into()],
    );
    assert_eq!(
        zeroshot_eval(&clip, &set, 2).unwrap_err(),
        "3 of 3 image features and 2 of 2 prompt text features hold NaN or Inf: the model's \
         weights (or its inputs) are broken, so no metric is meaningful"
    );
}

#[test]
fn info_prints_no_mesa_noise_without_xdg_runtime_dir() {
    // The binary must quiet Mesa itself: neither variable may come from this process.
    let out = Command::new(env!("CARGO_BIN_EXE_clusterclip"))
        .arg("info")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("NODEVICE_SELECT")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("XDG_RUNTIME_DIR"),
        "Mesa's device-select layer spoke:\n{}",
        stderr(&out)
    );
}

#[test]
fn a_wgpu_validation_error_is_a_result_at_the_next_read() {
    // A device of its own: the error stays with the device.
    let gpu = common::fresh_gpu();
    let too_big = gpu.limits.max_buffer_size + 256;
    // Before the handler this panicked inside wgpu ("Validation Error"), with a backtrace.
    let _ = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("too big"),
        size: too_big,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let buf = gpu.upload_f32(&[1.0, 2.0]);
    let error = gpu.read_f32(&buf).unwrap_err().to_string();
    assert!(
        error.starts_with("the GPU refused the work: ") && error.contains("maximum buffer size"),
        "{error}"
    );
    assert!(!error.contains('\n'), "{error}");
    assert!(gpu.check_errors().is_err(), "the error stays");
    // Other devices are untouched.
    assert_eq!(
        common::gpu()
            .read_f32(&common::gpu().upload_f32(&[3.0]))
            .unwrap(),
        [3.0]
    );
}
