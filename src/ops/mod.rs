//! Ops: one file per op family, each holding the graph method (shape checks), the GPU dispatch
//! of its WGSL file, its backward, and its plain-Rust CPU reference (`cpu` submodule).

pub mod attention;
pub mod contrastive;
pub mod elementwise;
pub mod gather;
pub mod gelu;
pub mod l2_normalize;
pub mod layer_norm;
pub mod matmul;
pub mod patches;
pub mod reduce;
pub mod softmax;
