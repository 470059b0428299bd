//! Rollouts that go well: waves with bakes, maxInFlight, Unsupported nodes, and a newer
//! cumulative release picked up from the repository while idle.

use std::time::Duration;

use kpersist_crds::PolicyPhase;
use kpersist_e2e::controlplane::Identity;
use kpersist_e2e::sim_fleet::SimFleet;

use crate::support::{
    K1, K2, K3, V2_CVES, assert_max_in_flight, expected_releases, fail, id, publish_k1_v2,
    publish_v1, serial, standard_nodes, three_waves, wait_applied, wait_policy_status,
};

const BAKE: Duration = Duration::from_secs(3);
const MAX_IN_FLIGHT: u32 = 2;
/// The labels follow the agents' status writes by one reconcile.
const LABELS_FOLLOW: Duration = Duration::from_secs(30);

#[tokio::test]
async fn rolls_out_in_waves_then_picks_up_a_newer_cumulative_release() {
    let _turn = serial().await;
    let mut fleet = SimFleet::start(standard_nodes()).await.expect("fleet");
    publish_v1(&fleet);
    fleet.start_agents().expect("agents");
    fleet.start_operator().expect("operator");
    let policy = fleet.policy("fleet", three_waves("3s"), MAX_IN_FLIGHT);
    fleet.create_policy(&policy).await.expect("policy");

    // Every node with a release ends on it; node-7 (K3) has none.
    wait_applied(&mut fleet, 1, "every supported node to apply v1").await;
    let v1 = expected_releases(&fleet, 1);
    wait_policy_status(
        &mut fleet,
        "to finish with no failures and one unsupported node",
        |s| {
            matches!(s.phase, Some(PolicyPhase::Complete | PolicyPhase::Idle))
                && s.nodes.unsupported == 1
                && s.nodes.failed == 0
        },
    )
    .await;

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
        fleet.watch.ever_desired(&id(K3, 1)).is_empty(),
        "the K3 node has no release and must not be asked for one"
    );
    assert_max_in_flight(&fleet, MAX_IN_FLIGHT);
    assert!(
        fleet.watch.max_in_flight().0 >= 1,
        "the watch saw no node in flight at all"
    );

    // The same story in the operator's metrics, and the repository was polled with ETags.
    let metrics = fleet
        .operator_metrics()
        .await
        .unwrap_or_else(|e| fail(&mut fleet, e));
    // Each node's apply counted once in the operator's latency histogram, from its status.
    for line in [
        r#"kpersist_nodes{policy="fleet",state="patched"} 6"#,
        r#"kpersist_selected_nodes{policy="fleet"} 7"#,
        r#"kpersist_node_run_duration_seconds_count{action="Apply",policy="fleet"} 6"#,
        "kpersist_leader 1",
    ] {
        assert!(
            metrics.contains(line),
            "operator metrics lack {line}:\n{metrics}"
        );
    }
    kubectl_finds_nodes_by_label_and_waits_for_ready(&mut fleet).await;
    assert!(
        fleet.repo.count("/index.json", 304) > 0,
        "the operator never polled index.json with If-None-Match: {:?}",
        fleet.repo.served()
    );

    // Persistent patching: v2 for K1 is published while idle and rolled out on its own.
    publish_k1_v2(&fleet);
    wait_applied(
        &mut fleet,
        2,
        "the K1 nodes to move to v2, the K2 nodes to stay on v1",
    )
    .await;
    for (name, node) in fleet.watch.current() {
        let applied = node.status.and_then(|s| s.applied);
        if let Some(applied) = applied.filter(|a| a.id == id(K1, 2)) {
            assert_eq!(
                applied.cves, V2_CVES,
                "{name} reports the CVEs of the new index"
            );
        }
    }
    assert_max_in_flight(&fleet, MAX_IN_FLIGHT);
}

/// The operator labels each LivePatchNode with its policy, settled state and kernel, so
/// `kubectl get lpn -l` filters on the server; `kubectl wait` reads the policy's Ready.
async fn kubectl_finds_nodes_by_label_and_waits_for_ready(fleet: &mut SimFleet) {
    let names = |nodes: &[u32]| -> Vec<String> {
        nodes
            .iter()
            .map(|i| format!("livepatchnode.kpersist.io/node-{i}"))
            .collect()
    };
    let filters = [
        (
            "kpersist.io/policy=fleet,kpersist.io/state=Applied",
            names(&[1, 2, 3, 4, 5, 6]),
        ),
        // node-7 has no release for its kernel: nothing was asked of it.
        ("kpersist.io/state=Idle", names(&[7])),
        (&*format!("kpersist.io/kernel={}", K2.0), names(&[5, 6])),
    ];
    for (selector, expected) in filters {
        let args = ["get", "lpn", "-l", selector, "-o", "name"];
        let started = std::time::Instant::now();
        loop {
            let listed = fleet.cluster.plane.kubectl(Identity::Admin, &args).await;
            let listed = listed.unwrap_or_else(|e| fail(fleet, e));
            let mut found: Vec<String> = listed.lines().map(str::to_string).collect();
            found.sort();
            if found == expected {
                break;
            }
            if started.elapsed() > LABELS_FOLLOW {
                let error = kpersist_e2e::Error::Timeout {
                    seconds: started.elapsed().as_secs_f64(),
                    what: format!("kubectl {} to list {expected:?}", args.join(" ")),
                    last: format!("{found:?}"),
                };
                fail(fleet, error);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let args = [
        "wait",
        "--for=condition=Ready",
        "lpp/fleet",
        "--timeout=60s",
    ];
    let waited = fleet.cluster.plane.kubectl(Identity::Admin, &args).await;
    let waited = waited.unwrap_or_else(|e| fail(fleet, e));
    assert!(
        waited.contains("livepatchpolicy.kpersist.io/fleet condition met"),
        "kubectl wait printed: {waited}"
    );
}
