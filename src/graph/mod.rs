//! The autodiff graph. Ops run eagerly on the graph's backend (the GPU records dispatches into
//! the step's encoder; the CPU reference computes at once) and record themselves on a tape;
//! [`Graph::backward`] walks the tape in reverse (see `backward.rs`).
//!
//! The same model code runs on both backends with identical semantics: [`Backend::Gpu`] (WGSL
//! kernels) and [`Backend::Cpu`] (plain-Rust references, f32 storage, f64 accumulation where
//! it matters). Tests compare them.

mod backward;

pub use backward::Op;

use std::sync::Arc;

use crate::gpu::{Gpu, GpuBuf};

/// Where tensors live and ops run.
#[derive(Clone)]
pub enum Backend {
    Cpu,
    Gpu(Arc<Gpu>),
}

impl Backend {
    pub fn gpu(&self) -> Option<&Arc<Gpu>> {
        match self {
            Backend::Gpu(gpu) => Some(gpu),
            Backend::Cpu => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Gpu(_) => "gpu",
        }
    }

    /// Puts f32 data on this backend.
    pub fn upload(&self, data: &[f32]) -> Storage {
        match self {
            Backend::Cpu => Storage::Cpu(Arc::new(data.to_vec())),
            Backend::Gpu(gpu) => Storage::Gpu(gpu.upload_f32(data)),
        }
    }

    /// Puts u32 data (indices) on this backend; CPU storage keeps the bits in f32 words.
    pub fn upload_u32(&self, data: &[u32]) -> Storage {
        match self {
            Backend::Cpu => Storage::Cpu(Arc::new(bytemuck::cast_slice(data).to_vec())),
            Backend::Gpu(gpu) => Storage::Gpu(gpu.upload_u32(data)),
        }
    }

    /// `len` zeros.
    pub fn zeros(&self, len: usize) -> Storage {
        match self {
            Backend::Cpu => Storage::Cpu(Arc::new(vec![0.0; len])),
            Backend::Gpu(gpu) => Storage::Gpu(gpu.zeros(len)),
        }
    }

    /// The storages one after another (e.g. feature rows of several micro-batches).
    pub fn concat(&self, parts: &[&Storage]) -> Storage {
        match self {
            Backend::Cpu => Storage::Cpu(Arc::new(
                parts.iter().flat_map(|p| p.cpu().iter().copied()).collect(),
            )),
            Backend::Gpu(gpu) => {
                let out = gpu.alloc(parts.iter().map(|p| p.len()).sum());
                let mut at = 0;
                for part in parts {
                    gpu.copy_range(part.gpu(), 0, &out, at, part.len());
                    at += part.len();
                }
                Storage::Gpu(out)
            }
        }
    }

    /// A copy of words `offset..offset + len` of `value`.
    pub fn slice(&self, value: &Storage, offset: usize, len: usize) -> Storage {
        match self {
            Backend::Cpu => Storage::Cpu(Arc::new(value.cpu()[offset..offset + len].to_vec())),
            Backend::Gpu(gpu) => {
                let out = gpu.alloc(len);
                gpu.copy_range(value.gpu(), offset, &out, 0, len);
                Storage::Gpu(out)
            }
        }
    }
}

/// The values of one tensor: a shared CPU vector or a view of a pooled GPU buffer. 32-bit
/// words; index tensors store u32 bits.
#[derive(Clone)]
pub enum Storage {
    Cpu(Arc<Vec<f32>>),
    Gpu(GpuBuf),
}

impl Storage {
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(v) => v.len(),
            Storage::Gpu(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The CPU slice; panics on GPU storage (a backend mix-up is a programming error).
    pub fn cpu(&self) -> &[f32] {
        match self {
            Storage::Cpu(v) => v,
            Storage::Gpu(_) => panic!("expected CPU storage, found GPU storage"),
        }
    }

    /// CPU index data (u32 bits stored in f32 words).
    pub fn cpu_u32(&self) -> &[u32] {
        bytemuck::cast_slice(self.cpu())
    }

    pub fn gpu(&self) -> &GpuBuf {
        match self {
            Storage::Gpu(b) => b,
            Storage::Cpu(_) => panic!("expected GPU storage, found CPU storage"),
        }
    }
}

/// A handle to a node of a [`Graph`]. Cheap to copy; meaningful only for its graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tensor(pub(crate) usize);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    U32,
}

/// A bad op call: the op's name and the shapes it was given, as one line.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapeError {
    pub op: &'static str,
    pub message: String,
}

impl std::fmt::Display for ShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.op, self.message)
    }
}

impl std::error::Error for ShapeError {}

pub type OpResult = Result<Tensor, ShapeError>;

/// Builds a [`ShapeError`].
pub fn shape_error(op: &'static str, message: impl Into<String>) -> ShapeError {
    ShapeError {
        op,
        message: message.into(),
    }
}

struct Node {
    shape: Vec<usize>,
    dtype: DType,
    value: Storage,
    requires_grad: bool,
    /// Leaves keep their gradient after backward; intermediates only when asked.
    keep_grad: bool,
}

/// Tensors, the tape of ops that made them, and their gradients.
pub struct Graph {
    pub backend: Backend,
    nodes: Vec<Node>,
    tape: Vec<(Tensor, Op)>,
    grads: Vec<Option<Storage>>,
}

impl Graph {
    pub fn new(backend: Backend) -> Self {
        Graph {
            backend,
            nodes: Vec::new(),
            tape: Vec::new(),
            grads: Vec::new(),
        }
    }

    /// Drops every tensor and the tape (buffers return to the pool), keeping the backend.
    pub fn clear(&mut self) {
        self.nodes.clear();
        self.tape.clear();
        self.grads.clear();
    }

    fn add_node(
        &mut self,
        value: Storage,
        shape: Vec<usize>,
        dtype: DType,
        requires_grad: bool,
    ) -> Tensor {
        // One comparison per node: kept in release builds, where the tests run.
        assert_eq!(
            value.len(),
            shape.iter().product::<usize>(),
            "storage length vs shape {shape:?}"
        );
        self.nodes.push(Node {
            shape,
            dtype,
            value,
            requires_grad,
            keep_grad: true,
        });
        self.grads.push(None);
        Tensor(self.nodes.len() - 1)
    }

    /// A tensor that needs no gradient.
    pub fn constant(&mut self, data: &[f32], shape: &[usize]) -> OpResult {
        check_len("constant", data.len(), shape)?;
        let value = self.backend.upload(data);
        Ok(self.add_node(value, shape.to_vec(), DType::F32, false))
    }

    /// A leaf whose gradient [`Graph::backward`] computes.
    pub fn variable(&mut self, data: &[f32], shape: &[usize]) -> OpResult {
        check_len("variable", data.len(), shape)?;
        let value = self.backend.upload(data);
        Ok(self.add_node(value, shape.to_vec(), DType::F32, true))
    }

    /// An index tensor (u32), e.g. kept-token or token ids.
    pub fn indices(&mut self, data: &[u32], shape: &[usize]) -> OpResult {
        check_len("indices", data.len(), shape)?;
        self.index_node(self.backend.upload_u32(data), shape)
    }

    /// An index tensor (u32 bits) already on this backend.
    pub fn index_node(&mut self, value: Storage, shape: &[usize]) -> OpResult {
        check_len("indices", value.len(), shape)?;
        Ok(self.add_node(value, shape.to_vec(), DType::U32, false))
    }

    /// Wraps existing storage (e.g. a parameter's view into the flat parameter buffer).
    pub fn from_storage(
        &mut self,
        value: Storage,
        shape: &[usize],
        requires_grad: bool,
    ) -> OpResult {
        check_len("from_storage", value.len(), shape)?;
        Ok(self.add_node(value, shape.to_vec(), DType::F32, requires_grad))
    }

    pub fn shape(&self, t: Tensor) -> &[usize] {
        &self.nodes[t.0].shape
    }

    pub fn numel(&self, t: Tensor) -> usize {
        self.nodes[t.0].value.len()
    }

    pub fn dtype(&self, t: Tensor) -> DType {
        self.nodes[t.0].dtype
    }

    pub fn storage(&self, t: Tensor) -> &Storage {
        &self.nodes[t.0].value
    }

    pub fn requires_grad(&self, t: Tensor) -> bool {
        self.nodes[t.0].requires_grad
    }

    /// Number of recorded ops.
    pub fn tape_len(&self) -> usize {
        self.tape.len()
    }

    /// Reads any storage of this graph's backend to the host (see `gpu::readback`).
    pub async fn read_async(&self, value: &Storage) -> Vec<f32> {
        match value {
            Storage::Cpu(v) => v.to_vec(),
            Storage::Gpu(b) => {
                let gpu = self.backend.gpu().expect("GPU storage on a GPU graph");
                gpu.read_f32_async(b)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"))
            }
        }
    }

    /// The tensor's values on the host.
    pub async fn to_vec_async(&self, t: Tensor) -> Vec<f32> {
        self.read_async(self.storage(t)).await
    }

    /// Blocking [`Graph::read_async`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(&self, value: &Storage) -> Vec<f32> {
        crate::gpu::block_on(self.read_async(value))
    }

    /// Blocking [`Graph::to_vec_async`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn to_vec(&self, t: Tensor) -> Vec<f32> {
        self.read(self.storage(t))
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn to_vec_u32(&self, t: Tensor) -> Vec<u32> {
        bytemuck::cast_slice(&self.to_vec(t)).to_vec()
    }

    /// The gradient of `t` after [`Graph::backward`], if `t` needs one and the loss depends on it.
    pub fn grad(&self, t: Tensor) -> Option<&Storage> {
        self.grads[t.0].as_ref()
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn grad_vec(&self, t: Tensor) -> Option<Vec<f32>> {
        self.grad(t).map(|g| self.read(g))
    }

    /// Records an op's output; it needs a gradient if any of `inputs` does.
    pub(crate) fn push_op(
        &mut self,
        value: Storage,
        shape: Vec<usize>,
        inputs: &[Tensor],
        op: Op,
    ) -> Tensor {
        let requires_grad = inputs.iter().any(|&t| self.requires_grad(t));
        let out = self.add_node(value, shape, DType::F32, requires_grad);
        self.nodes[out.0].keep_grad = false;
        if requires_grad {
            self.tape.push((out, op));
        }
        out
    }
}

fn check_len(op: &'static str, len: usize, shape: &[usize]) -> Result<(), ShapeError> {
    let expected: usize = shape.iter().product();
    if len != expected {
        return Err(shape_error(
            op,
            format!("{len} values for shape {shape:?} ({expected} expected)"),
        ));
    }
    Ok(())
}

// `cargo test --release` runs these: the guards must not be debug-only.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "storage length vs shape")]
    fn a_node_whose_storage_disagrees_with_its_shape_panics() {
        let mut g = Graph::new(Backend::Cpu);
        let value = Backend::Cpu.upload(&[0.0; 3]);
        g.add_node(value, vec![2, 2], DType::F32, false);
    }

    #[test]
    #[should_panic(expected = "gradient length")]
    fn a_gradient_of_the_wrong_length_panics() {
        let mut g = Graph::new(Backend::Cpu);
        let t = g.variable(&[0.0; 4], &[4]).unwrap();
        g.accumulate(t, Backend::Cpu.upload(&[0.0; 3]));
    }
}
