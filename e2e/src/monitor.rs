//! A watch of every LivePatchNode for the whole of a scenario, so invariants are checked
//! on each state the API server published (not on logs, and not only on the final state):
//! how many nodes were in flight at once, and which nodes were ever asked for or ran a
//! release. It also keeps every version of every LivePatchNode and LivePatchPolicy seen, in
//! the API server's order, for the fault matrix's invariant checks ([`invariants`]).

pub mod invariants;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use futures::StreamExt;
use kpersist_crds::{LivePatchNode, LivePatchPolicy, NodePatchState, PatchAction};
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
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
    /// The latest state of every policy.
    policies: BTreeMap<String, LivePatchPolicy>,
    policies_synced: bool,
    /// Every version of every object seen, in the order seen; relists after a broken
    /// watch repeat versions, which are kept once.
    log: Vec<Observed>,
    seen: BTreeSet<(bool, String, String)>,
}

/// One version of an object as the watch saw it.
#[derive(Clone, Debug)]
pub struct Observed {
    /// `metadata.resourceVersion` as a number: etcd's revision, which orders writes to
    /// every object of the cluster. 0 when it is not a number.
    pub revision: u64,
    /// When the watch received it.
    pub at: Instant,
    /// The object, or its last state when `deleted`.
    pub object: Object,
    /// Whether this is the object's deletion.
    pub deleted: bool,
}

/// A watched object.
#[derive(Clone, Debug)]
pub enum Object {
    /// A LivePatchNode.
    Node(LivePatchNode),
    /// A LivePatchPolicy.
    Policy(LivePatchPolicy),
}

impl Object {
    /// The object's name.
    pub fn name(&self) -> String {
        match self {
            Object::Node(n) => n.metadata.name.clone().unwrap_or_default(),
            Object::Policy(p) => p.metadata.name.clone().unwrap_or_default(),
        }
    }

    fn resource_version(&self) -> String {
        match self {
            Object::Node(n) => n.metadata.resource_version.clone(),
            Object::Policy(p) => p.metadata.resource_version.clone(),
        }
        .unwrap_or_default()
    }
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
    /// Appends `object` to the log unless this version is there already.
    fn log(&mut self, object: Object, deleted: bool) {
        let version = object.resource_version();
        let key = (
            matches!(object, Object::Node(_)),
            object.name(),
            format!("{version}{}", if deleted { "-" } else { "" }),
        );
        if !self.seen.insert(key) {
            return;
        }
        self.log.push(Observed {
            revision: version.parse().unwrap_or(0),
            at: Instant::now(),
            object,
            deleted,
        });
    }

    fn record(&mut self, node: LivePatchNode) {
        self.log(Object::Node(node.clone()), false);
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
    policies: JoinHandle<()>,
}

impl NodeWatch {
    /// Starts watching with `client` (the admin's, so RBAC never hides an object).
    pub fn start(client: kube::Client) -> Self {
        let history = Arc::new(Mutex::new(History::default()));
        let policies = tokio::spawn(follow(
            Api::<LivePatchPolicy>::all(client.clone()),
            history.clone(),
            |history, change| match change {
                Change::Seen(policy) => {
                    let name = policy.metadata.name.clone().unwrap_or_default();
                    history.log(Object::Policy(policy.clone()), false);
                    history.policies.insert(name, policy);
                }
                Change::Deleted(policy) => {
                    let name = policy.metadata.name.clone().unwrap_or_default();
                    history.policies.remove(&name);
                    history.log(Object::Policy(policy), true);
                }
                Change::Synced => history.policies_synced = true,
            },
        ));
        let task = tokio::spawn(follow(
            Api::<LivePatchNode>::all(client),
            history.clone(),
            |history, change| match change {
                Change::Seen(node) => history.record(node),
                Change::Deleted(node) => {
                    let name = node.metadata.name.clone().unwrap_or_default();
                    history.current.remove(&name);
                    history.log(Object::Node(node), true);
                }
                Change::Synced => history.synced = true,
            },
        ));
        Self {
            history,
            task,
            policies,
        }
    }

    fn history(&self) -> MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the initial lists (of nodes and of policies) have arrived.
    pub fn synced(&self) -> bool {
        let history = self.history();
        history.synced && history.policies_synced
    }

    /// The latest state of every policy.
    pub fn policies(&self) -> BTreeMap<String, LivePatchPolicy> {
        self.history().policies.clone()
    }

    /// Every version of every LivePatchNode and LivePatchPolicy seen so far, in the order
    /// the watches received them (sort by [`Observed::revision`] for the API server's
    /// order across both kinds).
    pub fn log(&self) -> Vec<Observed> {
        self.history().log.clone()
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
        self.policies.abort();
    }
}

/// What a watch reports to [`follow`]'s handler.
enum Change<K> {
    /// An object as listed or changed.
    Seen(K),
    /// An object deleted, in its last state.
    Deleted(K),
    /// The initial list has arrived.
    Synced,
}

/// Feeds every change of `api`'s objects to `handle` until aborted. The watcher retries
/// by itself, with backoff; its errors are kept for the report.
async fn follow<K>(api: Api<K>, shared: Arc<Mutex<History>>, handle: fn(&mut History, Change<K>))
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        let mut history = shared.lock().unwrap_or_else(|p| p.into_inner());
        let change = match event {
            Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                Change::Seen(object)
            }
            Ok(watcher::Event::Delete(object)) => Change::Deleted(object),
            Ok(watcher::Event::InitDone) => Change::Synced,
            Ok(watcher::Event::Init) => continue,
            Err(e) => {
                history.errors.push(e.to_string());
                continue;
            }
        };
        handle(&mut history, change);
    }
}
