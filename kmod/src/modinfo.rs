//! A kernel module's `.modinfo`: the NUL-separated `key=value` strings `modinfo(8)` shows,
//! read straight from the `.ko` ELF file. The agent checks them before it loads a module and
//! the publisher CLI before it adds one to a repository.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};

/// The ELF section that holds a module's metadata.
pub const MODINFO_SECTION: &str = ".modinfo";

/// What a module's `.modinfo` says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModInfo {
    /// Module name (`name=`), as it appears in `/sys/module` and `/sys/kernel/livepatch`.
    pub name: String,
    /// Version magic (`vermagic=`): the kernel release and build options the module was
    /// built for, e.g. `6.1.0-28-amd64 SMP preempt mod_unload modversions`.
    pub vermagic: Option<String>,
    /// Whether the module declares itself a livepatch (`livepatch=Y`).
    pub livepatch: bool,
    /// License (`license=`).
    pub license: Option<String>,
    /// Checksum of the module's source (`srcversion=`).
    pub srcversion: Option<String>,
    /// Modules this one needs loaded first (`depends=`, comma-separated), in order.
    pub depends: Vec<String>,
    /// Every `key=value` entry, in file order per key; keys such as `alias` or `parm`
    /// repeat, so each key maps to all its values.
    pub fields: BTreeMap<String, Vec<String>>,
}

/// Why a `.modinfo` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ModInfoError {
    /// The bytes do not start with the ELF magic.
    #[error("not an ELF file (no \\x7fELF magic); pass a kernel module (.ko) file")]
    NotElf,
    /// The ELF headers point outside the file or are inconsistent.
    #[error("truncated or malformed ELF ({reason}); rebuild or re-download the module")]
    Malformed {
        /// What the ELF reader found wrong.
        reason: String,
    },
    /// The ELF file has no `.modinfo` section, so it is not a kernel module.
    #[error("no .modinfo section; this ELF file is not a kernel module")]
    NoModinfo,
    /// A `.modinfo` entry is not valid UTF-8.
    #[error(".modinfo entry at byte {offset} is not valid UTF-8; rebuild the module")]
    BadUtf8 {
        /// Offset of the entry within the section.
        offset: usize,
    },
    /// The `.modinfo` has no `name=` entry.
    #[error(".modinfo has no name= entry; build the module with the kernel's build system")]
    MissingName,
    /// The module file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The module file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A module file whose contents are malformed; names the file.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The module file.
        path: PathBuf,
        /// What is wrong with it.
        source: Box<ModInfoError>,
    },
}

impl ModInfo {
    /// Reads the `.modinfo` of the kernel module in `bytes` (a whole `.ko` file).
    pub fn from_bytes(bytes: &[u8]) -> Result<ModInfo, ModInfoError> {
        if !bytes.starts_with(b"\x7fELF") {
            return Err(ModInfoError::NotElf);
        }
        let file = object::File::parse(bytes).map_err(|e| ModInfoError::Malformed {
            reason: e.to_string(),
        })?;
        let section = file
            .section_by_name(MODINFO_SECTION)
            .ok_or(ModInfoError::NoModinfo)?;
        let data = section.data().map_err(|e| ModInfoError::Malformed {
            reason: e.to_string(),
        })?;
        Self::from_section(data)
    }

    /// Reads the `.modinfo` of the kernel module file at `path`; errors name the file.
    pub fn from_file(path: &Path) -> Result<ModInfo, ModInfoError> {
        let bytes = std::fs::read(path).map_err(|source| ModInfoError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes).map_err(|source| ModInfoError::InFile {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    /// Parses the raw contents of a `.modinfo` section.
    pub fn from_section(data: &[u8]) -> Result<ModInfo, ModInfoError> {
        let mut fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut offset = 0;
        for entry in data.split(|&b| b == 0) {
            let start = offset;
            offset += entry.len() + 1;
            // Sections are padded with NULs between and after entries.
            if entry.is_empty() {
                continue;
            }
            let text =
                std::str::from_utf8(entry).map_err(|_| ModInfoError::BadUtf8 { offset: start })?;
            // The kernel only looks up `key=` prefixes, so an entry without `=` carries
            // nothing it would read; skip it the same way.
            if let Some((key, value)) = text.split_once('=') {
                fields
                    .entry(key.to_string())
                    .or_default()
                    .push(value.to_string());
            }
        }
        let first = |key: &str| fields.get(key).and_then(|v| v.first()).cloned();
        let name = first("name")
            .filter(|n| !n.is_empty())
            .ok_or(ModInfoError::MissingName)?;
        let depends = first("depends")
            .map(|d| {
                d.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Ok(ModInfo {
            name,
            vermagic: first("vermagic"),
            livepatch: first("livepatch").as_deref() == Some("Y"),
            license: first("license"),
            srcversion: first("srcversion"),
            depends,
            fields,
        })
    }

    /// The kernel release the module was built for: the first word of `vermagic`.
    pub fn vermagic_release(&self) -> Option<&str> {
        self.vermagic.as_deref()?.split_whitespace().next()
    }

    /// The first value of `key`, for entries without a dedicated field (e.g. `retpoline`).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key)?.first().map(String::as_str)
    }
}

#[cfg(test)]
#[path = "modinfo_tests.rs"]
mod tests;
