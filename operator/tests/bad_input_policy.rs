//! Policies with each kind of invalid field that the CRD schema lets through (or that a
//! client could send where the schema is not installed): the operator's validation names
//! the field's path and the problem, and the engine reports exactly that in the policy's
//! Ready=False condition with reason InvalidPolicy (see `engine::invalid`).
//!
//! Every case prints one row of the bad-input catalogue (`input | component | outcome`);
//! `e2e/tools/bad-input-catalogue.sh` collects the rows into the table in RELIABILITY.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kpersist_crds::LivePatchPolicySpec;
use kpersist_kmod::signing::PrivateKey;
use kpersist_operator::validate::validate;
use serde_json::{Value, json};

/// A valid spec as a user writes it, every optional part present so each can be broken.
fn valid() -> Value {
    json!({
        "nodeSelector": { "matchLabels": { "pool": "a" } },
        "repository": {
            "url": "https://patches.example.com/kernel",
            "channel": "stable",
            "trustedKeys": [PrivateKey::generate().public_key().to_base64_line()],
            "checkInterval": "1h",
            "delay": "72h",
        },
        "rollout": {
            "waves": [ { "nodes": 1, "bake": "10m" }, { "percent": 50, "bake": "30m" } ],
            "maxInFlight": 5,
            "maintenanceWindows": [
                { "days": ["Mon"], "start": "22:00", "end": "02:00", "timeZone": "Europe/Berlin" }
            ],
        },
        "health": {
            "transitionTimeout": "60s",
            "prometheus": {
                "url": "http://prometheus:9090",
                "query": "sum(up)",
                "operator": "GreaterThan",
                "threshold": 0.0,
                "interval": "30s",
            },
        },
    })
}

fn spec(value: Value) -> LivePatchPolicySpec {
    serde_json::from_value(value).expect("the case keeps the spec's shape")
}

#[test]
fn the_valid_policy_these_cases_break_has_no_errors() {
    assert_eq!(validate(&spec(valid())), vec![]);
}

#[test]
fn every_invalid_field_is_reported_by_its_path() {
    // (what is wrong, the JSON pointer set, its new value, the path reported, a word of the problem)
    let cases: Vec<(&str, &str, Value, &str, &str)> = vec![
        (
            "repository.url with scheme ftp",
            "/repository/url",
            json!("ftp://example.com/x"),
            "spec.repository.url",
            "use http or https",
        ),
        (
            "repository.url without a host",
            "/repository/url",
            json!("https://"),
            "spec.repository.url",
            "host",
        ),
        (
            "repository.url not a URL",
            "/repository/url",
            json!("https://exa mple.com"),
            "spec.repository.url",
            "not a URL",
        ),
        (
            "repository.channel with capitals",
            "/repository/channel",
            json!("Stable!"),
            "spec.repository.channel",
            "not a channel name",
        ),
        (
            "repository.trustedKeys entry of 3 bytes",
            "/repository/trustedKeys",
            json!(["AAAA"]),
            "spec.repository.trustedKeys[0]",
            "3 bytes",
        ),
        (
            "repository.trustedKeys entry not base64",
            "/repository/trustedKeys",
            json!(["not base64!"]),
            "spec.repository.trustedKeys[0]",
            "base64",
        ),
        (
            "repository without any trusted key",
            "/repository/trustedKeys",
            json!([]),
            "spec.repository",
            "trustedKeys",
        ),
        (
            "repository.trustedKeysSecret without a namespace",
            "/repository/trustedKeysSecret",
            json!({"namespace": "", "name": "keys"}),
            "spec.repository.trustedKeysSecret.namespace",
            "empty",
        ),
        (
            "repository.checkInterval of 0s",
            "/repository/checkInterval",
            json!("0s"),
            "spec.repository.checkInterval",
            "zero",
        ),
        (
            "repository.delay of 3x",
            "/repository/delay",
            json!("3x"),
            "spec.repository.delay",
            "3x",
        ),
        (
            "repository.pinnedVersion 0",
            "/repository/pinnedVersion",
            json!(0),
            "spec.repository.pinnedVersion",
            "start at 1",
        ),
        (
            "rollout.waves empty",
            "/rollout/waves",
            json!([]),
            "spec.rollout.waves",
            "at least one wave",
        ),
        (
            "rollout wave with nodes and percent",
            "/rollout/waves/0/percent",
            json!(10),
            "spec.rollout.waves[0]",
            "exactly one of nodes and percent",
        ),
        (
            "rollout wave without a size",
            "/rollout/waves/0",
            json!({"bake": "1m"}),
            "spec.rollout.waves[0]",
            "exactly one of nodes and percent",
        ),
        (
            "rollout wave of 0 nodes",
            "/rollout/waves/0/nodes",
            json!(0),
            "spec.rollout.waves[0].nodes",
            "at least 1",
        ),
        (
            "rollout wave of 101 percent",
            "/rollout/waves/1/percent",
            json!(101),
            "spec.rollout.waves[1].percent",
            "1 to 100",
        ),
        (
            "rollout waves shrinking",
            "/rollout/waves",
            json!([{"percent": 50, "bake": "1m"}, {"percent": 20, "bake": "1m"}]),
            "spec.rollout.waves[1].percent",
            "must not decrease",
        ),
        (
            "rollout wave bake of \"10 minutes\"",
            "/rollout/waves/0/bake",
            json!("10 minutes"),
            "spec.rollout.waves[0].bake",
            "10 minutes",
        ),
        (
            "rollout.maxInFlight 0",
            "/rollout/maxInFlight",
            json!(0),
            "spec.rollout.maxInFlight",
            "at least 1",
        ),
        (
            "maintenance window start 7:00",
            "/rollout/maintenanceWindows/0/start",
            json!("7:00"),
            "spec.rollout.maintenanceWindows[0].start",
            "7:00",
        ),
        (
            "maintenance window end 24:30",
            "/rollout/maintenanceWindows/0/end",
            json!("24:30"),
            "spec.rollout.maintenanceWindows[0].end",
            "24:30",
        ),
        (
            "maintenance window in zone Atlantis/Capital",
            "/rollout/maintenanceWindows/0/timeZone",
            json!("Atlantis/Capital"),
            "spec.rollout.maintenanceWindows[0].timeZone",
            "Atlantis/Capital",
        ),
        (
            "health.transitionTimeout empty",
            "/health/transitionTimeout",
            json!(""),
            "spec.health.transitionTimeout",
            "",
        ),
        (
            "health.prometheus.url not a URL",
            "/health/prometheus/url",
            json!("prometheus:9090"),
            "spec.health.prometheus.url",
            "",
        ),
        (
            "health.prometheus.query blank",
            "/health/prometheus/query",
            json!("  "),
            "spec.health.prometheus.query",
            "PromQL",
        ),
        (
            "health.prometheus.interval of 0s",
            "/health/prometheus/interval",
            json!("0s"),
            "spec.health.prometheus.interval",
            "zero",
        ),
        (
            "nodeSelector operator Equals",
            "/nodeSelector",
            json!({"matchExpressions": [{"key": "pool", "operator": "Equals"}]}),
            "spec.nodeSelector.matchExpressions[0].operator",
            "Equals",
        ),
        (
            "nodeSelector In without values",
            "/nodeSelector",
            json!({"matchExpressions": [{"key": "pool", "operator": "In"}]}),
            "spec.nodeSelector.matchExpressions[0]",
            "at least one value",
        ),
    ];
    for (input, pointer, value, path, word) in cases {
        let mut policy = valid();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let target = policy.pointer_mut(parent).unwrap();
        match target {
            Value::Array(items) => items[key.parse::<usize>().unwrap()] = value,
            Value::Object(fields) => {
                fields.insert(key.to_string(), value);
            }
            other => panic!("{input}: {pointer} is inside {other}"),
        }
        let errors = validate(&spec(policy));
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, [path], "{input}: {errors:?}");
        let message = errors[0].to_string();
        assert!(
            message.contains(word),
            "{input}: the problem should say {word:?}: {message}"
        );
        println!(
            "| policy {} | operator (validation; condition Ready=False, InvalidPolicy) | refused: {} |",
            input.replace('|', "\\|"),
            message.replace('|', "\\|")
        );
    }
}
