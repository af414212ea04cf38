//! The linear probe (M6) on raw pixels, to compare its solver with scikit-learn's: reads two
//! image folders as `fashion_mnist_to_imagefolder` writes them, uses each image's grey levels
//! / 255 as its features (no model, no normalisation) and fits the probe on the first folder,
//! at one weight decay (`--wd`, default 1e-4: scikit-learn's default C = 1 for 10 000 images,
//! as C = 1 / (wd n)) or with CLIP_benchmark's weight decay search (`--search`).
//!
//! cargo run --release --example fashion_mnist_to_imagefolder -- --split train --limit 10000 --out /tmp/fm-train
//! cargo run --release --example fashion_mnist_to_imagefolder -- --split test --out /tmp/fm-test
//! cargo run --release --example linear_probe_raw -- /tmp/fm-train /tmp/fm-test [--wd 1e-4 | --search]
//! python3 examples/linear_probe_sklearn.py --train 10000 --wd 1e-4   # the same fit in scikit-learn

use std::path::{Path, PathBuf};
use std::time::Instant;

use clusterclip::eval::linear_probe::{
    LabelledFeatures, LinearProbe, ProbeOptions, choose_weight_decay,
};

/// An image folder as features: grey levels / 255.
struct RawImages {
    /// [n, pixels]
    features: Vec<f32>,
    labels: Vec<usize>,
    /// Sorted folder names, in label order.
    classes: Vec<String>,
    pixels: usize,
}

fn read_folder(root: &Path) -> Result<RawImages, String> {
    let listing = |dir: &Path| -> Result<Vec<PathBuf>, String> {
        let mut paths = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        paths.sort();
        Ok(paths)
    };
    let class_dirs: Vec<PathBuf> = listing(root)?.into_iter().filter(|p| p.is_dir()).collect();
    let (mut features, mut labels, mut pixels) = (Vec::new(), Vec::new(), 0);
    for (label, dir) in class_dirs.iter().enumerate() {
        for path in listing(dir)? {
            let grey = image::open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .to_luma8()
                .into_raw();
            if pixels != 0 && grey.len() != pixels {
                return Err(format!(
                    "{}: {} pixels, not {pixels}",
                    path.display(),
                    grey.len()
                ));
            }
            pixels = grey.len();
            features.extend(grey.iter().map(|&g| g as f32 / 255.0));
            labels.push(label);
        }
    }
    let classes = class_dirs
        .iter()
        .map(|d| {
            d.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    if labels.is_empty() {
        return Err(format!("{}: no images in class folders", root.display()));
    }
    Ok(RawImages {
        features,
        labels,
        classes,
        pixels,
    })
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: linear_probe_raw TRAIN_DIR TEST_DIR [--wd W | --search] [--seed S]";
    let (train_dir, test_dir) = match args.as_slice() {
        [train, test, ..] => (Path::new(train), Path::new(test)),
        _ => return Err(usage.to_string()),
    };
    let (mut weight_decay, mut search, mut options) = (1e-4, false, ProbeOptions::default());
    let mut rest = args[2..].iter();
    while let Some(flag) = rest.next() {
        let mut value = || rest.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--wd" => weight_decay = value()?.parse().map_err(|e| format!("--wd: {e}"))?,
            "--seed" => options.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--search" => search = true,
            other => return Err(format!("unknown flag {other}; {usage}")),
        }
    }
    let (train_set, test_set) = (read_folder(train_dir)?, read_folder(test_dir)?);
    let dim = train_set.pixels;
    if test_set.classes != train_set.classes || test_set.pixels != dim {
        return Err(format!(
            "{}: classes or image size differ from {}",
            test_dir.display(),
            train_dir.display()
        ));
    }
    let train = LabelledFeatures {
        features: &train_set.features,
        labels: &train_set.labels,
        dim,
        classes: train_set.classes.len(),
    };
    let test = LabelledFeatures {
        features: &test_set.features,
        labels: &test_set.labels,
        ..train
    };
    let start = Instant::now();
    if search {
        let (chosen, tried) = choose_weight_decay(&train, &options).map_err(|e| e.to_string())?;
        for (wd, acc1) in tried {
            println!(
                "held-out top-1 {:.2}% at weight decay {wd:.3e}",
                100.0 * acc1
            );
        }
        weight_decay = chosen;
    }
    let probe = LinearProbe::fit(&train, weight_decay, &options).map_err(|e| e.to_string())?;
    let m = probe.evaluate(&test).map_err(|e| e.to_string())?;
    println!(
        "linear probe on raw pixels: {} train, {} test, {dim} features, weight decay {weight_decay:.3e} (C = {:.4}): top-1 {:.2}%, top-5 {:.2}%, mean per-class recall {:.2}% ({:.1} s)",
        train.rows(),
        test.rows(),
        1.0 / (weight_decay * train.rows() as f64),
        100.0 * m.acc1,
        100.0 * m.acc5,
        100.0 * m.mean_per_class_recall,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() {
    if let Err(message) = run() {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}
