//! `clusterclip embed --checkpoint FILE --image FILE --text TEXT`: the normalised image and text
//! features of a checkpoint as JSON. A maintainer's command (hidden from --help): the browser
//! test compares the demo page's features with these (issue 12).

use std::path::PathBuf;

use super::mask::load_image;
use super::{CliResult, GpuArgs};
use crate::data::tokenizer::Tokenizer;
use crate::eval::{encode_images, encode_texts};
use crate::graph::Backend;
use crate::model::ClipConfig;
use crate::train::checkpoint::load_checkpoint;

#[derive(clap::Args)]
pub struct EmbedArgs {
    /// A training checkpoint or a state_dict (then give --model if it stores no configuration).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Model preset of a checkpoint that does not store its configuration.
    #[arg(long)]
    pub model: Option<String>,
    /// Image file (OpenCLIP's evaluation transform); repeat for several.
    #[arg(long = "image", value_name = "FILE")]
    pub images: Vec<PathBuf>,
    /// Text, tokenized as training does; repeat for several.
    #[arg(long = "text", value_name = "TEXT")]
    pub texts: Vec<String>,
    #[command(flatten)]
    pub gpu: GpuArgs,
}

pub fn run(args: EmbedArgs) -> CliResult {
    let model = args
        .model
        .as_deref()
        .map(ClipConfig::preset)
        .transpose()
        .map_err(|e| format!("--model: {e}"))?;
    let checkpoint = load_checkpoint(&args.checkpoint, model.as_ref())
        .map_err(|e| format!("--checkpoint: {e}"))?;
    let backend = Backend::Gpu(crate::gpu::Gpu::new(&args.gpu.options()?)?);
    let clip = checkpoint.model(&backend);
    let (v, t) = (&clip.config.vision, &clip.config.text);
    let mut pixels = Vec::new();
    for path in &args.images {
        pixels.extend(
            load_image(path, v.image_size, v.patch_size, &checkpoint.normalisation)?.normalised,
        );
    }
    let tokens: Vec<u32> = args
        .texts
        .iter()
        .flat_map(|text| Tokenizer::shared().encode(text, t.context_length, t.vocab_size))
        .collect();
    let dim = clip.config.embed_dim;
    let rows = |features: Vec<f32>| -> Vec<Vec<f32>> {
        features.chunks(dim).map(<[f32]>::to_vec).collect()
    };
    let image = rows(encode_images(&clip, &pixels, args.images.len().max(1))?);
    let text = rows(encode_texts(&clip, &tokens, args.texts.len().max(1))?);
    println!(
        "{}",
        serde_json::json!({"image_features": image, "text_features": text})
    );
    Ok(())
}
