//! What the API server itself enforces for kpersist: the CRDs' schema and the chart's RBAC
//! per identity.

use crate::support::{forbidden, invalid, sample_policy, serial};
use k8s_openapi::api::core::v1::{Node, Secret};
use kpersist_crds::{LivePatchNode, LivePatchNodeSpec, LivePatchPolicy, Wave};
use kpersist_e2e::controlplane::Identity;
use kpersist_e2e::fleet::{Cluster, NAMESPACE};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchParams};
use std::collections::BTreeMap;

#[tokio::test]
async fn the_api_server_keeps_valid_policies_and_refuses_invalid_ones_by_schema() {
    let _turn = serial().await;
    let cluster = Cluster::start().await.expect("cluster");
    let policies: Api<LivePatchPolicy> = Api::all(cluster.admin.clone());

    let created = policies
        .create(&PostParams::default(), &sample_policy("valid"))
        .await
        .expect("a valid policy is stored");
    assert_eq!(
        created.spec.repository.check_interval, "1h",
        "schema default"
    );
    assert_eq!(created.spec.rollout.max_in_flight, 10, "schema default");

    let mut cases: Vec<(&str, LivePatchPolicy)> = Vec::new();
    let mut p = sample_policy("bad-url");
    p.spec.repository.url = "ftp://example.invalid/repo".into();
    cases.push(("spec.repository.url", p));
    let mut p = sample_policy("bad-percent");
    p.spec.rollout.waves = vec![Wave {
        nodes: None,
        percent: Some(101),
        bake: "1m".into(),
    }];
    cases.push(("percent", p));
    let mut p = sample_policy("bad-in-flight");
    p.spec.rollout.max_in_flight = 0;
    cases.push(("maxInFlight", p));
    let mut p = sample_policy("bad-bake");
    p.spec.rollout.waves[0].bake = "ten minutes".into();
    cases.push(("bake", p));
    let mut p = sample_policy("no-waves");
    p.spec.rollout.waves.clear();
    cases.push(("waves", p));

    for (field, policy) in cases {
        let name = policy.metadata.name.clone().unwrap_or_default();
        let result = policies.create(&PostParams::default(), &policy).await;
        let message = invalid(result);
        assert!(
            message.contains(field),
            "policy {name}: the refusal should name {field}: {message}"
        );
    }
    let names: Vec<String> = policies
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(names, ["valid"], "only the valid policy is stored");
}

#[tokio::test]
async fn rbac_lets_operator_and_agent_do_their_jobs_and_refuses_the_agent_anything_else() {
    let _turn = serial().await;
    let cluster = Cluster::start().await.expect("cluster");
    let labels = BTreeMap::from([("kpersist.io/pool".to_string(), "a".to_string())]);
    cluster.create_node("node-a", &labels).await.expect("node");
    cluster.create_node("node-b", &labels).await.expect("node");
    Api::<LivePatchPolicy>::all(cluster.admin.clone())
        .create(&PostParams::default(), &sample_policy("fleet"))
        .await
        .expect("policy");

    let agent = cluster.plane.client(Identity::Agent).await.expect("agent");
    let operator = cluster.plane.client(Identity::Operator).await.expect("op");
    let agent_lpns: Api<LivePatchNode> = Api::all(agent.clone());
    let agent_lpps: Api<LivePatchPolicy> = Api::all(agent.clone());
    let patch = PatchParams::apply(kpersist_crds::AGENT_MANAGER);

    // A Secret of trusted keys, as a policy could name it: with the chart's default values
    // neither identity may read it, nor list or watch any Secret.
    let mut keys = Secret::default();
    keys.metadata.name = Some("trusted-keys".into());
    keys.string_data = Some(BTreeMap::from([("publisher".into(), "a-key".into())]));
    Api::<Secret>::namespaced(cluster.admin.clone(), NAMESPACE)
        .create(&PostParams::default(), &keys)
        .await
        .expect("secret");

    // The agent's job: read its Node, create its LivePatchNode, report status.
    Api::<Node>::all(agent.clone())
        .get("node-a")
        .await
        .expect("agent reads its Node");
    // Known limit on 1.20, asserted so that a change shows: RBAC cannot limit `create` to
    // the agent's own node, so this agent (on node-a) may create node-b's record while it
    // has none. The chart's ValidatingAdmissionPolicy refuses it on 1.30+.
    for name in ["node-a", "node-b"] {
        let lpn = LivePatchNode::new(name, LivePatchNodeSpec::default());
        agent_lpns
            .create(&PostParams::default(), &lpn)
            .await
            .expect("agent creates a LivePatchNode");
    }
    let status = serde_json::json!({
        "apiVersion": "kpersist.io/v1alpha1", "kind": "LivePatchNode",
        "status": { "state": "Idle", "kernelRelease": "6.1.0-56-amd64" }
    });
    agent_lpns
        .patch_status("node-a", &patch, &Patch::Apply(&status))
        .await
        .expect("agent writes its status");

    // The operator's job: read nodes and LivePatchNodes, write spec and policy status.
    let op_lpns: Api<LivePatchNode> = Api::all(operator.clone());
    assert_eq!(
        op_lpns
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        2
    );
    Api::<Node>::all(operator.clone())
        .list(&ListParams::default())
        .await
        .expect("operator lists Nodes");
    let desired = serde_json::json!({ "spec": { "desired": null } });
    op_lpns
        .patch("node-b", &PatchParams::default(), &Patch::Merge(&desired))
        .await
        .expect("operator writes a LivePatchNode's spec");
    let policy_status = serde_json::json!({ "status": { "phase": "Idle" } });
    Api::<LivePatchPolicy>::all(operator.clone())
        .patch_status(
            "fleet",
            &PatchParams::default(),
            &Patch::Merge(&policy_status),
        )
        .await
        .expect("operator writes policy status");

    // Refused to the operator: creating policies or touching Nodes.
    forbidden(
        "operator creates a policy",
        Api::<LivePatchPolicy>::all(operator.clone())
            .create(&PostParams::default(), &sample_policy("sneaky"))
            .await,
    );
    forbidden(
        "operator deletes a Node",
        Api::<Node>::all(operator.clone())
            .delete("node-a", &DeleteParams::default())
            .await,
    );
    secrets_refused("operator", &operator).await;

    // Refused to the agent: any write to a policy, any LivePatchNode's spec, deleting
    // LivePatchNodes, reading Secrets, changing Nodes.
    forbidden(
        "agent creates a policy",
        agent_lpps
            .create(&PostParams::default(), &sample_policy("rogue"))
            .await,
    );
    let pause = serde_json::json!({ "spec": { "rollout": { "paused": true } } });
    forbidden(
        "agent patches a policy",
        agent_lpps
            .patch("fleet", &PatchParams::default(), &Patch::Merge(&pause))
            .await,
    );
    forbidden(
        "agent patches a policy's status",
        agent_lpps
            .patch_status(
                "fleet",
                &PatchParams::default(),
                &Patch::Merge(&policy_status),
            )
            .await,
    );
    forbidden(
        "agent deletes a policy",
        agent_lpps.delete("fleet", &DeleteParams::default()).await,
    );
    let mut policy = Api::<LivePatchPolicy>::all(cluster.admin.clone())
        .get("fleet")
        .await
        .expect("policy");
    policy.spec.rollout.paused = true;
    forbidden(
        "agent replaces a policy",
        agent_lpps
            .replace("fleet", &PostParams::default(), &policy)
            .await,
    );
    forbidden(
        "agent replaces a policy's status",
        agent_lpps
            .replace_status("fleet", &PostParams::default(), &policy)
            .await,
    );
    let takeover = serde_json::json!({ "spec": { "desired": null } });
    forbidden(
        "agent writes another node's LivePatchNode spec",
        agent_lpns
            .patch("node-b", &PatchParams::default(), &Patch::Merge(&takeover))
            .await,
    );
    forbidden(
        "agent writes its own LivePatchNode spec",
        agent_lpns
            .patch("node-a", &PatchParams::default(), &Patch::Merge(&takeover))
            .await,
    );
    let other = Api::<LivePatchNode>::all(cluster.admin.clone())
        .get("node-b")
        .await
        .expect("node-b");
    forbidden(
        "agent replaces another node's LivePatchNode",
        agent_lpns
            .replace("node-b", &PostParams::default(), &other)
            .await,
    );
    forbidden(
        "agent deletes a LivePatchNode",
        agent_lpns.delete("node-b", &DeleteParams::default()).await,
    );
    forbidden(
        "agent deletes every LivePatchNode",
        agent_lpns
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await,
    );
    secrets_refused("agent", &agent).await;
    let label = serde_json::json!({ "metadata": { "labels": { "x": "y" } } });
    forbidden(
        "agent labels a Node",
        Api::<Node>::all(agent.clone())
            .patch("node-b", &PatchParams::default(), &Patch::Merge(&label))
            .await,
    );
    forbidden(
        "agent writes a Node's status",
        Api::<Node>::all(agent.clone())
            .patch_status("node-b", &PatchParams::default(), &Patch::Merge(&label))
            .await,
    );

    // Known limit on 1.20, asserted so that a change shows: `patch` of the status
    // subresource cannot be limited to the agent's own node, so this agent (on node-a)
    // can write node-b's status. The chart's ValidatingAdmissionPolicy refuses it on 1.30+.
    let forged = serde_json::json!({
        "apiVersion": "kpersist.io/v1alpha1", "kind": "LivePatchNode",
        "status": { "state": "Idle", "kernelRelease": "6.1.0-56-amd64" }
    });
    agent_lpns
        .patch_status("node-b", &patch, &Patch::Apply(&forged))
        .await
        .expect("on 1.20 RBAC cannot stop an agent writing another node's status");
}

/// Asserts that `who` can neither get, list nor watch Secrets: not the trusted-keys Secret
/// in the release namespace, not across namespaces.
async fn secrets_refused(who: &str, client: &kube::Client) {
    let here: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let everywhere: Api<Secret> = Api::all(client.clone());
    forbidden(
        &format!("{who} gets a Secret"),
        here.get("trusted-keys").await,
    );
    forbidden(
        &format!("{who} lists Secrets in {NAMESPACE}"),
        here.list(&ListParams::default()).await,
    );
    forbidden(
        &format!("{who} lists Secrets in every namespace"),
        everywhere.list(&ListParams::default()).await,
    );
    forbidden(
        &format!("{who} watches Secrets"),
        everywhere
            .watch(&WatchParams::default(), "0")
            .await
            .map(|_| ()),
    );
}
