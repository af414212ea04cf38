// Row gather (embedding lookup, kept-token selection) and its reverse, a row scatter-add.
// Rows are `cols` contiguous values. An index at or past `rows` reads zeros / is skipped.
// The scatter-add needs no float atomics: a CSR of the index list (count with u32 atomics,
// scan, fill) lets one invocation own each (destination row, column) and sum its segment.

struct Params {
    // number of indices
    n: u32,
    // rows of the gathered-from / scattered-into tensor
    rows: u32,
    cols: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
// [rows]: indices per destination row, counted up then back down by the fill.
@group(0) @binding(4) var<storage, read_write> counts: array<atomic<u32>>;
// [rows + 1]: start of each destination row's segment in `order`.
@group(0) @binding(5) var<storage, read_write> offsets: array<u32>;
// [n]: positions of the index list grouped by destination row.
@group(0) @binding(6) var<storage, read_write> order: array<u32>;
// [n]: token rows of the kept patches (`kept_token_rows`).
@group(0) @binding(7) var<storage, read_write> token_rows: array<u32>;
// `src` and `out` four values at a time, for `scatter_distinct_rows4` (cols a multiple of 4;
// callers bind by either name): lavapipe loads and stores with a loop over the SIMD lanes.
@group(0) @binding(2) var<storage, read> src4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out4: array<vec4<f32>>;

const WG: u32 = 256u;

var<workgroup> lane_totals: array<u32, WG>;

// out[i, c] = src[idx[i], c]; one invocation per output element.
@compute @workgroup_size(WG)
fn gather_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = linear_index(wid, nwg, lid, WG);
    if e >= params.n * params.cols {
        return;
    }
    let row = idx[e / params.cols];
    if row >= params.rows {
        out[e] = 0.0;
        return;
    }
    out[e] = src[row * params.cols + e % params.cols];
}

// The rows, in the flattened [images · (1 + L)] tokens, of each image's class token and its kept
// patches idx [images, k] (M3.5), for n = images · (1 + k), L = rows, k = cols. A patch index
// past L is clamped (the mask kernels give none; the host twin refuses them).
@compute @workgroup_size(WG)
fn kept_token_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = linear_index(wid, nwg, lid, WG);
    if e >= params.n {
        return;
    }
    let image = e / (params.cols + 1u);
    let slot = e % (params.cols + 1u);
    var row = image * (params.rows + 1u);
    if slot > 0u {
        row += 1u + min(idx[image * params.cols + slot - 1u], params.rows - 1u);
    }
    token_rows[e] = row;
}

// out[idx[i], c] = src[i, c] where idx names no row twice (the backward of a distinct gather;
// `out` starts zeroed). One invocation per source element; an index past `rows` is skipped.
@compute @workgroup_size(WG)
fn scatter_distinct_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = linear_index(wid, nwg, lid, WG);
    if e >= params.n * params.cols {
        return;
    }
    let row = idx[e / params.cols];
    if row < params.rows {
        out[row * params.cols + e % params.cols] = src[e];
    }
}

// scatter_distinct_rows, four values per invocation.
@compute @workgroup_size(WG)
fn scatter_distinct_rows4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = linear_index(wid, nwg, lid, WG);
    let quads = params.cols / 4u;
    if e >= params.n * quads {
        return;
    }
    let row = idx[e / quads];
    if row < params.rows {
        out4[row * quads + e % quads] = src4[e];
    }
}

// counts[r] = #{i : idx[i] == r}; `counts` starts zeroed.
@compute @workgroup_size(WG)
fn csr_count(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_index(wid, nwg, lid, WG);
    if i >= params.n {
        return;
    }
    let row = idx[i];
    if row < params.rows {
        atomicAdd(&counts[row], 1u);
    }
}

// offsets = exclusive prefix sum of counts (one workgroup: each lane scans a contiguous chunk).
@compute @workgroup_size(WG)
fn csr_scan(@builtin(local_invocation_id) lid: vec3<u32>) {
    let chunk = (params.rows + WG - 1u) / WG;
    let begin = min(lid.x * chunk, params.rows);
    let end = min(begin + chunk, params.rows);
    var total = 0u;
    for (var r = begin; r < end; r++) {
        total += atomicLoad(&counts[r]);
    }
    lane_totals[lid.x] = total;
    workgroupBarrier();
    // Hillis-Steele inclusive scan of the lane totals.
    for (var step = 1u; step < WG; step *= 2u) {
        var add = 0u;
        if lid.x >= step {
            add = lane_totals[lid.x - step];
        }
        workgroupBarrier();
        lane_totals[lid.x] += add;
        workgroupBarrier();
    }
    var running = lane_totals[lid.x] - total;
    for (var r = begin; r < end; r++) {
        offsets[r] = running;
        running += atomicLoad(&counts[r]);
        // csr_fill counts placements per row from zero.
        atomicStore(&counts[r], 0u);
    }
    if lid.x == WG - 1u {
        offsets[params.rows] = lane_totals[WG - 1u];
    }
}

var<workgroup> chunk_rows: array<u32, WG>;

// order[offsets[r] + k] = the k-th i (in index order) with idx[i] == r. One workgroup walks the
// index list in chunks of WG; a lane's slot is the count of earlier same-row entries, so each
// segment lists its indices in ascending order and the segment sums are bit-reproducible
// (atomic slots would follow scheduling order, and resume must be bit-exact). `counts` holds
// the entries earlier chunks placed per row (zeroed by csr_scan). Note: llvmpipe stops any
// invocation's loops after 65,535 iterations in all, so there n stays below that.
@compute @workgroup_size(WG)
fn csr_fill(@builtin(local_invocation_id) lid: vec3<u32>) {
    for (var base = 0u; base < params.n; base += WG) {
        let i = base + lid.x;
        var row = 0xffffffffu;
        if i < params.n {
            row = idx[i];
        }
        chunk_rows[lid.x] = row;
        workgroupBarrier();
        var before = 0u;
        var last = true;
        for (var j = 0u; j < WG; j++) {
            let other = chunk_rows[j];
            before += select(0u, 1u, other == row && j < lid.x);
            last = last && !(other == row && j > lid.x);
        }
        let valid = row < params.rows;
        if valid {
            order[offsets[row] + atomicLoad(&counts[row]) + before] = i;
        }
        storageBarrier();
        workgroupBarrier();
        if valid && last {
            atomicAdd(&counts[row], before + 1u);
        }
        storageBarrier();
        workgroupBarrier();
    }
}

// out[r, c] = Σ over the segment of row r of src[i, c]; one invocation per output element.
@compute @workgroup_size(WG)
fn segment_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = linear_index(wid, nwg, lid, WG);
    if e >= params.rows * params.cols {
        return;
    }
    let r = e / params.cols;
    let c = e % params.cols;
    let end = min(offsets[r + 1u], params.n);
    var acc = 0.0;
    for (var p = offsets[r]; p < end; p++) {
        acc += src[order[p] * params.cols + c];
    }
    out[e] = acc;
}
