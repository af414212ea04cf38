//! Sums and means over one axis or over everything. Shader: `shaders/reduce.wgsl`.

use std::sync::Arc;

use crate::gpu::{Gpu, MAX_GROUPS_PER_DIM};
use crate::graph::{Backend, Graph, Op, OpResult, Storage, Tensor, shape_error};

/// A reduction of `input` viewed as [outer, n, inner] over its middle axis, times `factor`.
#[derive(Clone, Debug)]
pub struct ReduceOp {
    pub input: Tensor,
    pub dims: ReduceDims,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReduceDims {
    pub outer: usize,
    pub n: usize,
    pub inner: usize,
    /// 1 for a sum, 1/n for a mean.
    pub factor: f32,
}

/// Outputs at or below this count with an axis at least one workgroup long use one workgroup
/// per output (e.g. a loss over every element); otherwise one invocation per output.
const WIDE_MAX_OUTPUTS: usize = 4096;
const WIDE_MIN_AXIS: usize = 256;

impl Graph {
    /// Sum over `axis`, which is removed (a 1-D input gives shape [1]).
    pub fn sum(&mut self, a: Tensor, axis: usize) -> OpResult {
        self.reduce_axis("sum", a, axis, false)
    }

    /// Mean over `axis`, which is removed (a 1-D input gives shape [1]).
    pub fn mean(&mut self, a: Tensor, axis: usize) -> OpResult {
        self.reduce_axis("mean", a, axis, true)
    }

    /// Sum of every element, shape [1].
    pub fn sum_all(&mut self, a: Tensor) -> OpResult {
        let n = self.numel(a);
        self.reduce(
            a,
            ReduceDims {
                outer: 1,
                n,
                inner: 1,
                factor: 1.0,
            },
            vec![1],
        )
    }

    /// Mean of every element, shape [1].
    pub fn mean_all(&mut self, a: Tensor) -> OpResult {
        let n = self.numel(a);
        if n == 0 {
            return Err(shape_error(
                "mean_all",
                "the mean of an empty tensor [0] is undefined",
            ));
        }
        self.reduce(
            a,
            ReduceDims {
                outer: 1,
                n,
                inner: 1,
                factor: 1.0 / n as f32,
            },
            vec![1],
        )
    }

    fn reduce_axis(&mut self, name: &'static str, a: Tensor, axis: usize, mean: bool) -> OpResult {
        let shape = self.shape(a).to_vec();
        if axis >= shape.len() {
            return Err(shape_error(
                name,
                format!("axis {axis} of a tensor of shape {shape:?}"),
            ));
        }
        let n = shape[axis];
        if mean && n == 0 {
            return Err(shape_error(
                name,
                format!("axis {axis} of shape {shape:?} is empty"),
            ));
        }
        let dims = ReduceDims {
            outer: shape[..axis].iter().product(),
            n,
            inner: shape[axis + 1..].iter().product(),
            factor: if mean { 1.0 / n as f32 } else { 1.0 },
        };
        let mut out_shape = shape.clone();
        out_shape.remove(axis);
        if out_shape.is_empty() {
            out_shape.push(1);
        }
        self.reduce(a, dims, out_shape)
    }

    fn reduce(&mut self, a: Tensor, dims: ReduceDims, shape: Vec<usize>) -> OpResult {
        let value = reduce_storage(&self.backend, self.storage(a), dims);
        Ok(self.push_op(value, shape, &[a], Op::Reduce(ReduceOp { input: a, dims })))
    }
}

/// d input[o, j, i] = factor · d out[o, i].
pub fn backward(g: &mut Graph, op: &ReduceOp, grad: &Storage) {
    if g.requires_grad(op.input) {
        let dx = broadcast_storage(&g.backend, grad, op.dims);
        g.accumulate(op.input, dx);
    }
}

crate::kernel_params! {
    pub(crate) struct Params for "reduce" {
        outer: u32,
        n: u32,
        inner: u32,
        factor: f32,
    }
}

impl From<ReduceDims> for Params {
    fn from(d: ReduceDims) -> Self {
        Params {
            outer: d.outer as u32,
            n: d.n as u32,
            inner: d.inner as u32,
            factor: d.factor,
        }
    }
}

fn kernel(gpu: &Gpu, entry: &str) -> Arc<crate::gpu::Kernel> {
    gpu.kernel(&crate::shader!("reduce"), entry)
}

/// [outer, n, inner] -> [outer, inner]: factor · Σ over n.
pub fn reduce_storage(backend: &Backend, x: &Storage, dims: ReduceDims) -> Storage {
    match backend {
        Backend::Cpu => Storage::Cpu(Arc::new(cpu::reduce(x.cpu(), dims))),
        Backend::Gpu(gpu) => {
            let outputs = dims.outer * dims.inner;
            let out = gpu.alloc(outputs);
            let params = Params::from(dims);
            if outputs <= WIDE_MAX_OUTPUTS && dims.n >= WIDE_MIN_AXIS {
                let groups = [
                    outputs.min(MAX_GROUPS_PER_DIM as usize) as u32,
                    outputs.div_ceil(MAX_GROUPS_PER_DIM as usize) as u32,
                    1,
                ];
                gpu.dispatch(
                    &kernel(gpu, "sum_axis_wide"),
                    &params,
                    &[("x", x.gpu()), ("out", &out)],
                    groups,
                );
            } else {
                let buffers = [("x", x.gpu()), ("out", &out)];
                gpu.dispatch_linear(&kernel(gpu, "sum_axis"), &params, &buffers, outputs);
            }
            Storage::Gpu(out)
        }
    }
}

/// [outer, inner] -> [outer, n, inner]: factor · x repeated along n.
pub fn broadcast_storage(backend: &Backend, x: &Storage, dims: ReduceDims) -> Storage {
    match backend {
        Backend::Cpu => Storage::Cpu(Arc::new(cpu::broadcast(x.cpu(), dims))),
        Backend::Gpu(gpu) => {
            let len = dims.outer * dims.n * dims.inner;
            let out = gpu.alloc(len);
            gpu.dispatch_linear(
                &kernel(gpu, "broadcast_axis"),
                &Params::from(dims),
                &[("x", x.gpu()), ("out", &out)],
                len,
            );
            Storage::Gpu(out)
        }
    }
}

/// Plain-Rust references (f64 accumulation).
pub mod cpu {
    use super::ReduceDims;

    pub fn reduce(x: &[f32], d: ReduceDims) -> Vec<f32> {
        let mut out = vec![0f32; d.outer * d.inner];
        for o in 0..d.outer {
            for i in 0..d.inner {
                let sum: f64 = (0..d.n)
                    .map(|j| x[(o * d.n + j) * d.inner + i] as f64)
                    .sum();
                out[o * d.inner + i] = (d.factor as f64 * sum) as f32;
            }
        }
        out
    }

    pub fn broadcast(x: &[f32], d: ReduceDims) -> Vec<f32> {
        let mut out = vec![0f32; d.outer * d.n * d.inner];
        for (e, v) in out.iter_mut().enumerate() {
            *v = d.factor * x[(e / (d.n * d.inner)) * d.inner + e % d.inner];
        }
        out
    }
}
