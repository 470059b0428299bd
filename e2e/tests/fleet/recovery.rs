//! Processes dying mid-rollout: the operator killed with SIGKILL in the middle of a wave
//! and restarted carries on from the API objects; an agent killed while applying recovers
//! from its kernel's state.

use std::time::Duration;

use kpersist_crds::NodePatchState;
use kpersist_e2e::sim_fleet::SimFleet;
use kpersist_e2e::wait::Check;

use crate::support::{
    K1, K2, K3, assert_max_in_flight, describe, fail, id, publish_v1, serial, standard_nodes,
    three_waves, wait_applied,
};

const MAX_IN_FLIGHT: u32 = 2;

/// Publishes v1, starts everything with a slow repository (each answer waits `delay`, so
/// a wave takes long enough to be interrupted) and creates the policy.
async fn slow_fleet(delay: Duration) -> SimFleet {
    let mut fleet = SimFleet::start(standard_nodes()).await.expect("fleet");
    publish_v1(&fleet);
    fleet.repo.update_faults(|f| f.delay = delay);
    fleet.start_agents().expect("agents");
    fleet.start_operator().expect("operator");
    let policy = fleet.policy("fleet", three_waves("1s"), MAX_IN_FLIGHT);
    fleet.create_policy(&policy).await.expect("policy");
    fleet
}

#[tokio::test]
async fn operator_killed_mid_wave_and_restarted_finishes_the_rollout() {
    let _turn = serial().await;
    let mut fleet = slow_fleet(Duration::from_millis(1500)).await;
    let v1 = [id(K1, 1), id(K2, 1)];
    // Mid-wave: the canary is done and later nodes have been handed v1.
    let waited = fleet
        .wait_nodes(
            "a second node to be handed v1",
            Duration::from_secs(120),
            |_| {
                let handed: usize = v1.iter().map(|r| fleet.watch.ever_desired(r).len()).sum();
                if handed >= 2 {
                    Check::Done(())
                } else {
                    Check::NotYet(format!("{handed} nodes handed v1"))
                }
            },
        )
        .await;
    if let Err(e) = waited {
        fail(&mut fleet, e)
    }
    if let Some(operator) = fleet.operator() {
        operator.kill().await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.start_operator().expect("operator restarts");
    fleet.repo.update_faults(|f| f.delay = Duration::ZERO);

    wait_applied(
        &mut fleet,
        1,
        "every supported node on v1 after the restart",
    )
    .await;
    assert_max_in_flight(&fleet, MAX_IN_FLIGHT);
    assert!(
        fleet.watch.ever_desired(&id(K3, 1)).is_empty(),
        "the K3 node has no release"
    );
}

#[tokio::test]
async fn agent_killed_while_applying_recovers_after_restart() {
    let _turn = serial().await;
    let mut fleet = slow_fleet(Duration::from_secs(4)).await;
    let downloading = fleet
        .wait_nodes(
            "a node to start downloading",
            Duration::from_secs(120),
            |nodes| {
                let busy = nodes.iter().find(|(_, n)| {
                    matches!(
                        n.status.as_ref().and_then(|s| s.state),
                        Some(NodePatchState::Downloading | NodePatchState::Applying)
                    )
                });
                match busy {
                    Some((name, _)) => Check::Done(name.clone()),
                    None => Check::NotYet(describe(nodes)),
                }
            },
        )
        .await
        .unwrap_or_else(|e| fail(&mut fleet, e));
    if let Some(agent) = fleet.agent(&downloading) {
        agent.kill().await;
    }
    fleet.repo.update_faults(|f| f.delay = Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(1)).await;
    fleet.start_agent(&downloading).expect("agent restarts");

    wait_applied(
        &mut fleet,
        1,
        "every supported node on v1, the killed one too",
    )
    .await;
    assert_max_in_flight(&fleet, MAX_IN_FLIGHT);
}
