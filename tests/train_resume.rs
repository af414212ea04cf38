//! The training run's promises (issue 5): N steps + resume + N steps equals 2N steps straight,
//! bit for bit, on both backends; an interrupted checkpoint write leaves the previous checkpoint
//! loadable; a NaN loss stops the run naming the step and keeps the last good checkpoint.

mod common;

use std::path::{Path, PathBuf};

use clusterclip::graph::Backend;
use clusterclip::masking::ClusterMaskConfig;
use clusterclip::model::{ClipConfig, TextConfig, VisionConfig};
use clusterclip::train::checkpoint::{Checkpoint, LATEST, load_checkpoint};
use clusterclip::train::mask_step::MaskStrategy;
use clusterclip::train::run::{ResumeFrom, TrainConfig, TrainError, train};

/// A model small enough for a test: 16 patches of 8 px, width 32, one layer per tower.
fn small_model() -> ClipConfig {
    ClipConfig {
        embed_dim: 32,
        vision: VisionConfig {
            image_size: 32,
            patch_size: 8,
            width: 32,
            layers: 1,
            heads: 2,
        },
        text: TextConfig {
            context_length: 16,
            vocab_size: 1000,
            width: 32,
            layers: 1,
            heads: 2,
        },
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("clusterclip-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Six steps of batch 4 in one epoch, warm-up then cosine, no evaluation.
fn config(logs: &Path, name: &str) -> TrainConfig {
    let mut c = TrainConfig::new("small", small_model());
    c.batch_size = 4;
    c.train_num_samples = 24;
    c.epochs = 1;
    c.warmup = 2;
    c.lr = 2e-3;
    c.logs = logs.to_path_buf();
    c.name = Some(name.to_string());
    c.log_every_n_steps = 2;
    c.data.workers = 1;
    c.seed = 7;
    c
}

fn latest(logs: &Path, name: &str) -> Checkpoint {
    load_checkpoint(&logs.join(name).join("checkpoints").join(LATEST), None).unwrap()
}

fn assert_same_checkpoint(a: &Checkpoint, b: &Checkpoint) {
    assert_eq!(a.params.len(), b.params.len());
    let differing = a
        .params
        .iter()
        .zip(&b.params)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    assert_eq!(
        differing, 0,
        "{differing} parameters differ between the resumed and the straight run"
    );
    assert!(a.moments == b.moments, "Adam moments differ");
    assert_eq!(a.optimizer_steps, b.optimizer_steps);
    // The split run also read the loss where it stopped; every loss both runs read agrees.
    for entry in &b.state.loss_history {
        assert!(
            a.state.loss_history.contains(entry),
            "loss {entry:?} of the straight run differs after resume"
        );
    }
    let without_history = |c: &Checkpoint| clusterclip::train::checkpoint::TrainState {
        loss_history: Vec::new(),
        ..c.state.clone()
    };
    assert_eq!(without_history(a), without_history(b));
}

/// Runs 3 steps, resumes for 3 more, and compares with 6 straight.
fn check_resume(backend: Backend, tag: &str, adjust: impl Fn(&mut TrainConfig)) {
    let logs = temp_dir(tag);
    let mut straight = config(&logs, "straight");
    adjust(&mut straight);
    let summary = train(&straight, backend.clone()).unwrap();
    assert_eq!(summary.steps, 6);

    let mut first = config(&logs, "split");
    adjust(&mut first);
    first.steps = Some(3);
    assert_eq!(train(&first, backend.clone()).unwrap().steps, 3);
    let halfway = latest(&logs, "split");
    assert_eq!(
        (
            halfway.state.step,
            halfway.optimizer_steps,
            halfway.state.samples_seen
        ),
        (3, 3, 3 * first.step_samples())
    );

    let mut second = config(&logs, "split");
    adjust(&mut second);
    second.resume = Some(ResumeFrom::Latest);
    assert_eq!(train(&second, backend).unwrap().steps, 6);

    let (a, b) = (latest(&logs, "split"), latest(&logs, "straight"));
    assert_same_checkpoint(&a, &b);
    assert_eq!(a.state.step, 6);
    assert!(
        a.params.iter().zip(&halfway.params).any(|(x, y)| x != y),
        "the resumed steps changed nothing"
    );
    let _ = std::fs::remove_dir_all(&logs);
}

#[test]
fn resume_is_bit_exact_on_gpu() {
    check_resume(Backend::Gpu(common::gpu()), "resume-gpu", |_| {});
}

#[test]
fn resume_is_bit_exact_on_cpu_with_accumulation_and_embedding_masks() {
    check_resume(Backend::Cpu, "resume-cpu", |c| {
        c.accum_freq = 2;
        c.train_num_samples = 48;
        c.mask = MaskStrategy::ClusterEmbed(ClusterMaskConfig::default());
        c.adamw.grad_clip_norm = Some(1.0);
    });
}

#[test]
fn threshold_auto_is_stored_and_reused_on_resume() {
    check_resume(Backend::Cpu, "resume-auto", |c| {
        c.target_mask_ratio = Some(0.5);
    });
}

#[test]
fn interrupted_checkpoint_write_leaves_the_previous_checkpoint() {
    let logs = temp_dir("atomic");
    let mut c = config(&logs, "run");
    c.steps = Some(2);
    train(&c, Backend::Cpu).unwrap();
    let dir = logs.join("run").join("checkpoints");
    let path = dir.join(LATEST);
    let good = std::fs::read(&path).unwrap();
    // What a crash mid-write leaves: a partial temporary file beside the checkpoint (the name
    // `write_bytes_atomic` uses, another process id) and nothing renamed.
    let partial = dir.join(format!(".{LATEST}.tmp{}", std::process::id() + 1));
    std::fs::write(&partial, &good[..good.len() / 2]).unwrap();
    let loaded = load_checkpoint(&path, None).unwrap();
    assert_eq!(loaded.state.step, 2);
    // The partial file itself is not a checkpoint: loading it fails with its name.
    let err = load_checkpoint(&partial, None)
        .err()
        .expect("a truncated checkpoint must not load");
    assert!(err.contains(".tmp"), "{err}");
    // Resuming ignores the leftover and continues from step 2.
    c.steps = Some(4);
    c.resume = Some(ResumeFrom::Latest);
    assert_eq!(train(&c, Backend::Cpu).unwrap().steps, 4);
    assert_eq!(latest(&logs, "run").state.step, 4);
    let _ = std::fs::remove_dir_all(&logs);
}

#[test]
fn nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint() {
    let logs = temp_dir("nan");
    let mut c = config(&logs, "run");
    c.train_num_samples = 8; // 2 steps per epoch: a checkpoint after steps 2, 4, 6
    c.epochs = 3;
    c.lr_scheduler = clusterclip::train::LrScheduler::Const;
    c.warmup = 0;
    c.log_every_n_steps = 100;
    c.steps = Some(2);
    train(&c, Backend::Cpu).unwrap();
    c.steps = None;
    c.resume = Some(ResumeFrom::Latest);
    c.lr = 1e30;
    match train(&c, Backend::Cpu) {
        Err(TrainError::NonFinite {
            step,
            what,
            last_checkpoint,
        }) => {
            assert!((3..=4).contains(&step), "stopped at step {step} ({what})");
            assert_eq!(
                last_checkpoint.as_deref(),
                Some(logs.join("run").join("checkpoints").join(LATEST).as_path())
            );
            let message = TrainError::NonFinite {
                step,
                what,
                last_checkpoint,
            }
            .to_string();
            assert!(message.contains(&format!("at step {step}")), "{message}");
        }
        other => panic!(
            "expected a non-finite stop, got {:?}",
            other.map(|s| s.steps)
        ),
    }
    let kept = latest(&logs, "run");
    assert_eq!(kept.state.step, 2);
    assert!(kept.params.iter().all(|x| x.is_finite()));
    let _ = std::fs::remove_dir_all(&logs);
}

#[test]
fn inconsistent_settings_are_refused_before_anything_runs() {
    let logs = temp_dir("flags");
    type Adjust = Box<dyn Fn(&mut TrainConfig)>;
    let cases: Vec<(Adjust, &str)> = vec![
        (Box::new(|c| c.batch_size = 0), "--batch-size"),
        (Box::new(|c| c.train_num_samples = 3), "--train-num-samples"),
        (
            Box::new(|c| c.mask = MaskStrategy::Random { mask_ratio: 1.0 }),
            "--mask-ratio",
        ),
        (
            Box::new(|c| {
                c.mask = MaskStrategy::Cluster(ClusterMaskConfig {
                    min_mask_ratio: 0.8,
                    max_mask_ratio: 0.5,
                    ..Default::default()
                })
            }),
            "--min-mask-ratio",
        ),
        (Box::new(|c| c.adamw.beta2 = 1.5), "--beta2"),
        (
            Box::new(|c| {
                c.resume = Some(ResumeFrom::Path(PathBuf::from(
                    "/nonexistent/ck.safetensors",
                )))
            }),
            "--resume",
        ),
    ];
    for (adjust, flag) in cases {
        let mut c = config(&logs, "never");
        adjust(&mut c);
        match train(&c, Backend::Cpu) {
            Err(TrainError::Config(message)) => {
                assert!(message.contains(flag), "{flag}: {message}")
            }
            other => panic!(
                "{flag}: expected a configuration error, got {:?}",
                other.map(|s| s.steps)
            ),
        }
    }
    assert!(!logs.join("never").join("checkpoints").join(LATEST).exists());
    let _ = std::fs::remove_dir_all(&logs);
}
