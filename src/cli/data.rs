//! `clusterclip data make-shards` and `clusterclip data stats`, and the data flags that
//! `train` and `eval` share ([`DataFlags`]).

use super::CliResult;
use crate::data::image_ops::Normalisation;
use crate::data::loader::{
    DEFAULT_MAX_BAD_FRACTION, DEFAULT_WORKERS, LoaderConfig, ReadOptions, check_bad_share,
    check_max_bad_fraction, open_loader,
};
use crate::data::records::RecordKeys;
use crate::data::shards::{MakeShardsConfig, make_shards};
use crate::data::spec::{BuiltinSplit, DataSource, DatasetType, resolve_spec};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Subcommand)]
pub enum DataCommand {
    /// Convert a CSV/TSV of image paths and captions into WebDataset shards plus sizes.json.
    MakeShards(MakeShardsArgs),
    /// Count samples, bad records and caption lengths of a data spec.
    Stats(StatsArgs),
}

/// Data-reading flags shared by `train`, `eval` and `data`.
#[derive(clap::Args, Clone, Debug)]
pub struct DataFlags {
    /// Reader: auto picks by the spec (builtin:, imagefolder:, .csv/.tsv, .tar, a folder).
    #[arg(long, default_value = "auto")]
    pub dataset_type: DatasetType,
    /// CSV/TSV field separator (one byte; `\t` for a tab).
    #[arg(long, default_value = "\\t")]
    pub csv_separator: String,
    /// CSV column holding image paths (relative to the CSV's folder).
    #[arg(long, default_value = "filepath")]
    pub csv_img_key: String,
    /// CSV column holding captions.
    #[arg(long, default_value = "title")]
    pub csv_caption_key: String,
    /// WebDataset image member extensions, first present wins.
    #[arg(long, default_value = "jpg;png;jpeg;webp")]
    pub image_key: String,
    /// WebDataset caption member extension.
    #[arg(long, default_value = "txt")]
    pub text_key: String,
    /// Decode threads (render threads for builtin:shapes).
    #[arg(long, default_value_t = DEFAULT_WORKERS)]
    pub workers: usize,
    /// Stop when more than this share of records is bad [default: 0.01; `data stats` counts
    /// the whole pass and then fails only when this is given].
    #[arg(long)]
    pub max_bad_fraction: Option<f64>,
    /// Sample shards (WebDataset) or records with replacement, endlessly.
    #[arg(long)]
    pub dataset_resampled: bool,
}

impl DataFlags {
    pub fn record_keys(&self) -> Result<RecordKeys, String> {
        let separator = match self.csv_separator.as_str() {
            "\\t" | "\t" | "tab" => b'\t',
            one if one.len() == 1 => one.as_bytes()[0],
            other => {
                return Err(format!(
                    "--csv-separator {other:?} must be one byte (or \\t)"
                ));
            }
        };
        Ok(RecordKeys {
            image_keys: self
                .image_key
                .split(';')
                .map(|key| key.trim().to_ascii_lowercase())
                .collect(),
            text_key: self.text_key.to_ascii_lowercase(),
            csv_separator: separator,
            csv_img_key: self.csv_img_key.clone(),
            csv_caption_key: self.csv_caption_key.clone(),
        })
    }

    /// `--max-bad-fraction`, or its default; checked to be a share.
    pub fn max_bad_fraction(&self) -> Result<f64, String> {
        let value = self.max_bad_fraction.unwrap_or(DEFAULT_MAX_BAD_FRACTION);
        check_max_bad_fraction(value).map_err(|e| e.to_string())?;
        Ok(value)
    }

    /// The readers' settings these flags give; the error names the flag.
    pub fn read_options(&self) -> Result<ReadOptions, String> {
        Ok(ReadOptions {
            dataset_type: self.dataset_type,
            keys: self.record_keys()?,
            workers: self.workers,
            max_bad_fraction: self.max_bad_fraction()?,
            resampled: self.dataset_resampled,
            normalisation: Normalisation::CLIP,
        })
    }

    /// A loader configuration for `spec` with these flags.
    pub fn loader_config(
        &self,
        spec: &str,
        image_size: usize,
        context_length: usize,
        vocab_size: usize,
        batch_size: usize,
    ) -> Result<LoaderConfig, String> {
        Ok(
            LoaderConfig::new(spec, image_size, context_length, vocab_size, batch_size)
                .with_options(&self.read_options()?),
        )
    }
}

#[derive(clap::Args)]
pub struct MakeShardsArgs {
    /// CSV/TSV with image paths and captions.
    #[arg(long)]
    pub csv: PathBuf,
    /// Output folder for shard-000000.tar, ... and sizes.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Samples per shard.
    #[arg(long, default_value_t = 1000)]
    pub shard_size: usize,
    #[command(flatten)]
    pub data: DataFlags,
}

#[derive(clap::Args)]
pub struct StatsArgs {
    /// Data spec: shards, CSV, imagefolder:DIR or builtin:NAME.
    pub spec: String,
    /// Image side the pipeline produces while counting.
    #[arg(long, default_value_t = 64)]
    pub image_size: usize,
    /// Context length that captions are measured against.
    #[arg(long, default_value_t = 77)]
    pub context_length: usize,
    /// Stop after this many records (0: the whole pass; endless sources need one).
    #[arg(long, default_value_t = 0)]
    pub limit: u64,
    #[command(flatten)]
    pub data: DataFlags,
}

pub fn run(command: DataCommand) -> CliResult {
    match command {
        DataCommand::MakeShards(args) => run_make_shards(args),
        DataCommand::Stats(args) => run_stats(args),
    }
}

fn run_make_shards(args: MakeShardsArgs) -> CliResult {
    let cfg = MakeShardsConfig {
        csv: args.csv,
        out_dir: args.out,
        shard_size: args.shard_size,
        keys: args.data.record_keys()?,
        max_bad_fraction: args.data.max_bad_fraction()?,
    };
    let report = make_shards(&cfg)?;
    println!(
        "wrote {} samples in {} shards; {} bad rows skipped",
        report.samples,
        report.shards.len(),
        report.bad
    );
    if report.reencoded > 0 {
        println!(
            "{} images stored as PNG (their format is not one --image-key reads by default)",
            report.reencoded
        );
    }
    for offender in &report.first_offenders {
        println!("  skipped {offender}");
    }
    println!("read them with: --train-data '{}'", report.spec);
    Ok(())
}

fn run_stats(args: StatsArgs) -> CliResult {
    const BATCH: usize = 64;
    let endless = args.data.dataset_resampled
        || matches!(
            resolve_spec(&args.spec, args.data.dataset_type)?,
            DataSource::Builtin(BuiltinSplit::ShapesTrain)
        );
    if endless && args.limit == 0 {
        return Err(format!("{} is an endless stream: pass --limit", args.spec).into());
    }
    let mut cfg = args.data.loader_config(
        &args.spec,
        args.image_size,
        args.context_length,
        49_408,
        BATCH,
    )?;
    cfg.train = false;
    // The whole pass is counted first; the user's limit, when given, judges it at the end.
    cfg.max_bad_fraction = 1.0;
    let started = Instant::now();
    let mut loader = open_loader(&cfg)?;
    while loader.next_batch()?.is_some() {
        let seen = loader.stats().samples + loader.stats().bad;
        if args.limit > 0 && seen >= args.limit {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let stats = loader.stats();
    println!("{}", stats.summary());
    if let Some(n) = loader.num_samples() {
        println!("sizes: {n} records expected");
    }
    if let Some(classes) = loader.class_names() {
        println!("classes: {}", classes.len());
    }
    let lengths = &stats.caption_tokens;
    if lengths.count > 0 {
        println!(
            "caption tokens (with start/end): min {} mean {:.1} max {}; {} of {} over context {}",
            lengths.min,
            lengths.total as f64 / lengths.count as f64,
            lengths.max,
            lengths.truncated,
            lengths.count,
            args.context_length
        );
    }
    println!(
        "{:.0} samples/s with {} workers ({:.1} s)",
        stats.samples as f64 / seconds.max(1e-9),
        cfg.workers,
        seconds
    );
    if let Some(limit) = args.data.max_bad_fraction {
        check_bad_share(&args.spec, stats, limit)?;
    }
    Ok(())
}
