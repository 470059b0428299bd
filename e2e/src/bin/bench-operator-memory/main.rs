//! `bench-operator-memory`: the resident memory of the real `kpersist-operator` on a local
//! kube-apiserver + etcd holding 1,000 and 10,000 realistic Node + LivePatchNode pairs, with
//! its watch stores trimmed (the shipped build) and untrimmed (built with the operator's
//! `untrimmed-stores` feature). Run it through `e2e/bench/operator-memory.sh`, which builds
//! both binaries.

mod measure;
mod objects;
mod populate;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kpersist_e2e::controlplane::Identity;
use kpersist_e2e::fleet::Cluster;
use kpersist_e2e::patch_repo::Publisher;
use kpersist_e2e::repo_server::RepoServer;
use kpersist_e2e::{Error, Result};

use measure::{Figures, Run, mib};

/// The memory target at 10,000 nodes.
const TARGET_MIB: u64 = 128;

/// Measures the operator's resident memory against a local API server with many nodes.
#[derive(Debug, Parser)]
struct Cli {
    /// Fleet sizes to measure, smallest first; the cluster grows from one to the next.
    #[arg(long = "nodes", value_delimiter = ',', num_args = 1.., default_values_t = [1000, 10000])]
    nodes: Vec<usize>,
    /// One small fleet (200 nodes) and a short settle time: checks that the benchmark runs.
    #[arg(long)]
    quick: bool,
    /// The operator binary as shipped (trimmed stores).
    #[arg(long)]
    operator: PathBuf,
    /// The operator built with `--features untrimmed-stores`; measured too when given.
    #[arg(long)]
    untrimmed_operator: Option<PathBuf>,
    /// Another build to measure in the same run, `NAME=PATH` (e.g. a candidate fix, against
    /// the same cluster so the figures compare); its stores count as trimmed. Skipped at a
    /// size when the binary does not exist yet.
    #[arg(long = "variant", value_parser = parse_env)]
    variants: Vec<(String, String)>,
    /// Build profile of the binaries, shown in the table.
    #[arg(long, default_value = "release")]
    profile: String,
    /// Node + LivePatchNode pairs written at once while filling the cluster.
    #[arg(long, default_value_t = 32)]
    in_flight: usize,
    /// Least seconds to watch the operator after its caches synced.
    #[arg(long, default_value_t = 30)]
    settle_secs: u64,
    /// Extra environment for the operator, `KEY=VALUE` (e.g. `MALLOC_ARENA_MAX=2`).
    #[arg(long = "operator-env", value_parser = parse_env)]
    operator_env: Vec<(String, String)>,
}

fn parse_env(text: &str) -> std::result::Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("'{text}' is not KEY=VALUE"))
}

/// One row of the table.
struct Row {
    objects: usize,
    variant: String,
    trimmed: bool,
    figures: Figures,
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if cli.quick {
        cli.nodes = vec![200];
        cli.settle_secs = cli.settle_secs.min(5);
    }
    cli.nodes.sort_unstable();
    cli.nodes.dedup();
    match run(&cli).await {
        Ok(rows) => {
            print_table(&cli, &rows);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("bench-operator-memory: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> Result<Vec<Row>> {
    kpersist_e2e::install_crypto_provider();
    let logs = tempfile::Builder::new()
        .prefix("kpersist-bench-memory-")
        .tempdir()
        .map_err(|e| Error::io(std::env::temp_dir(), e))?
        .keep();
    eprintln!("operator logs go to {}", logs.display());
    let cluster = Cluster::start().await?;
    let publisher = Publisher::init(&logs.join("repo"))?;
    let repo = RepoServer::start(publisher.root()).await?;
    let releases = populate::Releases::publish(&publisher, &repo.url())?;
    populate::create_policies(&cluster.admin, &repo.url(), &publisher.public_key()).await?;

    let mut variants = vec![("shipped".to_string(), true, cli.operator.clone())];
    if let Some(untrimmed) = &cli.untrimmed_operator {
        variants.push(("untrimmed-stores".into(), false, untrimmed.clone()));
    }
    for (name, path) in &cli.variants {
        variants.push((name.clone(), true, PathBuf::from(path)));
    }
    let kubeconfig = cluster.plane.kubeconfig(Identity::Operator);
    let mut rows = Vec::new();
    let mut created = 0;
    for &size in &cli.nodes {
        eprintln!("writing Node + LivePatchNode pairs {created}..{size}");
        populate::create_pairs(&cluster.admin, &releases, created, size, cli.in_flight).await?;
        created = size;
        for (label, trimmed, binary) in &variants {
            // A variant still being built when the run started joins at a later size.
            if !binary.is_file() {
                eprintln!("  skipping {label}: {} does not exist", binary.display());
                continue;
            }
            eprintln!("  measuring the {label} operator with {size} nodes");
            let run = Run {
                binary,
                kubeconfig: &kubeconfig,
                env: &cli.operator_env,
                log: logs.join(format!("operator-{size}-{label}.log")),
                settle: Duration::from_secs(cli.settle_secs),
            };
            let figures = measure::measure(&run).await?;
            eprintln!(
                "    steady RSS {}, peak {}, {} reconciles",
                mib(figures.rss_steady),
                mib(figures.peak),
                figures.reconciles
            );
            rows.push(Row {
                objects: size,
                variant: label.clone(),
                trimmed: *trimmed,
                figures,
            });
        }
    }
    Ok(rows)
}

fn print_table(cli: &Cli, rows: &[Row]) {
    println!();
    println!(
        "kpersist-operator memory ({} build{}); target: steady and peak RSS <= {TARGET_MIB} MiB at 10,000 nodes",
        cli.profile,
        env_note(&cli.operator_env)
    );
    println!("machine: {}", machine());
    println!();
    println!(
        "| Node + LivePatchNode objects | build | trimmed | RSS synced | RSS steady | peak (VmHWM) | sync time | reconciles | within {TARGET_MIB} MiB |"
    );
    println!("|---:|:---|:---:|---:|---:|---:|---:|---:|:---:|");
    for row in rows {
        let f = &row.figures;
        let within = f.rss_steady.max(f.peak) <= TARGET_MIB * 1024;
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.1} s | {} | {} |",
            row.objects,
            row.variant,
            if row.trimmed { "yes" } else { "no" },
            mib(f.rss_synced),
            mib(f.rss_steady),
            mib(f.peak),
            f.sync_time.as_secs_f64(),
            f.reconciles,
            if within { "yes" } else { "no" },
        );
    }
    for size in rows
        .iter()
        .map(|r| r.objects)
        .collect::<std::collections::BTreeSet<_>>()
    {
        let of = |variant: &str| {
            rows.iter()
                .find(|r| r.objects == size && r.variant == variant)
                .map(|r| r.figures.rss_steady)
        };
        if let (Some(t), Some(u)) = (of("shipped"), of("untrimmed-stores"))
            && t > 0
        {
            println!(
                "\n{size} nodes: untrimmed / trimmed steady RSS = {:.2}",
                u as f64 / t as f64
            );
        }
    }
}

fn env_note(env: &[(String, String)]) -> String {
    env.iter()
        .map(|(k, v)| format!(", {k}={v}"))
        .collect::<String>()
}

/// CPU model, cores and memory, from /proc.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim())
        })
        .unwrap_or("unknown CPU");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = measure::status_field(&meminfo, "MemTotal").unwrap_or(0);
    format!(
        "{model}, {cores} cores, {:.0} GiB",
        memory as f64 / 1024.0 / 1024.0
    )
}
