//! `clusterclip study`: a grid of training runs (strategies × mask ratios × feature modes ×
//! seeds) under one training budget, as method.md M7 asks for an honest comparison: random masking
//! at ratio ρ beside cluster masking pinned to the same keep count (min = max mask ratio = ρ), so
//! both cost the same; cluster masking with its own bounds is a separate row with its own cost.
//!
//! Each run is an ordinary run folder under `OUT/runs/`; a finished run leaves `study_run.json`
//! beside its logs and is skipped next time, an unfinished one resumes from its latest checkpoint.

pub mod report;

use std::path::{Path, PathBuf};

use crate::graph::Backend;
use crate::masking::{ClusterMaskConfig, MaskContent, MaskStrategy, content_over_batches};
use crate::train::run::{ResumeFrom, TrainConfig, train};
use crate::train::stream::TrainStream;

/// Training batches on which each row's mask content is measured (`MaskContent`).
const CONTENT_BATCHES: usize = 8;

pub use report::{StudyReport, write_report};

/// One masking arm of the grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arm {
    /// Plain CLIP (M4).
    None,
    /// FLIP at each ratio ρ (M4).
    Random,
    /// Cluster masking pinned to random masking's keep count at each ρ (M7: equal compute).
    Cluster,
    /// Cluster masking with its own bounds (the paper's 0.3 / 0.9 rule): not equal compute.
    ClusterOwn,
}

impl Arm {
    pub const ALL: [Arm; 4] = [Arm::None, Arm::Random, Arm::Cluster, Arm::ClusterOwn];

    pub fn parse(text: &str) -> Result<Arm, String> {
        match text {
            "none" => Ok(Arm::None),
            "random" => Ok(Arm::Random),
            "cluster" => Ok(Arm::Cluster),
            "cluster-own" => Ok(Arm::ClusterOwn),
            other => Err(format!(
                "--strategies: unknown strategy '{other}' (none, random, cluster, cluster-own)"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arm::None => "none",
            Arm::Random => "random",
            Arm::Cluster => "cluster",
            Arm::ClusterOwn => "cluster-own",
        }
    }
}

/// The grid; every axis is a list.
#[derive(Clone, Debug)]
pub struct Grid {
    pub arms: Vec<Arm>,
    /// Mask ratios ρ in [0, 1) of the random and pinned cluster arms.
    pub ratios: Vec<f64>,
    /// Patch-feature modes of the cluster arms (M3.1).
    pub features: Vec<String>,
    pub seeds: Vec<u64>,
}

/// One run of the grid: its row (everything but the seed) and its seed.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedRun {
    pub arm: Arm,
    pub ratio: Option<f64>,
    pub features: Option<String>,
    pub seed: u64,
}

impl PlannedRun {
    /// The row this run belongs to: runs differing only by seed share it.
    pub fn row(&self) -> String {
        let mut label = self.arm.name().to_string();
        if let Some(ratio) = self.ratio {
            label.push_str(&format!(" ρ={ratio}"));
        }
        if let Some(features) = &self.features {
            label.push_str(&format!(" {features}"));
        }
        label
    }

    /// The run folder's name: the row in plain characters, then the seed.
    pub fn folder(&self) -> String {
        let mut name = self.arm.name().to_string();
        if let Some(ratio) = self.ratio {
            name.push_str(&format!("-r{ratio}"));
        }
        if let Some(features) = &self.features {
            name.push_str(&format!("-{features}"));
        }
        format!("{name}-s{}", self.seed)
    }
}

impl Grid {
    /// Checks every axis; errors are one line naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.arms.is_empty() || self.seeds.is_empty() {
            return Err("--strategies and --seeds need at least one value each".into());
        }
        let needs_ratio = self
            .arms
            .iter()
            .any(|a| matches!(a, Arm::Random | Arm::Cluster));
        if needs_ratio && self.ratios.is_empty() {
            return Err("--ratios needs at least one value for random and cluster".into());
        }
        for &ratio in &self.ratios {
            if !(0.0..1.0).contains(&ratio) {
                return Err(format!("--ratios: {ratio} is outside [0, 1)"));
            }
        }
        let needs_features = self
            .arms
            .iter()
            .any(|a| matches!(a, Arm::Cluster | Arm::ClusterOwn));
        if needs_features && self.features.is_empty() {
            return Err(
                "--feature-modes needs at least one value for the cluster strategies".into(),
            );
        }
        Ok(())
    }

    /// Every run, row by row in the order of the flags, seeds innermost.
    pub fn plan(&self) -> Vec<PlannedRun> {
        let mut rows: Vec<(Arm, Option<f64>, Option<String>)> = Vec::new();
        for &arm in &self.arms {
            match arm {
                Arm::None => rows.push((arm, None, None)),
                Arm::Random => rows.extend(self.ratios.iter().map(|&r| (arm, Some(r), None))),
                Arm::Cluster => {
                    for &r in &self.ratios {
                        rows.extend(
                            self.features
                                .iter()
                                .map(|f| (arm, Some(r), Some(f.clone()))),
                        );
                    }
                }
                Arm::ClusterOwn => {
                    rows.extend(self.features.iter().map(|f| (arm, None, Some(f.clone()))))
                }
            }
        }
        rows.into_iter()
            .flat_map(|(arm, ratio, features)| {
                self.seeds.iter().map(move |&seed| PlannedRun {
                    arm,
                    ratio,
                    features: features.clone(),
                    seed,
                })
            })
            .collect()
    }
}

/// The masking of a planned run; `own` is the cluster setting given on the command line (its
/// threshold, anchors and own bounds).
pub fn mask_of(run: &PlannedRun, own: &ClusterMaskConfig) -> Result<MaskStrategy, String> {
    let with_features = |mut config: ClusterMaskConfig| -> Result<ClusterMaskConfig, String> {
        if let Some(features) = &run.features {
            config.features = features
                .parse::<crate::masking::MaskFeatures>()
                .map_err(|e| format!("--feature-modes: {e}"))?;
        }
        Ok(config)
    };
    Ok(match run.arm {
        Arm::None => MaskStrategy::None,
        Arm::Random => MaskStrategy::Random {
            mask_ratio: run.ratio.unwrap_or(0.5),
        },
        Arm::Cluster => {
            let ratio = run.ratio.unwrap_or(0.5);
            // M7: the keep count is pinned to random masking's; clusters choose what is dropped.
            MaskStrategy::Cluster(with_features(ClusterMaskConfig {
                min_mask_ratio: ratio,
                max_mask_ratio: ratio,
                ..*own
            })?)
        }
        Arm::ClusterOwn => MaskStrategy::Cluster(with_features(*own)?),
    })
}

/// What one finished run measured; written as `study_run.json` in its folder.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub run: PlannedRun,
    pub folder: PathBuf,
    /// The last evaluation's metrics (zero-shot, val retrieval, linear probe), as results.jsonl.
    pub metrics: serde_json::Value,
    /// Training seconds per step, evaluations excluded.
    pub seconds_per_step: f64,
    pub mean_mask_ratio: f64,
    pub samples_seen: u64,
    pub steps: u64,
    pub wall_seconds: f64,
    /// (step, training seconds, metrics) of every evaluation, from results.jsonl.
    pub curve: Vec<(u64, f64, serde_json::Value)>,
    /// What the run's masking keeps of the first training batches (its seed's masks).
    pub content: MaskContent,
}

const OUTCOME_FILE: &str = "study_run.json";

/// An evaluation run after training on the final checkpoint (the linear probe); it returns
/// metrics merged into the run's last metrics.
pub type FinalEval<'a> = dyn Fn(&Path, &Backend) -> Result<serde_json::Value, String> + 'a;

/// Runs (or skips, or resumes) every run of `grid` with `base`'s budget and data, under
/// `out/runs`; `progress` hears one line per run.
pub fn run_grid(
    base: &TrainConfig,
    grid: &Grid,
    out: &Path,
    backend: &Backend,
    final_eval: Option<&FinalEval>,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<RunOutcome>, String> {
    grid.validate()?;
    let own = match &base.mask {
        MaskStrategy::Cluster(c) | MaskStrategy::ClusterEmbed(c) => *c,
        _ => ClusterMaskConfig::default(),
    };
    let runs_dir = out.join("runs");
    std::fs::create_dir_all(&runs_dir).map_err(|e| format!("{}: {e}", runs_dir.display()))?;
    let plan = grid.plan();
    let batches = first_batches(base)?;
    let batches: Vec<&[f32]> = batches.iter().map(Vec::as_slice).collect();
    let v = &base.model.vision;
    let content = |run: &PlannedRun| -> Result<MaskContent, String> {
        content_over_batches(
            &mask_of(run, &own)?,
            &batches,
            (v.image_size, v.patch_size),
            run.seed,
        )
        .map_err(|e| e.to_string())
    };
    let mut outcomes = Vec::with_capacity(plan.len());
    for (index, run) in plan.iter().enumerate() {
        let folder = runs_dir.join(run.folder());
        let label = format!(
            "[{}/{}] {} seed {}",
            index + 1,
            plan.len(),
            run.row(),
            run.seed
        );
        if let Some(mut outcome) = read_outcome(&folder, run)? {
            progress(&format!("{label}: finished before, skipped"));
            outcome.content = content(run)?;
            outcomes.push(outcome);
            continue;
        }
        let latest = folder
            .join("checkpoints")
            .join(crate::train::checkpoint::LATEST);
        let resume = latest.exists();
        if folder.exists() && !resume {
            // A run stopped before its first checkpoint holds nothing worth keeping.
            std::fs::remove_dir_all(&folder).map_err(|e| format!("{}: {e}", folder.display()))?;
        }
        progress(&format!(
            "{label}: {}",
            if resume { "resuming" } else { "training" }
        ));
        let mut config = base.clone();
        config.mask = mask_of(run, &own)?;
        config.seed = run.seed;
        config.logs = runs_dir.clone();
        config.name = Some(run.folder());
        config.resume = resume.then_some(ResumeFrom::Latest);
        config.target_mask_ratio = None;
        let summary = train(&config, backend.clone()).map_err(|e| format!("{label}: {e}"))?;
        let mut metrics = summary
            .last_metrics
            .clone()
            .unwrap_or(serde_json::json!({}));
        if let (Some(eval), Some(checkpoint)) = (final_eval, &summary.last_checkpoint) {
            let extra = eval(checkpoint, backend).map_err(|e| format!("{label}: {e}"))?;
            if let (Some(m), Some(e)) = (metrics.as_object_mut(), extra.as_object()) {
                m.extend(e.clone());
            }
        }
        let curve = read_curve(&folder, summary.seconds_per_step);
        let outcome = RunOutcome {
            run: run.clone(),
            folder: folder.clone(),
            metrics,
            seconds_per_step: summary.seconds_per_step,
            mean_mask_ratio: summary.mean_mask_ratio,
            samples_seen: summary.samples_seen,
            steps: summary.steps,
            wall_seconds: summary.wall_seconds,
            curve,
            content: content(run)?,
        };
        write_outcome(&outcome)?;
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// The study's first training batches (CLIP-normalised images), on which every row's mask
/// content is measured.
fn first_batches(base: &TrainConfig) -> Result<Vec<Vec<f32>>, String> {
    let mut stream = TrainStream::open(&base.loader_config(), 0, 0)?;
    (0..CONTENT_BATCHES)
        .map(|_| stream.next_batch().map(|b| b.images))
        .collect()
}

/// The evaluations of results.jsonl (the last of each step wins), with the training time at
/// each taken as step × seconds per step, so evaluation time does not favour any strategy.
fn read_curve(folder: &Path, seconds_per_step: f64) -> Vec<(u64, f64, serde_json::Value)> {
    crate::train::logs::results_by_step(folder)
        .into_iter()
        .map(|(step, result)| {
            (
                step,
                step as f64 * seconds_per_step,
                result["metrics"].clone(),
            )
        })
        .collect()
}

fn outcome_json(o: &RunOutcome) -> serde_json::Value {
    serde_json::json!({
        "row": o.run.row(),
        "strategy": o.run.arm.name(),
        "ratio": o.run.ratio,
        "features": o.run.features,
        "seed": o.run.seed,
        "folder": o.folder.display().to_string(),
        "metrics": o.metrics,
        "seconds_per_step": o.seconds_per_step,
        "mean_mask_ratio": o.mean_mask_ratio,
        "samples_seen": o.samples_seen,
        "steps": o.steps,
        "wall_seconds": o.wall_seconds,
        "kept_std_ratio": o.content.kept_std_ratio(),
        "kept_plain": o.content.kept_plain,
        "curve": o.curve.iter().map(|(step, seconds, metrics)| serde_json::json!({
            "step": step, "train_seconds": seconds, "metrics": metrics,
        })).collect::<Vec<_>>(),
    })
}

fn write_outcome(o: &RunOutcome) -> Result<(), String> {
    let text = serde_json::to_string_pretty(&outcome_json(o)).expect("JSON of plain values");
    crate::model::io::write_bytes_atomic(&o.folder.join(OUTCOME_FILE), text.as_bytes())
}

/// The outcome a finished run left, if any; one written for another row is an error (a grid
/// whose folder names collide would otherwise mix runs).
fn read_outcome(folder: &Path, run: &PlannedRun) -> Result<Option<RunOutcome>, String> {
    let path = folder.join(OUTCOME_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let bad = |what: &str| {
        format!(
            "{}: {what}; delete the folder to run it again",
            path.display()
        )
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
    if v["row"].as_str() != Some(run.row().as_str()) || v["seed"].as_u64() != Some(run.seed) {
        return Err(bad(&format!("written for another run than {}", run.row())));
    }
    let number = |key: &str| {
        v[key]
            .as_f64()
            .ok_or_else(|| bad(&format!("no number {key}")))
    };
    let curve = v["curve"]
        .as_array()
        .map(|points| {
            points
                .iter()
                .filter_map(|p| {
                    Some((
                        p["step"].as_u64()?,
                        p["train_seconds"].as_f64()?,
                        p["metrics"].clone(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(RunOutcome {
        run: run.clone(),
        folder: folder.to_path_buf(),
        metrics: v["metrics"].clone(),
        seconds_per_step: number("seconds_per_step")?,
        mean_mask_ratio: number("mean_mask_ratio")?,
        samples_seen: number("samples_seen")? as u64,
        steps: number("steps")? as u64,
        wall_seconds: number("wall_seconds")?,
        curve,
        content: MaskContent::default(),
    }))
}
