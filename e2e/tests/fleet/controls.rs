//! The switches a person uses: `dryRun` plans the waves in status and writes nothing to
//! any node; `paused` holds the rollout; clearing both lets it run.

use std::time::Duration;

use kpersist_crds::PolicyPhase;
use kpersist_e2e::sim_fleet::SimFleet;
use kpersist_e2e::wait::Check;

use crate::support::{
    K1, K2, assert_never_desired, describe_policy, fail, id, publish_v1, serial, standard_nodes,
    three_waves, wait_applied, wait_policy_status,
};

#[tokio::test]
async fn dry_run_plans_without_writing_and_paused_holds_until_resumed() {
    let _turn = serial().await;
    let mut fleet = SimFleet::start(standard_nodes()).await.expect("fleet");
    publish_v1(&fleet);
    fleet.start_agents().expect("agents");
    fleet.start_operator().expect("operator");
    let mut policy = fleet.policy("fleet", three_waves("1s"), 2);
    policy.spec.rollout.dry_run = true;
    fleet.create_policy(&policy).await.expect("policy");

    // dryRun: the plan appears in status, covering the six nodes with a release.
    let planned = fleet
        .wait_policy(
            "fleet",
            "to show its planned waves",
            Duration::from_secs(60),
            |p| {
                let status = p.status.clone().unwrap_or_default();
                let nodes: u32 = status.planned_waves.iter().map(|w| w.nodes).sum();
                if nodes > 0 {
                    Check::Done(status.planned_waves)
                } else {
                    Check::NotYet(describe_policy(p))
                }
            },
        )
        .await
        .unwrap_or_else(|e| fail(&mut fleet, e));
    let planned_nodes: u32 = planned.iter().map(|w| w.nodes).sum();
    assert_eq!(
        planned_nodes, 6,
        "every supported node is planned once: {planned:?}"
    );
    assert_eq!(
        (planned[0].nodes, planned[0].first_nodes.len()),
        (1, 1),
        "the first wave is the canary, named: {planned:?}"
    );
    for release in [id(K1, 1), id(K2, 1)] {
        assert_never_desired(&fleet, &release, Duration::from_secs(4)).await;
    }

    // paused: dryRun off, nothing starts.
    fleet
        .patch_policy(
            "fleet",
            serde_json::json!({ "rollout": { "dryRun": false, "paused": true } }),
        )
        .await
        .expect("pause");
    wait_policy_status(&mut fleet, "to be Paused", |s| {
        s.phase == Some(PolicyPhase::Paused)
    })
    .await;
    for release in [id(K1, 1), id(K2, 1)] {
        assert_never_desired(&fleet, &release, Duration::from_secs(4)).await;
    }

    // Resumed: the rollout runs to the end.
    fleet
        .patch_policy(
            "fleet",
            serde_json::json!({ "rollout": { "paused": false } }),
        )
        .await
        .expect("resume");
    wait_applied(&mut fleet, 1, "every supported node on v1 once resumed").await;
}
