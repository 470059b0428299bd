//! Fills the cluster: the signed repository with one release per pool, a policy per pool,
//! and Node + LivePatchNode pairs written the way the kubelet, kube-controller-manager,
//! the agent and the operator write them (so the managed fields are theirs), with a
//! bounded number of pairs in flight and progress on the terminal.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kpersist_crds::{
    AGENT_MANAGER, LivePatchNode, LivePatchPolicy, OPERATOR_MANAGER, PatchRelease,
};
use kpersist_e2e::patch_repo::Publisher;
use kpersist_e2e::{Error, Result};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use crate::objects::{self, POOL_LABEL, POOLS, pool_of};

/// The release each pool's nodes run, as the API carries it.
pub struct Releases(Vec<PatchRelease>);

impl Releases {
    /// Publishes v1 for every pool's kernel into `publisher`, served at `base_url`.
    pub fn publish(publisher: &Publisher, base_url: &str) -> Result<Self> {
        let mut out = Vec::new();
        for pool in POOLS {
            let r = publisher.publish(
                pool.kernel_release,
                pool.build_id,
                1,
                &["CVE-2026-10001", "CVE-2026-10002"],
                &["stable"],
            )?;
            out.push(PatchRelease {
                id: r.id(),
                version: r.version,
                kernel_release: r.kernel_release.clone(),
                build_id: r.build_id.clone(),
                module_name: r.module_name.clone(),
                module_url: r.module_url(base_url),
                sha256: r.sha256.clone(),
                size: r.size,
                cves: r.cves.clone(),
            });
        }
        Ok(Self(out))
    }

    fn for_node(&self, index: usize) -> &PatchRelease {
        &self.0[index % self.0.len()]
    }
}

/// Creates one policy per pool, trusting `key`, polling `repo_url` every minute.
pub async fn create_policies(client: &kube::Client, repo_url: &str, key: &str) -> Result<()> {
    let api: Api<LivePatchPolicy> = Api::all(client.clone());
    for pool in POOLS {
        let policy = json!({
            "apiVersion": "kpersist.io/v1alpha1",
            "kind": "LivePatchPolicy",
            "metadata": { "name": pool.policy() },
            "spec": {
                "nodeSelector": { "matchLabels": { POOL_LABEL: pool.name } },
                "repository": {
                    "url": repo_url, "channel": "stable", "trustedKeys": [key],
                    "checkInterval": "1m",
                },
                "rollout": { "waves": [{ "percent": 10 }, { "percent": 100 }], "maxInFlight": 50 },
            },
        });
        let policy: LivePatchPolicy =
            serde_json::from_value(policy).map_err(|e| Error::Command {
                command: format!("building policy {}", pool.policy()),
                status: "invalid".into(),
                detail: format!("{e}; the policy schema in crds/ changed, update this benchmark"),
            })?;
        api.create(&PostParams::default(), &policy).await?;
    }
    Ok(())
}

/// Writes the pairs `from..to`, `in_flight` at a time, printing progress every few seconds.
pub async fn create_pairs(
    client: &kube::Client,
    releases: &Releases,
    from: usize,
    to: usize,
    in_flight: usize,
) -> Result<()> {
    let done = Arc::new(AtomicUsize::new(0));
    let total = to.saturating_sub(from);
    let started = Instant::now();
    let progress = tokio::spawn({
        let done = done.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let n = done.load(Ordering::Relaxed);
                let rate = n as f64 / started.elapsed().as_secs_f64();
                eprintln!("  {n}/{total} Node + LivePatchNode pairs written ({rate:.0} pairs/s)");
            }
        }
    });
    let result = futures::stream::iter(from..to)
        .map(|index| {
            let done = done.clone();
            async move {
                create_pair(client, releases, index).await?;
                done.fetch_add(1, Ordering::Relaxed);
                Ok::<(), Error>(())
            }
        })
        .buffer_unordered(in_flight.max(1))
        .try_collect::<Vec<()>>()
        .await;
    progress.abort();
    result?;
    eprintln!(
        "  {total} pairs written in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One node's objects, in the order a real node gets them: the kubelet registers the
/// Node, kube-controller-manager annotates it, the agent creates its LivePatchNode, the
/// operator hands it a release, the agent reports it applied.
async fn create_pair(client: &kube::Client, releases: &Releases, index: usize) -> Result<()> {
    let name = objects::node_name(index);
    let nodes: Api<Node> = Api::all(client.clone());
    let lpns: Api<LivePatchNode> = Api::all(client.clone());
    let invalid = |what: &str, e: serde_json::Error| Error::Command {
        command: format!("building the {what} of {name}"),
        status: "invalid".into(),
        detail: e.to_string(),
    };
    let node: Node =
        serde_json::from_value(objects::node(index)).map_err(|e| invalid("Node", e))?;
    let created = nodes.create(&manager("kubelet"), &node).await?;
    let params = PatchParams {
        field_manager: Some("kube-controller-manager".into()),
        ..PatchParams::default()
    };
    nodes
        .patch(
            &name,
            &params,
            &Patch::Merge(objects::controller_manager_patch(index)),
        )
        .await?;
    let uid = created.metadata.uid.unwrap_or_default();
    let lpn: LivePatchNode = serde_json::from_value(objects::live_patch_node(index, &uid))
        .map_err(|e| invalid("LivePatchNode", e))?;
    lpns.create(&manager(AGENT_MANAGER), &lpn).await?;
    let release = releases.for_node(index);
    let params = PatchParams {
        field_manager: Some(OPERATOR_MANAGER.into()),
        ..PatchParams::default()
    };
    lpns.patch(
        &name,
        &params,
        &Patch::Merge(objects::desired_patch(index, release)),
    )
    .await?;
    let status = objects::applied_status(index, release);
    lpns.patch_status(
        &name,
        &PatchParams::apply(AGENT_MANAGER).force(),
        &Patch::Apply(status),
    )
    .await?;
    debug_assert_eq!(pool_of(index).kernel_release, release.kernel_release);
    Ok(())
}

fn manager(name: &str) -> PostParams {
    PostParams {
        field_manager: Some(name.into()),
        ..PostParams::default()
    }
}
