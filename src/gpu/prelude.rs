//! The WGSL prelude: index helpers, the matmul kernels' block update and flag bits every shader
//! may use, written once here and appended to each shader's source when its module is built.
//! Appended, not prepended: WGSL declarations may come in any order, and a shader file's own
//! lines keep their numbers in naga's error messages.

use std::sync::OnceLock;

/// Bits of the matmul kernels' `params.flags` (`shaders/matmul.wgsl`, `src/ops/matmul.rs`).
pub mod matmul_flags {
    /// A stored as [K, M].
    pub const TRANS_A: u32 = 1;
    /// B stored as [N, K].
    pub const TRANS_B: u32 = 2;
    /// C += op(A)·op(B) instead of C = op(A)·op(B).
    pub const ACCUMULATE: u32 = 4;
    /// A workgroup's lanes take consecutive batch entries (see `placement` in the shader).
    pub const LANES_OVER_BATCH: u32 = 8;
}

const INDEX_HELPERS: &str = "
// ---- prelude (src/gpu/prelude.rs) ----
// The workgroup's number in a 1-D grid, which folds into y past 65,535 workgroups
// (src/gpu/mod.rs, `linear_grid`).
fn workgroup_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

// The invocation's index in a 1-D grid of `lanes`-wide workgroups; callers guard it against
// their element count.
fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>, lanes: u32) -> u32 {
    return workgroup_index(wid, nwg) * lanes + lid.x;
}

// The matmul kernels' rank-1 update of a 4 x 4 block of C (column r is row r):
// acc[r] += rows[r] * cols.
fn block_update(acc: mat4x4<f32>, rows: vec4<f32>, cols: vec4<f32>) -> mat4x4<f32> {
    return mat4x4(
        fma(vec4(rows.x), cols, acc[0]),
        fma(vec4(rows.y), cols, acc[1]),
        fma(vec4(rows.z), cols, acc[2]),
        fma(vec4(rows.w), cols, acc[3]),
    );
}
";

/// The prelude's WGSL text.
pub fn wgsl() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        use matmul_flags::*;
        let flags = [
            ("MATMUL_TRANS_A", TRANS_A),
            ("MATMUL_TRANS_B", TRANS_B),
            ("MATMUL_ACCUMULATE", ACCUMULATE),
            ("MATMUL_LANES_OVER_BATCH", LANES_OVER_BATCH),
        ];
        let mut text = INDEX_HELPERS.to_string();
        text.push_str("\n// Flag bits, defined in Rust.\n");
        for (name, bit) in flags {
            text.push_str(&format!("const {name}: u32 = {bit}u;\n"));
        }
        text
    })
}

/// `source` with the prelude appended.
pub fn with_prelude(source: &str) -> String {
    format!("{source}\n{}", wgsl())
}
