//! `clusterclip export --checkpoint C --out DIR`: a checkpoint's weights as the folder OpenCLIP
//! loads with `local-dir:DIR` (open_clip_model.safetensors + open_clip_config.json).

use std::path::PathBuf;

use crate::model::openclip::{CONFIG_FILE, WEIGHTS_FILE, export_open_clip, model_config};
use crate::train::checkpoint::load_model;

use super::CliResult;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// A checkpoint's model file (epoch_N.safetensors) or a state_dict (then give --model).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Folder to write open_clip_model.safetensors and open_clip_config.json into.
    #[arg(long)]
    pub out: PathBuf,
    /// Model of a file that does not store its configuration: a preset, an OpenCLIP model
    /// name or an OpenCLIP model config .json.
    #[arg(long)]
    pub model: Option<String>,
}

pub fn run(args: ExportArgs) -> CliResult {
    let model = args
        .model
        .as_deref()
        .map(model_config)
        .transpose()
        .map_err(|e| format!("--model: {e}"))?;
    if !args.checkpoint.exists() {
        return Err(format!("--checkpoint: {} does not exist", args.checkpoint.display()).into());
    }
    let checkpoint = load_model(&args.checkpoint, model.as_ref())?;
    export_open_clip(&checkpoint, &args.out).map_err(|e| format!("--out: {e}"))?;
    println!(
        "wrote {} and {} in {}: open_clip.create_model_and_transforms('local-dir:{}')",
        WEIGHTS_FILE,
        CONFIG_FILE,
        args.out.display(),
        args.out.display()
    );
    Ok(())
}
