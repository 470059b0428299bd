use std::sync::Arc;

use super::*;
use crate::fixtures::{node, store_of};
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
