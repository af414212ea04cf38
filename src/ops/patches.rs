//! Patch extraction for the ViT patch embedding (M1: a stride-p convolution = a gather of
//! p×p×C patches times the conv weight) and the class-token prepend. Both are permutations
//! (plus a broadcast), so their backward passes are gathers too.
//! Shader: `shaders/patches.wgsl`.

use std::sync::Arc;

use crate::gpu::Gpu;
use crate::graph::{Backend, Graph, Op, OpResult, Storage, Tensor, shape_error};

/// Images [N, C, H, W] cut into patches of side `patch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchDims {
    pub images: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub patch: usize,
}

impl PatchDims {
    /// Patches per image, L = (H/p)(W/p).
    pub fn patches(&self) -> usize {
        (self.height / self.patch) * (self.width / self.patch)
    }

    /// Values per patch, C·p·p.
    pub fn patch_len(&self) -> usize {
        self.channels * self.patch * self.patch
    }
}

#[derive(Clone, Debug)]
pub struct PatchifyOp {
    pub images: Tensor,
    pub dims: PatchDims,
}

#[derive(Clone, Debug)]
pub struct PrependRowOp {
    pub x: Tensor,
    pub row: Tensor,
    /// Sequences N, rows L (before the prepend), columns D.
    pub n: usize,
    pub rows: usize,
    pub cols: usize,
}

impl Graph {
    /// images [N, C, H, W] -> patches [N, L, C·p·p], L = (H/p)(W/p); patch (i, j) at row
    /// i·(W/p)+j, flattened in (channel, row, col) order as OpenCLIP's conv1.weight (M1).
    /// Patch embedding is then `linear(patches, conv1.weight as [width, C·p·p], None)`.
    pub fn patchify(&mut self, images: Tensor, patch: usize) -> OpResult {
        let shape = self.shape(images).to_vec();
        if shape.len() != 4
            || patch == 0
            || !shape[2].is_multiple_of(patch)
            || !shape[3].is_multiple_of(patch)
        {
            return Err(shape_error(
                "patchify",
                format!(
                    "images {shape:?} must be [N, C, H, W] with H and W multiples of the patch size {patch}"
                ),
            ));
        }
        let dims = PatchDims {
            images: shape[0],
            channels: shape[1],
            height: shape[2],
            width: shape[3],
            patch,
        };
        let value = patchify_storage(&self.backend, self.storage(images), dims);
        let out_shape = vec![dims.images, dims.patches(), dims.patch_len()];
        let op = Op::Patchify(PatchifyOp { images, dims });
        Ok(self.push_op(value, out_shape, &[images], op))
    }

    /// x [N, L, D] and row [D] (the class token) -> [N, 1+L, D] with `row` first in every
    /// sequence.
    pub fn prepend_row(&mut self, x: Tensor, row: Tensor) -> OpResult {
        let (sx, sr) = (self.shape(x).to_vec(), self.shape(row).to_vec());
        if sx.len() != 3 || sr != [sx[2]] {
            return Err(shape_error(
                "prepend_row",
                format!("x {sx:?} must be [N, L, D] and row {sr:?} must be [D]"),
            ));
        }
        let (n, rows, cols) = (sx[0], sx[1], sx[2]);
        let value = prepend_row_storage(
            &self.backend,
            self.storage(x),
            self.storage(row),
            n,
            rows,
            cols,
        );
        let op = Op::PrependRow(PrependRowOp {
            x,
            row,
            n,
            rows,
            cols,
        });
        Ok(self.push_op(value, vec![n, rows + 1, cols], &[x, row], op))
    }
}

crate::kernel_params! {
    pub(crate) struct Params for "patches" {
        n: u32,
        channels: u32,
        height: u32,
        width: u32,
        patch_size: u32,
        len: u32,
        _pad0: u32,
        _pad1: u32,
    }
}

impl Params {
    fn patches(d: PatchDims, len: usize) -> Self {
        Params {
            n: d.images as u32,
            channels: d.channels as u32,
            height: d.height as u32,
            width: d.width as u32,
            patch_size: d.patch as u32,
            len: len as u32,
            ..bytemuck::Zeroable::zeroed()
        }
    }

    fn rows(n: usize, rows: usize, cols: usize, len: usize) -> Self {
        Params {
            n: n as u32,
            channels: 0,
            height: rows as u32,
            width: cols as u32,
            patch_size: 0,
            len: len as u32,
            ..bytemuck::Zeroable::zeroed()
        }
    }
}

/// Runs `entry` over `len` outputs with `src` (and `row`) as inputs.
fn run(gpu: &Gpu, entry: &str, params: Params, src: &Storage, row: Option<&Storage>) -> Storage {
    let kernel = gpu.kernel(&crate::shader!("patches"), entry);
    let out = gpu.alloc(params.len as usize);
    let mut buffers = vec![("src", src.gpu()), ("out", &out)];
    buffers.extend(row.map(|row| ("row", row.gpu())));
    gpu.dispatch_linear(&kernel, &params, &buffers, params.len as usize);
    Storage::Gpu(out)
}

pub fn patchify_storage(backend: &Backend, images: &Storage, dims: PatchDims) -> Storage {
    match backend {
        Backend::Cpu => Storage::Cpu(Arc::new(cpu::patchify(images.cpu(), dims))),
        Backend::Gpu(gpu) => run(
            gpu,
            "patchify",
            Params::patches(dims, images.len()),
            images,
            None,
        ),
    }
}

/// The inverse of [`patchify_storage`]: patches [N, L, C·p·p] back to images [N, C, H, W].
pub fn unpatchify_storage(backend: &Backend, patches: &Storage, dims: PatchDims) -> Storage {
    match backend {
        Backend::Cpu => Storage::Cpu(Arc::new(cpu::unpatchify(patches.cpu(), dims))),
        Backend::Gpu(gpu) => run(
            gpu,
            "unpatchify",
            Params::patches(dims, patches.len()),
            patches,
            None,
        ),
    }
}

pub fn prepend_row_storage(
    backend: &Backend,
    x: &Storage,
    row: &Storage,
    n: usize,
    rows: usize,
    cols: usize,
) -> Storage {
    match backend {
        Backend::Cpu => Storage::Cpu(Arc::new(cpu::prepend_row(
            x.cpu(),
            row.cpu(),
            n,
            rows,
            cols,
        ))),
        Backend::Gpu(gpu) => run(
            gpu,
            "prepend_row",
            Params::rows(n, rows, cols, n * (rows + 1) * cols),
            x,
            Some(row),
        ),
    }
}

/// d images = the inverse permutation of d patches.
pub fn patchify_backward(g: &mut Graph, op: &PatchifyOp, grad: &Storage) {
    if g.requires_grad(op.images) {
        let d = unpatchify_storage(&g.backend, grad, op.dims);
        g.accumulate(op.images, d);
    }
}

/// d x = d out without the first row of each sequence; d row = Σ over sequences of that row.
pub fn prepend_row_backward(g: &mut Graph, op: &PrependRowOp, grad: &Storage) {
    let (n, rows, cols) = (op.n, op.rows, op.cols);
    let backend = g.backend.clone();
    if g.requires_grad(op.x) {
        let dx = match &backend {
            Backend::Cpu => Storage::Cpu(Arc::new(cpu::prepend_row_grad_rest(
                grad.cpu(),
                n,
                rows,
                cols,
            ))),
            Backend::Gpu(gpu) => run(
                gpu,
                "prepend_row_grad_rest",
                Params::rows(n, rows, cols, n * rows * cols),
                grad,
                None,
            ),
        };
        g.accumulate(op.x, dx);
    }
    if g.requires_grad(op.row) {
        let drow = match &backend {
            Backend::Cpu => Storage::Cpu(Arc::new(cpu::prepend_row_grad_row(
                grad.cpu(),
                n,
                rows,
                cols,
            ))),
            Backend::Gpu(gpu) => run(
                gpu,
                "prepend_row_grad_row",
                Params::rows(n, rows, cols, cols),
                grad,
                None,
            ),
        };
        g.accumulate(op.row, drow);
    }
}

/// Plain-Rust references.
pub mod cpu {
    use super::PatchDims;

    /// Index into images [N, C, H, W] of value `k` of patch `l` of image `n`.
    fn image_index(d: PatchDims, n: usize, l: usize, k: usize) -> usize {
        let p = d.patch;
        let grid_w = d.width / p;
        let (channel, dy, dx) = (k / (p * p), (k / p) % p, k % p);
        let (y, x) = ((l / grid_w) * p + dy, (l % grid_w) * p + dx);
        ((n * d.channels + channel) * d.height + y) * d.width + x
    }

    pub fn patchify(images: &[f32], d: PatchDims) -> Vec<f32> {
        let (patches, patch_len) = (d.patches(), d.patch_len());
        let mut out = vec![0.0; images.len()];
        for n in 0..d.images {
            for l in 0..patches {
                for k in 0..patch_len {
                    out[(n * patches + l) * patch_len + k] = images[image_index(d, n, l, k)];
                }
            }
        }
        out
    }

    pub fn unpatchify(patches_in: &[f32], d: PatchDims) -> Vec<f32> {
        let (patches, patch_len) = (d.patches(), d.patch_len());
        let mut out = vec![0.0; patches_in.len()];
        for n in 0..d.images {
            for l in 0..patches {
                for k in 0..patch_len {
                    out[image_index(d, n, l, k)] = patches_in[(n * patches + l) * patch_len + k];
                }
            }
        }
        out
    }

    pub fn prepend_row(x: &[f32], row: &[f32], n: usize, rows: usize, cols: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n * (rows + 1) * cols);
        for s in 0..n {
            out.extend_from_slice(row);
            out.extend_from_slice(&x[s * rows * cols..(s + 1) * rows * cols]);
        }
        out
    }

    pub fn prepend_row_grad_rest(grad: &[f32], n: usize, rows: usize, cols: usize) -> Vec<f32> {
        (0..n)
            .flat_map(|s| &grad[(s * (rows + 1) + 1) * cols..(s + 1) * (rows + 1) * cols])
            .copied()
            .collect()
    }

    pub fn prepend_row_grad_row(grad: &[f32], n: usize, rows: usize, cols: usize) -> Vec<f32> {
        (0..cols)
            .map(|c| {
                (0..n)
                    .map(|s| grad[s * (rows + 1) * cols + c] as f64)
                    .sum::<f64>() as f32
            })
            .collect()
    }
}
