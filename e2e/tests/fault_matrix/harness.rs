//! One run of one fault: a fresh fleet of five simulated nodes on the shared control
//! plane, the rollout of v1 in three waves, the fault at its point, the recovery, the end
//! of the rollout, and the invariant check over everything recorded.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kpersist_crds::{LivePatchNode, LivePatchPolicy, NodePatchState, Wave};
use kpersist_e2e::fleet::Cluster;
use kpersist_e2e::monitor::in_flight;
use kpersist_e2e::monitor::invariants::{Expectations, Final, SignedRelease, Violation, check};
use kpersist_e2e::sim_fleet::{SimFleet, SimNode};
use kube::Api;
use kube::api::{DeleteParams, ListParams};

use crate::catalog::{Action, End, Fault};
use crate::inject;

/// The simulated kernel of every node.
pub const KERNEL: (&str, &str) = ("6.1.0-56-amd64", "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1");
/// The kernel build a node reboots into when its kernel changes; no release is published
/// for it.
pub const OTHER_KERNEL: (&str, &str) =
    ("6.1.0-57-amd64", "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2");
/// Nodes per run: a canary, two in wave 2 (50%), two in wave 3.
const NODES: usize = 5;
/// How long the rollout may take to end after the fault.
const END_TIMEOUT: Duration = Duration::from_secs(150);
/// How long the objects must stay in their end state before they are checked, so that a
/// late write (a bad release handed out again, a paused rollout going on) is seen.
const QUIET: Duration = Duration::from_secs(3);
/// A paused policy is watched longer: several repository polls must not resume it.
const PAUSED_QUIET: Duration = Duration::from_secs(7);

/// What one run found.
pub struct Outcome {
    /// Why the fault could not be injected, if it could not.
    pub missed: Option<String>,
    /// Invariants that did not hold.
    pub violations: Vec<Violation>,
}

/// The release id of `version` of [`KERNEL`].
pub fn release_id(version: u64) -> String {
    format!("{}/v{version}", KERNEL.0)
}

/// What a run has published so far, signed.
#[derive(Default)]
pub struct Published {
    /// Every release the repository signed.
    pub signed: Vec<SignedRelease>,
    /// The newest version.
    pub newest: u64,
}

impl Published {
    /// Publishes `version` of [`KERNEL`] in `stable`.
    pub fn publish(&mut self, fleet: &SimFleet, version: u64) -> Result<(), String> {
        let release = fleet
            .publisher
            .publish(KERNEL.0, KERNEL.1, version, &["CVE-2024-0001"], &["stable"])
            .map_err(|e| format!("publishing v{version}: {e}"))?;
        self.signed.push(SignedRelease {
            id: release.id(),
            sha256: release.sha256.clone(),
            size: release.size,
        });
        self.newest = version;
        Ok(())
    }
}

/// Runs `fault` once on `cluster`.
pub async fn run(cluster: Arc<Cluster>, fault: &Fault, run: u32) -> Outcome {
    let label = format!("fm-{}-{run}", fault.name);
    let missed = |why: String| Outcome {
        missed: Some(why),
        violations: Vec::new(),
    };
    let nodes = (1..=NODES)
        .map(|i| {
            let mut node = SimNode::new(&format!("{label}-n{i}"), KERNEL.0, KERNEL.1);
            if let Some(kind) = fault.v1_fault {
                node.faults.push(format!("{}={kind}", release_id(1)));
            }
            node
        })
        .collect();
    let mut fleet = match SimFleet::start_on(cluster, nodes, &label).await {
        Ok(fleet) => fleet,
        Err(e) => return missed(format!("the fleet did not start: {e}")),
    };
    let mut published = Published::default();
    if let Err(e) = start(&mut fleet, fault, &label, &mut published).await {
        return missed(e);
    }
    let before: BTreeSet<String> = fleet.nodes().iter().map(|n| n.name.clone()).collect();
    let t0 = Instant::now();
    let missed_point = inject::strike(&mut fleet, fault, &label, &mut published)
        .await
        .err();
    let mut left = before;
    left.retain(|name| fleet.nodes().iter().all(|n| n.name != *name));
    let struck = t0.elapsed();
    fleet.repo.update_faults(|f| f.delay = Duration::ZERO);

    let accepted = accepted_end(fault, &fleet, published.newest);
    match wait_end(&mut fleet, fault, &label, &accepted).await {
        Ok(()) => eprintln!(
            "   struck and recovered {:.1}s after the policy was created; ended {:.1}s later",
            struck.as_secs_f64(),
            (t0.elapsed() - struck).as_secs_f64()
        ),
        Err(e) => eprintln!(
            "   the rollout did not end as expected: {e}{}",
            fleet.process_report()
        ),
    }
    let end = final_objects(&fleet, &label).await;
    let expectations = Expectations {
        policy: label.clone(),
        max_in_flight: fault.max_in_flight,
        max_failures: 0,
        signed: published.signed.clone(),
        end_applied: accepted,
        left,
        end_phases: fault.end_phases(),
    };
    let violations = check(&fleet.watch.log(), &expectations, &end);
    if !violations.is_empty() || missed_point.is_some() {
        eprintln!(
            "   logs: {}/{label}-*.log{}",
            fleet.cluster.plane.dir().display(),
            describe(&end)
        );
    }
    remove_policy(&fleet, &label).await;
    Outcome {
        missed: missed_point,
        violations,
    }
}

async fn start(
    fleet: &mut SimFleet,
    fault: &Fault,
    label: &str,
    published: &mut Published,
) -> Result<(), String> {
    published.publish(fleet, 1)?;
    let delay = Duration::from_millis(fault.repo_delay_ms);
    fleet.repo.update_faults(|f| f.delay = delay);
    fleet.start_agents().map_err(|e| format!("agents: {e}"))?;
    fleet
        .start_operator()
        .map_err(|e| format!("operator: {e}"))?;
    if fault.action == Action::KillLeader {
        fleet
            .start_operator_replica(1)
            .map_err(|e| format!("second operator replica: {e}"))?;
    }
    let wave = |nodes, percent| Wave {
        nodes,
        percent,
        bake: "2s".into(),
    };
    let waves = vec![
        wave(Some(1), None),
        wave(None, Some(50)),
        wave(None, Some(100)),
    ];
    let mut policy = fleet.policy(label, waves, fault.max_in_flight);
    policy.spec.rollout.failure_policy = fault.failure_policy;
    policy.spec.health.node_deadline = fault.node_deadline.map(String::from);
    fleet
        .create_policy(&policy)
        .await
        .map_err(|e| format!("creating policy {label}: {e}"))
}

/// Per node, the releases it may run at the end.
fn accepted_end(
    fault: &Fault,
    fleet: &SimFleet,
    newest: u64,
) -> BTreeMap<String, Vec<Option<String>>> {
    let accepted = match fault.end {
        End::AllOnNewest => vec![Some(release_id(newest))],
        End::Reverted | End::Paused => vec![None],
        End::PolicyGone => vec![None, Some(release_id(1))],
    };
    // A node rebooted into a kernel build no release is published for runs nothing.
    fleet
        .nodes()
        .iter()
        .map(|n| {
            let own = if n.kernel_release == KERNEL.0 {
                accepted.clone()
            } else {
                vec![None]
            };
            (n.name.clone(), own)
        })
        .collect()
}

/// The fleet's nodes and its policy, as the watch last saw them.
pub fn seen(
    fleet: &SimFleet,
    label: &str,
) -> (BTreeMap<String, LivePatchNode>, Option<LivePatchPolicy>) {
    let mut nodes = fleet.watch.current();
    nodes.retain(|name, _| fleet.nodes().iter().any(|n| n.name == *name));
    (nodes, fleet.watch.policies().remove(label))
}

/// Polls the watch's view until `found` returns something, or `timeout` passes.
pub async fn until<T>(
    fleet: &SimFleet,
    label: &str,
    what: &str,
    timeout: Duration,
    found: impl Fn(&BTreeMap<String, LivePatchNode>, Option<&LivePatchPolicy>) -> Option<T>,
) -> Result<T, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (nodes, policy) = seen(fleet, label);
        if let Some(value) = found(&nodes, policy.as_ref()) {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "{what}: not seen within {}s; last seen:{}",
                timeout.as_secs(),
                describe(&Final {
                    nodes: nodes.into_values().collect(),
                    policy
                })
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn settled(node: &LivePatchNode) -> bool {
    let state = node.status.as_ref().and_then(|s| s.state);
    !in_flight(node)
        && !matches!(
            state,
            Some(
                NodePatchState::Downloading | NodePatchState::Applying | NodePatchState::Reverting
            )
        )
}

/// Waits until the nodes and the policy are where `fault` says they end, then a quiet
/// period. Meanwhile, any operator or agent that exits by itself is started again, as a
/// kubelet would (an operator that could not renew its Lease steps down by exiting).
async fn wait_end(
    fleet: &mut SimFleet,
    fault: &Fault,
    label: &str,
    accepted: &BTreeMap<String, Vec<Option<String>>>,
) -> Result<(), String> {
    let phases = fault.end_phases();
    let ended = |nodes: &BTreeMap<String, LivePatchNode>, policy: Option<&LivePatchPolicy>| {
        let nodes_done = nodes.len() == accepted.len()
            && nodes.iter().all(|(name, node)| {
                let applied = node
                    .status
                    .as_ref()
                    .and_then(|s| s.applied.as_ref())
                    .map(|a| a.id.clone());
                settled(node) && accepted.get(name).is_some_and(|ok| ok.contains(&applied))
            });
        let policy_done = match policy {
            None => phases.is_empty(),
            Some(p) => p
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .is_some_and(|ph| phases.contains(&ph)),
        };
        nodes_done && policy_done
    };
    let deadline = Instant::now() + END_TIMEOUT;
    loop {
        for process in fleet.restart_exited().await.map_err(|e| e.to_string())? {
            eprintln!("   {process} exited by itself; started again, as a kubelet would");
        }
        let (nodes, policy) = seen(fleet, label);
        if ended(&nodes, policy.as_ref()) {
            break;
        }
        if Instant::now() >= deadline {
            let last = describe(&Final {
                nodes: nodes.into_values().collect(),
                policy,
            });
            return Err(format!(
                "not over within {}s; last seen:{last}",
                END_TIMEOUT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let quiet = if fault.end == End::Paused {
        PAUSED_QUIET
    } else {
        QUIET
    };
    tokio::time::sleep(quiet).await;
    Ok(())
}

/// The fleet's LivePatchNodes and its policy, listed from the API server.
async fn final_objects(fleet: &SimFleet, label: &str) -> Final {
    let admin = fleet.cluster.admin.clone();
    let nodes = Api::<LivePatchNode>::all(admin.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_else(|e| {
            eprintln!("   listing LivePatchNodes failed: {e}");
            Vec::new()
        });
    let policy = Api::<LivePatchPolicy>::all(admin)
        .get_opt(label)
        .await
        .unwrap_or_else(|e| {
            eprintln!("   reading policy {label} failed: {e}");
            None
        });
    let nodes = nodes
        .into_iter()
        .filter(|n| {
            let name = n.metadata.name.as_deref().unwrap_or_default();
            fleet.nodes().iter().any(|s| s.name == name)
        })
        .collect();
    Final { nodes, policy }
}

/// Deletes the run's policy while its operator still runs, so the next runs' operators
/// have nothing of it to reconcile.
async fn remove_policy(fleet: &SimFleet, label: &str) {
    let api = Api::<LivePatchPolicy>::all(fleet.cluster.admin.clone());
    if let Err(e) = api.delete(label, &DeleteParams::default()).await {
        if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
            eprintln!("   deleting policy {label}: {e}");
        }
        return;
    }
    let gone = until(
        fleet,
        label,
        "the policy to be gone",
        Duration::from_secs(30),
        |_, p| p.is_none().then_some(()),
    )
    .await;
    if let Err(e) = gone {
        eprintln!("   {e}");
    }
}

/// One line per node and one for the policy, for messages.
pub fn describe(end: &Final) -> String {
    let mut out = String::new();
    for node in &end.nodes {
        let status = node.status.clone().unwrap_or_default();
        let desired = node
            .spec
            .desired
            .as_ref()
            .map(|d| {
                let id = d.release.as_ref().map(|r| r.id.as_str()).unwrap_or("none");
                format!("{:?} {id} wave {:?}", d.action, d.wave)
            })
            .unwrap_or_else(|| "nothing".into());
        out.push_str(&format!(
            "\n     {}: {:?}, applied {:?}, desired {desired}, error {:?}",
            node.metadata.name.as_deref().unwrap_or_default(),
            status.state,
            status.applied.map(|a| a.id),
            status
                .last_error
                .map(|e| format!("{:?}: {}", e.reason, e.message)),
        ));
    }
    match &end.policy {
        Some(p) => {
            let status = p.status.clone().unwrap_or_default();
            let conditions: Vec<String> = status
                .conditions
                .iter()
                .map(|c| format!("{}={} ({})", c.type_, c.status, c.reason))
                .collect();
            out.push_str(&format!(
                "\n     policy: {:?}, wave {:?}, bad {:?}, [{}]",
                status.phase,
                status.wave_summary,
                status
                    .bad_releases
                    .iter()
                    .map(|b| &b.release)
                    .collect::<Vec<_>>(),
                conditions.join(", ")
            ));
        }
        None => out.push_str("\n     policy: gone"),
    }
    out
}
