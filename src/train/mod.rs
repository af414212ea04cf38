//! Training: the optimizer (AdamW, M2), learning-rate schedules, the training step.

#[cfg(feature = "cli")]
pub mod checkpoint;
pub mod gather;
#[cfg(feature = "cli")]
pub mod logs;
pub mod mask_step;
pub mod optimizer;
#[cfg(feature = "cli")]
pub mod plot;
pub mod ranks;
#[cfg(feature = "cli")]
pub mod run;
pub mod schedule;
pub mod step;
#[cfg(feature = "cli")]
pub mod stream;
#[cfg(feature = "cli")]
pub mod tensorboard;

pub use optimizer::{AdamWConfig, Optimizer};
pub use schedule::{LrScheduler, learning_rate};
pub use step::Trainer;
