//! Rollouts that go wrong: a release the canary's kernel rejects is reverted and never
//! offered again; an unreachable repository, a wrong index signature and a corrupted
//! module never get anything new applied, and the policy's conditions say why.

use std::time::Duration;

use kpersist_crds::NodeErrorReason;
use kpersist_e2e::sim_fleet::SimFleet;
use kpersist_e2e::wait::Check;

use crate::support::{
    FEW_POLLS, K1, ROLLOUT, assert_max_in_flight, assert_never_desired, condition, describe,
    describe_policy, fail, fleet_on_v1, id, publish_k1_v2, serial, standard_nodes, wait_applied,
};

#[tokio::test]
async fn a_release_stalling_on_the_canary_is_reverted_and_never_offered_again() {
    canary_failure_is_reverted("stall").await;
}

#[tokio::test]
async fn a_release_tainting_the_canary_kernel_is_reverted_and_never_offered_again() {
    canary_failure_is_reverted("taint").await;
}

/// Every K1 kernel fails v2 with `fault`; whichever node is the canary must be the only
/// one to get v2, go back to v1, and v2 must be marked bad and never offered again.
async fn canary_failure_is_reverted(fault: &str) {
    let _turn = serial().await;
    let bad = id(K1, 2);
    let mut nodes = standard_nodes();
    for node in nodes.iter_mut().filter(|n| n.kernel_release == K1.0) {
        node.faults.push(format!("{bad}={fault}"));
    }
    let mut fleet = SimFleet::start(nodes).await.expect("fleet");
    fleet_on_v1(&mut fleet, "2s", 2).await;

    publish_k1_v2(&fleet);
    let marked = fleet
        .wait_policy("fleet", "to mark v2 bad", ROLLOUT, |p| {
            let status = p.status.clone().unwrap_or_default();
            match status.bad_releases.iter().find(|b| b.release == bad) {
                Some(b) => Check::Done(b.reason.clone()),
                None => Check::NotYet(describe_policy(p)),
            }
        })
        .await;
    let reason = marked.unwrap_or_else(|e| fail(&mut fleet, e));
    assert!(!reason.trim().is_empty(), "the policy says why v2 is bad");

    // The canary goes back to v1; everyone else never left it.
    wait_applied(&mut fleet, 1, "every node back on v1 after the revert").await;
    let asked = fleet.watch.ever_desired(&bad);
    assert_eq!(
        asked.len(),
        1,
        "only the canary may receive v2, got {asked:?}"
    );

    // Several polls later the bad release is still not offered to anyone else.
    tokio::time::sleep(FEW_POLLS).await;
    assert_eq!(
        fleet.watch.ever_desired(&bad),
        asked,
        "v2 was offered again"
    );
    let nodes = fleet.watch.current();
    for (name, node) in &nodes {
        let wants_bad = node
            .spec
            .desired
            .as_ref()
            .and_then(|d| d.release.as_ref())
            .is_some_and(|r| r.id == bad)
            && node.spec.desired.as_ref().map(|d| d.action)
                == Some(kpersist_crds::PatchAction::Apply);
        assert!(
            !wants_bad,
            "{name} is still asked to apply v2:{}",
            describe(&nodes)
        );
    }
    assert_max_in_flight(&fleet, 2);
}

#[tokio::test]
async fn repository_faults_never_get_anything_new_applied_and_conditions_explain() {
    let _turn = serial().await;
    let mut fleet = SimFleet::start(standard_nodes()).await.expect("fleet");
    fleet_on_v1(&mut fleet, "1s", 2).await;
    let v2 = id(K1, 2);

    // Down: connections refused while v2 is published.
    fleet.repo.refuse_connections();
    publish_k1_v2(&fleet);
    let message = wait_unreachable(&mut fleet, "the repository is down", "").await;
    assert_never_desired(&fleet, &v2, FEW_POLLS).await;
    fleet.repo.accept_connections().await.expect("listen again");
    eprintln!("repository down: {message}");

    // A signature that does not verify: the index is not acted on.
    fleet.repo.update_faults(|f| f.wrong_signature = true);
    let message = wait_unreachable(&mut fleet, "the index signature is wrong", "signature").await;
    eprintln!("wrong signature: {message}");
    assert_never_desired(&fleet, &v2, FEW_POLLS).await;

    // A module whose bytes do not match the signed index: the canary refuses it.
    fleet.repo.update_faults(|f| {
        f.wrong_signature = false;
        f.corrupt_modules = true;
    });
    let refused = fleet
        .wait_nodes(
            "a node to refuse the corrupted v2 module",
            ROLLOUT,
            |nodes| {
                let refused = nodes.iter().find(|(_, n)| {
                    n.status
                        .as_ref()
                        .and_then(|s| s.last_error.as_ref())
                        .is_some_and(|e| e.reason == NodeErrorReason::HashMismatch)
                });
                match refused {
                    Some((name, _)) => Check::Done(name.clone()),
                    None => Check::NotYet(describe(nodes)),
                }
            },
        )
        .await
        .unwrap_or_else(|e| fail(&mut fleet, e));
    assert!(
        fleet.watch.ever_applied(&v2).is_empty(),
        "a corrupted v2 was applied on {:?}",
        fleet.watch.ever_applied(&v2)
    );
    let asked = fleet.watch.ever_desired(&v2);
    assert_eq!(
        asked.len(),
        1,
        "after the canary {refused} failed nobody else may get v2, got {asked:?}"
    );
    wait_applied(&mut fleet, 1, "every node still on v1").await;
    assert_max_in_flight(&fleet, 2);
}

/// Waits until the policy's RepositoryReachable condition is False with a reason or message
/// containing `naming` (any case); returns them.
async fn wait_unreachable(fleet: &mut SimFleet, why: &str, naming: &str) -> String {
    let what = format!("RepositoryReachable=False because {why}, naming {naming:?}");
    fleet
        .wait_policy(
            "fleet",
            &what,
            Duration::from_secs(30),
            |p| match condition(p, "RepositoryReachable") {
                Some(c)
                    if c.status == kpersist_crds::ConditionStatus::False
                        && format!("{} {}", c.reason, c.message)
                            .to_lowercase()
                            .contains(naming) =>
                {
                    Check::Done(format!("{}: {}", c.reason, c.message))
                }
                _ => Check::NotYet(describe_policy(p)),
            },
        )
        .await
        .unwrap_or_else(|e| fail(fleet, e))
}
