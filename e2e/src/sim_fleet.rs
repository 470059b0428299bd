//! A simulated fleet on a real control plane: Node objects, one `kpersist-agent --simulate`
//! process per node, a real `kpersist-operator` process, a signed repository served over
//! HTTP, and a watch of every LivePatchNode. The fleet suite and the demo drive it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kpersist_crds::{
    HealthSpec, LivePatchNode, LivePatchPolicy, LivePatchPolicySpec, RepositorySpec, RolloutSpec,
    Wave,
};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

use crate::controlplane::Identity;
use crate::fleet::{Cluster, NAMESPACE};
use crate::monitor::NodeWatch;
use crate::patch_repo::Publisher;
use crate::process::{Process, build_binaries, workspace_binary};
use crate::repo_server::RepoServer;
use crate::wait::{Check, wait_until};
use crate::{Error, Result};

#[path = "sim_fleet_life.rs"]
mod life;

/// Label every simulated node carries, and the policies select on. Its value names the
/// fleet (`true` for a fleet with a control plane of its own), so several fleets can share
/// one control plane without selecting each other's nodes. They run one after the other:
/// they share the operator's Lease.
pub const FLEET_LABEL: &str = "kpersist.io/e2e-fleet";

/// Name of the operator's leader-election Lease, as in the chart.
pub const OPERATOR_LEASE: &str = "kpersist-operator";

/// One simulated machine: its Node name and the kernel its agent pretends to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimNode {
    /// Node name.
    pub name: String,
    /// `uname -r` of the simulated kernel.
    pub kernel_release: String,
    /// GNU build id of the simulated kernel.
    pub build_id: String,
    /// `--sim-fail-release` values: `<release id>=<fault>`.
    pub faults: Vec<String>,
    /// Boot id the agent starts its simulated kernel with; `None` keeps the one saved in
    /// the node's state (a new node gets a fresh one). [`SimFleet::reboot_node`] sets it.
    pub boot_id: Option<String>,
}

impl SimNode {
    /// A node running `kernel_release` with build id `build_id`, without faults.
    pub fn new(name: &str, kernel_release: &str, build_id: &str) -> Self {
        Self {
            name: name.into(),
            kernel_release: kernel_release.into(),
            build_id: build_id.into(),
            faults: Vec::new(),
            boot_id: None,
        }
    }
}

/// The running fleet. Dropping it kills every process, and stops the control plane unless
/// another fleet shares it.
pub struct SimFleet {
    /// Processes go first when dropped, before the API server they talk to.
    agents: BTreeMap<String, Process>,
    /// Operator replicas by index; replica 0 is the one `start_operator` runs.
    operators: BTreeMap<u32, Process>,
    /// Watch of every LivePatchNode since before the operator started.
    pub watch: NodeWatch,
    /// The repository server; fault switches are on it.
    pub repo: RepoServer,
    /// Publishes and signs releases into the served directory.
    pub publisher: Publisher,
    /// The control plane with CRDs and RBAC, possibly shared with other fleets.
    pub cluster: Arc<Cluster>,
    nodes: Vec<SimNode>,
    scratch: tempfile::TempDir,
    operator_metrics: String,
    /// `host:port` of each started agent's /metrics.
    agent_metrics: BTreeMap<String, String>,
    /// Value of [`FLEET_LABEL`] on this fleet's nodes.
    label: String,
}

impl SimFleet {
    /// Builds the binaries, starts the control plane, the repository (empty, signed), the
    /// watch, and creates a Ready Node object per node. No operator or agent runs yet.
    pub async fn start(nodes: Vec<SimNode>) -> Result<Self> {
        build_binaries_once()?;
        let cluster = Arc::new(Cluster::start().await?);
        Self::start_on(cluster, nodes, "true").await
    }

    /// Like [`SimFleet::start`], on a control plane other fleets use before or after this
    /// one (not at the same time: they share the operator's Lease). `label` is this fleet's
    /// value of [`FLEET_LABEL`]; node names must differ from those of every other fleet on
    /// the control plane.
    pub async fn start_on(cluster: Arc<Cluster>, nodes: Vec<SimNode>, label: &str) -> Result<Self> {
        build_binaries_once()?;
        let scratch = tempfile::Builder::new()
            .prefix("kpersist-fleet-")
            .tempdir()
            .map_err(|e| Error::io(std::env::temp_dir(), e))?;
        let publisher = Publisher::init(&scratch.path().join("repo"))?;
        let repo = RepoServer::start(publisher.root()).await?;
        let labels = BTreeMap::from([(FLEET_LABEL.to_string(), label.to_string())]);
        for node in &nodes {
            cluster.create_node(&node.name, &labels).await?;
        }
        let watch = NodeWatch::start(cluster.admin.clone());
        wait_until(
            "the LivePatchNode watch to sync",
            Duration::from_secs(30),
            || {
                let synced = watch.synced();
                async move {
                    Ok(if synced {
                        Check::Done(())
                    } else {
                        Check::NotYet("not synced".into())
                    })
                }
            },
        )
        .await?;
        let operator_metrics = format!("127.0.0.1:{}", free_port()?);
        Ok(Self {
            agents: BTreeMap::new(),
            operators: BTreeMap::new(),
            watch,
            repo,
            publisher,
            cluster,
            nodes,
            scratch,
            operator_metrics,
            agent_metrics: BTreeMap::new(),
            label: label.to_string(),
        })
    }

    /// The simulated nodes.
    pub fn nodes(&self) -> &[SimNode] {
        &self.nodes
    }

    fn logs_dir(&self) -> PathBuf {
        self.cluster.plane.dir().to_path_buf()
    }

    /// Starts (or restarts) the agent of every node.
    pub fn start_agents(&mut self) -> Result<()> {
        for node in self.nodes.clone() {
            self.start_agent(&node.name)?;
        }
        Ok(())
    }

    /// Starts the agent of `name`, or restarts it if it was killed.
    pub fn start_agent(&mut self, name: &str) -> Result<()> {
        if let Some(agent) = self.agents.get_mut(name) {
            return agent.restart();
        }
        let node = self
            .nodes
            .iter()
            .find(|n| n.name == name)
            .cloned()
            .ok_or_else(|| self.no_such_node(name))?;
        let state_dir = self.scratch.path().join("agents").join(name);
        std::fs::create_dir_all(&state_dir).map_err(|e| Error::io(&state_dir, e))?;
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let mut args = vec![
            "--simulate".to_string(),
            "--sim-kernel-release".into(),
            node.kernel_release.clone(),
            "--sim-build-id".into(),
            node.build_id.clone(),
            "--node-name".into(),
            node.name.clone(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--metrics-addr".into(),
            metrics.clone(),
        ];
        for fault in &node.faults {
            args.push("--sim-fail-release".into());
            args.push(fault.clone());
        }
        if let Some(boot_id) = &node.boot_id {
            args.push("--sim-boot-id".into());
            args.push(boot_id.clone());
        }
        let process = Process::spawn(
            &format!("agent {name}"),
            &workspace_binary("kpersist-agent")?,
            &args,
            &self.kube_env(Identity::Agent),
            &self.logs_dir().join(format!("agent-{name}.log")),
        )?;
        self.agents.insert(name.to_string(), process);
        self.agent_metrics.insert(name.to_string(), metrics);
        Ok(())
    }

    /// `host:port` of the /metrics of each agent started so far, by node name.
    pub fn agent_metrics_addrs(&self) -> &BTreeMap<String, String> {
        &self.agent_metrics
    }

    /// The error for a node name this fleet does not have.
    fn no_such_node(&self, name: &str) -> Error {
        Error::Malformed {
            path: self.logs_dir(),
            problem: format!("no simulated node named {name}"),
        }
    }

    /// The agent process of a node, to kill or inspect.
    pub fn agent(&mut self, name: &str) -> Option<&mut Process> {
        self.agents.get_mut(name)
    }

    /// Starts the operator, or restarts it if it was killed. It runs with leader election
    /// on, as in the chart, so the RBAC for its Lease is exercised too.
    pub fn start_operator(&mut self) -> Result<()> {
        self.start_operator_replica(0)
    }

    /// Starts operator replica `index` (its leader-election identity is
    /// [`SimFleet::operator_identity`]), or restarts it if it was killed. Replicas other
    /// than 0 serve their metrics on a port of their own.
    pub fn start_operator_replica(&mut self, index: u32) -> Result<()> {
        if let Some(operator) = self.operators.get_mut(&index) {
            return operator.restart();
        }
        let metrics = if index == 0 {
            self.operator_metrics.clone()
        } else {
            format!("127.0.0.1:{}", free_port()?)
        };
        let args = vec![
            "--metrics-addr".to_string(),
            metrics,
            "--lease-namespace".into(),
            NAMESPACE.into(),
            "--lease-name".into(),
            OPERATOR_LEASE.into(),
        ];
        let mut env = self.kube_env(Identity::Operator);
        env.push(("POD_NAME".into(), self.operator_identity(index)));
        let (name, log) = if index == 0 {
            ("operator".to_string(), "operator.log".to_string())
        } else {
            (format!("operator-{index}"), format!("operator-{index}.log"))
        };
        let log = self.logs_dir().join(format!("{}{log}", self.log_prefix()));
        let process = Process::spawn(
            &name,
            &workspace_binary("kpersist-operator")?,
            &args,
            &env,
            &log,
        )?;
        self.operators.insert(index, process);
        Ok(())
    }

    /// The leader-election identity of operator replica `index`, as the Lease's
    /// `holderIdentity` names it. Fleets sharing a control plane share the chart's Lease
    /// (its RBAC allows no other); replica 0 of the next fleet has the identity of replica
    /// 0 of the last one, so it takes the Lease at once, as a restarted pod would.
    pub fn operator_identity(&self, index: u32) -> String {
        format!("{OPERATOR_LEASE}-{index}")
    }

    /// The operator process (replica 0), to kill or inspect.
    pub fn operator(&mut self) -> Option<&mut Process> {
        self.operators.get_mut(&0)
    }

    /// Operator replica `index`, to kill or inspect.
    pub fn operator_replica(&mut self, index: u32) -> Option<&mut Process> {
        self.operators.get_mut(&index)
    }

    /// Log files of a fleet sharing its control plane start with its label.
    fn log_prefix(&self) -> String {
        if self.label == "true" {
            String::new()
        } else {
            format!("{}-", self.label)
        }
    }

    /// `host:port` of the operator's /metrics.
    pub fn operator_metrics_addr(&self) -> &str {
        &self.operator_metrics
    }

    /// The operator's Prometheus metrics, as text.
    pub async fn operator_metrics(&self) -> Result<String> {
        fetch_metrics(&self.operator_metrics).await
    }

    fn kube_env(&self, identity: Identity) -> Vec<(String, String)> {
        vec![
            (
                "KUBECONFIG".into(),
                self.cluster
                    .plane
                    .kubeconfig(identity)
                    .display()
                    .to_string(),
            ),
            ("RUST_LOG".into(), "info".into()),
        ]
    }

    /// A policy selecting every simulated node, trusting the repository's key, checking it
    /// every two seconds, with the given waves and `max_in_flight`.
    pub fn policy(&self, name: &str, waves: Vec<Wave>, max_in_flight: u32) -> LivePatchPolicy {
        let selector = LabelSelector {
            match_labels: Some(BTreeMap::from([(
                FLEET_LABEL.to_string(),
                self.label.clone(),
            )])),
            ..LabelSelector::default()
        };
        let spec = LivePatchPolicySpec {
            node_selector: selector,
            repository: RepositorySpec {
                url: self.repo.url(),
                channel: "stable".into(),
                trusted_keys: vec![self.publisher.public_key()],
                trusted_keys_secret: None,
                ca_bundle: None,
                allowed_redirect_hosts: Vec::new(),
                check_interval: "2s".into(),
                delay: None,
                pinned_version: None,
            },
            rollout: RolloutSpec {
                waves,
                max_in_flight,
                ..RolloutSpec::default()
            },
            health: HealthSpec {
                transition_timeout: "5s".into(),
                ..HealthSpec::default()
            },
        };
        LivePatchPolicy::new(name, spec)
    }

    /// Creates a policy as the admin.
    pub async fn create_policy(&self, policy: &LivePatchPolicy) -> Result<()> {
        Api::<LivePatchPolicy>::all(self.cluster.admin.clone())
            .create(&PostParams::default(), policy)
            .await?;
        Ok(())
    }

    /// Merge-patches a policy's spec as the admin (e.g. to pause it).
    pub async fn patch_policy(&self, name: &str, spec: serde_json::Value) -> Result<()> {
        let patch = serde_json::json!({ "spec": spec });
        Api::<LivePatchPolicy>::all(self.cluster.admin.clone())
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// Waits until `check` holds for the policy `name`.
    pub async fn wait_policy<T>(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&LivePatchPolicy) -> Check<T>,
    ) -> Result<T> {
        let api: Api<LivePatchPolicy> = Api::all(self.cluster.admin.clone());
        let what = format!("policy {name}: {what}");
        wait_until(&what, timeout, || {
            let api = api.clone();
            let check = &check;
            async move {
                Ok(match api.get_opt(name).await? {
                    Some(policy) => check(&policy),
                    None => Check::NotYet("the policy does not exist".into()),
                })
            }
        })
        .await
    }

    /// Waits until `check` holds for the set of every LivePatchNode (by name).
    pub async fn wait_nodes<T>(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&BTreeMap<String, LivePatchNode>) -> Check<T>,
    ) -> Result<T> {
        let api: Api<LivePatchNode> = Api::all(self.cluster.admin.clone());
        wait_until(what, timeout, || {
            let api = api.clone();
            let check = &check;
            async move {
                let nodes = api
                    .list(&Default::default())
                    .await?
                    .items
                    .into_iter()
                    .map(|n| (n.metadata.name.clone().unwrap_or_default(), n))
                    .collect();
                Ok(check(&nodes))
            }
        })
        .await
    }

    /// Starts again every operator replica and agent that exited by itself (not one
    /// killed on purpose and not yet restarted), as a kubelet restarts a container that
    /// stopped: an operator that loses its Lease steps down by exiting. Returns each one
    /// restarted, with how it had exited.
    pub async fn restart_exited(&mut self) -> Result<Vec<String>> {
        let mut restarted = Vec::new();
        let processes = self.operators.values_mut().chain(self.agents.values_mut());
        for process in processes {
            match process.exit_status() {
                None => {}
                Some(status) if status == "killed" => {}
                Some(status) => {
                    // Reaps the exited child so that restart starts a new one.
                    process.kill().await;
                    process.restart()?;
                    restarted.push(format!("{} ({status})", process.name()));
                }
            }
        }
        Ok(restarted)
    }

    /// A summary of every process that is not running, with its log's tail, for failure
    /// messages.
    pub fn process_report(&mut self) -> String {
        let mut report = String::new();
        let processes = self.operators.values_mut().chain(self.agents.values_mut());
        for process in processes {
            if let Some(status) = process.exit_status() {
                report.push_str(&format!(
                    "\n{} exited ({status}); last lines of {}:\n{}\n",
                    process.name(),
                    process.log().display(),
                    process.log_tail(15)
                ));
            }
        }
        report
    }
}

/// Builds the operator and agent once per test process; later fleets reuse the result.
fn build_binaries_once() -> Result<()> {
    static BUILT: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !*built {
        build_binaries(&["kpersist-operator", "kpersist-agent"])?;
        *built = true;
    }
    Ok(())
}

/// The common waves: a one-node canary baking `canary_bake`, then every other node.
pub fn canary_then_all(canary_bake: &str) -> Vec<Wave> {
    vec![
        Wave {
            nodes: Some(1),
            percent: None,
            bake: canary_bake.into(),
        },
        Wave {
            nodes: None,
            percent: Some(100),
            bake: "0s".into(),
        },
    ]
}

/// The Prometheus metrics served at `http://<addr>/metrics`, as text.
pub async fn fetch_metrics(addr: &str) -> Result<String> {
    crate::install_crypto_provider();
    let url = format!("http://{addr}/metrics");
    let fetched = async { reqwest::get(&url).await?.error_for_status()?.text().await };
    fetched.await.map_err(|e| Error::Command {
        command: format!("GET {url}"),
        status: "failed".into(),
        detail: e.to_string(),
    })
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(Error::Listen)?;
    Ok(listener.local_addr().map_err(Error::Listen)?.port())
}
