//! The node-life scenarios on real kernels: an agent killed, a clean reboot, a reboot into
//! the other kernel line, a release whose transition stalls.

use std::time::{Duration, Instant};

use kpersist_crds::{LivePatchPolicy, NodeErrorReason, PatchAction};
use kpersist_e2e::wait::Check;

use crate::fleet::{KernelFleet, ROLLOUT, runs};

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
        self.assert_blameless().await?;
        Ok(format!(
            "init answering {:.0} s after the reboot, {patch} loaded again after {:.0} s",
            booted.as_secs_f64(),
            took.as_secs_f64()
        ))
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

    /// Publishes the stall patch as `version` with the stall helper loaded everywhere:
    /// each build's canary stalls, the agent reverses the transition, the release is
    /// marked bad, and no other VM is ever asked for it.
    pub async fn stalled_release_is_contained(&mut self, version: u64) -> Result<String, String> {
        let timeout = serde_json::json!({"health": {"transitionTimeout": "15s"}});
        self.sim
            .patch_policy("fleet", timeout)
            .await
            .map_err(|e| e.to_string())?;
        for vm in &mut self.vms {
            vm.command("load-helper").await.map_err(|e| e.to_string())?;
        }
        self.publish_module("kpersist_stall_patch", version);
        let releases: Vec<String> = self
            .kernels
            .values()
            .map(|k| format!("{}/v{version}", k.release))
            .collect();
        let wanted = releases.clone();
        let waited = self
            .sim
            .wait_policy("fleet", "to mark the stalling releases bad", ROLLOUT, |p| {
                let bad: Vec<String> = bad_releases(p);
                if wanted.iter().all(|r| bad.contains(r)) {
                    Check::Done(())
                } else {
                    Check::NotYet(format!("bad so far: {bad:?}"))
                }
            })
            .await;
        waited.map_err(|e| e.to_string())?;
        let mut notes = Vec::new();
        for release in &releases {
            let asked = self.sim.watch.ever_desired(release);
            if asked.len() != 1 {
                return Err(format!(
                    "{release} was asked of {asked:?}, not its canary alone"
                ));
            }
            notes.push(format!("{release} only on {asked:?}"));
        }
        let nodes = self.sim.watch.current();
        for vm in &mut self.vms {
            let status = vm.status().await.map_err(|e| e.to_string())?;
            let name = vm.name().to_string();
            if status.patches.iter().any(|p| p.0 == "kpersist_stall_patch") {
                return Err(format!("{name}: the stalled patch is still in the kernel"));
            }
            if status.enabled() != ["kpersist_v2"] {
                return Err(format!(
                    "{name}: enabled {:?}, not [kpersist_v2]",
                    status.enabled()
                ));
            }
            let stalled = nodes
                .get(&name)
                .and_then(|n| n.status.as_ref())
                .and_then(|s| s.last_error.as_ref())
                .is_some_and(|e| e.reason == NodeErrorReason::TransitionStalled);
            if stalled {
                notes.push(format!("{name} reported TransitionStalled"));
            }
        }
        Ok(notes.join("; "))
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

fn bad_releases(policy: &LivePatchPolicy) -> Vec<String> {
    policy
        .status
        .iter()
        .flat_map(|s| &s.bad_releases)
        .map(|b| b.release.clone())
        .collect()
}
