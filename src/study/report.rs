//! The study's outputs: `study.md` (a table of mean ± std over seeds and, for each cluster row, its
//! difference from random masking at the same ρ judged by M7's rule), `study.json` (every run and
//! every row), and `metric_vs_step.png` / `metric_vs_time.png` (one colour per row, seeds averaged).

use std::collections::BTreeMap;
use std::path::Path;

use super::{Arm, RunOutcome};
use crate::train::plot::{Panel, Series, render_png};

/// A reported metric: its column title and its path in a run's metrics.
pub struct Metric {
    pub title: &'static str,
    pub path: &'static [&'static str],
}

/// M7's metrics. CLIP_benchmark's `image_retrieval` is text -> image.
pub const METRICS: &[Metric] = &[
    Metric {
        title: "zero-shot top-1",
        path: &["zeroshot", "acc1"],
    },
    Metric {
        title: "I→T R@1",
        path: &["val", "text_retrieval_recall@1"],
    },
    Metric {
        title: "T→I R@1",
        path: &["val", "image_retrieval_recall@1"],
    },
    Metric {
        title: "I→T R@5",
        path: &["val", "text_retrieval_recall@5"],
    },
    Metric {
        title: "T→I R@5",
        path: &["val", "image_retrieval_recall@5"],
    },
    Metric {
        title: "probe top-1",
        path: &["linear_probe", "acc1"],
    },
];

/// Colours of the rows in the plots, in row order (named in study.md).
const PALETTE: [([u8; 3], &str); 8] = [
    ([31, 119, 180], "blue"),
    ([255, 127, 14], "orange"),
    ([44, 160, 44], "green"),
    ([214, 39, 40], "red"),
    ([148, 103, 189], "purple"),
    ([140, 86, 75], "brown"),
    ([227, 119, 194], "pink"),
    ([127, 127, 127], "grey"),
];

fn lookup(metrics: &serde_json::Value, path: &[&str]) -> Option<f64> {
    path.iter()
        .try_fold(metrics, |cur, key| cur.get(*key))
        .and_then(|v| v.as_f64())
}

/// Mean and sample standard deviation (0 for a single value).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n.max(1.0);
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// One row: the runs that differ only by seed.
pub struct Row<'a> {
    pub label: String,
    pub arm: Arm,
    pub ratio: Option<f64>,
    pub runs: Vec<&'a RunOutcome>,
}

impl Row<'_> {
    fn values(&self, f: impl Fn(&RunOutcome) -> Option<f64>) -> Vec<f64> {
        self.runs.iter().filter_map(|r| f(r)).collect()
    }

    /// Mean ± std of a metric over the seeds that report it.
    pub fn metric(&self, path: &[&str]) -> Option<(f64, f64)> {
        let values = self.values(|r| lookup(&r.metrics, path));
        (!values.is_empty()).then(|| mean_std(&values))
    }
}

/// The rows in the order of the runs.
pub fn rows(outcomes: &[RunOutcome]) -> Vec<Row<'_>> {
    let mut rows: Vec<Row> = Vec::new();
    for outcome in outcomes {
        let label = outcome.run.row();
        match rows.iter_mut().find(|r| r.label == label) {
            Some(row) => row.runs.push(outcome),
            None => rows.push(Row {
                label,
                arm: outcome.run.arm,
                ratio: outcome.run.ratio,
                runs: vec![outcome],
            }),
        }
    }
    rows
}

/// What the study wrote, for the caller's last line.
pub struct StudyReport {
    pub table: String,
}

fn percent(value: Option<(f64, f64)>) -> String {
    match value {
        Some((mean, std)) => format!("{:.1} ± {:.1}", 100.0 * mean, 100.0 * std),
        None => "–".into(),
    }
}

/// M7: a difference is real only when it exceeds twice the larger standard deviation.
fn verdict(a: (f64, f64), b: (f64, f64), seeds: usize) -> &'static str {
    if seeds < 2 {
        "one seed: no verdict"
    } else if (a.0 - b.0).abs() > 2.0 * a.1.max(b.1) {
        "real"
    } else {
        "within noise"
    }
}

/// The markdown table and the equal-compute comparison.
pub fn markdown(outcomes: &[RunOutcome], title: &str) -> String {
    let rows = rows(outcomes);
    let mut md = format!("# {title}\n\n");
    md.push_str(
        "Mean ± std over seeds (percent). s/step: training seconds per step, evaluations \
         excluded. Cluster ρ rows are pinned to random masking's keep count at the same ρ \
         (equal compute, method.md M7); cluster-own rows use their own bounds and cost what \
         their mask ratio says. Kept std: the mean contrast (std of a patch's pixels in [0, \
         1]) of the kept patches over that of all patches, on the first training batches; 1 is an \
         unbiased sample (random masking), above 1 a sample more textured than the images the \
         encoder is evaluated on. Plain kept: the share of kept patches that are plain (std under \
         0.02).\n\n",
    );
    md.push_str(
        "| row | seeds | mask ratio | kept std | plain kept | s/step | images seen | wall |",
    );
    for metric in METRICS {
        md.push_str(&format!(" {} |", metric.title));
    }
    md.push_str(" colour |\n|---|---|---|---|---|---|---|---|");
    md.push_str(&"---|".repeat(METRICS.len() + 1));
    md.push('\n');
    for (i, row) in rows.iter().enumerate() {
        let (ratio, _) = mean_std(&row.values(|r| Some(r.mean_mask_ratio)));
        let (step, _) = mean_std(&row.values(|r| Some(r.seconds_per_step)));
        let (seen, _) = mean_std(&row.values(|r| Some(r.samples_seen as f64)));
        let (wall, _) = mean_std(&row.values(|r| Some(r.wall_seconds)));
        let (contrast, _) = mean_std(&row.values(|r| Some(r.content.kept_std_ratio())));
        let (plain, _) = mean_std(&row.values(|r| Some(r.content.kept_plain)));
        md.push_str(&format!(
            "| {} | {} | {ratio:.3} | {contrast:.3} | {plain:.3} | {step:.3} | {seen:.0} | {} |",
            row.label,
            row.runs.len(),
            crate::train::logs::format_duration(wall)
        ));
        for metric in METRICS {
            md.push_str(&format!(" {} |", percent(row.metric(metric.path))));
        }
        md.push_str(&format!(" {} |\n", PALETTE[i % PALETTE.len()].1));
    }
    let mut comparisons = String::new();
    for cluster in rows.iter().filter(|r| r.arm == Arm::Cluster) {
        let Some(random) = rows
            .iter()
            .find(|r| r.arm == Arm::Random && r.ratio == cluster.ratio)
        else {
            continue;
        };
        let seeds = cluster.runs.len().min(random.runs.len());
        for metric in METRICS {
            if let (Some(c), Some(r)) = (cluster.metric(metric.path), random.metric(metric.path)) {
                comparisons.push_str(&format!(
                    "| {} − {} | {} | {:+.1} | {} |\n",
                    cluster.label,
                    random.label,
                    metric.title,
                    100.0 * (c.0 - r.0),
                    verdict(c, r, seeds)
                ));
            }
        }
    }
    if !comparisons.is_empty() {
        md.push_str(
            "\nEqual compute: cluster minus random at the same ρ, in points; \"real\" when the \
             difference exceeds twice the larger std (M7).\n\n| rows | metric | difference | \
             verdict |\n|---|---|---|---|\n",
        );
        md.push_str(&comparisons);
    }
    md
}

/// Every run and every row, as JSON.
pub fn json(outcomes: &[RunOutcome]) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = rows(outcomes)
        .iter()
        .map(|row| {
            let mut metrics = serde_json::Map::new();
            for metric in METRICS {
                if let Some((mean, std)) = row.metric(metric.path) {
                    metrics.insert(
                        metric.path.join("/"),
                        serde_json::json!({"mean": mean, "std": std}),
                    );
                }
            }
            let stat = |f: &dyn Fn(&RunOutcome) -> f64| {
                let (mean, std) = mean_std(&row.runs.iter().map(|r| f(r)).collect::<Vec<_>>());
                serde_json::json!({"mean": mean, "std": std})
            };
            serde_json::json!({
                "row": row.label,
                "strategy": row.arm.name(),
                "ratio": row.ratio,
                "seeds": row.runs.iter().map(|r| r.run.seed).collect::<Vec<_>>(),
                "metrics": metrics,
                "seconds_per_step": stat(&|r| r.seconds_per_step),
                "mean_mask_ratio": stat(&|r| r.mean_mask_ratio),
                "kept_std_ratio": stat(&|r| r.content.kept_std_ratio()),
                "kept_plain": stat(&|r| r.content.kept_plain),
                "samples_seen": stat(&|r| r.samples_seen as f64),
                "wall_seconds": stat(&|r| r.wall_seconds),
            })
        })
        .collect();
    let runs: Vec<serde_json::Value> = outcomes.iter().map(super::outcome_json).collect();
    serde_json::json!({"rows": rows, "runs": runs})
}

/// A plotted value of one evaluation's metrics.
type MetricOf = dyn Fn(&serde_json::Value) -> Option<f64>;

/// Curves of the plotted metrics (zero-shot top-1 and mean R@5 of both directions), one series
/// per row: seeds averaged at each evaluation step; x is the step or the training seconds.
fn panels(outcomes: &[RunOutcome], by_time: bool) -> Vec<Panel> {
    let plotted: [&MetricOf; 2] = [&|m| lookup(m, &["zeroshot", "acc1"]), &|m| {
        Some(
            (lookup(m, &["val", "text_retrieval_recall@5"])?
                + lookup(m, &["val", "image_retrieval_recall@5"])?)
                / 2.0,
        )
    }];
    plotted
        .iter()
        .map(|metric| Panel {
            series: rows(outcomes)
                .iter()
                .enumerate()
                .map(|(i, row)| {
                    let mut at: BTreeMap<u64, Vec<(f64, f64)>> = BTreeMap::new();
                    for run in &row.runs {
                        for (step, seconds, metrics) in &run.curve {
                            if let Some(v) = metric(metrics) {
                                at.entry(*step).or_default().push((*seconds, v));
                            }
                        }
                    }
                    let points = at
                        .into_iter()
                        .map(|(step, values)| {
                            let n = values.len() as f64;
                            let x = if by_time {
                                values.iter().map(|v| v.0).sum::<f64>() / n
                            } else {
                                step as f64
                            };
                            (x, values.iter().map(|v| v.1).sum::<f64>() / n)
                        })
                        .collect();
                    Series {
                        points,
                        colour: PALETTE[i % PALETTE.len()].0,
                        line: true,
                    }
                })
                .collect(),
            y_range: None,
        })
        .collect()
}

/// Writes study.md, study.json and the two plots into `out`.
pub fn write_report(
    out: &Path,
    outcomes: &[RunOutcome],
    title: &str,
) -> Result<StudyReport, String> {
    let write =
        |name: &str, bytes: &[u8]| crate::model::io::write_bytes_atomic(&out.join(name), bytes);
    let md = markdown(outcomes, title);
    let mut md_file = md.clone();
    md_file.push_str(
        "\nPlots: metric_vs_step.png and metric_vs_time.png (training seconds), left zero-shot \
         top-1, right mean R@5 of both directions; colours as in the table.\n",
    );
    write("study.md", md_file.as_bytes())?;
    let json = serde_json::to_string_pretty(&json(outcomes)).expect("JSON of plain values");
    write("study.json", json.as_bytes())?;
    write("metric_vs_step.png", &render_png(&panels(outcomes, false))?)?;
    write("metric_vs_time.png", &render_png(&panels(outcomes, true))?)?;
    Ok(StudyReport { table: md })
}
