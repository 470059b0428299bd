//! Each invariant fails on a hand-made history that breaks it, and a clean rollout passes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use serde_json::{Value, json};

use super::*;

const V1: &str = "6.1.0-56-amd64/v1";
const V2: &str = "6.1.0-56-amd64/v2";
const SHA: &str = "1111111111111111111111111111111111111111111111111111111111111111";

fn release(id: &str) -> Value {
    json!({
        "id": id, "version": 1, "kernelRelease": "6.1.0-56-amd64", "buildId": "ab",
        "moduleName": "kpersist_v1", "moduleUrl": "http://r/m.ko", "sha256": SHA, "size": 10,
    })
}

/// A LivePatchNode: `desired` is `(action, release, wave, previous)`, `status` is
/// `(state, applied)`.
fn lpn(
    name: &str,
    desired: Option<(&str, &str, Option<u32>, Option<&str>)>,
    status: (&str, Option<&str>),
) -> LivePatchNode {
    let mut spec = json!({});
    if let Some((action, id, wave, previous)) = desired {
        let mut d = json!({"policy": "p", "action": action, "release": release(id)});
        if let Some(w) = wave {
            d["wave"] = json!(w);
        }
        if let Some(prev) = previous {
            d["previous"] = release(prev);
        }
        spec["desired"] = d;
    }
    let mut st = json!({"state": status.0});
    if let Some(id) = status.1 {
        st["applied"] = json!({"id": id, "version": 1, "moduleName": "kpersist_v1"});
    }
    serde_json::from_value(json!({
        "apiVersion": "kpersist.io/v1alpha1", "kind": "LivePatchNode",
        "metadata": {"name": name, "uid": format!("uid-{name}")},
        "spec": spec, "status": st,
    }))
    .expect("a valid LivePatchNode")
}

fn policy(phase: &str, bad: &[&str]) -> LivePatchPolicy {
    let bad: Vec<Value> = bad
        .iter()
        .map(|b| json!({"release": b, "reason": "canary failed", "markedAt": "2026-01-01T00:00:00Z"}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "kpersist.io/v1alpha1", "kind": "LivePatchPolicy",
        "metadata": {"name": "p"},
        "spec": {"repository": {"url": "http://r"}},
        "status": {"phase": phase, "badReleases": bad},
    }))
    .expect("a valid LivePatchPolicy")
}

/// A history from objects in order; revisions count up from 1.
fn history(objects: Vec<Object>) -> Vec<Observed> {
    objects
        .into_iter()
        .enumerate()
        .map(|(i, object)| Observed {
            revision: i as u64 + 1,
            at: Instant::now(),
            object,
            deleted: false,
        })
        .collect()
}

fn node(n: LivePatchNode) -> Object {
    Object::Node(n)
}

fn expect(end: &[(&str, Option<&str>)], phases: &[PolicyPhase]) -> Expectations {
    Expectations {
        policy: "p".into(),
        max_in_flight: 1,
        max_failures: 0,
        signed: [V1, V2]
            .iter()
            .map(|id| SignedRelease {
                id: id.to_string(),
                sha256: SHA.into(),
                size: 10,
            })
            .collect(),
        end_applied: end
            .iter()
            .map(|(n, r)| (n.to_string(), vec![r.map(String::from)]))
            .collect::<BTreeMap<_, _>>(),
        end_phases: phases.to_vec(),
        left: BTreeSet::new(),
    }
}

/// Two nodes roll v1 out, canary `a` then `b`.
fn clean_rollout() -> Vec<Object> {
    vec![
        node(lpn("a", None, ("Idle", None))),
        node(lpn("b", None, ("Idle", None))),
        node(lpn("a", Some(("Apply", V1, Some(1), None)), ("Idle", None))),
        node(lpn(
            "a",
            Some(("Apply", V1, Some(1), None)),
            ("Applied", Some(V1)),
        )),
        node(lpn("b", Some(("Apply", V1, Some(2), None)), ("Idle", None))),
        node(lpn(
            "b",
            Some(("Apply", V1, Some(2), None)),
            ("Applied", Some(V1)),
        )),
        Object::Policy(policy("Complete", &[])),
    ]
}

fn final_of(objects: &[Object]) -> Final {
    let mut nodes = BTreeMap::new();
    let mut last_policy = None;
    for o in objects {
        match o {
            Object::Node(n) => {
                nodes.insert(name_of(n), n.clone());
            }
            Object::Policy(p) => last_policy = Some(p.clone()),
        }
    }
    Final {
        nodes: nodes.into_values().collect(),
        policy: last_policy,
    }
}

fn invariants(violations: &[Violation]) -> Vec<Invariant> {
    violations.iter().map(|v| v.invariant).collect()
}

const ENDS_ON_V1: &[(&str, Option<&str>)] = &[("a", Some(V1)), ("b", Some(V1))];

#[test]
fn a_clean_rollout_passes_in_any_recorded_order() {
    let objects = clean_rollout();
    let mut log = history(objects.clone());
    log.reverse();
    let found = check(
        &log,
        &expect(ENDS_ON_V1, &[PolicyPhase::Complete]),
        &final_of(&objects),
    );
    assert_eq!(found, vec![]);
}

#[test]
fn two_nodes_in_flight_break_max_in_flight() {
    let mut objects = clean_rollout();
    // b is handed v1 (wave 1 too) while a still applies.
    objects.insert(
        3,
        node(lpn("b", Some(("Apply", V1, Some(1), None)), ("Idle", None))),
    );
    let found = check(
        &history(objects.clone()),
        &expect(ENDS_ON_V1, &[PolicyPhase::Complete]),
        &final_of(&objects),
    );
    assert!(
        invariants(&found).contains(&Invariant::MaxInFlight),
        "{found:?}"
    );
}

#[test]
fn wave_two_before_the_canary_applied_breaks_wave_order() {
    let mut objects = clean_rollout();
    objects.swap(3, 4);
    let mut exp = expect(ENDS_ON_V1, &[PolicyPhase::Complete]);
    exp.max_in_flight = 2;
    let found = check(&history(objects.clone()), &exp, &final_of(&objects));
    assert_eq!(invariants(&found), vec![Invariant::WaveOrder], "{found:?}");
}

#[test]
fn a_failed_canary_holds_the_next_wave_unless_max_failures_allows_it() {
    let objects = vec![
        node(lpn(
            "a",
            Some(("Apply", V1, Some(1), None)),
            ("Failed", None),
        )),
        node(lpn(
            "b",
            Some(("Apply", V1, Some(2), None)),
            ("Applied", Some(V1)),
        )),
        Object::Policy(policy("Complete", &[])),
    ];
    let ends = &[("a", None), ("b", Some(V1))];
    let mut exp = expect(ends, &[PolicyPhase::Complete]);
    let found = check(&history(objects.clone()), &exp, &final_of(&objects));
    assert_eq!(invariants(&found), vec![Invariant::WaveOrder], "{found:?}");
    exp.max_failures = 1;
    assert_eq!(
        check(&history(objects.clone()), &exp, &final_of(&objects)),
        vec![]
    );
}

#[test]
fn a_new_rollout_starting_over_at_wave_one_is_not_held_by_the_old_one() {
    let mut objects = clean_rollout();
    objects.extend([
        node(lpn(
            "b",
            Some(("Apply", V2, Some(1), None)),
            ("Applied", Some(V1)),
        )),
        node(lpn(
            "b",
            Some(("Apply", V2, Some(1), None)),
            ("Applied", Some(V2)),
        )),
        node(lpn(
            "a",
            Some(("Apply", V2, Some(2), None)),
            ("Applied", Some(V1)),
        )),
        node(lpn(
            "a",
            Some(("Apply", V2, Some(2), None)),
            ("Applied", Some(V2)),
        )),
    ]);
    let ends = &[("a", Some(V2)), ("b", Some(V2))];
    let found = check(
        &history(objects.clone()),
        &expect(ends, &[PolicyPhase::Complete]),
        &final_of(&objects),
    );
    assert_eq!(found, vec![]);
}

#[test]
fn handing_out_a_release_after_it_was_marked_bad_is_caught() {
    let objects = vec![
        node(lpn(
            "a",
            Some(("Apply", V2, Some(1), Some(V1))),
            ("Failed", Some(V1)),
        )),
        Object::Policy(policy("RollingBack", &[V2])),
        node(lpn(
            "a",
            Some(("Revert", V1, None, Some(V2))),
            ("Applied", Some(V1)),
        )),
        node(lpn(
            "b",
            Some(("Apply", V2, Some(1), Some(V1))),
            ("Failed", Some(V1)),
        )),
        Object::Policy(policy("Failed", &[V2])),
    ];
    let ends = &[("a", Some(V1)), ("b", Some(V1))];
    let found = check(
        &history(objects.clone()),
        &expect(ends, &[PolicyPhase::Failed]),
        &final_of(&objects),
    );
    let kinds = invariants(&found);
    // Once when handed out, once because b is still asked for it at the end.
    assert_eq!(
        kinds,
        vec![
            Invariant::BadReleaseHandedOut,
            Invariant::BadReleaseHandedOut
        ],
        "{found:?}"
    );
}

#[test]
fn a_release_missing_from_the_index_or_with_another_hash_is_caught() {
    let objects = clean_rollout();
    let mut exp = expect(ENDS_ON_V1, &[PolicyPhase::Complete]);
    exp.signed.retain(|s| s.id != V1);
    let found = check(&history(objects.clone()), &exp, &final_of(&objects));
    assert_eq!(
        invariants(&found),
        vec![Invariant::UnsignedRelease, Invariant::UnsignedRelease]
    );
    let mut exp = expect(ENDS_ON_V1, &[PolicyPhase::Complete]);
    exp.signed[0].sha256 = "2".repeat(64);
    let found = check(&history(objects.clone()), &exp, &final_of(&objects));
    assert_eq!(found.len(), 2, "{found:?}");
}

#[test]
fn a_node_on_the_wrong_release_or_a_policy_in_the_wrong_phase_is_caught() {
    let objects = clean_rollout();
    let ends = &[("a", Some(V2)), ("b", Some(V1))];
    let found = check(
        &history(objects.clone()),
        &expect(ends, &[PolicyPhase::Complete]),
        &final_of(&objects),
    );
    assert_eq!(invariants(&found), vec![Invariant::FinalState]);
    let found = check(
        &history(objects.clone()),
        &expect(ENDS_ON_V1, &[PolicyPhase::Paused]),
        &final_of(&objects),
    );
    assert_eq!(invariants(&found), vec![Invariant::FinalState]);
    // A policy expected gone that still exists and is still named by its nodes.
    let found = check(
        &history(objects.clone()),
        &expect(ENDS_ON_V1, &[]),
        &final_of(&objects),
    );
    assert_eq!(found.len(), 3, "{found:?}");
}

#[test]
fn a_node_left_applying_is_caught() {
    let mut objects = clean_rollout();
    objects.push(node(lpn(
        "b",
        Some(("Apply", V1, Some(2), None)),
        ("Applying", Some(V1)),
    )));
    let found = check(
        &history(objects.clone()),
        &expect(ENDS_ON_V1, &[PolicyPhase::Complete]),
        &final_of(&objects),
    );
    assert_eq!(
        invariants(&found),
        vec![Invariant::StuckTransition],
        "{found:?}"
    );
}

#[test]
fn a_node_deleted_recreated_or_missing_is_caught() {
    let objects = clean_rollout();
    let mut log = history(objects.clone());
    let mut gone = log[1].clone();
    gone.revision = 100;
    gone.deleted = true;
    log.push(gone);
    let exp = expect(ENDS_ON_V1, &[PolicyPhase::Complete]);
    let found = check(&log, &exp, &final_of(&objects));
    assert_eq!(
        invariants(&found),
        vec![Invariant::LostOrDuplicated],
        "{found:?}"
    );

    let mut end = final_of(&objects);
    end.nodes.retain(|n| name_of(n) != "b");
    let found = check(&history(objects.clone()), &exp, &end);
    assert_eq!(
        invariants(&found),
        vec![Invariant::LostOrDuplicated],
        "{found:?}"
    );

    let mut end = final_of(&objects);
    end.nodes[0].metadata.uid = Some("another".into());
    let found = check(&history(objects.clone()), &exp, &end);
    assert_eq!(
        invariants(&found),
        vec![Invariant::LostOrDuplicated],
        "{found:?}"
    );
}

/// `node` with a last error of `reason` about `release`.
fn with_error(mut node: LivePatchNode, reason: &str, release: &str) -> LivePatchNode {
    let error = json!({"reason": reason, "message": "seen", "release": release});
    let status = node.status.get_or_insert_with(Default::default);
    status.last_error = Some(serde_json::from_value(error).expect("a valid NodeError"));
    node
}

/// `node` reporting kernel build `build` (the releases of these tests are built for `ab`).
fn on_build(mut node: LivePatchNode, build: &str) -> LivePatchNode {
    node.status.get_or_insert_with(Default::default).build_id = Some(build.into());
    node
}

/// `policy` whose Degraded condition names `troubled` as node problems, as the engine
/// writes it.
fn naming_troubled(mut policy: LivePatchPolicy, troubled: &[&str]) -> LivePatchPolicy {
    let list: Vec<String> = troubled
        .iter()
        .map(|n| format!("{n} (NodeNotReady)"))
        .collect();
    let condition = json!({
        "type": "Degraded", "status": "True", "reason": "NodeProblems",
        "message": format!(
            "{} node(s) could not take part (not the release's fault; retried): {}",
            troubled.len(),
            list.join(", ")
        ),
    });
    let status = policy.status.get_or_insert_with(Default::default);
    status.conditions = vec![serde_json::from_value(condition).expect("a valid condition")];
    policy
}

/// The canary `a` is handed v1 and never finishes; `b` is handed wave 2 meanwhile, then
/// the policy status of that decision (`troubled` named as node problems) follows.
fn canary_left_behind(troubled: &[&str]) -> Vec<Object> {
    vec![
        node(lpn("a", None, ("Idle", None))),
        node(lpn("b", None, ("Idle", None))),
        node(lpn(
            "a",
            Some(("Apply", V1, Some(1), None)),
            ("Downloading", None),
        )),
        node(lpn("b", Some(("Apply", V1, Some(2), None)), ("Idle", None))),
        Object::Policy(naming_troubled(policy("Progressing", &[]), troubled)),
        node(lpn(
            "b",
            Some(("Apply", V1, Some(2), None)),
            ("Applied", Some(V1)),
        )),
        Object::Policy(naming_troubled(policy("Complete", &[]), troubled)),
    ]
}

#[test]
fn a_node_problem_frees_the_slot_and_holds_no_wave_but_an_unexplained_straggler_does() {
    let ends = &[("a", None), ("b", Some(V1))];
    let exp = expect(ends, &[PolicyPhase::Complete]);
    let objects = canary_left_behind(&["a"]);
    let found = check(&history(objects.clone()), &exp, &final_of(&objects));
    assert_eq!(found, vec![], "a was resolved as a node problem");

    // The same history with no node problem named: the canary was simply overtaken.
    let objects = canary_left_behind(&[]);
    let found = check(&history(objects.clone()), &exp, &final_of(&objects));
    assert_eq!(
        invariants(&found),
        vec![
            Invariant::WaveOrder,
            Invariant::MaxInFlight,
            Invariant::StuckTransition
        ],
        "{found:?}"
    );
}

#[test]
fn a_failure_that_is_the_nodes_trouble_does_not_count_against_the_wave() {
    let history_with = |reason: &str| {
        vec![
            node(with_error(
                lpn("a", Some(("Apply", V1, Some(1), None)), ("Failed", None)),
                reason,
                V1,
            )),
            node(lpn(
                "b",
                Some(("Apply", V1, Some(2), None)),
                ("Applied", Some(V1)),
            )),
            Object::Policy(policy("Complete", &[])),
        ]
    };
    let ends = &[("a", None), ("b", Some(V1))];
    let exp = expect(ends, &[PolicyPhase::Complete]);
    let objects = history_with("DownloadFailed");
    assert_eq!(
        check(&history(objects.clone()), &exp, &final_of(&objects)),
        vec![]
    );
    let objects = history_with("LoadRefused");
    let found = check(&history(objects.clone()), &exp, &final_of(&objects));
    assert_eq!(invariants(&found), vec![Invariant::WaveOrder], "{found:?}");
}

#[test]
fn a_release_marked_bad_with_only_node_problems_seen_is_caught() {
    let marked_after = |reason: &str| {
        vec![
            node(with_error(
                lpn("a", Some(("Apply", V1, Some(1), None)), ("Failed", None)),
                reason,
                V1,
            )),
            Object::Policy(policy("Failed", &[V1])),
        ]
    };
    let exp = expect(&[("a", None)], &[PolicyPhase::Failed]);
    let objects = marked_after("KernelMismatch");
    let found = check(&history(objects.clone()), &exp, &final_of(&objects));
    assert!(
        invariants(&found).contains(&Invariant::BlamelessBadRelease),
        "{found:?}"
    );
    // (Neither history reverts the node, so both also end asking for the bad release.)
    let objects = marked_after("TransitionStalled");
    let found = check(&history(objects.clone()), &exp, &final_of(&objects));
    assert!(
        !invariants(&found).contains(&Invariant::BlamelessBadRelease),
        "{found:?}"
    );
}

#[test]
fn a_node_rebooted_into_another_kernel_is_not_held_to_its_old_release() {
    let rebooted_canary = |build: &str| {
        vec![
            node(lpn("a", Some(("Apply", V1, Some(1), None)), ("Idle", None))),
            node(on_build(
                lpn("a", Some(("Apply", V1, Some(1), None)), ("Idle", None)),
                build,
            )),
            node(lpn(
                "b",
                Some(("Apply", V1, Some(2), None)),
                ("Applied", Some(V1)),
            )),
            Object::Policy(policy("Complete", &[])),
        ]
    };
    let ends = &[("a", None), ("b", Some(V1))];
    let mut exp = expect(ends, &[PolicyPhase::Complete]);
    exp.max_in_flight = 2;
    // `a` came back on build `cd` and reports nothing of v1 yet: it was not overtaken.
    let objects = rebooted_canary("cd");
    let found = check(&history(objects.clone()), &exp, &final_of(&objects));
    assert_eq!(invariants(&found), vec![Invariant::StuckTransition]);
    // Still on the build v1 is for: wave 2 overtook it.
    let objects = rebooted_canary("ab");
    let found = check(&history(objects.clone()), &exp, &final_of(&objects));
    assert_eq!(
        invariants(&found),
        vec![Invariant::WaveOrder, Invariant::StuckTransition],
        "{found:?}"
    );
}

#[test]
fn a_node_that_left_takes_its_live_patch_node_with_it() {
    let objects = clean_rollout();
    let mut log = history(objects.clone());
    let mut gone = log[1].clone();
    gone.revision = 100;
    gone.deleted = true;
    log.push(gone);
    let mut exp = expect(&[("a", Some(V1))], &[PolicyPhase::Complete]);
    exp.left.insert("b".into());
    let mut end = final_of(&objects);
    end.nodes.retain(|n| name_of(n) != "b");
    assert_eq!(check(&log, &exp, &end), vec![]);
}
