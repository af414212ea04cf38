//! Turns Fashion-MNIST, as the Debian package `dataset-fashion-mnist` installs it (IDX files
//! under /usr/share/datasets/fashion-mnist), into an image folder for `imagefolder:DIR` zero-shot
//! evaluation, and optionally a TSV of captions for training: each image's class name in one of
//! [`CAPTION_TEMPLATES`], chosen by a hash of the image index, so captions vary as web captions do
//! while the zero-shot prompts (src/data/prompts.rs) stay a separate set.
//!
//! cargo run --release --example fashion_mnist_to_imagefolder -- \
//!     --split test --out data/fashion-mnist-test [--limit 1000] [--tsv] [--idx-dir DIR]

use flate2::read::GzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};

const DEFAULT_IDX_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// Fashion-MNIST's classes in label order, as folder names (`_` is read as a space).
const CLASS_FOLDERS: [&str; 10] = [
    "t-shirt_or_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
];
/// Caption phrasings for training; none is one of the zero-shot templates.
const CAPTION_TEMPLATES: [&str; 8] = [
    "a {}.",
    "{}",
    "a black and white photo of a {}.",
    "a product photo of a {}.",
    "a small picture of a {}.",
    "a low resolution photo of a {}.",
    "a {} on a dark background.",
    "this is a {}.",
];
const IDX_IMAGES_MAGIC: u32 = 0x0803;
const IDX_LABELS_MAGIC: u32 = 0x0801;

struct Args {
    split: String,
    out: PathBuf,
    limit: usize,
    tsv: bool,
    idx_dir: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        split: "test".to_string(),
        out: PathBuf::new(),
        limit: usize::MAX,
        tsv: false,
        idx_dir: PathBuf::from(DEFAULT_IDX_DIR),
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let mut value = |name: &str| iter.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "--split" => args.split = value("--split")?,
            "--out" => args.out = PathBuf::from(value("--out")?),
            "--limit" => {
                args.limit = value("--limit")?
                    .parse()
                    .map_err(|e| format!("--limit: {e}"))?
            }
            "--idx-dir" => args.idx_dir = PathBuf::from(value("--idx-dir")?),
            "--tsv" => args.tsv = true,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.out.as_os_str().is_empty() {
        return Err("--out DIR is required".to_string());
    }
    if args.split != "train" && args.split != "test" {
        return Err(format!("--split {} must be train or test", args.split));
    }
    Ok(args)
}

/// Reads a gzipped IDX file: its dimensions and bytes.
fn read_idx(path: &Path, magic: u32) -> Result<(Vec<usize>, Vec<u8>), String> {
    let file = std::fs::File::open(path).map_err(|e| {
        format!(
            "{}: {e} (install it: apt-get install dataset-fashion-mnist)",
            path.display()
        )
    })?;
    let mut bytes = Vec::new();
    GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let word = |i: usize| {
        bytes
            .get(4 * i..4 * i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    if word(0) != Some(magic) {
        return Err(format!(
            "{}: not an IDX file with magic {magic:#06x}",
            path.display()
        ));
    }
    let rank = (magic & 0xFF) as usize;
    let dims: Vec<usize> = (1..=rank)
        .map(|i| {
            word(i)
                .map(|d| d as usize)
                .ok_or(format!("{}: header cut off", path.display()))
        })
        .collect::<Result<_, _>>()?;
    let data = bytes.split_off(4 * (rank + 1));
    if data.len() != dims.iter().product::<usize>() {
        return Err(format!(
            "{}: {} data bytes for dimensions {dims:?}",
            path.display(),
            data.len()
        ));
    }
    Ok((dims, data))
}

/// "a ankle boot" -> "an ankle boot".
fn fix_article(caption: &str) -> String {
    let mut words: Vec<&str> = caption.split(' ').collect();
    for i in 0..words.len().saturating_sub(1) {
        if words[i].eq_ignore_ascii_case("a") && words[i + 1].starts_with(['a', 'e', 'i', 'o', 'u'])
        {
            words[i] = if words[i] == "A" { "An" } else { "an" };
        }
    }
    words.join(" ")
}

/// A fixed pseudo-random template per image (splitmix64 of the index), independent of the split.
fn template_index(index: usize) -> usize {
    let mut z = (index as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) % CAPTION_TEMPLATES.len() as u64) as usize
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let prefix = if args.split == "train" {
        "train"
    } else {
        "t10k"
    };
    let (image_dims, pixels) = read_idx(
        &args.idx_dir.join(format!("{prefix}-images-idx3-ubyte.gz")),
        IDX_IMAGES_MAGIC,
    )?;
    let (label_dims, labels) = read_idx(
        &args.idx_dir.join(format!("{prefix}-labels-idx1-ubyte.gz")),
        IDX_LABELS_MAGIC,
    )?;
    let (count, rows, cols) = (image_dims[0], image_dims[1], image_dims[2]);
    if label_dims[0] != count {
        return Err(format!("{count} images but {} labels", label_dims[0]));
    }
    for folder in CLASS_FOLDERS {
        std::fs::create_dir_all(args.out.join(folder))
            .map_err(|e| format!("{}: {e}", args.out.display()))?;
    }
    let mut tsv = String::from("filepath\ttitle\n");
    let written = count.min(args.limit);
    for (index, &label) in labels.iter().enumerate().take(written) {
        let folder = CLASS_FOLDERS
            .get(label as usize)
            .ok_or(format!("image {index}: label {label} out of range"))?;
        let image = image::GrayImage::from_raw(
            cols as u32,
            rows as u32,
            pixels[index * rows * cols..][..rows * cols].to_vec(),
        )
        .ok_or("image size mismatch")?;
        let relative = format!("{folder}/{index:05}.png");
        image
            .save(args.out.join(&relative))
            .map_err(|e| format!("{relative}: {e}"))?;
        let template = CAPTION_TEMPLATES[template_index(index)];
        let caption = fix_article(&template.replace("{}", &folder.replace('_', " ")));
        tsv.push_str(&format!("{relative}\t{caption}\n"));
    }
    if args.tsv {
        let path = args.out.join("captions.tsv");
        std::fs::write(&path, tsv).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    println!(
        "wrote {written} {}x{} images of 10 classes to {}",
        rows,
        cols,
        args.out.display()
    );
    Ok(())
}

fn main() {
    if let Err(message) = run() {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}
