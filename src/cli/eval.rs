//! `clusterclip eval --checkpoint FILE --data SPEC --task zeroshot|retrieval [--json]`: zero-shot
//! top-1/top-5/mean per-class recall, or retrieval R@1/5/10 both ways, with CLIP_benchmark's
//! JSON names (M6). `--task linear_probe --train-data SPEC --data SPEC`: a logistic-regression
//! probe on frozen image features, fitted on --train-data, scored on --data (same metrics).

use std::path::PathBuf;

use crate::eval::benchmark::{
    BenchmarkRecord, read_list_file, task_name, templates_from_benchmark,
};
use crate::eval::linear_probe::{LabelledFeatures, ProbeOptions, linear_probe};
use crate::eval::tasks::{
    BUILTIN_ZEROSHOT, LabelledSet, caption_set, retrieval_json, retrieval_of, zeroshot_json,
    zeroshot_of, zeroshot_set,
};
use crate::graph::Backend;
use crate::model::openclip::{load_pretrained, model_config, model_name_of};
use crate::train::checkpoint::load_model;

use super::data::DataFlags;
use super::{CliResult, GpuArgs};

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A checkpoint's model file (epoch_N.safetensors) or a state_dict (then give --model).
    #[arg(
        long,
        required_unless_present = "pretrained",
        conflicts_with = "pretrained"
    )]
    pub checkpoint: Option<PathBuf>,
    /// OpenCLIP weights for --model: a state_dict .safetensors (f32, f16 or bf16) or an
    /// exported folder (QuickGELU weights need a -quickgelu model name).
    #[arg(long, requires = "model")]
    pub pretrained: Option<PathBuf>,
    /// builtin:shapes-zeroshot (default) or imagefolder:DIR for zeroshot; builtin:shapes-test
    /// (default), shards or a CSV for retrieval; the labelled test set of linear_probe.
    #[arg(long)]
    pub data: Option<String>,
    /// zeroshot, retrieval or linear_probe (CLIP_benchmark's zeroshot_classification and
    /// zeroshot_retrieval are the same as the first two).
    #[arg(long, default_value = "zeroshot")]
    pub task: String,
    /// Write the metrics as CLIP_benchmark's results JSON (dataset, model, pretrained, task,
    /// metrics, language); {dataset}, {model}, {pretrained}, {task} and {language} are filled.
    #[arg(long)]
    pub output: Option<String>,
    /// The dataset's name in --output and the entry read from --classnames / --templates
    /// (default: the --data spec).
    #[arg(long)]
    pub dataset_name: Option<String>,
    /// The language recorded in --output (CLIP_benchmark's --language).
    #[arg(long, default_value = "en")]
    pub language: String,
    /// zeroshot: class names in CLIP_benchmark's classnames format (JSON: dataset -> list, or a
    /// list), in the order of the sorted class folders; default: the folder names.
    #[arg(long)]
    pub classnames: Option<PathBuf>,
    /// zeroshot: prompt templates in CLIP_benchmark's format (JSON: dataset -> list, or a list;
    /// `{c}` is the class); default: CLIP's prompt and OpenCLIP's 7 simple ImageNet templates.
    #[arg(long)]
    pub templates: Option<PathBuf>,
    /// Add the class names used to --output (CLIP_benchmark's --dump_classnames).
    #[arg(long)]
    pub dump_classnames: bool,
    /// Add the templates used to --output, with {c} (CLIP_benchmark's --dump_templates).
    #[arg(long)]
    pub dump_templates: bool,
    /// linear_probe: the labelled set (imagefolder:DIR) the probe is fitted on.
    #[arg(long)]
    pub train_data: Option<String>,
    /// linear_probe: seed of the split that chooses the weight decay.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Model of --pretrained, or of a checkpoint that does not store its configuration: a
    /// preset, an OpenCLIP model name (ViT-B-16, ViT-B-16-quickgelu, ...) or a model config .json.
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

pub fn run(mut args: EvalArgs) -> CliResult {
    args.task = match args.task.as_str() {
        "zeroshot_classification" => "zeroshot".into(),
        "zeroshot_retrieval" => "retrieval".into(),
        _ => args.task,
    };
    if !["zeroshot", "retrieval", LINEAR_PROBE].contains(&args.task.as_str()) {
        return Err(format!(
            "--task: unknown task '{}' (zeroshot, retrieval or {LINEAR_PROBE})",
            args.task
        )
        .into());
    }
    let probe_sets = linear_probe_sets(&args)?;
    if args.task != "zeroshot" {
        for (flag, given) in [
            ("--classnames", args.classnames.is_some()),
            ("--templates", args.templates.is_some()),
        ] {
            if given {
                return Err(format!("{flag} is only read by --task zeroshot").into());
            }
        }
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
        .map(model_config)
        .transpose()
        .map_err(|e| format!("--model: {e}"))?;
    let mut read = args.reader.read_options()?;
    let (checkpoint, weights_path) = match (&args.pretrained, &args.checkpoint, &model) {
        (Some(path), _, Some(config)) => (
            load_pretrained(path, args.model.as_deref().unwrap_or_default(), config)?,
            path,
        ),
        (_, Some(path), _) => {
            if !path.exists() {
                return Err(format!("--checkpoint: {} does not exist", path.display()).into());
            }
            (load_model(path, model.as_ref())?, path)
        }
        _ => return Err("give --checkpoint, or --pretrained with --model".into()),
    };
    // Images as the weights were trained to see them (`train --image-mean/--image-std`).
    read.normalisation = checkpoint.normalisation;
    let backend = if args.cpu {
        Backend::Cpu
    } else {
        Backend::Gpu(crate::gpu::Gpu::new(&args.gpu.options()?)?)
    };
    let clip = checkpoint.model(&backend);
    let flag = if args.pretrained.is_some() {
        "--pretrained"
    } else {
        "--checkpoint"
    };
    let broken = |e: String| format!("{flag} {}: {e}", weights_path.display());
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
    let dataset_name = args.dataset_name.as_deref().unwrap_or(&data);
    // The class names and templates zero-shot used, for --dump-classnames / --dump-templates.
    let mut zeroshot_lists: Option<(Vec<String>, Vec<String>)> = None;
    let (metrics, summary) = if let Some((train_spec, test_spec)) = probe_sets {
        let read_set = |spec: &str, flag: &str| {
            zeroshot_set(spec, &clip, args.samples, &read).map_err(|e| format!("{flag}: {e}"))
        };
        let train = read_set(train_spec, "--train-data")?;
        let test = read_set(test_spec, "--data")?;
        let options = ProbeOptions {
            seed: args.seed,
            ..ProbeOptions::default()
        };
        linear_probe_task(
            &clip,
            (train_spec, &train),
            (test_spec, &test),
            batch_size,
            &options,
        )?
    } else if args.task == "zeroshot" {
        let mut set =
            zeroshot_set(&data, &clip, args.samples, &read).map_err(|e| format!("--data: {e}"))?;
        if let Some(path) = &args.classnames {
            let names = read_list_file(path, dataset_name, "--classnames")?;
            if names.len() != set.classes.len() {
                return Err(format!(
                    "--classnames {}: {} names for the {} classes of {data}",
                    path.display(),
                    names.len(),
                    set.classes.len()
                )
                .into());
            }
            set.classes = names;
        }
        if let Some(path) = &args.templates {
            let templates = read_list_file(path, dataset_name, "--templates")?;
            set.templates = templates_from_benchmark(templates, path)?;
        }
        zeroshot_lists = Some((set.classes.clone(), set.templates.clone()));
        let images = set
            .encode(&clip, batch_size)
            .map_err(|e| format!("--data: {e}"))?;
        let m = zeroshot_of(&clip, &set, &images, batch_size).map_err(broken)?;
        let line = format!(
            "zero-shot on {} ({} images, {} classes, chance {:.1}%): top-1 {:.2}%, top-5 {:.2}%, mean per-class recall {:.2}%",
            data,
            images.labels.len(),
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
        let features = set
            .encode(&clip, batch_size)
            .map_err(|e| format!("--data: {e}"))?;
        let (m, loss) = retrieval_of(&clip, &features, batch_size).map_err(broken)?;
        let r = |v: [f64; 3]| {
            format!(
                "{:.2}/{:.2}/{:.2}%",
                100.0 * v[0],
                100.0 * v[1],
                100.0 * v[2]
            )
        };
        let line = format!(
            "retrieval on {} ({} images, {} captions): image->text R@1/5/10 {}, text->image R@1/5/10 {}, loss {loss:.4}",
            data,
            features.images(),
            features.captions(),
            r(m.text_retrieval_recall),
            r(m.image_retrieval_recall)
        );
        let mut json = retrieval_json(&m);
        json["clip_val_loss"] = loss.into();
        (json, line)
    };
    if let Some(template) = &args.output {
        let model = args
            .model
            .clone()
            .or_else(|| model_name_of(&clip.config))
            .unwrap_or_else(|| "custom".into());
        let record = BenchmarkRecord {
            dataset: dataset_name,
            model: &model,
            pretrained: &weights_path.display().to_string(),
            task: task_name(&args.task),
            language: &args.language,
        };
        let path = record.output_path(template);
        let mut json = record.json(&metrics);
        if let Some((classes, templates)) = &zeroshot_lists {
            if args.dump_classnames {
                json["classnames"] = classes.clone().into();
            }
            if args.dump_templates {
                let with_c: Vec<String> =
                    templates.iter().map(|t| t.replace("{}", "{c}")).collect();
                json["templates"] = with_c.into();
            }
        }
        let text = serde_json::to_string(&json).map_err(|e| e.to_string())?;
        crate::model::io::write_bytes_atomic(std::path::Path::new(&path), text.as_bytes())
            .map_err(|e| format!("--output: {e}"))?;
    }
    if args.json {
        println!("{metrics}");
    } else {
        println!("{summary}");
    }
    Ok(())
}

const LINEAR_PROBE: &str = "linear_probe";

/// (--train-data, --data) of a linear probe, None for the other tasks; refuses a missing or
/// misplaced flag before anything is loaded.
fn linear_probe_sets(args: &EvalArgs) -> Result<Option<(&str, &str)>, String> {
    match (args.task == LINEAR_PROBE, &args.train_data, &args.data) {
        (true, Some(train), Some(test)) => Ok(Some((train, test))),
        (true, None, _) => Err(format!(
            "--train-data: --task {LINEAR_PROBE} needs a labelled set to fit on (imagefolder:DIR)"
        )),
        (true, _, None) => Err(format!(
            "--data: --task {LINEAR_PROBE} needs a labelled set to score on (imagefolder:DIR)"
        )),
        (false, Some(_), _) => Err(format!(
            "--train-data is only read by --task {LINEAR_PROBE}"
        )),
        (false, None, _) => Ok(None),
    }
}

/// The linear probe (M6) of `clip`'s normalised image features: JSON with eval's metric names
/// plus the chosen weight decay, and the summary line.
pub fn linear_probe_task(
    clip: &crate::model::Clip,
    (train_spec, train): (&str, &LabelledSet),
    (test_spec, test): (&str, &LabelledSet),
    batch_size: usize,
    options: &ProbeOptions,
) -> Result<(serde_json::Value, String), String> {
    let encode = |set: &LabelledSet, flag: &str, spec: &str| {
        set.encode(clip, batch_size)
            .map_err(|e| format!("{flag}: {spec}: {e}"))
    };
    // encode L2-normalises, as CLIP_benchmark's Featurizer does.
    let train_images = encode(train, "--train-data", train_spec)?;
    let test_images = encode(test, "--data", test_spec)?;
    // The probe's classes are --train-data's; --data's labels are matched to them by name.
    let test_labels = test_images
        .labels
        .iter()
        .map(|&label| {
            let name = &test.classes[label];
            train.classes.iter().position(|c| c == name).ok_or_else(|| {
                format!("--data: {test_spec}: class '{name}' is not among --train-data's classes")
            })
        })
        .collect::<Result<Vec<usize>, String>>()?;
    let dim = clip.config.embed_dim;
    let classes = train.classes.len();
    let train_set = LabelledFeatures {
        features: &train_images.features,
        labels: &train_images.labels,
        dim,
        classes,
    };
    let test_set = LabelledFeatures {
        features: &test_images.features,
        labels: &test_labels,
        dim,
        classes,
    };
    test_set
        .validate()
        .map_err(|e| format!("--data: {test_spec}: {e}"))?;
    let result = linear_probe(&train_set, &test_set, options)
        .map_err(|e| format!("--train-data: {train_spec}: {e}"))?;
    let m = &result.metrics;
    let line = format!(
        "linear probe fitted on {train_spec} ({} images), scored on {test_spec} ({} images, {classes} classes, chance {:.1}%), weight decay {:.3e}: top-1 {:.2}%, top-5 {:.2}%, mean per-class recall {:.2}%",
        train_images.labels.len(),
        test_images.labels.len(),
        100.0 / classes as f64,
        result.weight_decay,
        100.0 * m.acc1,
        100.0 * m.acc5,
        100.0 * m.mean_per_class_recall
    );
    let mut json = zeroshot_json(m);
    json["weight_decay"] = result.weight_decay.into();
    Ok((json, line))
}
