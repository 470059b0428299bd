//! The Kubernetes side: create or adopt this node's `LivePatchNode` (owned by the Node),
//! watch only that object, act on `spec.desired` through the engine, and write `status` with
//! server-side apply. Every API call is retried with jittered backoff; the API is never
//! polled, the kernel is re-read every 30 s and status written only when it changed. A
//! desired release reaches the engine only after it verified against the signed index of
//! the policy it names (see [`crate::trust`]); otherwise the node reports
//! `UntrustedRelease` and loads nothing.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use backon::Retryable;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kpersist_crds::{
    AGENT_MANAGER, DesiredPatch, LivePatchNode, LivePatchNodeSpec, LivePatchNodeStatus,
    LivePatchPolicy, NodePatchState,
};
use kpersist_kmod::kernel::Kernel;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use serde_json::json;
use tokio::sync::Notify;

use crate::engine::Engine;
use crate::error::AgentError;
use crate::fetch::Fetcher;
use crate::status::Report;

/// Runs `call` until it succeeds, retrying a transient failure `retries` times at most,
/// with jittered waits in between ([`crate::backoff::api_call`]).
async fn retry<T, F, Fut>(what: &str, retries: usize, call: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    retry_when(what, crate::backoff::api_call(retries), is_transient, call).await
}

/// As [`retry`], with the waits of `backoff`, retrying the failures `when` accepts.
async fn retry_when<T, F, Fut>(
    what: &str,
    backoff: backon::ExponentialBuilder,
    when: fn(&kube::Error) -> bool,
    call: F,
) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    call.retry(backoff)
        .when(when)
        .notify(|e, delay| tracing::warn!(error = %e, ?delay, "{what} failed; retrying"))
        .await
}

/// Whether a failed read may succeed when repeated, counting 403 Forbidden as such: an API
/// server that has just started refuses requests it would allow until its RBAC caches have
/// synced, which takes seconds. For reads whose refusal would fail a request for good.
fn is_transient_or_unsynced(error: &kube::Error) -> bool {
    is_transient(error) || matches!(error, kube::Error::Api(e) if e.code == 403)
}

/// Whether a failed call may succeed when repeated: not a refusal such as 403 or 422.
fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(e) => !(400..500).contains(&e.code) || matches!(e.code, 408 | 409 | 429),
        _ => true,
    }
}

/// The agent's connection to its own `LivePatchNode`.
pub struct NodeController<K> {
    api: Api<LivePatchNode>,
    nodes: Api<Node>,
    policies: Api<LivePatchPolicy>,
    name: String,
    engine: Engine<K>,
    /// Fetches the signed indexes releases are verified against.
    fetcher: Fetcher,
    /// The last desired state that verified, as written and as trusted: the same spec seen
    /// again (every status write comes back as a watch event) needs no second index fetch.
    verified: Mutex<Option<(DesiredPatch, DesiredPatch)>>,
}

impl<K: Kernel + Clone + 'static> NodeController<K> {
    /// A controller for the node `name`.
    pub fn new(client: Client, name: String, engine: Engine<K>) -> NodeController<K> {
        NodeController {
            api: Api::all(client.clone()),
            nodes: Api::all(client.clone()),
            policies: Api::all(client),
            name,
            engine,
            fetcher: Fetcher::new(),
            verified: Mutex::new(None),
        }
    }

    /// The same controller fetching signed indexes with `fetcher` (its retries, for one).
    pub fn with_fetcher(self, fetcher: Fetcher) -> NodeController<K> {
        NodeController { fetcher, ..self }
    }

    /// Creates the `LivePatchNode` if it is missing and makes sure it is owned by the Node.
    ///
    /// This uses create and a merge patch rather than a server-side apply: before 1.22 the
    /// API server keeps one field set per manager for the object and its status together, so
    /// an apply here would drop the agent's ownership of its status fields.
    pub async fn ensure_object(&self) -> Result<LivePatchNode, AgentError> {
        let node = retry("reading the Node", 7, || self.nodes.get_opt(&self.name)).await?;
        let node = node.ok_or_else(|| AgentError::NodeNotFound(self.name.clone()))?;
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: self.name.clone(),
            uid: node.metadata.uid.clone().unwrap_or_default(),
            ..OwnerReference::default()
        };
        let params = PatchParams {
            field_manager: Some(AGENT_MANAGER.into()),
            ..PatchParams::default()
        };
        loop {
            let existing = retry("reading the LivePatchNode", 7, || {
                self.api.get_opt(&self.name)
            })
            .await?;
            let Some(lpn) = existing else {
                let mut lpn = LivePatchNode::new(&self.name, LivePatchNodeSpec::default());
                lpn.metadata.owner_references = Some(vec![owner.clone()]);
                let create = PostParams {
                    field_manager: Some(AGENT_MANAGER.into()),
                    ..PostParams::default()
                };
                match self.api.create(&create, &lpn).await {
                    Ok(created) => return Ok(created),
                    // Someone else created it meanwhile: adopt theirs.
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(e) => return Err(e.into()),
                }
            };
            let mut owners = lpn.metadata.owner_references.clone().unwrap_or_default();
            if owners
                .iter()
                .any(|o| o.kind == "Node" && o.uid == owner.uid)
            {
                return Ok(lpn);
            }
            owners.push(owner.clone());
            let patch = Patch::Merge(json!({ "metadata": { "ownerReferences": owners } }));
            let adopted = retry("adopting the LivePatchNode", 7, || {
                self.api.patch(&self.name, &params, &patch)
            })
            .await;
            return match adopted {
                Ok(lpn) => Ok(lpn),
                // The chart grants agents no patch on the object itself, so that no agent can
                // write any node's spec. An object created by someone else keeps working; it
                // just is not removed together with its Node.
                Err(kube::Error::Api(e)) if e.code == 403 => {
                    tracing::warn!(
                        node = %self.name,
                        "cannot add the Node owner reference to the existing LivePatchNode \
                         (no RBAC patch on livepatchnodes); it will not be deleted with the Node"
                    );
                    Ok(lpn)
                }
                Err(e) => Err(e.into()),
            };
        }
    }

    /// Writes `status` with server-side apply, retrying with backoff.
    async fn write_status(&self, status: &LivePatchNodeStatus) -> Result<(), AgentError> {
        let body = json!({
            "apiVersion": LivePatchNode::api_version(&()),
            "kind": LivePatchNode::kind(&()),
            "status": status,
        });
        let params = PatchParams::apply(AGENT_MANAGER).force();
        let patch = Patch::Apply(body);
        retry("writing status", 5, || {
            self.api.patch_status(&self.name, &params, &patch)
        })
        .await?;
        Ok(())
    }

    /// Runs until `shutdown` resolves: start-up recovery, then one reconcile per change of
    /// the object. Never unloads anything on the way out.
    pub async fn run(
        &self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), AgentError> {
        // The kernel is read from the start, so that `/healthz` holds while the API is slow.
        let changed = Arc::new(Notify::new());
        let _observer = observe::Background(tokio::spawn(observe::watch_kernel(
            self.engine.clone(),
            changed.clone(),
        )));
        let lpn = self.ensure_object().await?;
        let mut prior = lpn.status.clone();
        if let Some(report) = self.engine.recover().await {
            let status = self
                .engine
                .status(
                    &report,
                    prior.as_ref().and_then(|p| p.observed_generation),
                    prior.as_ref(),
                )
                .await?;
            self.write_status(&status).await?;
            prior = Some(status);
        }
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let events =
            watcher::watcher(self.api.clone(), config).backoff(crate::backoff::watch_restart());
        let liveness = self.engine.liveness().clone();
        liveness.watch_ok(Instant::now());
        tokio::pin!(events);
        tokio::pin!(shutdown);
        loop {
            let next = tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = changed.notified() => {
                    if let Some(status) = self.observed_status(prior.as_ref(), true).await {
                        prior = Some(status);
                    }
                    continue;
                }
                next = events.next() => next,
            };
            let lpn = match next {
                None => return Ok(()),
                Some(Err(e)) => {
                    liveness.watch_failed(Instant::now(), e.to_string());
                    tracing::warn!(error = %e, "watch of the LivePatchNode failed; the watcher retries");
                    continue;
                }
                Some(Ok(Event::Apply(lpn) | Event::InitApply(lpn))) => {
                    liveness.watch_ok(Instant::now());
                    lpn
                }
                Some(Ok(Event::Delete(_))) => {
                    liveness.watch_ok(Instant::now());
                    // Deleted by hand while the Node lives: the node still needs its object.
                    tracing::warn!(node = %self.name, "LivePatchNode deleted; creating it again");
                    prior = None;
                    match self.ensure_object().await {
                        Ok(lpn) => lpn,
                        Err(e) => {
                            tracing::error!(error = %e, "re-creating the LivePatchNode failed");
                            continue;
                        }
                    }
                }
                Some(Ok(Event::Init | Event::InitDone)) => {
                    liveness.watch_ok(Instant::now());
                    continue;
                }
            };
            // What changed in the kernel since the last status is reported before acting,
            // so that the failure it makes holds a patch disabled by hand for this spec.
            let last = prior.as_ref().or(lpn.status.as_ref());
            if let Some(status) = self.observed_status(last, false).await {
                prior = Some(status);
            }
            match self.reconcile(&lpn, prior.as_ref()).await {
                Ok(status) => prior = Some(status),
                Err(e) => {
                    tracing::error!(error = %e, "reconcile failed; waiting for the next change")
                }
            }
        }
    }

    /// One reconcile of the object as watched (`prior`: the status this agent wrote last):
    /// verify `spec.desired` against its policy, act on it through the engine, write status.
    pub async fn reconcile(
        &self,
        lpn: &LivePatchNode,
        prior: Option<&LivePatchNodeStatus>,
    ) -> Result<LivePatchNodeStatus, AgentError> {
        // This agent is the only writer of status, so the status it wrote last is the newest;
        // the watched object's may lag behind (its own progress writes come back as events).
        let prior = prior.or(lpn.status.as_ref());
        let generation = lpn.metadata.generation;
        let trusted = match lpn.spec.desired.as_ref() {
            None => None,
            Some(desired) => match self.trusted(desired).await {
                Ok(trusted) => Some(trusted),
                Err(failure) => return self.refuse(desired, failure, generation, prior).await,
            },
        };
        let desired = trusted.as_ref();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<NodePatchState>();
        let work = async move {
            let progress = move |state: NodePatchState| {
                let _ = tx.send(state);
            };
            self.engine
                .reconcile(desired, prior, generation, &progress)
                .await
        };
        let progress_writer = async {
            while let Some(state) = rx.recv().await {
                tracing::info!(node = %self.name, ?state, "progress");
                let report = Report {
                    state,
                    ..prior
                        .map(Report::from_status)
                        .unwrap_or_else(|| Report::state(state))
                };
                match self
                    .engine
                    .status(&report, prior.and_then(|p| p.observed_generation), prior)
                    .await
                {
                    Ok(status) => {
                        if let Err(e) = self.write_status(&status).await {
                            tracing::warn!(error = %e, "writing progress failed");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "reading the kernel for progress failed"),
                }
            }
        };
        let (report, ()) = tokio::join!(work, progress_writer);
        let report = report?;
        let status = self.engine.status(&report, generation, prior).await?;
        if let Some(e) = &report.error {
            tracing::warn!(node = %self.name, state = ?report.state, reason = ?e.reason, message = %e.message, "not applied");
        }
        // Writing an unchanged status would only wake this watch again.
        if prior.is_none_or(|p| !same_status(p, &status)) {
            tracing::info!(node = %self.name, state = ?report.state, applied = ?status.applied.as_ref().map(|a| &a.id), "status");
            self.write_status(&status).await?;
        }
        Ok(status)
    }
}

/// Whether two statuses say the same, ignoring timestamps that change on every write.
pub fn same_status(a: &LivePatchNodeStatus, b: &LivePatchNodeStatus) -> bool {
    normalized(a) == normalized(b)
}

fn normalized(status: &LivePatchNodeStatus) -> LivePatchNodeStatus {
    let mut s = status.clone();
    if let Some(e) = s.last_error.as_mut() {
        e.at = None;
    }
    for c in &mut s.conditions {
        c.last_transition_time = None;
    }
    s
}

#[path = "controller_trust.rs"]
mod trust_gate;

#[path = "controller_observe.rs"]
mod observe;

#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;
