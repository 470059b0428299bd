//! `index.json` as a client parses it after the signature verified: the size cap, the
//! schema probe, the JSON shape and every validation rule. Must refuse, never panic.
#![no_main]

use kpersist_kmod::repository::Index;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(index) = Index::from_json_bytes(data) {
        // An accepted index is valid and survives a round trip through its own writer.
        assert!(index.validate().is_ok(), "an accepted index validates");
        let again = Index::from_json_bytes(&index.to_json_bytes());
        assert_eq!(
            again.ok().as_ref(),
            Some(&index),
            "a written index reads back"
        );
        for release in &index.releases {
            let _ = release.module_url("https://r.example/repo");
        }
    }
});
