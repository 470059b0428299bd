//! Counting API requests from the API server's own `apiserver_request_total` counter:
//! parse two scrapes of `/metrics`, subtract, and group by resource into reads and writes.
//! Pure: the caller scrapes.

use std::collections::BTreeMap;

/// The counter every request increments once, labelled by verb, resource and code.
const COUNTER: &str = "apiserver_request_total";

/// One series of the counter, summed over the labels that do not matter here (group,
/// version, scope, component, content type, dry run).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestKey {
    /// `GET`, `LIST`, `WATCH`, `CREATE`, `UPDATE`, `PATCH`, `APPLY`, `DELETE`, ...
    pub verb: String,
    /// `resource` or `resource/subresource`, e.g. `livepatchnodes/status`.
    pub resource: String,
    /// HTTP status code, e.g. `200`.
    pub code: String,
}

/// Requests counted per series.
pub type RequestCounts = BTreeMap<RequestKey, f64>;

/// Whether a verb changes stored state (a write) rather than reading it.
pub fn is_write(verb: &str) -> bool {
    matches!(
        verb,
        "CREATE" | "UPDATE" | "PATCH" | "APPLY" | "DELETE" | "DELETECOLLECTION" | "POST" | "PUT"
    )
}

/// The `apiserver_request_total` series of a Prometheus text exposition. Requests that
/// name no resource (`/metrics`, `/readyz`, discovery) are left out: they are not part of
/// reconciling anything.
pub fn parse(text: &str) -> RequestCounts {
    let mut counts = RequestCounts::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(COUNTER) else {
            continue;
        };
        let Some(rest) = rest.strip_prefix('{') else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let labels = parse_labels(labels);
        let label = |name: &str| labels.get(name).cloned().unwrap_or_default();
        let resource = label("resource");
        if resource.is_empty() {
            continue;
        }
        let subresource = label("subresource");
        let key = RequestKey {
            verb: label("verb"),
            resource: if subresource.is_empty() {
                resource
            } else {
                format!("{resource}/{subresource}")
            },
            code: label("code"),
        };
        *counts.entry(key).or_default() += value;
    }
    counts
}

/// `name="value",...` into a map; escapes in values (`\"`, `\\`, `\n`) are undone.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.is_empty() || chars.next() != Some('"') {
            return labels;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                other => value.push(other),
            }
        }
        labels.insert(name.trim().to_string(), value);
    }
}

/// What happened between two scrapes: `after - before` per series, series that did not
/// move dropped.
pub fn delta(before: &RequestCounts, after: &RequestCounts) -> RequestCounts {
    after
        .iter()
        .filter_map(|(key, value)| {
            let moved = value - before.get(key).copied().unwrap_or(0.0);
            (moved > 0.0).then(|| (key.clone(), moved))
        })
        .collect()
}

/// Reads and writes of one resource.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResourceRequests {
    /// `GET`, `LIST` and `WATCH` requests.
    pub reads: f64,
    /// Every other verb.
    pub writes: f64,
    /// Requests answered with a 4xx or 5xx code.
    pub errors: f64,
}

/// Requests per resource.
pub fn by_resource(counts: &RequestCounts) -> BTreeMap<String, ResourceRequests> {
    let mut rows: BTreeMap<String, ResourceRequests> = BTreeMap::new();
    for (key, value) in counts {
        let row = rows.entry(key.resource.clone()).or_default();
        if is_write(&key.verb) {
            row.writes += value;
        } else {
            row.reads += value;
        }
        if key.code.parse::<u16>().is_ok_and(|code| code >= 400) {
            row.errors += value;
        }
    }
    rows
}

/// Whether a verb creates an object: `CREATE`, or `POST` as Kubernetes 1.20 labels it.
pub fn is_create(verb: &str) -> bool {
    matches!(verb, "CREATE" | "POST")
}

/// Writes to `resources` (each `resource` or `resource/subresource`) counted in `counts`,
/// leaving out creates when `creates` is false.
pub fn writes_to(counts: &RequestCounts, resources: &[&str], creates: bool) -> f64 {
    counts
        .iter()
        .filter(|(key, _)| resources.contains(&key.resource.as_str()))
        .filter(|(key, _)| is_write(&key.verb) && (creates || !is_create(&key.verb)))
        .map(|(_, value)| value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",contentType="application/json",dry_run="",group="kpersist.io",resource="livepatchnodes",scope="cluster",subresource="",verb="PATCH",version="v1alpha1"} 7
apiserver_request_total{code="200",component="apiserver",contentType="application/vnd.kubernetes.protobuf",dry_run="",group="kpersist.io",resource="livepatchnodes",scope="cluster",subresource="",verb="PATCH",version="v1alpha1"} 3
apiserver_request_total{code="200",component="apiserver",contentType="application/json",dry_run="",group="kpersist.io",resource="livepatchnodes",scope="cluster",subresource="status",verb="APPLY",version="v1alpha1"} 12
apiserver_request_total{code="409",component="apiserver",contentType="application/json",dry_run="",group="",resource="events",scope="namespace",subresource="",verb="CREATE",version="v1"} 1
apiserver_request_total{code="0",component="apiserver",contentType="application/json",dry_run="",group="kpersist.io",resource="livepatchnodes",scope="cluster",subresource="",verb="WATCH",version="v1alpha1"} 4
apiserver_request_total{code="200",component="",contentType="",dry_run="",group="",resource="",scope="",subresource="/readyz",verb="GET",version=""} 9
apiserver_request_duration_seconds_bucket{verb="PATCH",resource="livepatchnodes",le="0.1"} 5
"#;

    fn key(verb: &str, resource: &str, code: &str) -> RequestKey {
        RequestKey {
            verb: verb.into(),
            resource: resource.into(),
            code: code.into(),
        }
    }

    #[test]
    fn series_are_summed_over_content_types_and_non_resource_requests_left_out() {
        let counts = parse(SCRAPE);
        assert_eq!(counts[&key("PATCH", "livepatchnodes", "200")], 10.0);
        assert_eq!(counts[&key("APPLY", "livepatchnodes/status", "200")], 12.0);
        assert_eq!(counts[&key("CREATE", "events", "409")], 1.0);
        assert_eq!(counts.len(), 4, "{counts:?}");
    }

    #[test]
    fn escaped_label_values_are_read_whole() {
        let labels = parse_labels(r#"a="x\"y,z",b="\\",c="""#);
        assert_eq!(labels["a"], "x\"y,z");
        assert_eq!(labels["b"], "\\");
        assert_eq!(labels["c"], "");
    }

    #[test]
    fn the_delta_keeps_only_what_moved_and_splits_reads_from_writes() {
        let before = parse(SCRAPE);
        let mut after = before.clone();
        *after
            .get_mut(&key("APPLY", "livepatchnodes/status", "200"))
            .expect("series") += 5.0;
        after.insert(key("CREATE", "livepatchnodes", "201"), 1.0);
        after.insert(key("POST", "livepatchnodes", "201"), 1.0);
        after.insert(key("GET", "livepatchnodes", "200"), 3.0);
        let moved = delta(&before, &after);
        assert_eq!(moved.len(), 4);
        let rows = by_resource(&moved);
        assert_eq!(rows["livepatchnodes/status"].writes, 5.0);
        assert_eq!(rows["livepatchnodes"].writes, 2.0);
        assert_eq!(rows["livepatchnodes"].reads, 3.0);
        let spec_and_status = ["livepatchnodes", "livepatchnodes/status"];
        assert_eq!(writes_to(&moved, &spec_and_status, false), 5.0);
        assert_eq!(writes_to(&moved, &spec_and_status, true), 7.0);
    }

    #[test]
    fn refusals_count_as_errors() {
        let rows = by_resource(&parse(SCRAPE));
        assert_eq!(rows["events"].errors, 1.0);
        // A watch's code is not an HTTP error.
        assert_eq!(rows["livepatchnodes"].errors, 0.0);
    }
}
