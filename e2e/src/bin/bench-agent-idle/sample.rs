//! What the idle benchmark reads, parsed without touching the system: a process's memory
//! and CPU lines from `/proc/<pid>/status` and `/proc/<pid>/stat`, and the API server's
//! `apiserver_request_total` counters, compared before and after the idle window.

use std::collections::BTreeMap;

/// Memory of a process from `/proc/<pid>/status`, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// Resident set size now (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size since start (`VmHWM`).
    pub hwm_kib: u64,
    /// Anonymous part of the RSS: heap, stacks (`RssAnon`).
    pub anon_kib: u64,
    /// File-backed part of the RSS: the binary's and libraries' pages (`RssFile`).
    pub file_kib: u64,
    /// Threads (`Threads`).
    pub threads: u64,
}

/// Reads `VmRSS`, `VmHWM`, `RssAnon`, `RssFile` and `Threads` out of `/proc/<pid>/status` text; `None` if any is
/// missing (the process is gone, or is a kernel thread).
pub fn parse_status(text: &str) -> Option<Memory> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS")?,
        hwm_kib: field("VmHWM")?,
        anon_kib: field("RssAnon")?,
        file_kib: field("RssFile")?,
        threads: field("Threads")?,
    })
}

/// The fields of `/proc/<pid>/stat` the benchmark needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    /// The command name (`comm`), at most 15 bytes.
    pub comm: String,
    /// Parent pid.
    pub ppid: u32,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
}

/// Parses `/proc/<pid>/stat`. The command name sits in parentheses and may itself hold
/// spaces and parentheses, so the fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    // After ")": state(3) ppid(4) ... utime(14) stime(15), counted from 1 over the line.
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let at = |field: usize| rest.get(field - 3)?.parse::<u64>().ok();
    Some(Stat {
        comm,
        ppid: u32::try_from(at(4)?).ok()?,
        cpu_ticks: at(14)?.checked_add(at(15)?)?,
    })
}

/// One `apiserver_request_total` series: its labels, in the order the server wrote them.
pub type Series = BTreeMap<String, String>;

/// The `apiserver_request_total` counters of a `/metrics` scrape, by label set.
pub fn parse_request_counters(text: &str) -> BTreeMap<Series, f64> {
    text.lines()
        .filter_map(|line| line.strip_prefix("apiserver_request_total{"))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once("} ")?;
            Some((parse_labels(labels), value.trim().parse::<f64>().ok()?))
        })
        .collect()
}

/// `a="x",b="y"` into a map. Label values here never hold `",`, so a plain split is enough.
fn parse_labels(text: &str) -> Series {
    text.split("\",")
        .filter_map(|pair| {
            let (key, value) = pair.split_once("=\"")?;
            Some((key.to_string(), value.trim_end_matches('"').to_string()))
        })
        .collect()
}

/// Requests made between two scrapes, by `VERB group/resource[/subresource] code`, only
/// the series that grew. A series missing from `before` started at zero.
pub fn requests_between(
    before: &BTreeMap<Series, f64>,
    after: &BTreeMap<Series, f64>,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (series, value) in after {
        let grew = value - before.get(series).copied().unwrap_or(0.0);
        if grew >= 0.5 {
            // Counters are whole numbers written as floats; round instead of truncating.
            *out.entry(describe(series)).or_insert(0) += grew.round() as u64;
        }
    }
    out
}

fn describe(series: &Series) -> String {
    let get = |k: &str| series.get(k).map(String::as_str).unwrap_or("");
    let mut what = match get("group") {
        "" => get("resource").to_string(),
        group => format!("{group}/{}", get("resource")),
    };
    if !get("subresource").is_empty() {
        what = format!("{what}/{}", get("subresource"));
    }
    format!("{} {what} {}", get("verb"), get("code"))
}

/// Whether a request key of [`requests_between`] is about an object the agent touches:
/// its own LivePatchNode and its Node. Nothing else in the benchmark reads those during
/// the window, so these are the agent's requests; the rest are the API server's own.
pub fn is_agent_request(key: &str) -> bool {
    key.split_whitespace()
        .nth(1)
        .is_some_and(|what| what.starts_with("kpersist.io/livepatchnodes") || what == "nodes")
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tkpersist-agent\nState:\tS (sleeping)\nVmHWM:\t   14212 kB\n\
                          VmRSS:\t   12001 kB\nRssAnon:\t    3000 kB\n\
                          RssFile:\t    9001 kB\nThreads:\t4\n";

    #[test]
    fn status_gives_rss_peak_and_threads() {
        assert_eq!(
            parse_status(STATUS),
            Some(Memory {
                rss_kib: 12001,
                hwm_kib: 14212,
                anon_kib: 3000,
                file_kib: 9001,
                threads: 4
            })
        );
        assert_eq!(parse_status("Name:\tkthreadd\nThreads:\t1\n"), None);
    }

    #[test]
    fn stat_counts_fields_after_a_command_name_with_spaces_and_parentheses() {
        let text = "4242 (a (b) c) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 4 0";
        let stat = parse_stat(text).unwrap();
        assert_eq!(stat.comm, "a (b) c");
        assert_eq!(stat.ppid, 17);
        assert_eq!(stat.cpu_ticks, 281);
        assert_eq!(parse_stat("4242 (x) S 1 2"), None);
    }

    const BEFORE: &str = r#"# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",contentType="application/json",dry_run="",group="kpersist.io",resource="livepatchnodes",scope="resource",subresource="",verb="GET",version="v1alpha1"} 3
apiserver_request_total{code="0",component="apiserver",contentType="application/json",dry_run="",group="kpersist.io",resource="livepatchnodes",scope="cluster",subresource="",verb="WATCH",version="v1alpha1"} 1
apiserver_request_total{code="200",component="apiserver",contentType="application/vnd.kubernetes.protobuf",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 40
apiserver_request_duration_seconds_count{verb="GET"} 9
"#;

    #[test]
    fn only_grown_series_are_counted_and_new_ones_from_zero() {
        let before = parse_request_counters(BEFORE);
        assert_eq!(before.len(), 3);
        let after_text = BEFORE
            .replace(
                "scope=\"cluster\",subresource=\"\",verb=\"WATCH\",version=\"v1alpha1\"} 1",
                "scope=\"cluster\",subresource=\"\",verb=\"WATCH\",version=\"v1alpha1\"} 2",
            )
            .replace(
                "verb=\"PUT\",version=\"v1\"} 40",
                "verb=\"PUT\",version=\"v1\"} 46",
            )
            + r#"apiserver_request_total{code="201",component="apiserver",contentType="application/apply-patch+yaml",dry_run="",group="kpersist.io",resource="livepatchnodes",scope="resource",subresource="status",verb="APPLY",version="v1alpha1"} 1
"#;
        let after = parse_request_counters(&after_text);
        let grown = requests_between(&before, &after);
        assert_eq!(
            grown,
            BTreeMap::from([
                ("APPLY kpersist.io/livepatchnodes/status 201".to_string(), 1),
                ("PUT coordination.k8s.io/leases 200".to_string(), 6),
                ("WATCH kpersist.io/livepatchnodes 0".to_string(), 1),
            ])
        );
        let agent: Vec<_> = grown.keys().filter(|k| is_agent_request(k)).collect();
        assert_eq!(agent.len(), 2);
        assert!(requests_between(&after, &after).is_empty());
    }
}
