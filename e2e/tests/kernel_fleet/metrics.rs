//! The operator's and the agents' metrics, compared with what the kernels run.

use std::time::Duration;

use kpersist_crds::NodePatchState;
use kpersist_e2e::wait::{Check, wait_until};

use crate::fleet::KernelFleet;

/// What the operator's `kpersist_nodes{policy="fleet"}` series say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NodeCounts {
    total: usize,
    patched: usize,
    node_problems: usize,
}

impl NodeCounts {
    /// The counts in the operator's metrics `text`, if its states add up to its total.
    fn of(text: &str) -> Option<NodeCounts> {
        let prefix = r#"kpersist_nodes{policy="fleet",state=""#;
        let mut states = std::collections::BTreeMap::new();
        for line in text.lines() {
            let Some((state, value)) = line.strip_prefix(prefix).and_then(|l| l.split_once("\"} "))
            else {
                continue;
            };
            states.insert(
                state.to_string(),
                value.trim().parse::<f64>().ok()? as usize,
            );
        }
        let total = sample(text, r#"kpersist_selected_nodes{policy="fleet"}"#)? as usize;
        let parts: usize = states.values().sum();
        (parts == total).then(|| NodeCounts {
            total,
            patched: states.get("patched").copied().unwrap_or(0),
            node_problems: states.get("nodeProblems").copied().unwrap_or(0),
        })
    }
}

/// The value of the sample `series` (name and labels as rendered) in the metrics `text`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

impl KernelFleet {
    /// Each agent's `kpersist_agent_applied_info` names exactly the kpersist module its
    /// kernel runs and the release its LivePatchNode reports; the operator's
    /// `kpersist_nodes` counts as patched the VMs whose kernels run the `target` version,
    /// the `troubled` VMs as node problems, and every VM once.
    pub async fn metrics_agree(
        &mut self,
        target: u64,
        troubled: &[&str],
    ) -> Result<String, String> {
        let patched = self.agents_agree(target).await?;
        self.operator_agrees(&patched, troubled).await?;
        Ok(format!(
            "applied_info matches every kernel; the operator counts {} of {} patched \
             ({patched:?}), {troubled:?} as node problems, every state adding up",
            patched.len(),
            self.vms.len()
        ))
    }

    /// Each agent's `kpersist_agent_applied_info` is one series naming the module its
    /// kernel runs and its LivePatchNode's release and policy; returns the VMs whose kernels run the
    /// `target` version.
    async fn agents_agree(&mut self, target: u64) -> Result<Vec<String>, String> {
        let nodes = self.sim.watch.current();
        let mut patched = Vec::new();
        for vm in &mut self.vms {
            let name = vm.name().to_string();
            let status = vm.status().await.map_err(|e| e.to_string())?;
            let metrics = vm.agent_metrics().await.map_err(|e| e.to_string())?;
            let module = status
                .enabled()
                .into_iter()
                .find(|p| p.starts_with("kpersist_"))
                .ok_or_else(|| format!("{name}'s kernel runs no kpersist patch"))?;
            let node_status = nodes.get(&name).and_then(|n| n.status.as_ref());
            let applied = node_status
                .and_then(|s| s.applied.as_ref())
                .ok_or_else(|| format!("{name}'s LivePatchNode reports no release"))?;
            let series = format!(
                r#"kpersist_agent_applied_info{{kernel="{}",module="{module}",policy="{}",release="{}"}}"#,
                vm.kernel.release,
                applied.policy.as_deref().unwrap_or_default(),
                applied.id
            );
            if sample(&metrics, &series) != Some(1.0) {
                return Err(format!(
                    "{name}'s agent metrics lack {series} 1:\n{metrics}"
                ));
            }
            let infos = metrics
                .lines()
                .filter(|l| l.starts_with("kpersist_agent_applied_info{"))
                .count();
            if infos != 1 {
                return Err(format!(
                    "{name}'s agent exports {infos} applied_info series"
                ));
            }
            if node_status.is_some_and(|s| s.state == Some(NodePatchState::Applied))
                && applied.version == target
                && status.cmdline == format!("kpersist v{target}")
            {
                patched.push(name);
            }
        }
        Ok(patched)
    }

    /// The operator's `kpersist_nodes` counts the `patched` VMs as patched, the `troubled`
    /// ones as node problems, and every VM once.
    async fn operator_agrees(&self, patched: &[String], troubled: &[&str]) -> Result<(), String> {
        if patched.len() + troubled.len() != self.vms.len() {
            return Err(format!(
                "the kernels of {patched:?} run the target, {troubled:?} are troubled: \
                 that is not every VM"
            ));
        }
        let wanted = NodeCounts {
            total: self.vms.len(),
            patched: patched.len(),
            node_problems: troubled.len(),
        };
        let waited = wait_until(
            "the operator's kpersist_nodes to count the kernels",
            Duration::from_secs(60),
            || async {
                let text = self.sim.operator_metrics().await?;
                let counted = NodeCounts::of(&text);
                Ok(if counted == Some(wanted) {
                    Check::Done(())
                } else {
                    Check::NotYet(format!("counted {counted:?}, want {wanted:?}"))
                })
            },
        );
        waited.await.map_err(|e| e.to_string())
    }
}
