//! Node life in a simulated fleet: nodes join and leave, reboot (into the same or another
//! kernel), go NotReady, are cordoned or relabelled, and agents fall silent. No kubelet runs, so the
//! fleet owns the Node objects and writes what a kubelet, a node controller or an admin
//! would.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use kpersist_crds::LivePatchNode;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};

use super::{FLEET_LABEL, SimFleet, SimNode};
use crate::Result;

impl SimFleet {
    /// A node joins: its Ready Node object is created with this fleet's label and its
    /// agent started. Its name must be new to the control plane.
    pub async fn add_node(&mut self, node: SimNode) -> Result<()> {
        self.create_node_object(&node.name).await?;
        let name = node.name.clone();
        self.nodes.push(node);
        self.start_agent(&name)
    }

    /// Creates a Ready Node object named `name` with this fleet's label, for an agent the
    /// fleet does not run (a VM's).
    pub async fn create_node_object(&self, name: &str) -> Result<()> {
        let labels = BTreeMap::from([(FLEET_LABEL.to_string(), self.label.clone())]);
        self.cluster.create_node(name, &labels).await
    }

    /// A node leaves: its agent is stopped and its Node deleted, with its LivePatchNode
    /// (the Node owns it, but no garbage collector runs on this control plane).
    pub async fn remove_node(&mut self, name: &str) -> Result<()> {
        self.silence_agent(name).await?;
        self.agents.remove(name);
        self.nodes.retain(|n| n.name != name);
        let params = DeleteParams::default();
        let lpns: Api<LivePatchNode> = Api::all(self.cluster.admin.clone());
        lpns.delete(name, &params).await?;
        let nodes: Api<Node> = Api::all(self.cluster.admin.clone());
        nodes.delete(name, &params).await?;
        Ok(())
    }

    /// A node reboots into kernel `kernel_release` with build id `build_id` (its own
    /// again, or another): the agent is stopped and started on the new kernel with a new
    /// boot id, so the simulated kernel comes up with nothing loaded.
    pub async fn reboot_node(
        &mut self,
        name: &str,
        kernel_release: &str,
        build_id: &str,
    ) -> Result<()> {
        let boot_id = format!("{name}-{}", jiff::Timestamp::now().as_nanosecond());
        self.restart_agent_with(name, |node| {
            node.kernel_release = kernel_release.to_string();
            node.build_id = build_id.to_string();
            node.boot_id = Some(boot_id);
        })
        .await
    }

    /// The node's simulated kernel fails these releases from now on (`<release id>=<fault>`
    /// each): its agent is restarted on the same boot, so what it loaded stays loaded.
    pub async fn set_faults(&mut self, name: &str, faults: Vec<String>) -> Result<()> {
        self.restart_agent_with(name, |node| node.faults = faults)
            .await
    }

    /// Stops the agent of `name`, applies `change` to its node and starts it again.
    async fn restart_agent_with(
        &mut self,
        name: &str,
        change: impl FnOnce(&mut SimNode),
    ) -> Result<()> {
        self.silence_agent(name).await?;
        self.agents.remove(name);
        change(self.node_mut(name)?);
        self.start_agent(name)
    }

    /// An agent falls silent, as when its pod is gone or its node hangs: the process is
    /// killed and not restarted ([`SimFleet::restart_exited`] leaves it alone) until
    /// [`SimFleet::start_agent`]. Its LivePatchNode stays as it was.
    pub async fn silence_agent(&mut self, name: &str) -> Result<()> {
        self.node_mut(name)?;
        if let Some(agent) = self.agents.get_mut(name) {
            agent.kill().await;
        }
        Ok(())
    }

    /// The Node's Ready condition turns False, with `since` as its last transition (the
    /// moment the node controller saw it go; in the past for a node NotReady for a while).
    pub async fn set_not_ready(&self, name: &str, since: jiff::Timestamp) -> Result<()> {
        self.write_ready(name, "False", "KubeletNotReady", since)
            .await
    }

    /// The Node's Ready condition turns True again, now.
    pub async fn set_ready(&self, name: &str) -> Result<()> {
        self.write_ready(name, "True", "KubeletReady", jiff::Timestamp::now())
            .await
    }

    async fn write_ready(
        &self,
        name: &str,
        status: &str,
        reason: &str,
        since: jiff::Timestamp,
    ) -> Result<()> {
        let condition = serde_json::json!({
            "type": "Ready",
            "status": status,
            "reason": reason,
            "message": "set by the simulated fleet",
            "lastTransitionTime": since.round(jiff::Unit::Second).unwrap_or(since).to_string(),
        });
        let patch = serde_json::json!({ "status": { "conditions": [condition] } });
        let nodes: Api<Node> = Api::all(self.cluster.admin.clone());
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// Moves the Node to another fleet's label value, as relabelling a node into another
    /// pool does: this fleet's policies no longer select it. Its agent keeps running.
    pub async fn relabel(&self, name: &str, fleet: &str) -> Result<()> {
        let patch = serde_json::json!({ "metadata": { "labels": { FLEET_LABEL: fleet } } });
        let nodes: Api<Node> = Api::all(self.cluster.admin.clone());
        nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// Cordons the Node (`spec.unschedulable`), as `kubectl cordon` does, or uncordons it.
    pub async fn cordon(&self, name: &str, cordoned: bool) -> Result<()> {
        let patch = serde_json::json!({ "spec": { "unschedulable": cordoned } });
        let nodes: Api<Node> = Api::all(self.cluster.admin.clone());
        nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    fn node_mut(&mut self, name: &str) -> Result<&mut SimNode> {
        let missing = self.no_such_node(name);
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .ok_or(missing)
    }
}
