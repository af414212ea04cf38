//! Records: what a reader yields before decoding (encoded image + caption, or a file to read),
//! every way a record can be bad, and turning a record into a model-ready sample.

use super::csv::parse_rows;
use super::error::DataError;
use super::image_ops::{Normalisation, RgbView, SampleRng};
use super::prompts::ZERO_SHOT_TEMPLATES;
use super::spec::{BuiltinSplit, DataSource, shard_sizes};
use super::tar::{TarError, TarMember, TarReader};
use super::tokenizer::{Tokenizer, frame_tokens};
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Largest decoded image, in bytes of RGBA, before a file is taken for a decompression bomb.
const MAX_DECODE_BYTES: u64 = 512 << 20;
/// Largest image file or shard member read, so that `/dev/zero`, a stray disk image or a small
/// gzip shard claiming gigabytes cannot fill the memory; real photos are a few MB.
pub const MAX_IMAGE_FILE_BYTES: u64 = 64 << 20;

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
    /// An image file over [`MAX_IMAGE_FILE_BYTES`], named because a CSV origin names only a line.
    FileTooLarge(PathBuf),
    /// A shard that ends cleanly before its first sample.
    EmptyShard,
    /// A broken or empty shard, standing for the samples it lost: those sizes.json promised
    /// beyond what was read, or one record when no sizes.json lists the shard.
    ShardLost {
        cause: Box<BadKind>,
        lost: Option<u64>,
    },
}

impl BadKind {
    /// How many records this bad record stands for.
    pub fn records(&self) -> u64 {
        match self {
            BadKind::ShardLost { lost: Some(n), .. } => (*n).max(1),
            _ => 1,
        }
    }
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
            BadKind::FileTooLarge(path) => write!(
                f,
                "image file {} is over the {} MiB cap per image",
                path.display(),
                MAX_IMAGE_FILE_BYTES >> 20
            ),
            BadKind::EmptyShard => f.write_str("shard holds no sample"),
            BadKind::ShardLost {
                cause,
                lost: Some(n),
            } => write!(f, "{cause}, {n} samples lost (count from sizes.json)"),
            BadKind::ShardLost { cause, lost: None } => write!(
                f,
                "{cause}, the rest of the shard lost (no sizes.json lists it, so counted as 1)"
            ),
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

impl Payload {
    /// The record's image as a user names it: the file of a CSV row or a folder, `None` where
    /// the record's origin says it (shards, built-in).
    pub fn image_path(&self) -> Option<&Path> {
        match self {
            Payload::File { path, .. } | Payload::Labelled { path, .. } => Some(path),
            Payload::Encoded { .. } | Payload::Shape { .. } => None,
        }
    }
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
    pub caption: String,
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
    pub normalisation: Normalisation,
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
        shape.normalisation.train_transform(
            view,
            size,
            &mut SampleRng::for_sample(shape.seed, index),
            &mut image,
        );
    } else if width == size && height == size {
        shape.normalisation.normalise_rgb(&rgb, size, &mut image);
    } else {
        shape.normalisation.eval_transform(view, size, &mut image);
    }
    let ids = Tokenizer::shared().encode_ids(&caption);
    let tokens = frame_tokens(&ids, shape.context_length, shape.vocab_size);
    Ok(Sample {
        image,
        tokens,
        label,
        caption_tokens: ids.len() + 2,
        caption,
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

/// Reads an image file of at most [`MAX_IMAGE_FILE_BYTES`]; devices and special files too, since
/// their reported length (0 for `/dev/zero`) says nothing.
pub fn read_image_file(path: &Path) -> Result<Vec<u8>, BadKind> {
    let unreadable = |err: std::io::Error| match err.kind() {
        std::io::ErrorKind::NotFound => BadKind::MissingFile,
        _ => BadKind::UnreadableFile(err.to_string()),
    };
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|file| file.take(MAX_IMAGE_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_IMAGE_FILE_BYTES {
        return Err(BadKind::FileTooLarge(path.to_path_buf()));
    }
    Ok(bytes)
}

/// A JPEG is whole when an end-of-image marker (FF D9) follows its last start-of-scan (FF DA):
/// the decoder fills a cut-off scan with grey instead of failing, as PIL would ("image file is
/// truncated"). Entropy-coded data stuffs every FF with 00, so neither marker occurs inside it.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xFF, marker]);
    match (last(0xDA), last(0xD9)) {
        (Some(scan), Some(end)) => end > scan,
        (None, _) => true,
        (Some(_), None) => false,
    }
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
    if reader.format() == Some(image::ImageFormat::Jpeg) && !jpeg_is_complete(bytes) {
        return Err(BadKind::CorruptImage(
            "JPEG cut off: no end-of-image marker after its last scan".to_string(),
        ));
    }
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

/// One rank's share of a training pass (issue 14). WebDataset shards are dealt out whole:
/// the k-th shard of the (seeded, rank-independent) shard order goes to rank k mod R, as
/// OpenCLIP splits shards over ranks. Other sources deal out records in blocks: record i of
/// the pass goes to rank (i / block) mod R, so with `block` the per-rank batch a global batch
/// is the one process's batch of the same records, ranks in order, and a run continues on
/// another rank count from the same position. A pass of known length ends at its last whole
/// global batch (OpenCLIP's drop_last), so no rank reads a batch the others do not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RankShare {
    pub rank: usize,
    pub ranks: usize,
    pub block: usize,
}

impl RankShare {
    /// The whole pass (one process).
    pub const ALL: RankShare = RankShare {
        rank: 0,
        ranks: 1,
        block: 1,
    };

    /// Whether item `index` of a pass (a record, or a shard) belongs to this rank.
    fn owns(self, index: usize, block: usize) -> bool {
        (index / block.max(1)) % self.ranks.max(1) == self.rank
    }

    /// `items` keeping this rank's: blocks of `block` (1 for shards).
    fn filter<T: Send + 'static>(
        self,
        items: impl Iterator<Item = T> + Send + 'static,
        block: usize,
    ) -> Box<dyn Iterator<Item = T> + Send> {
        if self.ranks <= 1 {
            return Box::new(items);
        }
        Box::new(
            items
                .enumerate()
                .filter(move |(i, _)| self.owns(*i, block))
                .map(|(_, item)| item),
        )
    }
}

/// The records of a resolved source in `order`. CSV files are read and their headers checked here.
pub fn record_stream(
    source: &DataSource,
    keys: &RecordKeys,
    order: ReadOrder,
    share: RankShare,
) -> Result<RecordStream, DataError> {
    if let DataSource::WebDataset { shards, .. } = source {
        if shards.len() < share.ranks {
            return Err(DataError::Config(format!(
                "{} shards for {} ranks: each rank reads whole shards, so it needs at least one",
                shards.len(),
                share.ranks
            )));
        }
        return source_records(source, keys, order, share);
    }
    let records = source_records(source, keys, order, share)?;
    if share.ranks <= 1 {
        return Ok(records);
    }
    let records: RecordStream = match records.size_hint() {
        (n, Some(upper)) if n == upper => {
            Box::new(records.take(n - n % (share.ranks * share.block.max(1))))
        }
        _ => records,
    };
    Ok(share.filter(records, share.block))
}

/// Every record of `source` in `order`; WebDataset shards already dealt out by `share`.
fn source_records(
    source: &DataSource,
    keys: &RecordKeys,
    order: ReadOrder,
    share: RankShare,
) -> Result<RecordStream, DataError> {
    match source {
        DataSource::WebDataset { shards, .. } => {
            let shard_order = share.filter(index_order(shards.len(), order), 1);
            let expected = shard_sizes(shards);
            let shards = shards.clone();
            Ok(Box::new(WebDatasetRecords {
                shards: Box::new(shard_order.map(move |i| (shards[i].clone(), expected[i]))),
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

/// A shard's bytes: plain tar, or gzip-compressed (`.tar.gz`, `.tgz`, as webdataset reads).
type ShardBytes = Box<dyn Read + Send>;

/// gzip's magic bytes, checked instead of the file name so a misnamed shard reads too.
const GZIP_MAGIC: [u8; 2] = [0x1F, 0x8B];

fn open_shard(path: &Path) -> std::io::Result<TarReader<ShardBytes>> {
    let mut file = BufReader::new(File::open(path)?);
    let bytes: ShardBytes = if file.fill_buf()?.starts_with(&GZIP_MAGIC) {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    Ok(TarReader::with_member_cap(bytes, MAX_IMAGE_FILE_BYTES))
}

/// The shard being read: its name, the samples sizes.json promises, records yielded so far.
struct OpenShard {
    name: String,
    expected: Option<u64>,
    yielded: u64,
    reader: TarReader<ShardBytes>,
}

/// WebDataset samples: consecutive tar members sharing a key (the name up to the first '.' of
/// its last path part) form one sample; the part after that '.' is the member's extension.
struct WebDatasetRecords {
    /// Shards in reading order, with their sample counts from sizes.json where listed.
    shards: Box<dyn Iterator<Item = (PathBuf, Option<u64>)> + Send>,
    current: Option<OpenShard>,
    /// First member of the next sample, read while finding the end of the previous one.
    pending: Option<(String, String, Vec<u8>)>,
    /// The bad record of a broken archive, returned after the complete sample before the break.
    broken: Option<RawRecord>,
    keys: RecordKeys,
}

/// A bad record for a shard that lost samples: counted as what sizes.json promised beyond the
/// `read` records, so a lost shard weighs what it held (a whole shard is not one record).
fn shard_lost(origin: String, cause: BadKind, expected: Option<u64>, read: u64) -> RawRecord {
    let lost = expected.map(|n| n.saturating_sub(read));
    let payload = match lost {
        Some(n) if n <= 1 => Err(cause),
        _ => Err(BadKind::ShardLost {
            cause: Box::new(cause),
            lost,
        }),
    };
    RawRecord { origin, payload }
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
            let Some(shard) = self.current.as_mut() else {
                let (path, expected) = self.shards.next()?;
                let name = path.display().to_string();
                match open_shard(&path) {
                    Ok(reader) => {
                        self.current = Some(OpenShard {
                            name,
                            expected,
                            yielded: 0,
                            reader,
                        })
                    }
                    Err(err) => {
                        let cause = BadKind::UnreadableShard(err.to_string());
                        return Some(shard_lost(name, cause, expected, 0));
                    }
                }
                continue;
            };
            let name = shard.name.clone();
            let mut group: Option<MemberGroup> = self
                .pending
                .take()
                .map(|(key, ext, data)| (key, vec![(ext, data)]));
            loop {
                match shard.reader.next() {
                    Some(Ok(TarMember {
                        name: member_name,
                        data,
                    })) => {
                        let Some((key, ext)) = split_member_name(&member_name) else {
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
                        let (expected, yielded) = (shard.expected, shard.yielded);
                        self.current = None;
                        self.pending = None;
                        let kind = match err {
                            TarError::Truncated { .. } => BadKind::TruncatedTar,
                            TarError::BadHeader { .. } => BadKind::BadTarHeader,
                            TarError::Io(io) => BadKind::UnreadableShard(io.to_string()),
                            too_large @ TarError::TooLarge { .. } => {
                                BadKind::UnreadableShard(too_large.to_string())
                            }
                        };
                        // A complete sample read before the break still counts; an incomplete
                        // one is part of the break, which stands for the samples lost.
                        let Some((key, members)) = group else {
                            return Some(shard_lost(name, kind, expected, yielded));
                        };
                        let record = self.sample_record(&name, &key, members);
                        if record.payload.is_err() {
                            return Some(shard_lost(record.origin, kind, expected, yielded));
                        }
                        let origin = format!("{name}: after {key}");
                        self.broken = Some(shard_lost(origin, kind, expected, yielded + 1));
                        return Some(record);
                    }
                    None => {
                        let (expected, yielded) = (shard.expected, shard.yielded);
                        self.current = None;
                        if group.is_none() && yielded == 0 && expected != Some(0) {
                            // Nothing was read, so no "rest of the shard" to speak of.
                            return Some(match expected {
                                Some(_) => shard_lost(name, BadKind::EmptyShard, expected, 0),
                                None => RawRecord {
                                    origin: name,
                                    payload: Err(BadKind::EmptyShard),
                                },
                            });
                        }
                        break;
                    }
                }
            }
            if let Some((key, members)) = group {
                if let Some(shard) = self.current.as_mut() {
                    shard.yielded += 1;
                }
                return Some(self.sample_record(&name, &key, members));
            }
        }
    }
}
