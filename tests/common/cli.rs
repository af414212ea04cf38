//! Running the `clusterclip` binary as a user does, in a scratch folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn clusterclip(args: &[&str]) -> Output {
    clusterclip_with_env(args, &[])
}

/// [`clusterclip`] with extra environment variables.
pub fn clusterclip_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    // The binary makes the same adapter choice as the library in this process: say which, once.
    let _ = super::gpu();
    Command::new(env!("CARGO_BIN_EXE_clusterclip"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs")
}

/// A short `train` of the tiny preset into `logs/smoke`: batch 4, 2 steps per epoch, validation
/// on 16 samples, no zero-shot, a progress line every step, on the adapter the binary chooses
/// (`CLUSTERCLIP_BACKEND` overrides, as for every test); `extra` adds flags, `--epochs` among them.
pub fn short_train(logs: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--batch-size",
        "4",
        "--train-num-samples",
        "8",
        "--warmup",
        "1",
        "--logs",
        logs.to_str().unwrap(),
        "--name",
        "smoke",
        "--eval-samples",
        "16",
        "--zeroshot-data",
        "none",
        "--log-every-n-steps",
        "1",
        "--workers",
        "1",
    ];
    args.extend_from_slice(extra);
    clusterclip(&args)
}

/// A fresh empty folder under the system temp dir, one per tag and test process.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("clusterclip-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The one `error: ` line that ends a failed run's stderr.
pub fn error_line(out: &Output) -> String {
    assert!(!out.status.success(), "the run should fail");
    let err = stderr(out);
    // No filter for Mesa's "error: XDG_RUNTIME_DIR ...": the binary quiets it (issue 10).
    let ours: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(ours.len(), 1, "one error line:\n{err}");
    assert_eq!(
        err.lines().rev().find(|l| !l.trim().is_empty()),
        Some(ours[0]),
        "the error ends the output:\n{err}"
    );
    ours[0].to_string()
}
