//! Elementwise add and multiply (with broadcasting of a trailing-shape operand), scaling by a
//! constant, the row sum that reverses a broadcast, and reshape (the identity on storage).
//! Shader: `shaders/elementwise.wgsl`.

use std::sync::Arc;

use crate::gpu::Gpu;
use crate::graph::{Backend, DType, Graph, Op, OpResult, Storage, Tensor, shape_error};

#[derive(Clone, Debug)]
pub struct AddOp {
    pub a: Tensor,
    pub b: Tensor,
    /// b's shape is a suffix of a's: b is repeated over a's leading dimensions.
    pub broadcast_rows: usize,
}

#[derive(Clone, Debug)]
pub struct MulOp {
    pub a: Tensor,
    pub b: Tensor,
    /// b's shape is a suffix of a's: b is repeated over a's leading dimensions.
    pub broadcast_rows: usize,
}

#[derive(Clone, Debug)]
pub struct ScaleOp {
    pub a: Tensor,
    pub factor: f32,
}

/// Rows of `a` that `b` repeats over, or an error naming `op` and both shapes.
fn broadcast_rows(
    g: &Graph,
    op: &'static str,
    a: Tensor,
    b: Tensor,
) -> Result<usize, crate::graph::ShapeError> {
    let (sa, sb) = (g.shape(a), g.shape(b));
    if sb.len() > sa.len() || sa[sa.len() - sb.len()..] != sb[..] {
        return Err(shape_error(
            op,
            format!("b {sb:?} is neither a's shape {sa:?} nor a suffix of it"),
        ));
    }
    Ok(g.numel(a) / g.numel(b).max(1))
}

impl Graph {
    /// `a + b`, where `b` has `a`'s shape or a suffix of it (e.g. a bias or positions).
    pub fn add(&mut self, a: Tensor, b: Tensor) -> OpResult {
        let rows = broadcast_rows(self, "add", a, b)?;
        let value = add_storage(&self.backend, self.storage(a), self.storage(b));
        let op = Op::Add(AddOp {
            a,
            b,
            broadcast_rows: rows,
        });
        Ok(self.push_op(value, self.shape(a).to_vec(), &[a, b], op))
    }

    /// `a * b` elementwise, where `b` has `a`'s shape or a suffix of it (e.g. a LayerNorm gain).
    pub fn mul(&mut self, a: Tensor, b: Tensor) -> OpResult {
        let rows = broadcast_rows(self, "mul", a, b)?;
        let value = mul_storage(&self.backend, self.storage(a), self.storage(b));
        let op = Op::Mul(MulOp {
            a,
            b,
            broadcast_rows: rows,
        });
        Ok(self.push_op(value, self.shape(a).to_vec(), &[a, b], op))
    }

    /// `factor · a`.
    pub fn scale(&mut self, a: Tensor, factor: f32) -> OpResult {
        let value = scale_storage(&self.backend, self.storage(a), factor);
        let op = Op::Scale(ScaleOp { a, factor });
        Ok(self.push_op(value, self.shape(a).to_vec(), &[a], op))
    }

    /// The same values with another shape of equal size; shares `a`'s storage (no copy).
    /// Index tensors are not reshaped (gather takes indices of any shape).
    pub fn reshape(&mut self, a: Tensor, shape: &[usize]) -> OpResult {
        let from = self.shape(a);
        if shape.iter().product::<usize>() != self.numel(a) {
            return Err(shape_error(
                "reshape",
                format!(
                    "{from:?} ({} values) cannot become {shape:?} ({} values)",
                    self.numel(a),
                    shape.iter().product::<usize>()
                ),
            ));
        }
        if self.dtype(a) == DType::U32 {
            return Err(shape_error(
                "reshape",
                format!(
                    "index tensor {from:?} -> {shape:?}: create indices with the shape you need"
                ),
            ));
        }
        let value = self.storage(a).clone();
        Ok(self.push_op(value, shape.to_vec(), &[a], Op::Reshape(a)))
    }
}

pub fn add_backward(g: &mut Graph, op: &AddOp, grad: &Storage) {
    g.accumulate(op.a, grad.clone());
    if g.requires_grad(op.b) {
        let db = if op.broadcast_rows == 1 {
            grad.clone()
        } else {
            let cols = g.numel(op.b);
            sum_rows(&g.backend, grad, op.broadcast_rows, cols)
        };
        g.accumulate(op.b, db);
    }
}

/// d a = dy · b (broadcast), d b = Σ over the broadcast rows of dy · a.
pub fn mul_backward(g: &mut Graph, op: &MulOp, grad: &Storage) {
    let backend = g.backend.clone();
    if g.requires_grad(op.a) {
        let da = mul_storage(&backend, grad, g.storage(op.b));
        g.accumulate(op.a, da);
    }
    if g.requires_grad(op.b) {
        let prod = mul_storage(&backend, grad, g.storage(op.a));
        let db = if op.broadcast_rows == 1 {
            prod
        } else {
            sum_rows(&backend, &prod, op.broadcast_rows, g.numel(op.b))
        };
        g.accumulate(op.b, db);
    }
}

pub fn scale_backward(g: &mut Graph, op: &ScaleOp, grad: &Storage) {
    if g.requires_grad(op.a) {
        let da = scale_storage(&g.backend, grad, op.factor);
        g.accumulate(op.a, da);
    }
}

crate::kernel_params! {
    pub(crate) struct Params for "elementwise" {
        len: u32,
        b_len: u32,
        rows: u32,
        cols: u32,
        factor: f32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

impl Params {
    fn linear(len: usize, b_len: usize, factor: f32) -> Self {
        Params {
            len: len as u32,
            b_len: b_len.max(1) as u32,
            rows: 0,
            cols: 0,
            factor,
            ..bytemuck::Zeroable::zeroed()
        }
    }
}

fn kernel(gpu: &Gpu, entry: &str) -> Arc<crate::gpu::Kernel> {
    gpu.kernel(&crate::shader!("elementwise"), entry)
}

/// Rows the shader's `sum_rows_partial4` sums per invocation (`SUM_CHUNK`).
const SUM_CHUNK: usize = 32;

/// `a ∘ b` with `b` repeated to `a`'s length, by the shader's `entry` (`add` or `mul`), four
/// values per invocation where both lengths allow.
fn binary(gpu: &Gpu, entry: &str, a: &Storage, b: &Storage) -> Storage {
    let out = gpu.alloc(a.len());
    let params = Params::linear(a.len(), b.len(), 0.0);
    let buffers = [("a", a.gpu()), ("b", b.gpu()), ("out", &out)];
    let vec4 = a.len().is_multiple_of(4) && b.len().is_multiple_of(4) && !b.is_empty();
    let kernel = gpu.kernel_in_width(&crate::shader!("elementwise"), entry, vec4);
    let threads = if vec4 { a.len() / 4 } else { a.len() };
    gpu.dispatch_linear(&kernel, &params, &buffers, threads);
    Storage::Gpu(out)
}

/// `a + b` with `b` repeated to `a`'s length.
pub fn add_storage(backend: &Backend, a: &Storage, b: &Storage) -> Storage {
    match backend {
        Backend::Cpu => Storage::Cpu(Arc::new(cpu::add(a.cpu(), b.cpu()))),
        Backend::Gpu(gpu) => binary(gpu, "add", a, b),
    }
}

/// `a * b` with `b` repeated to `a`'s length.
pub fn mul_storage(backend: &Backend, a: &Storage, b: &Storage) -> Storage {
    match backend {
        Backend::Cpu => Storage::Cpu(Arc::new(cpu::mul(a.cpu(), b.cpu()))),
        Backend::Gpu(gpu) => binary(gpu, "mul", a, b),
    }
}

/// `factor · a`.
pub fn scale_storage(backend: &Backend, a: &Storage, factor: f32) -> Storage {
    match backend {
        Backend::Cpu => Storage::Cpu(Arc::new(cpu::scale(a.cpu(), factor))),
        Backend::Gpu(gpu) => {
            let out = gpu.alloc(a.len());
            gpu.dispatch_linear(
                &kernel(gpu, "scale"),
                &Params::linear(a.len(), 1, factor),
                &[("a", a.gpu()), ("out", &out)],
                a.len(),
            );
            Storage::Gpu(out)
        }
    }
}

/// Column sums of a row-major [rows, cols] matrix.
pub fn sum_rows(backend: &Backend, x: &Storage, rows: usize, cols: usize) -> Storage {
    match backend {
        Backend::Cpu => Storage::Cpu(Arc::new(cpu::sum_rows(x.cpu(), rows, cols))),
        Backend::Gpu(gpu) => {
            let params = |rows: usize| Params {
                rows: rows as u32,
                cols: cols as u32,
                ..Params::linear(0, 1, 0.0)
            };
            let sum = |x: &crate::gpu::GpuBuf, rows: usize| {
                let out = gpu.alloc(cols);
                let buffers = [("a", x), ("out", &out)];
                gpu.dispatch_linear(&kernel(gpu, "sum_rows"), &params(rows), &buffers, cols);
                out
            };
            // A choice site (src/gpu/plan.rs): a plan whose count sets `rows` takes two passes.
            let force = gpu.choice_site();
            let two_pass = rows > SUM_CHUNK || force > 0;
            if !cols.is_multiple_of(4) || !two_pass {
                return Storage::Gpu(sum(x.gpu(), rows));
            }
            // Chunks of rows first, so every core takes a share of a long column sum.
            let chunks = rows.div_ceil(SUM_CHUNK);
            let partial = gpu.alloc(chunks * cols);
            gpu.dispatch_linear(
                &kernel(gpu, "sum_rows_partial4"),
                &params(rows),
                &[("a", x.gpu()), ("out", &partial)],
                chunks * cols / 4,
            );
            Storage::Gpu(sum(&partial, chunks))
        }
    }
}

/// Plain-Rust references.
pub mod cpu {
    pub fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
        a.iter()
            .enumerate()
            .map(|(i, x)| x + b[i % b.len()])
            .collect()
    }

    pub fn mul(a: &[f32], b: &[f32]) -> Vec<f32> {
        a.iter()
            .enumerate()
            .map(|(i, x)| x * b[i % b.len()])
            .collect()
    }

    pub fn scale(a: &[f32], factor: f32) -> Vec<f32> {
        a.iter().map(|x| factor * x).collect()
    }

    pub fn sum_rows(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        (0..cols)
            .map(|c| (0..rows).map(|r| x[r * cols + c] as f64).sum::<f64>() as f32)
            .collect()
    }
}
