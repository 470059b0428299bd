//! `bench-rollout`: the rollout overhead benchmark (see `kpersist_e2e::bench::rollout`).
//! Prints the figures as Markdown on standard output, progress on standard error, and exits
//! non-zero only when the run itself fails (a missed target is a figure, not a failure),
//! unless `--require-targets` is given.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kpersist_e2e::bench::rollout::{self, Settings, report};

/// Times one rollout of a simulated fleet through zero-bake waves on a local
/// kube-apiserver and counts the API requests it cost.
#[derive(Parser, Debug)]
#[command(name = "bench-rollout")]
struct Args {
    /// Simulated nodes.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Waves, zero bake each.
    #[arg(long, default_value_t = 4)]
    waves: usize,
    /// A small, fast run for CI: 50 nodes, 2 waves (overrides --nodes and --waves).
    #[arg(long)]
    quick: bool,
    /// The policy's maxInFlight (default: every node at once).
    #[arg(long)]
    max_in_flight: Option<u32>,
    /// In-process agents sharing one API client.
    #[arg(long, default_value_t = 50)]
    agents_per_client: usize,
    /// Seconds the rollout may take before the run fails.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Exit non-zero when a target is missed.
    #[arg(long)]
    require_targets: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (nodes, waves) = if args.quick {
        (50, 2)
    } else {
        (args.nodes, args.waves)
    };
    if nodes == 0 || waves == 0 || waves > 100 {
        eprintln!("bench-rollout: --nodes must be at least 1 and --waves 1 to 100");
        return ExitCode::FAILURE;
    }
    let settings = Settings {
        nodes,
        waves,
        max_in_flight: args.max_in_flight,
        agents_per_client: args.agents_per_client,
        timeout: Duration::from_secs(args.timeout),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bench-rollout: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    kpersist_e2e::install_crypto_provider();
    match runtime.block_on(rollout::run(&settings)) {
        Ok(measurement) => {
            println!("{}", report::render(&measurement));
            if args.require_targets && !measurement.targets_met() {
                eprintln!("bench-rollout: a target was missed (see the table)");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-rollout: {e}");
            ExitCode::FAILURE
        }
    }
}
