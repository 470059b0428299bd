//! Waiting for a fault's point in the recorded objects, striking, and starting again what
//! was stopped.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kpersist_crds::{LivePatchNode, LivePatchPolicy, NodePatchState, PatchAction, PolicyPhase};
use kpersist_e2e::controlplane::{Part, Stop};
use kpersist_e2e::fleet::NAMESPACE;
use kpersist_e2e::monitor::invariants::node_life::named_troubled;
use kpersist_e2e::sim_fleet::{OPERATOR_LEASE, SimFleet, SimNode};
use kube::Api;
use kube::api::DeleteParams;

use crate::catalog::{Action, Fault, Point};
use crate::harness::{KERNEL, OTHER_KERNEL, Published, until};

/// How long a point may take to come.
const POINT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long etcd stays down.
const ETCD_OUTAGE: Duration = Duration::from_secs(4);
/// Refuse/accept cycles of the flapping repository, and the length of each half.
const FLAPS: u32 = 5;
const FLAP: Duration = Duration::from_secs(1);
/// How long a node stays NotReady.
const NOT_READY_FOR: Duration = Duration::from_secs(5);

/// Waits for the fault's point, strikes, and starts again what was stopped. An error says
/// why the fault could not be injected as meant.
pub async fn strike(
    fleet: &mut SimFleet,
    fault: &Fault,
    label: &str,
    published: &mut Published,
) -> Result<(), String> {
    let at = until(
        fleet,
        label,
        &format!("point {:?}", fault.point),
        POINT_TIMEOUT,
        |nodes, policy| reached(fault.point, nodes, policy),
    )
    .await?;
    match fault.action {
        Action::KillOperator => restart_operator(fleet).await,
        Action::PublishThenKillOperator => {
            let fetched = index_fetches(fleet);
            published.publish(fleet, 2)?;
            let waited = tokio::time::Instant::now() + Duration::from_secs(30);
            while index_fetches(fleet) <= fetched {
                if tokio::time::Instant::now() > waited {
                    return Err("the operator did not fetch the index holding v2 in 30s".into());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            restart_operator(fleet).await
        }
        Action::DeletePolicyThenKillOperator => {
            Api::<LivePatchPolicy>::all(fleet.cluster.admin.clone())
                .delete(label, &DeleteParams::default())
                .await
                .map_err(|e| format!("deleting policy {label}: {e}"))?;
            until(
                fleet,
                label,
                "the policy's deletion timestamp",
                POINT_TIMEOUT,
                |_, p| {
                    p.is_none_or(|p| p.metadata.deletion_timestamp.is_some())
                        .then_some(())
                },
            )
            .await?;
            restart_operator(fleet).await
        }
        Action::KillLeader => kill_leader(fleet).await,
        Action::KillAgent => {
            let Some(agent) = fleet.agent(&at) else {
                return Err(format!("no agent process for node {at}"));
            };
            agent.kill().await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            fleet
                .start_agent(&at)
                .map_err(|e| format!("restarting agent {at}: {e}"))
        }
        Action::RestartApiServer => {
            let plane = &fleet.cluster.plane;
            plane
                .stop_part(Part::ApiServer, Stop::Kill)
                .await
                .map_err(|e| e.to_string())?;
            plane
                .start_part(Part::ApiServer)
                .await
                .map_err(|e| e.to_string())
        }
        Action::StopEtcd => {
            let plane = &fleet.cluster.plane;
            plane
                .stop_part(Part::Etcd, Stop::Term)
                .await
                .map_err(|e| e.to_string())?;
            tokio::time::sleep(ETCD_OUTAGE).await;
            plane
                .start_part(Part::Etcd)
                .await
                .map_err(|e| e.to_string())
        }
        Action::FlapRepository => {
            for _ in 0..FLAPS {
                fleet.repo.refuse_connections();
                tokio::time::sleep(FLAP).await;
                fleet
                    .repo
                    .accept_connections()
                    .await
                    .map_err(|e| format!("the repository cannot listen again: {e}"))?;
                tokio::time::sleep(FLAP).await;
            }
            Ok(())
        }
        Action::NodeNotReady => {
            let since = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(600);
            fleet
                .set_not_ready(&at, since)
                .await
                .map_err(|e| format!("{at} NotReady: {e}"))?;
            tokio::time::sleep(NOT_READY_FOR).await;
            fleet
                .set_ready(&at)
                .await
                .map_err(|e| format!("{at} Ready again: {e}"))
        }
        Action::AgentGone => {
            fleet
                .silence_agent(&at)
                .await
                .map_err(|e| format!("silencing {at}: {e}"))?;
            until(
                fleet,
                label,
                &format!("{at} resolved as a node problem"),
                POINT_TIMEOUT,
                |_, policy| policy.map(named_troubled)?.contains(&at).then_some(()),
            )
            .await?;
            fleet
                .start_agent(&at)
                .map_err(|e| format!("restarting agent {at}: {e}"))
        }
        Action::NodeJoins => {
            let node = SimNode::new(&format!("{label}-joiner"), KERNEL.0, KERNEL.1);
            fleet
                .add_node(node)
                .await
                .map_err(|e| format!("adding a node: {e}"))
        }
        Action::NodeLeaves => fleet
            .remove_node(&at)
            .await
            .map_err(|e| format!("removing {at}: {e}")),
        Action::KernelChanged => fleet
            .reboot_node(&at, OTHER_KERNEL.0, OTHER_KERNEL.1)
            .await
            .map_err(|e| format!("rebooting {at}: {e}")),
    }
}

/// Whether `point` has come; `Some` carries the node it concerns (or an empty name).
fn reached(
    point: Point,
    nodes: &BTreeMap<String, LivePatchNode>,
    policy: Option<&LivePatchPolicy>,
) -> Option<String> {
    let status = policy.and_then(|p| p.status.as_ref());
    let phase = status.and_then(|s| s.phase);
    let node_where = |holds: &dyn Fn(&LivePatchNode) -> bool| {
        nodes
            .iter()
            .find(|(_, n)| holds(n))
            .map(|(name, _)| name.clone())
    };
    let state = |n: &LivePatchNode| n.status.as_ref().and_then(|s| s.state);
    let handed_wave = |n: &LivePatchNode, wave: u32| {
        n.spec
            .desired
            .as_ref()
            .is_some_and(|d| d.action == PatchAction::Apply && d.wave == Some(wave))
    };
    let any = |found: bool| found.then(String::new);
    match point {
        Point::FirstStatus => any(phase.is_some()),
        Point::CanaryAssigned => node_where(&|n| handed_wave(n, 1)),
        Point::Downloading => node_where(&|n| state(n) == Some(NodePatchState::Downloading)),
        Point::Applying => node_where(&|n| state(n) == Some(NodePatchState::Applying)),
        Point::CanaryBaking => any(phase == Some(PolicyPhase::Baking)
            && status
                .and_then(|s| s.rollout.as_ref())
                .is_some_and(|r| r.wave == 1)),
        Point::Wave2Assigned => node_where(&|n| handed_wave(n, 2)),
        Point::Wave2PartlyApplied => {
            let done = nodes
                .values()
                .filter(|n| handed_wave(n, 2) && state(n) == Some(NodePatchState::Applied))
                .count();
            any(done == 1)
        }
        Point::MarkedBad => any(status.is_some_and(|s| !s.bad_releases.is_empty())),
        Point::Reverting => node_where(&|n| {
            n.spec
                .desired
                .as_ref()
                .is_some_and(|d| d.action == PatchAction::Revert)
        }),
        Point::Paused => any(phase == Some(PolicyPhase::Paused)),
    }
}

/// Requests for the signed index so far (the operator's polls).
fn index_fetches(fleet: &SimFleet) -> usize {
    fleet
        .repo
        .served()
        .iter()
        .filter(|s| s.path.ends_with("index.json"))
        .count()
}

async fn restart_operator(fleet: &mut SimFleet) -> Result<(), String> {
    let Some(operator) = fleet.operator() else {
        return Err("no operator process".into());
    };
    operator.kill().await;
    fleet
        .start_operator()
        .map_err(|e| format!("restarting the operator: {e}"))
}

/// The Lease's holder.
async fn lease_holder(fleet: &SimFleet) -> Result<Option<String>, String> {
    let lease = Api::<Lease>::namespaced(fleet.cluster.admin.clone(), NAMESPACE)
        .get_opt(OPERATOR_LEASE)
        .await
        .map_err(|e| format!("reading Lease {OPERATOR_LEASE}: {e}"))?;
    Ok(lease.and_then(|l| l.spec).and_then(|s| s.holder_identity))
}

/// Kills whichever replica holds the Lease, waits until the other holds it, then starts the
/// killed one again (it must not take the Lease back while the other renews).
async fn kill_leader(fleet: &mut SimFleet) -> Result<(), String> {
    let holder = lease_holder(fleet).await?;
    let Some(leader) = (0..2).find(|&i| holder.as_deref() == Some(&fleet.operator_identity(i)))
    else {
        return Err(format!(
            "the Lease is held by {holder:?}, not by a replica of this fleet"
        ));
    };
    let other = fleet.operator_identity(1 - leader);
    if let Some(process) = fleet.operator_replica(leader) {
        process.kill().await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if lease_holder(fleet).await?.as_deref() == Some(other.as_str()) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{other} did not take the Lease over within 60s"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    fleet
        .start_operator_replica(leader)
        .map_err(|e| format!("restarting replica {leader}: {e}"))
}
