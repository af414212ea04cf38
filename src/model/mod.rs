//! The CLIP model of method.md M1, built from graph ops: the ViT image tower, the causal text
//! tower, and the contrastive head. Parameters use OpenCLIP's state_dict names.

pub mod block;
pub mod clip;
pub mod config;
pub mod init;
#[cfg(feature = "weights")]
pub mod io;
#[cfg(feature = "cli")]
pub mod openclip;
pub mod params;
#[cfg(feature = "cli")]
pub mod reference;
#[cfg(feature = "weights")]
pub mod state_dict;
pub mod text;
pub mod vision;

pub use clip::{Clip, ClipInputs, ClipOutputs, Input};
pub use config::{ClipConfig, TextConfig, VisionConfig};
pub use params::{ParamSpec, ParamStore};
