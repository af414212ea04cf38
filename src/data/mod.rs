//! Data: the built-in dataset, readers for WebDataset / CSV / image folders, the image pipeline
//! and the CLIP tokenizer. Readers that touch files or threads sit behind the `cli` feature.

pub mod image_ops;
pub mod prompts;
pub mod shapes;
pub mod text_clean;
pub mod tokenizer;
pub mod unicode_tables;

#[cfg(feature = "cli")]
pub mod builtin;
#[cfg(feature = "cli")]
pub mod csv;
#[cfg(feature = "cli")]
pub mod error;
#[cfg(feature = "cli")]
pub mod loader;
#[cfg(feature = "cli")]
pub mod records;
#[cfg(feature = "cli")]
pub mod shards;
#[cfg(feature = "cli")]
pub mod spec;
#[cfg(feature = "cli")]
pub mod tar;
