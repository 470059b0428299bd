//! Which kernel is running: its release (`uname -r`) and its GNU build id. A livepatch is
//! built against one exact kernel build, so both must match before a module is loaded.
//! Parsing is pure; the readers take their paths so tests can point them at fixtures.

use std::path::{Path, PathBuf};

/// Where the running kernel exposes its ELF notes, including the GNU build id.
pub const KERNEL_NOTES_PATH: &str = "/sys/kernel/notes";
/// Where the running kernel exposes its release string.
pub const OSRELEASE_PATH: &str = "/proc/sys/kernel/osrelease";

/// ELF note type of a GNU build id (`NT_GNU_BUILD_ID`).
const NT_GNU_BUILD_ID: u32 = 3;
/// Size of an ELF note header: namesz, descsz, type.
const NOTE_HEADER_LEN: usize = 12;

/// Why the kernel's release or build id could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BuildIdError {
    /// A note's header or contents run past the end of the data.
    #[error("ELF note at byte {offset} runs past the end of the data; the notes are truncated")]
    TruncatedNote {
        /// Offset of the note's header.
        offset: usize,
    },
    /// No GNU build-id note is present.
    #[error("no GNU build-id note found; the kernel was built without --build-id")]
    NoBuildId,
    /// The release file holds nothing usable.
    #[error("kernel release {value:?} is empty or has inner white space")]
    BadRelease {
        /// What the file held.
        value: String,
    },
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file's contents are malformed; names the file.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: Box<BuildIdError>,
    },
}

/// The paths the kernel identity is read from; `Default` gives the real ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelPaths {
    /// The kernel's ELF notes, normally [`KERNEL_NOTES_PATH`].
    pub notes: PathBuf,
    /// The kernel's release string, normally [`OSRELEASE_PATH`].
    pub osrelease: PathBuf,
}

impl Default for KernelPaths {
    fn default() -> Self {
        KernelPaths {
            notes: PathBuf::from(KERNEL_NOTES_PATH),
            osrelease: PathBuf::from(OSRELEASE_PATH),
        }
    }
}

/// The running kernel's release and build id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelIdentity {
    /// Kernel release, e.g. `6.1.0-28-amd64`.
    pub release: String,
    /// GNU build id, lowercase hex.
    pub build_id: String,
}

impl KernelIdentity {
    /// Reads the release and build id from `paths`.
    pub fn read(paths: &KernelPaths) -> Result<KernelIdentity, BuildIdError> {
        Ok(KernelIdentity {
            release: read_kernel_release(&paths.osrelease)?,
            build_id: read_build_id(&paths.notes)?,
        })
    }
}

/// Finds the GNU build-id note in `notes` (a sequence of native-endian ELF notes, each
/// padded to 4 bytes, as in `/sys/kernel/notes`) and returns its id as lowercase hex.
pub fn parse_build_id(notes: &[u8]) -> Result<String, BuildIdError> {
    let mut offset = 0;
    while offset < notes.len() {
        let rest = &notes[offset..];
        // Trailing NUL padding after the last note is not a note.
        if rest.len() < NOTE_HEADER_LEN && rest.iter().all(|&b| b == 0) {
            break;
        }
        let note = Note::parse(rest).ok_or(BuildIdError::TruncatedNote { offset })?;
        if note.kind == NT_GNU_BUILD_ID && note.name == b"GNU\0" && !note.desc.is_empty() {
            return Ok(hex::encode(note.desc));
        }
        offset = offset.saturating_add(note.len);
    }
    Err(BuildIdError::NoBuildId)
}

/// One ELF note: `namesz`, `descsz`, `type`, then name and descriptor, each padded to 4.
struct Note<'a> {
    kind: u32,
    name: &'a [u8],
    desc: &'a [u8],
    /// Bytes up to the next note.
    len: usize,
}

impl<'a> Note<'a> {
    /// The note at the start of `data`, or `None` when it runs past the end.
    fn parse(data: &'a [u8]) -> Option<Note<'a>> {
        let word = |i: usize| -> Option<usize> {
            let bytes = data.get(i * 4..i * 4 + 4)?;
            usize::try_from(u32::from_ne_bytes(bytes.try_into().ok()?)).ok()
        };
        let (namesz, descsz) = (word(0)?, word(1)?);
        let kind = u32::try_from(word(2)?).ok()?;
        let desc_start = NOTE_HEADER_LEN.checked_add(padded(namesz)?)?;
        let desc_end = desc_start.checked_add(descsz)?;
        Some(Note {
            kind,
            name: data.get(NOTE_HEADER_LEN..NOTE_HEADER_LEN + namesz)?,
            desc: data.get(desc_start..desc_end)?,
            // The last note's padding may be cut off; only its contents must be whole.
            len: desc_start.checked_add(padded(descsz)?)?,
        })
    }
}

/// `len` rounded up to the 4-byte alignment of note fields.
fn padded(len: usize) -> Option<usize> {
    len.checked_add(3).map(|n| n & !3)
}

/// Checks the contents of `/proc/sys/kernel/osrelease` and returns the release.
pub fn parse_kernel_release(text: &str) -> Result<String, BuildIdError> {
    let release = text.trim();
    if release.is_empty() || release.contains(char::is_whitespace) {
        return Err(BuildIdError::BadRelease {
            value: text.to_string(),
        });
    }
    Ok(release.to_string())
}

/// Reads the GNU build id from a notes file such as [`KERNEL_NOTES_PATH`].
pub fn read_build_id(path: &Path) -> Result<String, BuildIdError> {
    let bytes = read(path)?;
    parse_build_id(&bytes).map_err(|e| in_file(path, e))
}

/// Reads the kernel release from a file such as [`OSRELEASE_PATH`].
pub fn read_kernel_release(path: &Path) -> Result<String, BuildIdError> {
    let bytes = read(path)?;
    let text = String::from_utf8_lossy(&bytes);
    parse_kernel_release(&text).map_err(|e| in_file(path, e))
}

fn read(path: &Path) -> Result<Vec<u8>, BuildIdError> {
    std::fs::read(path).map_err(|source| BuildIdError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn in_file(path: &Path, source: BuildIdError) -> BuildIdError {
    BuildIdError::InFile {
        path: path.to_path_buf(),
        source: Box::new(source),
    }
}

#[cfg(test)]
#[path = "buildid_tests.rs"]
mod tests;
