//! TensorBoard scalars (`--report-to tensorboard`), written by hand: an events file is a
//! TFRecord stream of `Event` protobufs, as `torch.utils.tensorboard.SummaryWriter` writes it
//! into OpenCLIP's `<logs>/<name>/tensorboard/`. A record is the data length (u64 LE), the
//! masked CRC32C of those 8 bytes (u32 LE), the data, and the masked CRC32C of the data; the
//! first event holds `file_version: "brain.Event:2"`. Only the fields a scalar needs are encoded:
//! Event{wall_time = 1 (double), step = 2 (int64), file_version = 3 (string), summary = 5},
//! Summary{value = 1 (repeated)}, Summary.Value{tag = 1 (string), simple_value = 2 (float)}.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The folder of a run's events files, as OpenCLIP names it.
pub const TENSORBOARD_DIR: &str = "tensorboard";
/// What TensorBoard's readers expect in the first event of a file.
pub const FILE_VERSION: &str = "brain.Event:2";
/// TFRecord's mask, added to a rotated CRC so a CRC of CRCs does not collide.
const CRC_MASK_DELTA: u32 = 0xa282_ead8;
/// CRC-32C (Castagnoli), reflected polynomial.
const CRC32C_POLY: u32 = 0x82f6_3b78;

const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ CRC32C_POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// CRC-32C of `bytes` (crc32c("123456789") = 0xE3069283).
pub fn crc32c(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |crc, &b| {
        CRC32C_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

/// TFRecord's masked CRC: rotated right by 15 and offset.
pub fn masked_crc32c(bytes: &[u8]) -> u32 {
    crc32c(bytes).rotate_right(15).wrapping_add(CRC_MASK_DELTA)
}

/// One TFRecord: length, its masked CRC, `data`, its masked CRC.
pub fn tfrecord(data: &[u8]) -> Vec<u8> {
    let length = (data.len() as u64).to_le_bytes();
    let mut record = Vec::with_capacity(data.len() + 16);
    record.extend_from_slice(&length);
    record.extend_from_slice(&masked_crc32c(&length).to_le_bytes());
    record.extend_from_slice(data);
    record.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    record
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A protobuf field key: field number and wire type (0 varint, 1 fixed64, 2 bytes, 5 fixed32).
fn key(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    varint(out, u64::from(field) << 3 | u64::from(wire_type));
}

fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(out, field, 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// An `Event` with `wall_time` and `step`, and either a file version or one scalar.
fn event(wall_time: f64, step: u64, body: EventBody) -> Vec<u8> {
    let mut out = Vec::new();
    key(&mut out, 1, 1);
    out.extend_from_slice(&wall_time.to_le_bytes());
    key(&mut out, 2, 0);
    varint(&mut out, step);
    match body {
        EventBody::FileVersion(version) => bytes_field(&mut out, 3, version.as_bytes()),
        EventBody::Scalar(tag, value) => {
            let mut summary_value = Vec::new();
            bytes_field(&mut summary_value, 1, tag.as_bytes());
            key(&mut summary_value, 2, 5);
            summary_value.extend_from_slice(&value.to_le_bytes());
            let mut summary = Vec::new();
            bytes_field(&mut summary, 1, &summary_value);
            bytes_field(&mut out, 5, &summary);
        }
    }
    out
}

enum EventBody<'a> {
    FileVersion(&'a str),
    Scalar(&'a str, f32),
}

/// The encoded `Event` of one scalar (the record's data).
pub fn scalar_event(wall_time: f64, step: u64, tag: &str, value: f32) -> Vec<u8> {
    event(wall_time, step, EventBody::Scalar(tag, value))
}

/// The encoded first `Event` of a file.
pub fn file_version_event(wall_time: f64) -> Vec<u8> {
    event(wall_time, 0, EventBody::FileVersion(FILE_VERSION))
}

fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `--report-to` as OpenCLIP reads it (comma-separated backends): whether TensorBoard is
/// asked for. wandb (also in `all`) and trackio need a network service and are refused.
pub fn tensorboard_requested(report_to: &str) -> Result<bool, String> {
    let mut tensorboard = false;
    for backend in report_to
        .split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
    {
        match backend {
            "tensorboard" => tensorboard = true,
            "wandb" | "all" | "trackio" => {
                return Err(format!(
                    "--report-to {report_to}: {backend} is not supported (it needs a network \
                     service); use --report-to tensorboard"
                ));
            }
            other => {
                return Err(format!(
                    "--report-to {other}: expected tensorboard (or '' for none)"
                ));
            }
        }
    }
    Ok(tensorboard)
}

/// One events file of a run, appended to scalar by scalar (a resumed run starts a new file
/// beside the old; TensorBoard reads a folder's files as one run).
pub struct EventWriter {
    path: PathBuf,
    file: BufWriter<File>,
}

impl EventWriter {
    /// A new events file under `dir` (created), named as TensorFlow names them.
    pub fn create(dir: &Path) -> Result<EventWriter, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let now = unix_seconds();
        let path = dir.join(format!(
            "events.out.tfevents.{}.clusterclip.{}",
            now as u64,
            std::process::id()
        ));
        let file = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut writer = EventWriter {
            path,
            file: BufWriter::new(file),
        };
        writer.write(&file_version_event(now))?;
        writer.flush()?;
        Ok(writer)
    }

    fn write(&mut self, event: &[u8]) -> Result<(), String> {
        self.file
            .write_all(&tfrecord(event))
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }

    /// Queues one scalar; [`EventWriter::flush`] writes it out.
    pub fn scalar(&mut self, tag: &str, step: u64, value: f32) -> Result<(), String> {
        self.write(&scalar_event(unix_seconds(), step, tag, value))
    }

    pub fn flush(&mut self) -> Result<(), String> {
        self.file
            .flush()
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }
}
