//! The node-life scenarios on real kernels: an agent killed, a clean reboot, a reboot into
//! the other kernel line, a foreign livepatch.

use std::time::{Duration, Instant};

use kpersist_crds::{NodeErrorReason, PatchAction};
use kpersist_e2e::vm::Vm;
use kpersist_e2e::wait::{Check, wait_until};

use crate::fleet::{KernelFleet, ROLLOUT, runs};
use crate::metrics::sample;

/// How long a rebooted VM may take to load its release again.
const REAPPLY: Duration = Duration::from_secs(120);

impl KernelFleet {
    /// Kills the agent of `name` as release `version` is published and starts it again
    /// once the operator has asked the node for it: meanwhile the kernel keeps the patch it
    /// had.
    pub async fn kill_agent_until_asked(
        &mut self,
        name: &str,
        version: u64,
    ) -> Result<String, String> {
        let vm = self.vm(name);
        vm.command("kill-agent").await.map_err(|e| e.to_string())?;
        let release = KernelFleet::release_of(vm, version);
        let waited = self
            .sim
            .wait_nodes(
                &format!("{name} to be asked for {release}"),
                ROLLOUT,
                |nodes| {
                    let asked = nodes
                        .get(name)
                        .and_then(|n| n.spec.desired.as_ref())
                        .is_some_and(|d| {
                            d.action == PatchAction::Apply
                                && d.release.as_ref().is_some_and(|r| r.id == release)
                        });
                    if asked {
                        Check::Done(())
                    } else {
                        Check::NotYet("not asked yet".into())
                    }
                },
            )
            .await;
        waited.map_err(|e| e.to_string())?;
        let vm = self.vm(name);
        let status = vm.status().await.map_err(|e| e.to_string())?;
        let kept = format!("kpersist_v{}", version - 1);
        if status.agent_up || status.enabled() != [kept.as_str()] {
            return Err(format!(
                "{name} with its agent killed: agent up {}, enabled {:?}, not [{kept}]",
                status.agent_up,
                status.enabled()
            ));
        }
        vm.command("start-agent").await.map_err(|e| e.to_string())?;
        Ok(format!(
            "{name}'s kernel kept {kept} while its agent was down"
        ))
    }

    /// Reboots `name` cleanly; its agent loads release `version` again on its own, and
    /// nothing is counted against the release.
    pub async fn reboot_reapplies(&mut self, name: &str, version: u64) -> Result<String, String> {
        let patch = format!("kpersist_v{version}");
        let vm = self.vm(name);
        let started = Instant::now();
        vm.reboot().await.map_err(|e| e.to_string())?;
        let booted = started.elapsed();
        loop {
            let status = vm.status().await.map_err(|e| e.to_string())?;
            if status.enabled() == [patch.as_str()] {
                break;
            }
            if started.elapsed() > REAPPLY {
                return Err(format!(
                    "{name} did not load {patch} again within {REAPPLY:?} of its reboot: {status:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let took = started.elapsed();
        self.figures.insert(
            format!("{name}: clean reboot to {patch} loaded again"),
            took,
        );
        let agent = self.start_to_applied(name).await?;
        self.figures.insert(
            format!("{name}: agent start to Applied after the reboot"),
            Duration::from_secs_f64(agent),
        );
        self.assert_blameless().await?;
        Ok(format!(
            "init answering {:.0} s after the reboot, {patch} loaded again after {:.0} s \
             ({agent:.1} s after the agent started)",
            booted.as_secs_f64(),
            took.as_secs_f64()
        ))
    }

    /// The agent's own figure from its start to its first Applied, once it has one (it
    /// records it just after the kernel's transition ends).
    async fn start_to_applied(&mut self, name: &str) -> Result<f64, String> {
        let series = "kpersist_agent_start_to_applied_seconds";
        let vm: &Vm = self.vm(name);
        let what = format!("{name}'s agent to export {series}");
        let waited = wait_until(&what, Duration::from_secs(30), || async move {
            let metrics = vm.agent_metrics().await?;
            Ok(match sample(&metrics, series) {
                Some(seconds) if seconds > 0.0 => Check::Done(seconds),
                other => Check::NotYet(format!("{series} = {other:?}")),
            })
        });
        waited.await.map_err(|e| e.to_string())
    }

    /// Shuts `name` down and boots it on the other kernel line: its LivePatchNode shows the
    /// new kernel, it gets that build's release `version`, and nothing counts as a failure.
    pub async fn reboot_into_other_line(
        &mut self,
        name: &str,
        version: u64,
    ) -> Result<String, String> {
        let current = self.vm(name).kernel.release.clone();
        let other = self
            .kernels
            .values()
            .find(|k| k.release != current)
            .cloned()
            .ok_or("only one kernel line")?;
        let vm = self.vm(name);
        vm.boot_into(other.clone())
            .await
            .map_err(|e| e.to_string())?;
        let release = KernelFleet::release_of(vm, version);
        let waited = self
            .sim
            .wait_nodes(&format!("{name} to run {release}"), ROLLOUT, |nodes| {
                let node = nodes.get(name);
                let kernel = node
                    .and_then(|n| n.status.as_ref())
                    .and_then(|s| s.kernel_release.clone());
                if kernel.as_deref() == Some(other.release.as_str()) && runs(node, &release) {
                    Check::Done(())
                } else {
                    Check::NotYet(format!("kernel {kernel:?}"))
                }
            })
            .await;
        waited.map_err(|e| e.to_string())?;
        let status = self.vm(name).status().await.map_err(|e| e.to_string())?;
        let patch = format!("kpersist_v{version}");
        if status.enabled() != [patch.as_str()] {
            return Err(format!(
                "{name} on {}: enabled {:?}",
                other.release,
                status.enabled()
            ));
        }
        self.assert_blameless().await?;
        Ok(format!(
            "{name} moved from {current} to {} and runs {release}",
            other.release
        ))
    }

    /// Loads the foreign livepatch on `name`, then publishes v`version` (kpersist_v5)
    /// everywhere: `name`'s agent refuses it with ForeignLivepatch and the foreign patch
    /// stays enabled beside the kpersist patch it had; every other VM takes the release,
    /// which is not held against it.
    pub async fn foreign_livepatch_is_left_alone(
        &mut self,
        name: &str,
        version: u64,
    ) -> Result<String, String> {
        self.tune_policy("5s", "60s").await?;
        let vm = self.vm(name);
        let loaded = vm
            .command("load-foreign")
            .await
            .map_err(|e| e.to_string())?;
        if let Some(error) = loaded.iter().find(|l| l.starts_with("error")) {
            return Err(format!("{name}: load-foreign: {error}"));
        }
        let kept = vm
            .status()
            .await
            .map_err(|e| e.to_string())?
            .enabled()
            .join(",");
        if kept != "kpersist_v2,foreign_patch" && kept != "foreign_patch,kpersist_v2" {
            return Err(format!(
                "{name} with the foreign patch loaded: enabled {kept}"
            ));
        }
        self.publish_module(&format!("kpersist_v{version}"), version);
        let wanted: Vec<(String, String)> = self
            .vms
            .iter()
            .filter(|vm| vm.name() != name)
            .map(|vm| (vm.name().to_string(), KernelFleet::release_of(vm, version)))
            .collect();
        let waited = self
            .sim
            .wait_nodes(
                &format!("the others to run v{version}, {name} to refuse it"),
                ROLLOUT,
                |nodes| {
                    let refused = nodes
                        .get(name)
                        .and_then(|n| n.status.as_ref())
                        .and_then(|s| s.last_error.as_ref())
                        .is_some_and(|e| e.reason == NodeErrorReason::ForeignLivepatch);
                    let behind: Vec<&String> = wanted
                        .iter()
                        .filter(|(node, release)| !runs(nodes.get(node), release))
                        .map(|(node, _)| node)
                        .collect();
                    if refused && behind.is_empty() {
                        Check::Done(())
                    } else {
                        Check::NotYet(format!("refused {refused}, behind {behind:?}"))
                    }
                },
            )
            .await;
        waited.map_err(|e| e.to_string())?;
        let patched = wanted.len() as u32;
        let settled = self
            .sim
            .wait_policy(
                "fleet",
                &format!("to count {patched} patched and {name} as a node problem"),
                ROLLOUT,
                |p| {
                    let status = p.status.clone().unwrap_or_default();
                    if status.nodes.patched == patched && status.nodes.node_problems == 1 {
                        Check::Done(status)
                    } else {
                        Check::NotYet(format!("{:?}", status.nodes))
                    }
                },
            )
            .await;
        let status = settled.map_err(|e| e.to_string())?;
        let suffix = format!("/v{version}");
        let bad = status.bad_releases.iter().map(|b| &b.release);
        let late = status.late_failures.iter().map(|l| &l.release);
        let blamed: Vec<&String> = bad.chain(late).filter(|r| r.ends_with(&suffix)).collect();
        if !blamed.is_empty() {
            return Err(format!("held against the release: {blamed:?}"));
        }
        let status = self.vm(name).status().await.map_err(|e| e.to_string())?;
        let enabled = status.enabled();
        if !enabled.contains(&"foreign_patch") || !enabled.contains(&"kpersist_v2") {
            return Err(format!("{name} after refusing: enabled {enabled:?}"));
        }
        let patch = format!("kpersist_v{version}");
        for (node, _) in &wanted {
            let status = self.vm(node).status().await.map_err(|e| e.to_string())?;
            if status.enabled() != [patch.as_str()] {
                return Err(format!("{node}: enabled {:?}", status.enabled()));
            }
        }
        Ok(format!(
            "{name} refused with ForeignLivepatch and keeps foreign_patch and kpersist_v2; \
             the others run {patch}; v{version} is held against nothing"
        ))
    }

    /// The policy holds nothing against any release: none bad, no late failure, no node
    /// failed.
    async fn assert_blameless(&self) -> Result<(), String> {
        let blameless = self
            .sim
            .wait_policy("fleet", "to hold nothing against a release", ROLLOUT, |p| {
                let status = p.status.clone().unwrap_or_default();
                if status.bad_releases.is_empty()
                    && status.late_failures.is_empty()
                    && status.nodes.failed == 0
                {
                    Check::Done(())
                } else {
                    Check::NotYet(format!(
                        "bad {:?}, late {:?}, failed {}",
                        status.bad_releases, status.late_failures, status.nodes.failed
                    ))
                }
            })
            .await;
        blameless.map_err(|e| e.to_string())
    }
}
