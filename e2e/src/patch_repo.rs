//! A signed patch repository for simulated fleets, written with kmod's publishing code (the
//! same code `kpersist-repo` runs). Its modules are the real `kpersist_v1.ko` fixture
//! rewritten for each simulated kernel release and version, the way
//! `kpersist_badvermagic.ko` was made, so every check a reader makes sees a real module.

use std::path::{Path, PathBuf};

use kpersist_kmod::repository::{LocalRepository, NewRelease, Release};
use kpersist_kmod::signing::PrivateKey;

use crate::{Error, Result};

/// The kernel release the fixture modules were built for.
pub const FIXTURE_KERNEL: &str = "6.1.0-56-amd64";
/// The module name of the fixture `kpersist_v1.ko`.
const FIXTURE_NAME: &str = "kpersist_v1";

/// The fixture module's path.
pub fn fixture_module() -> PathBuf {
    crate::fleet::workspace_root()
        .join("kmod")
        .join("tests")
        .join("fixtures")
        .join(format!("{FIXTURE_NAME}.ko"))
}

/// The fixture rewritten as the module of cumulative `version` (1 to 9) for
/// `kernel_release`: its vermagic names `kernel_release` and its name is
/// `kpersist_v<version>`. The release must have as many characters as
/// [`FIXTURE_KERNEL`], so that the module's layout stays as built.
pub fn module_for(kernel_release: &str, version: u64) -> Result<Vec<u8>> {
    let path = fixture_module();
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let name = format!("kpersist_v{version}");
    if kernel_release.len() != FIXTURE_KERNEL.len() || name.len() != FIXTURE_NAME.len() {
        return Err(Error::Malformed {
            path,
            problem: format!(
                "cannot rewrite it for kernel {kernel_release:?} version {version}: the kernel \
                 release must have {} characters and the version be 1 to 9",
                FIXTURE_KERNEL.len()
            ),
        });
    }
    let bytes = replace_all(&bytes, FIXTURE_KERNEL.as_bytes(), kernel_release.as_bytes());
    Ok(replace_all(
        &bytes,
        FIXTURE_NAME.as_bytes(),
        name.as_bytes(),
    ))
}

fn replace_all(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

/// A repository directory and the key that signs it.
pub struct Publisher {
    repo: LocalRepository,
    key: PrivateKey,
    scratch: PathBuf,
}

impl Publisher {
    /// An empty, signed repository in `root`, with a fresh signing key.
    pub fn init(root: &Path) -> Result<Self> {
        let now = jiff::Timestamp::now();
        let repo = LocalRepository::init(root, now)?;
        let scratch = root.with_extension("incoming");
        std::fs::create_dir_all(&scratch).map_err(|e| Error::io(&scratch, e))?;
        let publisher = Self {
            repo,
            key: PrivateKey::generate(),
            scratch,
        };
        publisher.repo.sign(&publisher.key)?;
        Ok(publisher)
    }

    /// The directory to serve.
    pub fn root(&self) -> &Path {
        self.repo.root()
    }

    /// The public key to trust, as a policy's `repository.trustedKeys` entry.
    pub fn public_key(&self) -> String {
        self.key.public_key().to_base64_line().trim().to_string()
    }

    /// Publishes cumulative `version` for a kernel build in `channels` and signs the index.
    pub fn publish(
        &self,
        kernel_release: &str,
        build_id: &str,
        version: u64,
        cves: &[&str],
        channels: &[&str],
    ) -> Result<Release> {
        let module = module_for(kernel_release, version)?;
        let path = self.scratch.join(format!("{kernel_release}-v{version}.ko"));
        std::fs::write(&path, &module).map_err(|e| Error::io(&path, e))?;
        self.publish_module(&path, kernel_release, build_id, version, cves, channels)
    }

    /// Publishes the module at `path` (built for the kernel build) as cumulative `version`
    /// in `channels` and signs the index.
    pub fn publish_module(
        &self,
        path: &Path,
        kernel_release: &str,
        build_id: &str,
        version: u64,
        cves: &[&str],
        channels: &[&str],
    ) -> Result<Release> {
        let now = jiff::Timestamp::now();
        let release = self.repo.add(
            path,
            NewRelease {
                kernel_release: kernel_release.to_string(),
                build_id: build_id.to_string(),
                version,
                cves: cves.iter().map(|c| c.to_string()).collect(),
                channels: channels.iter().map(|c| c.to_string()).collect(),
                published: now,
            },
            now,
        )?;
        self.repo.sign(&self.key)?;
        Ok(release)
    }

    /// Prunes `version` of a kernel build (its index entry and module), as a publisher
    /// drops superseded cumulative releases, and signs the index again.
    pub fn prune(&self, kernel_release: &str, version: u64) -> Result<Release> {
        let id = format!("{kernel_release}/v{version}");
        let removed = self.repo.remove(&id, jiff::Timestamp::now())?;
        self.repo.sign(&self.key)?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewritten_modules_carry_the_new_release_and_name_and_nothing_else_moves() {
        let original = std::fs::read(fixture_module()).expect("fixture");
        let module = module_for("6.1.0-57-amd64", 3).expect("module");
        assert_eq!(module.len(), original.len());
        let info = kpersist_kmod::modinfo::ModInfo::from_bytes(&module).expect("modinfo");
        assert_eq!(info.vermagic_release(), Some("6.1.0-57-amd64"));
        assert_eq!(info.name, "kpersist_v3");
        assert!(info.livepatch);
    }

    #[test]
    fn releases_of_another_length_are_refused_with_the_reason() {
        let err = module_for("6.1.0-5-amd64", 1).err().map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("characters"));
    }

    #[test]
    fn a_published_repository_verifies_with_its_public_key() {
        let dir = tempfile::tempdir().expect("dir");
        let publisher = Publisher::init(&dir.path().join("repo")).expect("init");
        let release = publisher
            .publish("6.1.0-56-amd64", "ab12", 1, &["CVE-2024-0001"], &["stable"])
            .expect("publish");
        assert_eq!(release.id(), "6.1.0-56-amd64/v1");
        let key = kpersist_kmod::signing::PublicKey::from_base64(&publisher.public_key(), "test")
            .expect("key");
        let index = LocalRepository::open(publisher.root())
            .verify(&[key])
            .expect("verifies");
        assert_eq!(index.releases.len(), 1);
    }
}
