//! Matrix multiply, batched over leading dimensions, either operand transposed, optional bias.
//! Shaders: `shaders/matmul.wgsl`, and `shaders/matmul_subgroup.wgsl` on CPU drivers with
//! subgroups (lavapipe).

use std::sync::Arc;

use crate::gpu::prelude::matmul_flags;
use crate::gpu::{Gpu, Kernel};
use crate::graph::{Backend, Graph, Op, OpResult, Storage, Tensor, shape_error};

/// Sizes of one (batched) product C = op(A) · op(B) (+ bias), row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulDims {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// A stored as [K, M] instead of [M, K].
    pub trans_a: bool,
    /// B stored as [N, K] instead of [K, N].
    pub trans_b: bool,
    /// One B for every batch entry (stride 0).
    pub shared_b: bool,
}

impl MatmulDims {
    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.m * self.n * self.k) as f64
    }
}

/// What the tape keeps of a matmul.
#[derive(Clone, Debug)]
pub struct MatmulOp {
    pub a: Tensor,
    pub b: Tensor,
    pub bias: Option<Tensor>,
    pub dims: MatmulDims,
}

impl Graph {
    /// `a · b` over the last two dimensions (leading dimensions are a batch).
    pub fn matmul(&mut self, a: Tensor, b: Tensor) -> OpResult {
        self.matmul_ext(a, b, false, false, None)
    }

    /// A linear layer as in PyTorch: `x · weightᵀ + bias`, weight [out, in], x [..., in].
    pub fn linear(&mut self, x: Tensor, weight: Tensor, bias: Option<Tensor>) -> OpResult {
        self.matmul_ext(x, weight, false, true, bias)
    }

    /// `op(a) · op(b) (+ bias)` where `op` transposes the last two dimensions when asked.
    /// A 2-D `b` is shared by every batch entry of `a`; otherwise the batch dimensions must match.
    pub fn matmul_ext(
        &mut self,
        a: Tensor,
        b: Tensor,
        trans_a: bool,
        trans_b: bool,
        bias: Option<Tensor>,
    ) -> OpResult {
        let (sa, sb) = (self.shape(a).to_vec(), self.shape(b).to_vec());
        let err = |why: &str| {
            shape_error(
                "matmul",
                format!(
                    "a {sa:?}{} and b {sb:?}{}: {why}",
                    if trans_a { "ᵀ" } else { "" },
                    if trans_b { "ᵀ" } else { "" }
                ),
            )
        };
        if sa.len() < 2 || sb.len() < 2 {
            return Err(err("both operands need at least 2 dimensions"));
        }
        let (ra, ca) = (sa[sa.len() - 2], sa[sa.len() - 1]);
        let (rb, cb) = (sb[sb.len() - 2], sb[sb.len() - 1]);
        let (m, k) = if trans_a { (ca, ra) } else { (ra, ca) };
        let (kb, n) = if trans_b { (cb, rb) } else { (rb, cb) };
        if k != kb {
            return Err(err(&format!("inner dimensions {k} and {kb} differ")));
        }
        let batch_a: usize = sa[..sa.len() - 2].iter().product();
        let batch_b: usize = sb[..sb.len() - 2].iter().product();
        let dims = if sb.len() == 2 && !trans_a {
            // A shared B folds A's batch into its rows: one larger product.
            MatmulDims {
                batch: 1,
                m: batch_a * m,
                n,
                k,
                trans_a,
                trans_b,
                shared_b: false,
            }
        } else if sb.len() == 2 && batch_a == 1 {
            MatmulDims {
                batch: 1,
                m,
                n,
                k,
                trans_a,
                trans_b,
                shared_b: false,
            }
        } else if sa[..sa.len() - 2] == sb[..sb.len() - 2] {
            MatmulDims {
                batch: batch_a,
                m,
                n,
                k,
                trans_a,
                trans_b,
                shared_b: false,
            }
        } else if sb.len() == 2 {
            return Err(err("a transposed batched A cannot share a 2-D B"));
        } else {
            return Err(err(&format!(
                "batch dimensions differ ({batch_a} vs {batch_b})"
            )));
        };
        if let Some(bias) = bias
            && self.shape(bias) != [n]
        {
            return Err(err(&format!("bias {:?} should be [{n}]", self.shape(bias))));
        }
        let mut shape = sa[..sa.len() - 2].to_vec();
        shape.extend([m, n]);
        let value = forward(
            &self.backend,
            self.storage(a),
            self.storage(b),
            bias.map(|t| self.storage(t)),
            dims,
        );
        let mut inputs = vec![a, b];
        inputs.extend(bias);
        Ok(self.push_op(
            value,
            shape,
            &inputs,
            Op::Matmul(MatmulOp { a, b, bias, dims }),
        ))
    }
}

/// C = op(A)·op(B) (+ bias) on `backend`.
pub fn forward(
    backend: &Backend,
    a: &Storage,
    b: &Storage,
    bias: Option<&Storage>,
    dims: MatmulDims,
) -> Storage {
    match backend {
        Backend::Cpu => Storage::Cpu(std::sync::Arc::new(cpu::matmul(
            a.cpu(),
            b.cpu(),
            bias.map(|s| s.cpu()),
            dims,
        ))),
        Backend::Gpu(gpu) => {
            let c = gpu.alloc(dims.batch * dims.m * dims.n);
            let c = Storage::Gpu(c);
            dispatch(gpu, a, b, bias, &c, dims, false);
            c
        }
    }
}

crate::kernel_params! {
    pub(crate) struct Params for "matmul" {
        m: u32,
        n: u32,
        k: u32,
        batch: u32,
        a_batch_stride: u32,
        b_batch_stride: u32,
        c_batch_stride: u32,
        flags: u32,
    }
}

impl Params {
    /// Sizes and batch strides of `dims`, no flags.
    fn new(dims: &MatmulDims) -> Params {
        Params {
            m: dims.m as u32,
            n: dims.n as u32,
            k: dims.k as u32,
            batch: dims.batch as u32,
            a_batch_stride: (dims.m * dims.k) as u32,
            b_batch_stride: if dims.shared_b {
                0
            } else {
                (dims.k * dims.n) as u32
            },
            c_batch_stride: (dims.m * dims.n) as u32,
            flags: 0,
        }
    }
}

/// The kernels that compute `dims` on `gpu`'s CPU driver, for reports: a `matmul_subgroup`
/// entry point, else `entry_point` after transposed copies of the operands for large products
/// in a slow layout.
pub fn kernel_plan(gpu: &Gpu, dims: &MatmulDims) -> String {
    if let Some(kernel) = subgroup_kernel(gpu, dims, false) {
        return kernel.name.clone();
    }
    let (transpose_a, transpose_b) = transposes_first(dims);
    let after = MatmulDims {
        trans_a: dims.trans_a || transpose_a,
        trans_b: dims.trans_b && !transpose_b,
        ..*dims
    };
    let copies = match (transpose_a, transpose_b) {
        (true, true) => "transpose A,B + ",
        (true, false) => "transpose A + ",
        (false, true) => "transpose B + ",
        (false, false) => "",
    };
    format!("{copies}{}", entry_point(&after))
}

/// Which entry point of `shaders/matmul.wgsl` computes `dims`: a vec4 kernel when the vec4 axis
/// of each operand (the contiguous one) is a multiple of 4, else the scalar strided kernel.
pub fn entry_point(dims: &MatmulDims) -> &'static str {
    let a_vec_axis = if dims.trans_a { dims.m } else { dims.k };
    let b_vec_axis = if dims.trans_b { dims.k } else { dims.n };
    if !a_vec_axis.is_multiple_of(4) || !b_vec_axis.is_multiple_of(4) {
        return "matmul_strided";
    }
    match (dims.trans_a, dims.trans_b) {
        (false, false) => "matmul_nn",
        (false, true) => "matmul_nt",
        (true, false) => "matmul_tn",
        (true, true) => "matmul_tt",
    }
}

/// Products of at least this many multiply-adds run as `matmul_tn` on transposed copies when
/// their layout is slower: the copies cost O(MK + KN) against O(MNK), and `_tn` reads whole
/// cache lines per step (measured 1.3x `_nn`, 1.5x `_nt` at 1536x768x768 on lavapipe).
const TRANSPOSE_MIN_MACS: usize = 1 << 24;

/// The plan for `dims`: transpose A and/or B first, then run `entry_point` of the result.
fn transposes_first(dims: &MatmulDims) -> (bool, bool) {
    let large = dims.batch * dims.m * dims.n * dims.k >= TRANSPOSE_MIN_MACS;
    // `_tn` reads A and B as vec4s along M and N.
    if !large || !dims.m.is_multiple_of(4) || !dims.n.is_multiple_of(4) {
        return (false, false);
    }
    // Transposing A costs 1/N of the product, B 1/M: not worth it for narrow products such as
    // an attention head's P·V (N = 64: 14.3 GFLOP/s after the copy, 18.9 without, b16 heads).
    (
        !dims.trans_a && dims.n >= TRANSPOSE_MIN_SIDE,
        dims.trans_b && dims.m >= TRANSPOSE_MIN_SIDE,
    )
}

/// Narrowest other side of C for which a transposed copy of an operand pays (see above).
const TRANSPOSE_MIN_SIDE: usize = 128;

/// Whether a workgroup's lanes should take consecutive batch entries instead of neighbouring
/// tiles along N: when N is narrower than a workgroup's row of tiles (attention heads: N = 64
/// or the token count against 8 × 16 columns), the normal placement leaves lanes idle. Picks
/// the placement with more useful lanes (measured 1.9x on 64x64x64 x 192 heads, lavapipe).
fn lanes_over_batch(dims: &MatmulDims, tile: u32, wx: u32, wy: u32) -> bool {
    if wy != 1 || dims.batch < 2 {
        return false;
    }
    let (n, batch) = (dims.n as f64, dims.batch as f64);
    let row = (tile * wx) as f64;
    let normal = n / ((n / row).ceil() * row);
    let tile = tile as f64;
    let over_batch =
        n / ((n / tile).ceil() * tile) * batch / ((batch / wx as f64).ceil() * wx as f64);
    over_batch > normal
}

/// Records `dst[b] = src[b]ᵀ` for `batch` row-major [rows, cols] matrices.
fn transpose(gpu: &Gpu, src: &Storage, batch: usize, rows: usize, cols: usize) -> Storage {
    let dst = Storage::Gpu(gpu.alloc(batch * rows * cols));
    let kernel = gpu.kernel(&crate::shader!("matmul"), "transpose_copy");
    let params = Params {
        m: rows as u32,
        n: 0,
        k: cols as u32,
        batch: batch as u32,
        a_batch_stride: (rows * cols) as u32,
        b_batch_stride: 0,
        c_batch_stride: (rows * cols) as u32,
        flags: 0,
    };
    let [wx, wy, _] = kernel.workgroup_size;
    let groups = [
        (cols as u32).div_ceil(4 * wx),
        (rows as u32).div_ceil(4 * wy),
        batch as u32,
    ];
    gpu.dispatch(
        &kernel,
        &params,
        &[("a", src.gpu()), ("c", dst.gpu())],
        groups,
    );
    dst
}

/// Records the matmul kernel writing (or, with `accumulate`, adding) into `c`: the
/// workgroup-memory kernel on hardware GPUs; on CPU drivers the subgroup kernel where it
/// applies, else the register-tile kernels (after transposed copies where they pay).
pub fn dispatch(
    gpu: &Gpu,
    a: &Storage,
    b: &Storage,
    bias: Option<&Storage>,
    c: &Storage,
    dims: MatmulDims,
    accumulate: bool,
) {
    // One choice site per product (src/gpu/plan.rs), whatever copies it makes first.
    let force = gpu.choice_site();
    dispatch_forced(gpu, a, b, bias, c, dims, accumulate, force);
}

/// [`dispatch`] with the choice site's `force`: 0 picks the fastest form for `dims`; 1 (a
/// dispatch plan whose count changes these dims) neither the subgroup kernel nor transposed
/// copies, whose fit depends on every dim; 2 the strided kernel, which fits any.
#[allow(clippy::too_many_arguments)]
fn dispatch_forced(
    gpu: &Gpu,
    a: &Storage,
    b: &Storage,
    bias: Option<&Storage>,
    c: &Storage,
    dims: MatmulDims,
    accumulate: bool,
    force: u8,
) {
    let tiled = gpu.tiled_matmul();
    if !tiled
        && force == 0
        && let Some(kernel) = subgroup_kernel(gpu, &dims, bias.is_some())
    {
        dispatch_subgroup(gpu, &kernel, a, b, bias, c, &dims, accumulate);
        return;
    }
    let (transpose_a, transpose_b) = if tiled || force > 0 {
        (false, false)
    } else {
        transposes_first(&dims)
    };
    if transpose_a || transpose_b {
        let b_batch = if dims.shared_b { 1 } else { dims.batch };
        let a_t = transpose_a.then(|| transpose(gpu, a, dims.batch, dims.m, dims.k));
        let b_t = transpose_b.then(|| transpose(gpu, b, b_batch, dims.n, dims.k));
        let dims = MatmulDims {
            trans_a: dims.trans_a || transpose_a,
            trans_b: dims.trans_b && !transpose_b,
            ..dims
        };
        let (a, b) = (a_t.as_ref().unwrap_or(a), b_t.as_ref().unwrap_or(b));
        return dispatch_forced(gpu, a, b, bias, c, dims, accumulate, force);
    }
    let product = if tiled {
        "matmul_tiled"
    } else if force >= 2 {
        "matmul_strided"
    } else {
        entry_point(&dims)
    };
    let entry = match bias {
        Some(_) => format!("{product}_bias"),
        None => product.to_string(),
    };
    let kernel = gpu.kernel(&crate::shader!("matmul"), &entry);
    let [wx, wy, _] = kernel.workgroup_size;
    // Rows and columns of C per invocation: 4 in `matmul_tiled`, TILE in the others (as
    // compiled, so a swapped shader file cannot leave the grid behind).
    let tile = if tiled { 4 } else { kernel.constant("TILE") };
    let lanes_over_batch = !tiled && lanes_over_batch(&dims, tile, wx, wy);
    let flag = |on: bool, bit: u32| if on { bit } else { 0 };
    let flags = flag(dims.trans_a, matmul_flags::TRANS_A)
        | flag(dims.trans_b, matmul_flags::TRANS_B)
        | flag(accumulate, matmul_flags::ACCUMULATE)
        | flag(lanes_over_batch, matmul_flags::LANES_OVER_BATCH);
    let params = Params {
        flags,
        ..Params::new(&dims)
    };
    let groups = if lanes_over_batch {
        [
            (dims.n as u32).div_ceil(tile),
            (dims.m as u32).div_ceil(tile),
            (dims.batch as u32).div_ceil(wx),
        ]
    } else {
        [
            (dims.n as u32).div_ceil(tile * wx),
            (dims.m as u32).div_ceil(tile * wy),
            dims.batch as u32,
        ]
    };
    let mut buffers = vec![("a", a.gpu()), ("b", b.gpu()), ("c", c.gpu())];
    buffers.extend(bias.map(|bias| ("bias", bias.gpu())));
    gpu.dispatch(&kernel, &params, &buffers, groups);
}

/// The `matmul_subgroup` entry point that computes `dims` (with a bias or not), where it
/// applies: a device whose subgroups are as wide as the shader's workgroup (lavapipe), N and
/// the vec4 axis of each operand multiples of 4, K too unless A is [K, M] and B [K, N], and C at
/// least one workgroup's columns wide.
/// It reads every layout in place (no transposed copies) and runs 2.0x `matmul_tn` at 1024³
/// on lavapipe (measurements in the shader).
fn subgroup_kernel(gpu: &Gpu, dims: &MatmulDims, bias: bool) -> Option<Arc<Kernel>> {
    let subgroup = gpu.fixed_subgroup_size()?;
    let vec4_kernel = entry_point(dims) != "matmul_strided";
    // Any K where both operands run along it row by row (A [K, M], B [K, N]: the weight
    // gradients, whose K = tokens changes with a dispatch plan's count); the shader reads a
    // last partial step of 4 as zeros.
    let any_k = dims.trans_a && !dims.trans_b;
    if !vec4_kernel || !(any_k || dims.k.is_multiple_of(4)) || !dims.n.is_multiple_of(4) {
        return None;
    }
    // Ruled in or out from the module's constants: LLVM takes about 20 s to build the
    // pipeline on lavapipe, not to be paid for a product it will not run.
    let shader = crate::shader!("matmul_subgroup");
    let lanes = gpu.shader_constant(&shader, "LANES");
    let wide = dims.n as u32 >= lanes * gpu.shader_constant(&shader, "TILE_N");
    if lanes != subgroup || !wide {
        return None;
    }
    let name = if bias { "matmul_sg_bias" } else { "matmul_sg" };
    Some(gpu.kernel(&shader, name))
}

/// Records `kernel` (from [`subgroup_kernel`]) for `dims`.
#[allow(clippy::too_many_arguments)]
fn dispatch_subgroup(
    gpu: &Gpu,
    kernel: &Kernel,
    a: &Storage,
    b: &Storage,
    bias: Option<&Storage>,
    c: &Storage,
    dims: &MatmulDims,
    accumulate: bool,
) {
    let lanes = kernel.workgroup_size[0];
    let (tile_m, tile_n) = (kernel.constant("TILE_M"), kernel.constant("TILE_N"));
    let flag = |on: bool, bit: u32| if on { bit } else { 0 };
    let params = Params {
        flags: flag(dims.trans_a, matmul_flags::TRANS_A)
            | flag(dims.trans_b, matmul_flags::TRANS_B)
            | flag(accumulate, matmul_flags::ACCUMULATE),
        ..Params::new(dims)
    };
    let groups = [
        (dims.n as u32).div_ceil(lanes * tile_n),
        (dims.m as u32).div_ceil(tile_m),
        dims.batch as u32,
    ];
    let mut buffers = vec![("a4", a.gpu()), ("b4", b.gpu()), ("c4", c.gpu())];
    buffers.extend(bias.map(|bias| ("bias", bias.gpu())));
    gpu.dispatch(kernel, &params, &buffers, groups);
}

/// Gradients of A, B and the bias from dC (see the derivation in each branch).
pub fn backward(g: &mut Graph, op: &MatmulOp, grad: &Storage) {
    let MatmulDims {
        batch,
        m,
        n,
        k,
        trans_a,
        trans_b,
        shared_b,
    } = op.dims;
    let backend = g.backend.clone();
    if g.requires_grad(op.a) {
        let b = g.storage(op.b).clone();
        let da = if !trans_a {
            // dA = dC · op(B)ᵀ
            forward(
                &backend,
                grad,
                &b,
                None,
                MatmulDims {
                    batch,
                    m,
                    n: k,
                    k: n,
                    trans_a: false,
                    trans_b: !trans_b,
                    shared_b,
                },
            )
        } else {
            // dAᵀ-stored [K, M] = op(B) · dCᵀ
            forward(
                &backend,
                &b,
                grad,
                None,
                MatmulDims {
                    batch,
                    m: k,
                    n: m,
                    k: n,
                    trans_a: trans_b,
                    trans_b: true,
                    shared_b: false,
                },
            )
        };
        g.accumulate(op.a, da);
    }
    if g.requires_grad(op.b) {
        let a = g.storage(op.a).clone();
        let db = if !trans_b {
            // dB = op(A)ᵀ · dC
            forward(
                &backend,
                &a,
                grad,
                None,
                MatmulDims {
                    batch,
                    m: k,
                    n,
                    k: m,
                    trans_a: !trans_a,
                    trans_b: false,
                    shared_b: false,
                },
            )
        } else {
            // dB stored [N, K] = dCᵀ · op(A)
            forward(
                &backend,
                grad,
                &a,
                None,
                MatmulDims {
                    batch,
                    m: n,
                    n: k,
                    k: m,
                    trans_a: true,
                    trans_b: trans_a,
                    shared_b: false,
                },
            )
        };
        g.accumulate(op.b, db);
    }
    if let Some(bias) = op.bias
        && g.requires_grad(bias)
    {
        let dbias = crate::ops::elementwise::sum_rows(&backend, grad, batch * m, n);
        g.accumulate(bias, dbias);
    }
}

/// Plain-Rust reference.
pub mod cpu {
    use super::MatmulDims;

    /// C = op(A)·op(B) (+ bias), f64 accumulation.
    pub fn matmul(a: &[f32], b: &[f32], bias: Option<&[f32]>, d: MatmulDims) -> Vec<f32> {
        let mut c = vec![0f32; d.batch * d.m * d.n];
        for bi in 0..d.batch {
            let a = &a[bi * d.m * d.k..];
            let b = if d.shared_b { b } else { &b[bi * d.k * d.n..] };
            let c = &mut c[bi * d.m * d.n..(bi + 1) * d.m * d.n];
            for i in 0..d.m {
                for j in 0..d.n {
                    let mut acc = 0f64;
                    for kk in 0..d.k {
                        let x = if d.trans_a {
                            a[kk * d.m + i]
                        } else {
                            a[i * d.k + kk]
                        };
                        let y = if d.trans_b {
                            b[j * d.k + kk]
                        } else {
                            b[kk * d.n + j]
                        };
                        acc += x as f64 * y as f64;
                    }
                    c[i * d.n + j] = (acc + bias.map_or(0.0, |bias| bias[j] as f64)) as f32;
                }
            }
        }
        c
    }
}
