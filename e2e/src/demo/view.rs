//! The live picture of a rollout, drawn from what the API server holds: the policy's phase,
//! wave and counts, a progress bar, every node's state, and the policy's recent Events.
//! Rendering is pure text; the screen module decides how it reaches the terminal.

use std::collections::BTreeMap;

use kpersist_crds::{
    LivePatchNode, LivePatchPolicy, LivePatchPolicyStatus, NodePatchState, PatchAction,
};

/// One Event recorded on the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyEvent {
    /// `HH:MM:SS` (UTC) when it happened.
    pub time: String,
    /// `Normal` or `Warning`.
    pub kind: String,
    /// The operator's reason, e.g. `WaveStarted`.
    pub reason: String,
    /// What happened.
    pub note: String,
}

/// Everything one frame shows.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// What the demo is showing now, e.g. `Act 1/3: ...`.
    pub title: String,
    /// Seconds since this act began.
    pub elapsed: f64,
    /// The policy, once the operator has written its status.
    pub policy: Option<LivePatchPolicy>,
    /// Node names in display order.
    pub names: Vec<String>,
    /// The LivePatchNode of each node that has one.
    pub nodes: BTreeMap<String, LivePatchNode>,
    /// The policy's Events, oldest first.
    pub events: Vec<PolicyEvent>,
}

/// How a frame is drawn.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    /// Use ANSI colours.
    pub color: bool,
    /// Columns available.
    pub width: usize,
}

/// Events shown under the grid.
const EVENTS_SHOWN: usize = 5;
/// Characters of the progress bar.
const BAR: usize = 30;

/// The full frame: header, progress bar, node grid, legend and recent Events.
pub fn frame(snap: &Snapshot, style: Style) -> Vec<String> {
    let paint = Paint(style.color);
    let status = snap
        .policy
        .as_ref()
        .and_then(|p| p.status.clone())
        .unwrap_or_default();
    let phase = phase_name(&status);
    let wave = wave_name(&status);
    let targets: Vec<String> = status.targets.iter().map(|t| t.release.clone()).collect();
    let c = &status.nodes;
    let mut lines = vec![
        paint.bold(&format!("{}   ({:.0}s)", snap.title, snap.elapsed)),
        format!(
            "  policy {}: {}   {}   targets {}",
            snap.policy
                .as_ref()
                .and_then(|p| p.metadata.name.clone())
                .unwrap_or_default(),
            paint.phase(&phase),
            wave,
            if targets.is_empty() {
                "none".into()
            } else {
                targets.join(", ")
            }
        ),
        format!(
            "  {} {}/{} patched",
            paint.green(&bar(c.patched, c.total.saturating_sub(c.unsupported))),
            c.patched,
            c.total.saturating_sub(c.unsupported)
        ),
        format!(
            "  applying {}  reverting {}  pending {}  failed {}  unsupported {}  unknown {}",
            c.applying, c.reverting, c.pending, c.failed, c.unsupported, c.unknown
        ),
    ];
    lines.extend(grid(snap, style, paint));
    lines.push(paint.dim(
        "  ✓ applied  ↻ applying  ↺ reverting  ✗ failed  – unsupported (no release)  · idle  ? no agent",
    ));
    let recent = &snap.events[snap.events.len().saturating_sub(EVENTS_SHOWN)..];
    lines.push("  recent events:".into());
    if recent.is_empty() {
        lines.push(paint.dim("    (none yet)"));
    }
    for event in recent {
        let text = format!("    {} {}: {}", event.time, event.reason, event.note);
        let text = fit(&text, style.width);
        lines.push(if event.kind == "Warning" {
            paint.red(&text)
        } else {
            text
        });
    }
    lines
}

/// One line for logs and pipes: the same facts as the frame's header.
pub fn line(snap: &Snapshot) -> String {
    let status = snap
        .policy
        .as_ref()
        .and_then(|p| p.status.clone())
        .unwrap_or_default();
    let c = &status.nodes;
    format!(
        "  {} {}: {}/{} patched, {} applying, {} reverting, {} pending, {} failed, {} unsupported",
        phase_name(&status),
        wave_name(&status),
        c.patched,
        c.total.saturating_sub(c.unsupported),
        c.applying,
        c.reverting,
        c.pending,
        c.failed,
        c.unsupported
    )
}

fn phase_name(status: &LivePatchPolicyStatus) -> String {
    status
        .phase
        .map(|p| format!("{p:?}"))
        .unwrap_or_else(|| "waiting for the operator".into())
}

fn wave_name(status: &LivePatchPolicyStatus) -> String {
    status
        .rollout
        .as_ref()
        .map(|r| format!("wave {}/{}", r.wave, r.waves))
        .unwrap_or_else(|| "no rollout".into())
}

/// A bar of [`BAR`] characters, `done` of `total` filled.
pub fn bar(done: u32, total: u32) -> String {
    let filled = if total == 0 {
        0
    } else {
        (done.min(total) as usize * BAR) / total as usize
    };
    format!("[{}{}]", "█".repeat(filled), "░".repeat(BAR - filled))
}

/// The node grid: one cell per node, as many per line as fit.
fn grid(snap: &Snapshot, style: Style, paint: Paint) -> Vec<String> {
    // The agent of a node without a release for its kernel stays Idle; the operator counts
    // it Unsupported, and so does the grid.
    let targets: Vec<String> = snap
        .policy
        .as_ref()
        .and_then(|p| p.status.as_ref())
        .map(|s| s.targets.iter().map(|t| t.kernel_release.clone()).collect())
        .unwrap_or_default();
    let cells: Vec<(String, String)> = snap
        .names
        .iter()
        .map(|name| {
            let node = snap.nodes.get(name);
            let kernel = node
                .and_then(|n| n.status.as_ref())
                .and_then(|s| s.kernel_release.clone());
            let no_release = !targets.is_empty() && kernel.is_some_and(|k| !targets.contains(&k));
            cell(name, node, no_release, paint)
        })
        .collect();
    // Wide enough for the longest name and `↻ v1→v2`, so the grid does not shift as
    // nodes change state.
    let longest_name = snap
        .names
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(0);
    let cell_width = cells
        .iter()
        .map(|(plain, _)| plain.chars().count())
        .max()
        .unwrap_or(0)
        .max(longest_name + 8)
        + 2;
    let per_line = ((style.width.saturating_sub(2)) / cell_width.max(1)).max(1);
    cells
        .chunks(per_line)
        .map(|row| {
            let mut line = String::from("  ");
            for (plain, painted) in row {
                line.push_str(painted);
                line.push_str(&" ".repeat(cell_width - plain.chars().count()));
            }
            line.trim_end().to_string()
        })
        .collect()
}

/// `node-07 ✓ v2`, or `node-07 ↻ v1→v2` while moving; returned plain and painted.
fn cell(
    name: &str,
    node: Option<&LivePatchNode>,
    no_release: bool,
    paint: Paint,
) -> (String, String) {
    let status = node.and_then(|n| n.status.as_ref());
    let state = status.and_then(|s| s.state);
    let applied = status
        .and_then(|s| s.applied.as_ref())
        .map(|a| format!("v{}", a.version))
        .unwrap_or_else(|| "--".into());
    let desired = node
        .and_then(|n| n.spec.desired.as_ref())
        .filter(|d| d.action == PatchAction::Apply)
        .and_then(|d| d.release.as_ref())
        .map(|r| format!("v{}", r.version));
    let moving = matches!(
        state,
        Some(NodePatchState::Downloading | NodePatchState::Applying)
    );
    let version = match desired {
        Some(d) if moving && d != applied => format!("{applied}→{d}"),
        _ => applied,
    };
    let (symbol, color): (&str, fn(Paint, &str) -> String) = match state {
        None if node.is_none() => ("?", Paint::dim),
        None | Some(NodePatchState::Idle) if no_release => ("–", Paint::dim),
        None | Some(NodePatchState::Idle) => ("·", Paint::dim),
        Some(NodePatchState::Applied) => ("✓", Paint::green),
        Some(NodePatchState::Downloading | NodePatchState::Applying) => ("↻", Paint::yellow),
        Some(NodePatchState::Reverting) => ("↺", Paint::magenta),
        Some(NodePatchState::Failed | NodePatchState::CrashSuspected) => ("✗", Paint::red),
        Some(NodePatchState::Unsupported) => ("–", Paint::dim),
    };
    let plain = format!("{name} {symbol} {version}");
    let painted = format!("{name} {}", color(paint, &format!("{symbol} {version}")));
    (plain, painted)
}

/// `text` cut to `width` characters.
pub fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// ANSI colours, or none.
#[derive(Clone, Copy, Debug)]
pub struct Paint(pub bool);

impl Paint {
    fn wrap(self, code: &str, text: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    /// Bold.
    pub fn bold(self, text: &str) -> String {
        self.wrap("1", text)
    }
    /// Dim.
    pub fn dim(self, text: &str) -> String {
        self.wrap("2", text)
    }
    /// Green: done, good.
    pub fn green(self, text: &str) -> String {
        self.wrap("32", text)
    }
    /// Yellow: in progress.
    pub fn yellow(self, text: &str) -> String {
        self.wrap("33", text)
    }
    /// Red: failed.
    pub fn red(self, text: &str) -> String {
        self.wrap("31", text)
    }
    /// Magenta: going back.
    pub fn magenta(self, text: &str) -> String {
        self.wrap("35", text)
    }
    /// A policy phase in the colour of its meaning.
    fn phase(self, phase: &str) -> String {
        match phase {
            "Complete" | "Idle" => self.green(phase),
            "Failed" => self.red(phase),
            "RollingBack" => self.magenta(phase),
            _ => self.yellow(phase),
        }
    }
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
