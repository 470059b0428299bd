//! Releases at fault on real kernels: one whose transition stalls on its canary, one that
//! panics the kernel some time after its transition.

use std::time::{Duration, Instant};

use kpersist_crds::{LivePatchPolicy, NodeErrorReason, NodePatchState};
use kpersist_e2e::monitor::Object;
use kpersist_e2e::wait::Check;

use crate::fleet::{KernelFleet, ROLLOUT, runs};

/// What the crash release's patched function panics with.
const CRASH_MESSAGE: &str = "Kernel panic - not syncing: kpersist_crash:";

impl KernelFleet {
    /// Publishes the stall patch as `version` with the stall helper loaded everywhere:
    /// each build's canary stalls, the agent reverses the transition, the release is
    /// marked bad, and no other VM is ever asked for it.
    pub async fn stalled_release_is_contained(&mut self, version: u64) -> Result<String, String> {
        self.tune_policy("5s", "15s").await?;
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

    /// Publishes the crash release as `version` for the 6.12 build only, with a canary
    /// bake longer than a crash and reboot take: the canary applies it, the harness
    /// triggers the patched function, the kernel panics and the VM reboots (`panic=5`);
    /// the agent finds the unclean end on probation, reports CrashSuspected and does not
    /// load the release again; the operator marks it bad and sends the canary back to v2,
    /// no other VM is ever asked for it, and the VM does not crash a second time.
    pub async fn crash_on_probation(&mut self, version: u64) -> Result<String, String> {
        self.tune_policy("600s", "60s").await?;
        let kernel = self.kernels["612"].clone();
        self.publish_for(&kernel, "kpersist_crash", version);
        let release = format!("{}/v{version}", kernel.release);
        let canary = self.canary_on_probation(&release).await?;
        let vm = self.vm(&canary);
        vm.read_version().await.map_err(|e| e.to_string())?;
        let crashed = Instant::now();
        vm.wait_rebooted_after(CRASH_MESSAGE)
            .await
            .map_err(|e| e.to_string())?;
        let back = crashed.elapsed();
        self.figures
            .insert(format!("{canary}: panic to init answering again"), back);
        let bad = self
            .sim
            .wait_policy("fleet", &format!("to mark {release} bad"), ROLLOUT, |p| {
                if bad_releases(p).contains(&release) {
                    Check::Done(())
                } else {
                    Check::NotYet(format!("bad so far: {:?}", bad_releases(p)))
                }
            })
            .await;
        bad.map_err(|e| e.to_string())?;
        self.wait_all_run(2).await?;
        self.crash_reported(&canary, &release)?;
        self.no_second_crash(&canary).await?;
        Ok(format!(
            "{canary} panicked, was back after {:.0} s, reported CrashSuspected, refuses \
             {release}, which is bad and was asked of no other node; it runs v2 again",
            back.as_secs_f64()
        ))
    }

    /// Waits for the first node to run `release` and checks it is on probation with the
    /// crash release live in its kernel; returns its name.
    async fn canary_on_probation(&mut self, release: &str) -> Result<String, String> {
        let canary = self
            .sim
            .wait_nodes(
                &format!("a canary to run {release}"),
                ROLLOUT,
                |nodes| match nodes.iter().find(|(_, n)| runs(Some(n), release)) {
                    Some((name, node)) => Check::Done((name.clone(), node.clone())),
                    None => Check::NotYet("no node runs it yet".into()),
                },
            )
            .await;
        let (canary, node) = canary.map_err(|e| e.to_string())?;
        let on_probation = node
            .status
            .as_ref()
            .is_some_and(|s| s.probation_until.is_some());
        if !on_probation {
            return Err(format!("{canary} runs {release} but reports no probation"));
        }
        let status = self.vm(&canary).status().await.map_err(|e| e.to_string())?;
        if status.enabled() != ["kpersist_crash"] || status.cmdline != "kpersist crash" {
            return Err(format!(
                "{canary} runs {release}, but its kernel: {status:?}"
            ));
        }
        Ok(canary)
    }

    /// The canary reported CrashSuspected at some point, refuses `release` now, and no
    /// other node was ever asked for it.
    fn crash_reported(&self, canary: &str, release: &str) -> Result<(), String> {
        let reported = self.sim.watch.log().iter().any(|seen| match &seen.object {
            Object::Node(n) => {
                n.metadata.name.as_deref() == Some(canary)
                    && n.status.as_ref().is_some_and(|s| {
                        s.state == Some(NodePatchState::CrashSuspected)
                            || s.last_error
                                .as_ref()
                                .is_some_and(|e| e.reason == NodeErrorReason::CrashSuspected)
                    })
            }
            Object::Policy(_) => false,
        });
        if !reported {
            return Err(format!("{canary} never reported CrashSuspected"));
        }
        let asked = self.sim.watch.ever_desired(release);
        if asked.len() != 1 || !asked.contains(canary) {
            return Err(format!(
                "{release} was asked of {asked:?}, not {canary} alone"
            ));
        }
        let refused = self
            .sim
            .watch
            .current()
            .get(canary)
            .and_then(|n| n.status.as_ref())
            .is_some_and(|s| s.refused_releases.iter().any(|r| r == release));
        if !refused {
            return Err(format!("{canary} does not list {release} as refused"));
        }
        Ok(())
    }

    /// The canary runs v2 again, whose `/proc/version` answers without a panic: reading it
    /// once more leaves the console with the one panic of the crash.
    async fn no_second_crash(&mut self, canary: &str) -> Result<(), String> {
        let vm = self.vm(canary);
        vm.read_version().await.map_err(|e| e.to_string())?;
        // The guest reads a second after answering; a panic would show by then.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let status = vm.status().await.map_err(|e| e.to_string())?;
        if status.enabled() != ["kpersist_v2"] {
            return Err(format!(
                "{canary} after the crash: enabled {:?}",
                status.enabled()
            ));
        }
        let console = std::fs::read_to_string(vm.console()).map_err(|e| e.to_string())?;
        let panics = console.matches(CRASH_MESSAGE).count();
        if panics != 1 {
            return Err(format!("{canary}'s console shows {panics} panics, not 1"));
        }
        Ok(())
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
