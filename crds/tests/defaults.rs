//! A minimal policy gets the documented defaults, and the API round-trips through JSON.

use kpersist_crds::{FailurePolicy, LivePatchPolicy, LivePatchPolicySpec, parse_duration};

#[test]
fn minimal_policy_gets_documented_defaults() {
    let spec: LivePatchPolicySpec = serde_json::from_value(serde_json::json!({
        "repository": { "url": "https://patches.example.com/kpersist", "trustedKeys": ["a"] }
    }))
    .expect("a policy with only a repository is valid");
    assert_eq!(spec.repository.channel, "stable");
    assert_eq!(
        parse_duration(&spec.repository.check_interval).ok(),
        Some(std::time::Duration::from_secs(3600))
    );
    assert_eq!(spec.rollout.failure_policy, FailurePolicy::Revert);
    assert_eq!(spec.rollout.max_failures, 0);
    assert_eq!(spec.rollout.waves.len(), 3, "canary, 10%, rest");
    assert_eq!(spec.rollout.waves[0].nodes, Some(1));
    assert_eq!(spec.rollout.waves.last().and_then(|w| w.percent), Some(100));
    assert_eq!(spec.health.transition_timeout, "60s");
    assert!(spec.health.node_ready && spec.health.kmsg_checks);
    assert!(!spec.rollout.paused && !spec.rollout.dry_run);
}

#[test]
fn defaults_in_the_schema_match_the_serde_defaults() {
    // The API server fills defaults from the schema; the operator from serde. They must agree.
    let crd = serde_json::to_value(<LivePatchPolicy as kube::CustomResourceExt>::crd())
        .expect("CRD serializes");
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    let from_serde = serde_json::to_value(kpersist_crds::RolloutSpec::default()).expect("ok");
    assert_eq!(
        spec["rollout"]["properties"]["waves"]["default"],
        from_serde["waves"]
    );
    assert_eq!(
        spec["health"]["properties"]["transitionTimeout"]["default"],
        "60s"
    );
    assert_eq!(
        spec["repository"]["properties"]["channel"]["default"],
        "stable"
    );
}

#[test]
fn unknown_enum_values_are_refused_with_the_value_named() {
    let err = serde_json::from_value::<LivePatchPolicySpec>(serde_json::json!({
        "repository": { "url": "https://x" },
        "rollout": { "failurePolicy": "Ignore" }
    }))
    .expect_err("Ignore is not a failure policy");
    assert!(err.to_string().contains("Ignore"), "{err}");
}
