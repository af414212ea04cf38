// Picks a dispatch plan's params and grids for the count the GPU computed (src/gpu/plan.rs):
// the row of `table` for that count is copied into the uniform slots and the indirect grids
// that the plan's count-dependent dispatches read. One invocation per such dispatch.

struct Params {
    entries: u32,
    row_words: u32,
    first_count: u32,
    last_count: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// [1]: the count (the cluster mask's keep count k), clamped to the plan's counts.
@group(0) @binding(1) var<storage, read> count: array<u32>;
// [counts, row_words]: per count, each dispatch's params words then its 3 workgroup counts.
@group(0) @binding(2) var<storage, read> table: array<u32>;
// [entries, 2]: where a dispatch's words start in a row, and how many params words it has.
@group(0) @binding(3) var<storage, read> entries: array<u32>;
// [entries, SLOT_WORDS]: one 256-byte uniform slot per dispatch.
@group(0) @binding(4) var<storage, read_write> picked_params: array<u32>;
// [entries, 3]: indirect dispatch arguments.
@group(0) @binding(5) var<storage, read_write> picked_groups: array<u32>;

const WG: u32 = 64u;
const SLOT_WORDS: u32 = 64u;

@compute @workgroup_size(WG)
fn pick(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let j = linear_index(wid, nwg, lid, WG);
    if j >= params.entries {
        return;
    }
    let k = clamp(count[0], params.first_count, params.last_count);
    let at = (k - params.first_count) * params.row_words + entries[2u * j];
    let words = min(entries[2u * j + 1u], SLOT_WORDS);
    for (var i = 0u; i < words; i++) {
        picked_params[j * SLOT_WORDS + i] = table[at + i];
    }
    for (var c = 0u; c < 3u; c++) {
        picked_groups[j * 3u + c] = table[at + words + c];
    }
}
