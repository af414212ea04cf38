//! Errors of the data readers; each prints as one line naming the spec, file or flag.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum DataError {
    /// A spec that names no file, a missing file, an unknown type.
    Spec { spec: String, reason: String },
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A CSV whose header lacks a needed column.
    CsvHeader { file: PathBuf, reason: String },
    /// More bad records than `--max-bad-fraction` allows.
    TooManyBad {
        /// The data spec (or file) the records came from.
        spec: String,
        bad: u64,
        seen: u64,
        max_fraction: f64,
        first_offenders: Vec<String>,
    },
    /// An endless stream (`--dataset-resampled`) whose last `streak` records were all bad.
    NoGoodRecords {
        spec: String,
        streak: u64,
        first_offenders: Vec<String>,
    },
    /// A loader setting out of range.
    Config(String),
    /// A worker thread died (a bug, reported instead of hanging).
    Worker(String),
}

impl DataError {
    pub fn spec(spec: &str, reason: String) -> Self {
        DataError::Spec {
            spec: spec.to_string(),
            reason,
        }
    }
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            DataError::Spec { spec, reason } => write!(f, "data spec {spec:?}: {reason}"),
            DataError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            DataError::CsvHeader { file, reason } => write!(f, "{}: {reason}", file.display()),
            DataError::TooManyBad {
                spec,
                bad,
                seen,
                max_fraction,
                first_offenders,
            } => write!(
                f,
                "data spec {spec:?}: {bad} of {seen} records are bad ({:.2}%, over --max-bad-fraction {max_fraction}); first: {}",
                100.0 * *bad as f64 / (*seen).max(1) as f64,
                first_offenders.join("; ")
            ),
            DataError::NoGoodRecords {
                spec,
                streak,
                first_offenders,
            } => write!(
                f,
                "data spec {spec:?}: the last {streak} records of an endless stream were all bad, so no batch would ever fill; first: {}",
                first_offenders.join("; ")
            ),
            DataError::Config(reason) => f.write_str(reason),
            DataError::Worker(reason) => write!(f, "data worker failed: {reason}"),
        }
    }
}

impl std::error::Error for DataError {}
