//! `kpersist-agent`: the node agent binary. See the crate documentation.

use std::process::ExitCode;

use clap::Parser;

// Two workers are plenty for one watch, status writes and /metrics; tokio's default of one
// per core would start dozens of idle threads on a large node.
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    kpersist_agent::run::run(kpersist_agent::cli::Cli::parse()).await
}
