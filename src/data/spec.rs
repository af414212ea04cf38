//! Data specs as `--train-data`, `--val-data` and `eval --data` take them, resolved to files up
//! front so that a spec matching nothing fails before training starts.
//! - WebDataset: `dir/shard-{000000..000099}.tar`, several joined with `::`; sample counts from
//!   a `sizes.json` beside the shards (img2dataset's layout) when it lists them all.
//! - CSV/TSV: one file (or several joined with `::`), paths relative to the file's folder.
//! - `imagefolder:DIR`: one sub-folder per class.
//! - `builtin:shapes`, `builtin:shapes-val`, `builtin:shapes-test`: the generated dataset.

use super::error::DataError;
use super::prompts::class_name_from_folder;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Most files one brace pattern may expand to; a larger range is almost surely a typo.
const MAX_EXPANSION: usize = 1_000_000;
/// File endings the image-folder reader takes, as torchvision's `IMG_EXTENSIONS` minus the
/// formats this build cannot decode.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "tif", "tiff",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DatasetType {
    /// Chosen by the spec: `builtin:` / `imagefolder:` prefixes, `.csv`/`.tsv`, `.tar`, a folder.
    #[default]
    Auto,
    WebDataset,
    Csv,
    ImageFolder,
    Builtin,
}

impl FromStr for DatasetType {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(DatasetType::Auto),
            "webdataset" => Ok(DatasetType::WebDataset),
            "csv" => Ok(DatasetType::Csv),
            "imagefolder" => Ok(DatasetType::ImageFolder),
            "builtin" => Ok(DatasetType::Builtin),
            other => Err(format!(
                "unknown dataset type {other:?} (auto, webdataset, csv, imagefolder, builtin)"
            )),
        }
    }
}

impl fmt::Display for DatasetType {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let name = match self {
            DatasetType::Auto => "auto",
            DatasetType::WebDataset => "webdataset",
            DatasetType::Csv => "csv",
            DatasetType::ImageFolder => "imagefolder",
            DatasetType::Builtin => "builtin",
        };
        f.write_str(name)
    }
}

/// The built-in generated dataset's splits (`src/data/shapes.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuiltinSplit {
    /// Endless training stream.
    ShapesTrain,
    ShapesVal,
    ShapesTest,
}

/// A spec resolved to the files it names.
#[derive(Clone, Debug)]
pub enum DataSource {
    WebDataset {
        shards: Vec<PathBuf>,
        num_samples: Option<u64>,
    },
    Csv {
        files: Vec<PathBuf>,
    },
    ImageFolder(ImageFolder),
    Builtin(BuiltinSplit),
}

#[derive(Clone, Debug)]
pub struct ImageFolder {
    pub root: PathBuf,
    /// Class names: folder names, sorted, `_` read as a space.
    pub classes: Vec<String>,
    /// Every image file with its class index, sorted by class then path.
    pub items: Vec<(PathBuf, usize)>,
}

/// Resolves `spec` to files; errors name the spec and what is missing.
pub fn resolve_spec(spec: &str, dataset_type: DatasetType) -> Result<DataSource, DataError> {
    let kind = match dataset_type {
        DatasetType::Auto => detect_type(spec)?,
        other => other,
    };
    match kind {
        DatasetType::Builtin => {
            let name = spec.strip_prefix("builtin:").unwrap_or(spec);
            let split = match name {
                "shapes" | "shapes-train" => BuiltinSplit::ShapesTrain,
                "shapes-val" => BuiltinSplit::ShapesVal,
                "shapes-test" => BuiltinSplit::ShapesTest,
                other => {
                    return Err(DataError::spec(
                        spec,
                        format!(
                            "unknown built-in dataset {other:?} (shapes, shapes-val, shapes-test)"
                        ),
                    ));
                }
            };
            Ok(DataSource::Builtin(split))
        }
        DatasetType::ImageFolder => {
            let root = spec.strip_prefix("imagefolder:").unwrap_or(spec);
            Ok(DataSource::ImageFolder(read_image_folder(Path::new(root))?))
        }
        DatasetType::Csv => {
            let files = existing_files(spec, spec.split("::").map(PathBuf::from).collect())?;
            Ok(DataSource::Csv { files })
        }
        DatasetType::WebDataset => {
            let mut shards = Vec::new();
            for part in spec.split("::") {
                if Path::new(part).is_dir() {
                    let found =
                        shards_in_folder(Path::new(part)).map_err(|source| DataError::Io {
                            path: PathBuf::from(part),
                            source,
                        })?;
                    if found.is_empty() {
                        return Err(DataError::spec(
                            spec,
                            format!("folder {part:?} holds no .tar, .tar.gz or .tgz shard"),
                        ));
                    }
                    shards.extend(found);
                    continue;
                }
                shards.extend(
                    expand_braces(part)
                        .map_err(|reason| DataError::spec(spec, reason))?
                        .into_iter()
                        .map(PathBuf::from),
                );
            }
            let shards = existing_files(spec, shards)?;
            let num_samples = count_from_sizes_json(&shards);
            Ok(DataSource::WebDataset {
                shards,
                num_samples,
            })
        }
        DatasetType::Auto => unreachable!("resolved above"),
    }
}

fn detect_type(spec: &str) -> Result<DatasetType, DataError> {
    let lower = spec.to_ascii_lowercase();
    if lower.starts_with("builtin:") {
        Ok(DatasetType::Builtin)
    } else if lower.starts_with("imagefolder:") {
        Ok(DatasetType::ImageFolder)
    } else if lower
        .split("::")
        .all(|part| part.ends_with(".csv") || part.ends_with(".tsv"))
    {
        Ok(DatasetType::Csv)
    } else if lower.contains(".tar") || lower.contains(".tgz") {
        Ok(DatasetType::WebDataset)
    } else if Path::new(spec).is_dir() {
        let holds_shards = shards_in_folder(Path::new(spec)).is_ok_and(|s| !s.is_empty());
        Ok(if holds_shards {
            DatasetType::WebDataset
        } else {
            DatasetType::ImageFolder
        })
    } else {
        Err(DataError::spec(
            spec,
            "cannot tell its type: use --dataset-type webdataset|csv|imagefolder|builtin"
                .to_string(),
        ))
    }
}

/// Shard files directly in `dir` (`.tar`, `.tar.gz`, `.tgz`), sorted: a folder of shards read
/// whole, as the brace spec `dir/shard-{000000..N}.tar` would.
fn shards_in_folder(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut shards = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let is_shard = [".tar", ".tar.gz", ".tgz"]
            .iter()
            .any(|e| name.ends_with(e));
        if is_shard && path.is_file() {
            shards.push(path);
        }
    }
    shards.sort();
    Ok(shards)
}

/// All of `files` must exist; a spec with none or some missing fails here, naming them.
fn existing_files(spec: &str, files: Vec<PathBuf>) -> Result<Vec<PathBuf>, DataError> {
    let missing: Vec<&PathBuf> = files.iter().filter(|path| !path.is_file()).collect();
    if files.is_empty() || missing.len() == files.len() {
        return Err(DataError::spec(spec, "matches no file".to_string()));
    }
    if let Some(first) = missing.first() {
        return Err(DataError::spec(
            spec,
            format!(
                "{} of {} files do not exist (first: {})",
                missing.len(),
                files.len(),
                first.display()
            ),
        ));
    }
    Ok(files)
}

/// Expands `{a..b}` numeric ranges (zero padded to the width of `a` when it has a leading zero,
/// as braceexpand) and `{x,y}` lists, left to right; several braces give every combination.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>, String> {
    let Some(open) = pattern.find('{') else {
        return Ok(vec![pattern.to_string()]);
    };
    let close = pattern[open..]
        .find('}')
        .map(|i| open + i)
        .ok_or_else(|| format!("unclosed '{{' in {pattern:?}"))?;
    let (head, body, tail) = (
        &pattern[..open],
        &pattern[open + 1..close],
        &pattern[close + 1..],
    );
    let choices: Vec<String> = if let Some((lo, hi)) = body.split_once("..") {
        let (start, end) = match (lo.parse::<u64>(), hi.parse::<u64>()) {
            (Ok(start), Ok(end)) if start <= end => (start, end),
            _ => return Err(format!("bad range {{{body}}} in {pattern:?}")),
        };
        if end - start >= MAX_EXPANSION as u64 {
            return Err(format!(
                "range {{{body}}} in {pattern:?} has over {MAX_EXPANSION} entries"
            ));
        }
        let width = if lo.len() > 1 && lo.starts_with('0') {
            lo.len()
        } else {
            0
        };
        (start..=end).map(|n| format!("{n:0width$}")).collect()
    } else {
        body.split(',').map(str::to_string).collect()
    };
    let tails = expand_braces(tail)?;
    if choices.len().saturating_mul(tails.len()) > MAX_EXPANSION {
        return Err(format!("{pattern:?} expands to over {MAX_EXPANSION} names"));
    }
    Ok(choices
        .iter()
        .flat_map(|choice| {
            tails
                .iter()
                .map(move |rest| format!("{head}{choice}{rest}"))
        })
        .collect())
}

/// Total samples of `shards` from `sizes.json` files beside them (`{"shard.tar": count, ...}`),
/// or None when a shard is not listed.
pub fn count_from_sizes_json(shards: &[PathBuf]) -> Option<u64> {
    shard_sizes(shards).into_iter().sum()
}

/// Each shard's sample count from the `sizes.json` beside it; None where none lists it.
pub fn shard_sizes(shards: &[PathBuf]) -> Vec<Option<u64>> {
    let mut tables: HashMap<PathBuf, Option<Vec<(String, u64)>>> = HashMap::new();
    shards
        .iter()
        .map(|shard| {
            let dir = shard.parent().map(Path::to_path_buf).unwrap_or_default();
            let table = tables.entry(dir).or_insert_with_key(|dir| {
                let text = std::fs::read_to_string(dir.join("sizes.json")).ok()?;
                parse_sizes_json(&text)
            });
            let name = shard.file_name()?.to_str()?;
            Some(table.as_ref()?.iter().find(|(key, _)| key == name)?.1)
        })
        .collect()
}

/// Parses a flat JSON object of string keys to non-negative integers.
pub fn parse_sizes_json(text: &str) -> Option<Vec<(String, u64)>> {
    let body = text.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut entries = Vec::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let after_quote = rest.strip_prefix('"')?;
        let end = after_quote.find('"')?;
        let key = after_quote[..end].to_string();
        let after_key = after_quote[end + 1..]
            .trim_start()
            .strip_prefix(':')?
            .trim_start();
        let digits = after_key.bytes().take_while(u8::is_ascii_digit).count();
        let value = after_key[..digits].parse().ok()?;
        entries.push((key, value));
        rest = after_key[digits..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Some(entries)
}

/// Lists an image folder: sub-folders (sorted) holding images are classes, image files inside
/// are samples; a sub-folder without images is no class (torchvision refuses it; a class no
/// image can show would still count in zero-shot chance and top-5).
pub fn read_image_folder(root: &Path) -> Result<ImageFolder, DataError> {
    let io_error = |path: &Path, source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut class_dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| io_error(root, e))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_dir())
        .collect();
    class_dirs.sort();
    let mut visited = HashSet::from([root.canonicalize().map_err(|e| io_error(root, e))?]);
    let mut classes = Vec::new();
    let mut items = Vec::new();
    for dir in &class_dirs {
        let mut files = Vec::new();
        collect_images(dir, &mut visited, &mut files).map_err(|e| io_error(dir, e))?;
        if files.is_empty() {
            continue;
        }
        files.sort();
        let label = classes.len();
        classes.push(class_name_from_folder(
            &dir.file_name().unwrap_or_default().to_string_lossy(),
        ));
        items.extend(files.into_iter().map(|path| (path, label)));
    }
    if items.is_empty() {
        let has_shards = shards_in_folder(root).is_ok_and(|s| !s.is_empty());
        let hint = if has_shards {
            " (it holds shards: pass it with --dataset-type webdataset, or as dir/shard-{000000..N}.tar)"
        } else {
            ""
        };
        return Err(DataError::spec(
            &root.display().to_string(),
            format!("image folder holds no class folder with images{hint}"),
        ));
    }
    Ok(ImageFolder {
        root: root.to_path_buf(),
        classes,
        items,
    })
}

/// Image files under `dir`, in sub-folders too (as torchvision's `ImageFolder`). A folder whose
/// canonical path is in `visited` is skipped, so a symlink loop (`a/up -> ..`) is walked once.
fn collect_images(
    dir: &Path,
    visited: &mut HashSet<PathBuf>,
    files: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    if !visited.insert(dir.canonicalize()?) {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_images(&path, visited, files)?;
        } else if path.is_file() && has_image_extension(&path) {
            files.push(path);
        }
    }
    Ok(())
}

fn has_image_extension(path: &Path) -> bool {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    ext.is_some_and(|ext| IMAGE_EXTENSIONS.contains(&ext.as_str()))
}
