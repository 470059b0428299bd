use super::*;
use proptest::prelude::*;

fn refused(index: &Index) -> RepositoryError {
    match Index::from_json_bytes(&index.to_json_bytes()) {
        Ok(_) => panic!("index was accepted: {index:?}"),
        Err(e) => e,
    }
}

/// The field a release was refused for.
fn refused_field(release: Release) -> &'static str {
    match refused(&index(vec![release])).root_cause() {
        RepositoryError::InvalidRelease { field, .. } => field,
        other => panic!("unexpected error: {other}"),
    }
}

#[test]
fn an_index_round_trips_to_the_same_bytes() {
    let idx = index(vec![release(1), release(2)]);
    let bytes = idx.to_json_bytes();
    assert!(bytes.ends_with(b"}\n"));
    let parsed = Index::from_json_bytes(&bytes).unwrap();
    assert_eq!(parsed, idx);
    assert_eq!(parsed.to_json_bytes(), bytes);
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.contains("\"schemaVersion\": 1"), "{text}");
}

#[test]
fn bad_json_is_refused_naming_the_index() {
    let good = index(vec![release(1)]).to_json_bytes();
    for bytes in [
        &b"not json"[..],
        &good[..good.len() / 2],
        b"{\"schemaVersion\": 1, \"generatedAt\": 5, \"releases\": []}",
        b"[]",
    ] {
        let err = Index::from_json_bytes(bytes).unwrap_err();
        assert!(matches!(err, RepositoryError::BadJson { .. }), "{err}");
        assert!(err.to_string().starts_with("index.json: "), "{err}");
    }
}

#[test]
fn unknown_fields_are_refused() {
    let text = String::from_utf8(index(vec![release(1)]).to_json_bytes()).unwrap();
    let extra = text.replacen("\"version\": 1,", "\"version\": 1, \"vermagic\": \"x\",", 1);
    let err = Index::from_json_bytes(extra.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("vermagic"), "{err}");
}

#[test]
fn unknown_schema_versions_are_refused_before_their_fields() {
    let future = br#"{"schemaVersion": 2, "generatedAt": "x", "releases": [], "mirrors": []}"#;
    let err = Index::from_json_bytes(future).unwrap_err();
    assert!(
        matches!(
            err,
            RepositoryError::UnknownSchemaVersion {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{err}"
    );
    let err = Index::from_json_bytes(br#"{"releases": []}"#).unwrap_err();
    assert!(err.to_string().contains("schemaVersion"), "{err}");
}

#[test]
fn duplicate_versions_are_refused() {
    let mut twin = release(1);
    twin.build_id = "ff".repeat(20);
    let err = refused(&index(vec![release(1), twin]));
    assert!(
        matches!(err.root_cause(), RepositoryError::DuplicateRelease { id } if id == "6.1.0-56-amd64/v1")
    );
    assert!(err.to_string().starts_with("index.json: "), "{err}");
}

#[test]
fn versions_must_increase_per_kernel_build() {
    let err = refused(&index(vec![release(1), release(3), release(2)]));
    match err.root_cause() {
        RepositoryError::NonMonotonicVersion {
            version: 2,
            previous: 3,
            next: 4,
            ..
        } => {}
        other => panic!("unexpected error: {other}"),
    }
    // Another build of the same release has its own sequence.
    let mut other_build = release(2);
    other_build.build_id = "ab".repeat(20);
    let mut other_kernel = release(1);
    other_kernel.kernel_release = "6.1.0-57-amd64".to_string();
    Index::from_json_bytes(&index(vec![release(3), other_build, other_kernel]).to_json_bytes())
        .unwrap();
}

#[test]
fn module_names_must_differ_per_kernel_build() {
    let mut reused = release(2);
    reused.module_name = "kpersist_v1".to_string();
    let err = refused(&index(vec![release(1), reused]));
    match err.root_cause() {
        RepositoryError::ModuleNameReused {
            id,
            module_name,
            earlier,
            ..
        } => {
            assert_eq!(id, "6.1.0-56-amd64/v2");
            assert_eq!(module_name, "kpersist_v1");
            assert_eq!(earlier, "6.1.0-56-amd64/v1");
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(err.to_string().contains("distinct module names"), "{err}");
    // Another build (or kernel release) may use the same name: it never shares a kernel.
    // (Ids are unique per kernel release, so the other build has another version.)
    let mut other_build = release(2);
    other_build.build_id = "ab".repeat(20);
    other_build.module_name = "kpersist_v1".to_string();
    let mut other_kernel = release(1);
    other_kernel.kernel_release = "6.1.0-57-amd64".to_string();
    Index::from_json_bytes(&index(vec![release(1), other_build, other_kernel]).to_json_bytes())
        .unwrap();
}

#[test]
fn module_paths_cannot_leave_the_repository() {
    for path in [
        "../evil.ko",
        "modules/../../evil.ko",
        "/etc/passwd",
        "modules//x.ko",
        "./x.ko",
        "modules\\x.ko",
        "C:x.ko",
        "",
    ] {
        let mut r = release(1);
        r.module = path.to_string();
        assert_eq!(refused_field(r), "module", "{path:?}");
    }
}

#[test]
fn malformed_release_fields_are_refused_by_name() {
    type Edit = fn(&mut Release);
    let cases: [(&str, Edit); 14] = [
        ("sha256", |r| {
            r.sha256 = r.sha256.to_uppercase().replace('0', "A")
        }),
        ("sha256", |r| r.sha256.truncate(63)),
        ("size", |r| r.size = 0),
        ("size", |r| r.size = MAX_MODULE_SIZE + 1),
        ("version", |r| r.version = 0),
        ("cves", |r| r.cves = vec!["CVE-24-1".into()]),
        ("cves", |r| {
            r.cves = vec!["CVE-2024-1086".into(), "CVE-2024-1086".into()]
        }),
        ("channels", |r| r.channels.clear()),
        ("channels", |r| r.channels = vec!["Stable".into()]),
        ("published", |r| r.published = "yesterday".into()),
        ("buildId", |r| r.build_id = "ABC".into()),
        ("kernelRelease", |r| r.kernel_release = "6.1/evil".into()),
        ("kernelRelease", |r| r.kernel_release = String::new()),
        ("moduleName", |r| r.module_name = "a b".into()),
    ];
    for (field, edit) in cases {
        let mut r = release(1);
        edit(&mut r);
        assert_eq!(refused_field(r), field);
    }
}

#[test]
fn cve_ids_and_channels_have_their_shapes() {
    for id in ["CVE-2024-1086", "CVE-1999-0001", "CVE-2024-123456"] {
        assert!(is_cve_id(id), "{id}");
    }
    for id in [
        "cve-2024-1086",
        "CVE-2024-108",
        "CVE-20245-1086",
        "CVE-2024-10a6",
        "CVE-2024",
    ] {
        assert!(!is_cve_id(id), "{id}");
    }
    assert!(is_channel("stable") && is_channel("edge-2.x"));
    assert!(!is_channel("") && !is_channel("-x") && !is_channel(&"a".repeat(64)));
}

#[test]
fn a_bad_generation_time_is_refused() {
    let mut idx = index(vec![]);
    idx.generated_at = "soon".into();
    assert!(matches!(
        refused(&idx).root_cause(),
        RepositoryError::InvalidIndex {
            field: "generatedAt",
            ..
        }
    ));
}

#[test]
fn oversized_indexes_are_refused_unread() {
    let huge = vec![b' '; MAX_INDEX_SIZE as usize + 1];
    let err = Index::from_json_bytes(&huge).unwrap_err();
    assert!(
        matches!(err, RepositoryError::IndexTooLarge { .. }),
        "{err}"
    );
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = Index::from_json_bytes(&bytes);
    }

    #[test]
    fn mutated_indexes_never_panic(pos in any::<usize>(), byte in any::<u8>()) {
        let mut bytes = index(vec![release(1), release(2)]).to_json_bytes();
        let at = pos % bytes.len();
        bytes[at] = byte;
        if let Ok(parsed) = Index::from_json_bytes(&bytes) {
            prop_assert!(parsed.validate().is_ok());
        }
    }

    #[test]
    fn random_json_text_never_panics(text in r#"[{}\[\]":,0-9a-zA-Z ]{0,200}"#) {
        let _ = Index::from_json_bytes(text.as_bytes());
    }
}

#[test]
fn a_yanked_release_gives_one_line_of_reason() {
    for reason in ["", "  ", "two\nlines", &"x".repeat(257)] {
        let mut yanked = release(1);
        yanked.yanked = Some(reason.to_string());
        assert_eq!(refused_field(yanked), "yanked", "{reason:?}");
    }
    let mut yanked = release(1);
    yanked.yanked = Some("breaks nfsd on 6.1.0-56".into());
    let idx = index(vec![yanked]);
    assert_eq!(Index::from_json_bytes(&idx.to_json_bytes()).unwrap(), idx);
    let plain = String::from_utf8(index(vec![release(1)]).to_json_bytes()).unwrap();
    assert!(!plain.contains("yanked"), "absent unless yanked: {plain}");
}
