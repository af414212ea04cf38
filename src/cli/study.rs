//! `clusterclip study`: `train`'s flags give the budget and data every run shares; the grid flags
//! say which runs (method.md M7). `--mask`, `--seed`, `--name`, `--logs` and `--resume` of the
//! training flags are set per run by the grid.

use std::path::PathBuf;

use crate::graph::Backend;
use crate::study::{Arm, Grid, run_grid, write_report};

use crate::eval::linear_probe::ProbeOptions;
use crate::eval::tasks::zeroshot_set;
use crate::train::checkpoint::load_model;

use super::CliResult;
use super::eval::linear_probe_task;
use super::train::TrainArgs;

#[derive(clap::Args, Clone, Debug)]
pub struct StudyArgs {
    /// The study folder: runs/ (one run folder each), study.md, study.json and the plots.
    #[arg(long)]
    pub out: PathBuf,
    /// Comma-separated: none, random, cluster (pinned to random's keep count at each ratio,
    /// M7) and cluster-own (the cluster flags' own bounds).
    #[arg(long, default_value = "none,random,cluster,cluster-own")]
    pub strategies: String,
    /// Comma-separated mask ratios of random and pinned cluster masking.
    #[arg(long, default_value = "0.5")]
    pub ratios: String,
    /// Comma-separated patch-feature modes of the cluster strategies (M3.1).
    #[arg(long, default_value = "normalized,rgb")]
    pub feature_modes: String,
    /// Comma-separated seeds (initialisation, data order and masks).
    #[arg(long, default_value = "0,1,2")]
    pub seeds: String,
    /// Linear probe (M6) after each run: the labelled set it is fitted on (imagefolder:DIR or
    /// builtin:shapes-zeroshot); needs --probe-data.
    #[arg(long)]
    pub probe_train_data: Option<String>,
    /// The labelled set the probe is scored on.
    #[arg(long)]
    pub probe_data: Option<String>,
    /// Use at most this many images of each probe set.
    #[arg(long)]
    pub probe_samples: Option<usize>,
    /// Title of study.md.
    #[arg(long, default_value = "Masking study")]
    pub title: String,
    #[command(flatten)]
    pub train: TrainArgs,
}

fn list<T>(
    flag: &str,
    text: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            parse(s).map_err(|e| {
                if e.starts_with("--") {
                    e
                } else {
                    format!("{flag}: {e}")
                }
            })
        })
        .collect()
}

impl StudyArgs {
    pub fn grid(&self) -> Result<Grid, String> {
        let grid = Grid {
            arms: list("--strategies", &self.strategies, Arm::parse)?,
            ratios: list("--ratios", &self.ratios, |s| {
                s.parse::<f64>()
                    .map_err(|_| format!("'{s}' is not a number"))
            })?,
            features: list("--feature-modes", &self.feature_modes, |s| {
                s.parse::<crate::masking::MaskFeatures>()
                    .map(|_| s.to_string())
            })?,
            seeds: list("--seeds", &self.seeds, |s| {
                s.parse::<u64>()
                    .map_err(|_| format!("'{s}' is not a seed (an integer)"))
            })?,
        };
        grid.validate()?;
        Ok(grid)
    }
}

/// The linear probe of a run's final checkpoint, as `eval --task linear_probe` runs it.
fn probe_eval(
    train_spec: &str,
    test_spec: &str,
    limit: Option<usize>,
    read: &crate::data::loader::ReadOptions,
    checkpoint: &std::path::Path,
    backend: &Backend,
) -> Result<serde_json::Value, String> {
    let checkpoint = load_model(checkpoint, None)?;
    let clip = checkpoint.model(backend);
    let read = &crate::data::loader::ReadOptions {
        normalisation: checkpoint.normalisation,
        ..read.clone()
    };
    let train = zeroshot_set(train_spec, &clip, limit, read)
        .map_err(|e| format!("--probe-train-data: {e}"))?;
    let test =
        zeroshot_set(test_spec, &clip, limit, read).map_err(|e| format!("--probe-data: {e}"))?;
    let (json, _) = linear_probe_task(
        &clip,
        (train_spec, &train),
        (test_spec, &test),
        PROBE_BATCH,
        &ProbeOptions::default(),
    )?;
    Ok(serde_json::json!({ "linear_probe": json }))
}

/// Images per forward pass of the probe's feature extraction.
const PROBE_BATCH: usize = 64;

pub fn run(args: StudyArgs) -> CliResult {
    let grid = args.grid()?;
    let base = args.train.to_config()?;
    let probe = match (&args.probe_train_data, &args.probe_data) {
        (Some(train), Some(test)) => Some((train.clone(), test.clone())),
        (None, None) => None,
        _ => return Err("--probe-train-data and --probe-data go together".into()),
    };
    let read = &base.data;
    let final_eval = probe.as_ref().map(|(train, test)| {
        move |checkpoint: &std::path::Path, backend: &Backend| {
            probe_eval(train, test, args.probe_samples, read, checkpoint, backend)
        }
    });
    let backend = if args.train.cpu {
        Backend::Cpu
    } else {
        Backend::Gpu(crate::gpu::Gpu::new(&args.train.gpu.options()?)?)
    };
    std::fs::create_dir_all(&args.out).map_err(|e| format!("--out {}: {e}", args.out.display()))?;
    let final_eval = final_eval.as_ref().map(|f| f as &crate::study::FinalEval);
    let outcomes = run_grid(&base, &grid, &args.out, &backend, final_eval, &mut |line| {
        eprintln!("study: {line}")
    })?;
    let report = write_report(&args.out, &outcomes, &args.title)?;
    println!("{}", report.table);
    eprintln!("study: wrote {}", args.out.join("study.md").display());
    Ok(())
}
