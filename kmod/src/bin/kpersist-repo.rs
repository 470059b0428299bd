//! `kpersist-repo`: the publisher's tool for a kpersist patch repository (keygen, init, add,
//! sign, verify, list). Exit codes: 0 success, 1 a failed step or check, 2 a usage error.

#[path = "../cli/args.rs"]
mod args;
#[path = "../cli/commands.rs"]
mod commands;
#[path = "../cli/table.rs"]
mod table;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // clap prints usage errors itself and exits with code 2.
    let cli = args::Cli::parse();
    match commands::run(cli.command) {
        Ok(output) => {
            // A closed stdout (e.g. `| head`) is not a failure of the command itself.
            let _ = std::io::stdout().write_all(output.as_bytes());
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("kpersist-repo: {failure}");
            ExitCode::FAILURE
        }
    }
}
