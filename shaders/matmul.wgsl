// Batched matrix multiply C[b] = op(A[b]) · op(B[b]) (+ bias), op = optional transpose.
// A is [M, K] (or [K, M] when transposed), B is [K, N] (or [N, K]), C is [M, N], row-major.
// Each invocation computes a TILE_M × TILE_N block of C in registers; no workgroup memory
// (on lavapipe, register blocking beats workgroup-memory tiling; see benches/matmul.rs).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    a_batch_stride: u32,
    b_batch_stride: u32,
    c_batch_stride: u32,
    // bit 0: A transposed, bit 1: B transposed, bit 2: add bias, bit 3: accumulate into C
    flags: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

const WG_X: u32 = 16u;
const WG_Y: u32 = 16u;
const TILE_M: u32 = 4u;
const TILE_N: u32 = 4u;

fn load_a(base: u32, row: u32, kk: u32) -> f32 {
    if (params.flags & 1u) != 0u {
        return a[base + kk * params.m + row];
    }
    return a[base + row * params.k + kk];
}

fn load_b(base: u32, kk: u32, col: u32) -> f32 {
    if (params.flags & 2u) != 0u {
        return b[base + col * params.k + kk];
    }
    return b[base + kk * params.n + col];
}

@compute @workgroup_size(WG_X, WG_Y)
fn matmul(@builtin(global_invocation_id) gid: vec3<u32>) {
    let batch = gid.z;
    let row0 = gid.y * TILE_M;
    let col0 = gid.x * TILE_N;
    if batch >= params.batch || row0 >= params.m || col0 >= params.n {
        return;
    }
    let a_base = batch * params.a_batch_stride;
    let b_base = batch * params.b_batch_stride;
    let c_base = batch * params.c_batch_stride;
    // Out-of-range rows/columns read a clamped (valid) element and are never stored.
    var rows: array<u32, TILE_M>;
    var cols: array<u32, TILE_N>;
    for (var i = 0u; i < TILE_M; i++) {
        rows[i] = min(row0 + i, params.m - 1u);
    }
    for (var j = 0u; j < TILE_N; j++) {
        cols[j] = min(col0 + j, params.n - 1u);
    }
    var acc: array<array<f32, TILE_N>, TILE_M>;
    for (var kk = 0u; kk < params.k; kk++) {
        var av: array<f32, TILE_M>;
        var bv: array<f32, TILE_N>;
        for (var i = 0u; i < TILE_M; i++) {
            av[i] = load_a(a_base, rows[i], kk);
        }
        for (var j = 0u; j < TILE_N; j++) {
            bv[j] = load_b(b_base, kk, cols[j]);
        }
        for (var i = 0u; i < TILE_M; i++) {
            for (var j = 0u; j < TILE_N; j++) {
                acc[i][j] = fma(av[i], bv[j], acc[i][j]);
            }
        }
    }
    for (var i = 0u; i < TILE_M; i++) {
        let row = row0 + i;
        if row >= params.m {
            break;
        }
        for (var j = 0u; j < TILE_N; j++) {
            let col = col0 + j;
            if col >= params.n {
                break;
            }
            var value = acc[i][j];
            if (params.flags & 4u) != 0u {
                value += bias[col];
            }
            let index = c_base + row * params.n + col;
            if (params.flags & 8u) != 0u {
                value += c[index];
            }
            c[index] = value;
        }
    }
}
