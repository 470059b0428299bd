//! What the kernel log and taint say after a load, and whose trouble it is. Only the kernel's
//! own records count (user space can write to `/dev/kmsg`); a warning report whose lines run
//! through the patch's module is the release's failure, and so are the taint bits the load
//! itself or the patch's own warning explains. Anything else is reported, not failed. Pure.

use kpersist_crds::NodeErrorReason;
use kpersist_kmod::kernel::{
    KmsgLine, TAINT_EXPECTED, TAINT_FROM_FAULT, TAINT_FROM_MODULE_LOAD, is_kernel_warning,
    taint_letters,
};

use crate::checks::Failure;

/// What a load left in the kernel log and taint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Findings {
    /// The release's failure, if the findings are its fault.
    pub failure: Option<Failure>,
    /// Findings that are not the release's: reported, not failed.
    pub notes: Vec<String>,
}

/// One warning, bug or oops report in the kernel log: its first line and the lines after it
/// up to the end of the trace or the next report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WarningReport<'a> {
    /// The line that starts the report.
    pub first: &'a str,
    /// Whether a line of the report runs through (or is printed by) the module.
    pub about_module: bool,
}

/// The kernel's warning reports in `lines`, each told whether it is about `module`.
pub fn warning_reports<'a>(lines: &'a [KmsgLine], module: &str) -> Vec<WarningReport<'a>> {
    // The kernel shows module names with `_` for `-` in traces and in "Modules linked in".
    let module = module.replace('-', "_");
    let frame = format!("[{module}]");
    let printed = format!("{module}: ");
    let mut reports: Vec<WarningReport<'a>> = Vec::new();
    let mut open = false;
    // Whether the open report so far is only its "[ cut here ]" line.
    let mut only_cut_here = false;
    for line in lines.iter().filter(|l| l.from_kernel()) {
        let text = line.text.as_str();
        match reports.last_mut() {
            // "WARNING: ..." right after "[ cut here ]" is the same report, better named.
            Some(report) if only_cut_here && is_kernel_warning(text) => report.first = text,
            _ if is_kernel_warning(text) => {
                reports.push(WarningReport {
                    first: text,
                    about_module: false,
                });
                open = true;
            }
            _ => {}
        }
        only_cut_here = open && text.contains("[ cut here ]");
        if !open {
            continue;
        }
        // "Modules linked in: ... kpersist_v2(OEK)" names every module, so it names no culprit.
        let about = text.contains(&frame) || text.trim_start().starts_with(&printed);
        if let Some(report) = reports.last_mut() {
            report.about_module |= about;
        }
        if text.contains("---[ end trace") {
            open = false;
        }
    }
    reports
}

/// Judges the kernel log `lines` written since the load of `module` (release `release_id`)
/// and the taint before and after it.
pub fn judge(
    before: u64,
    after: u64,
    lines: &[KmsgLine],
    module: &str,
    release_id: &str,
) -> Findings {
    let reports = warning_reports(lines, module);
    let (ours, others): (Vec<_>, Vec<_>) = reports.iter().partition(|r| r.about_module);
    let new = after & !before & !TAINT_EXPECTED;
    let explained = if ours.is_empty() {
        TAINT_FROM_MODULE_LOAD
    } else {
        TAINT_FROM_MODULE_LOAD | TAINT_FROM_FAULT
    };
    let counted = new & explained;
    let failure = if counted != 0 {
        Some(Failure::new(
            NodeErrorReason::NewTaint,
            format!(
                "after loading release {release_id} the kernel gained taint {} (bits {counted:#x}, \
                 taint was {before} and is {after}), which loading {module} or its own warning \
                 explains; check the kernel log before keeping it",
                taint_letters(counted)
            ),
        ))
    } else {
        ours.first().map(|first| {
            Failure::new(
                NodeErrorReason::KernelWarning,
                format!(
                    "after loading release {release_id} the kernel logged {} warning report(s) \
                     running through module {module}, first: {:?}",
                    ours.len(),
                    first.first
                ),
            )
        })
    };
    let mut notes = Vec::new();
    if let Some(first) = others.first() {
        notes.push(format!(
            "while release {release_id} was loaded the kernel logged {} warning report(s) not \
             about {module}, first: {:?}",
            others.len(),
            first.first
        ));
    }
    let unrelated = new & !counted;
    if unrelated != 0 {
        notes.push(format!(
            "while release {release_id} was loaded the kernel gained taint {} (bits \
             {unrelated:#x}), which loading {module} does not explain",
            taint_letters(unrelated)
        ));
    }
    Findings { failure, notes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kpersist_kmod::kernel::{TAINT_LIVEPATCH, TAINT_OOT_MODULE, TAINT_RANDSTRUCT, TAINT_WARN};

    fn kernel(seq: u64, text: &str) -> KmsgLine {
        KmsgLine {
            seq,
            level: 4,
            facility: 0,
            text: text.into(),
        }
    }

    fn user(seq: u64, text: &str) -> KmsgLine {
        KmsgLine {
            facility: 1,
            ..kernel(seq, text)
        }
    }

    const OURS: [&str; 5] = [
        "------------[ cut here ]------------",
        "WARNING: CPU: 1 PID: 77 at fs/proc/cmdline.c:9 kpersist_cmdline_proc_show+0x1c/0x30 [kpersist_v2]",
        "Modules linked in: kpersist_v2(OEK) xfs",
        " seq_read_iter+0x11a/0x4a0",
        "---[ end trace 0000000000000000 ]---",
    ];

    fn lines(texts: &[&str]) -> Vec<KmsgLine> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| kernel(i as u64 + 1, t))
            .collect()
    }

    #[test]
    fn a_warning_through_the_module_fails_the_release() {
        let findings = judge(0, TAINT_EXPECTED, &lines(&OURS), "kpersist_v2", "k/v2");
        let failure = findings.failure.unwrap();
        assert_eq!(failure.reason, NodeErrorReason::KernelWarning);
        assert!(
            failure.message.contains("kpersist_cmdline_proc_show"),
            "{}",
            failure.message
        );
        assert!(findings.notes.is_empty());
        // The W it set counts too, as NewTaint.
        let findings = judge(0, TAINT_WARN, &lines(&OURS), "kpersist_v2", "k/v2");
        assert_eq!(findings.failure.unwrap().reason, NodeErrorReason::NewTaint);
    }

    #[test]
    fn a_module_printing_its_own_warning_or_a_dashed_name_is_matched() {
        let texts = [
            "WARNING: something odd",
            "kpersist_v2: patched code saw a null",
        ];
        let log = lines(&texts);
        assert!(warning_reports(&log, "kpersist_v2")[0].about_module);
        let texts = [
            "BUG: unable to handle page fault",
            " fn+0x1/0x2 [kpersist_v2_b]",
        ];
        assert!(warning_reports(&lines(&texts), "kpersist-v2-b")[0].about_module);
    }

    #[test]
    fn another_module_in_modules_linked_in_is_not_blamed() {
        let texts = [
            "WARNING: CPU: 0 PID: 9 at drivers/net/e1000.c:1 e1000_watchdog+0x1/0x2 [e1000]",
            "Modules linked in: kpersist_v2(OEK) e1000",
            "---[ end trace 1 ]---",
            " kpersist_cmdline_proc_show+0x1/0x2 [kpersist_v2]",
        ];
        let findings = judge(0, TAINT_WARN, &lines(&texts), "kpersist_v2", "k/v2");
        assert_eq!(findings.failure, None);
        assert_eq!(findings.notes.len(), 2, "{:?}", findings.notes);
        assert!(
            findings.notes[0].contains("e1000_watchdog"),
            "{:?}",
            findings.notes
        );
        assert!(findings.notes[1].contains('W'), "{:?}", findings.notes);
    }

    #[test]
    fn user_space_records_do_not_count() {
        let texts = [
            user(1, "WARNING: CPU: 0 PID: 1 at x [kpersist_v2]"),
            user(2, "BUG: y"),
        ];
        let findings = judge(0, TAINT_EXPECTED, &texts, "kpersist_v2", "k/v2");
        assert_eq!(findings, Findings::default());
    }

    #[test]
    fn only_taint_a_load_sets_counts_without_a_warning() {
        let expected = TAINT_LIVEPATCH | TAINT_OOT_MODULE;
        assert_eq!(judge(0, expected, &[], "m", "k/v1"), Findings::default());
        let failure = judge(0, TAINT_RANDSTRUCT, &[], "m", "k/v1")
            .failure
            .unwrap();
        assert_eq!(failure.reason, NodeErrorReason::NewTaint);
        assert!(failure.message.contains('T'), "{}", failure.message);
        // Machine check (M): not the load's doing.
        let findings = judge(0, 1 << 4, &[], "m", "k/v1");
        assert_eq!(findings.failure, None);
        assert!(findings.notes[0].contains('M'), "{:?}", findings.notes);
        // Bits set before the load are not new.
        assert_eq!(
            judge(TAINT_WARN, TAINT_WARN, &[], "m", "k/v1"),
            Findings::default()
        );
    }
}
