//! The `clusterclip` command line: each subcommand parses its flags and calls the library.

use clap::{Parser, Subcommand};
use clusterclip::cli;

#[derive(Parser)]
#[command(
    name = "clusterclip",
    version,
    about = "CLIP pre-training with cluster masking on any GPU (wgpu)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List GPU adapters and show the chosen one's limits and features.
    Info(cli::info::InfoArgs),
    /// Time kernels, towers or training steps.
    #[command(subcommand)]
    Bench(cli::bench::BenchCommand),
    /// Print CLIP token ids of texts.
    Tokenize(cli::tokenize::TokenizeArgs),
    /// Make WebDataset shards from a CSV, or count a dataset's samples and bad records.
    #[command(subcommand)]
    Data(cli::data::DataCommand),
    /// Compute one mask of image files: a picture and, with --json, the patch indices.
    Mask(cli::mask::MaskArgs),
    /// Train a CLIP (OpenCLIP's flags): by default the tiny preset with cluster masking on builtin:shapes.
    Train(Box<cli::train::TrainArgs>),
    /// A grid of training runs (strategies × mask ratios × seeds) under one budget, compared at
    /// equal compute: study.md, study.json and plots.
    Study(Box<cli::study::StudyArgs>),
    /// Zero-shot or retrieval metrics of a checkpoint.
    Eval(Box<cli::eval::EvalArgs>),
    /// Write a checkpoint's weights as the folder OpenCLIP loads with `local-dir:DIR`.
    Export(cli::export::ExportArgs),
    /// A model preset's configuration and parameter counts.
    Model(cli::model::ModelArgs),
    /// Check this implementation against an OpenCLIP reference export.
    VerifyOpenclip(cli::verify::VerifyArgs),
    /// Image and text embeddings of a data spec in clip-retrieval's layout (.npy + parquet), or
    /// of a few files and texts as JSON.
    Embed(cli::embed::EmbedArgs),
}

fn main() {
    // First, while the process has one thread (see its SAFETY note).
    clusterclip::gpu::quiet_mesa_device_select();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(args) => cli::info::run(args),
        Command::Bench(cmd) => cli::bench::run(cmd),
        Command::Tokenize(args) => cli::tokenize::run(args),
        Command::Data(cmd) => cli::data::run(cmd),
        Command::Mask(args) => cli::mask::run(args),
        Command::Train(args) => cli::train::run(*args),
        Command::Study(args) => cli::study::run(*args),
        Command::Eval(args) => cli::eval::run(*args),
        Command::Export(args) => cli::export::run(args),
        Command::Model(args) => cli::model::run(args),
        Command::VerifyOpenclip(args) => cli::verify::run(args),
        Command::Embed(args) => cli::embed::run(args),
    };
    if let Err(err) = result {
        // An error rank 0 has already printed for every rank is not repeated.
        if !err.is::<cli::ReportedByRankZero>() {
            eprintln!("error: {err}");
        }
        std::process::exit(1);
    }
}
