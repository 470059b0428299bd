//! The gate on a Prometheus behind TLS and basic auth, as a hosted or multi-tenant one is:
//! its CA in `caBundle`, the `Authorization` header from a Secret the chart's RBAC lets the
//! operator read (`operator.gateSecrets`), and a tenant header inline.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kpersist_crds::{LivePatchPolicy, PolicyPhase};
use kpersist_e2e::controlplane::Identity;
use kpersist_e2e::fleet::NAMESPACE;
use kpersist_e2e::prometheus::{Access, Prometheus};
use kpersist_e2e::wait::Check;
use kube::Api;
use kube::api::{Patch, PatchParams};

use crate::gate::{ROLLOUT, phase, ready_message, release};
use crate::suite::{Monitoring, POLICY, WORKLOAD_JOB, job};

/// The Secret holding the gate's `Authorization` value.
const AUTH_SECRET: &str = "kpersist-gate";

/// What `e2e/monitoring/run.sh` made in `KPERSIST_MONITORING_SECURED`.
struct Material {
    dir: PathBuf,
}

impl Material {
    fn from_env() -> Material {
        let dir = std::env::var("KPERSIST_MONITORING_SECURED").unwrap_or_else(|_| {
            panic!("KPERSIST_MONITORING_SECURED is not set: run e2e/monitoring/run.sh")
        });
        Material {
            dir: PathBuf::from(dir),
        }
    }

    fn read(&self, file: &str) -> String {
        let path = self.dir.join(file);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_string()
    }
}

impl Monitoring {
    /// Publishes `version` with the gate moved to a Prometheus that wants TLS and basic
    /// auth. With a wrong password in the Secret every query is refused (401): the wave
    /// holds, inconclusive. With the right one the rollout completes.
    pub async fn gate_through_tls_and_a_secret(&mut self, version: u64) -> Result<String, String> {
        let material = Material::from_env();
        let access = Access {
            web_config: material.dir.join("web.yml"),
            ca_pem: material.read("ca.crt"),
            user: ("kpersist".into(), material.read("password")),
        };
        let targets = [(self.workload.addr().to_string(), BTreeMap::new())];
        let secured = Prometheus::start(
            &self.scratch.path().join("secured"),
            &[job(WORKLOAD_JOB, targets)],
            &[],
            Some(access.clone()),
        )
        .await
        .map_err(|e| e.to_string())?;
        secured
            .wait_scraped(WORKLOAD_JOB, 1)
            .await
            .map_err(|e| e.to_string())?;
        let rbac = std::env::var("KPERSIST_MONITORING_RBAC")
            .map_err(|_| "KPERSIST_MONITORING_RBAC is not set: run e2e/monitoring/run.sh")?;
        self.sim
            .cluster
            .plane
            .kubectl(Identity::Admin, &["apply", "-f", &rbac])
            .await
            .map_err(|e| e.to_string())?;
        self.set_auth_secret(&material.read("authorization-wrong"))
            .await?;
        let gate = serde_json::json!({"health": {"prometheus": {
            "url": secured.url(),
            "caBundle": access.ca_pem,
            "headers": [
                {"name": "Authorization", "valueFrom": {
                    "namespace": NAMESPACE, "name": AUTH_SECRET, "key": "authorization"}},
                {"name": "X-Scope-OrgID", "value": "tenant-a"},
            ],
        }}});
        self.sim
            .patch_policy(POLICY, gate)
            .await
            .map_err(|e| e.to_string())?;
        self.publish(version)?;
        let release = release(version);
        let refused = self
            .sim
            .wait_policy(
                POLICY,
                "to hold the wave on a refused query",
                ROLLOUT,
                |p| held_with(p, "HTTP 401"),
            )
            .await
            .map_err(|e| e.to_string())?;
        let wrong = material.read("authorization-wrong");
        if refused.contains(&wrong) || refused.contains(&access.user.1) {
            return Err("the Ready condition shows the Secret's value".into());
        }
        self.set_auth_secret(&material.read("authorization"))
            .await?;
        self.wait_all_run(&release).await?;
        Ok(format!(
            "with a wrong password: {refused}; with the right one every node ran {release}"
        ))
    }

    /// Creates or replaces the Secret with the gate's `Authorization` value.
    async fn set_auth_secret(&self, authorization: &str) -> Result<(), String> {
        let secrets: Api<Secret> = Api::namespaced(self.sim.cluster.admin.clone(), NAMESPACE);
        let mut secret = Secret::default();
        secret.metadata.name = Some(AUTH_SECRET.into());
        secret.data = Some(BTreeMap::from([(
            "authorization".to_string(),
            ByteString(authorization.as_bytes().to_vec()),
        )]));
        let params = PatchParams::apply("kpersist-monitoring-e2e").force();
        secrets
            .patch(AUTH_SECRET, &params, &Patch::Apply(&secret))
            .await
            .map(drop)
            .map_err(|e| format!("Secret {NAMESPACE}/{AUTH_SECRET}: {e}"))
    }
}

/// Done when the policy holds its wave on an inconclusive gate whose reason has `text`.
fn held_with(policy: &LivePatchPolicy, text: &str) -> Check<String> {
    let message = ready_message(policy);
    if phase(policy) == Some(PolicyPhase::Paused) && message.contains(text) {
        Check::Done(message)
    } else {
        Check::NotYet(format!("phase {:?}: {message}", phase(policy)))
    }
}
