//! Building a repository on the publisher's disk: `init` an empty one, `add` a livepatch
//! module as a new release, `sign` the index. The checks here are the same ones every
//! reader applies, so a repository this writes is one clients accept.

use std::path::{Path, PathBuf};

use jiff::Timestamp;

use super::verify::{read_capped, sha256_hex};
use super::{INDEX_FILE, Index, MAX_MODULE_SIZE, Release, RepositoryError, SIGNATURE_FILE};
use crate::modinfo::ModInfo;
use crate::signing::{PrivateKey, PublicKey};

/// Directory, relative to the repository root, that modules are stored in.
pub const MODULES_DIR: &str = "modules";

/// What the publisher says about a module being added; the rest comes from the module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRelease {
    /// Kernel release the module is for; must equal the module's vermagic release.
    pub kernel_release: String,
    /// GNU build id of that kernel, hex (stored lowercase).
    pub build_id: String,
    /// Cumulative version; must be above every version already published for the build.
    pub version: u64,
    /// Every CVE the module fixes.
    pub cves: Vec<String>,
    /// Channels to publish in.
    pub channels: Vec<String>,
    /// Publication time.
    pub published: Timestamp,
}

impl Release {
    /// The release for `module` (the `.ko` file's bytes, whose `.modinfo` is `info`, read
    /// from `path`, which errors name). Refuses a module that is not a livepatch or whose
    /// vermagic names another kernel release.
    pub fn for_module(
        module: &[u8],
        info: &ModInfo,
        path: &str,
        new: NewRelease,
    ) -> Result<Release, RepositoryError> {
        if !info.livepatch {
            return Err(RepositoryError::NotLivepatch {
                path: path.to_string(),
                name: info.name.clone(),
            });
        }
        let found = info.vermagic_release().unwrap_or_default();
        if found != new.kernel_release {
            return Err(RepositoryError::VermagicMismatch {
                path: path.to_string(),
                found: found.to_string(),
                expected: new.kernel_release,
            });
        }
        let sha256 = sha256_hex(module);
        Ok(Release {
            kernel_release: new.kernel_release,
            build_id: new.build_id.to_ascii_lowercase(),
            version: new.version,
            module: format!("{MODULES_DIR}/{sha256}.ko"),
            sha256,
            size: module.len() as u64,
            module_name: info.name.clone(),
            cves: new.cves,
            channels: new.channels,
            published: new.published.to_string(),
            yanked: None,
        })
    }
}

impl Index {
    /// Appends `release`, refusing it (and leaving the index as it was) when it is malformed,
    /// repeats an id, or its version is not above every version of its kernel build.
    pub fn add_release(&mut self, release: Release) -> Result<(), RepositoryError> {
        self.releases.push(release);
        let checked = self.validate();
        if checked.is_err() {
            self.releases.pop();
        }
        checked
    }
}

/// Where release `id` is in `index`.
fn position_of(index: &Index, id: &str) -> Result<usize, RepositoryError> {
    index
        .releases
        .iter()
        .position(|r| r.id() == id)
        .ok_or_else(|| RepositoryError::NoSuchRelease {
            id: id.to_string(),
            count: index.releases.len(),
        })
}

/// A repository directory on local disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalRepository {
    root: PathBuf,
}

impl LocalRepository {
    /// Creates an empty repository in `root` (made if missing), with its index generated at
    /// `now`. Refuses a directory that already has an index.
    pub fn init(root: &Path, now: Timestamp) -> Result<LocalRepository, RepositoryError> {
        let repo = LocalRepository {
            root: root.to_path_buf(),
        };
        let modules = root.join(MODULES_DIR);
        std::fs::create_dir_all(&modules).map_err(RepositoryError::io(&modules))?;
        let index = repo.index_path();
        if index.exists() {
            return Err(RepositoryError::AlreadyExists {
                path: index.display().to_string(),
            });
        }
        write_atomically(&index, &Index::empty(now).to_json_bytes())?;
        Ok(repo)
    }

    /// A repository in `root`, which [`LocalRepository::init`] made earlier.
    pub fn open(root: &Path) -> LocalRepository {
        LocalRepository {
            root: root.to_path_buf(),
        }
    }

    /// The repository's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads and validates the index without checking its signature: the publisher's own
    /// view. Clients use [`super::verify_repository_dir`] or [`super::verify_index`].
    pub fn load_index(&self) -> Result<Index, RepositoryError> {
        let path = self.index_path();
        let bytes = std::fs::read(&path).map_err(RepositoryError::io(&path))?;
        Index::parse_named(&bytes, &path.display().to_string())
    }

    /// Adds the module at `module_path` as a new release (see [`Release::for_module`] and
    /// [`Index::add_release`]): copies it to `modules/<sha256>.ko`, rewrites the index as
    /// generated at `now`, and removes the now stale signature so that the repository must
    /// be signed again before it verifies.
    pub fn add(
        &self,
        module_path: &Path,
        new: NewRelease,
        now: Timestamp,
    ) -> Result<Release, RepositoryError> {
        let name = module_path.display().to_string();
        let module = read_capped(module_path, MAX_MODULE_SIZE, |size| {
            RepositoryError::ModuleTooLarge {
                path: name.clone(),
                size,
                max: MAX_MODULE_SIZE,
            }
        })?;
        let info = ModInfo::from_bytes(&module).map_err(|source| {
            crate::modinfo::ModInfoError::InFile {
                path: module_path.to_path_buf(),
                source: Box::new(source),
            }
        })?;
        let release = Release::for_module(&module, &info, &name, new)?;
        let mut index = self.load_index()?;
        index.add_release(release.clone())?;
        index.generated_at = now.to_string();

        let stored = self.root.join(&release.module);
        if !stored.exists() {
            write_atomically(&stored, &module)?;
        }
        write_atomically(&self.index_path(), &index.to_json_bytes())?;
        remove_signature(&self.root)?;
        Ok(release)
    }

    /// Removes release `id` from the index, as a publisher prunes a superseded cumulative
    /// release, and deletes its module file unless another release shares it. Rewrites the
    /// index as generated at `now` and removes the signature it invalidates. Nodes running
    /// the release keep it: their agents hold its module in their cache.
    pub fn remove(&self, id: &str, now: Timestamp) -> Result<Release, RepositoryError> {
        let mut index = self.load_index()?;
        let position = position_of(&index, id)?;
        let removed = index.releases.remove(position);
        index.generated_at = now.to_string();
        write_atomically(&self.index_path(), &index.to_json_bytes())?;
        remove_signature(&self.root)?;
        if !index.releases.iter().any(|r| r.module == removed.module) {
            let module = self.root.join(&removed.module);
            std::fs::remove_file(&module).map_err(RepositoryError::io(&module))?;
        }
        Ok(removed)
    }

    /// Adds `channel` to release `id`'s channels, as a publisher promotes a release that
    /// proved itself in one channel (e.g. `edge`) to the next (`stable`). Rewrites the index
    /// as generated at `now` and removes the signature it invalidates. Returns the release
    /// and whether it was already in the channel (then nothing is written).
    pub fn promote(
        &self,
        id: &str,
        channel: &str,
        now: Timestamp,
    ) -> Result<(Release, bool), RepositoryError> {
        self.edit_release(id, now, |release| {
            let already = release.channels.iter().any(|c| c == channel);
            if !already {
                release.channels.push(channel.to_string());
            }
            !already
        })
    }

    /// Withdraws release `id` (`reason: Some`) or puts it back (`None`), as a publisher
    /// takes back a release found broken after it shipped. Rewrites the index as generated
    /// at `now` and removes the signature it invalidates. Returns the release and whether
    /// it already was in that state (then nothing is written).
    pub fn yank(
        &self,
        id: &str,
        reason: Option<&str>,
        now: Timestamp,
    ) -> Result<(Release, bool), RepositoryError> {
        self.edit_release(id, now, |release| {
            let changed = release.yanked.as_deref() != reason;
            release.yanked = reason.map(str::to_string);
            changed
        })
    }

    /// Applies `edit` to release `id`; when it says it changed the release, checks the
    /// index, rewrites it as generated at `now` and removes the signature it invalidates.
    /// Returns the release and whether it was left as it was.
    fn edit_release(
        &self,
        id: &str,
        now: Timestamp,
        edit: impl FnOnce(&mut Release) -> bool,
    ) -> Result<(Release, bool), RepositoryError> {
        let mut index = self.load_index()?;
        let position = position_of(&index, id)?;
        let release = &mut index.releases[position];
        if !edit(release) {
            return Ok((release.clone(), true));
        }
        let edited = release.clone();
        index.validate()?;
        index.generated_at = now.to_string();
        write_atomically(&self.index_path(), &index.to_json_bytes())?;
        remove_signature(&self.root)?;
        Ok((edited, false))
    }

    /// Stamps the index for a new signing at `now` (see [`Index::refresh`]: a higher
    /// serial, and an expiry `valid_for` from now) and rewrites it, removing the signature it
    /// invalidates; [`LocalRepository::sign`] comes next. Returns the stamped index.
    pub fn refresh(
        &self,
        now: Timestamp,
        valid_for: jiff::SignedDuration,
    ) -> Result<Index, RepositoryError> {
        if !valid_for.is_positive() {
            return Err(RepositoryError::InvalidIndex {
                field: "expires",
                problem: format!("a validity of {valid_for} would expire the index at once"),
            });
        }
        let mut index = self.load_index()?;
        index.refresh(now, valid_for);
        index
            .validate()
            .map_err(|e| RepositoryError::in_file(self.index_path().display(), e))?;
        remove_signature(&self.root)?;
        write_atomically(&self.index_path(), &index.to_json_bytes())?;
        Ok(index)
    }

    /// Signs the index's exact bytes with `key`, writing `index.json.sig`. Refuses to sign
    /// an index that does not validate. Publishers call [`LocalRepository::refresh`] first so
    /// that readers see a new serial and expiry.
    pub fn sign(&self, key: &PrivateKey) -> Result<(), RepositoryError> {
        let path = self.index_path();
        let bytes = std::fs::read(&path).map_err(RepositoryError::io(&path))?;
        Index::parse_named(&bytes, &path.display().to_string())?;
        let sig = self.root.join(SIGNATURE_FILE);
        write_atomically(&sig, key.sign_to_base64_line(&bytes).as_bytes())
    }

    /// Verifies the repository as clients will (see [`super::verify_repository_dir`]).
    pub fn verify(&self, trusted: &[PublicKey]) -> Result<Index, RepositoryError> {
        super::verify_repository_dir(&self.root, trusted)
    }

    fn index_path(&self) -> PathBuf {
        self.root.join(INDEX_FILE)
    }
}

/// Removes the signature of a repository whose index is about to change or has changed, so
/// that it must be signed again before it verifies.
fn remove_signature(root: &Path) -> Result<(), RepositoryError> {
    let sig = root.join(SIGNATURE_FILE);
    match std::fs::remove_file(&sig) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RepositoryError::io(&sig)(e)),
        _ => Ok(()),
    }
}

/// Writes `bytes` to a temporary file beside `path` and renames it over `path`, so readers
/// (an HTTP server serving the directory) never see half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), RepositoryError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(RepositoryError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(RepositoryError::io(path))
}
