use super::*;

fn query(channel: &str) -> ReleaseQuery<'_> {
    ReleaseQuery {
        kernel_release: KERNEL,
        build_id: BUILD,
        channel,
        published_before: None,
        pinned_version: None,
    }
}

fn sample() -> Index {
    let mut edge = release(3);
    edge.channels = vec!["edge".into()];
    let mut other_build = release(9);
    other_build.build_id = "ee".repeat(20);
    index(vec![release(1), release(2), edge, other_build])
}

fn never(_: &Release) -> bool {
    false
}

fn version(r: Option<&Release>) -> Option<u64> {
    r.map(|r| r.version)
}

#[test]
fn picks_the_newest_release_of_the_build_in_the_channel() {
    let idx = sample();
    assert_eq!(version(idx.newest_for(&query("stable"), &never)), Some(2));
    assert_eq!(version(idx.newest_for(&query("edge"), &never)), Some(3));
    assert_eq!(version(idx.newest_for(&query("beta"), &never)), None);
    let upper = BUILD.to_uppercase();
    let q = ReleaseQuery {
        build_id: &upper,
        ..query("stable")
    };
    assert_eq!(version(idx.newest_for(&q, &never)), Some(2));
    let q = ReleaseQuery {
        kernel_release: "6.1.0-57-amd64",
        ..query("stable")
    };
    assert_eq!(version(idx.newest_for(&q, &never)), None);
}

#[test]
fn respects_the_publication_bound() {
    let idx = sample();
    // release(1) was published on Jan 1st, release(2) on Jan 2nd.
    let bound = "2026-01-01T12:00:00Z".parse().ok();
    let q = ReleaseQuery {
        published_before: bound,
        ..query("stable")
    };
    assert_eq!(version(idx.newest_for(&q, &never)), Some(1));
    let q = ReleaseQuery {
        published_before: "2025-12-31T00:00:00Z".parse().ok(),
        ..q
    };
    assert_eq!(version(idx.newest_for(&q, &never)), None);
}

#[test]
fn a_pin_selects_exactly_that_version() {
    let idx = sample();
    let q = ReleaseQuery {
        pinned_version: Some(1),
        ..query("stable")
    };
    assert_eq!(version(idx.newest_for(&q, &never)), Some(1));
    let q = ReleaseQuery {
        pinned_version: Some(3),
        ..query("stable")
    };
    assert_eq!(version(idx.newest_for(&q, &never)), None);
}

#[test]
fn excluded_releases_fall_back_to_the_next_newest() {
    let idx = sample();
    let bad = |r: &Release| r.version == 2;
    assert_eq!(version(idx.newest_for(&query("stable"), &bad)), Some(1));
    let all = |_: &Release| true;
    assert_eq!(version(idx.newest_for(&query("stable"), &all)), None);
}

#[test]
fn releases_are_found_by_id_and_build() {
    let idx = sample();
    assert_eq!(idx.release("6.1.0-56-amd64/v2"), Some(&release(2)));
    assert_eq!(idx.release("6.1.0-56-amd64/v7"), None);
    assert_eq!(idx.releases_for(KERNEL, BUILD).count(), 3);
    assert_eq!(
        release(1).module_url("https://patches.example/repo/"),
        format!("https://patches.example/repo/{}", release(1).module)
    );
}
