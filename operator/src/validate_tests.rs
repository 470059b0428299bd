use kpersist_crds::{
    HealthSpec, MaintenanceWindow, PrometheusGate, RepositorySpec, RolloutSpec, Wave,
};
use kpersist_kmod::signing::PrivateKey;

use super::*;

fn valid() -> LivePatchPolicySpec {
    LivePatchPolicySpec {
        node_selector: LabelSelector::default(),
        repository: RepositorySpec {
            url: "https://patches.example.com/kernel".into(),
            channel: "stable".into(),
            trusted_keys: vec![PrivateKey::generate().public_key().to_base64_line()],
            trusted_keys_secret: None,
            ca_bundle: None,
            allowed_redirect_hosts: Vec::new(),
            check_interval: "1h".into(),
            delay: Some("72h".into()),
            pinned_version: None,
        },
        rollout: RolloutSpec::default(),
        health: HealthSpec::default(),
    }
}

fn wave(nodes: Option<u32>, percent: Option<u32>) -> Wave {
    Wave {
        nodes,
        percent,
        bake: "10m".into(),
    }
}

fn paths(spec: &LivePatchPolicySpec) -> Vec<String> {
    validate(spec).into_iter().map(|e| e.path).collect()
}

#[test]
fn a_valid_policy_has_no_errors() {
    assert_eq!(validate(&valid()), vec![]);
}

#[test]
fn a_wave_needs_exactly_one_size() {
    let mut spec = valid();
    spec.rollout.waves = vec![
        wave(Some(1), None),
        wave(Some(2), Some(50)),
        wave(None, None),
    ];
    let errors = validate(&spec);
    assert_eq!(
        errors.first().map(ToString::to_string).as_deref(),
        Some("spec.rollout.waves[1]: give exactly one of nodes and percent")
    );
    assert_eq!(
        paths(&spec),
        vec!["spec.rollout.waves[1]", "spec.rollout.waves[2]"]
    );
}

#[test]
fn percentages_must_not_decrease() {
    let mut spec = valid();
    spec.rollout.waves = vec![
        wave(None, Some(20)),
        wave(Some(3), None),
        wave(None, Some(10)),
    ];
    let errors = validate(&spec);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "spec.rollout.waves[2].percent");
    assert!(errors[0].problem.contains("waves[0]"), "{}", errors[0]);
}

#[test]
fn node_counts_must_not_decrease_and_sizes_be_in_range() {
    let mut spec = valid();
    spec.rollout.waves = vec![
        wave(Some(5), None),
        wave(Some(2), None),
        wave(Some(0), None),
        wave(None, Some(101)),
    ];
    assert_eq!(
        paths(&spec),
        vec![
            "spec.rollout.waves[1].nodes",
            "spec.rollout.waves[2].nodes",
            "spec.rollout.waves[3].percent"
        ]
    );
}

#[test]
fn durations_must_parse() {
    let mut spec = valid();
    spec.rollout.waves[0].bake = "10 minutes".into();
    spec.repository.check_interval = "0s".into();
    spec.repository.delay = Some("3x".into());
    spec.health.transition_timeout = "".into();
    let errors = validate(&spec);
    let got: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        got,
        vec![
            "spec.repository.checkInterval",
            "spec.repository.delay",
            "spec.rollout.waves[0].bake",
            "spec.health.transitionTimeout"
        ]
    );
    assert!(errors[2].problem.contains("10 minutes"), "{}", errors[2]);
}

#[test]
fn windows_need_hh_mm_and_a_known_zone() {
    let mut spec = valid();
    spec.rollout.maintenance_windows = vec![
        MaintenanceWindow {
            days: vec![],
            start: "22:00".into(),
            end: "02:00".into(),
            time_zone: "Europe/Berlin".into(),
        },
        MaintenanceWindow {
            days: vec![],
            start: "7:00".into(),
            end: "08:00".into(),
            time_zone: "UTC".into(),
        },
        MaintenanceWindow {
            days: vec![],
            start: "07:00".into(),
            end: "08:00".into(),
            time_zone: "Atlantis/Capital".into(),
        },
    ];
    assert_eq!(
        paths(&spec),
        vec![
            "spec.rollout.maintenanceWindows[1].start",
            "spec.rollout.maintenanceWindows[2].timeZone"
        ]
    );
}

#[test]
fn keys_must_be_32_bytes_of_base64() {
    let mut spec = valid();
    spec.repository.trusted_keys = vec!["not base64!".into(), "AAAA".into()];
    let errors = validate(&spec);
    assert_eq!(
        errors.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
        vec![
            "spec.repository.trustedKeys[0]",
            "spec.repository.trustedKeys[1]"
        ]
    );
    assert!(errors[1].problem.contains("3 bytes"), "{}", errors[1]);
}

#[test]
fn some_key_source_is_required() {
    let mut spec = valid();
    spec.repository.trusted_keys.clear();
    assert_eq!(paths(&spec), vec!["spec.repository"]);
}

#[test]
fn urls_must_be_http_with_a_host() {
    let mut spec = valid();
    spec.repository.url = "ftp://example.com/x".into();
    spec.health.prometheus = Some(PrometheusGate {
        url: "not a url".into(),
        query: " ".into(),
        operator: kpersist_crds::ComparisonOperator::LessThan,
        threshold: f64::NAN,
        fail_on_empty: false,
        interval: "30s".into(),
        timeout: "10s".into(),
        ca_bundle: None,
        headers: Vec::new(),
    });
    assert_eq!(
        paths(&spec),
        vec![
            "spec.repository.url",
            "spec.health.prometheus.url",
            "spec.health.prometheus.query",
            "spec.health.prometheus.threshold"
        ]
    );
}

#[test]
fn gate_headers_timeout_and_secret_references_are_checked() {
    use kpersist_crds::{GateHeader, SecretKeyRef};
    let mut spec = valid();
    let header = |name: &str, value: Option<&str>, from: Option<SecretKeyRef>| GateHeader {
        name: name.into(),
        value: value.map(str::to_string),
        value_from: from,
    };
    let from = |key: &str| SecretKeyRef {
        namespace: "monitoring".into(),
        name: "gate".into(),
        key: key.into(),
    };
    let mut gate = PrometheusGate {
        url: "https://prometheus:9090".into(),
        query: "up".into(),
        operator: kpersist_crds::ComparisonOperator::GreaterThan,
        threshold: 0.0,
        fail_on_empty: false,
        interval: "30s".into(),
        timeout: "0s".into(),
        ca_bundle: None,
        headers: vec![
            header("X-Scope-OrgID", Some("tenant-a"), None),
            header("Authorization", None, Some(from("token"))),
            header("Bad Name", Some("x"), None),
            header("X-Both", Some("x"), Some(from("token"))),
            header("X-Neither", None, None),
            header("X-No-Key", None, Some(from(""))),
            header("X-Line", Some("a\r\nInjected: 1"), None),
        ],
    };
    spec.health.prometheus = Some(gate.clone());
    assert_eq!(
        paths(&spec),
        vec![
            "spec.health.prometheus.timeout",
            "spec.health.prometheus.headers[2].name",
            "spec.health.prometheus.headers[3]",
            "spec.health.prometheus.headers[4]",
            "spec.health.prometheus.headers[5].valueFrom.key",
            "spec.health.prometheus.headers[6].value",
        ]
    );
    // A Secret's value never goes over plain http, and a URL carries no password.
    gate.timeout = "10s".into();
    gate.headers.truncate(2);
    gate.url = "http://prometheus:9090".into();
    spec.health.prometheus = Some(gate.clone());
    assert_eq!(
        paths(&spec),
        vec!["spec.health.prometheus.headers[1].valueFrom"]
    );
    gate.url = "https://admin:hunter2@prometheus:9090".into();
    gate.headers.clear();
    spec.health.prometheus = Some(gate);
    let errors = validate(&spec);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(!errors[0].problem.contains("hunter2"), "{errors:?}");
}

#[test]
fn selector_operators_are_checked() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    let mut spec = valid();
    let expr = |operator: &str, values: Option<Vec<String>>| LabelSelectorRequirement {
        key: "pool".into(),
        operator: operator.into(),
        values,
    };
    spec.node_selector.match_expressions = Some(vec![
        expr("In", None),
        expr("Exists", Some(vec!["a".into()])),
        expr("Equals", None),
        expr("NotIn", Some(vec!["b".into()])),
    ]);
    assert_eq!(
        paths(&spec),
        vec![
            "spec.nodeSelector.matchExpressions[0]",
            "spec.nodeSelector.matchExpressions[1]",
            "spec.nodeSelector.matchExpressions[2].operator"
        ]
    );
}

#[test]
fn bad_channel_and_zero_pin_are_refused() {
    let mut spec = valid();
    spec.repository.channel = "Stable!".into();
    spec.repository.pinned_version = Some(0);
    spec.rollout.max_in_flight = 0;
    assert_eq!(
        paths(&spec),
        vec![
            "spec.repository.channel",
            "spec.repository.pinnedVersion",
            "spec.rollout.maxInFlight"
        ]
    );
}
