//! The run's evaluations: the sets loaded once at open, zero-shot and retrieval at the end of an
//! epoch, `results.jsonl` and `loss.png`.

use crate::eval::tasks::{
    CaptionSet, LabelledSet, caption_set, imagenet_json, imagenet_val_set, retrieval_eval,
    retrieval_json, zeroshot_eval, zeroshot_json, zeroshot_set,
};
use crate::graph::Backend;
use crate::model::Clip;
use crate::train::checkpoint::TrainState;
use crate::train::logs::RunLogs;

use super::{TrainConfig, TrainError, run_err};

/// Smallest batch of frozen feature extraction at evaluation (larger training batches are used
/// as they are): few large passes cost far less than many small ones.
const MIN_EVAL_BATCH: usize = 64;

/// The evaluation sets, loaded once, and the batch their features are extracted in.
pub(super) struct EvalSets {
    val: Option<CaptionSet>,
    zeroshot: Option<LabelledSet>,
    /// `--imagenet-val`: run when zero-shot is due, reported under OpenCLIP's keys.
    imagenet: Option<LabelledSet>,
    batch: usize,
}

impl EvalSets {
    /// The sets `config` asks for (none when their frequency is 0); a set that fails to load is
    /// a configuration error naming its flag.
    pub(super) fn load(
        config: &TrainConfig,
        clip: &Clip,
        backend: &Backend,
    ) -> Result<EvalSets, TrainError> {
        let val = match &config.val_data {
            Some(spec) if config.val_frequency > 0 => Some(
                caption_set(spec, clip, config.eval_limit, &config.data)
                    .map_err(|e| TrainError::Config(format!("--val-data: {e}")))?,
            ),
            _ => None,
        };
        let zeroshot = match &config.zeroshot_data {
            Some(spec) if config.zeroshot_frequency > 0 => Some(
                zeroshot_set(
                    spec,
                    clip,
                    config.eval_limit,
                    &config.zeroshot_read_options(),
                )
                .map_err(|e| TrainError::Config(format!("--zeroshot-data: {e}")))?,
            ),
            _ => None,
        };
        let imagenet = match &config.imagenet_val {
            Some(dir) if config.zeroshot_frequency > 0 => Some(
                imagenet_val_set(
                    dir,
                    clip,
                    config.eval_limit,
                    &config.zeroshot_read_options(),
                )
                .map_err(|e| TrainError::Config(format!("--imagenet-val: {e}")))?,
            ),
            _ => None,
        };
        // Evaluation batches as large as one storage binding allows (b16 at 64 would not fit
        // 128 MiB).
        let batch = match backend.gpu() {
            Some(gpu) => config
                .batch_size
                .max(MIN_EVAL_BATCH)
                .min(config.model.largest_batch_within(gpu.binding_limit_words()))
                .max(1),
            None => config.batch_size.max(MIN_EVAL_BATCH),
        };
        Ok(EvalSets {
            val,
            zeroshot,
            imagenet,
            batch,
        })
    }

    /// No evaluation sets: what a rank other than 0 holds.
    pub(super) fn none() -> EvalSets {
        EvalSets {
            val: None,
            zeroshot: None,
            imagenet: None,
            batch: 1,
        }
    }

    /// Which evaluations are due after `completed` epochs: `(validation, zero-shot)`. Every
    /// evaluation with a set and a frequency runs at the end of the run.
    pub(super) fn due(
        &self,
        config: &TrainConfig,
        completed: u64,
        epoch_done: bool,
        end_of_run: bool,
    ) -> (bool, bool) {
        let due =
            |freq: u64| freq > 0 && (end_of_run || (epoch_done && completed.is_multiple_of(freq)));
        (
            due(config.val_frequency) && self.val.is_some(),
            due(config.zeroshot_frequency) && (self.zeroshot.is_some() || self.imagenet.is_some()),
        )
    }

    /// The metrics of the evaluations asked for, under CLIP_benchmark's names.
    pub(super) fn evaluate(
        &self,
        clip: &Clip,
        do_val: bool,
        do_zeroshot: bool,
    ) -> Result<serde_json::Value, TrainError> {
        let mut metrics = serde_json::Map::new();
        if let (true, Some(set)) = (do_zeroshot, &self.zeroshot) {
            let m = zeroshot_eval(clip, set, self.batch).map_err(run_err)?;
            metrics.insert("zeroshot".into(), zeroshot_json(&m));
        }
        if let (true, Some(set)) = (do_zeroshot, &self.imagenet) {
            let m = zeroshot_eval(clip, set, self.batch).map_err(run_err)?;
            metrics.extend(imagenet_json(&m));
        }
        if let (true, Some(set)) = (do_val, &self.val) {
            let (m, loss) = retrieval_eval(clip, set, self.batch).map_err(run_err)?;
            let mut val = retrieval_json(&m);
            val["clip_val_loss"] = loss.into();
            metrics.insert("val".into(), val);
        }
        Ok(serde_json::Value::Object(metrics))
    }
}

/// `loss.png` from the loss history and `results.jsonl` (the last result of each step wins,
/// so a resumed run's repeated evaluations replace the old ones); a failure is only reported.
pub(super) fn write_plot(logs: &RunLogs, state: &TrainState) {
    let mut by_step = crate::train::logs::results_by_step(&logs.dir);
    by_step.retain(|&step, _| step <= state.step);
    let series = |path: &[&str]| -> Vec<(u64, f64)> {
        by_step
            .iter()
            .filter_map(|(&step, r)| {
                path.iter()
                    .try_fold(&r["metrics"], |cur, key| cur.get(*key))
                    .and_then(|v| v.as_f64())
                    .map(|v| (step, v))
            })
            .collect()
    };
    let metrics = [
        series(&["zeroshot", "acc1"]),
        series(&["zeroshot", "acc5"]),
        series(&["val", "image_retrieval_recall@1"]),
        series(&["val", "text_retrieval_recall@1"]),
    ];
    let path = logs.dir.join("loss.png");
    if let Err(e) = crate::train::plot::write_loss_plot(
        &path,
        &state.loss_history,
        &series(&["val", "clip_val_loss"]),
        &metrics,
    ) {
        eprintln!("warning: {e}");
    }
}
