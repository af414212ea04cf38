//! `clusterclip eval --checkpoint FILE --data SPEC --task zeroshot|retrieval [--json]`: zero-shot
//! top-1/top-5/mean per-class recall, or retrieval R@1/5/10 both ways, with CLIP_benchmark's
//! JSON names (M6).

use std::path::PathBuf;

use crate::eval::tasks::{
    BUILTIN_ZEROSHOT, caption_set, retrieval_eval, retrieval_json, zeroshot_eval, zeroshot_json,
    zeroshot_set,
};
use crate::graph::Backend;
use crate::model::ClipConfig;
use crate::train::checkpoint::load_checkpoint;

use super::data::DataFlags;
use super::{CliResult, GpuArgs};

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A training checkpoint or a safetensors file of OpenCLIP weights (then give --model).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// builtin:shapes-zeroshot (default) or imagefolder:DIR for zeroshot; builtin:shapes-test
    /// (default), shards or a CSV for retrieval.
    #[arg(long)]
    pub data: Option<String>,
    /// zeroshot or retrieval.
    #[arg(long, default_value = "zeroshot")]
    pub task: String,
    /// Model preset of a checkpoint that does not store its configuration.
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Use at most this many images / samples.
    #[arg(long)]
    pub samples: Option<usize>,
    #[arg(long)]
    pub json: bool,
    /// Run on the CPU reference backend.
    #[arg(long)]
    pub cpu: bool,
    #[command(flatten)]
    pub reader: DataFlags,
    #[command(flatten)]
    pub gpu: GpuArgs,
}

pub fn run(args: EvalArgs) -> CliResult {
    if args.task != "zeroshot" && args.task != "retrieval" {
        return Err(format!(
            "--task: unknown task '{}' (zeroshot or retrieval)",
            args.task
        )
        .into());
    }
    if args.batch_size == 0 {
        return Err("--batch-size must be at least 1".into());
    }
    if args.samples == Some(0) {
        return Err("--samples must be at least 1 (leave it out to use every sample)".into());
    }
    let model = args
        .model
        .as_deref()
        .map(ClipConfig::preset)
        .transpose()
        .map_err(|e| format!("--model: {e}"))?;
    if !args.checkpoint.exists() {
        return Err(format!("--checkpoint: {} does not exist", args.checkpoint.display()).into());
    }
    let read = args.reader.read_options()?;
    let checkpoint = load_checkpoint(&args.checkpoint, model.as_ref())?;
    let backend = if args.cpu {
        Backend::Cpu
    } else {
        Backend::Gpu(crate::gpu::Gpu::new(&args.gpu.options()?)?)
    };
    let clip = checkpoint.model(&backend);
    let broken = |e: String| format!("--checkpoint {}: {e}", args.checkpoint.display());
    // Batches as large as one storage binding allows (a ViT-B/16 at 64 exceeds 128 MiB).
    let batch_size = backend.gpu().map_or(args.batch_size, |gpu| {
        args.batch_size
            .min(clip.config.largest_batch_within(gpu.binding_limit_words()))
    });
    let data = args.data.clone().unwrap_or_else(|| {
        if args.task == "zeroshot" {
            BUILTIN_ZEROSHOT
        } else {
            "builtin:shapes-test"
        }
        .to_string()
    });
    let (metrics, summary) = if args.task == "zeroshot" {
        let set =
            zeroshot_set(&data, &clip, args.samples, &read).map_err(|e| format!("--data: {e}"))?;
        let m = zeroshot_eval(&clip, &set, batch_size).map_err(broken)?;
        let line = format!(
            "zero-shot on {} ({} images, {} classes, chance {:.1}%): top-1 {:.2}%, top-5 {:.2}%, mean per-class recall {:.2}%",
            data,
            set.labels.len(),
            set.classes.len(),
            100.0 / set.classes.len() as f64,
            100.0 * m.acc1,
            100.0 * m.acc5,
            100.0 * m.mean_per_class_recall
        );
        (zeroshot_json(&m), line)
    } else {
        let set =
            caption_set(&data, &clip, args.samples, &read).map_err(|e| format!("--data: {e}"))?;
        let (m, loss) = retrieval_eval(&clip, &set, batch_size).map_err(broken)?;
        let r = |v: [f64; 3]| {
            format!(
                "{:.2}/{:.2}/{:.2}%",
                100.0 * v[0],
                100.0 * v[1],
                100.0 * v[2]
            )
        };
        let line = format!(
            "retrieval on {} ({} pairs): image->text R@1/5/10 {}, text->image R@1/5/10 {}, loss {loss:.4}",
            data,
            set.n,
            r(m.text_retrieval_recall),
            r(m.image_retrieval_recall)
        );
        let mut json = retrieval_json(&m);
        json["clip_val_loss"] = loss.into();
        (json, line)
    };
    if args.json {
        println!("{metrics}");
    } else {
        println!("{summary}");
    }
    Ok(())
}
