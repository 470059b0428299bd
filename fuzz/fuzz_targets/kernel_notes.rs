//! `/sys/kernel/notes` and `/proc/sys/kernel/osrelease` as the agent reads them to learn
//! which kernel it runs. Must refuse, never panic.
#![no_main]

use kpersist_kmod::buildid::{parse_build_id, parse_kernel_release};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = parse_build_id(data) {
        assert!(
            !id.is_empty() && id.len() % 2 == 0,
            "a build id is whole bytes of hex"
        );
    }
    let _ = parse_kernel_release(&String::from_utf8_lossy(data));
});
