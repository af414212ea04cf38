//! `clusterclip model --preset NAME [--json]`: a preset's configuration and parameter counts.

use crate::model::{Clip, ClipConfig};

use super::CliResult;

#[derive(clap::Args)]
pub struct ModelArgs {
    /// Model preset: tiny, s16 or b16.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ModelArgs) -> CliResult {
    let config = ClipConfig::preset(&args.preset)?;
    let (total, image, text) = Clip::parameter_counts(&config);
    let v = &config.vision;
    let t = &config.text;
    if args.json {
        let json = serde_json::json!({
            "preset": args.preset,
            "embed_dim": config.embed_dim,
            "vision": {"image_size": v.image_size, "patch_size": v.patch_size, "width": v.width,
                       "layers": v.layers, "heads": v.heads, "patches": v.patches()},
            "text": {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width,
                     "layers": t.layers, "heads": t.heads},
            "parameters": {"total": total, "image": image, "text": text},
        });
        println!("{json}");
    } else {
        println!("preset {}: embed {}", args.preset, config.embed_dim);
        println!(
            "  image: {}px, patch {} ({} patches), width {}, {} layers, {} heads",
            v.image_size,
            v.patch_size,
            v.patches(),
            v.width,
            v.layers,
            v.heads
        );
        println!(
            "  text: context {}, vocabulary {}, width {}, {} layers, {} heads",
            t.context_length, t.vocab_size, t.width, t.layers, t.heads
        );
        println!(
            "  parameters: {total} total ({image} image tower, {text} text tower and logit_scale)"
        );
    }
    Ok(())
}
