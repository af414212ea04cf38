//! LayerNorm over the last axis with a gain and a bias, as `torch.nn.LayerNorm` (M1; eps 1e-5
//! in the model). The forward keeps each row's mean and 1/sqrt(var + eps) for the backward.
//! Shader: `shaders/layer_norm.wgsl`.

use std::sync::Arc;

use crate::gpu::{Gpu, MAX_GROUPS_PER_DIM, linear_grid};
use crate::graph::{Backend, Graph, Op, OpResult, Storage, Tensor, shape_error};
use crate::ops::elementwise::sum_rows;

/// Rows per partial sum of the gain and bias gradients (first of two reduction passes).
const PARAM_GRAD_CHUNK_ROWS: usize = 64;

#[derive(Clone)]
pub struct LayerNormOp {
    pub x: Tensor,
    pub gain: Tensor,
    pub bias: Tensor,
    pub rows: usize,
    pub cols: usize,
    pub eps: f32,
    /// Per row: mean, 1/sqrt(var + eps) ([rows, 2]).
    pub stats: Storage,
}

impl std::fmt::Debug for LayerNormOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerNormOp")
            .field("x", &self.x)
            .field("gain", &self.gain)
            .field("bias", &self.bias)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("eps", &self.eps)
            .finish()
    }
}

impl Graph {
    /// LayerNorm of `x` [.., D] over its last axis: (x − mean) / sqrt(var + eps) · gain + bias,
    /// with the biased variance; gain and bias are [D].
    pub fn layer_norm(&mut self, x: Tensor, gain: Tensor, bias: Tensor, eps: f32) -> OpResult {
        let sx = self.shape(x).to_vec();
        let (sg, sb) = (self.shape(gain).to_vec(), self.shape(bias).to_vec());
        let cols = sx.last().copied().unwrap_or(0);
        if sx.is_empty() || cols == 0 || sg != [cols] || sb != [cols] {
            return Err(shape_error(
                "layer_norm",
                format!(
                    "x {sx:?} needs a non-empty last axis D, gain {sg:?} and bias {sb:?} must be [D]"
                ),
            ));
        }
        let rows = self.numel(x) / cols;
        let (value, stats) = forward(
            &self.backend,
            self.storage(x),
            self.storage(gain),
            self.storage(bias),
            rows,
            cols,
            eps,
        );
        let op = Op::LayerNorm(LayerNormOp {
            x,
            gain,
            bias,
            rows,
            cols,
            eps,
            stats,
        });
        Ok(self.push_op(value, sx, &[x, gain, bias], op))
    }
}

crate::kernel_params! {
    pub(crate) struct Params for "layer_norm" {
        rows: u32,
        cols: u32,
        chunk_rows: u32,
        eps: f32,
    }
}

/// The shader's `entry`, four columns per load where `cols` is a multiple of 4.
fn kernel(gpu: &Gpu, entry: &str, cols: usize) -> Arc<crate::gpu::Kernel> {
    gpu.kernel_in_width(&crate::shader!("layer_norm"), entry, cols.is_multiple_of(4))
}

/// (y, stats) of LayerNorm over rows of `cols` values.
pub fn forward(
    backend: &Backend,
    x: &Storage,
    gain: &Storage,
    bias: &Storage,
    rows: usize,
    cols: usize,
    eps: f32,
) -> (Storage, Storage) {
    match backend {
        Backend::Cpu => {
            let (y, stats) = cpu::forward(x.cpu(), gain.cpu(), bias.cpu(), cols, eps);
            (Storage::Cpu(Arc::new(y)), Storage::Cpu(Arc::new(stats)))
        }
        Backend::Gpu(gpu) => {
            let (out, stats) = (gpu.alloc(rows * cols), gpu.alloc(rows * 2));
            let params = Params {
                rows: rows as u32,
                cols: cols as u32,
                chunk_rows: 0,
                eps,
            };
            let k = kernel(gpu, "layer_norm_forward", cols);
            let buffers = [
                ("x", x.gpu()),
                ("gain", gain.gpu()),
                ("bias", bias.gpu()),
                ("stats", &stats),
                ("out", &out),
            ];
            gpu.dispatch(&k, &params, &buffers, linear_grid(rows, k.lanes()));
            (Storage::Gpu(out), Storage::Gpu(stats))
        }
    }
}

/// Gradients of x, gain and bias.
pub fn backward(g: &mut Graph, op: &LayerNormOp, grad: &Storage) {
    let backend = g.backend.clone();
    let (x, gain) = (g.storage(op.x).clone(), g.storage(op.gain).clone());
    let (rows, cols) = (op.rows, op.cols);
    let params_need = g.requires_grad(op.gain) || g.requires_grad(op.bias);
    match &backend {
        Backend::Cpu => {
            let (dx, dgain, dbias) = cpu::backward(x.cpu(), gain.cpu(), grad.cpu(), cols, op.eps);
            g.accumulate(op.x, Storage::Cpu(Arc::new(dx)));
            g.accumulate(op.gain, Storage::Cpu(Arc::new(dgain)));
            g.accumulate(op.bias, Storage::Cpu(Arc::new(dbias)));
        }
        Backend::Gpu(gpu) => {
            let chunks = rows.div_ceil(PARAM_GRAD_CHUNK_ROWS);
            let params = Params {
                rows: rows as u32,
                cols: cols as u32,
                chunk_rows: PARAM_GRAD_CHUNK_ROWS as u32,
                eps: op.eps,
            };
            let stats = op.stats.gpu();
            if g.requires_grad(op.x) {
                let dx = gpu.alloc(rows * cols);
                let k = kernel(gpu, "layer_norm_backward_input", cols);
                let buffers = [
                    ("x", x.gpu()),
                    ("gain", gain.gpu()),
                    ("grad", grad.gpu()),
                    ("stats", stats),
                    ("out", &dx),
                ];
                gpu.dispatch(&k, &params, &buffers, linear_grid(rows, k.lanes()));
                g.accumulate(op.x, Storage::Gpu(dx));
            }
            if params_need {
                assert!(
                    chunks <= MAX_GROUPS_PER_DIM as usize,
                    "layer_norm: {rows} rows exceed the parameter-gradient grid"
                );
                let k = kernel(gpu, "layer_norm_backward_params", cols);
                let (partial_gain, partial_bias) =
                    (gpu.alloc(chunks * cols), gpu.alloc(chunks * cols));
                let buffers = [
                    ("x", x.gpu()),
                    ("grad", grad.gpu()),
                    ("stats", stats),
                    ("partial_gain", &partial_gain),
                    ("partial_bias", &partial_bias),
                ];
                // One invocation per column, or per four columns.
                let columns = if cols.is_multiple_of(4) {
                    cols / 4
                } else {
                    cols
                };
                let grid = [(columns as u32).div_ceil(k.lanes()), chunks as u32, 1];
                gpu.dispatch(&k, &params, &buffers, grid);
                let dgain = sum_rows(&backend, &Storage::Gpu(partial_gain), chunks, cols);
                let dbias = sum_rows(&backend, &Storage::Gpu(partial_bias), chunks, cols);
                g.accumulate(op.gain, dgain);
                g.accumulate(op.bias, dbias);
            }
        }
    }
}

/// Plain-Rust reference, f64 inside each row.
pub mod cpu {
    /// (y, stats [rows, 2] = mean, 1/sqrt(var + eps)).
    pub fn forward(
        x: &[f32],
        gain: &[f32],
        bias: &[f32],
        cols: usize,
        eps: f32,
    ) -> (Vec<f32>, Vec<f32>) {
        let mut y = Vec::with_capacity(x.len());
        let mut stats = Vec::with_capacity(2 * x.len() / cols);
        for row in x.chunks(cols) {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
            let rstd = 1.0 / (var + eps as f64).sqrt();
            y.extend(
                row.iter()
                    .zip(gain.iter().zip(bias))
                    .map(|(&v, (&g, &b))| ((v as f64 - mean) * rstd * g as f64 + b as f64) as f32),
            );
            stats.extend([mean as f32, rstd as f32]);
        }
        (y, stats)
    }

    /// (dx, dgain, dbias).
    pub fn backward(
        x: &[f32],
        gain: &[f32],
        grad: &[f32],
        cols: usize,
        eps: f32,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut dx = Vec::with_capacity(x.len());
        let mut dgain = vec![0f64; cols];
        let mut dbias = vec![0f64; cols];
        for (row, dy) in x.chunks(cols).zip(grad.chunks(cols)) {
            // The statistics again in f64 rather than the forward's f32-rounded ones.
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
            let rstd = 1.0 / (var + eps as f64).sqrt();
            let xhat: Vec<f64> = row.iter().map(|&v| (v as f64 - mean) * rstd).collect();
            let g: Vec<f64> = dy
                .iter()
                .zip(gain)
                .map(|(&d, &w)| d as f64 * w as f64)
                .collect();
            let mean_g = g.iter().sum::<f64>() / cols as f64;
            let mean_gx = g.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / cols as f64;
            for c in 0..cols {
                dx.push((rstd * (g[c] - mean_g - xhat[c] * mean_gx)) as f32);
                dgain[c] += dy[c] as f64 * xhat[c];
                dbias[c] += dy[c] as f64;
            }
        }
        let to_f32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
        (dx, to_f32(dgain), to_f32(dbias))
    }
}
