//! `make-shards`: a CSV of image paths and captions to WebDataset shards (`{key}.jpg`, `.png`
//! or `.webp` as stored, other formats re-encoded to `.png`; `{key}.txt`, `{key}.json`) plus
//! img2dataset's `sizes.json`. Shards are written into a hidden folder beside `--out` and
//! renamed into place only when the run succeeds, so a failed run leaves no partial dataset.

use super::error::DataError;
use super::loader::check_max_bad_fraction;
use super::records::{
    BadKind, Payload, RawRecord, RecordKeys, caption_text, decode_rgb, read_csv_records,
    read_image_file,
};
use super::tar::TarWriter;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct MakeShardsConfig {
    pub csv: PathBuf,
    pub out_dir: PathBuf,
    pub shard_size: usize,
    pub keys: RecordKeys,
    pub max_bad_fraction: f64,
}

#[derive(Clone, Debug, Default)]
pub struct MakeShardsReport {
    pub shards: Vec<PathBuf>,
    pub samples: u64,
    pub bad: u64,
    pub first_offenders: Vec<String>,
    /// Images in a format the readers' default `--image-key` skips (BMP, GIF, TIFF, ...),
    /// stored as PNG.
    pub reencoded: u64,
    /// A spec that reads the shards back, e.g. `out/shard-{000000..000003}.tar`.
    pub spec: String,
}

const OFFENDERS_KEPT: usize = 5;

/// Writes the shards; rows with a missing or undecodable image, a bad caption or a wrong field
/// count are skipped and counted. `--out` must be new or empty: writing into old shards would
/// mix two datasets (overwriting some, leaving stale higher-numbered ones).
pub fn make_shards(cfg: &MakeShardsConfig) -> Result<MakeShardsReport, DataError> {
    if cfg.shard_size == 0 {
        return Err(DataError::Config(
            "--shard-size must be positive".to_string(),
        ));
    }
    check_max_bad_fraction(cfg.max_bad_fraction)?;
    refuse_used_folder(&cfg.out_dir)?;
    let records = read_csv_records(&cfg.csv, &cfg.keys)?;
    let staging = staging_folder(&cfg.out_dir)?;
    std::fs::create_dir(&staging).map_err(io_error(&staging))?;
    let written = write_shards(cfg, records, &staging).and_then(|mut report| {
        publish(&staging, &cfg.out_dir)?;
        report.shards = (0..report.shards.len())
            .map(|i| cfg.out_dir.join(shard_name(i as u64)))
            .collect();
        Ok(report)
    });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    written
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + use<> {
    let path = path.to_path_buf();
    move |source| DataError::Io { path, source }
}

fn shard_name(index: u64) -> String {
    format!("shard-{index:06}.tar")
}

/// An existing `--out` must be an empty folder.
fn refuse_used_folder(out: &Path) -> Result<(), DataError> {
    if !out.exists() {
        return Ok(());
    }
    let mut entries = std::fs::read_dir(out).map_err(io_error(out))?;
    match entries.next() {
        None => Ok(()),
        Some(entry) => {
            let first = entry.map_err(io_error(out))?.file_name();
            Err(DataError::Config(format!(
                "--out {} is not empty (holds {}): choose a new or empty folder, so old shards are not mixed with new ones",
                out.display(),
                first.to_string_lossy()
            )))
        }
    }
}

/// A hidden folder beside `out` (same file system, so the final rename is atomic).
fn staging_folder(out: &Path) -> Result<PathBuf, DataError> {
    let absolute = std::path::absolute(out).map_err(io_error(out))?;
    let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name()) else {
        return Err(DataError::Config(format!(
            "--out {} names no folder",
            out.display()
        )));
    };
    std::fs::create_dir_all(parent).map_err(io_error(parent))?;
    Ok(parent.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// Moves the finished shards to `out`, replacing it when it is an empty folder.
fn publish(staging: &Path, out: &Path) -> Result<(), DataError> {
    if out.exists() {
        refuse_used_folder(out)?;
        std::fs::remove_dir(out).map_err(io_error(out))?;
    }
    std::fs::rename(staging, out).map_err(io_error(out))
}

/// Writes shards and sizes.json into `folder`; fails on too many bad rows or on none good.
fn write_shards(
    cfg: &MakeShardsConfig,
    records: Vec<RawRecord>,
    folder: &Path,
) -> Result<MakeShardsReport, DataError> {
    let mut report = MakeShardsReport::default();
    let mut writer: Option<(PathBuf, TarWriter<BufWriter<File>>)> = None;
    let mut sizes: Vec<(String, u64)> = Vec::new();
    for record in records {
        let checked = record.payload.and_then(|payload| match payload {
            Payload::File { path, caption } => {
                let text = caption_text(&caption)?;
                let image = read_image_file(&path)?;
                let (rgb, width, height) = decode_rgb(&image)?;
                Ok((path, text, image, rgb, width, height))
            }
            _ => Err(BadKind::MissingImage),
        });
        let (path, caption, image, rgb, width, height) = match checked {
            Ok(parts) => parts,
            Err(kind) => {
                report.bad += 1;
                if report.first_offenders.len() < OFFENDERS_KEPT {
                    report
                        .first_offenders
                        .push(format!("{}: {kind}", record.origin));
                }
                continue;
            }
        };
        let (extension, image) = match stored_extension(&image) {
            Some(extension) => (extension, image),
            None => {
                report.reencoded += 1;
                (
                    "png",
                    png_bytes(rgb, width, height).map_err(io_error(&path))?,
                )
            }
        };
        let index = report.samples;
        let shard_index = index / cfg.shard_size as u64;
        if index % cfg.shard_size as u64 == 0 {
            if let Some((shard_path, tar)) = writer.take() {
                tar.finish().map_err(io_error(&shard_path))?;
            }
            let shard_path = folder.join(shard_name(shard_index));
            let file = File::create(&shard_path).map_err(io_error(&shard_path))?;
            sizes.push((shard_name(shard_index), 0));
            report.shards.push(shard_path.clone());
            writer = Some((shard_path, TarWriter::new(BufWriter::new(file))));
        }
        let Some((shard_path, tar)) = writer.as_mut() else {
            continue;
        };
        let key = format!("{index:09}");
        let json = format!(
            "{{\"key\": \"{key}\", \"caption\": {}, \"source\": {}, \"width\": {width}, \"height\": {height}}}",
            json_string(&caption),
            json_string(&path.display().to_string())
        );
        let write = |tar: &mut TarWriter<_>| -> std::io::Result<()> {
            tar.append(&format!("{key}.{extension}"), &image)?;
            tar.append(&format!("{key}.txt"), caption.as_bytes())?;
            tar.append(&format!("{key}.json"), json.as_bytes())
        };
        write(tar).map_err(io_error(shard_path))?;
        if let Some(last) = sizes.last_mut() {
            last.1 += 1;
        }
        report.samples += 1;
    }
    if let Some((shard_path, tar)) = writer.take() {
        tar.finish().map_err(io_error(&shard_path))?;
    }
    let seen = report.samples + report.bad;
    if report.bad as f64 > cfg.max_bad_fraction * seen as f64 {
        return Err(DataError::TooManyBad {
            spec: cfg.csv.display().to_string(),
            bad: report.bad,
            seen,
            max_fraction: cfg.max_bad_fraction,
            first_offenders: report.first_offenders,
        });
    }
    if report.samples == 0 {
        let skipped = match report.first_offenders.first() {
            Some(first) => format!("all {} rows are bad; first: {first}", report.bad),
            None => "it holds no row".to_string(),
        };
        return Err(DataError::spec(
            &cfg.csv.display().to_string(),
            format!("no sample to write ({skipped}); nothing written"),
        ));
    }
    let entries: Vec<String> = sizes
        .iter()
        .map(|(name, n)| format!("  {}: {n}", json_string(name)))
        .collect();
    let sizes_path = folder.join("sizes.json");
    std::fs::write(&sizes_path, format!("{{\n{}\n}}\n", entries.join(",\n")))
        .map_err(io_error(&sizes_path))?;
    let last = report.shards.len().saturating_sub(1);
    report.spec = cfg
        .out_dir
        .join(format!("shard-{{000000..{last:06}}}.tar"))
        .display()
        .to_string();
    Ok(report)
}

/// Extension of a format the readers' default `--image-key` takes, stored as it is; None for
/// the others (BMP, GIF, TIFF, ...), which are re-encoded.
fn stored_extension(bytes: &[u8]) -> Option<&'static str> {
    let format = image::guess_format(bytes).ok()?;
    match format {
        image::ImageFormat::Jpeg => Some("jpg"),
        image::ImageFormat::Png => Some("png"),
        image::ImageFormat::WebP => Some("webp"),
        _ => None,
    }
}

/// RGB pixels as a PNG file, lossless, so a re-encoded image decodes to what the reader saw.
fn png_bytes(rgb: Vec<u8>, width: usize, height: usize) -> std::io::Result<Vec<u8>> {
    let image = image::RgbImage::from_raw(width as u32, height as u32, rgb)
        .ok_or_else(|| std::io::Error::other("pixel buffer does not match its size"))?;
    let mut out = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(std::io::Error::other)?;
    Ok(out.into_inner())
}

/// A JSON string literal.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
