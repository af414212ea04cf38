//! The batch loader the trainer and evaluator call: a reader thread (with a shuffle buffer for
//! WebDataset), `workers` threads that decode, crop, normalise and tokenise, bounded queues
//! between them, and batches assembled in record order, so a run is reproducible for a seed
//! whatever the number of workers. Bad records are skipped and counted.

use super::error::DataError;
use super::image_ops::{Normalisation, SampleRng};
use super::records::{
    BadKind, RankShare, RawRecord, ReadOrder, RecordKeys, RecordStream, Sample, SampleShape,
    process_record, record_stream,
};
use super::spec::{BuiltinSplit, DataSource, DatasetType, resolve_spec};
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

/// Offenders named in stats and errors.
const OFFENDERS_KEPT: usize = 5;
/// Records seen before the bad fraction can stop an unfinished pass (a pass's end always checks).
const BAD_CHECK_MIN_RECORDS: u64 = 1000;
/// Mid-pass, the records seen must span this many of the largest lost shard before the share
/// decides: one lost shard of 10 000 read first is not 100% bad data.
const LOST_SHARDS_BEFORE_JUDGING: u64 = 100;
/// Bad records in a row that stop an endless stream: with `--max-bad-fraction 1` nothing else
/// would end a resampled stream of bad records, and it would spin without filling a batch.
pub const ENDLESS_BAD_STREAK: u64 = 10_000;
/// Decode threads unless `--workers` says otherwise.
pub const DEFAULT_WORKERS: usize = 2;
/// Share of bad records tolerated unless `--max-bad-fraction` says otherwise.
pub const DEFAULT_MAX_BAD_FRACTION: f64 = 0.01;

/// `--max-bad-fraction` must be a share in [0, 1] (NaN too is refused); train, eval, data stats
/// and make-shards all check it here.
pub fn check_max_bad_fraction(value: f64) -> Result<(), DataError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(DataError::Config(format!(
            "--max-bad-fraction {value} must be in [0, 1]"
        )))
    }
}

/// The error for `stats` of `spec` when its bad records are over `max_fraction` of those seen.
pub fn check_bad_share(spec: &str, stats: &DataStats, max_fraction: f64) -> Result<(), DataError> {
    let seen = stats.samples + stats.bad;
    if stats.bad as f64 > max_fraction * seen as f64 {
        return Err(DataError::TooManyBad {
            spec: spec.to_string(),
            bad: stats.bad,
            seen,
            max_fraction,
            first_offenders: stats.first_offenders.clone(),
        });
    }
    Ok(())
}

/// How records are read and when to give up, whatever the spec: the data flags that `train`,
/// `eval` and `data` share.
#[derive(Clone, Debug)]
pub struct ReadOptions {
    pub dataset_type: DatasetType,
    pub keys: RecordKeys,
    /// Decode threads; 0 counts as 1.
    pub workers: usize,
    /// Stop with an error when more than this share of records is bad.
    pub max_bad_fraction: f64,
    /// Endless sampling with replacement (training only).
    pub resampled: bool,
    /// Mean and std the images are normalised with (`--image-mean`, `--image-std`).
    pub normalisation: Normalisation,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            dataset_type: DatasetType::Auto,
            keys: RecordKeys::default(),
            workers: DEFAULT_WORKERS,
            max_bad_fraction: DEFAULT_MAX_BAD_FRACTION,
            resampled: false,
            normalisation: Normalisation::CLIP,
        }
    }
}

#[derive(Clone, Debug)]
pub struct LoaderConfig {
    pub spec: String,
    pub dataset_type: DatasetType,
    pub image_size: usize,
    pub context_length: usize,
    pub vocab_size: usize,
    pub batch_size: usize,
    /// Random crops and shuffling (training) or centre crops in stored order (evaluation).
    pub train: bool,
    pub seed: u64,
    /// Decode threads; 0 counts as 1.
    pub workers: usize,
    /// Stop with an error when more than this share of records is bad (`--max-bad-fraction`).
    pub max_bad_fraction: f64,
    /// Endless sampling with replacement (`--dataset-resampled`).
    pub resampled: bool,
    /// WebDataset samples shuffled in a buffer of this many records when training.
    pub shuffle_buffer: usize,
    pub keys: RecordKeys,
    pub normalisation: Normalisation,
    /// This rank's share of the records (training with several ranks).
    pub share: RankShare,
}

impl LoaderConfig {
    /// Training order, read as [`ReadOptions::default`] says.
    pub fn new(
        spec: &str,
        image_size: usize,
        context_length: usize,
        vocab_size: usize,
        batch_size: usize,
    ) -> Self {
        let ReadOptions {
            dataset_type,
            keys,
            workers,
            max_bad_fraction,
            resampled,
            normalisation,
        } = ReadOptions::default();
        LoaderConfig {
            spec: spec.to_string(),
            dataset_type,
            image_size,
            context_length,
            vocab_size,
            batch_size,
            train: true,
            seed: 0,
            workers,
            max_bad_fraction,
            resampled,
            shuffle_buffer: 1000,
            keys,
            normalisation,
            share: RankShare::ALL,
        }
    }

    /// This configuration read as `options` say.
    pub fn with_options(mut self, options: &ReadOptions) -> Self {
        self.dataset_type = options.dataset_type;
        self.keys = options.keys.clone();
        self.workers = options.workers;
        self.max_bad_fraction = options.max_bad_fraction;
        self.resampled = options.resampled;
        self.normalisation = options.normalisation;
        self
    }
}

/// One batch: `images` is `[n, 3, image_size, image_size]` normalised
/// (`LoaderConfig::normalisation`), `tokens` is `[n, context_length]` zero padded; `labels` for
/// image folders and the built-in dataset.
/// The last batch of a pass may hold fewer than `batch_size` samples.
#[derive(Clone, Debug)]
pub struct Batch {
    pub images: Vec<f32>,
    pub tokens: Vec<u32>,
    pub labels: Option<Vec<usize>>,
    pub n: usize,
    /// Each sample's image file, or its record ("shard.tar:key") where it has none.
    pub image_names: Vec<String>,
    /// Each sample's caption as read (before tokenising).
    pub captions: Vec<String>,
}

impl Batch {
    pub fn empty() -> Batch {
        Batch {
            images: Vec::new(),
            tokens: Vec::new(),
            labels: None,
            n: 0,
            image_names: Vec::new(),
            captions: Vec::new(),
        }
    }

    /// Keeps the first `n` samples.
    pub fn truncate(&mut self, n: usize) {
        if n >= self.n {
            return;
        }
        self.images.truncate(n * self.images.len() / self.n);
        self.tokens.truncate(n * self.tokens.len() / self.n);
        if let Some(labels) = &mut self.labels {
            labels.truncate(n);
        }
        self.image_names.truncate(n);
        self.captions.truncate(n);
        self.n = n;
    }
}

/// Caption lengths in tokens (with start and end), before truncation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaptionLengths {
    pub count: u64,
    pub min: usize,
    pub max: usize,
    pub total: u64,
    /// Captions longer than the context, so truncated.
    pub truncated: u64,
}

#[derive(Clone, Debug, Default)]
pub struct DataStats {
    /// Good samples delivered.
    pub samples: u64,
    pub bad: u64,
    /// Bad records per kind, e.g. ("empty caption", 3), in order of first appearance.
    pub bad_by_kind: Vec<(String, u64)>,
    /// "origin: reason" of the first few bad records.
    pub first_offenders: Vec<String>,
    /// Time `next_batch` spent waiting for workers.
    pub wait_seconds: f64,
    pub caption_tokens: CaptionLengths,
}

impl DataStats {
    /// Counts a bad record as the records it stands for (a lost shard's samples).
    fn record_bad(&mut self, origin: &str, kind: &BadKind) {
        let records = kind.records();
        self.bad += records;
        let name = bad_kind_name(kind);
        match self.bad_by_kind.iter_mut().find(|(k, _)| *k == name) {
            Some((_, count)) => *count += records,
            None => self.bad_by_kind.push((name, records)),
        }
        if self.first_offenders.len() < OFFENDERS_KEPT {
            self.first_offenders.push(format!("{origin}: {kind}"));
        }
    }

    fn record_caption(&mut self, tokens: usize, context_length: usize) {
        let lengths = &mut self.caption_tokens;
        lengths.min = if lengths.count == 0 {
            tokens
        } else {
            lengths.min.min(tokens)
        };
        lengths.max = lengths.max.max(tokens);
        lengths.count += 1;
        lengths.total += tokens as u64;
        lengths.truncated += u64::from(tokens > context_length);
    }

    /// Adds the counts of `other`, read after these; offenders stay the first few of both.
    pub fn merge(&mut self, other: &DataStats) {
        self.samples += other.samples;
        self.bad += other.bad;
        for (kind, n) in &other.bad_by_kind {
            match self.bad_by_kind.iter_mut().find(|(k, _)| k == kind) {
                Some((_, count)) => *count += n,
                None => self.bad_by_kind.push((kind.clone(), *n)),
            }
        }
        let room = OFFENDERS_KEPT.saturating_sub(self.first_offenders.len());
        self.first_offenders
            .extend(other.first_offenders.iter().take(room).cloned());
        self.wait_seconds += other.wait_seconds;
        let (mine, theirs) = (&mut self.caption_tokens, &other.caption_tokens);
        if theirs.count > 0 {
            mine.min = if mine.count == 0 {
                theirs.min
            } else {
                mine.min.min(theirs.min)
            };
            mine.max = mine.max.max(theirs.max);
            mine.count += theirs.count;
            mine.total += theirs.total;
            mine.truncated += theirs.truncated;
        }
    }

    /// The bad records in one line: "3 bad of 1000 records skipped (image file missing 2, image
    /// does not decode 1); first: a.csv:line 4: image file missing; ..." or "no bad records
    /// in 1000".
    pub fn bad_records_line(&self) -> String {
        let seen = self.samples + self.bad;
        if self.bad == 0 {
            return format!("no bad records in {seen}");
        }
        format!(
            "{} bad of {seen} records skipped {}",
            self.bad,
            self.bad_details()
        )
    }

    /// "(empty caption 2, no image member 1); first: a.tar:x: empty caption; ...".
    fn bad_details(&self) -> String {
        let kinds: Vec<String> = self
            .bad_by_kind
            .iter()
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        format!(
            "({}); first: {}",
            kinds.join(", "),
            self.first_offenders.join("; ")
        )
    }

    /// One summary line: "1200 samples, 3 bad (empty caption 2, no image member 1): a.tar:x: ...".
    pub fn summary(&self) -> String {
        let mut line = format!("{} samples, {} bad", self.samples, self.bad);
        if self.bad > 0 {
            line.push(' ');
            line.push_str(&self.bad_details());
        }
        line
    }
}

/// Kind of a bad record without its details, for counting.
fn bad_kind_name(kind: &BadKind) -> String {
    match kind {
        BadKind::CorruptImage(_) => "image does not decode".to_string(),
        BadKind::UnreadableShard(_) => "shard unreadable".to_string(),
        BadKind::UnreadableFile(_) => "image file unreadable".to_string(),
        BadKind::ColumnCount { .. } => "wrong field count".to_string(),
        BadKind::FileTooLarge(_) => "image file too large".to_string(),
        BadKind::ShardLost { cause, .. } => bad_kind_name(cause),
        other => other.to_string(),
    }
}

/// A processed record, tagged with its place in the stream.
struct Processed {
    seq: u64,
    origin: String,
    /// The image file, or the origin where the record has none (`Batch::image_names`).
    image_name: String,
    sample: Result<Sample, BadKind>,
}

pub struct Loader {
    results: Option<Receiver<Processed>>,
    threads: Vec<JoinHandle<()>>,
    reorder: BTreeMap<u64, Processed>,
    next_seq: u64,
    finished: bool,
    stats: DataStats,
    /// What was read since the last [`Loader::take_recent_stats`].
    recent: DataStats,
    spec: String,
    batch_size: usize,
    image_size: usize,
    context_length: usize,
    max_bad_fraction: f64,
    /// Resampled or generated without end: only [`ENDLESS_BAD_STREAK`] ends a run of bad records.
    endless: bool,
    /// Bad records read since the last good one (a lost shard is one read).
    bad_streak: u64,
    /// Most records one bad record stood for so far (a lost shard's samples).
    largest_loss: u64,
    num_samples: Option<u64>,
    class_names: Option<Vec<String>>,
}

/// Resolves the spec (failing up front when it matches nothing) and starts the threads.
pub fn open_loader(cfg: &LoaderConfig) -> Result<Loader, DataError> {
    if cfg.batch_size == 0 || cfg.image_size == 0 {
        return Err(DataError::Config(format!(
            "batch size {} and image size {} must be positive",
            cfg.batch_size, cfg.image_size
        )));
    }
    check_max_bad_fraction(cfg.max_bad_fraction)?;
    let source = resolve_spec(&cfg.spec, cfg.dataset_type)?;
    let order = match (cfg.resampled, cfg.train) {
        (true, _) => ReadOrder::Resampled { seed: cfg.seed },
        (false, true) => ReadOrder::Shuffled { seed: cfg.seed },
        (false, false) => ReadOrder::Sequential,
    };
    let stream = record_stream(&source, &cfg.keys, order, cfg.share)?;
    let buffer = match source {
        DataSource::WebDataset { .. } if cfg.train => cfg.shuffle_buffer,
        _ => 0,
    };
    let (num_samples, class_names) = source_size_and_classes(&source)?;
    let endless = cfg.resampled || matches!(source, DataSource::Builtin(BuiltinSplit::ShapesTrain));
    let shape = SampleShape {
        image_size: cfg.image_size,
        context_length: cfg.context_length,
        vocab_size: cfg.vocab_size,
        train: cfg.train,
        seed: cfg.seed,
        normalisation: cfg.normalisation,
    };
    let workers = cfg.workers.max(1);
    let queue = 2 * cfg.batch_size.max(workers);
    let (work_tx, work_rx) = sync_channel::<(u64, RawRecord)>(queue);
    let (result_tx, result_rx) = sync_channel::<Processed>(queue);
    let mut threads = Vec::with_capacity(workers + 1);
    let shuffle_seed = cfg.seed ^ 0x5348_5546_464C_4521;
    threads.push(std::thread::spawn(move || {
        read_records(stream, buffer, shuffle_seed, work_tx)
    }));
    let work_rx = Arc::new(Mutex::new(work_rx));
    for _ in 0..workers {
        let work_rx = Arc::clone(&work_rx);
        let result_tx = result_tx.clone();
        threads.push(std::thread::spawn(move || {
            process_records(&work_rx, &result_tx, &shape)
        }));
    }
    Ok(Loader {
        results: Some(result_rx),
        threads,
        reorder: BTreeMap::new(),
        next_seq: 0,
        finished: false,
        stats: DataStats::default(),
        recent: DataStats::default(),
        spec: cfg.spec.clone(),
        batch_size: cfg.batch_size,
        image_size: cfg.image_size,
        context_length: cfg.context_length,
        max_bad_fraction: cfg.max_bad_fraction,
        endless,
        bad_streak: 0,
        largest_loss: 1,
        num_samples,
        class_names,
    })
}

fn source_size_and_classes(
    source: &DataSource,
) -> Result<(Option<u64>, Option<Vec<String>>), DataError> {
    Ok(match source {
        DataSource::WebDataset { num_samples, .. } => (*num_samples, None),
        DataSource::Csv { .. } => (None, None),
        DataSource::ImageFolder(folder) => (
            Some(folder.items.len() as u64),
            Some(folder.classes.clone()),
        ),
        DataSource::Builtin(split) => {
            let size = match split {
                BuiltinSplit::ShapesTrain => None,
                BuiltinSplit::ShapesVal => Some(super::shapes::VAL_SIZE as u64),
                BuiltinSplit::ShapesTest => Some(super::shapes::TEST_SIZE as u64),
            };
            (size, Some(super::shapes::zeroshot_classes()))
        }
    })
}

/// Reader thread: numbers records in delivery order, through a shuffle buffer when asked.
fn read_records(
    stream: RecordStream,
    buffer: usize,
    seed: u64,
    work: SyncSender<(u64, RawRecord)>,
) {
    let mut rng = SampleRng::new(seed);
    let mut held: Vec<RawRecord> = Vec::with_capacity(buffer);
    let mut seq = 0u64;
    let send = |record: RawRecord, seq: &mut u64| {
        let sent = work.send((*seq, record)).is_ok();
        *seq += 1;
        sent
    };
    for record in stream {
        if buffer == 0 {
            if !send(record, &mut seq) {
                return;
            }
            continue;
        }
        held.push(record);
        if held.len() >= buffer {
            let pick = rng.below(held.len());
            if !send(held.swap_remove(pick), &mut seq) {
                return;
            }
        }
    }
    while !held.is_empty() {
        let pick = rng.below(held.len());
        if !send(held.swap_remove(pick), &mut seq) {
            return;
        }
    }
}

/// Worker thread: processes records until the reader is done or the loader is dropped.
fn process_records(
    work: &Mutex<Receiver<(u64, RawRecord)>>,
    results: &SyncSender<Processed>,
    shape: &SampleShape,
) {
    loop {
        let next = match work.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        let Ok((seq, record)) = next else { return };
        let image_name = match &record.payload {
            Ok(payload) => payload.image_path().map(|p| p.display().to_string()),
            Err(_) => None,
        }
        .unwrap_or_else(|| record.origin.clone());
        let sample = match record.payload {
            Ok(payload) => catch_unwind(AssertUnwindSafe(|| process_record(payload, shape, seq)))
                .unwrap_or_else(|_| Err(BadKind::CorruptImage("decoder panicked".to_string()))),
            Err(kind) => Err(kind),
        };
        if results
            .send(Processed {
                seq,
                origin: record.origin,
                image_name,
                sample,
            })
            .is_err()
        {
            return;
        }
    }
}

impl Loader {
    /// The next batch; None at the end of a pass (never for endless streams); an error when
    /// bad records exceed the allowed share.
    pub fn next_batch(&mut self) -> Result<Option<Batch>, DataError> {
        let mut batch = Batch::empty();
        Ok(self.next_batch_into(&mut batch)?.then_some(batch))
    }

    /// [`Loader::next_batch`] into `batch`, reusing its buffers (a 224 px batch of 64 is 38 MB,
    /// whose fresh pages cost more than copying into it); false at the end of a pass.
    pub fn next_batch_into(&mut self, batch: &mut Batch) -> Result<bool, DataError> {
        let plane = 3 * self.image_size * self.image_size;
        batch.images.clear();
        batch.images.reserve(self.batch_size * plane);
        batch.tokens.clear();
        batch.tokens.reserve(self.batch_size * self.context_length);
        let mut labels = batch.labels.take().unwrap_or_default();
        labels.clear();
        batch.image_names.clear();
        batch.captions.clear();
        let mut all_labelled = true;
        batch.n = 0;
        while batch.n < self.batch_size {
            let Some(processed) = self.next_processed() else {
                break;
            };
            match processed.sample {
                Ok(sample) => {
                    batch.images.extend_from_slice(&sample.image);
                    batch.tokens.extend_from_slice(&sample.tokens);
                    all_labelled &= sample.label.is_some();
                    labels.push(sample.label.unwrap_or(0));
                    batch.image_names.push(processed.image_name);
                    batch.captions.push(sample.caption);
                    for stats in [&mut self.stats, &mut self.recent] {
                        stats.samples += 1;
                        stats.record_caption(sample.caption_tokens, self.context_length);
                    }
                    batch.n += 1;
                    self.bad_streak = 0;
                }
                Err(kind) => {
                    for stats in [&mut self.stats, &mut self.recent] {
                        stats.record_bad(&processed.origin, &kind);
                    }
                    self.bad_streak += 1;
                    self.largest_loss = self.largest_loss.max(kind.records());
                    // Checked per record: a stream of bad records never fills a batch.
                    self.check_bad_fraction(false)?;
                }
            }
        }
        self.check_bad_fraction(self.finished && self.reorder.is_empty())?;
        batch.labels = all_labelled.then_some(labels);
        Ok(batch.n > 0)
    }

    /// The next record in stream order, waiting for workers as needed.
    fn next_processed(&mut self) -> Option<Processed> {
        loop {
            if let Some(processed) = self.reorder.remove(&self.next_seq) {
                self.next_seq += 1;
                return Some(processed);
            }
            if self.finished {
                // A record lost to a dead worker would leave a gap: skip to what arrived.
                let (&seq, _) = self.reorder.iter().next()?;
                self.next_seq = seq;
                continue;
            }
            let waited = Instant::now();
            let received = self.results.as_ref().map(Receiver::recv);
            self.stats.wait_seconds += waited.elapsed().as_secs_f64();
            match received {
                Some(Ok(processed)) => {
                    self.reorder.insert(processed.seq, processed);
                }
                _ => self.finished = true,
            }
        }
    }

    /// Mid-pass the share decides only after [`BAD_CHECK_MIN_RECORDS`] (and enough records beside
    /// the largest lost shard); at `pass_end` always.
    fn check_bad_fraction(&self, pass_end: bool) -> Result<(), DataError> {
        if self.endless && self.bad_streak >= ENDLESS_BAD_STREAK {
            return Err(DataError::NoGoodRecords {
                spec: self.spec.clone(),
                streak: self.bad_streak,
                first_offenders: self.stats.first_offenders.clone(),
            });
        }
        let seen = self.stats.samples + self.stats.bad;
        let enough =
            BAD_CHECK_MIN_RECORDS.max(LOST_SHARDS_BEFORE_JUDGING.saturating_mul(self.largest_loss));
        if pass_end || seen >= enough {
            check_bad_share(&self.spec, &self.stats, self.max_bad_fraction)?;
        }
        Ok(())
    }

    /// Counts of this pass so far.
    pub fn stats(&self) -> &DataStats {
        &self.stats
    }

    /// Counts since the last call (or the start), for reports per epoch that span passes.
    pub fn take_recent_stats(&mut self) -> DataStats {
        std::mem::take(&mut self.recent)
    }

    /// Records in one pass when known (sizes.json, image folders, built-in val/test); this
    /// counts bad records too.
    pub fn num_samples(&self) -> Option<u64> {
        self.num_samples
    }

    /// Class names for labelled sources (image folders, built-in dataset), indexed by label.
    pub fn class_names(&self) -> Option<&[String]> {
        self.class_names.as_deref()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the result queue stops the workers, whose exit stops the reader.
        self.results = None;
        self.reorder.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
