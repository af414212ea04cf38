//! L2 normalisation over the last axis, x / max(‖x‖, 1e-12), as `F.normalize` (M1: image and
//! text embeddings before the logits). Shader: `shaders/l2_normalize.wgsl`.

use std::sync::Arc;

use crate::gpu::linear_grid;
use crate::graph::{Backend, Graph, Op, OpResult, Storage, Tensor, shape_error};

/// F.normalize's default eps: the norm is clamped from below.
pub const MIN_NORM: f64 = 1e-12;

#[derive(Clone)]
pub struct L2NormalizeOp {
    pub x: Tensor,
    pub rows: usize,
    pub cols: usize,
    /// ‖x‖ of each row.
    pub norms: Storage,
}

impl std::fmt::Debug for L2NormalizeOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L2NormalizeOp")
            .field("x", &self.x)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish()
    }
}

impl Graph {
    /// Each row of `x` [.., D] divided by its Euclidean norm (clamped below at 1e-12).
    pub fn l2_normalize(&mut self, x: Tensor) -> OpResult {
        let shape = self.shape(x).to_vec();
        let cols = shape.last().copied().unwrap_or(0);
        if cols == 0 {
            return Err(shape_error(
                "l2_normalize",
                format!("x {shape:?} needs a non-empty last axis"),
            ));
        }
        let rows = self.numel(x) / cols;
        let (value, norms) = match &self.backend {
            Backend::Cpu => {
                let (y, norms) = cpu::forward(self.storage(x).cpu(), cols);
                (Storage::Cpu(Arc::new(y)), Storage::Cpu(Arc::new(norms)))
            }
            Backend::Gpu(gpu) => {
                let (out, norms) = (gpu.alloc(rows * cols), gpu.alloc(rows));
                let xs = self.storage(x).gpu();
                gpu.dispatch(
                    &kernel(gpu, "l2_normalize_forward"),
                    &Params::new(rows, cols),
                    &[("x", xs), ("norms", &norms), ("out", &out)],
                    linear_grid(rows, 1),
                );
                (Storage::Gpu(out), Storage::Gpu(norms))
            }
        };
        let op = Op::L2Normalize(L2NormalizeOp {
            x,
            rows,
            cols,
            norms,
        });
        Ok(self.push_op(value, shape, &[x], op))
    }
}

crate::kernel_params! {
    pub(crate) struct Params for "l2_normalize" {
        rows: u32,
        cols: u32,
        _pad0: u32,
        _pad1: u32,
    }
}

impl Params {
    fn new(rows: usize, cols: usize) -> Self {
        Params {
            rows: rows as u32,
            cols: cols as u32,
            ..bytemuck::Zeroable::zeroed()
        }
    }
}

fn kernel(gpu: &crate::gpu::Gpu, entry: &str) -> Arc<crate::gpu::Kernel> {
    gpu.kernel(&crate::shader!("l2_normalize"), entry)
}

pub fn backward(g: &mut Graph, op: &L2NormalizeOp, grad: &Storage) {
    if !g.requires_grad(op.x) {
        return;
    }
    let x = g.storage(op.x);
    let dx = match &g.backend {
        Backend::Cpu => Storage::Cpu(Arc::new(cpu::backward(x.cpu(), grad.cpu(), op.cols))),
        Backend::Gpu(gpu) => {
            let dx = gpu.alloc(op.rows * op.cols);
            gpu.dispatch(
                &kernel(gpu, "l2_normalize_backward"),
                &Params::new(op.rows, op.cols),
                &[
                    ("x", x.gpu()),
                    ("grad", grad.gpu()),
                    ("norms", op.norms.gpu()),
                    ("out", &dx),
                ],
                linear_grid(op.rows, 1),
            );
            Storage::Gpu(dx)
        }
    };
    g.accumulate(op.x, dx);
}

/// Plain-Rust reference, f64 inside each row.
pub mod cpu {
    use super::MIN_NORM;

    fn norm(row: &[f32]) -> f64 {
        row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt()
    }

    /// (y, ‖x‖ per row).
    pub fn forward(x: &[f32], cols: usize) -> (Vec<f32>, Vec<f32>) {
        let mut y = Vec::with_capacity(x.len());
        let mut norms = Vec::with_capacity(x.len() / cols);
        for row in x.chunks(cols) {
            let n = norm(row);
            y.extend(row.iter().map(|&v| (v as f64 / n.max(MIN_NORM)) as f32));
            norms.push(n as f32);
        }
        (y, norms)
    }

    pub fn backward(x: &[f32], grad: &[f32], cols: usize) -> Vec<f32> {
        let mut dx = Vec::with_capacity(x.len());
        for (row, dy) in x.chunks(cols).zip(grad.chunks(cols)) {
            let n = norm(row);
            let denom = n.max(MIN_NORM);
            // Below the clamp the denominator is a constant: no projection term.
            let projection = if n <= MIN_NORM {
                0.0
            } else {
                row.iter()
                    .zip(dy)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>()
                    / (n * n)
            };
            dx.extend(
                row.iter()
                    .zip(dy)
                    .map(|(&v, &d)| ((d as f64 - v as f64 * projection) / denom) as f32),
            );
        }
        dx
    }
}
