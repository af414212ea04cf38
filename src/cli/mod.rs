//! Subcommand implementations: each parses nothing itself (clap does) and calls the library.

pub mod bench;
pub mod data;
pub mod info;
pub mod mask;
pub mod tokenize;

/// Errors reach the user as one line.
pub type CliResult = Result<(), Box<dyn std::error::Error>>;
