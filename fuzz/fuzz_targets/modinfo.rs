//! A `.ko` file as the agent and the publisher read it: ELF parsing, the `.modinfo`
//! section, and the fields the agent checks before loading. Must refuse, never panic.
#![no_main]

use kpersist_kmod::modinfo::ModInfo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = ModInfo::from_bytes(data) {
        // What the agent reads from an accepted module must be usable too.
        let _ = info.vermagic_release();
        assert!(!info.name.is_empty(), "a parsed module always has a name");
    }
    // The section parser on its own, as if the bytes were a whole `.modinfo`.
    let _ = ModInfo::from_section(data);
});
