//! Records: what a reader yields before decoding (encoded image + caption, or a file to read),
//! every way a record can be bad, and turning a record into a model-ready sample.

use super::csv::parse_rows;
use super::error::DataError;
use super::image_ops::{RgbView, SampleRng, eval_transform, normalise_rgb, train_transform};
use super::prompts::ZERO_SHOT_TEMPLATES;
use super::spec::{BuiltinSplit, DataSource};
use super::tar::{TarError, TarMember, TarReader};
use super::tokenizer::{Tokenizer, frame_tokens};
use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

/// Largest decoded image, in bytes of RGBA, before a file is taken for a decompression bomb.
const MAX_DECODE_BYTES: u64 = 512 << 20;

/// Why a record was skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BadKind {
    MissingImage,
    MissingCaption,
    EmptyCaption,
    NonUtf8Caption,
    CorruptImage(String),
    /// A tar cut off mid-member.
    TruncatedTar,
    BadTarHeader,
    UnreadableShard(String),
    /// A CSV row with fewer or more fields than the header.
    ColumnCount {
        expected: usize,
        found: usize,
    },
    MissingFile,
    UnreadableFile(String),
}

impl fmt::Display for BadKind {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            BadKind::MissingImage => f.write_str("no image member"),
            BadKind::MissingCaption => f.write_str("no caption"),
            BadKind::EmptyCaption => f.write_str("empty caption"),
            BadKind::NonUtf8Caption => f.write_str("caption is not UTF-8"),
            BadKind::CorruptImage(reason) => write!(f, "image does not decode ({reason})"),
            BadKind::TruncatedTar => f.write_str("tar cut off mid-member"),
            BadKind::BadTarHeader => f.write_str("garbled tar header"),
            BadKind::UnreadableShard(reason) => write!(f, "shard unreadable ({reason})"),
            BadKind::ColumnCount { expected, found } => {
                write!(f, "{found} fields, header has {expected}")
            }
            BadKind::MissingFile => f.write_str("image file missing"),
            BadKind::UnreadableFile(reason) => write!(f, "image file unreadable ({reason})"),
        }
    }
}

/// A record before decoding.
#[derive(Clone, Debug)]
pub enum Payload {
    /// A WebDataset sample: encoded image bytes and raw caption bytes.
    Encoded { image: Vec<u8>, caption: Vec<u8> },
    /// A CSV row: an image file and raw caption bytes.
    File { path: PathBuf, caption: Vec<u8> },
    /// An image-folder file with its class.
    Labelled {
        path: PathBuf,
        label: usize,
        class_name: String,
    },
    /// A generated image of the built-in dataset.
    Shape { split: BuiltinSplit, index: u64 },
}

/// `origin` names the record for error messages: "shard.tar:key", "file.csv:line 12", a path.
#[derive(Clone, Debug)]
pub struct RawRecord {
    pub origin: String,
    pub payload: Result<Payload, BadKind>,
}

/// Column and member names of the readers.
#[derive(Clone, Debug)]
pub struct RecordKeys {
    /// WebDataset image members, first match wins (`--image-key`, default `jpg;png;jpeg;webp`).
    pub image_keys: Vec<String>,
    /// WebDataset caption member (`--text-key`, default `txt`).
    pub text_key: String,
    pub csv_separator: u8,
    pub csv_img_key: String,
    pub csv_caption_key: String,
}

impl Default for RecordKeys {
    fn default() -> Self {
        RecordKeys {
            image_keys: ["jpg", "png", "jpeg", "webp"].map(String::from).to_vec(),
            text_key: "txt".to_string(),
            csv_separator: b'\t',
            csv_img_key: "filepath".to_string(),
            csv_caption_key: "title".to_string(),
        }
    }
}

/// A model-ready sample: CHW image, framed tokens, class label where the source has one.
#[derive(Clone, Debug)]
pub struct Sample {
    pub image: Vec<f32>,
    pub tokens: Vec<u32>,
    pub label: Option<usize>,
    /// Caption length in tokens with start and end, before truncation.
    pub caption_tokens: usize,
}

/// Sizes and augmentation of samples.
#[derive(Clone, Copy, Debug)]
pub struct SampleShape {
    pub image_size: usize,
    pub context_length: usize,
    pub vocab_size: usize,
    /// RandomResizedCrop (true) or resize + centre crop (false).
    pub train: bool,
    pub seed: u64,
}

/// Decodes, crops, normalises and tokenises one record; `index` seeds its random crop.
pub fn process_record(
    payload: Payload,
    shape: &SampleShape,
    index: u64,
) -> Result<Sample, BadKind> {
    let (rgb, width, height, caption, label) = match payload {
        Payload::Encoded { image, caption } => {
            let caption = caption_text(&caption)?;
            let (rgb, w, h) = decode_rgb(&image)?;
            (rgb, w, h, caption, None)
        }
        Payload::File { path, caption } => {
            let caption = caption_text(&caption)?;
            let (rgb, w, h) = decode_rgb(&read_image_file(&path)?)?;
            (rgb, w, h, caption, None)
        }
        Payload::Labelled {
            path,
            label,
            class_name,
        } => {
            let caption = ZERO_SHOT_TEMPLATES[0].replace("{}", &class_name);
            let (rgb, w, h) = decode_rgb(&read_image_file(&path)?)?;
            (rgb, w, h, caption, Some(label))
        }
        Payload::Shape { split, index } => {
            return Ok(super::builtin::shape_sample(split, index, shape));
        }
    };
    let size = shape.image_size;
    let mut image = vec![0f32; 3 * size * size];
    let view = RgbView {
        rgb: &rgb,
        width,
        height,
    };
    if shape.train {
        train_transform(
            view,
            size,
            &mut SampleRng::for_sample(shape.seed, index),
            &mut image,
        );
    } else if width == size && height == size {
        normalise_rgb(&rgb, size, &mut image);
    } else {
        eval_transform(view, size, &mut image);
    }
    let ids = Tokenizer::shared().encode_ids(&caption);
    let tokens = frame_tokens(&ids, shape.context_length, shape.vocab_size);
    Ok(Sample {
        image,
        tokens,
        label,
        caption_tokens: ids.len() + 2,
    })
}

/// A caption must be UTF-8 and hold something besides white space.
pub fn caption_text(bytes: &[u8]) -> Result<String, BadKind> {
    let text = std::str::from_utf8(bytes).map_err(|_| BadKind::NonUtf8Caption)?;
    if text.trim().is_empty() {
        return Err(BadKind::EmptyCaption);
    }
    Ok(text.to_string())
}

fn read_image_file(path: &Path) -> Result<Vec<u8>, BadKind> {
    std::fs::read(path).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => BadKind::MissingFile,
        _ => BadKind::UnreadableFile(err.to_string()),
    })
}

/// Decodes jpeg / png / webp (any format the `image` build reads) to RGB bytes, width, height.
pub fn decode_rgb(bytes: &[u8]) -> Result<(Vec<u8>, usize, usize), BadKind> {
    let corrupt = |err: image::ImageError| BadKind::CorruptImage(err.to_string());
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|err| BadKind::CorruptImage(err.to_string()))?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let decoded = reader.decode().map_err(corrupt)?.into_rgb8();
    let (width, height) = (decoded.width() as usize, decoded.height() as usize);
    if width == 0 || height == 0 {
        return Err(BadKind::CorruptImage("empty image".to_string()));
    }
    Ok((decoded.into_raw(), width, height))
}

/// The order records are read in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOrder {
    /// As stored, once.
    Sequential,
    /// One pass in a seeded random order (shards shuffled for WebDataset).
    Shuffled { seed: u64 },
    /// Endless sampling with replacement (`--dataset-resampled`): shards for WebDataset, records
    /// otherwise.
    Resampled { seed: u64 },
}

pub type RecordStream = Box<dyn Iterator<Item = RawRecord> + Send>;

/// The records of a resolved source in `order`. CSV files are read and their headers checked here.
pub fn record_stream(
    source: &DataSource,
    keys: &RecordKeys,
    order: ReadOrder,
) -> Result<RecordStream, DataError> {
    match source {
        DataSource::WebDataset { shards, .. } => {
            let shard_order = index_order(shards.len(), order);
            let shards = shards.clone();
            Ok(Box::new(WebDatasetRecords {
                shards: Box::new(shard_order.map(move |i| shards[i].clone())),
                current: None,
                pending: None,
                broken: None,
                keys: keys.clone(),
            }))
        }
        DataSource::Csv { files } => {
            let mut records = Vec::new();
            for file in files {
                records.extend(read_csv_records(file, keys)?);
            }
            Ok(Box::new(
                index_order(records.len(), order).map(move |i| records[i].clone()),
            ))
        }
        DataSource::ImageFolder(folder) => {
            let folder = folder.clone();
            Ok(Box::new(index_order(folder.items.len(), order).map(
                move |i| {
                    let (path, label) = folder.items[i].clone();
                    let class_name = folder.classes[label].clone();
                    RawRecord {
                        origin: path.display().to_string(),
                        payload: Ok(Payload::Labelled {
                            path,
                            label,
                            class_name,
                        }),
                    }
                },
            )))
        }
        DataSource::Builtin(split) => Ok(super::builtin::shape_records(*split, order)),
    }
}

/// Indices 0..n in the order asked for; endless for `Resampled` (empty when n is 0).
pub fn index_order(n: usize, order: ReadOrder) -> Box<dyn Iterator<Item = usize> + Send> {
    match order {
        ReadOrder::Sequential => Box::new(0..n),
        ReadOrder::Shuffled { seed } => {
            let mut indices: Vec<usize> = (0..n).collect();
            let mut rng = SampleRng::new(seed);
            for i in (1..n).rev() {
                indices.swap(i, rng.below(i + 1));
            }
            Box::new(indices.into_iter())
        }
        ReadOrder::Resampled { seed } if n > 0 => {
            let mut rng = SampleRng::new(seed);
            Box::new(std::iter::repeat_with(move || rng.below(n)))
        }
        ReadOrder::Resampled { .. } => Box::new(std::iter::empty()),
    }
}

/// Reads a CSV/TSV file into records; a missing image or caption column fails here.
pub fn read_csv_records(file: &Path, keys: &RecordKeys) -> Result<Vec<RawRecord>, DataError> {
    let bytes = std::fs::read(file).map_err(|source| DataError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    let rows = parse_rows(&bytes, keys.csv_separator);
    let Some((header, rows)) = rows.split_first() else {
        return Err(DataError::CsvHeader {
            file: file.to_path_buf(),
            reason: "empty file, no header row".to_string(),
        });
    };
    let names: Vec<String> = header
        .fields
        .iter()
        .map(|f| {
            String::from_utf8_lossy(f)
                .trim_start_matches('\u{FEFF}')
                .trim()
                .to_string()
        })
        .collect();
    let column = |key: &str, flag: &str| {
        names.iter().position(|name| name == key).ok_or_else(|| DataError::CsvHeader {
            file: file.to_path_buf(),
            reason: format!("no column {key:?} ({flag}); columns are {names:?} (separator {:?}, --csv-separator)", keys.csv_separator as char),
        })
    };
    let image_column = column(&keys.csv_img_key, "--csv-img-key")?;
    let caption_column = column(&keys.csv_caption_key, "--csv-caption-key")?;
    let base = file.parent().unwrap_or(Path::new(""));
    let file_name = file.display();
    Ok(rows
        .iter()
        .map(|row| {
            let origin = format!("{file_name}:line {}", row.line);
            if row.fields.len() != names.len() {
                let bad = BadKind::ColumnCount {
                    expected: names.len(),
                    found: row.fields.len(),
                };
                return RawRecord {
                    origin,
                    payload: Err(bad),
                };
            }
            let payload = match std::str::from_utf8(&row.fields[image_column]) {
                Ok(path) if !path.trim().is_empty() => Ok(Payload::File {
                    path: base.join(path.trim()),
                    caption: row.fields[caption_column].clone(),
                }),
                Ok(_) => Err(BadKind::MissingImage),
                Err(_) => Err(BadKind::MissingFile),
            };
            RawRecord { origin, payload }
        })
        .collect())
}

/// A sample's key and its (extension, bytes) members.
type MemberGroup = (String, Vec<(String, Vec<u8>)>);

/// WebDataset samples: consecutive tar members sharing a key (the name up to the first '.' of
/// its last path part) form one sample; the part after that '.' is the member's extension.
struct WebDatasetRecords {
    shards: Box<dyn Iterator<Item = PathBuf> + Send>,
    current: Option<(String, TarReader<BufReader<File>>)>,
    /// First member of the next sample, read while finding the end of the previous one.
    pending: Option<(String, String, Vec<u8>)>,
    /// The bad record of a broken archive, returned after the complete sample before the break.
    broken: Option<RawRecord>,
    keys: RecordKeys,
}

/// Splits a member name into (key, lower-case extension); None for names without an extension.
pub fn split_member_name(name: &str) -> Option<(String, String)> {
    let base_start = name.rfind('/').map_or(0, |i| i + 1);
    let dot = name[base_start..].find('.')? + base_start;
    if dot == base_start {
        return None;
    }
    Some((
        name[..dot].to_string(),
        name[dot + 1..].to_ascii_lowercase(),
    ))
}

impl WebDatasetRecords {
    fn sample_record(&self, shard: &str, key: &str, members: Vec<(String, Vec<u8>)>) -> RawRecord {
        let origin = format!("{shard}:{key}");
        let mut image = None;
        for wanted in &self.keys.image_keys {
            if let Some((_, data)) = members.iter().find(|(ext, _)| ext == wanted) {
                image = Some(data.clone());
                break;
            }
        }
        let caption = members
            .iter()
            .find(|(ext, _)| *ext == self.keys.text_key)
            .map(|(_, data)| data.clone());
        let payload = match (image, caption) {
            (None, _) => Err(BadKind::MissingImage),
            (_, None) => Err(BadKind::MissingCaption),
            (Some(image), Some(caption)) => Ok(Payload::Encoded { image, caption }),
        };
        RawRecord { origin, payload }
    }
}

impl Iterator for WebDatasetRecords {
    type Item = RawRecord;

    fn next(&mut self) -> Option<RawRecord> {
        if let Some(broken) = self.broken.take() {
            return Some(broken);
        }
        loop {
            let Some((shard, reader)) = self.current.as_mut() else {
                let path = self.shards.next()?;
                let name = path.display().to_string();
                match File::open(&path) {
                    Ok(file) => self.current = Some((name, TarReader::new(BufReader::new(file)))),
                    Err(err) => {
                        return Some(RawRecord {
                            origin: name,
                            payload: Err(BadKind::UnreadableShard(err.to_string())),
                        });
                    }
                }
                continue;
            };
            let shard = shard.clone();
            let mut group: Option<MemberGroup> = self
                .pending
                .take()
                .map(|(key, ext, data)| (key, vec![(ext, data)]));
            loop {
                match reader.next() {
                    Some(Ok(TarMember { name, data })) => {
                        let Some((key, ext)) = split_member_name(&name) else {
                            continue;
                        };
                        match group.as_mut() {
                            Some((group_key, members)) if *group_key == key => {
                                members.push((ext, data))
                            }
                            Some(_) => {
                                self.pending = Some((key, ext, data));
                                break;
                            }
                            None => group = Some((key, vec![(ext, data)])),
                        }
                    }
                    Some(Err(err)) => {
                        self.current = None;
                        self.pending = None;
                        let kind = match err {
                            TarError::Truncated { .. } => BadKind::TruncatedTar,
                            TarError::BadHeader { .. } => BadKind::BadTarHeader,
                            TarError::Io(io) => BadKind::UnreadableShard(io.to_string()),
                        };
                        // One bad record per broken archive: a complete sample read before the
                        // break still counts, an incomplete one is part of the break.
                        let Some((key, members)) = group else {
                            return Some(RawRecord {
                                origin: shard,
                                payload: Err(kind),
                            });
                        };
                        let record = self.sample_record(&shard, &key, members);
                        if record.payload.is_err() {
                            return Some(RawRecord {
                                origin: record.origin,
                                payload: Err(kind),
                            });
                        }
                        self.broken = Some(RawRecord {
                            origin: format!("{shard}: after {key}"),
                            payload: Err(kind),
                        });
                        return Some(record);
                    }
                    None => {
                        self.current = None;
                        break;
                    }
                }
            }
            if let Some((key, members)) = group {
                return Some(self.sample_record(&shard, &key, members));
            }
        }
    }
}
