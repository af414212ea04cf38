//! Elementwise add (with broadcasting of a trailing-shape operand) and the row sum that
//! reverses that broadcast. Shader: `shaders/elementwise.wgsl`.

use std::sync::Arc;

use crate::gpu::Gpu;
use crate::graph::{Backend, Graph, Op, OpResult, Storage, Tensor, shape_error};

#[derive(Clone, Debug)]
pub struct AddOp {
    pub a: Tensor,
    pub b: Tensor,
    /// b's shape is a suffix of a's: b is repeated over a's leading dimensions.
    pub broadcast_rows: usize,
}

impl Graph {
    /// `a + b`, where `b` has `a`'s shape or a suffix of it (e.g. a bias or positions).
    pub fn add(&mut self, a: Tensor, b: Tensor) -> OpResult {
        let (sa, sb) = (self.shape(a).to_vec(), self.shape(b).to_vec());
        if sb.len() > sa.len() || sa[sa.len() - sb.len()..] != sb[..] {
            return Err(shape_error(
                "add",
                format!("b {sb:?} is neither a's shape {sa:?} nor a suffix of it"),
            ));
        }
        let rows = self.numel(a) / self.numel(b).max(1);
        let value = add_storage(&self.backend, self.storage(a), self.storage(b));
        Ok(self.push_op(
            value,
            sa,
            &[a, b],
            Op::Add(AddOp {
                a,
                b,
                broadcast_rows: rows,
            }),
        ))
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

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    len: u32,
    b_len: u32,
    rows: u32,
    cols: u32,
}

fn kernel(gpu: &Gpu, entry: &str) -> Arc<crate::gpu::Kernel> {
    gpu.kernel(&crate::shader!("elementwise"), entry)
}

/// `a + b` with `b` repeated to `a`'s length.
pub fn add_storage(backend: &Backend, a: &Storage, b: &Storage) -> Storage {
    match backend {
        Backend::Cpu => Storage::Cpu(Arc::new(cpu::add(a.cpu(), b.cpu()))),
        Backend::Gpu(gpu) => {
            let out = gpu.alloc(a.len());
            let params = Params {
                len: a.len() as u32,
                b_len: b.len().max(1) as u32,
                rows: 0,
                cols: 0,
            };
            gpu.dispatch_linear(
                &kernel(gpu, "add"),
                &params,
                &[a.gpu(), b.gpu(), &out],
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
            let out = gpu.alloc(cols);
            let params = Params {
                len: 0,
                b_len: 1,
                rows: rows as u32,
                cols: cols as u32,
            };
            gpu.dispatch_linear(
                &kernel(gpu, "sum_rows"),
                &params,
                &[x.gpu(), x.gpu(), &out],
                cols,
            );
            Storage::Gpu(out)
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

    pub fn sum_rows(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        (0..cols)
            .map(|c| (0..rows).map(|r| x[r * cols + c] as f64).sum::<f64>() as f32)
            .collect()
    }
}
