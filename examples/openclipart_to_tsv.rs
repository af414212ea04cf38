//! Turns the Debian package `openclipart-png` (about 8,000 clip-art PNGs under
//! /usr/share/openclipart/png, in topic folders) into an image-text dataset for `train` and
//! retrieval: small RGB PNGs on white and two TSVs of `filepath\ttitle` (OpenCLIP's CSV keys),
//! with a held-out split chosen by a hash of each file's path (stable across runs and machines).
//!
//! A caption comes from the file name and its folders, deepest first:
//! `science/astronomy/saturn_dan_gerhards_01.png` becomes "saturn, astronomy, science". File
//! names are `TITLE_AUTHOR_NN` cut to 25 characters, so the author is dropped: a word that appears
//! after the first word of names in several top-level topics is taken for an author's name (or a
//! stop word), as is a last word that starts one of those (a name cut short: `arc` of `architetto`).
//!
//! cargo run --release --example openclipart_to_tsv -- --out data/openclipart \
//!     [--size 64] [--val-percent 10] [--limit N] [--src /usr/share/openclipart/png]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const DEFAULT_SRC: &str = "/usr/share/openclipart/png";
/// A word after the first in names of this many top-level topics or more is an author (or a
/// stop word), not a subject.
const AUTHOR_TOPICS: usize = 3;
/// A cut-off author name keeps at least this many letters to be recognised as one.
const MIN_AUTHOR_PREFIX: usize = 2;

struct Args {
    src: PathBuf,
    out: PathBuf,
    size: u32,
    val_percent: u64,
    limit: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        src: PathBuf::from(DEFAULT_SRC),
        out: PathBuf::new(),
        size: 64,
        val_percent: 10,
        limit: usize::MAX,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let mut value = |name: &str| iter.next().ok_or(format!("{name} needs a value"));
        let number = |name: &str, text: String| {
            text.parse::<u64>()
                .map_err(|e| format!("{name} {text:?}: {e}"))
        };
        match flag.as_str() {
            "--src" => args.src = PathBuf::from(value("--src")?),
            "--out" => args.out = PathBuf::from(value("--out")?),
            "--size" => args.size = number("--size", value("--size")?)? as u32,
            "--val-percent" => args.val_percent = number("--val-percent", value("--val-percent")?)?,
            "--limit" => args.limit = number("--limit", value("--limit")?)? as usize,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.out.as_os_str().is_empty() {
        return Err("--out DIR is required".to_string());
    }
    if !(8..=1024).contains(&args.size) {
        return Err(format!("--size {} is outside [8, 1024]", args.size));
    }
    if args.val_percent >= 100 {
        return Err(format!(
            "--val-percent {} is outside [0, 100)",
            args.val_percent
        ));
    }
    Ok(args)
}

/// Every PNG under `root`, as paths relative to it, sorted (symlinks are not followed).
fn find_pngs(root: &Path) -> Result<Vec<PathBuf>, String> {
    let mut found = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let entries = std::fs::read_dir(&folder).map_err(|e| {
            format!(
                "{}: {e} (install it: apt-get install openclipart-png)",
                folder.display()
            )
        })?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", folder.display()))?;
            let kind = entry
                .file_type()
                .map_err(|e| format!("{}: {e}", entry.path().display()))?;
            let path = entry.path();
            if kind.is_dir() {
                folders.push(path);
            } else if kind.is_file() && path.extension().is_some_and(|e| e == "png") {
                found.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The words of a file stem without its `_NN` counter: `saturn_dan_gerhards_01` -> saturn dan gerhards.
fn stem_words(path: &Path) -> Vec<String> {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let mut words: Vec<String> = stem
        .split(['_', '-', ' '])
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect();
    if words.len() > 1
        && words
            .last()
            .is_some_and(|w| w.chars().all(|c| c.is_ascii_digit()))
    {
        words.pop();
    }
    words
}

fn folders(path: &Path) -> Vec<String> {
    path.parent()
        .map(|p| {
            p.components()
                .map(|c| c.as_os_str().to_string_lossy().replace('_', " "))
                .collect()
        })
        .unwrap_or_default()
}

/// Words found after the first word of file names in at least [`AUTHOR_TOPICS`] top-level topics.
fn author_words(files: &[PathBuf]) -> BTreeSet<String> {
    let mut topics: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let topic = folders(file).first().cloned().unwrap_or_default();
        for word in stem_words(file).into_iter().skip(1) {
            topics.entry(word).or_default().insert(topic.clone());
        }
    }
    topics
        .into_iter()
        .filter(|(_, t)| t.len() >= AUTHOR_TOPICS)
        .map(|(w, _)| w)
        .collect()
}

/// The subject words of a file name: those before the first author word.
fn title_words(words: &[String], authors: &BTreeSet<String>) -> Vec<String> {
    let mut title = Vec::new();
    for (i, word) in words.iter().enumerate() {
        let is_last = i + 1 == words.len();
        let cut_author = is_last
            && word.len() >= MIN_AUTHOR_PREFIX
            && authors
                .iter()
                .any(|a| a.len() > word.len() && a.starts_with(word.as_str()));
        if i > 0 && (authors.contains(word) || cut_author) {
            break;
        }
        title.push(word.clone());
    }
    title
}

/// The caption: subject, then the folders from the deepest up.
fn caption(file: &Path, authors: &BTreeSet<String>) -> String {
    let mut parts = vec![title_words(&stem_words(file), authors).join(" ")];
    parts.extend(folders(file).into_iter().rev());
    parts.retain(|p| !p.is_empty());
    parts.join(", ")
}

/// FNV-1a of the relative path: the split does not depend on the file order or the machine.
fn path_hash(path: &Path) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in path.to_string_lossy().bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The clip art scaled to fit `size` × `size`, centred on white (transparent pixels become white,
/// as the art is drawn to be seen on paper).
fn render(src: &Path, size: u32) -> Result<image::RgbImage, String> {
    let art = image::open(src)
        .map_err(|e| format!("{}: {e}", src.display()))?
        .to_rgba8();
    let (w, h) = art.dimensions();
    let scale = size as f32 / w.max(h) as f32;
    let (sw, sh) = (
        ((w as f32 * scale).round() as u32).clamp(1, size),
        ((h as f32 * scale).round() as u32).clamp(1, size),
    );
    let scaled = image::imageops::resize(&art, sw, sh, image::imageops::FilterType::Triangle);
    let mut canvas = image::RgbImage::from_pixel(size, size, image::Rgb([255, 255, 255]));
    let (x0, y0) = ((size - sw) / 2, (size - sh) / 2);
    for (x, y, pixel) in scaled.enumerate_pixels() {
        let alpha = f32::from(pixel[3]) / 255.0;
        let blend = |c: u8| (f32::from(c) * alpha + 255.0 * (1.0 - alpha)).round() as u8;
        canvas.put_pixel(
            x0 + x,
            y0 + y,
            image::Rgb([blend(pixel[0]), blend(pixel[1]), blend(pixel[2])]),
        );
    }
    Ok(canvas)
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let files = find_pngs(&args.src)?;
    if files.is_empty() {
        return Err(format!(
            "{}: no PNG files (install them: apt-get install openclipart-png)",
            args.src.display()
        ));
    }
    let authors = author_words(&files);
    let images = args.out.join("images");
    std::fs::create_dir_all(&images).map_err(|e| format!("{}: {e}", images.display()))?;
    let header = "filepath\ttitle\n";
    let (mut train, mut val) = (String::from(header), String::from(header));
    let (mut written, mut skipped) = (0usize, Vec::new());
    for (index, file) in files.iter().enumerate().take(args.limit) {
        let picture = match render(&args.src.join(file), args.size) {
            Ok(picture) => picture,
            Err(e) => {
                skipped.push(e);
                continue;
            }
        };
        let relative = format!("images/{index:05}.png");
        picture
            .save(args.out.join(&relative))
            .map_err(|e| format!("{relative}: {e}"))?;
        let line = format!("{relative}\t{}\n", caption(file, &authors));
        if path_hash(file) % 100 < args.val_percent {
            val.push_str(&line);
        } else {
            train.push_str(&line);
        }
        written += 1;
    }
    for (name, text) in [("train.tsv", &train), ("val.tsv", &val)] {
        let path = args.out.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    println!(
        "wrote {written} {s}x{s} images to {} ({} train, {} held out); {} unreadable skipped{}",
        args.out.display(),
        train.lines().count() - 1,
        val.lines().count() - 1,
        skipped.len(),
        skipped
            .first()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default(),
        s = args.size,
    );
    Ok(())
}

fn main() {
    if let Err(message) = run() {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn author_words_and_cut_names_end_the_title() {
        let authors: BTreeSet<String> = ["dan", "gerhards", "architetto"]
            .into_iter()
            .map(str::to_string)
            .collect();
        assert_eq!(
            title_words(&words("saturn dan gerhards"), &authors),
            ["saturn"]
        );
        assert_eq!(
            title_words(&words("barattolo di pillole arc"), &authors),
            words("barattolo di pillole")
        );
        // The first word is always the subject, even when it names an author elsewhere.
        assert_eq!(title_words(&words("dan"), &authors), ["dan"]);
        let file = Path::new("science/astronomy/saturn_dan_gerhards_01.png");
        assert_eq!(caption(file, &authors), "saturn, astronomy, science");
    }
}
