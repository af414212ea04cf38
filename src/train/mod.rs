//! Training: the optimizer (AdamW, M2), learning-rate schedules, the training step.

pub mod optimizer;
pub mod mask_step;
pub mod schedule;
pub mod step;

pub use optimizer::{AdamWConfig, Optimizer};
pub use schedule::{LrScheduler, learning_rate};
pub use step::Trainer;
