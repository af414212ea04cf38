// Masking kernels (shared/method.md M3, M4); the CPU twin is src/masking/. One mask per step:
//   patch_features -> [embedding_features] -> select_anchors -> cluster_flags[_mixed]
//   -> keep_count -> select_kept   (cluster masking)
//   random_kept                    (FLIP random masking, M4)
// Random draws come from the counter-based generator of src/masking/rng.rs, bit for bit.
// Each entry point binds only the buffers it uses (src/masking/gpu.rs names them).

struct Params {
    images: u32,        // N
    patches: u32,       // L
    height: u32,        // H
    width: u32,         // W
    patch_size: u32,    // p
    grid_cols: u32,     // W / p
    embed_dim: u32,     // D of the embedding mix (M3.7); 0 = pixels only
    embed_tokens: u32,  // tokens per image in the embedding buffer (L, or 1 + L with a class token)
    embed_first: u32,   // token index of patch 0 (1 when the class token comes first)
    anchors: u32,       // K (M3.2)
    keep_floor: u32,    // ceil(L (1 - max_mask_ratio)) (M3.4)
    keep_cap: u32,      // floor(L (1 - min_mask_ratio)) (M3.4)
    random_keep: u32,   // round(L (1 - mask_ratio)) (M4)
    threshold: f32,     // r (M3.3)
    embed_weight: f32,  // w, training progress (M3.7)
    seed_lo: u32,
    seed_hi: u32,
    step: u32,
    // x * scale + shift per channel before standardising (features.rs pixel_transform, M3.1):
    // identity for `normalized`, back to [0, 1] for `rgb`. Scalars: a uniform array needs a
    // 16-byte stride.
    scale_r: f32,
    scale_g: f32,
    scale_b: f32,
    shift_r: f32,
    shift_g: f32,
    shift_b: f32,
    first_image: u32,   // global index of image 0 (rng.rs MaskRng::first_image)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> images: array<f32>;                // [N, 3, H, W]
@group(0) @binding(2) var<storage, read_write> pixel_features: array<f32>;  // [N, 3p², L]
@group(0) @binding(3) var<storage, read> embeddings: array<f32>;            // [N, tokens, D]
@group(0) @binding(4) var<storage, read_write> embed_features: array<f32>;  // [N, D, L]
@group(0) @binding(5) var<storage, read_write> anchors: array<u32>;         // [N, K]
@group(0) @binding(6) var<storage, read_write> masked: array<u32>;          // [N, L], 0 or 1
@group(0) @binding(7) var<storage, read_write> keep: array<u32>;            // [1], k
@group(0) @binding(8) var<storage, read_write> kept: array<u32>;            // [N, k] in [N, L]

// Lanes of the per-patch kernels and of the per-image selection kernels.
const WG: u32 = 64u;
const SELECT_WG: u32 = 256u;
// Largest L the selection kernels hold in workgroup memory (2 x 4 KiB).
const MAX_PATCHES: u32 = 1024u;
// Variance at or below which a patch is flat (features.rs FLAT_VARIANCE, M3.1).
const FLAT_VARIANCE: f32 = 1e-10;
// Embedding rows shorter than this have no direction (features.rs ZERO_NORM).
const ZERO_NORM: f32 = 1e-12;

// Random streams (rng.rs Stream) and the generator's constants.
const STREAM_ANCHOR: u32 = 0u;
const STREAM_KEEP: u32 = 1u;
const STREAM_RANDOM: u32 = 2u;
const CHAIN_START: u32 = 0x9e3779b9u;
const UNIFORM_BITS: u32 = 24u;

// lowbias32 (rng.rs hash_u32).
fn hash_u32(value: u32) -> u32 {
    var x = value;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

// rng.rs MaskRng::bits24: one hash per key word, then a finishing round.
fn bits24(image: u32, stream: u32, index: u32) -> u32 {
    var h = hash_u32(CHAIN_START ^ params.seed_lo);
    h = hash_u32(h ^ params.seed_hi);
    h = hash_u32(h ^ params.step);
    h = hash_u32(h ^ (params.first_image + image));
    h = hash_u32(h ^ stream);
    h = hash_u32(h ^ index);
    return hash_u32(h) >> (32u - UNIFORM_BITS);
}

// ---- patch_features: images [N, 3, H, W] -> unit centred patches [N, L, 3p²] (M3.1) ----

// (scale, shift) of one channel.
fn pixel_transform(channel: u32) -> vec2<f32> {
    switch channel {
        case 0u: { return vec2<f32>(params.scale_r, params.shift_r); }
        case 1u: { return vec2<f32>(params.scale_g, params.shift_g); }
        default: { return vec2<f32>(params.scale_b, params.shift_b); }
    }
}

// One invocation per patch, two passes as the CPU twin: mean, then the centred sum of squares.
// Flat patches become zero vectors. Features are stored dimension-major, [N, 3p², L], so
// neighbouring invocations (patches) touch neighbouring words in every pass after the first.
// (A workgroup per patch with barrier reductions ran 30x slower on lavapipe.)
@compute @workgroup_size(WG)
fn patch_features(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = linear_index(wid, nwg, lid, WG);
    if row >= params.images * params.patches {
        return;
    }
    let image = row / params.patches;
    let patch_index = row % params.patches;
    let p = params.patch_size;
    let dim = 3u * p * p;
    let first = image * dim * params.patches + patch_index;
    let stride = params.patches;
    let top = (patch_index / params.grid_cols) * p;
    let left = (patch_index % params.grid_cols) * p;
    var sum = 0.0;
    var i = first;
    for (var channel = 0u; channel < 3u; channel++) {
        let transform = pixel_transform(channel);
        for (var y = 0u; y < p; y++) {
            let start = ((image * 3u + channel) * params.height + top + y) * params.width + left;
            for (var x = 0u; x < p; x++) {
                let v = images[start + x] * transform.x + transform.y;
                pixel_features[i] = v;
                sum += v;
                i += stride;
            }
        }
    }
    let mean = sum / f32(dim);
    var sum_sq = 0.0;
    for (var t = 0u; t < dim; t++) {
        let d = pixel_features[first + t * stride] - mean;
        sum_sq += d * d;
    }
    let flat = sum_sq / f32(dim) <= FLAT_VARIANCE;
    let scale = select(1.0 / sqrt(sum_sq), 0.0, flat);
    for (var t = 0u; t < dim; t++) {
        let at = first + t * stride;
        pixel_features[at] = (pixel_features[at] - mean) * scale;
    }
}

// ---- embedding_features: unit patch tokens (embeddings + positions, M3.7), [N, L, D] ----

@compute @workgroup_size(WG)
fn embedding_features(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = linear_index(wid, nwg, lid, WG);
    if row >= params.images * params.patches {
        return;
    }
    let dim = params.embed_dim;
    let image = row / params.patches;
    let patch_index = row % params.patches;
    let token = (image * params.embed_tokens + params.embed_first + patch_index) * dim;
    let first = image * dim * params.patches + patch_index; // dimension-major, as pixel_features
    var sum_sq = 0.0;
    for (var t = 0u; t < dim; t++) {
        let v = embeddings[token + t];
        sum_sq += v * v;
    }
    let norm = sqrt(sum_sq);
    let scale = select(0.0, 1.0 / norm, norm > ZERO_NORM);
    for (var t = 0u; t < dim; t++) {
        embed_features[first + t * params.patches] = embeddings[token + t] * scale;
    }
}

// ---- rank selection (one workgroup per image) ----

var<workgroup> keys: array<u32, MAX_PATCHES>;
var<workgroup> chosen: array<u32, MAX_PATCHES>;

// With keys[0..L) loaded: leaves in keys[j] the 1-based ascending position of j among the
// `count` smallest (key, index) pairs, 0 for the rest (rng.rs smallest_keys). Ranks by counting
// smaller keys: O(L²) per image, spread over SELECT_WG lanes.
fn select_smallest(lane: u32, count: u32) {
    workgroupBarrier();
    let patches = params.patches;
    for (var j = lane; j < patches; j += SELECT_WG) {
        let key = keys[j];
        var rank = 0u;
        for (var i = 0u; i < patches; i++) {
            rank += u32(keys[i] < key || (keys[i] == key && i < j));
        }
        chosen[j] = u32(rank < count);
    }
    workgroupBarrier();
    for (var j = lane; j < patches; j += SELECT_WG) {
        var position = 0u;
        for (var i = 0u; i < j; i++) {
            position += chosen[i];
        }
        keys[j] = select(0u, position + 1u, chosen[j] != 0u);
    }
    workgroupBarrier();
}

// ---- select_anchors: K uniform patches per image without replacement (M3.2) ----

@compute @workgroup_size(SELECT_WG)
fn select_anchors(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let image = wid.x;
    if image >= params.images || params.patches > MAX_PATCHES {
        return;
    }
    for (var j = lid.x; j < params.patches; j += SELECT_WG) {
        keys[j] = bits24(image, STREAM_ANCHOR, j);
    }
    select_smallest(lid.x, params.anchors);
    for (var j = lid.x; j < params.patches; j += SELECT_WG) {
        if keys[j] != 0u {
            anchors[image * params.anchors + keys[j] - 1u] = j;
        }
    }
}

// ---- cluster_flags: masked[j] = anchor or sim(a, j) > r for an anchor a (M3.3), K x L ----

// Dot product of patches a and b of `image` in a dimension-major [N, dim, L] feature buffer.
fn dot_pixels(image: u32, a: u32, b: u32) -> f32 {
    let dim = 3u * params.patch_size * params.patch_size;
    let base = image * dim * params.patches;
    var acc = 0.0;
    for (var t = 0u; t < dim; t++) {
        let at = base + t * params.patches;
        acc += pixel_features[at + a] * pixel_features[at + b];
    }
    return acc;
}

fn dot_embedding(image: u32, a: u32, b: u32) -> f32 {
    let dim = params.embed_dim;
    let base = image * dim * params.patches;
    var acc = 0.0;
    for (var t = 0u; t < dim; t++) {
        let at = base + t * params.patches;
        acc += embed_features[at + a] * embed_features[at + b];
    }
    return acc;
}

// Pixel similarity only (no embedding mix).
@compute @workgroup_size(WG)
fn cluster_flags(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = linear_index(wid, nwg, lid, WG);
    if row >= params.images * params.patches {
        return;
    }
    let image = row / params.patches;
    let patch_index = row % params.patches;
    var covered = false;
    // The union needs one witness: stop at the first anchor that covers the patch.
    for (var k = 0u; k < params.anchors && !covered; k++) {
        let anchor = anchors[image * params.anchors + k];
        covered = anchor == patch_index
            || dot_pixels(image, anchor, patch_index) > params.threshold;
    }
    masked[row] = u32(covered);
}

// The similarity mixes in the embedding's (M3.7): w · embedding + (1 - w) · pixels.
@compute @workgroup_size(WG)
fn cluster_flags_mixed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = linear_index(wid, nwg, lid, WG);
    if row >= params.images * params.patches {
        return;
    }
    let image = row / params.patches;
    let patch_index = row % params.patches;
    let w = params.embed_weight;
    var covered = false;
    for (var k = 0u; k < params.anchors && !covered; k++) {
        let anchor = anchors[image * params.anchors + k];
        let pixels = dot_pixels(image, anchor, patch_index);
        covered = anchor == patch_index
            || w * dot_embedding(image, anchor, patch_index) + (1.0 - w) * pixels > params.threshold;
    }
    masked[row] = u32(covered);
}

// ---- keep_count: k = max(min(cap, fewest unmasked of any image), floor) (M3.4) ----

var<workgroup> fewest: array<u32, SELECT_WG>;

@compute @workgroup_size(SELECT_WG)
fn keep_count(@builtin(local_invocation_id) lid: vec3<u32>) {
    var local_fewest = params.patches;
    for (var image = lid.x; image < params.images; image += SELECT_WG) {
        var unmasked = 0u;
        for (var j = 0u; j < params.patches; j++) {
            unmasked += u32(masked[image * params.patches + j] == 0u);
        }
        local_fewest = min(local_fewest, unmasked);
    }
    fewest[lid.x] = local_fewest;
    workgroupBarrier();
    for (var stride = SELECT_WG / 2u; stride > 0u; stride /= 2u) {
        if lid.x < stride {
            fewest[lid.x] = min(fewest[lid.x], fewest[lid.x + stride]);
        }
        workgroupBarrier();
    }
    if lid.x == 0u {
        keep[0] = max(min(params.keep_cap, fewest[0]), params.keep_floor);
    }
}

// ---- select_kept: the k patches each image keeps (M3.4), [N, k] rows ascending ----
// key = masked · 2^24 + u: unmasked first, extras dropped at random (not raster order), masked
// ones restored at random when an image has too few.

@compute @workgroup_size(SELECT_WG)
fn select_kept(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let image = wid.x;
    if image >= params.images || params.patches > MAX_PATCHES {
        return;
    }
    let keep_count = keep[0];
    for (var j = lid.x; j < params.patches; j += SELECT_WG) {
        let is_masked = min(masked[image * params.patches + j], 1u);
        keys[j] = (is_masked << UNIFORM_BITS) | bits24(image, STREAM_KEEP, j);
    }
    select_smallest(lid.x, keep_count);
    for (var j = lid.x; j < params.patches; j += SELECT_WG) {
        if keys[j] != 0u {
            kept[image * keep_count + keys[j] - 1u] = j;
        }
    }
}

// ---- random_kept: FLIP, keep the k patches with the smallest noise (M4) ----

@compute @workgroup_size(SELECT_WG)
fn random_kept(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let image = wid.x;
    if image >= params.images || params.patches > MAX_PATCHES {
        return;
    }
    for (var j = lid.x; j < params.patches; j += SELECT_WG) {
        keys[j] = bits24(image, STREAM_RANDOM, j);
    }
    select_smallest(lid.x, params.random_keep);
    for (var j = lid.x; j < params.patches; j += SELECT_WG) {
        if keys[j] != 0u {
            kept[image * params.random_keep + keys[j] - 1u] = j;
        }
    }
}
