//! `clusterclip embed`: a checkpoint's normalised image and text features.
//! - `--data SPEC --out DIR` streams every record of SPEC through the model and writes
//!   clip-retrieval's layout (rom1504/clip-retrieval, clip_inference/writer.py):
//!   `img_emb/img_emb_0.npy` and `text_emb/text_emb_0.npy` ([n, embed_dim], float16 as it writes
//!   them, or float32 with `--dtype float32`) and `metadata/metadata_0.parquet` (`image_path`,
//!   `caption`). Image folders have no captions: only images are written, as clip-retrieval does
//!   for images without text.
//! - `--image FILE --text TEXT` prints the features as JSON: the browser test compares the demo
//!   page's features with these (issue 12).

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::data::DataFlags;
use super::mask::load_image;
use super::{CliResult, GpuArgs};
use crate::data::spec::{DataSource, resolve_spec};
use crate::data::tokenizer::Tokenizer;
use crate::eval::tasks::caption_set;
use crate::eval::{encode_images, encode_texts};
use crate::graph::Backend;
use crate::model::ClipConfig;
use crate::model::openclip::model_config;
use crate::train::checkpoint::load_checkpoint;

#[derive(clap::Args)]
pub struct EmbedArgs {
    /// A training checkpoint or a state_dict (then give --model if it stores no configuration).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Model of a checkpoint that does not store its configuration.
    #[arg(long)]
    pub model: Option<String>,
    /// Data to embed, every record in stored order (shards, CSV, imagefolder:DIR, builtin).
    #[arg(long, requires = "out", conflicts_with_all = ["images", "texts"])]
    pub data: Option<String>,
    /// Output folder of --data (clip-retrieval's layout).
    #[arg(long, requires = "data")]
    pub out: Option<PathBuf>,
    /// Element type of the .npy files: float16 (clip-retrieval's) or float32.
    #[arg(long, value_enum, default_value_t = NpyType::Float16)]
    pub dtype: NpyType,
    /// Records per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Image file (OpenCLIP's evaluation transform); repeat for several.
    #[arg(long = "image", value_name = "FILE")]
    pub images: Vec<PathBuf>,
    /// Text, tokenized as training does; repeat for several.
    #[arg(long = "text", value_name = "TEXT")]
    pub texts: Vec<String>,
    #[command(flatten)]
    pub reader: DataFlags,
    #[command(flatten)]
    pub gpu: GpuArgs,
}

pub fn run(args: EmbedArgs) -> CliResult {
    let model: Option<ClipConfig> = args
        .model
        .as_deref()
        .map(model_config)
        .transpose()
        .map_err(|e| format!("--model: {e}"))?;
    if args.batch_size == 0 {
        return Err("--batch-size must be at least 1".into());
    }
    let checkpoint = load_checkpoint(&args.checkpoint, model.as_ref())
        .map_err(|e| format!("--checkpoint: {e}"))?;
    let backend = Backend::Gpu(crate::gpu::Gpu::new(&args.gpu.options()?)?);
    let clip = checkpoint.model(&backend);
    if let (Some(spec), Some(out)) = (&args.data, &args.out) {
        let mut read = args.reader.read_options()?;
        read.normalisation = checkpoint.normalisation;
        let with_text = !matches!(
            resolve_spec(spec, read.dataset_type).map_err(|e| format!("--data: {e}"))?,
            DataSource::ImageFolder(_)
        );
        let set = caption_set(spec, &clip, None, &read).map_err(|e| format!("--data: {e}"))?;
        let dtype = args.dtype;
        let dim = clip.config.embed_dim;
        let mut image_npy = NpyWriter::create(&out.join("img_emb/img_emb_0.npy"), dim, dtype)?;
        let mut text_npy = if with_text {
            Some(NpyWriter::create(
                &out.join("text_emb/text_emb_0.npy"),
                dim,
                dtype,
            )?)
        } else {
            None
        };
        let (mut image_paths, mut captions) = (Vec::new(), Vec::new());
        set.for_each_batch(args.batch_size, &mut |batch| {
            let features =
                encode_images(&clip, &batch.images, args.batch_size).map_err(|e| e.to_string())?;
            image_npy.append(&features)?;
            if let Some(npy) = &mut text_npy {
                let features = encode_texts(&clip, &batch.tokens, args.batch_size)
                    .map_err(|e| e.to_string())?;
                npy.append(&features)?;
            }
            image_paths.extend_from_slice(&batch.image_names);
            captions.extend_from_slice(&batch.captions);
            Ok(())
        })
        .map_err(|e| format!("--data: {e}"))?;
        let rows = image_npy.finish()?;
        if let Some(npy) = text_npy {
            npy.finish()?;
        }
        let captions = with_text.then_some(captions.as_slice());
        write_metadata(
            &out.join("metadata/metadata_0.parquet"),
            &image_paths,
            captions,
        )?;
        eprintln!(
            "embed: {rows} records of {spec} -> {} ({}, {dim} wide, {})",
            out.display(),
            if with_text {
                "img_emb, text_emb, metadata"
            } else {
                "img_emb, metadata"
            },
            dtype.name()
        );
        return Ok(());
    }
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

/// The element types of [`NpyWriter`] (`--dtype float16|float32`).
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum NpyType {
    Float16,
    Float32,
}

impl NpyType {
    fn name(self) -> &'static str {
        match self {
            NpyType::Float16 => "float16",
            NpyType::Float32 => "float32",
        }
    }

    fn descr(self) -> &'static str {
        match self {
            NpyType::Float16 => "<f2",
            NpyType::Float32 => "<f4",
        }
    }
}

/// Header bytes reserved for an .npy v1.0 header (magic to newline): room for any row count,
/// so the header is rewritten in place when the rows are known.
const NPY_HEADER_BYTES: usize = 128;

/// A 2-D .npy file written row by row: a temporary file renamed into place by `finish`, so an
/// interrupted run leaves no half-written array under the final name.
pub struct NpyWriter {
    path: PathBuf,
    tmp: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    columns: usize,
    rows: usize,
    dtype: NpyType,
}

/// The .npy v1.0 header of a C-order [rows, columns] array of `dtype`, padded to
/// [`NPY_HEADER_BYTES`].
pub fn npy_header(rows: usize, columns: usize, dtype: NpyType) -> Vec<u8> {
    let dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': ({rows}, {columns}), }}",
        dtype.descr()
    );
    let mut header = b"\x93NUMPY\x01\x00".to_vec();
    let len = NPY_HEADER_BYTES - 10;
    header.extend_from_slice(&(len as u16).to_le_bytes());
    header.extend_from_slice(dict.as_bytes());
    header.resize(NPY_HEADER_BYTES - 1, b' ');
    header.push(b'\n');
    header
}

impl NpyWriter {
    pub fn create(path: &Path, columns: usize, dtype: NpyType) -> Result<NpyWriter, String> {
        let err = |e: std::io::Error| format!("{}: {e}", path.display());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension("npy.tmp");
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(err)?);
        file.write_all(&npy_header(0, columns, dtype))
            .map_err(err)?;
        Ok(NpyWriter {
            path: path.to_path_buf(),
            tmp,
            file,
            columns,
            rows: 0,
            dtype,
        })
    }

    /// Appends rows (`values.len()` a multiple of the width).
    pub fn append(&mut self, values: &[f32]) -> Result<(), String> {
        let err = |e: std::io::Error| format!("{}: {e}", self.tmp.display());
        let bytes: Vec<u8> = match self.dtype {
            NpyType::Float16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            NpyType::Float32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        self.file.write_all(&bytes).map_err(err)?;
        self.rows += values.len() / self.columns.max(1);
        Ok(())
    }

    /// Writes the final header and moves the file into place; returns the rows written.
    pub fn finish(self) -> Result<usize, String> {
        let err = |e: std::io::Error| format!("{}: {e}", self.tmp.display());
        let mut file = self.file.into_inner().map_err(|e| err(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(err)?;
        file.write_all(&npy_header(self.rows, self.columns, self.dtype))
            .map_err(err)?;
        file.sync_all().map_err(err)?;
        std::fs::rename(&self.tmp, &self.path).map_err(err)?;
        Ok(self.rows)
    }
}

/// clip-retrieval's metadata file: one row per record, `image_path` and (with text) `caption`,
/// as UTF-8 strings; written to a temporary file and renamed.
fn write_metadata(
    path: &Path,
    image_paths: &[String],
    captions: Option<&[String]>,
) -> Result<(), String> {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
    }
    let mut columns = vec![("image_path", image_paths)];
    columns.extend(captions.map(|c| ("caption", c)));
    let fields: String = columns
        .iter()
        .map(|(name, _)| format!("REQUIRED BYTE_ARRAY {name} (UTF8); "))
        .collect();
    let schema = Arc::new(
        parse_message_type(&format!("message schema {{ {fields}}}")).map_err(|e| err(&e))?,
    );
    let tmp = path.with_extension("parquet.tmp");
    let file = std::fs::File::create(&tmp).map_err(|e| err(&e))?;
    let mut writer =
        SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::builder().build()))
            .map_err(|e| err(&e))?;
    let mut group = writer.next_row_group().map_err(|e| err(&e))?;
    for (_, values) in &columns {
        let mut column = group
            .next_column()
            .map_err(|e| err(&e))?
            .ok_or_else(|| err(&"the schema has fewer columns than written"))?;
        let values: Vec<ByteArray> = values.iter().map(|v| v.as_str().into()).collect();
        column
            .typed::<ByteArrayType>()
            .write_batch(&values, None, None)
            .map_err(|e| err(&e))?;
        column.close().map_err(|e| err(&e))?;
    }
    group.close().map_err(|e| err(&e))?;
    writer.close().map_err(|e| err(&e))?;
    std::fs::rename(&tmp, path).map_err(|e| err(&e))?;
    Ok(())
}
