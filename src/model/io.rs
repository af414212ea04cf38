//! safetensors files: reading named tensors (OpenCLIP exports, the reference fixtures,
//! checkpoints) and writing them atomically (temporary file, fsync, rename). Parsing and
//! serialising bytes need no files (feature `weights`, the browser demo); reading and writing
//! files is the CLI's (feature `cli`).

use std::collections::HashMap;
#[cfg(feature = "cli")]
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
    #[cfg(feature = "cli")]
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
                // Half-precision exports (OpenCLIP's `--precision fp16/bf16` state_dicts) widen
                // exactly: every f16 and bf16 value is an f32.
                Dtype::F16 => TensorData::F32(
                    bytemuck::pod_collect_to_vec::<u8, u16>(raw)
                        .into_iter()
                        .map(f16_to_f32)
                        .collect(),
                ),
                Dtype::BF16 => TensorData::F32(
                    bytemuck::pod_collect_to_vec::<u8, u16>(raw)
                        .into_iter()
                        .map(|bits| f32::from_bits(u32::from(bits) << 16))
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
        let metadata = meta
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
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

/// IEEE 754 binary16 to f32, exact (subnormals, infinities and NaN included).
pub fn f16_to_f32(bits: u16) -> f32 {
    let sign = u32::from(bits >> 15) << 31;
    let exponent = u32::from((bits >> 10) & 0x1f);
    let mantissa = u32::from(bits & 0x3ff);
    let magnitude = match (exponent, mantissa) {
        (0, 0) => 0,
        // Subnormal: mantissa · 2^-24, exact in f32.
        (0, m) => (m as f32 * f32::powi(2.0, -24)).to_bits(),
        (0x1f, m) => 0x7f80_0000 | (m << 13),
        (e, m) => ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(sign | magnitude)
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
#[cfg(feature = "cli")]
pub fn write_atomic(
    path: &Path,
    tensors: Vec<(String, Vec<usize>, TensorOut)>,
    metadata: HashMap<String, String>,
) -> Result<(), String> {
    let bytes = serialize(tensors, metadata).map_err(|e| format!("{}: {e}", path.display()))?;
    write_bytes_atomic(path, &bytes)
}

/// The bytes of a safetensors file holding `tensors` and `metadata`.
pub fn serialize(
    tensors: Vec<(String, Vec<usize>, TensorOut)>,
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, String> {
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
    safetensors::serialize(views, Some(metadata.into_iter().collect())).map_err(|e| e.to_string())
}

/// Atomic replacement of `path` by `bytes`.
#[cfg(feature = "cli")]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file of one tensor, built by hand (our writer has no half types).
    fn file_with(dtype: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
        let header = format!(
            r#"{{"w":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[0,{}]}}}}"#,
            data.len()
        );
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    #[test]
    fn half_precision_tensors_widen_exactly() {
        // (binary16 bits, value): one, minus two, the largest normal, the smallest normal and
        // subnormal, zero, minus zero, infinity.
        let cases: [(u16, f32); 8] = [
            (0x3c00, 1.0),
            (0xc000, -2.0),
            (0x7bff, 65504.0),
            (0x0400, 6.103_515_6e-5),
            (0x0001, 5.960_464_5e-8),
            (0x0000, 0.0),
            (0x8000, -0.0),
            (0x7c00, f32::INFINITY),
        ];
        let bits: Vec<u8> = cases.iter().flat_map(|(b, _)| b.to_le_bytes()).collect();
        let file = TensorFile::parse(&file_with("F16", &[8], &bits), Path::new("h.st")).unwrap();
        let (shape, values) = file.f32("w").unwrap();
        assert_eq!(shape, [8]);
        for ((_, want), got) in cases.iter().zip(&values) {
            assert_eq!(got.to_bits(), want.to_bits(), "{want}");
        }
        assert!(f16_to_f32(0x7e00).is_nan());
        // bfloat16 is the top half of an f32: 1.5, -0.15625 and 3.0e38 round trip bit for bit.
        let wanted = [1.5f32, -0.15625, f32::from_bits(0x7f61_0000)];
        let bits: Vec<u8> = wanted
            .iter()
            .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        let file = TensorFile::parse(&file_with("BF16", &[3], &bits), Path::new("b.st")).unwrap();
        assert_eq!(file.f32("w").unwrap().1, wanted);
    }
}
