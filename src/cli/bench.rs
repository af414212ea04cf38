use super::CliResult;
#[derive(clap::Subcommand)]
pub enum BenchCommand { Matmul }
pub fn run(_cmd: BenchCommand) -> CliResult { Ok(()) }
