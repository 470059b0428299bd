//! A bad release's life: shown by `kubectl get lpp`, kept when its policy is deleted and
//! created again (as a GitOps tool replaces it), and rolled out again only when a person
//! lists it in `spec.rollout.retryReleases`.

use kpersist_crds::{LivePatchPolicy, PolicyPhase};
use kpersist_e2e::controlplane::Identity;
use kpersist_e2e::sim_fleet::SimFleet;
use kube::Api;
use kube::api::DeleteParams;

use crate::support::{
    FEW_POLLS, K1, fail, fleet_on_v1, id, k1_nodes, publish_k1_v2, serial, three_waves,
    wait_applied, wait_policy_gone, wait_policy_status,
};

#[tokio::test]
async fn a_bad_release_outlives_its_policy_until_a_person_retries_it() {
    let _turn = serial().await;
    let v2 = id(K1, 2);
    let mut nodes = k1_nodes(2);
    for node in &mut nodes {
        node.faults.push(format!("{v2}=stall"));
    }
    let mut fleet = SimFleet::start(nodes).await.expect("fleet");
    fleet_on_v1(&mut fleet, "1s", 1).await;
    publish_k1_v2(&fleet);
    wait_policy_status(&mut fleet, "to mark v2 bad", |s| {
        s.bad_releases.iter().any(|b| b.release == v2) && s.phase == Some(PolicyPhase::Failed)
    })
    .await;
    let table = fleet
        .cluster
        .plane
        .kubectl(Identity::Admin, &["get", "lpp", "fleet"])
        .await;
    let table = table.unwrap_or_else(|e| fail(&mut fleet, e));
    assert!(
        table.contains("BAD") && table.contains(&v2),
        "kubectl get lpp shows the bad release:\n{table}"
    );

    // Replaced as a GitOps tool does: deleted, then created again.
    let policies: Api<LivePatchPolicy> = Api::all(fleet.cluster.admin.clone());
    policies
        .delete("fleet", &DeleteParams::default())
        .await
        .expect("delete the policy");
    wait_policy_gone(&mut fleet).await;
    let asked = fleet.watch.ever_desired(&v2);
    let policy = fleet.policy("fleet", three_waves("1s"), 1);
    fleet.create_policy(&policy).await.expect("create it again");
    wait_policy_status(&mut fleet, "the new policy to know v2 is bad", |s| {
        s.bad_releases
            .iter()
            .any(|b| b.release == v2 && b.reason.starts_with("kept from policy fleet"))
    })
    .await;
    tokio::time::sleep(FEW_POLLS).await;
    assert_eq!(
        fleet.watch.ever_desired(&v2),
        asked,
        "the recreated policy offered the bad release again"
    );

    // The publisher's fix is on the nodes; a person clears v2, and it rolls out.
    for node in ["node-1", "node-2"] {
        let fixed = fleet.set_faults(node, Vec::new()).await;
        fixed.unwrap_or_else(|e| fail(&mut fleet, e));
    }
    let retry = serde_json::json!({"rollout": {"retryReleases": [v2]}});
    let patched = fleet.patch_policy("fleet", retry).await;
    patched.unwrap_or_else(|e| fail(&mut fleet, e));
    wait_applied(&mut fleet, 2, "every node to run v2 after the retry").await;
    wait_policy_status(&mut fleet, "v2 off the bad list, the retry recorded", |s| {
        s.bad_releases.is_empty() && s.retried_releases.iter().any(|r| r.release == v2)
    })
    .await;
}
