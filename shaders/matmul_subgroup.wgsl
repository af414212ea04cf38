// Batched matrix multiply C[b] = op(A[b]) · op(B[b]) (+ bias) (+ C[b]) for CPU drivers with
// subgroups (lavapipe), the same product and Params as `shaders/matmul.wgsl`.
//
// Lavapipe runs a subgroup's 8 lanes as one SIMD vector and turns every storage load into a
// loop over the lanes, even where all lanes read one address (Mesa 22.3), so a float loaded
// costs tens of instructions where an FMA for all 8 lanes costs one. So nothing is loaded
// twice: the workgroup (one subgroup) owns TILE_M rows of C, each lane loads 8 of those rows
// of A for 4 steps of k and `subgroupBroadcast` (an extract and a splat) hands them to every
// lane; each lane loads only its own TILE_N columns of B. Per 4 k steps a lane does 8 + 8
// vec4 loads for 4 · 64 · 8 multiply-adds, against 16 + 16 for 4 · 16 · 16 in `matmul.wgsl`.
// The tile (512 floats a lane) lives in memory, so each accumulator takes 4 steps of k in a
// row (`block_update4`) and is loaded and stored once per 4.
//
// Measured on lavapipe (2-core Xeon VM, shared), GFLOP/s at 1024³, medians of 3-4 runs
// interleaved with today's `matmul.wgsl` (`matmul_tn`; NN = transpose_copy + `matmul_tn`):
//   kernel (rows x columns a workgroup x lane, order of the k updates)   TN (ratio)  NN (ratio)
//   matmul.wgsl, no subgroups (16 x 16 per lane, lanes share A rows)     3.42 (1)    3.34 (1)
//   subgroup 32 x 16, one k step at a time over the whole tile           4.29 (1.21)   -
//   subgroup 32 x 16, 4 steps per accumulator                            5.79 (1.69) 6.74 (2.02)
//   subgroup 32 x 16, 8 steps per accumulator (needs K % 8)              6.18 (1.80) 6.41 (1.92)
//   subgroup 32 x 8, 4 steps per accumulator                             5.80 (1.63)   -
//   subgroup 64 x 8, one k step at a time                                4.84 (1.36)   -
//   subgroup 64 x 8, 4 steps per accumulator (this file)                 6.86 (2.00) 6.97 (2.09)
//   subgroup 64 x 16, 4 steps: LLVM takes over a minute per entry point; not timed.
// This file against the old binary in other layouts (medians of 2): NT 2.92 -> 7.08 (2.43x),
// TT 3.05 -> 7.34 (2.40x), 48 products of 64³ (attention heads) 2.86 -> 5.21 (1.82x).
// Same-address loads do not help on this driver: matmul_tn with A read at constant offsets
// (wrong product, timing only) ran 1.63x, as fast as with A at a per-k address shared by the
// lanes: no load-and-broadcast path fires, A's loads are simply gone.
// Commands: CLUSTERCLIP_SHADER_DIR=<variant dir> clusterclip bench matmul --m 1024 --n 1024
// --k 1024 [--trans-a] --repeats 3, variants and the old binary alternated A B A B.
// A whole step, `clusterclip bench step --preset tiny --batch-size 64 --mask none --repeats 3`,
// binaries alternated: 24.24, 24.18 s/step before, 13.97, 13.60 s/step with this file (1.75x).
// Cost: LLVM compiles an entry point in about 20 s cold (matmul_tn: 10 s), once per Mesa
// shader cache; so the layout is a flag (a uniform branch per 4 steps of k, no measurable cost),
// not an entry point per layout (eight of them took about 4 minutes on a fresh machine).

// Entry points `matmul_sg` and `matmul_sg_bias` need N and the vec4 axis of each operand to be
// multiples of 4, and K too unless A is [K, M] and B [K, N] (src/ops/matmul.rs checks; other
// shapes go to `matmul.wgsl`). Every layout is read in place: no transposed copies. Rows and columns past
// the edge of C read clamped (valid) elements and are never stored.

// naga 30 parses subgroup builtins without `enable subgroups;` (which it refuses as not yet
// supported); wgpu checks the device feature when it builds the module.

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
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;
// C four columns at a time (N a multiple of 4).
@group(0) @binding(3) var<storage, read_write> c4: array<vec4<f32>>;
// [N], added to every row of C by the `_bias` entry points only.
@group(0) @binding(4) var<storage, read> bias: array<f32>;

// One workgroup is one subgroup: src/ops/matmul.rs runs these kernels only where subgroups
// have exactly LANES lanes.
const LANES: u32 = 8u;
// Rows of C per workgroup (8 per lane, broadcast to all) and columns per lane.
const TILE_M: u32 = 64u;
const TILE_N: u32 = 8u;

// Block 2G + j holds rows 4G..4G+3 and columns 4j..4j+3 of the lane's tile; column r of the
// mat4x4 is row 4G + r of C.
alias Tile = array<mat4x4<f32>, 32>;
// Four steps of k (column kk is step kk) of this lane's 8 rows of A, of its 8 columns of B.
alias MineA = array<mat4x4<f32>, 2>;
alias ColsB = array<mat4x4<f32>, 2>;
alias Bias = array<vec4<f32>, 2>;

// Four steps of k on one block: each accumulator takes all 4 in a row, so a tile too big for
// registers is loaded and stored once per 4 steps of k instead of once per step.
fn block_update4(acc: mat4x4<f32>, rows: mat4x4<f32>, cols: mat4x4<f32>) -> mat4x4<f32> {
    return block_update(block_update(block_update(block_update(acc, rows[0], cols[0]), rows[1],
        cols[1]), rows[2], cols[2]), rows[3], cols[3]);
}

// Row group g (constant after inlining: a dynamic index would spill the tile to memory);
// column kk of `rows` holds its 4 rows at step kk.
fn group_update4(t: ptr<function, Tile>, g: u32, rows: mat4x4<f32>, cols: ColsB) {
    (*t)[2u * g] = block_update4((*t)[2u * g], rows, cols[0]);
    (*t)[2u * g + 1u] = block_update4((*t)[2u * g + 1u], rows, cols[1]);
}

// Four steps of k: lane l's `m[h]` (its rows 8l + 4h.. at 4 steps of k) becomes row group
// 2l + h of every lane's tile. `subgroupBroadcast` takes a constant lane: spelled out.
fn rank4_update(t: ptr<function, Tile>, m: MineA, cols: ColsB) {
    group_update4(t, 0u, mat4x4(subgroupBroadcast(m[0][0], 0u), subgroupBroadcast(m[0][1], 0u),
        subgroupBroadcast(m[0][2], 0u), subgroupBroadcast(m[0][3], 0u)), cols);
    group_update4(t, 1u, mat4x4(subgroupBroadcast(m[1][0], 0u), subgroupBroadcast(m[1][1], 0u),
        subgroupBroadcast(m[1][2], 0u), subgroupBroadcast(m[1][3], 0u)), cols);
    group_update4(t, 2u, mat4x4(subgroupBroadcast(m[0][0], 1u), subgroupBroadcast(m[0][1], 1u),
        subgroupBroadcast(m[0][2], 1u), subgroupBroadcast(m[0][3], 1u)), cols);
    group_update4(t, 3u, mat4x4(subgroupBroadcast(m[1][0], 1u), subgroupBroadcast(m[1][1], 1u),
        subgroupBroadcast(m[1][2], 1u), subgroupBroadcast(m[1][3], 1u)), cols);
    group_update4(t, 4u, mat4x4(subgroupBroadcast(m[0][0], 2u), subgroupBroadcast(m[0][1], 2u),
        subgroupBroadcast(m[0][2], 2u), subgroupBroadcast(m[0][3], 2u)), cols);
    group_update4(t, 5u, mat4x4(subgroupBroadcast(m[1][0], 2u), subgroupBroadcast(m[1][1], 2u),
        subgroupBroadcast(m[1][2], 2u), subgroupBroadcast(m[1][3], 2u)), cols);
    group_update4(t, 6u, mat4x4(subgroupBroadcast(m[0][0], 3u), subgroupBroadcast(m[0][1], 3u),
        subgroupBroadcast(m[0][2], 3u), subgroupBroadcast(m[0][3], 3u)), cols);
    group_update4(t, 7u, mat4x4(subgroupBroadcast(m[1][0], 3u), subgroupBroadcast(m[1][1], 3u),
        subgroupBroadcast(m[1][2], 3u), subgroupBroadcast(m[1][3], 3u)), cols);
    group_update4(t, 8u, mat4x4(subgroupBroadcast(m[0][0], 4u), subgroupBroadcast(m[0][1], 4u),
        subgroupBroadcast(m[0][2], 4u), subgroupBroadcast(m[0][3], 4u)), cols);
    group_update4(t, 9u, mat4x4(subgroupBroadcast(m[1][0], 4u), subgroupBroadcast(m[1][1], 4u),
        subgroupBroadcast(m[1][2], 4u), subgroupBroadcast(m[1][3], 4u)), cols);
    group_update4(t, 10u, mat4x4(subgroupBroadcast(m[0][0], 5u), subgroupBroadcast(m[0][1], 5u),
        subgroupBroadcast(m[0][2], 5u), subgroupBroadcast(m[0][3], 5u)), cols);
    group_update4(t, 11u, mat4x4(subgroupBroadcast(m[1][0], 5u), subgroupBroadcast(m[1][1], 5u),
        subgroupBroadcast(m[1][2], 5u), subgroupBroadcast(m[1][3], 5u)), cols);
    group_update4(t, 12u, mat4x4(subgroupBroadcast(m[0][0], 6u), subgroupBroadcast(m[0][1], 6u),
        subgroupBroadcast(m[0][2], 6u), subgroupBroadcast(m[0][3], 6u)), cols);
    group_update4(t, 13u, mat4x4(subgroupBroadcast(m[1][0], 6u), subgroupBroadcast(m[1][1], 6u),
        subgroupBroadcast(m[1][2], 6u), subgroupBroadcast(m[1][3], 6u)), cols);
    group_update4(t, 14u, mat4x4(subgroupBroadcast(m[0][0], 7u), subgroupBroadcast(m[0][1], 7u),
        subgroupBroadcast(m[0][2], 7u), subgroupBroadcast(m[0][3], 7u)), cols);
    group_update4(t, 15u, mat4x4(subgroupBroadcast(m[1][0], 7u), subgroupBroadcast(m[1][1], 7u),
        subgroupBroadcast(m[1][2], 7u), subgroupBroadcast(m[1][3], 7u)), cols);
}

// Offsets of 4 consecutive rows (or vec4 groups) from `first`, each clamped to `count - 1`,
// times `stride`, plus `base`: computed once, outside the k loop.
fn clamped4(first: u32, count: u32, stride: u32, base: u32) -> vec4<u32> {
    let last = vec4(count - 1u);
    return min(vec4(first) + vec4(0u, 1u, 2u, 3u), last) * stride + base;
}

// The vec4s at `at + step`, as the columns of a mat4x4.
fn load_a(at: vec4<u32>, step: u32) -> mat4x4<f32> {
    return mat4x4(a4[at.x + step], a4[at.y + step], a4[at.z + step], a4[at.w + step]);
}

fn load_b(at: vec4<u32>, step: u32) -> mat4x4<f32> {
    return mat4x4(b4[at.x + step], b4[at.y + step], b4[at.z + step], b4[at.w + step]);
}

// Column kk (step kk of k) of `m` where `live[kk]`, else zeros.
fn live_steps(m: mat4x4<f32>, live: vec4<bool>) -> mat4x4<f32> {
    return mat4x4(select(vec4(0.0), m[0], live.x), select(vec4(0.0), m[1], live.y),
        select(vec4(0.0), m[2], live.z), select(vec4(0.0), m[3], live.w));
}

// Where the workgroup and lane work: the tile origin (row, column) in C.
fn tile_origin(wid: vec3<u32>, lane: u32) -> vec2<u32> {
    return vec2(wid.y * TILE_M, (wid.x * LANES + lane) * TILE_N);
}

// The k loop, 4 steps of k per pass, for the layout of the flags.
fn product(t: ptr<function, Tile>, origin: vec2<u32>, lane: u32, batch: u32) {
    let trans_a = (params.flags & MATMUL_TRANS_A) != 0u;
    let trans_b = (params.flags & MATMUL_TRANS_B) != 0u;
    let m4 = params.m / 4u;
    let n4 = params.n / 4u;
    let k4 = params.k / 4u;
    let a_base = batch * params.a_batch_stride / 4u;
    let b_base = batch * params.b_batch_stride / 4u;
    let steps = vec4(0u, 1u, 2u, 3u);
    // This lane's rows: 2 groups of 4 from `first_row`. A [M, K]: a vec4 of 4 k steps per
    // row. A [K, M]: a vec4 of the 4 rows per k step.
    let first_row = origin.x + 8u * lane;
    var a_at: array<vec4<u32>, 2>;
    var a_step = 1u;
    for (var h = 0u; h < 2u; h++) {
        if trans_a {
            a_at[h] = vec4(min(first_row / 4u + h, m4 - 1u) + a_base) + steps * m4;
        } else {
            a_at[h] = clamped4(first_row + 4u * h, params.m, k4, a_base);
        }
    }
    if trans_a {
        a_step = 4u * m4;
    }
    // B [K, N]: a vec4 of 4 columns per k step. B [N, K]: a vec4 of 4 k steps per column.
    var b_at: array<vec4<u32>, 2>;
    var b_step = 1u;
    for (var j = 0u; j < 2u; j++) {
        if trans_b {
            b_at[j] = clamped4(origin.y + 4u * j, params.n, k4, b_base);
        } else {
            b_at[j] = vec4(min(origin.y / 4u + j, n4 - 1u) + b_base) + steps * n4;
        }
    }
    if !trans_b {
        b_step = 4u * n4;
    }
    // A [K, M] and B [K, N] take any K: a last pass over fewer than 4 steps (`tail`) reads
    // its missing steps at its first (in range) and counts them as zeros. Every other layout
    // has K a multiple of 4 (src/ops/matmul.rs), so `tail` is 0 there.
    let tail = params.k % 4u;
    let passes = (params.k + 3u) / 4u;
    var a_offset = 0u;
    var b_offset = 0u;
    for (var kq = 0u; kq < passes; kq++) {
        let partial = tail != 0u && kq + 1u == passes;
        let live = steps < vec4(tail);
        var a_now = a_at;
        var b_now = b_at;
        if partial {
            a_now = array(select(vec4(a_at[0].x), a_at[0], live),
                select(vec4(a_at[1].x), a_at[1], live));
            b_now = array(select(vec4(b_at[0].x), b_at[0], live),
                select(vec4(b_at[1].x), b_at[1], live));
        }
        var mine = MineA(load_a(a_now[0], a_offset), load_a(a_now[1], a_offset));
        var cols = ColsB(load_b(b_now[0], b_offset), load_b(b_now[1], b_offset));
        if partial {
            mine = MineA(live_steps(mine[0], live), live_steps(mine[1], live));
            cols = ColsB(live_steps(cols[0], live), live_steps(cols[1], live));
        }
        if !trans_a {
            mine = MineA(transpose(mine[0]), transpose(mine[1]));
        }
        if trans_b {
            cols = ColsB(transpose(cols[0]), transpose(cols[1]));
        }
        rank4_update(t, mine, cols);
        a_offset += a_step;
        b_offset += b_step;
    }
}

// Writes rows `row`..`row + 3` and columns `col`..`col + 3` of C from a tile block (column r of
// `block` is row `row + r`) plus those columns' bias, adding the old C when the flags say so.
// A row's 4 columns are one vec4 store (N is a multiple of 4): a store, like a load, is a loop
// over the lanes on lavapipe. Measured against a store per value (same sitting, medians of 3):
// 1024³ 52.6, 50.5 -> 55.2, 56.0 GFLOP/s; 4160x576x192 Bᵀ 41.3, 43.2 -> 44.3, 45.4; 192
// attention products 68x68x64 Bᵀ 9.1, 9.3 -> 12.1, 12.6 (short k loops: the store weighs more).
fn store_block(block: mat4x4<f32>, c_base: u32, row: u32, col: u32, bias4: vec4<f32>) {
    if col >= params.n {
        return;
    }
    for (var r = 0u; r < 4u; r++) {
        if row + r < params.m {
            var value = block[r] + bias4;
            let index = (c_base + (row + r) * params.n + col) / 4u;
            if (params.flags & MATMUL_ACCUMULATE) != 0u {
                value += c4[index];
            }
            c4[index] = value;
        }
    }
}

// Row group g of the tile (constant after inlining).
fn store_group(t: ptr<function, Tile>, g: u32, base: u32, origin: vec2<u32>, bias: Bias) {
    let row = origin.x + 4u * g;
    store_block((*t)[2u * g], base, row, origin.y + 0u, bias[0]);
    store_block((*t)[2u * g + 1u], base, row, origin.y + 4u, bias[1]);
}

fn store_tile(t: ptr<function, Tile>, batch: u32, origin: vec2<u32>, bias: Bias) {
    let base = batch * params.c_batch_stride;
    store_group(t, 0u, base, origin, bias);
    store_group(t, 1u, base, origin, bias);
    store_group(t, 2u, base, origin, bias);
    store_group(t, 3u, base, origin, bias);
    store_group(t, 4u, base, origin, bias);
    store_group(t, 5u, base, origin, bias);
    store_group(t, 6u, base, origin, bias);
    store_group(t, 7u, base, origin, bias);
    store_group(t, 8u, base, origin, bias);
    store_group(t, 9u, base, origin, bias);
    store_group(t, 10u, base, origin, bias);
    store_group(t, 11u, base, origin, bias);
    store_group(t, 12u, base, origin, bias);
    store_group(t, 13u, base, origin, bias);
    store_group(t, 14u, base, origin, bias);
    store_group(t, 15u, base, origin, bias);
}

// The bias of columns `col`..`col + 3` (clamped reads past N: never stored).
fn bias_cols(col: u32) -> vec4<f32> {
    let last = params.n - 1u;
    return vec4(bias[min(col, last)], bias[min(col + 1u, last)], bias[min(col + 2u, last)],
        bias[min(col + 3u, last)]);
}

// The bias of a lane's 8 columns from `col`.
fn bias_tile(col: u32) -> Bias {
    return Bias(bias_cols(col), bias_cols(col + 4u));
}

const NO_BIAS: Bias = Bias(vec4(0.0), vec4(0.0));

// The entry points: the layout comes from the flags (a uniform branch per 4 steps of k, not a
// compile per layout: LLVM takes about half a minute for each), with and without bias; only
// `matmul_sg_bias` binds a bias buffer.

@compute @workgroup_size(LANES)
fn matmul_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let origin = tile_origin(wid, lid.x);
    var t: Tile;
    product(&t, origin, lid.x, wid.z);
    store_tile(&t, wid.z, origin, NO_BIAS);
}

@compute @workgroup_size(LANES)
fn matmul_sg_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let origin = tile_origin(wid, lid.x);
    var t: Tile;
    product(&t, origin, lid.x, wid.z);
    store_tile(&t, wid.z, origin, bias_tile(origin.y));
}
