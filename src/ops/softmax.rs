//! Softmax over the last axis with a temperature and an optional causal mask (attention).
//! Shader: `shaders/softmax.wgsl`.

use std::sync::Arc;

use crate::gpu::Gpu;
use crate::graph::{Backend, Graph, Op, OpResult, Storage, Tensor, shape_error};

/// What the tape keeps: the input and the output y (the backward needs only y).
#[derive(Clone)]
pub struct SoftmaxOp {
    pub input: Tensor,
    pub output: Storage,
    pub dims: SoftmaxDims,
}

impl std::fmt::Debug for SoftmaxOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftmaxOp")
            .field("input", &self.input)
            .field("dims", &self.dims)
            .finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SoftmaxDims {
    pub rows: usize,
    pub cols: usize,
    pub scale: f32,
    /// Row r (query r % cols) sees keys 0..=r % cols only.
    pub causal: bool,
    /// Columns that take part (≤ cols); the rest are padding with probability 0.
    pub keys: usize,
}

impl Graph {
    /// softmax(scale · a) over the last axis. `causal`: a is [.., T, T] and key j > query i gets
    /// probability 0 (M1: the text tower's causal attention mask).
    pub fn softmax(&mut self, a: Tensor, scale: f32, causal: bool) -> OpResult {
        let shape = self.shape(a).to_vec();
        let Some(&cols) = shape.last() else {
            return Err(shape_error("softmax", "a scalar [] has no last axis"));
        };
        if causal && (shape.len() < 2 || shape[shape.len() - 2] != cols) {
            return Err(shape_error(
                "softmax",
                format!("a causal mask needs square [.., T, T] scores, got {shape:?}"),
            ));
        }
        let dims = SoftmaxDims {
            rows: self.numel(a) / cols.max(1),
            cols,
            scale,
            causal,
            keys: cols,
        };
        let output = forward(&self.backend, self.storage(a), dims);
        let op = Op::Softmax(SoftmaxOp {
            input: a,
            output: output.clone(),
            dims,
        });
        Ok(self.push_op(output, shape, &[a], op))
    }
}

pub fn backward(g: &mut Graph, op: &SoftmaxOp, grad: &Storage) {
    if g.requires_grad(op.input) {
        let dx = backward_storage(&g.backend, &op.output, grad, op.dims);
        g.accumulate(op.input, dx);
    }
}

crate::kernel_params! {
    pub(crate) struct Params for "softmax" {
        rows: u32,
        cols: u32,
        causal: u32,
        scale: f32,
        keys: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

impl From<SoftmaxDims> for Params {
    fn from(d: SoftmaxDims) -> Self {
        Params {
            rows: d.rows as u32,
            cols: d.cols as u32,
            causal: u32::from(d.causal),
            scale: d.scale,
            keys: d.keys.min(d.cols) as u32,
            ..bytemuck::Zeroable::zeroed()
        }
    }
}

/// Runs `entry` over the rows of `x` (and `dy`, for the backward).
fn dispatch_rows(
    gpu: &Gpu,
    entry: &str,
    dims: SoftmaxDims,
    x: &Storage,
    dy: Option<&Storage>,
) -> Storage {
    let out = gpu.alloc(dims.rows * dims.cols);
    // Four columns per load where the rows allow.
    let shader = crate::shader!("softmax");
    let kernel = gpu.kernel_in_width(&shader, entry, dims.cols.is_multiple_of(4));
    let mut buffers = vec![("x", x.gpu()), ("out", &out)];
    buffers.extend(dy.map(|dy| ("dy", dy.gpu())));
    gpu.dispatch_linear(&kernel, &Params::from(dims), &buffers, dims.rows);
    Storage::Gpu(out)
}

/// y = softmax(scale · x) row-wise.
pub fn forward(backend: &Backend, x: &Storage, dims: SoftmaxDims) -> Storage {
    match backend {
        Backend::Cpu => Storage::Cpu(Arc::new(cpu::forward(x.cpu(), dims))),
        Backend::Gpu(gpu) => dispatch_rows(gpu, "softmax_forward", dims, x, None),
    }
}

/// dx = scale · y ∘ (dy − Σ dy ∘ y) row-wise.
pub fn backward_storage(
    backend: &Backend,
    y: &Storage,
    dy: &Storage,
    dims: SoftmaxDims,
) -> Storage {
    match backend {
        Backend::Cpu => Storage::Cpu(Arc::new(cpu::backward(y.cpu(), dy.cpu(), dims))),
        Backend::Gpu(gpu) => dispatch_rows(gpu, "softmax_backward", dims, y, Some(dy)),
    }
}

/// Plain-Rust references (f64 within a row).
pub mod cpu {
    use super::SoftmaxDims;

    pub fn forward(x: &[f32], d: SoftmaxDims) -> Vec<f32> {
        let mut y = vec![0f32; d.rows * d.cols];
        for r in 0..d.rows {
            let keys = d.keys.min(d.cols);
            let live = if d.causal {
                (r % d.cols + 1).min(keys)
            } else {
                keys
            };
            let row = &x[r * d.cols..r * d.cols + live];
            let z: Vec<f64> = row.iter().map(|&v| d.scale as f64 * v as f64).collect();
            let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = z.iter().map(|v| (v - max).exp()).sum();
            for (j, v) in z.iter().enumerate() {
                y[r * d.cols + j] = ((v - max).exp() / sum) as f32;
            }
        }
        y
    }

    pub fn backward(y: &[f32], dy: &[f32], d: SoftmaxDims) -> Vec<f32> {
        let mut dx = vec![0f32; d.rows * d.cols];
        for r in 0..d.rows {
            let span = r * d.cols..(r + 1) * d.cols;
            let dot: f64 = y[span.clone()]
                .iter()
                .zip(&dy[span.clone()])
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum();
            for j in span {
                dx[j] = (d.scale as f64 * y[j] as f64 * (dy[j] as f64 - dot)) as f32;
            }
        }
        dx
    }
}
