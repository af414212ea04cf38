//! safetensors files: reading named tensors (OpenCLIP exports, the reference fixtures,
//! checkpoints) and writing them atomically (temporary file, fsync, rename).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

/// The values of one stored tensor, widened to what the model uses.
#[derive(Clone, Debug)]
pub enum TensorData {
    F32(Vec<f32>),
    /// Integer tensors (token ids, indices), from any integer dtype.
    Int(Vec<i64>),
}

#[derive(Clone, Debug)]
pub struct NamedTensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

/// Every tensor of one safetensors file, with the file's metadata.
pub struct TensorFile {
    pub path: PathBuf,
    pub tensors: HashMap<String, NamedTensor>,
    pub metadata: HashMap<String, String>,
}

impl TensorFile {
    pub fn read(path: &Path) -> Result<TensorFile, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&bytes, path)
    }

    pub fn parse(bytes: &[u8], path: &Path) -> Result<TensorFile, String> {
        let file = SafeTensors::deserialize(bytes)
            .map_err(|e| format!("{}: not a safetensors file ({e})", path.display()))?;
        let (_, meta) =
            SafeTensors::read_metadata(bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut tensors = HashMap::new();
        for (name, view) in file.iter() {
            let raw = view.data();
            let data = match view.dtype() {
                Dtype::F32 => TensorData::F32(bytemuck::pod_collect_to_vec(raw)),
                Dtype::F64 => TensorData::F32(
                    bytemuck::pod_collect_to_vec::<u8, f64>(raw)
                        .into_iter()
                        .map(|x| x as f32)
                        .collect(),
                ),
                Dtype::I64 => TensorData::Int(bytemuck::pod_collect_to_vec(raw)),
                Dtype::I32 => TensorData::Int(
                    bytemuck::pod_collect_to_vec::<u8, i32>(raw)
                        .into_iter()
                        .map(i64::from)
                        .collect(),
                ),
                Dtype::U32 => TensorData::Int(
                    bytemuck::pod_collect_to_vec::<u8, u32>(raw)
                        .into_iter()
                        .map(i64::from)
                        .collect(),
                ),
                Dtype::U8 => TensorData::Int(raw.iter().map(|&b| b as i64).collect()),
                other => {
                    return Err(format!(
                        "{}: tensor {name} has unsupported dtype {other:?}",
                        path.display()
                    ));
                }
            };
            tensors.insert(
                name.to_string(),
                NamedTensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        let metadata = meta.metadata().clone().unwrap_or_default();
        Ok(TensorFile {
            path: path.to_path_buf(),
            tensors,
            metadata,
        })
    }

    fn get(&self, name: &str) -> Result<&NamedTensor, String> {
        self.tensors
            .get(name)
            .ok_or_else(|| format!("{}: missing tensor {name}", self.path.display()))
    }

    /// A float tensor; the error names the tensor and the file.
    pub fn f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), String> {
        let t = self.get(name)?;
        match &t.data {
            TensorData::F32(v) => Ok((t.shape.clone(), v.clone())),
            TensorData::Int(_) => Err(format!(
                "{}: tensor {name} holds integers, floats expected",
                self.path.display()
            )),
        }
    }

    /// A non-negative integer tensor as u32.
    pub fn u32(&self, name: &str) -> Result<(Vec<usize>, Vec<u32>), String> {
        let t = self.get(name)?;
        match &t.data {
            TensorData::Int(v) => {
                let values = v
                    .iter()
                    .map(|&x| {
                        u32::try_from(x).map_err(|_| {
                            format!(
                                "{}: tensor {name} holds {x}, not a u32",
                                self.path.display()
                            )
                        })
                    })
                    .collect::<Result<Vec<u32>, String>>()?;
                Ok((t.shape.clone(), values))
            }
            TensorData::F32(_) => Err(format!(
                "{}: tensor {name} holds floats, integers expected",
                self.path.display()
            )),
        }
    }
}

/// One tensor to write.
pub enum TensorOut<'a> {
    F32(&'a [f32]),
    U32(&'a [u32]),
    U64(&'a [u64]),
}

struct OutView<'a> {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: &'a [u8],
}

impl safetensors::View for OutView<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes `tensors` to `path` atomically: a temporary file beside it, fsync, rename, fsync of
/// the folder. A crash at any point leaves the previous file intact.
pub fn write_atomic(
    path: &Path,
    tensors: Vec<(String, Vec<usize>, TensorOut)>,
    metadata: HashMap<String, String>,
) -> Result<(), String> {
    let views: Vec<(String, OutView)> = tensors
        .into_iter()
        .map(|(name, shape, data)| {
            let (dtype, bytes): (Dtype, &[u8]) = match data {
                TensorOut::F32(v) => (Dtype::F32, bytemuck::cast_slice(v)),
                TensorOut::U32(v) => (Dtype::U32, bytemuck::cast_slice(v)),
                TensorOut::U64(v) => (Dtype::U64, bytemuck::cast_slice(v)),
            };
            (
                name,
                OutView {
                    dtype,
                    shape,
                    bytes,
                },
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    write_bytes_atomic(path, &bytes)
}

/// Atomic replacement of `path` by `bytes`.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| format!("{}: not a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    {
        let mut file = std::fs::File::create(&tmp).map_err(err)?;
        file.write_all(bytes).map_err(err)?;
        file.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
