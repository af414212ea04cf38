//! What each masking leaves the image encoder, on real images: at equal compute (M7, every
//! strategy keeps k = round(L(1 − ρ)) patches), does a strategy keep a biased sample of patches?
//! Random masking (M4) keeps an unbiased one by construction; cluster masking (M3) drops whole
//! regions of similar patches, so what it keeps can differ from what evaluation shows the encoder
//! (every patch, M2: no masking at evaluation). Reports, per strategy, the share of plain patches
//! (pixel std below 0.02 in [0, 1] RGB) among the kept ones, the kept patches' mean pixel std
//! relative to all patches', and the clusters' own coverage before k is applied.
//!
//! cargo run --release --example mask_bias -- --tsv data/train.tsv [--limit 512] [--ratio 0.5]
//!     [--threshold 0.5] [--anchor-ratio 0.03] [--size 64] [--patch 8] [--batch 32]

use std::path::{Path, PathBuf};

use clusterclip::data::image_ops::{CLIP_MEAN, CLIP_STD};
use clusterclip::masking::{
    ClusterMaskConfig, MaskFeatures, MaskResult, MaskRng, PatchFeatures, cluster_mask,
    patch_features_of, random_mask,
};

/// A patch whose pixel std (RGB in [0, 1]) is below this is plain.
const PLAIN_STD: f32 = 0.02;

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

/// Pixel std of every patch of every image, [images, patches].
fn patch_stds(unit: &[f32], n: usize, size: usize, p: usize) -> Vec<f32> {
    let grid = size / p;
    let plane = size * size;
    let mut out = Vec::with_capacity(n * grid * grid);
    for image in 0..n {
        for (py, px) in (0..grid).flat_map(|y| (0..grid).map(move |x| (y, x))) {
            let values: Vec<f32> = (0..3)
                .flat_map(|c| (0..p).flat_map(move |y| (0..p).map(move |x| (c, y, x))))
                .map(|(c, y, x)| {
                    unit[image * 3 * plane + c * plane + (py * p + y) * size + px * p + x]
                })
                .collect();
            let mean = values.iter().sum::<f32>() / values.len() as f32;
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / values.len() as f32;
            out.push(var.sqrt());
        }
    }
    out
}

#[derive(Default)]
struct Tally {
    kept: usize,
    kept_plain: usize,
    kept_std: f64,
    covered: usize,
    patches: usize,
}

impl Tally {
    fn add(&mut self, mask: &MaskResult, stds: &[f32], clusters: bool) {
        let (l, k) = (mask.patches, mask.keep_count);
        for (image, row) in mask.kept.chunks(k.max(1)).enumerate() {
            for &j in row {
                let s = stds[image * l + j as usize];
                self.kept += 1;
                self.kept_plain += usize::from(s < PLAIN_STD);
                self.kept_std += f64::from(s);
            }
        }
        if clusters {
            self.covered += mask.masked.iter().map(Vec::len).sum::<usize>();
        }
        self.patches += mask.masked.len() * l;
    }
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let paths = image_paths(&args.tsv, args.limit)?;
    let (size, p) = (args.size, args.patch);
    let patches = (size / p) * (size / p);
    let cluster = |features| ClusterMaskConfig {
        anchor_ratio: args.anchor_ratio,
        threshold: args.threshold,
        // M7: pinned to random masking's keep count.
        min_mask_ratio: args.ratio,
        max_mask_ratio: args.ratio,
        features,
    };
    let names = ["random", "cluster normalized", "cluster rgb"];
    let mut tallies: Vec<Tally> = names.iter().map(|_| Tally::default()).collect();
    let (mut all, mut all_plain, mut all_std) = (0usize, 0usize, 0f64);
    for (step, chunk) in paths.chunks(args.batch).enumerate() {
        let unit: Vec<f32> = chunk
            .iter()
            .map(|path| load_unit(path, size))
            .collect::<Result<Vec<_>, _>>()?
            .concat();
        let n = chunk.len();
        let plane = size * size;
        let normalised: Vec<f32> = unit
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let c = (i / plane) % 3;
                (v - CLIP_MEAN[c]) / CLIP_STD[c]
            })
            .collect();
        let stds = patch_stds(&unit, n, size, p);
        all += stds.len();
        all_plain += stds.iter().filter(|&&s| s < PLAIN_STD).count();
        all_std += stds.iter().map(|&s| f64::from(s)).sum::<f64>();
        let rng = MaskRng::new(0, step as u32);
        let masks = [
            random_mask(n, patches, args.ratio, rng).map_err(|e| e.to_string())?,
            {
                let f = patch_features_of(&normalised, n, size, size, p, MaskFeatures::Normalized);
                let features = PatchFeatures::new(&f, n, patches).map_err(|e| e.to_string())?;
                cluster_mask(&features, &cluster(MaskFeatures::Normalized), rng)
                    .map_err(|e| e.to_string())?
            },
            {
                let f = patch_features_of(&normalised, n, size, size, p, MaskFeatures::Rgb);
                let features = PatchFeatures::new(&f, n, patches).map_err(|e| e.to_string())?;
                cluster_mask(&features, &cluster(MaskFeatures::Rgb), rng)
                    .map_err(|e| e.to_string())?
            },
        ];
        for (i, mask) in masks.iter().enumerate() {
            tallies[i].add(mask, &stds, i > 0);
        }
    }
    let mean_std = all_std / all.max(1) as f64;
    println!(
        "{} images of {}, {patches} patches, ρ = {}, r = {}, anchors {}: {:.1}% of all patches are plain (std < {PLAIN_STD})\n",
        paths.len(),
        args.tsv.display(),
        args.ratio,
        args.threshold,
        args.anchor_ratio,
        100.0 * all_plain as f64 / all.max(1) as f64
    );
    println!("| strategy | plain among kept | kept std / all std | cluster coverage |");
    println!("|---|---|---|---|");
    for (name, t) in names.iter().zip(&tallies) {
        let coverage = if t.covered > 0 {
            format!("{:.1}%", 100.0 * t.covered as f64 / t.patches as f64)
        } else {
            "–".into()
        };
        println!(
            "| {name} | {:.1}% | {:.3} | {coverage} |",
            100.0 * t.kept_plain as f64 / t.kept.max(1) as f64,
            t.kept_std / t.kept.max(1) as f64 / mean_std
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
