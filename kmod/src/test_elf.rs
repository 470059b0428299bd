//! Builds small relocatable ELF files in memory, shaped like kernel modules, so tests need no
//! committed binaries.

use object::write::Object;
use object::{Architecture, BinaryFormat, Endianness, SectionKind};

/// A relocatable x86-64 ELF with a `.text` section and, when given, a `.modinfo` section
/// holding `modinfo` as is.
pub fn elf_with_modinfo(modinfo: Option<&[u8]>) -> Vec<u8> {
    let mut obj = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let text = obj.add_section(Vec::new(), b".text".to_vec(), SectionKind::Text);
    obj.append_section_data(text, &[0xc3], 1);
    if let Some(data) = modinfo {
        let section = obj.add_section(Vec::new(), b".modinfo".to_vec(), SectionKind::ReadOnlyData);
        obj.append_section_data(section, data, 1);
    }
    match obj.write() {
        Ok(bytes) => bytes,
        Err(e) => panic!("building a test ELF failed: {e}"),
    }
}

/// The `.modinfo` bytes of a livepatch module named `name` built for `release`.
pub fn livepatch_modinfo(name: &str, release: &str) -> Vec<u8> {
    modinfo_entries(&[
        "license=GPL",
        "livepatch=Y",
        "depends=",
        "retpoline=Y",
        &format!("name={name}"),
        &format!("vermagic={release} SMP preempt mod_unload modversions "),
    ])
}

/// Joins entries the way the kernel lays out `.modinfo`: each ends with a NUL.
pub fn modinfo_entries(entries: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        out.extend_from_slice(entry.as_bytes());
        out.push(0);
    }
    out
}

/// A whole livepatch `.ko` image named `name` for kernel `release`.
pub fn livepatch_module(name: &str, release: &str) -> Vec<u8> {
    elf_with_modinfo(Some(&livepatch_modinfo(name, release)))
}
