use super::*;

fn node(state: NodePatchState, applied: Option<u64>, desired: Option<u64>) -> LivePatchNode {
    let mut value = serde_json::json!({
        "apiVersion": "kpersist.io/v1alpha1", "kind": "LivePatchNode",
        "metadata": {"name": "n"},
        "spec": {},
        "status": {"state": state},
    });
    if let Some(v) = applied {
        value["status"]["applied"] = serde_json::json!({
            "id": format!("k/v{v}"), "version": v, "moduleName": format!("kpersist_v{v}"),
        });
    }
    if let Some(v) = desired {
        value["spec"]["desired"] = serde_json::json!({
            "policy": "p", "action": "Apply",
            "release": {"id": format!("k/v{v}"), "kernelRelease": "k", "buildId": "b",
                        "version": v, "moduleUrl": "u", "sha256": "s", "size": 1,
                        "moduleName": format!("kpersist_v{v}")},
        });
    }
    serde_json::from_value(value).unwrap()
}

fn snapshot() -> Snapshot {
    let policy: LivePatchPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "kpersist.io/v1alpha1", "kind": "LivePatchPolicy",
        "metadata": {"name": "demo-fleet"},
        "spec": {"repository": {"url": "http://repo"}},
        "status": {"phase": "Baking",
                   "rollout": {"wave": 2, "waves": 3, "startedAt": "t", "waveStartedAt": "t"},
                   "nodes": {"total": 4, "patched": 1, "applying": 1, "reverting": 0,
                             "pending": 1, "failed": 0, "unsupported": 1,
                             "crashSuspected": 0, "unknown": 0}},
    }))
    .unwrap();
    Snapshot {
        title: "Act 1/3".into(),
        elapsed: 3.2,
        policy: Some(policy),
        names: ["node-01", "node-02", "node-03", "node-04", "node-05"]
            .map(String::from)
            .to_vec(),
        nodes: BTreeMap::from([
            (
                "node-01".into(),
                node(NodePatchState::Applied, Some(1), Some(1)),
            ),
            (
                "node-02".into(),
                node(NodePatchState::Applying, None, Some(1)),
            ),
            ("node-03".into(), node(NodePatchState::Idle, None, None)),
            (
                "node-04".into(),
                node(NodePatchState::Unsupported, None, None),
            ),
        ]),
        events: vec![PolicyEvent {
            time: "12:00:01".into(),
            kind: "Warning".into(),
            reason: "WaveFailed".into(),
            note: "wave 1 failed on node-01".into(),
        }],
    }
}

#[test]
fn the_frame_shows_phase_wave_counts_nodes_and_events() {
    let lines = frame(
        &snapshot(),
        Style {
            color: false,
            width: 200,
        },
    );
    let text = lines.join("\n");
    assert!(
        text.contains("policy demo-fleet: Baking   wave 2/3"),
        "{text}"
    );
    assert!(text.contains("1/3 patched"), "{text}");
    assert!(text.contains("node-01 ✓ v1"), "{text}");
    assert!(text.contains("node-02 ↻ --→v1"), "{text}");
    assert!(text.contains("node-04 – --"), "{text}");
    assert!(text.contains("node-05 ? --"), "{text}");
    assert!(
        text.contains("12:00:01 WaveFailed: wave 1 failed on node-01"),
        "{text}"
    );
    assert!(!text.contains('\x1b'), "no colour codes when colour is off");
}

#[test]
fn the_grid_wraps_to_the_width_and_long_lines_are_cut() {
    let narrow = frame(
        &snapshot(),
        Style {
            color: true,
            width: 40,
        },
    );
    let grid: Vec<&String> = narrow.iter().filter(|l| l.contains("node-0")).collect();
    assert!(grid.len() >= 3, "{narrow:#?}");
    let event = narrow.iter().find(|l| l.contains("WaveFailed")).unwrap();
    assert!(event.contains('…') && event.contains("\x1b[31m"), "{event}");
}

#[test]
fn the_one_line_form_names_phase_wave_and_counts() {
    let line = line(&snapshot());
    assert_eq!(
        line,
        "  Baking wave 2/3: 1/3 patched, 1 applying, 0 reverting, 1 pending, 0 failed, 1 unsupported"
    );
}

#[test]
fn the_bar_fills_in_proportion_and_never_overflows() {
    assert_eq!(bar(0, 0).chars().filter(|c| *c == '█').count(), 0);
    assert_eq!(bar(15, 30).chars().filter(|c| *c == '█').count(), 15);
    assert_eq!(bar(40, 30).chars().filter(|c| *c == '█').count(), 30);
}

#[test]
fn an_idle_node_whose_kernel_has_no_target_is_shown_unsupported() {
    let mut snap = snapshot();
    let policy = snap.policy.as_mut().unwrap();
    policy.status.as_mut().unwrap().targets = vec![
        serde_json::from_value(serde_json::json!({
            "kernelRelease": "k", "buildId": "b", "release": "k/v1", "version": 1, "cves": 1,
            "nodes": 2,
        }))
        .unwrap(),
    ];
    let mut other = node(NodePatchState::Idle, None, None);
    other.status.as_mut().unwrap().kernel_release = Some("other".into());
    snap.nodes.insert("node-03".into(), other);
    let mut same = node(NodePatchState::Idle, None, None);
    same.status.as_mut().unwrap().kernel_release = Some("k".into());
    snap.nodes.insert("node-05".into(), same);
    let text = frame(
        &snap,
        Style {
            color: false,
            width: 200,
        },
    )
    .join("\n");
    assert!(text.contains("node-03 – --"), "{text}");
    assert!(text.contains("node-05 · --"), "{text}");
}
