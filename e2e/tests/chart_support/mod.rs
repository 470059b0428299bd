//! Reading `helm template` output back as typed Kubernetes objects. A manifest counts as
//! valid when it deserialises into the type its apiVersion/kind claim and every field it
//! sets survives the round trip: a misspelt or misplaced field is dropped by the type and
//! shows up as missing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

mod monitoring;
pub use monitoring::{PodMonitor, PrometheusRule, Relabeling, ServiceMonitor};

/// The chart directory of this checkout.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/kpersist")
}

/// Where e2e/chart/run.sh wrote the rendered manifests, when it did.
pub fn rendered_dir() -> Option<PathBuf> {
    std::env::var_os("KPERSIST_CHART_RENDERED").map(PathBuf::from)
}

/// One rendered manifest with the template it came from.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub source: String,
    pub value: Value,
}

impl Manifest {
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }
    pub fn api_version(&self) -> &str {
        self.value["apiVersion"].as_str().unwrap_or_default()
    }
    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }
    pub fn namespace(&self) -> Option<&str> {
        self.value["metadata"]["namespace"].as_str()
    }
    /// The manifest as `T`, after checking that nothing was lost on the way.
    pub fn typed<T: DeserializeOwned + Serialize>(&self) -> Result<T, String> {
        round_trip(&self.value)
            .map_err(|e| format!("{} {} ({}): {e}", self.kind(), self.name(), self.source))
    }
}

/// Splits a multi-document YAML stream into manifests, skipping empty documents.
pub fn parse_stream(text: &str) -> Result<Vec<Manifest>, String> {
    let mut out = Vec::new();
    let mut source = String::from("(unknown template)");
    // Document markers stand alone at column 0; a `---` inside a block scalar is indented.
    let mut chunks = vec![String::new()];
    for line in text.lines() {
        if line == "---" {
            chunks.push(String::new());
        } else if let Some(last) = chunks.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    for chunk in chunks {
        // `helm template` marks each document with `# Source: <template>`; keep it for
        // messages (a CRD file's own header splits it from its document, so carry it on).
        if let Some(line) = chunk.lines().find(|l| l.starts_with("# Source: ")) {
            source = line.trim_start_matches("# Source: ").to_string();
        }
        let value: Value =
            serde_yaml::from_str(&chunk).map_err(|e| format!("{source}: not YAML: {e}"))?;
        if !value.is_null() {
            out.push(Manifest {
                source: source.clone(),
                value,
            });
        }
    }
    Ok(out)
}

/// Reads and parses one rendered file from `dir`.
pub fn load(dir: &Path, file: &str) -> Vec<Manifest> {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}; run e2e/chart/run.sh", path.display()));
    let manifests = parse_stream(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        !manifests.is_empty(),
        "{} holds no manifest",
        path.display()
    );
    manifests
}

/// Checks a manifest against the type its apiVersion and kind name.
pub fn check_type(m: &Manifest) -> Result<(), String> {
    match (m.api_version(), m.kind()) {
        ("v1", "ServiceAccount") => m.typed::<ServiceAccount>().map(drop),
        ("v1", "Service") => m.typed::<Service>().map(drop),
        ("v1", "ConfigMap") => m.typed::<ConfigMap>().map(drop),
        ("apps/v1", "Deployment") => m.typed::<Deployment>().map(drop),
        ("apps/v1", "DaemonSet") => m.typed::<DaemonSet>().map(drop),
        ("policy/v1", "PodDisruptionBudget") => m.typed::<PodDisruptionBudget>().map(drop),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => m.typed::<ClusterRole>().map(drop),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            m.typed::<ClusterRoleBinding>().map(drop)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => m.typed::<Role>().map(drop),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => m.typed::<RoleBinding>().map(drop),
        ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy") => {
            m.typed::<ValidatingAdmissionPolicy>().map(drop)
        }
        ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding") => {
            m.typed::<ValidatingAdmissionPolicyBinding>().map(drop)
        }
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            m.typed::<CustomResourceDefinition>().map(drop)
        }
        ("monitoring.coreos.com/v1", "ServiceMonitor") => m.typed::<ServiceMonitor>().map(drop),
        ("monitoring.coreos.com/v1", "PodMonitor") => m.typed::<PodMonitor>().map(drop),
        ("monitoring.coreos.com/v1", "PrometheusRule") => m.typed::<PrometheusRule>().map(drop),
        (api, kind) => Err(format!(
            "{} ({}) is {api}/{kind}, which this test has no type for; add it to check_type",
            m.name(),
            m.source
        )),
    }
}

/// Deserialises `value` as `T` and checks that serialising it back keeps every field set.
pub fn round_trip<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T, String> {
    let typed: T =
        serde_json::from_value(value.clone()).map_err(|e| format!("does not parse: {e}"))?;
    let back = serde_json::to_value(&typed).map_err(|e| format!("does not serialise: {e}"))?;
    let mut lost = String::new();
    missing_fields(value, &back, "", &mut lost);
    if lost.is_empty() {
        Ok(typed)
    } else {
        Err(format!(
            "fields the type does not know or reads differently:{lost}"
        ))
    }
}

/// Appends to `out` every path where `wanted` has something `got` lacks or holds otherwise.
fn missing_fields(wanted: &Value, got: &Value, path: &str, out: &mut String) {
    match (wanted, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (key, wv) in w {
                let p = format!("{path}.{key}");
                match g.get(key) {
                    Some(gv) => missing_fields(wv, gv, &p, out),
                    // An empty value dropped by the type loses nothing.
                    None if is_empty(wv) => {}
                    None => {
                        let _ = write!(out, "\n  {p}: not a field of the type");
                    }
                }
            }
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                missing_fields(wv, gv, &format!("{path}[{i}]"), out);
            }
        }
        (w, g) if w == g => {}
        (w, g) => {
            let _ = write!(out, "\n  {path}: rendered {w}, read back as {g}");
        }
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// The one manifest of `kind` whose name ends with `suffix`.
pub fn find<'a>(manifests: &'a [Manifest], kind: &str, suffix: &str) -> &'a Manifest {
    let found: Vec<_> = manifests
        .iter()
        .filter(|m| m.kind() == kind && m.name().ends_with(suffix))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {kind} named *{suffix}, found {:?}",
        found.iter().map(|m| m.name()).collect::<Vec<_>>()
    );
    found[0]
}

/// Every manifest of `kind`.
pub fn all<'a>(manifests: &'a [Manifest], kind: &'a str) -> impl Iterator<Item = &'a Manifest> {
    manifests.iter().filter(move |m| m.kind() == kind)
}
