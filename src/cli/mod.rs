//! Subcommand implementations: each parses nothing itself (clap does) and calls the library.

pub mod bench;
pub mod bench_model;
pub mod bench_ranks;
pub mod data;
pub mod embed;
pub mod eval;
pub mod export;
pub mod info;
pub mod mask;
pub mod model;
pub mod study;
pub mod tokenize;
pub mod train;
pub mod verify;

/// Errors reach the user as one line.
pub type CliResult = Result<(), Box<dyn std::error::Error>>;

/// The error of every rank when all stopped for the same reason (a bad flag, a start-up check):
/// rank 0 has printed it, so each exits with code 1 and says nothing more.
#[derive(Debug)]
pub struct ReportedByRankZero;

impl std::fmt::Display for ReportedByRankZero {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped; rank 0 reports why")
    }
}

impl std::error::Error for ReportedByRankZero {}

/// The adapter flags every GPU subcommand shares; they override `CLUSTERCLIP_BACKEND` /
/// `CLUSTERCLIP_ADAPTER`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct GpuArgs {
    /// auto, vulkan, metal, dx12 or gl (default: CLUSTERCLIP_BACKEND, else auto).
    #[arg(long)]
    pub backend: Option<String>,
    /// Case-insensitive substring of the adapter name (default: CLUSTERCLIP_ADAPTER).
    #[arg(long)]
    pub adapter: Option<String>,
}

impl GpuArgs {
    /// The environment's options with these flags applied on top.
    pub fn options(&self) -> Result<crate::gpu::GpuOptions, String> {
        let mut options = crate::gpu::GpuOptions::from_env()?;
        if let Some(text) = &self.backend {
            options.backend =
                crate::gpu::BackendChoice::parse(text).map_err(|e| format!("--backend: {e}"))?;
        }
        if let Some(name) = &self.adapter {
            options.adapter = Some(name.clone());
        }
        Ok(options)
    }
}
