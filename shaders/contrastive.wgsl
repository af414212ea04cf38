// Symmetric InfoNCE (M1) on raw similarities S = img · txtᵀ [B, B] with logits t·S, t = exp(logit_scale):
// loss = (Σ_i CE(row i, target i) + Σ_j CE(column j, target j)) / (2n), the sums over the n
// "own" lines first ≤ i, j < first + n: all B in one process; one rank's slice of a global batch
// for OpenCLIP's --local-loss (its images against every caption, its captions against every image).
// A "line" is a row (line < B) or a column (line - B). Per line we keep
// lse = log Σ exp(t·S) and ce = lse − t·S_diag, computed as (max − t·S_diag) + log1p(rest) so
// that a well-aligned batch (loss ≈ 1e-6) keeps its relative precision.

struct Params {
    batch: u32,
    first: u32, // first own line
    count: u32, // own lines (n)
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> sims: array<f32>;
@group(0) @binding(2) var<storage, read> logit_scale: array<f32>;
// [4B]: lse of rows, lse of columns, ce of rows, ce of columns.
@group(0) @binding(3) var<storage, read_write> stats: array<f32>;
@group(0) @binding(4) var<storage, read> upstream: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;

var<workgroup> partial: array<f32, WG>;

fn reduce_max(lane: u32, value: f32) -> f32 {
    partial[lane] = value;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if lane < half {
            partial[lane] = max(partial[lane], partial[lane + half]);
        }
        workgroupBarrier();
    }
    let result = partial[0];
    workgroupBarrier();
    return result;
}

fn reduce_sum(lane: u32, value: f32) -> f32 {
    partial[lane] = value;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if lane < half {
            partial[lane] += partial[lane + half];
        }
        workgroupBarrier();
    }
    let result = partial[0];
    workgroupBarrier();
    return result;
}

// log(1 + x) for x ≥ 0 without losing small x (WGSL has no log1p, and GPU logs near 1 are
// only good to 2^-21 absolute): 2·atanh(z) with z = x / (2 + x) ≤ 1/5 as a series below 1/2.
fn log1p(x: f32) -> f32 {
    if x >= 0.5 {
        return log(1.0 + x);
    }
    let z = x / (2.0 + x);
    let z2 = z * z;
    // z^15/15 < 1e-11 relative to z.
    var series = 1.0 / 15.0;
    for (var k = 13.0; k > 0.0; k -= 2.0) {
        series = fma(series, z2, 1.0 / k);
    }
    return 2.0 * z * series;
}

// exp(x) − 1 for x ≤ 0 without losing small x: a Taylor series where |x| < 1/2.
fn expm1(x: f32) -> f32 {
    if x <= -0.5 {
        return exp(x) - 1.0;
    }
    // x^11/11! < 1e-10 for |x| < 1/2.
    var series = 1.0 / 39916800.0;
    var factorial = 39916800.0;
    for (var k = 11.0; k > 1.0; k -= 1.0) {
        factorial /= k;
        series = fma(series, x, 1.0 / factorial);
    }
    return x * series;
}

// Element k of line `line`.
fn line_element(line: u32, k: u32) -> u32 {
    let b = params.batch;
    if line < b {
        return line * b + k;
    }
    return k * b + (line - b);
}

// One workgroup per line: stats[line] = lse, stats[2B + line] = ce.
@compute @workgroup_size(WG)
fn line_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let line = workgroup_index(wid, nwg);
    let b = params.batch;
    if line >= 2u * b {
        return;
    }
    let t = exp(logit_scale[0]);
    var local_max = -3.402823e38;
    for (var k = lid.x; k < b; k += WG) {
        local_max = max(local_max, t * sims[line_element(line, k)]);
    }
    let line_max = reduce_max(lid.x, local_max);
    // Σ exp(l − max) = 1 + rest, where the elements equal to the max contribute exactly 1 each.
    var rest = 0.0;
    var ties = 0.0;
    for (var k = lid.x; k < b; k += WG) {
        let l = t * sims[line_element(line, k)];
        if l == line_max {
            ties += 1.0;
        } else {
            rest += exp(l - line_max);
        }
    }
    let total_rest = reduce_sum(lid.x, rest) + (reduce_sum(lid.x, ties) - 1.0);
    if lid.x == 0u {
        let log_sum = log1p(total_rest);
        let diag = t * sims[line_element(line, line % b)];
        stats[line] = line_max + log_sum;
        stats[2u * b + line] = (line_max - diag) + log_sum;
    }
}

// Whether row or column `index` is one of the own lines.
fn own(index: u32) -> bool {
    return index - params.first < params.count; // wraps below `first`
}

// One workgroup: out[0] = Σ own ce / (2n).
@compute @workgroup_size(WG)
fn loss(@builtin(local_invocation_id) lid: vec3<u32>) {
    let b = params.batch;
    let n = params.count;
    var acc = 0.0;
    for (var k = lid.x; k < 2u * n; k += WG) {
        // Own rows, then own columns (lines b + first ...).
        acc += stats[2u * b + params.first + k + select(0u, b - n, k >= n)];
    }
    let total = reduce_sum(lid.x, acc);
    if lid.x == 0u {
        out[0] = total / f32(2u * params.count);
    }
}

// Softmax of row i at column j, minus 1 on the diagonal; 0 for a row that is not own.
// On the diagonal P − 1 = exp(−ce) − 1, exact where lse − l would round.
fn row_term(i: u32, j: u32, l: f32) -> f32 {
    if !own(i) {
        return 0.0;
    }
    if i == j {
        return expm1(-stats[2u * params.batch + i]);
    }
    return exp(l - stats[i]);
}

fn col_term(i: u32, j: u32, l: f32) -> f32 {
    if !own(j) {
        return 0.0;
    }
    if i == j {
        return expm1(-stats[3u * params.batch + j]);
    }
    return exp(l - stats[params.batch + j]);
}

// out[i, j] = dLoss/dS[i, j] = g · t · ([i own](P_row[i, j] − δ_ij) + [j own](P_col[i, j] − δ_ij)) / (2n).
@compute @workgroup_size(WG)
fn grad_sims(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = linear_index(wid, nwg, lid, WG);
    let b = params.batch;
    if e >= b * b {
        return;
    }
    let i = e / b;
    let j = e % b;
    let t = exp(logit_scale[0]);
    let l = t * sims[e];
    let coef = upstream[0] * t / f32(2u * params.count);
    out[e] = coef * (row_term(i, j, l) + col_term(i, j, l));
}

// One workgroup: out[0] = dLoss/dlogit_scale
//   = g/(2n) · Σ_ij t·([i own] P_row (S_ij − S_ii) + [j own] P_col (S_ij − S_jj)),
// the same as Σ_ij dLoss/dlogits_ij · logits_ij but with no cancellation against the diagonal.
@compute @workgroup_size(WG)
fn grad_logit_scale(@builtin(local_invocation_id) lid: vec3<u32>) {
    let b = params.batch;
    let t = exp(logit_scale[0]);
    var acc = 0.0;
    for (var e = lid.x; e < b * b; e += WG) {
        let i = e / b;
        let j = e % b;
        if i != j {
            let s = sims[e];
            let l = t * s;
            let row = select(0.0, exp(l - stats[i]) * (s - sims[i * b + i]), own(i));
            let col = select(0.0, exp(l - stats[b + j]) * (s - sims[j * b + j]), own(j));
            acc += row + col;
        }
    }
    let total = reduce_sum(lid.x, acc);
    if lid.x == 0u {
        out[0] = upstream[0] * t * total / f32(2u * params.count);
    }
}
