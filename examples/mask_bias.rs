//! What each masking leaves the image encoder, on real images: at equal compute (M7, every
//! strategy keeps k = round(L(1 − ρ)) patches), does a strategy keep a biased sample of patches?
//! Random masking (M4) keeps an unbiased one by construction; cluster masking (M3) drops whole
//! regions of similar patches, so what it keeps can differ from what evaluation shows the encoder
//! (every patch, M2: no masking at evaluation). Reports, per strategy, the share of plain patches
//! (pixel std below 0.02 in [0, 1] RGB; `clusterclip::masking::MaskContent`, which `clusterclip
//! study` reports per row) among the kept ones, the kept patches' mean pixel std
//! relative to all patches', and the clusters' own coverage before k is applied.
//!
//! cargo run --release --example mask_bias -- --tsv data/train.tsv [--limit 512] [--ratio 0.5]
//!     [--threshold 0.5] [--anchor-ratio 0.03] [--size 64] [--patch 8] [--batch 32]

use std::path::{Path, PathBuf};

use clusterclip::data::image_ops::{CLIP_MEAN, CLIP_STD};
use clusterclip::masking::{
    ClusterMaskConfig, MaskFeatures, MaskStrategy, PLAIN_STD, content_over_batches,
};

struct Args {
    tsv: PathBuf,
    limit: usize,
    ratio: f64,
    threshold: f32,
    anchor_ratio: f64,
    size: usize,
    patch: usize,
    batch: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        tsv: PathBuf::new(),
        limit: 512,
        ratio: 0.5,
        threshold: 0.5,
        anchor_ratio: 0.03,
        size: 64,
        patch: 8,
        batch: 32,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let value = iter.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value:?}: {e}");
        match flag.as_str() {
            "--tsv" => args.tsv = PathBuf::from(&value),
            "--limit" => args.limit = value.parse().map_err(|e| bad(&e))?,
            "--ratio" => args.ratio = value.parse().map_err(|e| bad(&e))?,
            "--threshold" => args.threshold = value.parse().map_err(|e| bad(&e))?,
            "--anchor-ratio" => args.anchor_ratio = value.parse().map_err(|e| bad(&e))?,
            "--size" => args.size = value.parse().map_err(|e| bad(&e))?,
            "--patch" => args.patch = value.parse().map_err(|e| bad(&e))?,
            "--batch" => args.batch = value.parse().map_err(|e| bad(&e))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.tsv.as_os_str().is_empty() {
        return Err("--tsv FILE (a filepath<TAB>caption table) is required".into());
    }
    if args.patch == 0 || !args.size.is_multiple_of(args.patch) || args.batch == 0 {
        return Err("--size must be a multiple of --patch, --batch positive".into());
    }
    Ok(args)
}

/// The image paths of a TSV's first column, relative to its folder.
fn image_paths(tsv: &Path, limit: usize) -> Result<Vec<PathBuf>, String> {
    let text = std::fs::read_to_string(tsv).map_err(|e| format!("{}: {e}", tsv.display()))?;
    let root = tsv.parent().unwrap_or(Path::new("."));
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|line| line.split('\t').next())
        .filter(|p| !p.is_empty())
        .take(limit)
        .map(|p| root.join(p))
        .collect())
}

/// An image resized to `size`² as RGB in [0, 1], [3, size, size].
fn load_unit(path: &Path, size: usize) -> Result<Vec<f32>, String> {
    let image = image::open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .resize_exact(
            size as u32,
            size as u32,
            image::imageops::FilterType::Triangle,
        )
        .to_rgb8();
    let plane = size * size;
    let mut out = vec![0.0; 3 * plane];
    for (i, pixel) in image.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = f32::from(pixel[c]) / 255.0;
        }
    }
    Ok(out)
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let paths = image_paths(&args.tsv, args.limit)?;
    let (size, p) = (args.size, args.patch);
    let patches = (size / p) * (size / p);
    let cluster = |features| {
        MaskStrategy::Cluster(ClusterMaskConfig {
            anchor_ratio: args.anchor_ratio,
            threshold: args.threshold,
            // M7: pinned to random masking's keep count.
            min_mask_ratio: args.ratio,
            max_mask_ratio: args.ratio,
            features,
        })
    };
    let strategies = [
        (
            "random",
            MaskStrategy::Random {
                mask_ratio: args.ratio,
            },
        ),
        ("cluster normalized", cluster(MaskFeatures::Normalized)),
        ("cluster rgb", cluster(MaskFeatures::Rgb)),
    ];
    let plane = size * size;
    let batches: Vec<Vec<f32>> = paths
        .chunks(args.batch)
        .map(|chunk| {
            let unit = chunk
                .iter()
                .map(|path| load_unit(path, size))
                .collect::<Result<Vec<_>, _>>()?
                .concat();
            Ok(unit
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let c = (i / plane) % 3;
                    (v - CLIP_MEAN[c]) / CLIP_STD[c]
                })
                .collect())
        })
        .collect::<Result<_, String>>()?;
    let batches: Vec<&[f32]> = batches.iter().map(Vec::as_slice).collect();
    let contents = strategies
        .iter()
        .map(|(_, strategy)| content_over_batches(strategy, &batches, (size, p), 0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    println!(
        "{} images of {}, {patches} patches, ρ = {}, r = {}, anchors {}: {:.1}% of all patches are plain (std < {PLAIN_STD})\n",
        paths.len(),
        args.tsv.display(),
        args.ratio,
        args.threshold,
        args.anchor_ratio,
        100.0 * contents[0].plain
    );
    println!("| strategy | plain among kept | kept std / all std | cluster coverage |");
    println!("|---|---|---|---|");
    for ((name, strategy), c) in strategies.iter().zip(&contents) {
        let coverage = match strategy {
            MaskStrategy::Cluster(_) => format!("{:.1}%", 100.0 * c.covered),
            _ => "–".into(),
        };
        println!(
            "| {name} | {:.1}% | {:.3} | {coverage} |",
            100.0 * c.kept_plain,
            c.kept_std_ratio()
        );
    }
    Ok(())
}

fn main() {
    if let Err(message) = run() {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}
