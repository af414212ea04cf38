//! clusterclip: CLIP pre-training with cluster masking (Wei, Pan, Owens, CVPR 2024), in WGSL
//! compute shaders on wgpu. The layout follows the data's path: data -> patches -> mask ->
//! encoders -> loss -> backward -> optimizer. See ARCHITECTURE.md.
//!
//! The model core (`gpu`, `graph`, `ops`, `model`, `masking`) uses no threads, files or
//! terminal, so it builds for wasm32; everything else sits behind the default `cli` feature.

pub mod data;
pub mod eval;
pub mod gpu;
pub mod graph;
pub mod masking;
pub mod model;
pub mod ops;
pub mod train;

#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "cli")]
pub mod study;
pub use graph::{Backend, Graph, Tensor};

/// Every kernel params struct with the shader it feeds, for tests/shaders.rs to hold against
/// the WGSL uniform structs.
pub fn params_layouts() -> Vec<gpu::ParamsLayout> {
    use gpu::KernelParams;
    vec![
        ops::attention::Params::layout(),
        ops::contrastive::Params::layout(),
        ops::elementwise::Params::layout(),
        ops::gather::Params::layout(),
        ops::gelu::Params::layout(),
        ops::l2_normalize::Params::layout(),
        ops::layer_norm::Params::layout(),
        ops::matmul::Params::layout(),
        // One Params struct feeds both matmul shaders.
        gpu::ParamsLayout {
            shader: "matmul_subgroup",
            ..ops::matmul::Params::layout()
        },
        ops::patches::Params::layout(),
        ops::reduce::Params::layout(),
        ops::softmax::Params::layout(),
        masking::gpu::Params::layout(),
        train::optimizer::AdamParams::layout(),
        train::optimizer::FlatParams::layout(),
        gpu::PlanParams::layout(),
    ]
}
