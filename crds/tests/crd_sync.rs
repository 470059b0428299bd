//! The committed CRD YAML must be exactly what the types generate, so an API change without
//! regenerating fails here.

#[test]
fn committed_crds_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, generated) in kpersist_crds::yaml::crd_manifests() {
        let committed = std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("cannot read crds/{name}: {e}"));
        assert!(
            committed == generated,
            "crds/{name} differs from the types; run `cargo run -p kpersist-crds --bin crdgen`"
        );
    }
}
