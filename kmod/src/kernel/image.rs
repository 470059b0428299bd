//! A kernel module held in memory. The agent verifies and loads the same `ModuleImage`, so
//! nothing that changes the file on disk between the check and the load can change what
//! the kernel gets.

use std::io::Read;
use std::path::Path;

use super::KernelError;

/// Largest module read into memory: far above any real livepatch (tens to hundreds of KiB),
/// and the most the signed index may declare.
pub const MAX_MODULE_IMAGE: u64 = crate::repository::MAX_MODULE_SIZE;

/// The bytes of a kernel module and where they were read from.
#[derive(Clone, PartialEq, Eq)]
pub struct ModuleImage {
    source: String,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for ModuleImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleImage")
            .field("source", &self.source)
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl ModuleImage {
    /// Reads the module file at `path` once, refusing more than [`MAX_MODULE_IMAGE`] bytes.
    pub fn read(path: &Path) -> Result<ModuleImage, KernelError> {
        let file = std::fs::File::open(path).map_err(|e| KernelError::io(path, e))?;
        let mut bytes = Vec::new();
        // One byte over the cap tells a file at the cap from a larger one without reading
        // the rest of a huge file.
        file.take(MAX_MODULE_IMAGE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| KernelError::io(path, e))?;
        ModuleImage::new(path.display().to_string(), bytes)
    }

    /// A module image from bytes already in memory; `source` names it in errors and logs.
    pub fn new(source: impl Into<String>, bytes: Vec<u8>) -> Result<ModuleImage, KernelError> {
        let source = source.into();
        if bytes.len() as u64 > MAX_MODULE_IMAGE {
            return Err(KernelError::ModuleTooLarge {
                module: source,
                max: MAX_MODULE_IMAGE,
            });
        }
        Ok(ModuleImage { source, bytes })
    }

    /// The same bytes, named after `source` (e.g. the file they were moved to).
    pub fn with_source(self, source: impl Into<String>) -> ModuleImage {
        ModuleImage {
            source: source.into(),
            bytes: self.bytes,
        }
    }

    /// The module's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Where the bytes came from (a path or URL), for messages.
    pub fn source(&self) -> &str {
        &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_keeps_the_bytes_of_the_moment_it_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.ko");
        std::fs::write(&path, b"first").unwrap();
        let image = ModuleImage::read(&path).unwrap();
        std::fs::write(&path, b"second").unwrap();
        assert_eq!(image.bytes(), b"first");
        assert_eq!(image.source(), path.display().to_string());
    }

    #[test]
    fn an_image_over_the_cap_is_refused() {
        let too_big = vec![0u8; (MAX_MODULE_IMAGE + 1) as usize];
        let err = ModuleImage::new("big.ko", too_big).unwrap_err();
        assert!(matches!(err, KernelError::ModuleTooLarge { .. }), "{err}");
        assert!(err.to_string().contains("big.ko"), "{err}");
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let err = ModuleImage::read(Path::new("/nonexistent/m.ko")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/m.ko"), "{err}");
    }
}
