//! RBAC: each binary gets exactly the verbs it needs, and nothing reaches Secrets beyond
//! `get` of the Secrets named in values.

use std::collections::BTreeSet;

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};

use super::{DEFAULT, FULL, rendered};
use crate::chart_support::{Manifest, all, find};

/// (apiGroup, resource, verb) triples a set of rules grants, ignoring resourceNames.
fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for r in rules {
        for g in r.api_groups.clone().unwrap_or_default() {
            for res in r.resources.clone().unwrap_or_default() {
                for v in &r.verbs {
                    out.insert((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    out
}

fn triples(list: &[(&str, &str, &[&str])]) -> BTreeSet<(String, String, String)> {
    list.iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect()
}

fn cluster_role(m: &[Manifest], suffix: &str) -> Vec<PolicyRule> {
    let role: ClusterRole = find(m, "ClusterRole", suffix)
        .typed()
        .unwrap_or_else(|e| panic!("{e}"));
    role.rules.unwrap_or_default()
}

#[test]
fn agent_may_touch_only_livepatchnodes_and_read_nodes_and_policies() {
    let Some(m) = rendered(DEFAULT) else { return };
    let want = triples(&[
        (
            "kpersist.io",
            "livepatchnodes",
            &["create", "get", "list", "watch"],
        ),
        ("kpersist.io", "livepatchnodes/status", &["get", "patch"]),
        // To verify spec.desired against the named policy's signed index; never list or
        // watch, and nothing of the policy's status or Secrets.
        ("kpersist.io", "livepatchpolicies", &["get"]),
        ("", "nodes", &["get"]),
    ]);
    assert_eq!(grants(&cluster_role(&m, "-agent")), want);
    let bound_to_agent = all(&m, "RoleBinding")
        .chain(all(&m, "ClusterRoleBinding"))
        .filter(|b| {
            b.value["subjects"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|s| s["name"].as_str().is_some_and(|n| n.ends_with("-agent")))
            })
        })
        .count();
    assert_eq!(
        bound_to_agent, 1,
        "the agent's service account is bound more than once"
    );
}

#[test]
fn operator_gets_what_it_reconciles_with() {
    let Some(m) = rendered(DEFAULT) else { return };
    let want = triples(&[
        (
            "kpersist.io",
            "livepatchpolicies",
            &["get", "list", "watch", "patch", "update"],
        ),
        ("kpersist.io", "livepatchpolicies/finalizers", &["update"]),
        (
            "kpersist.io",
            "livepatchpolicies/status",
            &["get", "patch", "update"],
        ),
        (
            "kpersist.io",
            "livepatchnodes",
            &["get", "list", "watch", "patch"],
        ),
        ("", "nodes", &["get", "list", "watch"]),
        ("", "events", &["create", "patch"]),
        ("events.k8s.io", "events", &["create", "patch"]),
    ]);
    assert_eq!(grants(&cluster_role(&m, "-operator")), want);
    let lease: Role = find(&m, "Role", "-leader-election")
        .typed()
        .unwrap_or_else(|e| panic!("{e}"));
    let rules = lease.rules.unwrap_or_default();
    assert_eq!(
        grants(&rules),
        triples(&[(
            "coordination.k8s.io",
            "leases",
            &["create", "get", "update", "patch"]
        )])
    );
    for r in &rules {
        if r.verbs.iter().any(|v| v != "create") {
            assert_eq!(
                r.resource_names.as_deref(),
                Some(&["kpersist-operator".to_string()][..]),
                "lease rule {r:?} is not limited to the operator's Lease"
            );
        }
    }
    let kept: Role = find(&m, "Role", "-bad-releases")
        .typed()
        .unwrap_or_else(|e| panic!("{e}"));
    let rules = kept.rules.unwrap_or_default();
    assert_eq!(
        grants(&rules),
        triples(&[("", "configmaps", &["create", "get", "patch"])])
    );
    for r in rules
        .iter()
        .filter(|r| r.verbs.iter().any(|v| v != "create"))
    {
        assert_eq!(
            r.resource_names.as_deref(),
            Some(&["kpersist-bad-releases".to_string()][..]),
            "configmap rule {r:?} is not limited to the kept bad releases"
        );
    }
}

#[test]
fn secrets_are_only_ever_readable_by_name() {
    for file in [DEFAULT, FULL] {
        let Some(m) = rendered(file) else { return };
        for role in all(&m, "ClusterRole").chain(all(&m, "Role")) {
            let rules: Vec<PolicyRule> = serde_json::from_value(role.value["rules"].clone())
                .unwrap_or_else(|e| panic!("{}: {e}", role.name()));
            for (g, res, verb) in grants(&rules) {
                assert!(
                    g != "*" && res != "*" && verb != "*",
                    "{file}: {} grants a wildcard",
                    role.name()
                );
                if res == "secrets" {
                    assert_eq!(
                        verb,
                        "get",
                        "{file}: {} grants {verb} on Secrets",
                        role.name()
                    );
                }
            }
            for rule in rules.iter().filter(|r| {
                r.resources
                    .as_ref()
                    .is_some_and(|res| res.iter().any(|x| x == "secrets"))
            }) {
                assert!(
                    rule.resource_names.as_ref().is_some_and(|n| !n.is_empty()),
                    "{file}: {} grants Secrets without naming them",
                    role.name()
                );
            }
        }
    }
}

#[test]
fn operator_reads_no_secret_unless_values_name_it() {
    let Some(d) = rendered(DEFAULT) else { return };
    assert!(
        all(&d, "ClusterRole")
            .chain(all(&d, "Role"))
            .all(|r| !r.name().ends_with("-trusted-keys")),
        "default values grant a Secret"
    );
    let Some(m) = rendered(FULL) else { return };
    assert!(
        all(&m, "ClusterRole").all(|r| !r.name().ends_with("-trusted-keys")),
        "a cluster-wide Secret grant exists"
    );
    // One Role per namespace, naming exactly the Secrets values-full.yaml lists there.
    let mut named: BTreeSet<(String, String)> = BTreeSet::new();
    for manifest in all(&m, "Role").filter(|r| r.name().ends_with("-trusted-keys")) {
        let role: Role = manifest.typed().unwrap_or_else(|e| panic!("{e}"));
        let namespace = manifest.namespace().unwrap_or_default().to_string();
        let rules = role.rules.unwrap_or_default();
        assert_eq!(grants(&rules), triples(&[("", "secrets", &["get"])]));
        for name in rules
            .iter()
            .flat_map(|r| r.resource_names.clone().unwrap_or_default())
        {
            assert!(
                named.insert((namespace.clone(), name.clone())),
                "Secret {namespace}/{name} named twice"
            );
        }
    }
    let want = [
        ("kpersist-keys", "publisher"),
        ("kpersist-keys", "publisher-next"),
        ("security", "kpersist-trusted-keys"),
    ]
    .map(|(n, s)| (n.to_string(), s.to_string()));
    assert_eq!(named, BTreeSet::from(want));
    let bindings: BTreeSet<&str> = all(&m, "RoleBinding")
        .filter(|b| b.name().ends_with("-trusted-keys"))
        .filter_map(|b| b.namespace())
        .collect();
    assert_eq!(bindings, BTreeSet::from(["kpersist-keys", "security"]));
    // The gate's Secrets: a Role of their own, get by name only.
    assert!(
        all(&d, "Role").all(|r| !r.name().ends_with("-gate-secrets")),
        "default values grant a gate Secret"
    );
    let gate: Role = find(&m, "Role", "-gate-secrets")
        .typed()
        .unwrap_or_else(|e| panic!("{e}"));
    let rules = gate.rules.unwrap_or_default();
    assert_eq!(grants(&rules), triples(&[("", "secrets", &["get"])]));
    let names: Vec<String> = rules
        .iter()
        .flat_map(|r| r.resource_names.clone().unwrap_or_default())
        .collect();
    assert_eq!(names, ["kpersist-gate"]);
}

/// The RBAC part of a manifest, without the labels helm adds.
fn rbac_essence(m: &Manifest) -> serde_json::Value {
    let mut v = m.value.clone();
    if let Some(meta) = v.get_mut("metadata").and_then(|x| x.as_object_mut()) {
        meta.remove("labels");
    }
    v
}

#[test]
fn fleet_suite_rbac_copy_matches_the_chart() {
    let Some(m) = rendered(DEFAULT) else { return };
    let path = crate::chart_support::chart_dir().join("../../e2e/rbac/kpersist-rbac.yaml");
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("{} is not there: nothing to compare", path.display());
        return;
    };
    let copy = crate::chart_support::parse_stream(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let kinds = ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"];
    let chart: Vec<_> = m
        .iter()
        .filter(|x| kinds.contains(&x.kind()))
        .map(rbac_essence)
        .collect();
    let copied: Vec<_> = copy.iter().map(rbac_essence).collect();
    for c in &chart {
        assert!(
            copied.contains(c),
            "{} lacks, or differs in, {} {}; re-render it from the chart",
            path.display(),
            c["kind"],
            c["metadata"]["name"]
        );
    }
    assert_eq!(
        chart.len(),
        copied.len(),
        "{} holds objects the chart does not render",
        path.display()
    );
}
