//! `make-shards`: a CSV of image paths and captions to WebDataset shards (`{key}.jpg` or
//! `.png` as stored, `{key}.txt`, `{key}.json`) plus img2dataset's `sizes.json`.

use super::error::DataError;
use super::records::{BadKind, Payload, RecordKeys, caption_text, decode_rgb, read_csv_records};
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
    /// A spec that reads the shards back, e.g. `out/shard-{000000..000003}.tar`.
    pub spec: String,
}

const OFFENDERS_KEPT: usize = 5;

/// Writes the shards; rows with a missing or undecodable image, a bad
/// caption or a wrong field count are skipped and counted.
pub fn make_shards(cfg: &MakeShardsConfig) -> Result<MakeShardsReport, DataError> {
    if cfg.shard_size == 0 {
        return Err(DataError::Config(
            "--shard-size must be positive".to_string(),
        ));
    }
    let records = read_csv_records(&cfg.csv, &cfg.keys)?;
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Io { path, source }
    };
    std::fs::create_dir_all(&cfg.out_dir).map_err(io_error(&cfg.out_dir))?;
    let mut report = MakeShardsReport::default();
    let mut writer: Option<(PathBuf, TarWriter<BufWriter<File>>)> = None;
    let mut sizes: Vec<(String, u64)> = Vec::new();
    for record in records {
        let checked = record.payload.and_then(|payload| match payload {
            Payload::File { path, caption } => {
                let text = caption_text(&caption)?;
                let image = std::fs::read(&path).map_err(|err| match err.kind() {
                    std::io::ErrorKind::NotFound => BadKind::MissingFile,
                    _ => BadKind::UnreadableFile(err.to_string()),
                })?;
                let extension = image_extension(&image)?;
                let (_, width, height) = decode_rgb(&image)?;
                Ok((path, text, image, extension, width, height))
            }
            _ => Err(BadKind::MissingImage),
        });
        let (path, caption, image, extension, width, height) = match checked {
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
        let index = report.samples;
        let shard_index = index / cfg.shard_size as u64;
        if index % cfg.shard_size as u64 == 0 {
            if let Some((shard_path, tar)) = writer.take() {
                tar.finish().map_err(io_error(&shard_path))?;
            }
            let shard_path = cfg.out_dir.join(format!("shard-{shard_index:06}.tar"));
            let file = File::create(&shard_path).map_err(io_error(&shard_path))?;
            sizes.push((format!("shard-{shard_index:06}.tar"), 0));
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
    let entries: Vec<String> = sizes
        .iter()
        .map(|(name, n)| format!("  {}: {n}", json_string(name)))
        .collect();
    let sizes_path = cfg.out_dir.join("sizes.json");
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

/// Format extension as stored ("jpg", "png", "webp"), from the image's first bytes.
fn image_extension(bytes: &[u8]) -> Result<&'static str, BadKind> {
    let corrupt = |reason: String| BadKind::CorruptImage(reason);
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| corrupt(e.to_string()))?;
    let extension = match reader.format() {
        Some(image::ImageFormat::Jpeg) => "jpg",
        Some(image::ImageFormat::Png) => "png",
        Some(image::ImageFormat::WebP) => "webp",
        Some(other) => other.extensions_str().first().copied().unwrap_or("img"),
        None => return Err(corrupt("unknown image format".to_string())),
    };
    Ok(extension)
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
