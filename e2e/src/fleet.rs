//! A cluster ready for kpersist: the control plane with the CRDs from `crds/`, the
//! `kpersist` namespace and the chart's RBAC installed, and Node objects standing in for
//! the machines simulated agents pretend to run on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeStatus, ServiceAccount};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};

use crate::controlplane::{ControlPlane, Identity};
use crate::{Error, Result};

/// Namespace the chart installs into, and whose service accounts the tokens name.
pub const NAMESPACE: &str = "kpersist";
/// Helm release name used when rendering the chart's RBAC, so names match the tokens.
pub const RELEASE: &str = "kpersist";

/// The service account every agent runs as (the chart's DaemonSet's).
pub const AGENT_ACCOUNT: &str = "kpersist-agent";

/// The repository root (the workspace directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A control plane with kpersist's CRDs, namespace and RBAC in place.
pub struct Cluster {
    /// The running etcd and API server.
    pub plane: ControlPlane,
    /// A client acting as `admin`.
    pub admin: kube::Client,
}

impl Cluster {
    /// Starts a control plane and installs the CRDs, the namespace and the RBAC.
    pub async fn start() -> Result<Self> {
        let plane = ControlPlane::start().await?;
        let admin = plane.client(Identity::Admin).await?;
        let cluster = Self { plane, admin };
        cluster.install_crds().await?;
        cluster
            .plane
            .kubectl(Identity::Admin, &["create", "namespace", NAMESPACE])
            .await?;
        cluster.install_rbac().await?;
        Ok(cluster)
    }

    /// A kubeconfig of the agents' service account with a token of its own, as the
    /// kubelet gives each agent pod: issued by the API server through a TokenRequest (valid
    /// for two hours). Creates the service account the first time, as the chart does.
    pub async fn agent_kubeconfig(&self) -> Result<String> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.admin.clone(), NAMESPACE);
        if accounts.get_opt(AGENT_ACCOUNT).await?.is_none() {
            let mut account = ServiceAccount::default();
            account.metadata.name = Some(AGENT_ACCOUNT.into());
            accounts.create(&PostParams::default(), &account).await?;
        }
        let request = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(7200),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let issued = accounts
            .create_token_request(AGENT_ACCOUNT, &PostParams::default(), &request)
            .await?;
        let path = self.plane.kubeconfig(Identity::Agent);
        let shared = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let token = issued.status.map(|s| s.token).unwrap_or_default();
        with_token(&shared, &token).ok_or_else(|| Error::Malformed {
            path,
            problem: "no single `token:` line to put the agent's own token in".into(),
        })
    }

    /// Applies `crds/*.yaml` with kubectl and waits until the API serves them.
    pub async fn install_crds(&self) -> Result<()> {
        let crds = workspace_root().join("crds");
        let files = ["livepatchpolicies.yaml", "livepatchnodes.yaml"].map(|f| crds.join(f));
        let mut args = vec!["apply"];
        for file in &files {
            args.push("-f");
            args.push(file.to_str().unwrap_or_default());
        }
        self.plane.kubectl(Identity::Admin, &args).await?;
        self.plane
            .kubectl(
                Identity::Admin,
                &[
                    "wait",
                    "--for=condition=Established",
                    "--timeout=60s",
                    "crd/livepatchpolicies.kpersist.io",
                    "crd/livepatchnodes.kpersist.io",
                ],
            )
            .await?;
        Ok(())
    }

    /// Applies the operator's and the agent's RBAC (see [`rbac_manifests`]).
    pub async fn install_rbac(&self) -> Result<()> {
        let manifests = rbac_manifests().await?;
        let path = self.plane.dir().join("rbac.yaml");
        std::fs::write(&path, manifests).map_err(|e| Error::io(&path, e))?;
        self.plane
            .kubectl(
                Identity::Admin,
                &["apply", "-f", path.to_str().unwrap_or_default()],
            )
            .await?;
        Ok(())
    }

    /// Creates a Node object named `name` with `labels`, Ready.
    pub async fn create_node(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.admin.clone());
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some(labels.clone()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        };
        nodes.create(&PostParams::default(), &node).await?;
        self.set_node_ready(name, true).await
    }

    /// Sets the Ready condition of a Node, as its kubelet would.
    pub async fn set_node_ready(&self, name: &str, ready: bool) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.admin.clone());
        let status = NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                reason: Some(
                    if ready {
                        "KubeletReady"
                    } else {
                        "KubeletNotReady"
                    }
                    .into(),
                ),
                message: Some("set by the kpersist fleet suite".into()),
                last_heartbeat_time: None,
                last_transition_time: None,
            }]),
            ..NodeStatus::default()
        };
        let patch = serde_json::json!({ "status": status });
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }
}

/// The RBAC objects of the operator and the agent: the chart's own templates rendered with
/// `helm template` when a helm binary is found ($KPERSIST_HELM, `helm` on the PATH, or the
/// one `e2e/tools/helm.sh` keeps in the cache), else `e2e/rbac/kpersist-rbac.yaml`, a
/// rendering of the same templates for release `kpersist` in namespace `kpersist`.
pub async fn rbac_manifests() -> Result<String> {
    if let Some(helm) = find_helm() {
        let chart = workspace_root().join("helm").join("kpersist");
        let mut command = tokio::process::Command::new(&helm);
        command
            .args(["template", RELEASE])
            .arg(&chart)
            .args(["--namespace", NAMESPACE])
            .args(["--show-only", "templates/operator/rbac.yaml"])
            .args(["--show-only", "templates/agent/rbac.yaml"]);
        let display = format!("{} template {}", helm.display(), chart.display());
        return crate::process::output_of(&mut command, &display).await;
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("rbac")
        .join("kpersist-rbac.yaml");
    std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))
}

fn find_helm() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KPERSIST_HELM") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("helm"))
            .find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| {
        // The script that the chart and cluster suites use: it fetches helm once and prints
        // the directory it keeps it in.
        let script = workspace_root().join("e2e").join("tools").join("helm.sh");
        let output = std::process::Command::new(script).output().ok()?;
        let dir = String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()?
            .to_string();
        let helm = PathBuf::from(dir).join("helm");
        (output.status.success() && helm.is_file()).then_some(helm)
    })
}

/// Default time limit for a cluster-side wait in the suites.
pub const WAIT: Duration = Duration::from_secs(60);

/// `kubeconfig` with `token` in place of its one user token; `None` unless it has exactly
/// one `token:` line.
fn with_token(kubeconfig: &str, token: &str) -> Option<String> {
    let mut replaced = 0;
    let lines: Vec<String> = kubeconfig
        .lines()
        .map(|line| match line.split_once("token: ") {
            Some((indent, _)) if indent.trim().is_empty() => {
                replaced += 1;
                format!("{indent}token: {token}")
            }
            _ => line.to_string(),
        })
        .collect();
    (replaced == 1 && !token.is_empty()).then(|| lines.join("\n"))
}
