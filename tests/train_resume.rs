//! The training run's promises (issue 5): N steps + resume + N steps equals 2N steps straight,
//! bit for bit, on both backends; a checkpoint writer killed mid-write leaves the previous
//! checkpoint loadable and its leftover is removed on the next start; a NaN loss stops the run
//! naming the step and keeps the last good checkpoint; a run folder belongs to one run (issue 10).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
        activation: clusterclip::model::config::Activation::Gelu,
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

/// The flags of a tiny-preset CLI run into `logs/killed`: 8 steps of batch 4 per epoch, no
/// evaluation, so a `--steps` stop writes only `epoch_latest`.
fn cli_run(logs: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clusterclip"));
    command
        .args(["train", "--logs"])
        .arg(logs)
        .args([
            "--name",
            "killed",
            "--batch-size",
            "4",
            "--train-num-samples",
            "32",
        ])
        .args(["--epochs", "1", "--warmup", "1", "--workers", "1"])
        .args(["--val-frequency", "0", "--zeroshot-frequency", "0"])
        .args(extra);
    command
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A real writer killed mid-write: the resumed CLI run's checkpoint temporary file is a FIFO, so
/// the writer blocks inside `write_all` with part of the checkpoint sent; it is killed with
/// SIGKILL there. The previous checkpoint still loads, and the next start removes the leftover
/// and takes over the dead run's lock.
#[test]
fn checkpoint_writer_killed_mid_write_leaves_the_previous_checkpoint_and_no_leftover() {
    let _ = common::gpu(); // says once which adapter the binary's choice lands on
    let logs = temp_dir("killed");
    let out = cli_run(&logs, &["--steps", "2"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let dir = logs.join("killed").join("checkpoints");
    let latest_path = dir.join(LATEST);
    let before = std::fs::read(&latest_path).unwrap();

    let mut writer = cli_run(&logs, &["--resume", "latest", "--steps", "4"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let writer_pid = writer.id().to_string();
    let fifo = dir.join(format!(".{LATEST}.tmp{writer_pid}"));
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo {}", fifo.display());
    // Opening a FIFO blocks until the writer opens it: read on a thread, watch the writer here.
    let (sent, received) = std::sync::mpsc::channel();
    let reader_path = fifo.clone();
    std::thread::spawn(move || {
        let mut pipe = std::fs::File::open(&reader_path).unwrap();
        let mut head = vec![0u8; 1 << 20];
        std::io::Read::read_exact(&mut pipe, &mut head).unwrap();
        let _ = sent.send(head);
        // Keep the pipe open (and unread) so the writer stays blocked until it is killed.
        std::thread::sleep(std::time::Duration::from_secs(120));
    });
    let head = loop {
        match received.recv_timeout(std::time::Duration::from_millis(100)) {
            Ok(head) => break head,
            Err(_) => {
                if let Some(status) = writer.try_wait().unwrap() {
                    let mut err = String::new();
                    let _ =
                        std::io::Read::read_to_string(writer.stderr.as_mut().unwrap(), &mut err);
                    panic!("the writer ended ({status}) before writing its checkpoint:\n{err}");
                }
            }
        }
    };
    // A safetensors file begins with its header length: the writer was inside the checkpoint.
    let header = u64::from_le_bytes(head[..8].try_into().unwrap());
    assert!(header > 0 && (header as usize) < before.len(), "{header}");
    writer.kill().unwrap();
    let status = writer.wait().unwrap();
    assert!(!status.success());

    assert_eq!(std::fs::read(&latest_path).unwrap(), before);
    assert_eq!(load_checkpoint(&latest_path, None).unwrap().state.step, 2);
    assert!(fifo.exists(), "the killed write leaves its temporary file");
    // The next start resumes from step 2, removes the leftover, and says so in one line each.
    let out = cli_run(&logs, &["--resume", "latest", "--steps", "2"])
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("resumed at step 2"), "{err}");
    assert!(
        !fifo.exists(),
        "stale {} not removed:\n{err}",
        fifo.display()
    );
    let removed: Vec<&str> = err.lines().filter(|l| l.contains("stale")).collect();
    assert_eq!(removed.len(), 1, "{err}");
    assert!(
        removed[0].contains(&format!(".{LATEST}.tmp{writer_pid}")),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains("lock") && l.contains(&writer_pid)),
        "no line about the dead run's lock:\n{err}"
    );
    let _ = std::fs::remove_dir_all(&logs);
}

/// OpenCLIP refuses a run whose folder exists unless it resumes ("Experiment already exists"):
/// the earlier run's checkpoint and settings stay as they were.
#[test]
fn reusing_a_name_without_resume_is_refused() {
    let logs = temp_dir("reuse");
    let mut c = config(&logs, "run");
    c.steps = Some(2);
    train(&c, Backend::Cpu).unwrap();
    let run = logs.join("run");
    let checkpoint = std::fs::read(run.join("checkpoints").join(LATEST)).unwrap();
    let params = std::fs::read(run.join("params.json")).unwrap();
    c.seed = 8;
    match train(&c, Backend::Cpu) {
        Err(TrainError::Config(message)) => {
            assert!(message.contains("already exists"), "{message}");
            assert!(message.contains(&run.display().to_string()), "{message}");
        }
        other => panic!("expected a refusal, got {:?}", other.map(|s| s.steps)),
    }
    assert_eq!(
        std::fs::read(run.join("checkpoints").join(LATEST)).unwrap(),
        checkpoint
    );
    assert_eq!(std::fs::read(run.join("params.json")).unwrap(), params);
    // With --resume the same folder continues.
    c.seed = 7;
    c.steps = Some(3);
    c.resume = Some(ResumeFrom::Latest);
    assert_eq!(train(&c, Backend::Cpu).unwrap().steps, 3);
    let _ = std::fs::remove_dir_all(&logs);
}

/// Two runs started at once under one name: exactly one trains, the other is refused.
#[test]
fn two_runs_at_once_under_one_name_one_is_refused() {
    let logs = temp_dir("twice");
    let runs: Vec<_> = [7, 8]
        .map(|seed| {
            let mut c = config(&logs, "run");
            c.seed = seed;
            c.steps = Some(2);
            std::thread::spawn(move || train(&c, Backend::Cpu))
        })
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let refused: Vec<String> = runs
        .iter()
        .filter_map(|r| match r {
            Err(TrainError::Config(message)) => Some(message.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        (runs.iter().filter(|r| r.is_ok()).count(), refused.len()),
        (1, 1),
        "{refused:?}"
    );
    let folder = logs.join("run").display().to_string();
    assert!(refused[0].contains(&folder), "{}", refused[0]);
    let _ = std::fs::remove_dir_all(&logs);
}

/// `epoch_N` is written before `epoch_latest`: a write that fails at `epoch_latest` (as a kill
/// between the two would) keeps `epoch_N`, which `epoch_latest` would otherwise skip on resume.
#[test]
fn epoch_checkpoint_is_written_before_latest() {
    let logs = temp_dir("order");
    let mut c = config(&logs, "run");
    c.train_num_samples = 8; // 2 steps per epoch
    c.epochs = 2;
    c.steps = Some(2);
    train(&c, Backend::Cpu).unwrap();
    let dir = logs.join("run").join("checkpoints");
    assert_eq!(latest(&logs, "run").state.step, 2);
    // A folder where epoch_latest goes makes its rename fail.
    std::fs::remove_file(dir.join(LATEST)).unwrap();
    std::fs::create_dir(dir.join(LATEST)).unwrap();
    c.steps = None;
    c.resume = Some(ResumeFrom::Path(dir.join("epoch_1.safetensors")));
    match train(&c, Backend::Cpu) {
        Err(TrainError::Run(message)) => assert!(message.contains(LATEST), "{message}"),
        other => panic!(
            "expected the epoch_latest write to fail, got {:?}",
            other.map(|s| s.steps)
        ),
    }
    let epoch_2 = load_checkpoint(&dir.join("epoch_2.safetensors"), None)
        .expect("epoch_2 is written before epoch_latest");
    assert_eq!((epoch_2.state.step, epoch_2.state.epoch), (4, 2));
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
        (Box::new(|c| c.name = Some(String::new())), "--name"),
        (Box::new(|c| c.name = Some("../escape".into())), "--name"),
        (Box::new(|c| c.name = Some("a/b".into())), "--name"),
        (Box::new(|c| c.name = Some(".".into())), "--name"),
        (
            Box::new(|c| {
                c.resume = Some(ResumeFrom::Path(PathBuf::from(
                    "/nonexistent/ck.safetensors",
                )))
            }),
            "--resume",
        ),
    ];
    // Logs one level down, so a name that escapes them stays inside this test's folder.
    let inner = logs.join("logs");
    for (adjust, flag) in cases {
        let mut c = config(&inner, "never");
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
    assert!(
        !inner
            .join("never")
            .join("checkpoints")
            .join(LATEST)
            .exists()
    );
    // No refused name wrote anything: not into --logs itself, not beside it.
    let written: Vec<_> = std::fs::read_dir(&logs).unwrap().collect();
    assert!(written.is_empty(), "{written:?}");
    let _ = std::fs::remove_dir_all(&logs);
}

/// Reads every tensor and the metadata of a safetensors file as raw bytes.
type RawFile = (
    Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>,
    std::collections::HashMap<String, String>,
);

fn read_raw(path: &Path) -> RawFile {
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let (dtype, shape) = (view.dtype(), view.shape().to_vec());
            (name, dtype, shape, view.data().to_vec())
        })
        .collect();
    (
        tensors,
        header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
    )
}

/// `epoch_N.safetensors` is the model alone; a single-file checkpoint as written before the
/// model/state split (everything in one file, format `clusterclip-checkpoint-1`) still resumes,
/// bit-exact with the straight run.
#[test]
fn model_file_is_the_state_dict_alone_and_old_single_file_checkpoints_resume() {
    use clusterclip::train::checkpoint::{LEGACY_FORMAT, load_model, state_path};
    let logs = temp_dir("legacy");
    train(&config(&logs, "straight"), Backend::Cpu).unwrap();
    let mut first = config(&logs, "split");
    first.steps = Some(3);
    train(&first, Backend::Cpu).unwrap();
    let dir = logs.join("split").join("checkpoints");
    let (model_tensors, model_meta) = read_raw(&dir.join(LATEST));
    let specs = clusterclip::model::init::param_specs(&small_model());
    let names: Vec<&str> = model_tensors.iter().map(|t| t.0.as_str()).collect();
    let mut wanted: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    wanted.sort_unstable();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, wanted, "the model file holds the parameters only");
    assert!(model_tensors.iter().all(|t| t.1 == safetensors::Dtype::F32));
    assert!(
        load_model(&dir.join(LATEST), None)
            .unwrap()
            .moments
            .is_none()
    );

    // The old layout: the pair merged into one file, the state's metadata, the old format.
    let (state_tensors, mut meta) = read_raw(&state_path(&dir.join(LATEST)));
    meta.insert("format".into(), LEGACY_FORMAT.into());
    meta.remove("model_checksum");
    assert_eq!(model_meta["step"], "3");
    let all: Vec<_> = model_tensors.iter().chain(&state_tensors).collect();
    let views = all.iter().map(|(name, dtype, shape, data)| {
        let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap();
        (name.clone(), view)
    });
    let legacy = logs.join("old-epoch_latest.safetensors");
    std::fs::write(
        &legacy,
        safetensors::serialize(views, Some(meta.into_iter().collect())).unwrap(),
    )
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let old = load_checkpoint(&legacy, None).unwrap();
    assert_eq!((old.state.step, old.optimizer_steps), (3, 3));
    assert!(old.moments.is_some());
    let mut second = config(&logs, "split");
    second.resume = Some(ResumeFrom::Path(legacy));
    assert_eq!(train(&second, Backend::Cpu).unwrap().steps, 6);
    assert_same_checkpoint(&latest(&logs, "split"), &latest(&logs, "straight"));
    let _ = std::fs::remove_dir_all(&logs);
}

/// A state file names its model file by checksum: a model beside another checkpoint's state
/// (what a crash between the two writes leaves) is refused on resume, and still evaluates.
#[test]
fn a_model_beside_another_checkpoints_state_is_refused_on_resume() {
    use clusterclip::train::checkpoint::{load_model, state_path};
    let logs = temp_dir("pair");
    let mut c = config(&logs, "run");
    c.train_num_samples = 8; // 2 steps per epoch
    c.epochs = 2;
    train(&c, Backend::Cpu).unwrap();
    let dir = logs.join("run").join("checkpoints");
    let epoch_1 = dir.join("epoch_1.safetensors");
    assert_eq!(load_checkpoint(&epoch_1, None).unwrap().state.step, 2);
    // `--resume` may name either file of a pair.
    assert_eq!(
        load_checkpoint(&state_path(&epoch_1), None)
            .unwrap()
            .state
            .step,
        2
    );
    std::fs::copy(state_path(&epoch_1), state_path(&dir.join(LATEST))).unwrap();
    let err = load_checkpoint(&dir.join(LATEST), None).err().unwrap();
    assert_eq!(
        err,
        format!(
            "{}: belongs to another model file than {} (an interrupted checkpoint write; resume \
             from an epoch_N.safetensors whose state matches)",
            state_path(&dir.join(LATEST)).display(),
            dir.join(LATEST).display()
        )
    );
    c.resume = Some(ResumeFrom::Latest);
    c.epochs = 3;
    match train(&c, Backend::Cpu) {
        Err(TrainError::Config(message)) => assert_eq!(message, format!("--resume: {err}")),
        other => panic!("expected a refusal, got {:?}", other.map(|s| s.steps)),
    }
    assert!(load_model(&dir.join(LATEST), None).is_ok());
    let _ = std::fs::remove_dir_all(&logs);
}

/// `--lock-image` (OpenCLIP's): after steps, every image-tower parameter is bit-identical to its
/// start while the text tower and logit_scale moved.
#[test]
fn lock_image_keeps_the_image_tower_bit_identical() {
    let logs = temp_dir("lock");
    let mut c = config(&logs, "run");
    c.steps = Some(3);
    c.lock_image = true;
    c.adamw.grad_clip_norm = Some(1.0);
    train(&c, Backend::Cpu).unwrap();
    let after = latest(&logs, "run");
    let start = clusterclip::model::Clip::new(small_model(), &Backend::Cpu, c.seed).unwrap();
    let before = clusterclip::train::checkpoint::flat_values(&Backend::Cpu, &start.params.values);
    let (mut image, mut text) = (0, 0);
    for (spec, &offset) in start.params.specs.iter().zip(&start.params.offsets) {
        let range = offset..offset + spec.numel();
        let same = after.params[range.clone()]
            .iter()
            .zip(&before[range])
            .all(|(a, b)| a.to_bits() == b.to_bits());
        if spec.name.starts_with("visual.") {
            assert!(same, "{} changed under --lock-image", spec.name);
            image += 1;
        } else {
            assert!(!same, "{} did not train", spec.name);
            text += 1;
        }
    }
    assert_eq!((image, text), (20, 18));
    let moments = after.moments.as_ref().unwrap();
    let visual = &start.params.offsets[start.params.position("visual.proj").unwrap()];
    assert_eq!(moments.0[*visual], 0.0, "no moment for a frozen parameter");
    let _ = std::fs::remove_dir_all(&logs);
}
