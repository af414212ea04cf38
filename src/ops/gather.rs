//! Row gather (embedding lookup, kept-token selection, pooling) and row scatter-add (its
//! backward, and an op of its own). An index at or past the row count gathers zeros and
//! scatters nowhere, on both backends. Shader: `shaders/gather.wgsl`.

use std::sync::Arc;

use crate::gpu::{Gpu, GpuBuf};
use crate::graph::{Backend, DType, Graph, Op, OpResult, ShapeError, Storage, Tensor, shape_error};

/// `out = src[idx]` row-wise.
#[derive(Clone, Debug)]
pub struct GatherRowsOp {
    pub src: Tensor,
    pub idx: Tensor,
    /// Rows of `src`.
    pub rows: usize,
    /// Values per row.
    pub cols: usize,
    /// No row is gathered twice: the backward writes each row's gradient in place instead of
    /// summing through a CSR of the indices.
    pub distinct: bool,
}

/// `out[idx[i]] += src[i]` row-wise into `rows` rows.
#[derive(Clone, Debug)]
pub struct ScatterAddRowsOp {
    pub src: Tensor,
    pub idx: Tensor,
    pub rows: usize,
    pub cols: usize,
}

fn check_indices(g: &Graph, op: &'static str, src: Tensor, idx: Tensor) -> Result<(), ShapeError> {
    if g.dtype(idx) != DType::U32 {
        return Err(shape_error(
            op,
            format!(
                "idx {:?} must be an index tensor (Graph::indices), src {:?}",
                g.shape(idx),
                g.shape(src)
            ),
        ));
    }
    if g.dtype(src) != DType::F32 {
        return Err(shape_error(
            op,
            format!("src {:?} must hold f32 values", g.shape(src)),
        ));
    }
    Ok(())
}

impl Graph {
    /// The index tensor [batch · (1 + k)] of each image's class token and kept patches, from
    /// kept [batch, k] u32 raster indices in 0..patches on this backend (M3.5; the host twin is
    /// `model::vision::kept_rows`).
    pub fn kept_token_rows(&mut self, kept: Storage, batch: usize, patches: usize) -> OpResult {
        if batch == 0 || !kept.len().is_multiple_of(batch) || patches == 0 {
            return Err(shape_error(
                "kept_token_rows",
                format!(
                    "{} kept indices for {batch} images of {patches} patches",
                    kept.len()
                ),
            ));
        }
        let rows = kept_token_rows_storage(&self.backend, &kept, batch, patches);
        let len = rows.len();
        self.index_node(rows, &[len])
    }

    /// Rows i · stride for i in 0..count (the class token of each image's `stride` tokens),
    /// made where they are used: a dispatch plan's count may set `stride` (src/gpu/plan.rs).
    pub fn strided_rows(&mut self, count: usize, stride: usize) -> OpResult {
        if stride == 0 {
            return Err(shape_error("strided_rows", "stride 0".to_string()));
        }
        let rows = match &self.backend {
            Backend::Cpu => self
                .backend
                .upload_u32(&cpu::kept_token_rows(&[], count, stride - 1)),
            // No kept patch: row = image · (patches + 1); the index binding is never read.
            Backend::Gpu(gpu) => {
                Storage::Gpu(token_rows_gpu(gpu, &gpu.alloc(1), count, stride - 1, 0))
            }
        };
        self.index_node(rows, &[count])
    }

    /// src [R, ...rest], idx u32 [n...] -> [n..., ...rest]. Rows may repeat (an embedding
    /// lookup); the backward scatter-adds into src.
    pub fn gather_rows(&mut self, src: Tensor, idx: Tensor) -> OpResult {
        self.gather(src, idx, false)
    }

    /// [`Graph::gather_rows`] where `idx` names no row twice (kept tokens, pooled rows), which
    /// the caller promises: the backward is then a plain scatter (each source row written
    /// once), without the CSR that sums repeats. A repeated index would race on the GPU.
    pub fn gather_distinct_rows(&mut self, src: Tensor, idx: Tensor) -> OpResult {
        self.gather(src, idx, true)
    }

    fn gather(&mut self, src: Tensor, idx: Tensor, distinct: bool) -> OpResult {
        check_indices(self, "gather_rows", src, idx)?;
        let (ss, si) = (self.shape(src).to_vec(), self.shape(idx).to_vec());
        if ss.is_empty() {
            return Err(shape_error(
                "gather_rows",
                format!("src {ss:?} has no rows, idx {si:?}"),
            ));
        }
        let (rows, cols) = (ss[0], ss[1..].iter().product::<usize>());
        let mut shape = si;
        shape.extend_from_slice(&ss[1..]);
        let value = gather_storage(
            &self.backend,
            self.storage(src),
            self.storage(idx),
            rows,
            cols,
        );
        let op = Op::GatherRows(GatherRowsOp {
            src,
            idx,
            rows,
            cols,
            distinct,
        });
        Ok(self.push_op(value, shape, &[src], op))
    }

    /// src [n..., ...rest], idx u32 [n...] (a prefix of src's shape) -> [rows, ...rest] with
    /// out[idx[i]] += src[i].
    pub fn scatter_add_rows(&mut self, src: Tensor, idx: Tensor, rows: usize) -> OpResult {
        check_indices(self, "scatter_add_rows", src, idx)?;
        let (ss, si) = (self.shape(src).to_vec(), self.shape(idx).to_vec());
        if si.len() > ss.len() || ss[..si.len()] != si[..] {
            return Err(shape_error(
                "scatter_add_rows",
                format!("idx {si:?} is not a prefix of src {ss:?}"),
            ));
        }
        let cols = ss[si.len()..].iter().product::<usize>();
        let mut shape = vec![rows];
        shape.extend_from_slice(&ss[si.len()..]);
        let value = scatter_add_storage(
            &self.backend,
            self.storage(src),
            self.storage(idx),
            rows,
            cols,
        );
        let op = Op::ScatterAddRows(ScatterAddRowsOp {
            src,
            idx,
            rows,
            cols,
        });
        Ok(self.push_op(value, shape, &[src], op))
    }
}

pub fn gather_rows_backward(g: &mut Graph, op: &GatherRowsOp, grad: &Storage) {
    if g.requires_grad(op.src) {
        let idx = g.storage(op.idx);
        let ds = match op.distinct {
            true => scatter_distinct_storage(&g.backend, grad, idx, op.rows, op.cols),
            false => scatter_add_storage(&g.backend, grad, idx, op.rows, op.cols),
        };
        g.accumulate(op.src, ds);
    }
}

pub fn scatter_add_rows_backward(g: &mut Graph, op: &ScatterAddRowsOp, grad: &Storage) {
    if g.requires_grad(op.src) {
        let ds = gather_storage(&g.backend, grad, g.storage(op.idx), op.rows, op.cols);
        g.accumulate(op.src, ds);
    }
}

crate::kernel_params! {
    pub(crate) struct Params for "gather" {
        n: u32,
        rows: u32,
        cols: u32,
        _pad: u32,
    }
}

fn kernel(gpu: &Gpu, entry: &str) -> Arc<crate::gpu::Kernel> {
    gpu.kernel(&crate::shader!("gather"), entry)
}

/// The token rows of each image's class token and kept patches: kept [batch, k] raster indices
/// in 0..patches -> [batch · (1 + k)] rows of the flattened [batch · (1 + patches)] tokens.
pub fn kept_token_rows_storage(
    backend: &Backend,
    kept: &Storage,
    batch: usize,
    patches: usize,
) -> Storage {
    match backend {
        Backend::Cpu => backend.upload_u32(&cpu::kept_token_rows(kept.cpu_u32(), batch, patches)),
        Backend::Gpu(gpu) => {
            let k = kept.len() / batch.max(1);
            Storage::Gpu(token_rows_gpu(gpu, kept.gpu(), batch, patches, k))
        }
    }
}

/// The shader's `kept_token_rows`: [images · (1 + k)] token rows from kept [images, k].
fn token_rows_gpu(gpu: &Gpu, kept: &GpuBuf, images: usize, patches: usize, k: usize) -> GpuBuf {
    let n = images * (1 + k);
    let out = gpu.alloc(n);
    let params = Params {
        n: n as u32,
        rows: patches as u32,
        cols: k as u32,
        ..bytemuck::Zeroable::zeroed()
    };
    gpu.dispatch_linear(
        &kernel(gpu, "kept_token_rows"),
        &params,
        &[("idx", kept), ("token_rows", &out)],
        n,
    );
    out
}

/// src [rows, cols] gathered by idx [n] -> [n, cols].
pub fn gather_storage(
    backend: &Backend,
    src: &Storage,
    idx: &Storage,
    rows: usize,
    cols: usize,
) -> Storage {
    match backend {
        Backend::Cpu => Storage::Cpu(Arc::new(cpu::gather_rows(
            src.cpu(),
            idx.cpu_u32(),
            rows,
            cols,
        ))),
        Backend::Gpu(gpu) => {
            let n = idx.len();
            let out = gpu.alloc(n * cols);
            let params = Params {
                n: n as u32,
                rows: rows as u32,
                cols: cols as u32,
                ..bytemuck::Zeroable::zeroed()
            };
            gpu.dispatch_linear(
                &kernel(gpu, "gather_rows"),
                &params,
                &[("idx", idx.gpu()), ("src", src.gpu()), ("out", &out)],
                n * cols,
            );
            Storage::Gpu(out)
        }
    }
}

/// src [n, cols] written by idx [n], which names no row twice, into [rows, cols] (zeros
/// elsewhere): the scatter-add without its CSR.
pub fn scatter_distinct_storage(
    backend: &Backend,
    src: &Storage,
    idx: &Storage,
    rows: usize,
    cols: usize,
) -> Storage {
    match backend {
        // The reference sums: equal where the indices are distinct.
        Backend::Cpu => scatter_add_storage(backend, src, idx, rows, cols),
        Backend::Gpu(gpu) => {
            let out = gpu.zeros(rows * cols);
            let n = idx.len();
            let params = Params {
                n: n as u32,
                rows: rows as u32,
                cols: cols as u32,
                ..bytemuck::Zeroable::zeroed()
            };
            let buffers = [("idx", idx.gpu()), ("src", src.gpu()), ("out", &out)];
            // Four values per invocation where rows allow.
            let vec4 = cols.is_multiple_of(4);
            let shader = crate::shader!("gather");
            let kernel = gpu.kernel_in_width(&shader, "scatter_distinct_rows", vec4);
            let threads = if vec4 { n * cols / 4 } else { n * cols };
            gpu.dispatch_linear(&kernel, &params, &buffers, threads);
            Storage::Gpu(out)
        }
    }
}

/// src [n, cols] scatter-added by idx [n] into [rows, cols].
pub fn scatter_add_storage(
    backend: &Backend,
    src: &Storage,
    idx: &Storage,
    rows: usize,
    cols: usize,
) -> Storage {
    match backend {
        Backend::Cpu => Storage::Cpu(Arc::new(cpu::scatter_add_rows(
            src.cpu(),
            idx.cpu_u32(),
            rows,
            cols,
        ))),
        Backend::Gpu(gpu) if idx.is_empty() => Storage::Gpu(gpu.zeros(rows * cols)),
        Backend::Gpu(gpu) => {
            let n = idx.len();
            let out = gpu.alloc(rows * cols);
            let counts = gpu.zeros(rows);
            let offsets = gpu.alloc(rows + 1);
            let order = gpu.alloc(n.max(1));
            let params = Params {
                n: n as u32,
                rows: rows as u32,
                cols: cols as u32,
                ..bytemuck::Zeroable::zeroed()
            };
            let (idx, src) = (("idx", idx.gpu()), ("src", src.gpu()));
            let (counts, offsets, order) = (
                ("counts", &counts),
                ("offsets", &offsets),
                ("order", &order),
            );
            let count = [idx, counts];
            gpu.dispatch_linear(&kernel(gpu, "csr_count"), &params, &count, n);
            let scan = [counts, offsets];
            gpu.dispatch(&kernel(gpu, "csr_scan"), &params, &scan, [1, 1, 1]);
            let fill = [idx, counts, offsets, order];
            gpu.dispatch(&kernel(gpu, "csr_fill"), &params, &fill, [1, 1, 1]);
            let sum = [src, offsets, order, ("out", &out)];
            gpu.dispatch_linear(&kernel(gpu, "segment_sum"), &params, &sum, rows * cols);
            Storage::Gpu(out)
        }
    }
}

/// Plain-Rust references.
pub mod cpu {
    /// Rows of the class token and the kept patches [batch, k] of each image in the flattened
    /// [batch · (1 + patches)] tokens; a patch index past the last is clamped, as on the GPU.
    pub fn kept_token_rows(kept: &[u32], batch: usize, patches: usize) -> Vec<u32> {
        let k = kept.len() / batch.max(1);
        let tokens = (patches + 1) as u32;
        let mut rows = Vec::with_capacity(batch * (1 + k));
        for image in 0..batch {
            rows.push(image as u32 * tokens);
            for &patch in &kept[image * k..(image + 1) * k] {
                rows.push(image as u32 * tokens + 1 + patch.min(patches as u32 - 1));
            }
        }
        rows
    }

    pub fn gather_rows(src: &[f32], idx: &[u32], rows: usize, cols: usize) -> Vec<f32> {
        let mut out = vec![0f32; idx.len() * cols];
        for (i, &r) in idx.iter().enumerate() {
            if (r as usize) < rows {
                let r = r as usize;
                out[i * cols..(i + 1) * cols].copy_from_slice(&src[r * cols..(r + 1) * cols]);
            }
        }
        out
    }

    /// f64 accumulation per destination element.
    pub fn scatter_add_rows(src: &[f32], idx: &[u32], rows: usize, cols: usize) -> Vec<f32> {
        let mut acc = vec![0f64; rows * cols];
        for (i, &r) in idx.iter().enumerate() {
            if (r as usize) < rows {
                let r = r as usize;
                for c in 0..cols {
                    acc[r * cols + c] += src[i * cols + c] as f64;
                }
            }
        }
        acc.into_iter().map(|x| x as f32).collect()
    }
}
