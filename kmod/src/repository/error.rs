//! What can be wrong with a repository, its index, or a module in it. Every message names
//! the file or release and says what to do.

use crate::modinfo::ModInfoError;
use crate::signing::SigningError;

/// Why a repository, index or module was refused.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// The index is larger than any real index would be.
    #[error("{file}: {size} bytes is over the {max}-byte limit for an index; refusing to read it")]
    IndexTooLarge {
        /// The index's name or path.
        file: String,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The signature file is larger than any signature.
    #[error("{file}: {size} bytes is too large for a signature; re-sign with `kpersist-repo sign`")]
    SignatureTooLarge {
        /// The signature's name or path.
        file: String,
        /// Its size.
        size: u64,
    },
    /// The signature is well-formed but does not verify over the index.
    #[error(
        "{index_file} does not match its signature {signature_file} under any of the {keys} \
         trusted key(s): it was changed after signing or signed with another key; re-sign it \
         with `kpersist-repo sign` or check the trusted keys"
    )]
    SignatureMismatch {
        /// The index's name or path.
        index_file: String,
        /// The signature's name or path.
        signature_file: String,
        /// How many trusted keys were tried.
        keys: usize,
    },
    /// The index has no signature next to it.
    #[error("{path} is missing; sign the index with `kpersist-repo sign`")]
    MissingSignature {
        /// Where the signature should be.
        path: String,
    },
    /// The signature is malformed, or no key is trusted.
    #[error(transparent)]
    Signature(#[from] SigningError),
    /// The index is not JSON of the index's shape.
    #[error("{file}: not a valid index ({reason}); rewrite it with `kpersist-repo`")]
    BadJson {
        /// The index's name or path.
        file: String,
        /// What the parser found.
        reason: String,
    },
    /// The index is of a schema version this code does not know.
    #[error(
        "{file}: schema version {found} is not supported (this build reads version {supported}); \
         upgrade kpersist"
    )]
    UnknownSchemaVersion {
        /// The index's name or path.
        file: String,
        /// The version in the file.
        found: u64,
        /// The version this code reads.
        supported: u32,
    },
    /// A release asked for by id is not in the index.
    #[error(
        "no release {id} in the index ({count} release(s)); `kpersist-repo list` shows their ids"
    )]
    NoSuchRelease {
        /// The id asked for.
        id: String,
        /// How many releases the index has.
        count: usize,
    },
    /// A field of the index itself is malformed.
    #[error("index field {field}: {problem}")]
    InvalidIndex {
        /// The field, as spelled in JSON.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// A field of one release is malformed.
    #[error("release {id}: field {field}: {problem}")]
    InvalidRelease {
        /// The release id.
        id: String,
        /// The field, as spelled in JSON.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// Two releases share a kernel release and version.
    #[error(
        "release {id} is listed more than once; each kernel release and version is published \
         once, so use a higher version"
    )]
    DuplicateRelease {
        /// The duplicated id.
        id: String,
    },
    /// A release's version is not greater than an earlier one for the same kernel build.
    #[error(
        "release {id}: version {version} is not greater than version {previous} already \
         published for kernel {kernel_release} build {build_id}; use version {next} or higher"
    )]
    NonMonotonicVersion {
        /// The offending release id.
        id: String,
        /// Its kernel release.
        kernel_release: String,
        /// Its kernel build id.
        build_id: String,
        /// Its version.
        version: u64,
        /// The highest earlier version for that kernel build.
        previous: u64,
        /// The smallest acceptable version.
        next: u64,
    },
    /// A release's module name is already used by an earlier release of the same kernel
    /// build; the kernel would refuse to load it next to that one.
    #[error(
        "release {id}: module name {module_name} is already used by release {earlier} of the \
         same kernel build ({build_id}); the kernel refuses to load a module whose name is \
         already loaded, so cumulative releases must use distinct module names: rebuild the \
         module under a new name (e.g. kpersist_v2) and add it again"
    )]
    ModuleNameReused {
        /// The release reusing the name.
        id: String,
        /// The module name.
        module_name: String,
        /// The earlier release with that name.
        earlier: String,
        /// The kernel build id both are for.
        build_id: String,
    },
    /// The index is older than one already accepted from the same repository.
    #[error(
        "index serial {serial} is below serial {accepted} already accepted from this \
         repository: this is an older signed index served again (by a stale mirror or cache, or \
         to hold back newer releases), so it is refused and the newer index stays in use; check \
         what serves the repository, and publish an index signed by `kpersist-repo sign` (an \
         index without a serial counts as serial 0)"
    )]
    RolledBack {
        /// The refused index's serial (0 when it has none).
        serial: u64,
        /// The highest serial accepted before.
        accepted: u64,
    },
    /// The index's expiry has passed.
    #[error(
        "index serial {serial} expired at {expires}: the publisher has not signed a newer one \
         since, or it is being withheld; re-sign with `kpersist-repo sign` (and sign on a \
         schedule shorter than --valid-for)"
    )]
    Expired {
        /// When it expired (RFC 3339).
        expires: String,
        /// Its serial.
        serial: u64,
    },
    /// A module does not match what the index says of it.
    #[error(
        "module {module} of release {id}: {problem}; re-download it or re-add it to the repository"
    )]
    ModuleMismatch {
        /// The module's path or URL.
        module: String,
        /// The release id.
        id: String,
        /// What differs.
        problem: String,
    },
    /// A module to be added is larger than any livepatch module would be.
    #[error("{path}: {size} bytes is over the {max}-byte limit for a module; check the file")]
    ModuleTooLarge {
        /// The module file.
        path: String,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A module to be added cannot be read as a kernel module.
    #[error(transparent)]
    ModInfo(#[from] ModInfoError),
    /// A module to be added is not a livepatch.
    #[error(
        "{path}: module {name} has no `livepatch=Y` in its .modinfo; build it as a livepatch \
         (MODULE_INFO(livepatch, \"Y\"))"
    )]
    NotLivepatch {
        /// The module file.
        path: String,
        /// Its module name.
        name: String,
    },
    /// A module to be added was built for another kernel.
    #[error(
        "{path}: module was built for kernel {found:?} (vermagic) but the release is for \
         {expected}; build it against {expected}'s headers or fix --kernel-release"
    )]
    VermagicMismatch {
        /// The module file.
        path: String,
        /// The release named by the module's vermagic, empty when it has none.
        found: String,
        /// The kernel release it is being added for.
        expected: String,
    },
    /// `init` was pointed at a directory that already holds an index.
    #[error("{path} already exists; this directory is already a repository")]
    AlreadyExists {
        /// The existing index.
        path: String,
    },
    /// Something is wrong inside a file; names the file.
    #[error("{path}: {source}")]
    InFile {
        /// The file's name or path.
        path: String,
        /// What is wrong in it.
        source: Box<RepositoryError>,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl RepositoryError {
    /// The error itself, without the [`RepositoryError::InFile`] layers naming files.
    pub fn root_cause(&self) -> &RepositoryError {
        match self {
            RepositoryError::InFile { source, .. } => source.root_cause(),
            other => other,
        }
    }

    /// Names `path` as the file `source` is about.
    pub(crate) fn in_file(
        path: impl std::fmt::Display,
        source: RepositoryError,
    ) -> RepositoryError {
        RepositoryError::InFile {
            path: path.to_string(),
            source: Box::new(source),
        }
    }

    /// Wraps an I/O error with the path it happened on.
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> RepositoryError {
        let path = path.display().to_string();
        move |source| RepositoryError::Io { path, source }
    }
}
