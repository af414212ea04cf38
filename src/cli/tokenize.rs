//! `clusterclip tokenize`: print CLIP token ids of each text, one line per text.

use super::CliResult;
use crate::data::tokenizer::{CLIP_VOCAB_SIZE, MIN_VOCAB_SIZE, Tokenizer};

#[derive(clap::Args)]
pub struct TokenizeArgs {
    /// Tokens per text: start token, text, end token, zero padding (77 for CLIP).
    #[arg(long, default_value_t = 77)]
    pub context_length: usize,
    /// Vocabulary of the model; below 49408 ids are folded into it (see `reduce_token_id`).
    #[arg(long, default_value_t = CLIP_VOCAB_SIZE)]
    pub vocab_size: usize,
    /// Print a JSON array of id arrays instead of space-separated ids.
    #[arg(long)]
    pub json: bool,
    /// Texts to tokenize.
    #[arg(required = true)]
    pub texts: Vec<String>,
}

/// Longest `--context-length`: CLIP uses 77, long-text variants a few hundred; beyond this
/// the padded rows only cost memory (100,000,000,000 aborted on allocation, issue 10).
pub const MAX_CONTEXT_LENGTH: usize = 8192;

pub fn run(args: TokenizeArgs) -> CliResult {
    // Two ids are the least: the start and end tokens.
    if !(2..=MAX_CONTEXT_LENGTH).contains(&args.context_length) {
        return Err(format!(
            "--context-length {} is outside 2..={MAX_CONTEXT_LENGTH}",
            args.context_length
        )
        .into());
    }
    if args.vocab_size < MIN_VOCAB_SIZE {
        return Err(format!(
            "--vocab-size {} is below the minimum of {MIN_VOCAB_SIZE}",
            args.vocab_size
        )
        .into());
    }
    let tokenizer = Tokenizer::shared();
    let rows: Vec<Vec<u32>> = args
        .texts
        .iter()
        .map(|text| tokenizer.encode(text, args.context_length, args.vocab_size))
        .collect();
    let format_row = |row: &Vec<u32>, separator: &str| {
        row.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(separator)
    };
    if args.json {
        let rows: Vec<String> = rows
            .iter()
            .map(|row| format!("[{}]", format_row(row, ",")))
            .collect();
        println!("[{}]", rows.join(","));
    } else {
        for row in &rows {
            println!("{}", format_row(row, " "));
        }
    }
    Ok(())
}
