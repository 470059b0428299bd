//! The health gate on a real Prometheus: a wave failed by real scraped series, and a wave
//! held while the gate cannot be evaluated.

use std::time::{Duration, Instant};

use kpersist_crds::{LivePatchNode, LivePatchPolicy, NodePatchState, PolicyPhase};
use kpersist_e2e::wait::Check;

use crate::suite::{KERNEL, Monitoring, POLICY};

/// How long a rollout of the simulated fleet may take.
pub const ROLLOUT: Duration = Duration::from_secs(180);

/// The release id of `version`.
pub fn release(version: u64) -> String {
    format!("{}/v{version}", KERNEL.0)
}

impl Monitoring {
    /// Publishes `version` under a gated policy whose canary bakes a minute; once the
    /// canary runs it and the wave bakes, the workload's errors go to 5: the gate's next
    /// query fails the wave, the release is marked bad with the gate's reading and the
    /// canary goes back; no other node was asked for it.
    pub async fn gate_fails_the_wave(&mut self, version: u64) -> Result<String, String> {
        self.publish(version)?;
        let policy = self.gated_policy("60s");
        self.sim
            .create_policy(&policy)
            .await
            .map_err(|e| e.to_string())?;
        let release = release(version);
        let canary = self.canary_baking(&release).await?;
        self.workload.set_errors(5);
        let reason =
            self.sim
                .wait_policy(POLICY, &format!("to mark {release} bad"), ROLLOUT, |p| {
                    match bad_reason(p, &release) {
                        Some(reason) => Check::Done(reason),
                        None => Check::NotYet(format!("phase {:?}", phase(p))),
                    }
                })
                .await
                .map_err(|e| e.to_string())?;
        if !reason.contains("= 5") {
            return Err(format!(
                "the bad release's reason lacks the gate's reading: {reason}"
            ));
        }
        self.wait_none_run(&release).await?;
        let asked = self.sim.watch.ever_desired(&release);
        if asked.len() != 1 || !asked.contains(&canary) {
            return Err(format!(
                "{release} was asked of {asked:?}, not {canary} alone"
            ));
        }
        self.workload.set_errors(0);
        Ok(format!("{release} bad after the canary {canary}: {reason}"))
    }

    /// Publishes `version` with a 20 s canary bake, then stops Prometheus while the canary
    /// bakes: the gate turns inconclusive, the wave holds (Paused, the reason in Ready)
    /// past the end of its bake, no node is blamed or asked for more; with Prometheus back
    /// the rollout completes.
    pub async fn gate_inconclusive_holds(&mut self, version: u64) -> Result<String, String> {
        let spec =
            serde_json::json!({"rollout": {"waves": self.gated_policy("20s").spec.rollout.waves}});
        self.sim
            .patch_policy(POLICY, spec)
            .await
            .map_err(|e| e.to_string())?;
        self.publish(version)?;
        let release = release(version);
        let canary = self.canary_baking(&release).await?;
        let baking = Instant::now();
        self.prometheus.stop().await;
        let held = self
            .sim
            .wait_policy(POLICY, "to hold the wave as inconclusive", ROLLOUT, |p| {
                let message = ready_message(p);
                if phase(p) == Some(PolicyPhase::Paused) && message.contains("cannot be evaluated")
                {
                    Check::Done(message)
                } else {
                    Check::NotYet(format!("phase {:?}: {message}", phase(p)))
                }
            })
            .await
            .map_err(|e| e.to_string())?;
        // Well past the end of the bake: the wave still holds.
        let past_bake = Duration::from_secs(35).saturating_sub(baking.elapsed());
        tokio::time::sleep(past_bake).await;
        let policy = self
            .sim
            .watch
            .policies()
            .get(POLICY)
            .cloned()
            .ok_or("no policy")?;
        let rollout = policy.status.as_ref().and_then(|s| s.rollout.clone());
        let still_held = phase(&policy) == Some(PolicyPhase::Paused)
            && ready_message(&policy).contains("cannot be evaluated")
            && rollout.as_ref().is_some_and(|r| {
                r.wave == 1 && r.failed_wave.is_none() && r.gate_inconclusive.is_some()
            });
        if !still_held {
            return Err(format!(
                "past its bake the wave is not held by the gate: phase {:?}, {rollout:?}",
                phase(&policy)
            ));
        }
        if bad_reason(&policy, &release).is_some() {
            return Err(format!("{release} was marked bad for an inconclusive gate"));
        }
        let asked = self.sim.watch.ever_desired(&release);
        if asked.len() != 1 || !asked.contains(&canary) {
            return Err(format!(
                "while held, {release} was asked of {asked:?}, not {canary} alone"
            ));
        }
        self.prometheus
            .start_again()
            .await
            .map_err(|e| e.to_string())?;
        self.wait_all_run(&release).await?;
        Ok(format!(
            "canary {canary} held past its bake: {held}; then every node ran {release}"
        ))
    }

    /// Publishes `version` for the fleet's kernel.
    pub(crate) fn publish(&self, version: u64) -> Result<(), String> {
        let cves = [format!("CVE-2026-2000{version}")];
        let cves: Vec<&str> = cves.iter().map(String::as_str).collect();
        self.sim
            .publisher
            .publish(KERNEL.0, KERNEL.1, version, &cves, &["stable"])
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Waits until the policy bakes wave 1 with a node running `release`; returns it.
    async fn canary_baking(&self, release: &str) -> Result<String, String> {
        self.sim
            .wait_policy(
                POLICY,
                &format!("to bake {release} on its canary"),
                ROLLOUT,
                |p| {
                    let wave = p
                        .status
                        .as_ref()
                        .and_then(|s| s.rollout.as_ref())
                        .map(|r| r.wave);
                    if phase(p) == Some(PolicyPhase::Baking) && wave == Some(1) {
                        Check::Done(())
                    } else {
                        Check::NotYet(format!("phase {:?}, wave {wave:?}", phase(p)))
                    }
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        let nodes = self.sim.watch.current();
        let running: Vec<&String> = nodes
            .iter()
            .filter(|(_, n)| applied(n) == Some(release))
            .map(|(name, _)| name)
            .collect();
        match running.as_slice() {
            [canary] => Ok((*canary).clone()),
            other => Err(format!(
                "baking wave 1 of {release} with {other:?} running it"
            )),
        }
    }

    /// Waits until no node runs `release`.
    async fn wait_none_run(&self, release: &str) -> Result<(), String> {
        let what = format!("every node to go back from {release}");
        self.wait_every_node(&what, |n| applied(n) != Some(release))
            .await
    }

    /// Waits until every node runs `release`.
    pub(crate) async fn wait_all_run(&self, release: &str) -> Result<(), String> {
        let what = format!("every node to run {release}");
        self.wait_every_node(&what, |n| applied(n) == Some(release))
            .await
    }

    async fn wait_every_node(
        &self,
        what: &str,
        wanted: impl Fn(&LivePatchNode) -> bool,
    ) -> Result<(), String> {
        let waited = self.sim.wait_nodes(what, ROLLOUT, |nodes| {
            let others: Vec<&String> = nodes
                .iter()
                .filter(|(_, n)| !wanted(n))
                .map(|(name, _)| name)
                .collect();
            if others.is_empty() {
                Check::Done(())
            } else {
                Check::NotYet(format!("not yet: {others:?}"))
            }
        });
        waited.await.map_err(|e| e.to_string())
    }
}

/// The release the node reports running, settled.
fn applied(node: &LivePatchNode) -> Option<&str> {
    let status = node.status.as_ref()?;
    if status.state != Some(NodePatchState::Applied) {
        return None;
    }
    status.applied.as_ref().map(|a| a.id.as_str())
}

pub fn phase(policy: &LivePatchPolicy) -> Option<PolicyPhase> {
    policy.status.as_ref().and_then(|s| s.phase)
}

fn bad_reason(policy: &LivePatchPolicy, release: &str) -> Option<String> {
    let status = policy.status.as_ref()?;
    let bad = status.bad_releases.iter().find(|b| b.release == release)?;
    Some(bad.reason.clone())
}

pub fn ready_message(policy: &LivePatchPolicy) -> String {
    policy
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .find(|c| c.type_ == "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default()
}
