//! `kpersist-operator`: see `--help`.

use std::process::ExitCode;

use clap::Parser;
use kpersist_operator::{app, cli::Cli, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = telemetry::init(cli.log_format, &cli.log_filter) {
        eprintln!("kpersist-operator: {error}");
        return ExitCode::from(2);
    }
    match app::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "kpersist-operator stopped");
            eprintln!("kpersist-operator: {error}");
            ExitCode::FAILURE
        }
    }
}
