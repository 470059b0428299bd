//! The end of the demo: what happened, judged against what the demo set out to show, and
//! where everything is. Pure: the story gathers the facts, this turns them into text and a
//! verdict.

use std::collections::BTreeSet;

use super::view::Paint;

/// What the demo saw, gathered from the API objects and the LivePatchNode watch.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Simulated nodes.
    pub nodes: usize,
    /// Nodes whose kernel has no release in the repository.
    pub unsupported: Vec<String>,
    /// Seconds the first rollout (v1) took, when it finished.
    pub v1_seconds: Option<f64>,
    /// Nodes on v1 at the end of the first rollout.
    pub v1_patched: usize,
    /// Seconds the persistent update (v2) took, when it finished.
    pub v2_seconds: Option<f64>,
    /// Nodes on v2 at the end of the update.
    pub v2_patched: usize,
    /// Nodes with a release for their kernel.
    pub supported: usize,
    /// The bad release's id.
    pub bad_release: String,
    /// Seconds from publishing the bad release to every node being back on v2.
    pub revert_seconds: Option<f64>,
    /// Every node ever asked to apply the bad release.
    pub asked_bad: BTreeSet<String>,
    /// What the canary reported when the bad release failed on it.
    pub canary_error: Option<String>,
    /// The policy's reason for marking the release bad, if it did.
    pub marked_bad: Option<String>,
    /// The policy's conditions after the revert, `Type=Status Reason: message`.
    pub conditions: Vec<String>,
    /// Whether every supported node ran v2 at the end.
    pub all_on_v2: bool,
    /// The admin kubeconfig.
    pub kubeconfig: String,
    /// The operator's metrics URL.
    pub metrics_url: String,
    /// Where every process's log is.
    pub logs: String,
}

/// One thing the demo set out to show, and whether it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// It happened.
    pub ok: bool,
    /// What happened (or should have).
    pub text: String,
}

/// What the demo set out to show, each judged from the report.
pub fn findings(r: &Report) -> Vec<Finding> {
    let secs = |s: Option<f64>| {
        s.map(|s| format!("{s:.1}s"))
            .unwrap_or("not finished".into())
    };
    let canary = r.asked_bad.iter().next().cloned().unwrap_or_default();
    vec![
        Finding {
            ok: r.v1_seconds.is_some() && r.v1_patched == r.supported,
            text: format!(
                "v1 rolled out in waves to {}/{} supported nodes in {};\n      {} kept running \
                 unpatched (no release for its kernel: Unsupported, not a failure)",
                r.v1_patched,
                r.supported,
                secs(r.v1_seconds),
                r.unsupported.join(", "),
            ),
        },
        Finding {
            ok: r.v2_seconds.is_some() && r.v2_patched == r.supported,
            text: format!(
                "v2 (cumulative, more CVEs) was published and picked up on its own: {}/{} nodes \
                 moved to it in {}",
                r.v2_patched,
                r.supported,
                secs(r.v2_seconds)
            ),
        },
        Finding {
            ok: r.asked_bad.len() == 1 && r.canary_error.is_some(),
            text: format!(
                "{} failed on the canary {}:\n      {}",
                r.bad_release,
                if canary.is_empty() { "(none)" } else { &canary },
                r.canary_error.as_deref().unwrap_or("no failure seen")
            ),
        },
        Finding {
            ok: r.marked_bad.is_some(),
            text: format!(
                "{} marked bad by the policy:\n      {}",
                r.bad_release,
                r.marked_bad.as_deref().unwrap_or("not marked")
            ),
        },
        Finding {
            ok: r.asked_bad.len() == 1,
            text: format!(
                "no node beyond the canary was ever asked for {} (asked: {})",
                r.bad_release,
                r.asked_bad.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        },
        Finding {
            ok: r.all_on_v2 && r.revert_seconds.is_some(),
            text: format!(
                "automatic revert: every supported node runs v2 again, {} after v3 was published",
                secs(r.revert_seconds)
            ),
        },
    ]
}

/// The summary's lines and whether the story happened as shown.
pub fn render(r: &Report, paint: Paint) -> (Vec<String>, bool) {
    let findings = findings(r);
    let ok = findings.iter().all(|f| f.ok);
    let mut lines = vec![String::new(), paint.bold("Summary")];
    for f in &findings {
        let mark = if f.ok {
            paint.green("✓")
        } else {
            paint.red("✗")
        };
        lines.push(format!("  {mark} {}", f.text));
    }
    if !r.conditions.is_empty() {
        lines.push("  the policy's conditions now:".into());
        lines.extend(r.conditions.iter().map(|c| format!("    {c}")));
    }
    lines.push(String::new());
    lines.push(paint.bold("Where things are"));
    lines.push(format!("  kubeconfig (admin): {}", r.kubeconfig));
    lines.push(format!(
        "  kubectl --kubeconfig {} get lpp,lpn",
        r.kubeconfig
    ));
    lines.push(format!("  operator metrics:   {}", r.metrics_url));
    lines.push(format!("  logs of every process: {}", r.logs));
    lines.push(String::new());
    lines.push(if ok {
        paint.green("The demo showed what it set out to: DEMO OK")
    } else {
        paint.red("Something above did not happen as it should: DEMO FAILED")
    });
    (lines, ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Report {
        Report {
            nodes: 4,
            unsupported: vec!["node-04".into()],
            v1_seconds: Some(20.0),
            v1_patched: 3,
            v2_seconds: Some(18.0),
            v2_patched: 3,
            supported: 3,
            bad_release: "k/v3".into(),
            revert_seconds: Some(7.5),
            asked_bad: BTreeSet::from(["node-02".to_string()]),
            canary_error: Some("NewTaint: taint rose".into()),
            marked_bad: Some("wave 1 failed".into()),
            conditions: vec!["Degraded=True WaveFailed: k/v3 failed".into()],
            all_on_v2: true,
            kubeconfig: "/tmp/x/admin.kubeconfig".into(),
            metrics_url: "http://127.0.0.1:1/metrics".into(),
            logs: "/tmp/x".into(),
        }
    }

    #[test]
    fn the_whole_story_passes_and_says_where_things_are() {
        let (lines, ok) = render(&good(), Paint(false));
        let text = lines.join("\n");
        assert!(ok, "{text}");
        assert!(text.contains("kubectl --kubeconfig /tmp/x/admin.kubeconfig get lpp,lpn"));
        assert!(
            text.contains("failed on the canary node-02:\n      NewTaint"),
            "{text}"
        );
        assert!(text.contains("DEMO OK"));
    }

    #[test]
    fn a_bad_release_reaching_a_second_node_fails_the_demo() {
        let mut report = good();
        report.asked_bad.insert("node-03".into());
        let (lines, ok) = render(&report, Paint(false));
        assert!(!ok);
        assert!(lines.join("\n").contains("DEMO FAILED"));
    }

    #[test]
    fn an_unfinished_update_fails_the_demo() {
        let mut report = good();
        report.v2_seconds = None;
        report.v2_patched = 1;
        let found = findings(&report);
        assert!(!found[1].ok && found[1].text.contains("not finished"));
        assert!(!render(&report, Paint(false)).1);
    }
}
