use super::CliResult;
#[derive(clap::Args)]
pub struct InfoArgs {}
pub fn run(_args: InfoArgs) -> CliResult { Ok(()) }
