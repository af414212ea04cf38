//! `clusterclip mask`: one mask of one batch of image files, as a picture (original beside
//! masked: dropped patches greyed, anchors outlined) and, with `--json`, as indices (issue 4).

use std::path::{Path, PathBuf};

use super::CliResult;
use crate::data::image_ops::{Normalisation, RgbView};
use crate::data::records::decode_rgb;
use crate::graph::Backend;
use crate::masking::{
    ClusterMaskConfig, MaskFlags, MaskKind, MaskResult, MaskRng, MaskStrategy, calibrate_on_images,
    mask_content, patch_contrast, reference_mask,
};
use crate::model::{Clip, ClipConfig};
use crate::train::checkpoint;
use crate::train::mask_step::{StepMask, compute_mask};

/// Picture: dropped patches keep this fraction of their own colour, the rest is mid-grey.
const DROPPED_VISIBILITY: f32 = 0.25;
const GREY: f32 = 128.0;
const ANCHOR_OUTLINE: [u8; 3] = [230, 30, 30];
/// Pixels between the original and the masked copy.
const GAP: u32 = 8;
/// Each panel is scaled up (nearest neighbour, whole factors) to at least this side, so a 64 px
/// input and its patch outlines stay readable.
const MIN_PANEL_SIDE: u32 = 256;

#[derive(clap::Args)]
pub struct MaskArgs {
    /// Image file; repeat for a batch (one keep count for all, M3.4).
    #[arg(long = "image", required = true, value_name = "FILE")]
    pub images: Vec<PathBuf>,
    /// Model preset (tiny, s16, b16): sets the image and patch size, and is the model whose
    /// patch embeddings `cluster-embed` uses.
    #[arg(long, conflicts_with_all = ["image_size", "patch_size"])]
    pub preset: Option<String>,
    /// Checkpoint whose patch embeddings `cluster-embed` uses (default: the preset's model
    /// initialised from --seed); its configuration sets the image and patch size.
    #[arg(long, conflicts_with_all = ["image_size", "patch_size"])]
    pub checkpoint: Option<PathBuf>,
    /// Training progress w of `cluster-embed`: sim = w · embedding + (1 − w) · pixels (M3.7).
    #[arg(long, default_value_t = 0.5)]
    pub progress: f32,
    /// Side of the square model input, in pixels.
    #[arg(long, default_value_t = 224)]
    pub image_size: usize,
    /// Side of a patch, in pixels.
    #[arg(long, default_value_t = 16)]
    pub patch_size: usize,
    #[command(flatten)]
    pub mask: MaskFlags,
    /// Seed of the mask generator (with --step, its key).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Training step the mask is drawn for (the generator's second key).
    #[arg(long, default_value_t = 0)]
    pub step: u32,
    /// Write the picture here (PNG); one row per image.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the mask as JSON (a list when there are several images).
    #[arg(long)]
    pub json: bool,
}

/// One image as the model sees it: the normalised [3, S, S] input and its RGB picture.
pub(super) struct Loaded {
    rgb: image::RgbImage,
    pub normalised: Vec<f32>,
}

/// OpenCLIP's evaluation transform (shorter side resized, centre crop, `norm`).
pub(super) fn load_image(
    path: &Path,
    size: usize,
    patch: usize,
    norm: &Normalisation,
) -> Result<Loaded, String> {
    let name = path.display();
    // Capped as the data readers cap image files: `/dev/zero` must not be read whole (issue 10).
    let bytes = crate::data::records::read_image_file(path).map_err(|e| format!("{name}: {e}"))?;
    let (rgb, width, height) = decode_rgb(&bytes).map_err(|e| format!("{name}: {e}"))?;
    if width < patch || height < patch {
        return Err(format!(
            "{name}: {width}x{height} pixels is smaller than one {patch}x{patch} patch"
        ));
    }
    let mut normalised = vec![0.0f32; 3 * size * size];
    norm.eval_transform(
        RgbView {
            rgb: &rgb,
            width,
            height,
        },
        size,
        &mut normalised,
    );
    let plane = size * size;
    let picture = image::RgbImage::from_fn(size as u32, size as u32, |x, y| {
        let i = y as usize * size + x as usize;
        image::Rgb(std::array::from_fn(|c| {
            let unit = normalised[c * plane + i] * norm.std[c] + norm.mean[c];
            (unit * 255.0).round().clamp(0.0, 255.0) as u8
        }))
    });
    Ok(Loaded {
        rgb: picture,
        normalised,
    })
}

/// The model of `cluster-embed`, if any, from --checkpoint or --preset.
fn load_model(args: &MaskArgs, kind: MaskKind) -> Result<Option<Clip>, String> {
    let preset = args.preset.as_deref().map(ClipConfig::preset).transpose()?;
    if let Some(path) = &args.checkpoint {
        return Ok(Some(
            checkpoint::load_model(path, preset.as_ref())?.model(&Backend::Cpu),
        ));
    }
    match (kind, preset) {
        (MaskKind::ClusterEmbed, Some(config)) => {
            eprintln!(
                "cluster-embed: untrained {} model initialised from --seed {}",
                args.preset.as_deref().unwrap_or_default(),
                args.seed
            );
            Ok(Some(Clip::new(config, &Backend::Cpu, args.seed)?))
        }
        (MaskKind::ClusterEmbed, None) => {
            Err("--mask cluster-embed needs --preset or --checkpoint (M3.7)".into())
        }
        _ => Ok(None),
    }
}

/// Largest `--image-size`: 18x CLIP's 224; an image of 20,000 took 15 GB and more than 10
/// minutes (issue 10).
pub const MAX_IMAGE_SIZE: usize = 4096;
/// Most patches per image, (2048 / 16)^2: cluster masking compares every patch with every anchor
/// (M3.2), so its time grows with the square of this (measured on 2 shared cores: 4,096 patches
/// 0.8 s, 16,384 patches 12 s and 170 MB).
pub const MAX_PATCHES: usize = 16_384;

pub fn run(args: MaskArgs) -> CliResult {
    let plan = args.mask.plan()?;
    let model = load_model(&args, plan.strategy.kind())?;
    let preset = args.preset.as_deref().map(ClipConfig::preset).transpose()?;
    let vision = model
        .as_ref()
        .map(|m| &m.config.vision)
        .or(preset.as_ref().map(|c| &c.vision));
    let (size, patch) = match vision {
        Some(v) => (v.image_size, v.patch_size),
        None => (args.image_size, args.patch_size),
    };
    if patch == 0 || size < patch || !size.is_multiple_of(patch) {
        return Err(format!(
            "--image-size {size} is not a positive multiple of --patch-size {patch}"
        )
        .into());
    }
    if !(0.0..=1.0).contains(&args.progress) {
        return Err(format!("--progress {} is outside [0, 1]", args.progress).into());
    }
    if size > MAX_IMAGE_SIZE {
        return Err(format!(
            "--image-size {size} is outside {patch}..={MAX_IMAGE_SIZE} (a multiple of --patch-size {patch})"
        )
        .into());
    }
    let side = size / patch;
    if side * side > MAX_PATCHES {
        return Err(format!(
            "--image-size {size} with --patch-size {patch} gives {} patches, over the limit of \
             {MAX_PATCHES}: use a larger --patch-size",
            side * side
        )
        .into());
    }
    let loaded = args
        .images
        .iter()
        .map(|path| load_image(path, size, patch, &Normalisation::CLIP))
        .collect::<Result<Vec<_>, _>>()?;
    let n = loaded.len();
    let patches = (size / patch) * (size / patch);
    let pixels: Vec<f32> = loaded
        .iter()
        .flat_map(|l| l.normalised.iter().copied())
        .collect();
    let rng = MaskRng::new(args.seed, args.step);
    let strategy = match (plan.target_mask_ratio, plan.strategy.cluster()) {
        (Some(target), Some(config)) => {
            let r = calibrated(&pixels, (size, patch), config, target, args.seed)?;
            plan.strategy.with_threshold(r)
        }
        _ => plan.strategy,
    };
    let mask = match &strategy {
        MaskStrategy::None | MaskStrategy::Random { .. } | MaskStrategy::Cluster(_) => {
            reference_mask(&strategy, &pixels, n, (size, patch), rng)?
        }
        MaskStrategy::ClusterEmbed(_) => {
            let model = model
                .as_ref()
                .expect("load_model gives cluster-embed a model");
            compute_mask(
                model,
                &Backend::Cpu,
                &strategy,
                &Backend::Cpu.upload(&pixels),
                n,
                rng,
                args.progress,
            )?
            .and_then(StepMask::into_host)
            .expect("cluster-embed on the CPU always masks on the host")
        }
    };
    let threshold = strategy.cluster().map(|c| c.threshold);
    if args.json {
        println!("{}", mask_json(&mask, threshold));
    } else {
        let content = mask_content(&patch_contrast(&pixels, n, size, size, patch), &mask);
        println!(
            "{n} image(s), {patches} patches each: keep {} (mask ratio {:.3}); the kept patches \
             hold {:.1}% of the images' patch contrast, {:.1}% of them are plain",
            mask.keep_count,
            mask.mask_ratio,
            100.0 * content.kept_contrast,
            100.0 * content.kept_plain
        );
    }
    if let Some(out) = &args.out {
        let picture = draw(&loaded, &mask, size, patch);
        picture
            .save(out)
            .map_err(|e| format!("{}: cannot write the picture ({e})", out.display()))?;
    }
    Ok(())
}

/// r calibrated on the batch to the realised ratio `target` (M3.6); the result goes to stderr,
/// saying when the target is not reachable.
fn calibrated(
    pixels: &[f32],
    (size, patch): (usize, usize),
    config: &ClusterMaskConfig,
    target: f64,
    seed: u64,
) -> Result<f32, Box<dyn std::error::Error>> {
    let calibration = calibrate_on_images(&[pixels], (size, size, patch), config, target, seed)?;
    eprintln!(
        "threshold auto: r = {:.4}, realised mask ratio {:.4} (target {target}{})",
        calibration.threshold,
        calibration.mask_ratio,
        if calibration.converged {
            ""
        } else {
            ", not reachable within 0.01"
        }
    );
    Ok(calibration.threshold)
}

/// The JSON of issue 4: per image `patches`, `anchors`, `masked`, `kept`, `keep_count`,
/// `mask_ratio` (and `threshold` for cluster masking); a list when there are several images.
fn mask_json(mask: &MaskResult, threshold: Option<f32>) -> String {
    let list = |v: &[u32]| {
        format!(
            "[{}]",
            v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
        )
    };
    let objects: Vec<String> = (0..mask.images())
        .map(|i| {
            let threshold = threshold.map(|r| format!(",\"threshold\":{r}")).unwrap_or_default();
            format!(
                "{{\"patches\":{},\"anchors\":{},\"masked\":{},\"kept\":{},\"keep_count\":{},\"mask_ratio\":{}{threshold}}}",
                mask.patches,
                list(&mask.anchors[i]),
                list(&mask.masked[i]),
                list(mask.kept_of(i)),
                mask.keep_count,
                mask.mask_ratio
            )
        })
        .collect();
    if objects.len() == 1 {
        objects[0].clone()
    } else {
        format!("[{}]", objects.join(","))
    }
}

/// One row per image: the crop, then the crop with dropped patches greyed and anchors outlined,
/// each scaled up by a whole factor to at least `MIN_PANEL_SIDE` pixels.
fn draw(loaded: &[Loaded], mask: &MaskResult, size: usize, patch: usize) -> image::RgbImage {
    let scale = MIN_PANEL_SIDE.div_ceil(size as u32).max(1);
    let side = size as u32 * scale;
    let patch_side = patch as u32 * scale;
    let mut picture = image::RgbImage::from_pixel(
        2 * side + GAP,
        loaded.len() as u32 * (side + GAP) - GAP,
        image::Rgb([255; 3]),
    );
    let cols = size / patch;
    for (i, image) in loaded.iter().enumerate() {
        let top = i as u32 * (side + GAP);
        let mut kept = vec![false; mask.patches];
        mask.kept_of(i)
            .iter()
            .for_each(|&j| kept[j as usize] = true);
        let mut anchor = vec![false; mask.patches];
        mask.anchors[i]
            .iter()
            .for_each(|&j| anchor[j as usize] = true);
        for y in 0..side {
            for x in 0..side {
                let pixel = *image.rgb.get_pixel(x / scale, y / scale);
                picture.put_pixel(x, top + y, pixel);
                let j = (y / patch_side) as usize * cols + (x / patch_side) as usize;
                let (px, py) = (x % patch_side, y % patch_side);
                let on_edge = px == 0 || py == 0 || px == patch_side - 1 || py == patch_side - 1;
                let shown = if anchor[j] && on_edge {
                    image::Rgb(ANCHOR_OUTLINE)
                } else if kept[j] {
                    pixel
                } else {
                    image::Rgb(pixel.0.map(|v| {
                        (DROPPED_VISIBILITY * v as f32 + (1.0 - DROPPED_VISIBILITY) * GREY) as u8
                    }))
                };
                picture.put_pixel(side + GAP + x, top + y, shown);
            }
        }
    }
    picture
}
