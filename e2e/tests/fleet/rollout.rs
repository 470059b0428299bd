//! Rollouts that go well: waves with bakes, maxInFlight, Unsupported nodes, and a newer
//! cumulative release picked up from the repository while idle.

use std::collections::BTreeMap;
use std::time::Duration;

use kpersist_crds::PolicyPhase;
use kpersist_e2e::sim_fleet::SimFleet;
use kpersist_e2e::wait::Check;

use crate::support::{
    K1, K2, all_applied, describe_policy, fail, id, serial, standard_nodes, three_waves,
};

const ROLLOUT: Duration = Duration::from_secs(180);
const BAKE: Duration = Duration::from_secs(3);
const MAX_IN_FLIGHT: u32 = 2;

#[tokio::test]
async fn rolls_out_in_waves_then_picks_up_a_newer_cumulative_release() {
    let _turn = serial().await;
    let mut fleet = SimFleet::start(standard_nodes()).await.expect("fleet");
    for k in [K1, K2] {
        fleet
            .publisher
            .publish(k.0, k.1, 1, &["CVE-2024-0001"], &["stable"])
            .expect("publish v1");
    }
    fleet.start_agents().expect("agents");
    fleet.start_operator().expect("operator");
    let policy = fleet.policy("fleet", three_waves("3s"), MAX_IN_FLIGHT);
    fleet.create_policy(&policy).await.expect("policy");

    // Every node with a release ends on it; node-7 (K3) has none.
    let mut v1: BTreeMap<String, String> = BTreeMap::new();
    for node in fleet.nodes() {
        if node.kernel_release == K1.0 || node.kernel_release == K2.0 {
            let k = if node.kernel_release == K1.0 { K1 } else { K2 };
            v1.insert(node.name.clone(), id(k, 1));
        }
    }
    if let Err(e) = fleet
        .wait_nodes("every supported node to apply v1", ROLLOUT, |nodes| {
            all_applied(nodes, &v1)
        })
        .await
    {
        fail(&mut fleet, e)
    }
    let waited = fleet
        .wait_policy(
            "fleet",
            "to finish with no failures and one unsupported node",
            ROLLOUT,
            |p| {
                let status = p.status.clone().unwrap_or_default();
                let finished = matches!(
                    status.phase,
                    Some(PolicyPhase::Complete | PolicyPhase::Idle)
                );
                if finished && status.nodes.unsupported == 1 && status.nodes.failed == 0 {
                    Check::Done(())
                } else {
                    Check::NotYet(describe_policy(p))
                }
            },
        )
        .await;
    if let Err(e) = waited {
        fail(&mut fleet, e)
    }

    // The canary was alone: nobody else was asked before it had applied and baked.
    for k in [K1, K2] {
        let release = id(k, 1);
        let order = fleet.watch.desired_order(&release);
        assert!(!order.is_empty(), "nobody was asked for {release}");
    }
    let mut everyone: Vec<(String, std::time::Instant)> = [K1, K2]
        .iter()
        .flat_map(|k| fleet.watch.desired_order(&id(*k, 1)))
        .collect();
    everyone.sort_by_key(|(_, at)| *at);
    let (canary, _) = everyone[0].clone();
    let canary_release = v1[&canary].clone();
    let canary_applied = fleet
        .watch
        .applied_at(&canary_release, &canary)
        .expect("the canary applied");
    for (node, asked) in &everyone[1..] {
        assert!(
            *asked >= canary_applied + BAKE - Duration::from_millis(500),
            "{node} was asked {:?} after the canary {canary} applied, before its {BAKE:?} bake ended",
            asked.saturating_duration_since(canary_applied)
        );
    }
    assert!(
        fleet
            .watch
            .ever_desired(&format!("{}/v1", crate::support::K3.0))
            .is_empty(),
        "the K3 node has no release and must not be asked for one"
    );
    let (max, at_max) = fleet.watch.max_in_flight();
    assert!(
        max as u32 <= MAX_IN_FLIGHT,
        "{max} nodes were in flight at once ({at_max:?}); maxInFlight is {MAX_IN_FLIGHT}"
    );
    assert!(max >= 1, "the watch saw no node in flight at all");

    // Persistent patching: v2 for K1 is published while idle and rolled out on its own.
    let cves = ["CVE-2024-0001", "CVE-2024-0002"];
    fleet
        .publisher
        .publish(K1.0, K1.1, 2, &cves, &["stable"])
        .expect("publish v2");
    let mut v2 = v1.clone();
    for release in v2.values_mut() {
        if release.starts_with(K1.0) {
            *release = id(K1, 2);
        }
    }
    if let Err(e) = fleet
        .wait_nodes(
            "the K1 nodes to move to v2, the K2 nodes to stay on v1",
            ROLLOUT,
            |nodes| all_applied(nodes, &v2),
        )
        .await
    {
        fail(&mut fleet, e)
    }
    for (name, node) in fleet.watch.current() {
        let applied = node.status.and_then(|s| s.applied);
        if let Some(applied) = applied.filter(|a| a.id == id(K1, 2)) {
            assert_eq!(
                applied.cves, cves,
                "{name} reports the CVEs of the new index"
            );
        }
    }
    let (max, at_max) = fleet.watch.max_in_flight();
    assert!(
        max as u32 <= MAX_IN_FLIGHT,
        "{max} nodes were in flight at once ({at_max:?}); maxInFlight is {MAX_IN_FLIGHT}"
    );
}
