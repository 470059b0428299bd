//! The controller: watches LivePatchPolicy, LivePatchNode and Node into trimmed reflector
//! stores, maps Node and LivePatchNode changes to the policies they concern, and reconciles
//! each policy (see [`reconcile`]). Every replica keeps its stores warm; only the one that
//! holds the leader Lease runs reconciles.

pub mod events;
pub mod kept;
pub mod reconcile;
pub mod select;
pub mod status;
pub mod write;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kpersist_crds::{LivePatchNode, LivePatchPolicy};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, controller, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

use crate::gate::GateStates;
use crate::metrics::Metrics;
use crate::repository::RepositoryStates;

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Every policy.
    pub policies: Store<LivePatchPolicy>,
    /// Every Node, trimmed.
    pub nodes: Store<Node>,
    /// Every LivePatchNode.
    pub lpns: Store<LivePatchNode>,
    /// Each policy's repository between polls.
    pub repositories: RepositoryStates,
    /// Each policy's gate during a bake.
    pub gates: GateStates,
    /// Publishes Events on policies.
    pub events: events::EventPublisher,
    /// The metrics.
    pub metrics: Metrics,
    /// `true` while this replica leads.
    pub leading: watch::Receiver<bool>,
    /// The operator's own namespace (its Lease, the bad releases of deleted policies).
    pub namespace: String,
}

impl Context {
    /// Returns once this replica leads (at once without leader election).
    pub async fn wait_until_leading(&self) {
        let mut leading = self.leading.clone();
        // An error means the sender is gone, i.e. the process is shutting down; the
        // reconcile may as well run (its writes are idempotent) rather than hang.
        let _ = leading.wait_for(|l| *l).await;
    }
}

/// How the controller is set up.
pub struct Settings {
    /// This replica's identity, shown as the Events' reporting instance.
    pub identity: String,
    /// Set once every store has its first full list.
    pub ready: Arc<AtomicBool>,
    /// Whether this replica leads.
    pub leading: watch::Receiver<bool>,
    /// The operator's own namespace.
    pub namespace: String,
}

/// Runs the controller until the watches end (they do not, short of the process ending).
pub async fn run(client: Client, metrics: Metrics, settings: Settings) {
    let config = watcher::Config::default().any_semantic();

    let (policy_reader, policy_writer) = reflector::store();
    let policy_stream = watcher(Api::<LivePatchPolicy>::all(client.clone()), config.clone())
        .modify(|p| trim(select::trim_metadata, p))
        .default_backoff()
        .reflect(policy_writer)
        .applied_objects();

    let (node_reader, node_writer) = reflector::store();
    let node_stream = watcher(Api::<Node>::all(client.clone()), config.clone())
        .modify(|n| trim(select::trim_node, n))
        .default_backoff()
        .reflect(node_writer)
        .touched_objects()
        .predicate_filter(select::node_relevance, Default::default());

    let (lpn_reader, lpn_writer) = reflector::store();
    let lpn_stream = watcher(Api::<LivePatchNode>::all(client.clone()), config)
        .modify(|l| trim(select::trim_lpn, l))
        .default_backoff()
        .reflect(lpn_writer)
        .touched_objects();

    tokio::spawn(mark_ready(
        policy_reader.clone(),
        node_reader.clone(),
        lpn_reader.clone(),
        settings.ready,
    ));

    let ctx = Arc::new(Context {
        events: events::EventPublisher::new(client.clone(), settings.identity),
        client,
        policies: policy_reader.clone(),
        nodes: node_reader.clone(),
        lpns: lpn_reader.clone(),
        repositories: RepositoryStates::default(),
        gates: GateStates::default(),
        metrics,
        leading: settings.leading,
        namespace: settings.namespace,
    });

    let (policies_for_nodes, lpns_for_nodes) = (policy_reader.clone(), lpn_reader.clone());
    let (policies_for_lpns, nodes_for_lpns) = (policy_reader.clone(), node_reader);
    Controller::for_stream(policy_stream, policy_reader)
        .watches_stream(node_stream, move |node| {
            let name = node.name_any();
            let lpn = lpns_for_nodes.get(&ObjectRef::new(&name));
            refs(select::policies_for_node(
                &name,
                Some(node.labels()),
                lpn.as_deref(),
                &policies_for_nodes.state(),
            ))
        })
        .watches_stream(lpn_stream, move |lpn| {
            let name = lpn.name_any();
            let node = nodes_for_lpns.get(&ObjectRef::new(&name));
            refs(select::policies_for_node(
                &name,
                node.as_deref().map(|n| n.labels()),
                Some(&lpn),
                &policies_for_lpns.state(),
            ))
        })
        // Node and LivePatchNode updates come in bursts during a wave; one reconcile per
        // burst is enough.
        .with_config(controller::Config::default().debounce(Duration::from_millis(500)))
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, action)) => {
                    tracing::debug!(policy = %object.name, ?action, "reconciled")
                }
                Err(error) => tracing::warn!(%error, "controller error"),
            }
        })
        .await;
}

/// Applies a store trimming, unless the operator is built with the `untrimmed-stores`
/// feature, which the memory benchmark uses to measure what the trimming saves.
fn trim<K>(trimming: fn(&mut K), object: &mut K) {
    if !cfg!(feature = "untrimmed-stores") {
        trimming(object);
    }
}

fn refs(names: Vec<String>) -> Vec<ObjectRef<LivePatchPolicy>> {
    names.iter().map(|n| ObjectRef::new(n)).collect()
}

/// Sets `ready` once every store holds its first full list.
async fn mark_ready(
    policies: Store<LivePatchPolicy>,
    nodes: Store<Node>,
    lpns: Store<LivePatchNode>,
    ready: Arc<AtomicBool>,
) {
    let synced =
        store_synced(&policies).await && store_synced(&nodes).await && store_synced(&lpns).await;
    if synced {
        tracing::info!("caches synced");
        ready.store(true, Ordering::Release);
    }
}

/// Whether the store got its first list; `false` when its writer went away (shutdown).
/// kube 5's readiness signal wakes only the last task that waited on it, and the
/// controller waits too, so this asks again every half second instead of waiting once.
async fn store_synced<K>(store: &Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        let attempt = tokio::time::timeout(Duration::from_millis(500), store.wait_until_ready());
        if let Ok(result) = attempt.await {
            return result.is_ok();
        }
    }
}
