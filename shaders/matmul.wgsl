// Batched matrix multiply C[b] = op(A[b]) · op(B[b]) (+ bias) (+ C[b]), op = optional transpose.
// A is [M, K] (or [K, M] when transposed), B is [K, N] (or [N, K]), C is [M, N], row-major.
//
// Each invocation keeps a TILE × TILE block of C in registers (16 mat4x4 blocks); there is no
// workgroup memory. Lavapipe runs a workgroup as SIMD over invocations and turns every storage
// load into a per-invocation scalar loop, so loads, not FMAs, bound the speed: a big register
// tile and vec4 loads along contiguous memory minimise loads per FMA (see benches/matmul.rs).
//
// Entry points: `matmul_nn`, `_nt`, `_tn`, `_tt` (n = stored as written, t = transposed) read
// vec4s and need the vec4 axis of each operand to be a multiple of 4 (K for row-major A and
// transposed B, M for transposed A, N for row-major B); `matmul_strided` reads scalars and
// takes any shape. Rows and columns past the edge of C read clamped (valid) elements and are
// never stored, so no shape needs padding and the inner loops have no guards. `_tn` reads whole
// cache lines per k step and is the fastest, so large products in other layouts run as
// `transpose_copy` + `_tn` (src/ops/matmul.rs decides). Every product entry point has a `_bias`
// twin that adds a bias row: a kernel binds only the buffers it reads.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    a_batch_stride: u32,
    b_batch_stride: u32,
    c_batch_stride: u32,
    // MATMUL_* bits of the prelude (src/gpu/prelude.rs)
    flags: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// The vec4 entry points read A and B through the `*4` views, `matmul_strided` through scalars.
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
// [N], added to every row of C by the `_bias` entry points only: a product without bias binds
// no buffer for it.
@group(0) @binding(4) var<storage, read> bias: array<f32>;

// A SIMD batch of invocations should share its rows (measured: 8×1 beats 4×2 by 1.7×).
const WG_X: u32 = 8u;
const WG_Y: u32 = 1u;
// Rows and columns of C per invocation (fixed: `Tile` below spells out its 4 × 4 blocks).
const TILE: u32 = 16u;

// Block 4g + j holds rows 4g..4g+3 and columns 4j..4j+3 of the invocation's tile; column r of
// the mat4x4 is row 4g + r of C.
alias Tile = array<mat4x4<f32>, 16>;

// One step of k: tile += (A column of 16 rows) ⊗ (B row of 16 columns), as 4 + 4 vec4s.
fn rank1_update(t: ptr<function, Tile>, a0: vec4<f32>, a1: vec4<f32>, a2: vec4<f32>,
                a3: vec4<f32>, b0: vec4<f32>, b1: vec4<f32>, b2: vec4<f32>, b3: vec4<f32>) {
    (*t)[0] = block_update((*t)[0], a0, b0);
    (*t)[1] = block_update((*t)[1], a0, b1);
    (*t)[2] = block_update((*t)[2], a0, b2);
    (*t)[3] = block_update((*t)[3], a0, b3);
    (*t)[4] = block_update((*t)[4], a1, b0);
    (*t)[5] = block_update((*t)[5], a1, b1);
    (*t)[6] = block_update((*t)[6], a1, b2);
    (*t)[7] = block_update((*t)[7], a1, b3);
    (*t)[8] = block_update((*t)[8], a2, b0);
    (*t)[9] = block_update((*t)[9], a2, b1);
    (*t)[10] = block_update((*t)[10], a2, b2);
    (*t)[11] = block_update((*t)[11], a2, b3);
    (*t)[12] = block_update((*t)[12], a3, b0);
    (*t)[13] = block_update((*t)[13], a3, b1);
    (*t)[14] = block_update((*t)[14], a3, b2);
    (*t)[15] = block_update((*t)[15], a3, b3);
}

// `rank1_update` with the 16 columns of B loaded as vec4s at the offsets `at`.
fn rank1_update_b(t: ptr<function, Tile>, a0: vec4<f32>, a1: vec4<f32>, a2: vec4<f32>,
                  a3: vec4<f32>, at: vec4<u32>) {
    rank1_update(t, a0, a1, a2, a3, b4[at.x], b4[at.y], b4[at.z], b4[at.w]);
}

// `rank1_update` with the 16 rows of A loaded as vec4s at the offsets `at`.
fn rank1_update_a(t: ptr<function, Tile>, at: vec4<u32>, b0: vec4<f32>, b1: vec4<f32>,
                  b2: vec4<f32>, b3: vec4<f32>) {
    rank1_update(t, a4[at.x], a4[at.y], a4[at.z], a4[at.w], b0, b1, b2, b3);
}

struct Placement {
    // the invocation's tile origin (row, column) in C
    origin: vec2<u32>,
    batch: u32,
}

// Where the invocation works. Normally a workgroup's lanes sit side by side along N and the
// grid's z is the batch. With MATMUL_LANES_OVER_BATCH (many small products, e.g. attention heads, where
// N < WG_X · TILE would leave lanes idle) the lanes take consecutive batch entries at the same
// tile instead: z counts groups of WG_X batch entries (WG_Y is 1).
fn placement(wid: vec3<u32>, lid: vec3<u32>) -> Placement {
    if (params.flags & MATMUL_LANES_OVER_BATCH) != 0u {
        return Placement(vec2(wid.y * TILE, wid.x * TILE), wid.z * WG_X + lid.x);
    }
    return Placement(vec2((wid.y * WG_Y + lid.y) * TILE, (wid.x * WG_X + lid.x) * TILE), wid.z);
}

// Offsets of 4 consecutive rows (or vec4 groups) from `first`, each clamped to `count - 1`,
// times `stride`, plus `base`: computed once, outside the k loop.
fn clamped4(first: u32, count: u32, stride: u32, base: u32) -> vec4<u32> {
    let last = vec4(count - 1u);
    return min(vec4(first) + vec4(0u, 1u, 2u, 3u), last) * stride + base;
}

// Loads the vec4s at `at + step` (4 rows, 4 consecutive k each) and transposes them: column kk
// holds the 4 rows' values at k = 4·step + kk.
fn load_block_a(at: vec4<u32>, step: u32) -> mat4x4<f32> {
    return transpose(mat4x4(a4[at.x + step], a4[at.y + step], a4[at.z + step], a4[at.w + step]));
}

fn load_block_b(at: vec4<u32>, step: u32) -> mat4x4<f32> {
    return transpose(mat4x4(b4[at.x + step], b4[at.y + step], b4[at.z + step], b4[at.w + step]));
}

// Writes rows `row`..`row + 3` and columns `col`..`col + 3` of C from a tile block (column r of
// `block` is row `row + r`) plus those columns' bias, adding the old C when the flags say so.
fn store_block(block: mat4x4<f32>, c_base: u32, row: u32, col: u32, bias4: vec4<f32>) {
    for (var r = 0u; r < 4u; r++) {
        for (var q = 0u; q < 4u; q++) {
            if row + r < params.m && col + q < params.n {
                var value = block[r][q] + bias4[q];
                let index = c_base + (row + r) * params.n + col + q;
                if (params.flags & MATMUL_ACCUMULATE) != 0u {
                    value += c[index];
                }
                c[index] = value;
            }
        }
    }
}

// Constant block indices keep the tile in registers (a dynamic index would spill it to memory).
fn store_tile(t: ptr<function, Tile>, batch: u32, origin: vec2<u32>, bias16: array<vec4<f32>, 4>) {
    let base = batch * params.c_batch_stride;
    let r = origin.x;
    let col = origin.y;
    store_block((*t)[0], base, r, col, bias16[0]);
    store_block((*t)[1], base, r, col + 4u, bias16[1]);
    store_block((*t)[2], base, r, col + 8u, bias16[2]);
    store_block((*t)[3], base, r, col + 12u, bias16[3]);
    store_block((*t)[4], base, r + 4u, col, bias16[0]);
    store_block((*t)[5], base, r + 4u, col + 4u, bias16[1]);
    store_block((*t)[6], base, r + 4u, col + 8u, bias16[2]);
    store_block((*t)[7], base, r + 4u, col + 12u, bias16[3]);
    store_block((*t)[8], base, r + 8u, col, bias16[0]);
    store_block((*t)[9], base, r + 8u, col + 4u, bias16[1]);
    store_block((*t)[10], base, r + 8u, col + 8u, bias16[2]);
    store_block((*t)[11], base, r + 8u, col + 12u, bias16[3]);
    store_block((*t)[12], base, r + 12u, col, bias16[0]);
    store_block((*t)[13], base, r + 12u, col + 4u, bias16[1]);
    store_block((*t)[14], base, r + 12u, col + 8u, bias16[2]);
    store_block((*t)[15], base, r + 12u, col + 12u, bias16[3]);
}

// The bias of columns `col`..`col + 3` (clamped reads past N: never stored).
fn bias_cols(col: u32) -> vec4<f32> {
    let last = params.n - 1u;
    return vec4(bias[min(col, last)], bias[min(col + 1u, last)], bias[min(col + 2u, last)],
        bias[min(col + 3u, last)]);
}

// The bias of a tile's 16 columns from `col`.
fn bias_tile(col: u32) -> array<vec4<f32>, 4> {
    return array(bias_cols(col), bias_cols(col + 4u), bias_cols(col + 8u), bias_cols(col + 12u));
}

const NO_BIAS: vec4<f32> = vec4(0.0);
const NO_BIAS_TILE: array<vec4<f32>, 4> = array(NO_BIAS, NO_BIAS, NO_BIAS, NO_BIAS);

// A [M, K], B [K, N].
fn product_nn(t: ptr<function, Tile>, place: Placement) {
    let origin = place.origin;
    let batch = place.batch;
    let k4 = params.k / 4u;
    let n4 = params.n / 4u;
    let a_base = batch * params.a_batch_stride / 4u;
    let b_base = batch * params.b_batch_stride / 4u;
    var a_rows: array<vec4<u32>, 4>;
    for (var g = 0u; g < 4u; g++) {
        a_rows[g] = clamped4(origin.x + 4u * g, params.m, k4, a_base);
    }
    let b_cols = clamped4(origin.y / 4u, n4, 1u, b_base);
    var b_row = 0u;
    for (var kq = 0u; kq < k4; kq++) {
        let a0 = load_block_a(a_rows[0], kq);
        let a1 = load_block_a(a_rows[1], kq);
        let a2 = load_block_a(a_rows[2], kq);
        let a3 = load_block_a(a_rows[3], kq);
        rank1_update_b(t, a0[0], a1[0], a2[0], a3[0], b_cols + b_row);
        rank1_update_b(t, a0[1], a1[1], a2[1], a3[1], b_cols + (b_row + n4));
        rank1_update_b(t, a0[2], a1[2], a2[2], a3[2], b_cols + (b_row + 2u * n4));
        rank1_update_b(t, a0[3], a1[3], a2[3], a3[3], b_cols + (b_row + 3u * n4));
        b_row += 4u * n4;
    }
}

// A [M, K], B [N, K].
fn product_nt(t: ptr<function, Tile>, place: Placement) {
    let origin = place.origin;
    let batch = place.batch;
    let k4 = params.k / 4u;
    let a_base = batch * params.a_batch_stride / 4u;
    let b_base = batch * params.b_batch_stride / 4u;
    var a_rows: array<vec4<u32>, 4>;
    var b_rows: array<vec4<u32>, 4>;
    for (var g = 0u; g < 4u; g++) {
        a_rows[g] = clamped4(origin.x + 4u * g, params.m, k4, a_base);
        b_rows[g] = clamped4(origin.y + 4u * g, params.n, k4, b_base);
    }
    for (var kq = 0u; kq < k4; kq++) {
        let a0 = load_block_a(a_rows[0], kq);
        let a1 = load_block_a(a_rows[1], kq);
        let a2 = load_block_a(a_rows[2], kq);
        let a3 = load_block_a(a_rows[3], kq);
        let b0 = load_block_b(b_rows[0], kq);
        let b1 = load_block_b(b_rows[1], kq);
        let b2 = load_block_b(b_rows[2], kq);
        let b3 = load_block_b(b_rows[3], kq);
        rank1_update(t, a0[0], a1[0], a2[0], a3[0], b0[0], b1[0], b2[0], b3[0]);
        rank1_update(t, a0[1], a1[1], a2[1], a3[1], b0[1], b1[1], b2[1], b3[1]);
        rank1_update(t, a0[2], a1[2], a2[2], a3[2], b0[2], b1[2], b2[2], b3[2]);
        rank1_update(t, a0[3], a1[3], a2[3], a3[3], b0[3], b1[3], b2[3], b3[3]);
    }
}

// A [K, M], B [K, N].
fn product_tn(t: ptr<function, Tile>, place: Placement) {
    let origin = place.origin;
    let batch = place.batch;
    let m4 = params.m / 4u;
    let n4 = params.n / 4u;
    let a_cols = clamped4(origin.x / 4u, m4, 1u, batch * params.a_batch_stride / 4u);
    let b_cols = clamped4(origin.y / 4u, n4, 1u, batch * params.b_batch_stride / 4u);
    var a_row = 0u;
    var b_row = 0u;
    for (var kk = 0u; kk < params.k; kk++) {
        let a_at = a_cols + a_row;
        rank1_update_b(t, a4[a_at.x], a4[a_at.y], a4[a_at.z], a4[a_at.w], b_cols + b_row);
        a_row += m4;
        b_row += n4;
    }
}

// A [K, M], B [N, K].
fn product_tt(t: ptr<function, Tile>, place: Placement) {
    let origin = place.origin;
    let batch = place.batch;
    let m4 = params.m / 4u;
    let k4 = params.k / 4u;
    let a_cols = clamped4(origin.x / 4u, m4, 1u, batch * params.a_batch_stride / 4u);
    let b_base = batch * params.b_batch_stride / 4u;
    var b_rows: array<vec4<u32>, 4>;
    for (var g = 0u; g < 4u; g++) {
        b_rows[g] = clamped4(origin.y + 4u * g, params.n, k4, b_base);
    }
    var a_row = 0u;
    for (var kq = 0u; kq < k4; kq++) {
        let b0 = load_block_b(b_rows[0], kq);
        let b1 = load_block_b(b_rows[1], kq);
        let b2 = load_block_b(b_rows[2], kq);
        let b3 = load_block_b(b_rows[3], kq);
        rank1_update_a(t, a_cols + a_row, b0[0], b1[0], b2[0], b3[0]);
        rank1_update_a(t, a_cols + (a_row + m4), b0[1], b1[1], b2[1], b3[1]);
        rank1_update_a(t, a_cols + (a_row + 2u * m4), b0[2], b1[2], b2[2], b3[2]);
        rank1_update_a(t, a_cols + (a_row + 3u * m4), b0[3], b1[3], b2[3], b3[3]);
        a_row += 4u * m4;
    }
}

// Any shape and layout: scalar loads at row·row_stride + k·k_stride (the strides encode the
// transposes), 16 rows × 16 columns per invocation as in the vec4 entry points.
fn product_strided(t: ptr<function, Tile>, place: Placement) {
    let origin = place.origin;
    let batch = place.batch;
    let trans_a = (params.flags & MATMUL_TRANS_A) != 0u;
    let trans_b = (params.flags & MATMUL_TRANS_B) != 0u;
    let a_row_stride = select(params.k, 1u, trans_a);
    let a_k_stride = select(1u, params.m, trans_a);
    let b_col_stride = select(1u, params.k, trans_b);
    let b_k_stride = select(params.n, 1u, trans_b);
    let a_base = batch * params.a_batch_stride;
    let b_base = batch * params.b_batch_stride;
    var a_rows: array<vec4<u32>, 4>;
    var b_cols: array<vec4<u32>, 4>;
    for (var g = 0u; g < 4u; g++) {
        a_rows[g] = clamped4(origin.x + 4u * g, params.m, a_row_stride, a_base);
        b_cols[g] = clamped4(origin.y + 4u * g, params.n, b_col_stride, b_base);
    }
    var a_k = 0u;
    var b_k = 0u;
    for (var kk = 0u; kk < params.k; kk++) {
        var av: array<vec4<f32>, 4>;
        var bv: array<vec4<f32>, 4>;
        for (var g = 0u; g < 4u; g++) {
            let ar = a_rows[g] + a_k;
            let bc = b_cols[g] + b_k;
            av[g] = vec4(a[ar.x], a[ar.y], a[ar.z], a[ar.w]);
            bv[g] = vec4(b[bc.x], b[bc.y], b[bc.z], b[bc.w]);
        }
        rank1_update(t, av[0], av[1], av[2], av[3], bv[0], bv[1], bv[2], bv[3]);
        a_k += a_k_stride;
        b_k += b_k_stride;
    }
}

// The entry points: each product with and without a bias (the `_bias` twins bind one).
@compute @workgroup_size(WG_X, WG_Y)
fn matmul_nn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let place = placement(wid, lid);
    if place.batch >= params.batch {
        return;
    }
    var t: Tile;
    product_nn(&t, place);
    store_tile(&t, place.batch, place.origin, NO_BIAS_TILE);
}

@compute @workgroup_size(WG_X, WG_Y)
fn matmul_nn_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let place = placement(wid, lid);
    if place.batch >= params.batch {
        return;
    }
    var t: Tile;
    product_nn(&t, place);
    store_tile(&t, place.batch, place.origin, bias_tile(place.origin.y));
}

@compute @workgroup_size(WG_X, WG_Y)
fn matmul_nt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let place = placement(wid, lid);
    if place.batch >= params.batch {
        return;
    }
    var t: Tile;
    product_nt(&t, place);
    store_tile(&t, place.batch, place.origin, NO_BIAS_TILE);
}

@compute @workgroup_size(WG_X, WG_Y)
fn matmul_nt_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let place = placement(wid, lid);
    if place.batch >= params.batch {
        return;
    }
    var t: Tile;
    product_nt(&t, place);
    store_tile(&t, place.batch, place.origin, bias_tile(place.origin.y));
}

@compute @workgroup_size(WG_X, WG_Y)
fn matmul_tn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let place = placement(wid, lid);
    if place.batch >= params.batch {
        return;
    }
    var t: Tile;
    product_tn(&t, place);
    store_tile(&t, place.batch, place.origin, NO_BIAS_TILE);
}

@compute @workgroup_size(WG_X, WG_Y)
fn matmul_tn_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let place = placement(wid, lid);
    if place.batch >= params.batch {
        return;
    }
    var t: Tile;
    product_tn(&t, place);
    store_tile(&t, place.batch, place.origin, bias_tile(place.origin.y));
}

@compute @workgroup_size(WG_X, WG_Y)
fn matmul_tt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let place = placement(wid, lid);
    if place.batch >= params.batch {
        return;
    }
    var t: Tile;
    product_tt(&t, place);
    store_tile(&t, place.batch, place.origin, NO_BIAS_TILE);
}

@compute @workgroup_size(WG_X, WG_Y)
fn matmul_tt_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let place = placement(wid, lid);
    if place.batch >= params.batch {
        return;
    }
    var t: Tile;
    product_tt(&t, place);
    store_tile(&t, place.batch, place.origin, bias_tile(place.origin.y));
}

@compute @workgroup_size(WG_X, WG_Y)
fn matmul_strided(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let place = placement(wid, lid);
    if place.batch >= params.batch {
        return;
    }
    var t: Tile;
    product_strided(&t, place);
    store_tile(&t, place.batch, place.origin, NO_BIAS_TILE);
}

@compute @workgroup_size(WG_X, WG_Y)
fn matmul_strided_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let place = placement(wid, lid);
    if place.batch >= params.batch {
        return;
    }
    var t: Tile;
    product_strided(&t, place);
    store_tile(&t, place.batch, place.origin, bias_tile(place.origin.y));
}

// C[b] = A[b]ᵀ for A [M, K] (M = params.m rows, K = params.k columns): lets the fast `_tn`
// kernel serve the other layouts of large products. Each invocation moves a 4 × 4 block.
@compute @workgroup_size(WG_X, WG_Y)
fn transpose_copy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = 4u * (wid.y * WG_Y + lid.y);
    let col0 = 4u * (wid.x * WG_X + lid.x);
    let a_base = wid.z * params.a_batch_stride;
    let c_base = wid.z * params.c_batch_stride;
    for (var r = 0u; r < 4u; r++) {
        for (var q = 0u; q < 4u; q++) {
            let row = row0 + r;
            let col = col0 + q;
            if row < params.m && col < params.k {
                c[c_base + col * params.m + row] = a[a_base + row * params.k + col];
            }
        }
    }
}

// ---- Discrete and integrated GPUs ----------------------------------------------------------
// `matmul_tiled`: the classic workgroup-memory kernel for hardware GPUs, where the entry points
// above would leave most of a warp idle (8 invocations per workgroup) and spill their 256-float
// tiles. 16 × 16 invocations compute a 64 × 64 block of C, 4 × 4 each, staging 64 × 16 of A and
// 16 × 64 of B per k step in workgroup memory (8 KiB); loads follow the contiguous axis of each
// layout, so any transpose flags work without copies. Lavapipe runs it too (slowly: barriers),
// which is how the tests check it; src/ops/matmul.rs picks it for non-CPU adapters.
// Rows and columns of C per workgroup (16 invocations x 4 each way).
const TILED_MN: u32 = 64u;
const TILED_K: u32 = 16u;

var<workgroup> a_stage: array<f32, 1024>;
var<workgroup> b_stage: array<f32, 1024>;

struct StageSlot {
    // position in the [TILED_K][TILED_MN] stage
    slot: u32,
    // element of the operand's buffer
    index: u32,
    // inside the operand (else the stage holds 0)
    valid: bool,
}

// Value e (0..1024) of one k step's stage of an operand with `outer` rows or columns (M for A,
// N for B) from `outer0` and k from `k0`. `k_major`: stored [K, outer] (A transposed, B as is),
// else [outer, K]. Neighbouring e follow the stored layout's contiguous axis.
fn stage_slot(e: u32, outer0: u32, outer: u32, k0: u32, k_major: bool, base: u32) -> StageSlot {
    var o: u32;
    var kk: u32;
    if k_major {
        o = e % TILED_MN;
        kk = e / TILED_MN;
    } else {
        kk = e % TILED_K;
        o = e / TILED_K;
    }
    let go = outer0 + o;
    let gk = k0 + kk;
    let index = select(base + go * params.k + gk, base + gk * outer + go, k_major);
    return StageSlot(kk * TILED_MN + o, index, go < outer && gk < params.k);
}

// The invocation's 4 × 4 block of C (column r is row r of the block, as `store_block` expects).
fn product_tiled(wid: vec3<u32>, lid: vec3<u32>, lane: u32) -> mat4x4<f32> {
    let batch = wid.z;
    let row0 = wid.y * TILED_MN;
    let col0 = wid.x * TILED_MN;
    let trans_a = (params.flags & MATMUL_TRANS_A) != 0u;
    let trans_b = (params.flags & MATMUL_TRANS_B) != 0u;
    let a_base = batch * params.a_batch_stride;
    let b_base = batch * params.b_batch_stride;
    var acc0 = vec4(0.0);
    var acc1 = vec4(0.0);
    var acc2 = vec4(0.0);
    var acc3 = vec4(0.0);
    for (var k0 = 0u; k0 < params.k; k0 += TILED_K) {
        // 1024 values of each operand, 4 per invocation; neighbouring invocations read
        // neighbouring addresses of the stored layout.
        for (var i = 0u; i < 4u; i++) {
            let e = lane + i * 256u;
            let at_a = stage_slot(e, row0, params.m, k0, trans_a, a_base);
            var v = 0.0;
            if at_a.valid {
                v = a[at_a.index];
            }
            a_stage[at_a.slot] = v;
            let at_b = stage_slot(e, col0, params.n, k0, !trans_b, b_base);
            var w = 0.0;
            if at_b.valid {
                w = b[at_b.index];
            }
            b_stage[at_b.slot] = w;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILED_K; kk++) {
            let ar = kk * TILED_MN + lid.y * 4u;
            let bc = kk * TILED_MN + lid.x * 4u;
            let av = vec4(a_stage[ar], a_stage[ar + 1u], a_stage[ar + 2u], a_stage[ar + 3u]);
            let bv = vec4(b_stage[bc], b_stage[bc + 1u], b_stage[bc + 2u], b_stage[bc + 3u]);
            acc0 = fma(vec4(av.x), bv, acc0);
            acc1 = fma(vec4(av.y), bv, acc1);
            acc2 = fma(vec4(av.z), bv, acc2);
            acc3 = fma(vec4(av.w), bv, acc3);
        }
        workgroupBarrier();
    }
    return mat4x4(acc0, acc1, acc2, acc3);
}

@compute @workgroup_size(16, 16)
fn matmul_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let block = product_tiled(wid, lid, lane);
    let col = wid.x * TILED_MN + lid.x * 4u;
    store_block(block, wid.z * params.c_batch_stride, wid.y * TILED_MN + lid.y * 4u, col, NO_BIAS);
}

@compute @workgroup_size(16, 16)
fn matmul_tiled_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let block = product_tiled(wid, lid, lane);
    let col = wid.x * TILED_MN + lid.x * 4u;
    store_block(block, wid.z * params.c_batch_stride, wid.y * TILED_MN + lid.y * 4u, col,
        bias_cols(col));
}
