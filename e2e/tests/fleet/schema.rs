//! Every kind of invalid policy field the CRD schema refuses, sent as raw JSON (so that
//! values the Rust types cannot even hold, such as unknown enum values or wrong types, are
//! tried too) to the real API server: each is refused with 422 and a message naming the
//! field's path, and nothing is stored.
//!
//! Every case prints one row of the bad-input catalogue (`input | component | outcome`);
//! `e2e/tools/bad-input-catalogue.sh` collects the rows into the table in RELIABILITY.md.

use crate::support::{invalid, sample_policy, serial};
use kpersist_crds::LivePatchPolicy;
use kpersist_e2e::fleet::Cluster;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use serde_json::{Value, json};

/// The sample policy as JSON with every optional part present, so each can be broken.
fn valid_policy(name: &str) -> Value {
    let mut policy = serde_json::to_value(sample_policy(name)).expect("policy serializes");
    let spec = &mut policy["spec"];
    spec["repository"]["delay"] = json!("72h");
    spec["rollout"]["maintenanceWindows"] =
        json!([{ "days": ["Mon"], "start": "22:00", "end": "02:00", "timeZone": "UTC" }]);
    spec["health"]["prometheus"] = json!({
        "url": "http://prometheus:9090", "query": "sum(up)", "operator": "GreaterThan",
        "threshold": 0.0, "interval": "30s",
    });
    policy
}

/// Sets (or with `None` removes) the field at JSON `pointer` below `spec`.
fn edit(policy: &mut Value, pointer: &str, value: Option<Value>) {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
    let target = policy
        .pointer_mut(&format!("/spec{parent}"))
        .unwrap_or_else(|| panic!("no {parent} in the sample policy"));
    match (target, value) {
        (Value::Array(items), Some(value)) => items[key.parse::<usize>().expect("index")] = value,
        (Value::Object(fields), Some(value)) => {
            fields.insert(key.to_string(), value);
        }
        (Value::Object(fields), None) => {
            fields.remove(key);
        }
        (other, _) => panic!("cannot edit {pointer} inside {other}"),
    }
}

#[tokio::test]
async fn the_api_server_refuses_every_kind_of_invalid_policy_field_by_its_path() {
    let _turn = serial().await;
    let cluster = Cluster::start().await.expect("cluster");
    let resource = ApiResource::erase::<LivePatchPolicy>(&());
    let policies: Api<DynamicObject> = Api::all_with(cluster.admin.clone(), &resource);

    let create = |policy: Value| {
        let policies = policies.clone();
        async move {
            let object: DynamicObject = serde_json::from_value(policy).expect("object");
            policies.create(&PostParams::default(), &object).await
        }
    };
    create(valid_policy("valid"))
        .await
        .expect("the sample policy with every optional part is stored");

    // (what is wrong, the field below spec, its value or None to remove it, the path named)
    let cases: Vec<(&str, &str, Option<Value>, &str)> = vec![
        (
            "repository.url missing",
            "/repository/url",
            None,
            "spec.repository.url",
        ),
        (
            "repository.url with scheme ftp",
            "/repository/url",
            Some(json!("ftp://x/repo")),
            "spec.repository.url",
        ),
        (
            "repository.channel with capitals",
            "/repository/channel",
            Some(json!("Stable!")),
            "spec.repository.channel",
        ),
        (
            "repository.checkInterval \"hourly\"",
            "/repository/checkInterval",
            Some(json!("hourly")),
            "spec.repository.checkInterval",
        ),
        (
            "repository.delay \"3 days\"",
            "/repository/delay",
            Some(json!("3 days")),
            "spec.repository.delay",
        ),
        (
            "repository.pinnedVersion 0",
            "/repository/pinnedVersion",
            Some(json!(0)),
            "spec.repository.pinnedVersion",
        ),
        (
            "repository.trustedKeys a string, not a list",
            "/repository/trustedKeys",
            Some(json!("AAAA")),
            "spec.repository.trustedKeys",
        ),
        (
            "rollout.waves empty",
            "/rollout/waves",
            Some(json!([])),
            "spec.rollout.waves",
        ),
        (
            "rollout wave of 0 nodes",
            "/rollout/waves/0",
            Some(json!({"nodes": 0, "bake": "1m"})),
            "nodes",
        ),
        (
            "rollout wave of 101 percent",
            "/rollout/waves/0",
            Some(json!({"percent": 101, "bake": "1m"})),
            "percent",
        ),
        (
            "rollout wave of -5 percent",
            "/rollout/waves/0",
            Some(json!({"percent": -5, "bake": "1m"})),
            "percent",
        ),
        (
            "rollout wave with both nodes and percent",
            "/rollout/waves/0",
            Some(json!({"nodes": 1, "percent": 10, "bake": "1m"})),
            "\"spec.rollout.waves\" must validate one and only one schema",
        ),
        (
            "rollout wave with neither nodes nor percent",
            "/rollout/waves/0",
            Some(json!({"bake": "1m"})),
            "\"spec.rollout.waves\" must validate one and only one schema",
        ),
        (
            "repository.trustedKeys entry that is no key",
            "/repository/trustedKeys",
            Some(json!(["not a key"])),
            "spec.repository.trustedKeys in body should match",
        ),
        (
            "maintenance window timeZone with spaces",
            "/rollout/maintenanceWindows/0/timeZone",
            Some(json!("Central European Time")),
            "timeZone",
        ),
        (
            "rollout wave bake \"ten minutes\"",
            "/rollout/waves/0/bake",
            Some(json!("ten minutes")),
            "bake",
        ),
        (
            "rollout.maxInFlight 0",
            "/rollout/maxInFlight",
            Some(json!(0)),
            "spec.rollout.maxInFlight",
        ),
        (
            "rollout.maxInFlight \"ten\" (a string)",
            "/rollout/maxInFlight",
            Some(json!("ten")),
            "spec.rollout.maxInFlight",
        ),
        (
            "rollout.maxFailures -1",
            "/rollout/maxFailures",
            Some(json!(-1)),
            "spec.rollout.maxFailures",
        ),
        (
            "rollout.failurePolicy Explode",
            "/rollout/failurePolicy",
            Some(json!("Explode")),
            "spec.rollout.failurePolicy",
        ),
        (
            "rollout.paused \"yes\" (a string)",
            "/rollout/paused",
            Some(json!("yes")),
            "spec.rollout.paused",
        ),
        (
            "maintenance window start 25:00",
            "/rollout/maintenanceWindows/0/start",
            Some(json!("25:00")),
            "start",
        ),
        (
            "maintenance window end 7:5",
            "/rollout/maintenanceWindows/0/end",
            Some(json!("7:5")),
            "end",
        ),
        (
            "maintenance window day Funday",
            "/rollout/maintenanceWindows/0/days",
            Some(json!(["Funday"])),
            "days",
        ),
        (
            "health.transitionTimeout \"1 minute\"",
            "/health/transitionTimeout",
            Some(json!("1 minute")),
            "spec.health.transitionTimeout",
        ),
        (
            "health.prometheus.url without http",
            "/health/prometheus/url",
            Some(json!("prometheus:9090")),
            "spec.health.prometheus.url",
        ),
        (
            "health.prometheus.query empty",
            "/health/prometheus/query",
            Some(json!("")),
            "spec.health.prometheus.query",
        ),
        (
            "health.prometheus.operator Approximately",
            "/health/prometheus/operator",
            Some(json!("Approximately")),
            "spec.health.prometheus.operator",
        ),
        (
            "health.prometheus.interval \"often\"",
            "/health/prometheus/interval",
            Some(json!("often")),
            "spec.health.prometheus.interval",
        ),
    ];
    let count = cases.len();
    for (i, (input, pointer, value, path)) in cases.into_iter().enumerate() {
        let mut policy = valid_policy(&format!("bad-{i}"));
        edit(&mut policy, pointer, value);
        let message = invalid(create(policy).await);
        assert!(
            message.contains(path),
            "{input}: the refusal should name {path}: {message}"
        );
        println!(
            "| policy {} | API server (CRD schema, kube-apiserver 1.20) | refused (422): {} |",
            input.replace('|', "\\|"),
            message.replace('|', "\\|")
        );
    }
    let stored = policies.list(&ListParams::default()).await.expect("list");
    let names: Vec<String> = stored
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(
        names,
        ["valid"],
        "none of the {count} invalid policies is stored"
    );
}
