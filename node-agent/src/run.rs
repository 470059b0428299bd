//! Wiring: the kernel (real or simulated), the state directory, the engine, and then either
//! the Kubernetes agent or one local action. `main` only calls [`run`].

use std::process::ExitCode;
use std::sync::Arc;

use kpersist_kmod::kernel::{Kernel, SimKernel, SysKernel};

use crate::cli::{Cli, Command, LocalAction};
use crate::controller::NodeController;
use crate::engine::Engine;
use crate::error::AgentError;
use crate::fetch::Fetcher;
use crate::local::{run_local, summary};
use crate::metrics::Metrics;
use crate::patcher::{BeforeLoad, Patcher};
use crate::state::StateDir;

/// File name of the simulated kernel's state inside the state directory.
pub const SIM_STATE_FILE: &str = "sim-kernel.json";

/// Runs the agent as the flags say; returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    // kube and reqwest both link rustls; pick its crypto provider once, before any TLS.
    let _ = rustls::crypto::ring::default_provider().install_default();
    crate::telemetry::init(cli.host.log_format);
    let local = matches!(cli.command, Some(Command::Local { .. }));
    let result = if cli.host.simulate {
        simulated(cli).await
    } else {
        let kernel = SysKernel::new(
            &cli.host.sysfs_root,
            &cli.host.procfs_root,
            &cli.host.kmsg_path,
        );
        dispatch(cli, kernel, None).await
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if local {
                let state = if matches!(e, AgentError::NoRelease { .. }) {
                    "Unsupported reason=Unsupported"
                } else {
                    "Failed reason=HostError"
                };
                println!("state={state} message={e}");
            }
            tracing::error!(error = %e, "kpersist-agent stopped");
            ExitCode::FAILURE
        }
    }
}

/// The simulated kernel, with the faults of `--sim-fail-release` injected per release.
async fn simulated(cli: Cli) -> Result<ExitCode, AgentError> {
    // The simulated kernel's state is kept beside the agent's, so it outlives the agent
    // process as a real kernel outlives the pod.
    let store = cli
        .host
        .sim_state_file
        .clone()
        .unwrap_or_else(|| cli.host.state_dir.join(SIM_STATE_FILE));
    std::fs::create_dir_all(&cli.host.state_dir)
        .map_err(AgentError::state("create", &cli.host.state_dir))?;
    let sim = SimKernel::persistent(
        store,
        cli.host.sim_kernel_release.clone(),
        cli.host.sim_build_id.clone(),
        cli.host.sim_boot_id.clone(),
    )?;
    let faults = cli.host.sim_faults()?;
    let handle = sim.clone();
    // Faults are keyed by module name in the kernel but by release here; set (or clear) the
    // module's fault before each load so one release's fault does not follow its module.
    let hook: BeforeLoad = Arc::new(move |release| {
        let fault = faults
            .iter()
            .find(|(id, _)| *id == release.id)
            .map(|(_, f)| f.clone());
        handle.set_fault(release.module_name.clone(), fault.unwrap_or_default());
    });
    dispatch(cli, sim, Some(hook)).await
}

async fn dispatch<K: Kernel + Clone + 'static>(
    cli: Cli,
    kernel: K,
    hook: Option<BeforeLoad>,
) -> Result<ExitCode, AgentError> {
    let state = StateDir::open(&cli.host.state_dir)?;
    let fetcher = Fetcher::new();
    let mut patcher = Patcher::new(kernel, state, fetcher, cli.host.poll_interval()?);
    if let Some(hook) = hook {
        patcher = patcher.with_before_load(hook);
    }
    let metrics = Metrics::new().map_err(|e| AgentError::Flag {
        flag: "(metrics)",
        reason: e.to_string(),
    })?;
    let engine = Engine::new(patcher, metrics.clone());
    match cli.command {
        Some(Command::Local { action }) => local(engine, &action).await,
        None => agent(cli, engine, metrics).await,
    }
}

async fn local<K: Kernel + Clone + 'static>(
    engine: Engine<K>,
    action: &LocalAction,
) -> Result<ExitCode, AgentError> {
    let run = run_local(engine, action).await?;
    let json = serde_json::to_string_pretty(&run.status).unwrap_or_default();
    println!("{json}");
    println!("{}", summary(&run.status));
    // On stderr, so that stdout stays the status and its summary line, last.
    if let Some(after) = run.after_download {
        eprintln!("after_download_ms={}", after.as_millis());
    }
    Ok(if run.reached {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn agent<K: Kernel + Clone + 'static>(
    cli: Cli,
    engine: Engine<K>,
    metrics: Metrics,
) -> Result<ExitCode, AgentError> {
    let node_name = cli.agent.node_name.clone().ok_or(AgentError::Flag {
        flag: "--node-name",
        reason: "required (or NODE_NAME); set it from the downward API spec.nodeName".into(),
    })?;
    let server = tokio::spawn(crate::server::serve(
        cli.agent.metrics_addr,
        metrics,
        engine.liveness().clone(),
    ));
    let client = kube::Client::try_default().await?;
    tracing::info!(node = %node_name, simulate = cli.host.simulate, "kpersist-agent starting");
    let patcher = engine.patcher().clone();
    let probation = tokio::spawn(end_probations(patcher.clone()));
    let controller = NodeController::new(client, node_name, engine);
    let result = controller.run(shutdown_signal()).await;
    server.abort();
    probation.abort();
    // The agent stops by itself: the kernel is alive, so this boot does not end uncleanly
    // on a release's probation.
    if let Err(e) = patcher.mark_clean_stop().await {
        tracing::error!(error = %e, "recording the clean stop failed; the next start will take this boot's end for a crash");
    }
    // Loaded patches stay: the kernel's state outlives this process.
    tracing::info!("kpersist-agent stopped; loaded livepatches are left as they are");
    result.map(|()| ExitCode::SUCCESS)
}

/// How often the agent looks whether the live release's probation is over.
const PROBATION_CHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// Ends each probation once its time is up, so that a later unclean end of the boot is not
/// blamed on the release.
async fn end_probations<K: Kernel + Clone + 'static>(patcher: Patcher<K>) {
    let mut every = tokio::time::interval(PROBATION_CHECK);
    loop {
        every.tick().await;
        if let Err(e) = patcher.end_probation_if_due().await {
            tracing::warn!(error = %e, "checking the probation failed");
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
