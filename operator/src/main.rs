//! `kpersist-operator`: see `--help`.

use std::error::Error as _;
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
            // The message already carries its direct source; the deeper causes (refused,
            // certificate unknown, ...) are what a person needs to act on.
            let mut message = error.to_string();
            let mut cause = error.source().and_then(|s| s.source());
            while let Some(inner) = cause {
                message.push_str("\n  caused by: ");
                message.push_str(&inner.to_string());
                cause = inner.source();
            }
            eprintln!("kpersist-operator: {message}");
            ExitCode::FAILURE
        }
    }
}
