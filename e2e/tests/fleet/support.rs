//! Helpers shared by the fleet suite's tests: sample objects, one-at-a-time turns, and
//! assertions on the API server's refusals.

use std::collections::BTreeMap;

use kpersist_crds::{
    Condition, LivePatchNode, LivePatchPolicy, LivePatchPolicySpec, LivePatchPolicyStatus,
    NodePatchState, RepositorySpec, RolloutSpec, Wave,
};
use kpersist_e2e::sim_fleet::{SimFleet, SimNode};
use kpersist_e2e::wait::Check;

/// Turns: one test at a time owns the machine's cores.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for this test's turn; the turn ends when the guard is dropped.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    TURN.lock().await
}

/// A policy that passes the schema, with every optional part at its default.
pub fn sample_policy(name: &str) -> LivePatchPolicy {
    let spec = LivePatchPolicySpec {
        node_selector: Default::default(),
        repository: serde_json::from_value::<RepositorySpec>(serde_json::json!({
            "url": "http://127.0.0.1:9/repo",
        }))
        .expect("repository spec with defaults"),
        rollout: RolloutSpec::default(),
        health: Default::default(),
    };
    LivePatchPolicy::new(name, spec)
}

/// The status code and message of an API refusal; panics when `result` is not one.
fn refusal<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.message.clone()),
        other => panic!("{what}: expected the API server to refuse, got {other:?}"),
    }
}

/// Asserts `result` is a 403 Forbidden from RBAC.
pub fn forbidden<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) {
    let (code, message) = refusal(what, result);
    assert_eq!(
        code, 403,
        "{what}: expected 403 Forbidden, got {code}: {message}"
    );
}

/// Asserts `result` is a 422 Invalid from schema validation and returns its message.
pub fn invalid<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> String {
    let (code, message) = refusal("invalid object", result);
    assert_eq!(code, 422, "expected 422 Invalid, got {code}: {message}");
    message
}

/// Kernels of the simulated fleet. K1 and K2 have releases; K3 never does.
pub const K1: (&str, &str) = ("6.1.0-56-amd64", "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1");
pub const K2: (&str, &str) = ("6.1.0-57-amd64", "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2");
pub const K3: (&str, &str) = ("6.1.0-99-amd64", "c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3");

/// Seven nodes: four on K1, two on K2, one on K3 (nothing published for it).
pub fn standard_nodes() -> Vec<SimNode> {
    (1..=7)
        .map(|i| {
            let (release, build) = match i {
                1..=4 => K1,
                5 | 6 => K2,
                _ => K3,
            };
            SimNode::new(&format!("node-{i}"), release, build)
        })
        .collect()
}

/// The release id of `version` for kernel `k`.
pub fn id(k: (&str, &str), version: u64) -> String {
    format!("{}/v{version}", k.0)
}

/// Canary of one node, then half, then everything, each wave baking `bake`.
pub fn three_waves(bake: &str) -> Vec<Wave> {
    let wave = |nodes, percent| Wave {
        nodes,
        percent,
        bake: bake.to_string(),
    };
    vec![
        wave(Some(1), None),
        wave(None, Some(50)),
        wave(None, Some(100)),
    ]
}

/// One line per node: state, applied and desired release, last error.
pub fn describe(nodes: &BTreeMap<String, LivePatchNode>) -> String {
    let mut out = String::new();
    for (name, node) in nodes {
        let status = node.status.clone().unwrap_or_default();
        let desired = node
            .spec
            .desired
            .as_ref()
            .map(|d| {
                let id = d.release.as_ref().map(|r| r.id.as_str()).unwrap_or("none");
                format!("{:?} {id}", d.action)
            })
            .unwrap_or_else(|| "nothing".into());
        let error = status
            .last_error
            .map(|e| format!(" error {:?}: {}", e.reason, e.message))
            .unwrap_or_default();
        out.push_str(&format!(
            "\n  {name}: {:?}, applied {}, desired {desired}{error}",
            status.state,
            status
                .applied
                .map(|a| a.id)
                .unwrap_or_else(|| "none".into()),
        ));
    }
    out
}

/// Done when every node in `expected` runs the release given for it.
pub fn all_applied(
    nodes: &BTreeMap<String, LivePatchNode>,
    expected: &BTreeMap<String, String>,
) -> Check<()> {
    let done = expected.iter().all(|(name, release)| {
        nodes
            .get(name)
            .and_then(|n| n.status.as_ref())
            .is_some_and(|s| {
                s.state == Some(NodePatchState::Applied)
                    && s.applied.as_ref().map(|a| a.id.as_str()) == Some(release.as_str())
            })
    });
    if done {
        Check::Done(())
    } else {
        Check::NotYet(describe(nodes))
    }
}

/// One line on a policy's status, for failure messages.
pub fn describe_policy(policy: &LivePatchPolicy) -> String {
    let status = policy.status.clone().unwrap_or_default();
    let conditions: Vec<String> = status
        .conditions
        .iter()
        .map(|c| format!("{}={} ({}: {})", c.type_, c.status, c.reason, c.message))
        .collect();
    format!(
        "phase {:?}, nodes {:?}, bad {:?}, conditions [{}]",
        status.phase,
        status.nodes,
        status.bad_releases,
        conditions.join("; ")
    )
}

/// Panics with `error`, the fleet's dead processes, and where the logs are.
pub fn fail(fleet: &mut SimFleet, error: kpersist_e2e::Error) -> ! {
    panic!(
        "{error}{}\n(logs of every process are in {})",
        fleet.process_report(),
        fleet.cluster.plane.dir().display()
    )
}

/// Every node with a release for its kernel, mapped to release `version` of that kernel
/// (K1 at `k1_version`, K2 at v1).
pub fn expected_releases(fleet: &SimFleet, k1_version: u64) -> BTreeMap<String, String> {
    fleet
        .nodes()
        .iter()
        .filter_map(|node| match node.kernel_release.as_str() {
            r if r == K1.0 => Some((node.name.clone(), id(K1, k1_version))),
            r if r == K2.0 => Some((node.name.clone(), id(K2, 1))),
            _ => None,
        })
        .collect()
}

/// Publishes v1 for K1 and K2, starts agents and operator, creates policy `fleet` with
/// three waves of `bake` and `max_in_flight`, and waits until every supported node runs
/// v1.
pub async fn fleet_on_v1(fleet: &mut SimFleet, bake: &str, max_in_flight: u32) {
    let policy = fleet.policy("fleet", three_waves(bake), max_in_flight);
    start_v1(fleet, &policy).await;
    wait_applied(fleet, 1, "every supported node to apply v1").await;
}

/// Publishes v1 for K1 and K2, starts agents and operator, and creates `policy`.
pub async fn start_v1(fleet: &mut SimFleet, policy: &LivePatchPolicy) {
    publish_v1(fleet);
    fleet.start_agents().expect("agents");
    fleet.start_operator().expect("operator");
    fleet.create_policy(policy).await.expect("policy");
}

/// `count` nodes, `node-1` on, all on K1.
pub fn k1_nodes(count: usize) -> Vec<SimNode> {
    (1..=count)
        .map(|i| SimNode::new(&format!("node-{i}"), K1.0, K1.1))
        .collect()
}

/// CVEs fixed by v1 of every kernel, and by v2 of K1.
pub const V1_CVES: &[&str] = &["CVE-2024-0001"];
pub const V2_CVES: &[&str] = &["CVE-2024-0001", "CVE-2024-0002"];

/// Publishes v1 for K1 and K2.
pub fn publish_v1(fleet: &SimFleet) {
    for k in [K1, K2] {
        fleet
            .publisher
            .publish(k.0, k.1, 1, V1_CVES, &["stable"])
            .expect("publish v1");
    }
}

/// Publishes v2 for K1 (K2 stays on v1).
pub fn publish_k1_v2(fleet: &SimFleet) {
    fleet
        .publisher
        .publish(K1.0, K1.1, 2, V2_CVES, &["stable"])
        .expect("publish v2");
}

/// Waits until every supported node runs K1 at `k1_version` (K2 at v1).
pub async fn wait_applied(fleet: &mut SimFleet, k1_version: u64, what: &str) {
    let expected = expected_releases(fleet, k1_version);
    let waited = fleet
        .wait_nodes(what, ROLLOUT, |nodes| all_applied(nodes, &expected))
        .await;
    if let Err(e) = waited {
        fail(fleet, e)
    }
}

/// How long a whole rollout of the standard fleet may take.
pub const ROLLOUT: std::time::Duration = std::time::Duration::from_secs(180);

/// The condition of type `type_` on a policy, if any.
pub fn condition(policy: &LivePatchPolicy, type_: &str) -> Option<Condition> {
    policy
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

/// Waits `period` and asserts no node was ever asked to apply `release`.
pub async fn assert_never_desired(fleet: &SimFleet, release: &str, period: std::time::Duration) {
    tokio::time::sleep(period).await;
    let asked = fleet.watch.ever_desired(release);
    assert!(asked.is_empty(), "{release} was handed to {asked:?}");
}

/// Asserts the watch never saw more than `limit` nodes in flight at once.
pub fn assert_max_in_flight(fleet: &SimFleet, limit: u32) {
    let (max, at_max) = fleet.watch.max_in_flight();
    assert!(
        max as u32 <= limit,
        "{max} nodes were in flight at once ({at_max:?}); maxInFlight is {limit}"
    );
}

/// A few polls of the repository (policies check it every 2 s).
pub const FEW_POLLS: std::time::Duration = std::time::Duration::from_secs(7);

/// Waits until policy `fleet` is gone (its finalizer done); fails the test with the
/// finalizers still on it otherwise.
pub async fn wait_policy_gone(fleet: &mut SimFleet) {
    let policies: kube::Api<LivePatchPolicy> = kube::Api::all(fleet.cluster.admin.clone());
    let gone = kpersist_e2e::wait::wait_until("the policy to be gone", ROLLOUT, || {
        let policies = policies.clone();
        async move {
            Ok(match policies.get_opt("fleet").await? {
                None => Check::Done(()),
                Some(p) => Check::NotYet(format!("finalizers {:?}", p.metadata.finalizers)),
            })
        }
    })
    .await;
    if let Err(e) = gone {
        fail(fleet, e)
    }
}

/// Waits until `holds` is true of policy `fleet`'s status; fails the test with the last
/// status seen otherwise.
pub async fn wait_policy_status(
    fleet: &mut SimFleet,
    what: &str,
    holds: impl Fn(&LivePatchPolicyStatus) -> bool,
) {
    let waited = fleet
        .wait_policy("fleet", what, ROLLOUT, |p| {
            if holds(&p.status.clone().unwrap_or_default()) {
                Check::Done(())
            } else {
                Check::NotYet(describe_policy(p))
            }
        })
        .await;
    if let Err(e) = waited {
        fail(fleet, e)
    }
}
