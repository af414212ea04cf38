//! Data: the built-in dataset, readers for WebDataset / CSV / image folders, the image pipeline
//! and the CLIP tokenizer. Readers that touch files or threads sit behind the `cli` feature.

pub mod shapes;
pub mod text_clean;
pub mod tokenizer;
pub mod unicode_tables;
