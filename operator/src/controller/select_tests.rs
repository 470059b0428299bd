use std::sync::Arc;

use super::*;
use crate::fixtures::{node, store_of};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kpersist_crds::{POLICY_LABEL, STATE_LABEL};
use serde_json::json;

pub(crate) fn policy(name: &str, match_labels: serde_json::Value) -> LivePatchPolicy {
    serde_json::from_value(json!({
        "apiVersion": "kpersist.io/v1alpha1",
        "kind": "LivePatchPolicy",
        "metadata": {"name": name, "generation": 1},
        "spec": {
            "nodeSelector": {"matchLabels": match_labels},
            "repository": {"url": "http://repo", "trustedKeys": []}
        }
    }))
    .unwrap()
}

pub(crate) fn lpn(name: &str, desired_policy: Option<&str>) -> LivePatchNode {
    let desired = desired_policy.map(|p| json!({"policy": p, "action": "Apply"}));
    serde_json::from_value(json!({
        "apiVersion": "kpersist.io/v1alpha1",
        "kind": "LivePatchNode",
        "metadata": {"name": name},
        "spec": {"desired": desired},
    }))
    .unwrap()
}

#[test]
fn trimming_keeps_only_what_the_controller_reads() {
    let mut n = node("a", json!({"pool": "web"}), true);
    trim_node(&mut n);
    assert!(n.metadata.managed_fields.is_none());
    assert!(n.metadata.annotations.is_none());
    assert!(n.spec.is_none());
    let status = n.status.as_ref().unwrap();
    assert!(status.images.is_none());
    assert_eq!(status.conditions.as_ref().unwrap().len(), 1);
    assert!(
        status.conditions.as_ref().unwrap()[0]
            .last_heartbeat_time
            .is_none()
    );
    assert!(node_ready(&n));
    assert_eq!(n.labels().get("pool").map(String::as_str), Some("web"));
    assert_eq!(
        status.node_info.as_ref().unwrap().kernel_version,
        "6.1.0-56-amd64"
    );
}

#[test]
fn heartbeats_do_not_change_relevance_but_readiness_does() {
    let mut a = node("a", json!({"pool": "web"}), true);
    let mut b = a.clone();
    b.metadata.resource_version = Some("99".into());
    trim_node(&mut a);
    trim_node(&mut b);
    assert_eq!(node_relevance(&a), node_relevance(&b));
    let mut c = node("a", json!({"pool": "web"}), false);
    trim_node(&mut c);
    assert_ne!(node_relevance(&a), node_relevance(&c));
}

#[test]
fn views_cover_selected_nodes_and_name_overlapping_policies() {
    let web = Arc::new(policy("web", json!({"pool": "web"})));
    let all = Arc::new(policy("all", json!({})));
    let db = Arc::new(policy("db", json!({"pool": "db"})));
    let nodes = vec![
        Arc::new(node("n2", json!({"pool": "web"}), false)),
        Arc::new(node("n1", json!({"pool": "web"}), true)),
        Arc::new(node("n3", json!({"pool": "db"}), true)),
    ];
    let lpns = store_of(vec![lpn("n1", Some("web"))]);
    let policies = vec![web.clone(), all, db];
    let views = node_views(&web, &nodes, &lpns, &policies);
    let names: Vec<_> = views.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["n1", "n2"]);
    assert!(views[0].ready && !views[1].ready);
    assert!(views[0].lpn.is_some() && views[1].lpn.is_none());
    assert_eq!(views[0].other_policies, ["all"]);
    assert_eq!(views[0].kernel_release.as_deref(), Some("6.1.0-56-amd64"));
}

#[test]
fn the_older_of_two_overlapping_policies_owns_their_nodes() {
    let created = |name: &str, at: &str| {
        let mut p = policy(name, json!({}));
        p.metadata.creation_timestamp = Some(Time(at.parse().unwrap()));
        Arc::new(p)
    };
    let old = created("zeta", "2026-01-01T00:00:00Z");
    let young = created("alpha", "2026-02-01T00:00:00Z");
    let twin = created("beta", "2026-02-01T00:00:00Z");
    let nodes = vec![Arc::new(node("n1", json!({}), true))];
    let lpns = store_of(vec![]);
    let policies = vec![young.clone(), old.clone(), twin.clone()];
    let others = |p: &LivePatchPolicy| {
        node_views(p, &nodes, &lpns, &policies)[0]
            .other_policies
            .clone()
    };
    assert!(others(&old).is_empty(), "the oldest policy owns the node");
    assert_eq!(others(&young), ["zeta"]);
    assert_eq!(
        others(&twin),
        ["zeta", "alpha"],
        "oldest first; same second: by name"
    );
    assert!(outranks(&old, &young) && !outranks(&young, &old));
}

#[test]
fn a_node_change_concerns_selecting_policies_and_its_current_owner() {
    let policies = vec![
        Arc::new(policy("web", json!({"pool": "web"}))),
        Arc::new(policy("db", json!({"pool": "db"}))),
    ];
    let labels = BTreeMap::from([("pool".to_string(), "web".to_string())]);
    let owned = lpn("n1", Some("db"));
    assert_eq!(
        policies_for_node("n1", Some(&labels), Some(&owned), &policies),
        ["db", "web"]
    );
    assert_eq!(
        policies_for_node("n1", None, None, &policies),
        Vec::<String>::new()
    );
}

#[test]
fn a_policy_being_deleted_selects_nothing() {
    let mut p = policy("web", json!({}));
    p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::UNIX_EPOCH,
    ));
    assert!(!selects(&p, &BTreeMap::new()));
}

/// A LivePatchNode as an agent and the operator leave it once a release is applied.
fn applied_lpn() -> LivePatchNode {
    let release = json!({
        "id": "6.1.0-41-amd64/v3", "version": 3, "kernelRelease": "6.1.0-41-amd64",
        "buildId": "8a1d", "moduleName": "kpersist_6_1_0_41_v3",
        "moduleUrl": "https://repo/m.ko", "sha256": "0".repeat(64), "size": 1,
        "cves": ["CVE-2026-1", "CVE-2026-2"],
    });
    let condition = |type_: &str| {
        json!({"type": type_, "status": "True", "reason": "R", "message": "a long message",
               "lastTransitionTime": "2026-11-20T09:02:41Z"})
    };
    serde_json::from_value(json!({
        "apiVersion": "kpersist.io/v1alpha1", "kind": "LivePatchNode",
        "metadata": {
            "name": "n1", "uid": "u1", "generation": 2, "resourceVersion": "7",
            "annotations": {"a": "b"}, "labels": {"l": "v"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "u0"}],
            "managedFields": [{"manager": "kpersist-agent", "operation": "Apply"}],
        },
        "spec": {"desired": {
            "policy": "web", "action": "Apply", "release": release, "wave": 1,
            "repository": {"caBundle": "-----BEGIN CERTIFICATE-----"},
        }},
        "status": {
            "state": "Failed", "kernelRelease": "6.1.0-41-amd64", "buildId": "8a1d",
            "livepatchSupported": true, "bootId": "b", "observedGeneration": 2,
            "loaded": [{"name": "kpersist_6_1_0_41_v3", "enabled": true, "transition": false}],
            "applied": {"id": "6.1.0-41-amd64/v2", "version": 2, "moduleName": "m",
                        "cves": ["CVE-2026-1"], "policy": "web", "appliedAt": "2026-11-20T09:02:41Z"},
            "lastError": {"reason": "TransitionStalled", "message": "stuck"},
            "timings": {"run": "Apply", "finishedAt": "2026-11-20T10:00:03Z",
                        "downloadMs": 182, "transitionMs": 1240, "totalMs": 1537},
            "refusedReleases": ["6.1.0-41-amd64/v1"],
            "conditions": [condition("Ready"), condition("Healthy")],
            "agentVersion": "0.1.0",
        },
    }))
    .unwrap()
}

#[test]
fn lpn_trimming_keeps_what_the_engine_reads() {
    let full = applied_lpn();
    let mut trimmed = full.clone();
    trim_lpn(&mut trimmed);

    // Whole but for the CA bundle's digest, because the engine compares it with the spec
    // it wants.
    let (kept, was) = (trimmed.spec.desired.clone(), full.spec.desired.clone());
    let (mut kept, was) = (kept.unwrap(), was.unwrap());
    let bundle = kept.repository.as_mut().unwrap().ca_bundle.take().unwrap();
    assert_eq!(
        bundle,
        format!(
            "sha256:{}",
            kpersist_kmod::repository::sha256_hex(b"-----BEGIN CERTIFICATE-----")
        )
    );
    let mut without_bundle = was.clone();
    without_bundle.repository.as_mut().unwrap().ca_bundle = None;
    assert_eq!(kept, without_bundle);
    // Trimming twice changes nothing.
    let mut again = trimmed.clone();
    trim_lpn(&mut again);
    assert_eq!(again.spec, trimmed.spec);
    let view = |lpn: LivePatchNode| NodeView {
        name: "n1".into(),
        ready: true,
        not_ready_since: None,
        leaving: false,
        kernel_release: None,
        build_id: None,
        lpn: Some(Arc::new(lpn)),
        other_policies: Vec::new(),
    };
    assert!(crate::engine::holds_desired(&view(trimmed.clone()), &was));
    assert!(crate::engine::holds_desired(&view(full.clone()), &was));
    let mut other_bundle = was.clone();
    other_bundle.repository.as_mut().unwrap().ca_bundle = Some("-----BEGIN X-----".into());
    assert!(!crate::engine::holds_desired(
        &view(trimmed.clone()),
        &other_bundle
    ));
    assert!(!crate::engine::holds_desired(
        &view(full.clone()),
        &other_bundle
    ));
    let (meta, before) = (&trimmed.metadata, &full.metadata);
    assert_eq!(meta.name, before.name);
    assert_eq!(meta.uid, before.uid);
    assert_eq!(meta.generation, before.generation);
    assert_eq!(meta.resource_version, before.resource_version);
    assert!(meta.annotations.is_none());
    // The labels stay: the controller writes the whole map when it updates its own.
    assert_eq!(meta.labels, before.labels);
    assert!(meta.owner_references.is_none() && meta.managed_fields.is_none());

    let (s, f) = (trimmed.status.unwrap(), full.status.unwrap());
    assert_eq!(s.state, f.state);
    assert_eq!(s.kernel_release, f.kernel_release);
    assert_eq!(s.build_id, f.build_id);
    assert_eq!(s.livepatch_supported, f.livepatch_supported);
    assert_eq!(s.observed_generation, f.observed_generation);
    assert_eq!(s.refused_releases, f.refused_releases);
    assert_eq!(s.last_error, f.last_error);
    let (applied, was) = (s.applied.unwrap(), f.applied.unwrap());
    assert_eq!((applied.id, applied.version), (was.id, was.version));
    assert!(applied.cves.is_empty() && applied.module_name.is_empty());
    assert!(s.conditions.is_empty() && s.loaded.is_empty());
    assert!(s.boot_id.is_none() && s.agent_version.is_none());
    assert!(f.timings.as_ref().is_some_and(|t| t.finished_at.is_some()));
    assert_eq!(s.timings, f.timings, "the latency metrics read the timings");
}

#[test]
fn node_views_share_the_stores_live_patch_nodes() {
    let nodes = vec![Arc::new(node("n1", json!({"pool": "web"}), true))];
    let lpns = store_of(vec![lpn("n1", Some("web"))]);
    let p = Arc::new(policy("web", json!({"pool": "web"})));
    let views = node_views(&p, &nodes, &lpns, std::slice::from_ref(&p));
    let stored = lpns.get(&kube::runtime::reflector::ObjectRef::new("n1"));
    assert!(Arc::ptr_eq(
        views[0].lpn.as_ref().unwrap(),
        stored.as_ref().unwrap()
    ));
}

#[test]
fn pending_reverts_are_the_policys_reverts_its_agents_have_not_finished() {
    let revert = |name: &str, policy: &str, observed: Option<i64>, state: &str| {
        let object: LivePatchNode = serde_json::from_value(json!({
            "apiVersion": "kpersist.io/v1alpha1",
            "kind": "LivePatchNode",
            "metadata": {"name": name, "generation": 2},
            "spec": {"desired": {"policy": policy, "action": "Revert"}},
            "status": {"observedGeneration": observed, "state": state},
        }))
        .unwrap();
        Arc::new(object)
    };
    let lpns = vec![
        revert("unseen", "web", Some(1), "Applied"),
        revert("reverting", "web", Some(2), "Reverting"),
        revert("done", "web", Some(2), "Applied"),
        revert("other-policy", "db", Some(1), "Reverting"),
        Arc::new(lpn("applying", Some("web"))),
    ];
    assert_eq!(pending_reverts(&lpns, "web"), 2);
    assert_eq!(pending_reverts(&lpns, "db"), 1);
    assert_eq!(pending_reverts(&lpns, "none"), 0);
}

#[test]
fn a_cordoned_or_deleting_node_is_leaving_and_not_ready_since_comes_from_its_condition() {
    let mut n = node("a", json!({}), false);
    assert!(!node_leaving(&n));
    n.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
        unschedulable: Some(true),
        ..Default::default()
    });
    assert!(node_leaving(&n));
    trim_node(&mut n);
    assert!(node_leaving(&n), "trimming keeps the cordon");
    let since = jiff::Timestamp::from_second(1_700_000_000).unwrap();
    if let Some(c) = n
        .status
        .as_mut()
        .and_then(|s| s.conditions.as_mut())
        .and_then(|c| c.first_mut())
    {
        c.last_transition_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(since));
    }
    assert_eq!(node_not_ready_since(&n), Some(since));
}

#[test]
fn a_node_that_left_the_selector_is_sent_back_from_a_bad_release_and_then_cleared() {
    let with = |name: &str, state: &str, release: Option<&str>| {
        let mut l = lpn(name, Some("web"));
        l.metadata.generation = Some(2);
        l.metadata.resource_version = Some(format!("rv-{name}"));
        if let (Some(d), Some(id)) = (l.spec.desired.as_mut(), release) {
            d.release = serde_json::from_value(json!({
                "id": id, "version": 1, "kernelRelease": "k", "buildId": "b",
                "moduleName": "m", "moduleUrl": "http://r/m.ko", "sha256": "00", "size": 1,
            }))
            .ok();
        }
        l.status = serde_json::from_value(json!({"state": state, "observedGeneration": 2})).ok();
        Arc::new(l)
    };
    let lpns = vec![
        with("left-done", "Applied", Some("k/v1")),
        with("left-busy", "Applying", Some("k/v1")),
        with("left-on-bad", "Failed", Some("k/v9")),
        with("still-in", "Applied", Some("k/v1")),
        with("unknown", "Applied", Some("k/v1")),
        Arc::new(lpn("left-other", Some("db"))),
    ];
    let selected = |node: &str| match node {
        "still-in" => Some(true),
        "unknown" => None,
        _ => Some(false),
    };
    let bad = std::collections::HashSet::from(["k/v9"]);
    let now = jiff::Timestamp::from_second(1_700_000_000).unwrap();
    let writes = departed(&lpns, "web", selected, &bad, now, None);
    let revert = lpns[2]
        .spec
        .desired
        .as_ref()
        .map(|d| d.revert(now.to_string()));
    assert_eq!(
        revert
            .as_ref()
            .map(|d| (d.action, d.previous.as_ref().map(|r| r.id.as_str()))),
        Some((PatchAction::Revert, Some("k/v9")))
    );
    assert_eq!(
        writes,
        vec![
            // Labels go with each write: the policy's is dropped with the request.
            crate::controller::write::SpecWrite {
                node: "left-done".into(),
                desired: None,
                labels: Some([(STATE_LABEL.to_string(), "Applied".to_string())].into()),
                resource_version: Some("rv-left-done".into()),
            },
            crate::controller::write::SpecWrite {
                node: "left-on-bad".into(),
                desired: revert.clone(),
                labels: Some(
                    [
                        (POLICY_LABEL.to_string(), "web".to_string()),
                        (STATE_LABEL.to_string(), "Failed".to_string()),
                    ]
                    .into()
                ),
                resource_version: Some("rv-left-on-bad".into()),
            },
        ]
    );

    // Once its agent has finished the revert, its request is cleared like any other.
    let mut reverted = (*lpns[2]).clone();
    reverted.spec.desired = revert;
    let writes = departed(&[Arc::new(reverted)], "web", selected, &bad, now, None);
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].desired, None);
}
