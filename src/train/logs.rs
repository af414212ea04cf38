//! The run folder as OpenCLIP lays it out (`--logs/--name`): `params.json` (every setting),
//! `out.log` (the progress lines and messages), `results.jsonl` (one JSON line per evaluation),
//! `checkpoints/`, and `loss.png`, plus `train.lock`, held by the one run writing there.
//! Progress goes to stderr: redrawn in place on a terminal, plain lines otherwise.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file of a run folder.
pub const LOCK_FILE: &str = "train.lock";

/// OpenCLIP's default run name: `2026_11_29-06_30_00-model_tiny-lr_0.0005-b_64-j_2-p_fp32`.
pub fn default_run_name(model: &str, lr: f32, batch_size: usize, workers: usize) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{}-model_{}-lr_{lr}-b_{batch_size}-j_{workers}-p_fp32",
        utc_stamp(secs),
        model.replace('/', "-")
    )
}

/// `YYYY_MM_DD-HH_MM_SS` (UTC) of Unix seconds, as OpenCLIP's `%Y_%m_%d-%H_%M_%S`.
pub fn utc_stamp(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let rem = unix_seconds % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}_{month:02}_{day:02}-{:02}_{:02}_{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// `3m05s`, `1h02m`, `42s`.
pub fn format_duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

/// OpenCLIP's guard ("Experiment already exists"): a new run never writes into the folder of
/// an earlier one; only `--resume` continues a folder. An absent or empty folder is new.
pub fn check_new_run_folder(dir: &Path) -> Result<(), String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    if entries.flatten().any(|e| e.file_name() != LOCK_FILE) {
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        return Err(format!(
            "run folder {} already exists (Experiment already exists): use --name to start a \
             new experiment, or --resume latest --name {name} to continue it",
            dir.display()
        ));
    }
    Ok(())
}

/// One `train` process's hold on its run folder: an OS lock on `train.lock` (`File::try_lock`),
/// released by the OS when the process dies, so a killed run never blocks the next. The file
/// holds the holder's pid and is emptied on a clean release, so a pid found there by the next
/// holder names a run that died holding it.
struct RunLock {
    file: File,
}

impl RunLock {
    /// The lock of `dir` (which must exist), and the pid of a holder that died holding it.
    fn acquire(dir: &Path) -> Result<(RunLock, Option<u32>), String> {
        let path = dir.join(LOCK_FILE);
        let err = |e: std::io::Error| format!("{}: {e}", path.display());
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(err)?;
        let mut holder = String::new();
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let _ = file.read_to_string(&mut holder);
                let pid = match holder.trim() {
                    "" => String::new(),
                    pid => format!(" (pid {pid})"),
                };
                return Err(format!(
                    "run folder {} is in use by another clusterclip train{pid}; wait for it to \
                     end or use another --name",
                    dir.display()
                ));
            }
            Err(TryLockError::Error(e)) => return Err(err(e)),
        }
        file.read_to_string(&mut holder).map_err(err)?;
        let dead_holder = holder.trim().parse().ok();
        file.set_len(0).map_err(err)?;
        file.seek(SeekFrom::Start(0)).map_err(err)?;
        write!(file, "{}", std::process::id()).map_err(err)?;
        Ok((RunLock { file }, dead_holder))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Empty: the next holder knows this run ended cleanly (closing the file unlocks it).
        let _ = self.file.set_len(0);
    }
}

/// The writer's pid in `.NAME.tmpPID`, the temporary file of `model::io::write_bytes_atomic`.
fn write_temp_pid(name: &str) -> Option<u32> {
    let (_, pid) = name.strip_prefix('.')?.rsplit_once(".tmp")?;
    // Digits only: `parse` alone would take `+5`.
    if !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Removes the temporary files of interrupted writes (a kill, a full disk) from `dir` and its
/// `checkpoints/`: under the run lock no other process writes there, so every one of another
/// pid is stale (ours are this run's own, overwritten by its next write). Returns the one-line
/// report, if any were found.
fn remove_stale_temps(dir: &Path) -> Result<Option<String>, String> {
    let (mut removed, mut bytes) = (Vec::new(), 0u64);
    for folder in [dir.to_path_buf(), dir.join("checkpoints")] {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let pid = write_temp_pid(&entry.file_name().to_string_lossy());
            if pid.is_none_or(|pid| pid == std::process::id()) {
                continue;
            }
            let path = entry.path();
            bytes += entry.metadata().map_or(0, |m| m.len());
            std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            removed.push(
                path.strip_prefix(dir)
                    .unwrap_or(&path)
                    .display()
                    .to_string(),
            );
        }
    }
    Ok((!removed.is_empty()).then(|| {
        format!(
            "removed {} stale temporary file{} of interrupted writes ({:.1} MB): {}",
            removed.len(),
            if removed.len() == 1 { "" } else { "s" },
            bytes as f64 / 1e6,
            removed.join(", ")
        )
    }))
}

/// The files of one run.
pub struct RunLogs {
    pub dir: PathBuf,
    out_log: Option<File>,
    terminal: bool,
    /// A progress line is drawn on the terminal and must be cleared before other output.
    line_open: bool,
    /// Held until the run ends (dropped with the logs); `None` for silent logs.
    _lock: Option<RunLock>,
    /// Prints and writes nothing: a rank other than 0 (rank 0 logs the run).
    silent: bool,
}

impl RunLogs {
    /// Takes `dir` for this run: creates it (and `dir/checkpoints`), locks it, refuses a new run
    /// (`resuming` false) in a used folder, and removes the leftovers of interrupted writes.
    /// `out.log` is appended to, so a resumed run keeps the earlier lines.
    pub fn open(dir: &Path, resuming: bool) -> Result<RunLogs, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let (lock, dead_holder) = RunLock::acquire(dir)?;
        // Again under the lock: a run that started at the same moment may have written since.
        if !resuming {
            check_new_run_folder(dir)?;
        }
        std::fs::create_dir_all(dir.join("checkpoints"))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join("out.log");
        let out_log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut logs = RunLogs {
            dir: dir.to_path_buf(),
            out_log: Some(out_log),
            terminal: std::io::stderr().is_terminal(),
            line_open: false,
            _lock: Some(lock),
            silent: false,
        };
        if let Some(pid) = dead_holder {
            logs.message(&format!(
                "took over the lock of {} from pid {pid}, which ended without releasing it",
                dir.display()
            ));
        }
        if let Some(report) = remove_stale_temps(dir)? {
            logs.message(&report);
        }
        Ok(logs)
    }

    /// Logs of `dir` that print and write nothing (a rank other than 0).
    pub fn silent(dir: &Path) -> RunLogs {
        RunLogs {
            dir: dir.to_path_buf(),
            out_log: None,
            terminal: false,
            line_open: false,
            _lock: None,
            silent: true,
        }
    }

    pub fn checkpoint_dir(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }

    /// Writes `params.json` (atomically: it is the record of the run's settings).
    pub fn write_params(&self, params: &serde_json::Value) -> Result<(), String> {
        if self.silent {
            return Ok(());
        }
        let text = serde_json::to_string_pretty(params).map_err(|e| e.to_string())?;
        crate::model::io::write_bytes_atomic(&self.dir.join("params.json"), text.as_bytes())
    }

    /// A message: stderr and `out.log`.
    pub fn message(&mut self, line: &str) {
        if self.silent {
            return;
        }
        self.clear_line();
        eprintln!("{line}");
        self.log_only(line);
    }

    fn log_only(&mut self, line: &str) {
        if let Some(file) = &mut self.out_log {
            let _ = writeln!(file, "{line}");
        }
    }

    /// A progress line: redrawn in place on a terminal (every step), a plain line otherwise
    /// (only when `milestone`, every `--log-every-n-steps`); `out.log` gets the milestones.
    pub fn progress(&mut self, line: &str, milestone: bool) {
        if self.silent {
            return;
        }
        if self.terminal {
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
            self.line_open = true;
        } else if milestone {
            eprintln!("{line}");
        }
        if milestone {
            self.log_only(line);
        }
    }

    fn clear_line(&mut self) {
        if self.line_open {
            eprintln!();
            self.line_open = false;
        }
    }

    /// Appends one evaluation to `results.jsonl`.
    pub fn append_result(&self, result: &serde_json::Value) -> Result<(), String> {
        if self.silent {
            return Ok(());
        }
        let path = self.dir.join("results.jsonl");
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        writeln!(file, "{result}").map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Every line of a run folder's `results.jsonl` that parses, in order.
pub fn read_results(run_dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run_dir.join("results.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// A run folder's results by step: the last result of each step wins, so a resumed run's
/// repeated evaluations replace the old ones.
pub fn results_by_step(run_dir: &Path) -> std::collections::BTreeMap<u64, serde_json::Value> {
    read_results(run_dir)
        .into_iter()
        .filter_map(|result| Some((result["step"].as_u64()?, result)))
        .collect()
}

impl Drop for RunLogs {
    fn drop(&mut self) {
        self.clear_line();
    }
}
