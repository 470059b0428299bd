//! A watch of every LivePatchNode for the whole of a scenario, so invariants are checked
//! on each state the API server published (not on logs, and not only on the final state):
//! how many nodes were in flight at once, and which nodes were ever asked for or ran a
//! release.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use futures::StreamExt;
use kpersist_crds::{LivePatchNode, NodePatchState, PatchAction};
use kube::Api;
use kube::runtime::watcher;
use tokio::task::JoinHandle;

#[derive(Debug, Default)]
struct History {
    current: BTreeMap<String, LivePatchNode>,
    max_in_flight: usize,
    in_flight_at_max: Vec<String>,
    /// Per release: each node asked for it, in the order first seen, and when.
    desired: BTreeMap<String, Vec<(String, Instant)>>,
    /// Per release: each node that reported running it, and when first seen.
    applied: BTreeMap<String, BTreeMap<String, Instant>>,
    synced: bool,
    errors: Vec<String>,
}

/// Whether the operator has a node working on a release it has not reported yet: asked to
/// apply release R while the node does not run R and has not given up on it.
pub fn in_flight(node: &LivePatchNode) -> bool {
    let Some(desired) = node.spec.desired.as_ref() else {
        return false;
    };
    let Some(release) = desired.release.as_ref() else {
        return false;
    };
    if desired.action != PatchAction::Apply {
        return false;
    }
    let status = node.status.as_ref();
    let applied = status
        .and_then(|s| s.applied.as_ref())
        .map(|a| a.id.as_str());
    let settled = matches!(
        status.and_then(|s| s.state),
        Some(NodePatchState::Failed | NodePatchState::Unsupported | NodePatchState::CrashSuspected)
    );
    applied != Some(release.id.as_str()) && !settled
}

impl History {
    fn record(&mut self, node: LivePatchNode) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let now = Instant::now();
        let desired = node.spec.desired.as_ref();
        if let Some(release) = desired
            .filter(|d| d.action == PatchAction::Apply)
            .and_then(|d| d.release.as_ref())
        {
            let nodes = self.desired.entry(release.id.clone()).or_default();
            if !nodes.iter().any(|(n, _)| *n == name) {
                nodes.push((name.clone(), now));
            }
        }
        if let Some(applied) = node.status.as_ref().and_then(|s| s.applied.as_ref()) {
            self.applied
                .entry(applied.id.clone())
                .or_default()
                .entry(name.clone())
                .or_insert(now);
        }
        self.current.insert(name, node);
        self.update_max();
    }

    fn update_max(&mut self) {
        let now: Vec<String> = self
            .current
            .iter()
            .filter(|(_, node)| in_flight(node))
            .map(|(name, _)| name.clone())
            .collect();
        if now.len() > self.max_in_flight {
            self.max_in_flight = now.len();
            self.in_flight_at_max = now;
        }
    }
}

/// A running watch of every LivePatchNode; it stops when dropped.
#[derive(Debug)]
pub struct NodeWatch {
    history: Arc<Mutex<History>>,
    task: JoinHandle<()>,
}

impl NodeWatch {
    /// Starts watching with `client` (the admin's, so RBAC never hides an object).
    pub fn start(client: kube::Client) -> Self {
        let history = Arc::new(Mutex::new(History::default()));
        let api: Api<LivePatchNode> = Api::all(client);
        let shared = history.clone();
        let task = tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default()).boxed();
            while let Some(event) = events.next().await {
                let mut history = shared.lock().unwrap_or_else(|p| p.into_inner());
                match event {
                    Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)) => {
                        history.record(node)
                    }
                    Ok(watcher::Event::Delete(node)) => {
                        let name = node.metadata.name.unwrap_or_default();
                        history.current.remove(&name);
                    }
                    Ok(watcher::Event::Init) => {}
                    Ok(watcher::Event::InitDone) => history.synced = true,
                    // The watcher retries by itself; keep the error for the report.
                    Err(e) => history.errors.push(e.to_string()),
                }
            }
        });
        Self { history, task }
    }

    fn history(&self) -> MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the initial list has arrived.
    pub fn synced(&self) -> bool {
        self.history().synced
    }

    /// The most nodes ever in flight at once (see [`in_flight`]), and which they were.
    pub fn max_in_flight(&self) -> (usize, Vec<String>) {
        let history = self.history();
        (history.max_in_flight, history.in_flight_at_max.clone())
    }

    /// Nodes whose spec ever asked to apply release `id`.
    pub fn ever_desired(&self, id: &str) -> BTreeSet<String> {
        self.desired_order(id).into_iter().map(|(n, _)| n).collect()
    }

    /// Nodes asked to apply release `id`, in the order they were first asked, and when.
    pub fn desired_order(&self, id: &str) -> Vec<(String, Instant)> {
        self.history().desired.get(id).cloned().unwrap_or_default()
    }

    /// Nodes that ever reported running release `id`.
    pub fn ever_applied(&self, id: &str) -> BTreeSet<String> {
        self.history()
            .applied
            .get(id)
            .map(|nodes| nodes.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// When `node` was first seen running release `id`.
    pub fn applied_at(&self, id: &str, node: &str) -> Option<Instant> {
        self.history().applied.get(id)?.get(node).copied()
    }

    /// The latest state of every node.
    pub fn current(&self) -> BTreeMap<String, LivePatchNode> {
        self.history().current.clone()
    }

    /// Watch errors seen so far (the watch recovers from them by itself).
    pub fn errors(&self) -> Vec<String> {
        self.history().errors.clone()
    }
}

impl Drop for NodeWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}
