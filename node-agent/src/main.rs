//! `kpersist-agent`: the node agent binary. See the crate documentation.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    kpersist_agent::run::run(kpersist_agent::cli::Cli::parse()).await
}
