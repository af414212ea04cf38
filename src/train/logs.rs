//! The run folder as OpenCLIP lays it out (`--logs/--name`): `params.json` (every setting),
//! `out.log` (the progress lines and messages), `results.jsonl` (one JSON line per evaluation),
//! `checkpoints/`, and `loss.png`. Progress goes to stderr: redrawn in place on a terminal,
//! plain lines otherwise.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

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

/// The files of one run.
pub struct RunLogs {
    pub dir: PathBuf,
    out_log: Option<File>,
    terminal: bool,
    /// A progress line is drawn on the terminal and must be cleared before other output.
    line_open: bool,
}

impl RunLogs {
    /// Creates `dir` (and `dir/checkpoints`); `out.log` is appended to, so a resumed run keeps
    /// the earlier lines.
    pub fn open(dir: &Path) -> Result<RunLogs, String> {
        std::fs::create_dir_all(dir.join("checkpoints"))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join("out.log");
        let out_log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(RunLogs {
            dir: dir.to_path_buf(),
            out_log: Some(out_log),
            terminal: std::io::stderr().is_terminal(),
            line_open: false,
        })
    }

    pub fn checkpoint_dir(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }

    /// Writes `params.json` (atomically: it is the record of the run's settings).
    pub fn write_params(&self, params: &serde_json::Value) -> Result<(), String> {
        let text = serde_json::to_string_pretty(params).map_err(|e| e.to_string())?;
        crate::model::io::write_bytes_atomic(&self.dir.join("params.json"), text.as_bytes())
    }

    /// A message: stderr and `out.log`.
    pub fn message(&mut self, line: &str) {
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
        let path = self.dir.join("results.jsonl");
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        writeln!(file, "{result}").map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Every line of `results.jsonl` that parses, in order.
    pub fn read_results(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.join("results.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

impl Drop for RunLogs {
    fn drop(&mut self) {
        self.clear_line();
    }
}
