//! Many agents in one process: every simulated node runs the real agent code, a
//! `NodeController` over an `Engine` with a simulated kernel, wired as `kpersist-agent
//! --simulate` wires it, as one task. Agents share a few API clients (each client keeps
//! its own connections), so a thousand nodes fit on a small machine.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kpersist_agent::controller::NodeController;
use kpersist_agent::engine::Engine;
use kpersist_agent::fetch::Fetcher;
use kpersist_agent::metrics::Metrics;
use kpersist_agent::patcher::Patcher;
use kpersist_agent::state::StateDir;
use kpersist_kmod::kernel::SimKernel;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::controlplane::{ControlPlane, Identity};
use crate::{Error, Result};

/// How often an agent reads sysfs during a transition: the binary's default.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The kernel every simulated node runs.
#[derive(Clone, Debug)]
pub struct SimKernelSpec {
    /// `uname -r`.
    pub release: String,
    /// GNU build id.
    pub build_id: String,
}

/// The running agents; [`AgentFleet::stop`] ends them (dropping the fleet aborts them).
pub struct AgentFleet {
    tasks: Vec<JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
    failures: Arc<Mutex<Vec<String>>>,
}

impl AgentFleet {
    /// Starts one agent per name in `nodes`, each with its own simulated kernel and state
    /// directory under `state_root`, `per_client` agents to an API client acting as the
    /// agents' service account.
    pub async fn start(
        plane: &ControlPlane,
        nodes: &[String],
        kernel: &SimKernelSpec,
        state_root: &Path,
        per_client: usize,
    ) -> Result<Self> {
        let (shutdown, stop) = watch::channel(false);
        let failures = Arc::new(Mutex::new(Vec::new()));
        // One HTTP client for downloads, as every agent's is the same.
        let fetcher = Fetcher::new();
        let mut tasks = Vec::with_capacity(nodes.len());
        for group in nodes.chunks(per_client.max(1)) {
            let client = plane.client(Identity::Agent).await?;
            for name in group {
                let engine = engine_for(name, kernel, state_root, &fetcher)?;
                let controller = NodeController::new(client.clone(), name.clone(), engine);
                let mut stop = stop.clone();
                let failures = failures.clone();
                let name = name.clone();
                tasks.push(tokio::spawn(async move {
                    let shutdown = async move {
                        // An error means the sender went away: stop too.
                        let _ = stop.wait_for(|stop| *stop).await;
                    };
                    if let Err(e) = controller.run(shutdown).await {
                        let mut failures = failures.lock().unwrap_or_else(|p| p.into_inner());
                        failures.push(format!("agent {name}: {e}"));
                    }
                }));
            }
        }
        Ok(Self {
            tasks,
            shutdown,
            failures,
        })
    }

    /// Agents whose controller stopped with an error, with the error.
    pub fn failures(&self) -> Vec<String> {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asks every agent to stop and waits for them.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for AgentFleet {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The engine of one node, as `kpersist-agent --simulate` builds it (without faults).
fn engine_for(
    name: &str,
    kernel: &SimKernelSpec,
    state_root: &Path,
    fetcher: &Fetcher,
) -> Result<Engine<SimKernel>> {
    let dir = state_root.join(name);
    let agent_error = |e: String| Error::Command {
        command: format!("setting up the agent of {name}"),
        status: "failed".into(),
        detail: e,
    };
    let state = StateDir::open(&dir).map_err(|e| agent_error(e.to_string()))?;
    let sim = SimKernel::new(kernel.release.clone(), kernel.build_id.clone());
    let patcher = Patcher::new(sim, state, fetcher.clone(), POLL_INTERVAL);
    let metrics = Metrics::new().map_err(|e| agent_error(e.to_string()))?;
    Ok(Engine::new(patcher, metrics))
}
