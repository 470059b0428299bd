//! The Helm chart, checked from what `helm template` renders: every manifest is the
//! Kubernetes type it claims, the workloads are locked down as documented, RBAC grants
//! exactly what each binary needs, and the optional parts fit together. e2e/chart/run.sh
//! renders the chart with a real helm and points `KPERSIST_CHART_RENDERED` at the output;
//! without it only the checks that need no helm run.

// Test code: a failed unwrap, expect or panic is the test's report. clippy.toml exempts
// #[test] functions only, not the helpers of an integration test crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chart_support;

use chart_support::{Manifest, chart_dir, check_type, find, load, rendered_dir};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Container, PodTemplateSpec};

/// Rendered with the chart's defaults and `--include-crds`.
const DEFAULT: &str = "default.yaml";
/// Rendered with e2e/chart/values-full.yaml for Kubernetes 1.31 with the Prometheus
/// Operator API present.
const FULL: &str = "full.yaml";
/// Rendered like FULL with the agents scraped by a PodMonitor and a metric relabeling.
const BY_POD: &str = "by-pod.yaml";

fn rendered(file: &str) -> Option<Vec<Manifest>> {
    match rendered_dir() {
        Some(dir) => Some(load(&dir, file)),
        None => {
            eprintln!("KPERSIST_CHART_RENDERED is not set: skipped; e2e/chart/run.sh runs this");
            None
        }
    }
}

#[test]
fn chart_crds_are_the_generated_crds() {
    for (name, generated) in kpersist_crds::yaml::crd_manifests() {
        let path = chart_dir().join("crds").join(name);
        let copy = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        assert!(
            copy == generated,
            "{} differs from crds/{name}; regenerate both copies: cargo run -p kpersist-crds --bin crdgen",
            path.display()
        );
    }
}

#[test]
fn sample_policy_is_a_valid_livepatchpolicy() {
    let path = chart_dir().join("examples/livepatchpolicy.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let value: serde_json::Value = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    let policy: kpersist_crds::LivePatchPolicy =
        chart_support::round_trip(&value).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let spec = &policy.spec;
    assert!(
        !spec.repository.trusted_keys.is_empty(),
        "the sample names no trusted key"
    );
    let durations = spec
        .rollout
        .waves
        .iter()
        .map(|w| w.bake.as_str())
        .chain([
            spec.repository.check_interval.as_str(),
            spec.health.transition_timeout.as_str(),
        ])
        .chain(spec.repository.delay.as_deref());
    for d in durations {
        kpersist_crds::parse_duration(d).unwrap_or_else(|e| panic!("sample duration {d:?}: {e}"));
    }
}

#[test]
fn every_rendered_manifest_is_the_type_it_claims() {
    for file in [DEFAULT, FULL, BY_POD] {
        let Some(manifests) = rendered(file) else {
            return;
        };
        let errors: Vec<String> = manifests
            .iter()
            .filter_map(|m| check_type(m).err())
            .collect();
        assert!(errors.is_empty(), "{file}:\n{}", errors.join("\n"));
    }
}

#[test]
fn rendered_crds_are_the_generated_crds() {
    let Some(manifests) = rendered(DEFAULT) else {
        return;
    };
    for (name, generated) in kpersist_crds::yaml::crd_manifests() {
        let want: serde_json::Value =
            serde_yaml::from_str(generated.split("\n---\n").nth(1).unwrap_or(&generated))
                .unwrap_or_else(|e| panic!("generated {name} is not YAML: {e}"));
        let crd_name = want["metadata"]["name"].as_str().unwrap_or_default();
        let got = find(&manifests, "CustomResourceDefinition", crd_name);
        // Not assert_eq: a CRD is tens of kilobytes; the difference is easier read in the file.
        assert!(
            got.value == want,
            "rendered CRD {crd_name} differs from crds/{name}; regenerate both copies: cargo run -p kpersist-crds --bin crdgen"
        );
    }
}

fn pod_template(manifests: &[Manifest], component: &str) -> PodTemplateSpec {
    match component {
        "operator" => {
            let d: Deployment = find(manifests, "Deployment", "-operator")
                .typed()
                .unwrap_or_else(|e| panic!("{e}"));
            d.spec.map(|s| s.template).unwrap_or_default()
        }
        _ => {
            let d: DaemonSet = find(manifests, "DaemonSet", "-agent")
                .typed()
                .unwrap_or_else(|e| panic!("{e}"));
            d.spec.map(|s| s.template).unwrap_or_default()
        }
    }
}

fn only_container(t: &PodTemplateSpec) -> Container {
    let spec = t.spec.clone().unwrap_or_default();
    assert_eq!(spec.containers.len(), 1, "expected one container");
    spec.containers[0].clone()
}

fn args(c: &Container) -> Vec<String> {
    c.args.clone().unwrap_or_default()
}

#[test]
fn operator_is_replicated_leader_elected_and_locked_down() {
    let Some(m) = rendered(DEFAULT) else { return };
    let d: Deployment = find(&m, "Deployment", "-operator")
        .typed()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(2));
    let t = pod_template(&m, "operator");
    let c = only_container(&t);
    let a = args(&c);
    for want in [
        "--leader-elect=true",
        "--lease-name=kpersist-operator",
        "--lease-namespace=$(POD_NAMESPACE)",
        "--metrics-addr=0.0.0.0:8080",
    ] {
        assert!(
            a.iter().any(|x| x == want),
            "operator args {a:?} lack {want}"
        );
    }
    let env = c.env.clone().unwrap_or_default();
    let ns = env
        .iter()
        .find(|e| e.name == "POD_NAMESPACE")
        .and_then(|e| e.value_from.clone())
        .and_then(|v| v.field_ref);
    assert_eq!(
        ns.map(|f| f.field_path).as_deref(),
        Some("metadata.namespace")
    );
    let probe_path = |p: Option<k8s_openapi::api::core::v1::Probe>| {
        p.and_then(|p| p.http_get).and_then(|h| h.path)
    };
    assert_eq!(
        probe_path(c.liveness_probe.clone()).as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        probe_path(c.readiness_probe.clone()).as_deref(),
        Some("/readyz")
    );
    let r = c.resources.clone().unwrap_or_default();
    assert!(
        r.requests
            .is_some_and(|q| q.contains_key("cpu") && q.contains_key("memory")),
        "operator has no requests"
    );
    assert!(
        r.limits.is_some_and(|q| q.contains_key("memory")),
        "operator has no memory limit"
    );
    let sc = c.security_context.clone().unwrap_or_default();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, None);
    assert_eq!(
        sc.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_string()])
    );
    assert_eq!(
        sc.seccomp_profile.map(|s| s.type_).as_deref(),
        Some("RuntimeDefault")
    );
}

#[test]
fn agent_is_privileged_with_host_mounts_and_runs_everywhere() {
    let Some(m) = rendered(DEFAULT) else { return };
    let ds: DaemonSet = find(&m, "DaemonSet", "-agent")
        .typed()
        .unwrap_or_else(|e| panic!("{e}"));
    let strategy = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.clone())
        .unwrap_or_default();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert!(
        strategy
            .rolling_update
            .and_then(|r| r.max_unavailable)
            .is_some(),
        "no maxUnavailable"
    );
    let t = pod_template(&m, "agent");
    let spec = t.spec.clone().unwrap_or_default();
    let tolerations = spec.tolerations.clone().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "the agent does not tolerate every taint: {tolerations:?}"
    );
    let c = only_container(&t);
    assert_eq!(
        c.security_context.as_ref().and_then(|s| s.privileged),
        Some(true)
    );
    let node = c
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.name == "NODE_NAME");
    let field = node
        .and_then(|e| e.value_from)
        .and_then(|v| v.field_ref)
        .map(|f| f.field_path);
    assert_eq!(field.as_deref(), Some("spec.nodeName"));
    assert!(args(&c).iter().any(|a| a == "--node-name=$(NODE_NAME)"));
    let volumes = spec.volumes.clone().unwrap_or_default();
    let host = |name: &str| {
        let v = volumes
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no volume {name}"));
        v.host_path
            .clone()
            .unwrap_or_else(|| panic!("volume {name} is not a hostPath"))
    };
    assert_eq!(host("state").path, "/var/lib/kpersist");
    assert_eq!(host("state").type_.as_deref(), Some("DirectoryOrCreate"));
    assert_eq!(host("sys").path, "/sys");
    assert_eq!(host("proc").path, "/proc");
    assert_eq!(host("modules").path, "/lib/modules");
    assert_eq!(host("kmsg").type_.as_deref(), Some("CharDevice"));
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    let read_only = |name: &str| {
        mounts
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.read_only == Some(true))
    };
    assert_eq!(
        read_only("modules"),
        Some(true),
        "/lib/modules must be read-only"
    );
    assert_eq!(read_only("proc"), Some(true), "/proc must be read-only");
    assert_eq!(
        read_only("state"),
        Some(false),
        "the state dir must be writable"
    );
}

#[test]
fn simulated_agent_is_unprivileged_and_mounts_nothing_from_the_host() {
    let Some(m) = rendered(FULL) else { return };
    let t = pod_template(&m, "agent");
    let c = only_container(&t);
    let a = args(&c);
    assert!(a.iter().any(|x| x == "--simulate"), "args {a:?}");
    assert!(
        a.iter().any(|x| x.starts_with("--sim-kernel-release=")),
        "args {a:?}"
    );
    let sc = c.security_context.clone().unwrap_or_default();
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.run_as_non_root, Some(true));
    let volumes = t.spec.and_then(|s| s.volumes).unwrap_or_default();
    assert!(
        volumes.iter().all(|v| v.host_path.is_none()),
        "simulated agent mounts host paths"
    );
}

#[path = "chart_manifests/binaries.rs"]
mod binaries;
#[path = "chart_manifests/knobs.rs"]
mod knobs;
#[path = "chart_manifests/metrics.rs"]
mod metrics;
#[path = "chart_manifests/rbac.rs"]
mod rbac;
#[path = "chart_manifests/wiring.rs"]
mod wiring;
