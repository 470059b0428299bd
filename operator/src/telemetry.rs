//! Structured logging with `tracing`: JSON lines for log collectors, or text for people at a
//! terminal. The filter takes `RUST_LOG` syntax (e.g. `info,kpersist_operator=debug`).

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::error::StartupError;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, with span fields.
    Json,
    /// Human-readable lines.
    Text,
}

/// Installs the global subscriber. Fails when the filter does not parse.
pub fn init(format: LogFormat, filter: &str) -> Result<(), StartupError> {
    let filter = EnvFilter::try_new(filter).map_err(|source| StartupError::LogFilter {
        filter: filter.to_string(),
        message: source.to_string(),
    })?;
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(fmt::layer().json().with_current_span(true))
            .try_init(),
        LogFormat::Text => registry
            .with(fmt::layer().with_ansi(std::io::stdout().is_terminal()))
            .try_init(),
    };
    // A subscriber already set (tests) is fine: logs go there.
    if let Err(error) = result {
        tracing::debug!(%error, "a tracing subscriber was already installed");
    }
    Ok(())
}
