//! The operator's and the agents' metrics, compared with what the kernels run.

use kpersist_crds::NodePatchState;

use crate::fleet::KernelFleet;

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
                r#"kpersist_agent_applied_info{{kernel="{}",module="{module}",release="{}"}}"#,
                vm.kernel.release, applied.id
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
        let operator = self
            .sim
            .operator_metrics()
            .await
            .map_err(|e| e.to_string())?;
        let count = |state: &str| {
            sample(
                &operator,
                &format!(r#"kpersist_nodes{{policy="fleet",state="{state}"}}"#),
            )
        };
        let total = self.vms.len() as f64;
        if count("total") != Some(total) {
            return Err(format!(
                "the operator counts {:?} nodes, not {total}",
                count("total")
            ));
        }
        if count("patched") != Some(patched.len() as f64) {
            return Err(format!(
                "the operator counts {:?} patched nodes; the kernels of {patched:?} run their release",
                count("patched")
            ));
        }
        if count("node_problems") != Some(troubled.len() as f64) {
            return Err(format!(
                "the operator counts {:?} nodes with problems of their own, not {troubled:?}",
                count("node_problems")
            ));
        }
        let states = [
            "patched",
            "applying",
            "reverting",
            "pending",
            "failed",
            "unsupported",
            "crash_suspected",
            "node_problems",
            "unknown",
        ];
        let counted: f64 = states.iter().filter_map(|s| count(s)).sum();
        if counted != total {
            return Err(format!(
                "the operator's node states add up to {counted}, not {total}"
            ));
        }
        Ok(format!(
            "applied_info matches every kernel; the operator counts {} of {total} patched ({patched:?})",
            patched.len()
        ))
    }
}
