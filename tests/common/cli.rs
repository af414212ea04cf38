//! Running the `clusterclip` binary as a user does, in a scratch folder.

use std::path::PathBuf;
use std::process::{Command, Output};

pub fn clusterclip(args: &[&str]) -> Output {
    clusterclip_with_env(args, &[])
}

/// [`clusterclip`] with extra environment variables.
pub fn clusterclip_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clusterclip"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs")
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
