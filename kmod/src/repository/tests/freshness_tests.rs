use super::*;
use jiff::{SignedDuration, Timestamp};

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn signed_at(now: &str, previous_serial: Option<u64>) -> Index {
    let mut idx = index(vec![release(1)]);
    idx.serial = previous_serial;
    idx.refresh(at(now), DEFAULT_VALIDITY);
    idx
}

#[test]
fn refresh_sets_a_growing_serial_and_an_expiry() {
    let now = at("2026-03-01T00:00:00Z");
    let idx = signed_at("2026-03-01T00:00:00Z", None);
    assert_eq!(
        idx.serial,
        Some(now.as_second() as u64),
        "at least the clock"
    );
    assert_eq!(idx.expires.as_deref(), Some("2026-03-08T00:00:00Z"));
    assert_eq!(idx.generated_at, "2026-03-01T00:00:00Z");
    // Signing twice in the same second (or with the clock behind) still goes up by one.
    let mut again = idx.clone();
    again.refresh(at("2026-02-01T00:00:00Z"), SignedDuration::from_hours(1));
    assert_eq!(again.serial(), idx.serial() + 1);
    let parsed = Index::from_json_bytes(&again.to_json_bytes()).unwrap();
    assert_eq!(parsed, again);
}

#[test]
fn an_index_without_serial_reads_and_writes_as_before() {
    let legacy = index(vec![release(1)]);
    let text = String::from_utf8(legacy.to_json_bytes()).unwrap();
    assert!(
        !text.contains("serial") && !text.contains("expires"),
        "{text}"
    );
    let parsed = Index::from_json_bytes(text.as_bytes()).unwrap();
    assert_eq!(parsed.serial(), 0);
    assert!(!parsed.has_freshness());
    assert!(!parsed.is_expired(Timestamp::MAX));
}

#[test]
fn an_older_serial_is_a_rollback() {
    let idx = signed_at("2026-03-01T00:00:00Z", None);
    let serial = idx.serial();
    idx.check_not_rolled_back(serial).unwrap();
    idx.check_not_rolled_back(serial - 1).unwrap();
    let err = idx.check_not_rolled_back(serial + 1).unwrap_err();
    assert!(
        matches!(err, RepositoryError::RolledBack { accepted, .. } if accepted == serial + 1),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains(&format!("serial {serial} is below serial {}", serial + 1)));
    // An index without a serial counts as 0: once a serial was accepted it is a rollback.
    let legacy = index(vec![release(1)]);
    legacy.check_not_rolled_back(0).unwrap();
    assert!(legacy.check_not_rolled_back(1).is_err());
}

#[test]
fn an_index_expires_at_its_expiry() {
    let idx = signed_at("2026-03-01T00:00:00Z", None);
    assert!(!idx.is_expired(at("2026-03-07T23:59:59Z")));
    idx.check_not_expired(at("2026-03-07T23:59:59Z")).unwrap();
    assert!(idx.is_expired(at("2026-03-08T00:00:00Z")));
    let err = idx
        .check_not_expired(at("2026-03-09T00:00:00Z"))
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("expired at 2026-03-08T00:00:00Z"), "{text}");
    assert!(text.contains("kpersist-repo sign"), "{text}");
}

#[test]
fn malformed_freshness_fields_are_refused_by_name() {
    let good = signed_at("2026-03-01T00:00:00Z", None);
    type Break = fn(&mut Index);
    let cases: [(&str, Break); 4] = [
        ("serial", |i| i.expires = None),
        ("serial", |i| i.serial = Some(0)),
        ("expires", |i| i.expires = Some("next week".into())),
        ("expires", |i| {
            i.expires = Some("2026-02-01T00:00:00Z".into())
        }),
    ];
    for (field, break_it) in cases {
        let mut idx = good.clone();
        break_it(&mut idx);
        let err = Index::from_json_bytes(&idx.to_json_bytes()).unwrap_err();
        match err.root_cause() {
            RepositoryError::InvalidIndex { field: found, .. } => assert_eq!(*found, field),
            other => panic!("unexpected error: {other}"),
        }
    }
    let mut expires_only = index(vec![release(1)]);
    expires_only.expires = good.expires.clone();
    assert!(Index::from_json_bytes(&expires_only.to_json_bytes()).is_err());
}
