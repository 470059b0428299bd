//! The rules a well-formed index keeps, checked on every index read and before every write:
//! sane fields, unique ids, and versions that only go up per kernel build.

use std::collections::{HashMap, HashSet};

use super::{Index, MAX_MODULE_SIZE, Release, RepositoryError};

/// Longest kernel release string the kernel itself allows (`__NEW_UTS_LEN`).
const MAX_KERNEL_RELEASE_LEN: usize = 64;
/// Longest module name the kernel allows (`MODULE_NAME_LEN` - 1).
const MAX_MODULE_NAME_LEN: usize = 55;
/// Longest build id accepted, in hex digits (a SHA-512 sized id).
const MAX_BUILD_ID_HEX_LEN: usize = 128;
/// Longest module path accepted.
const MAX_MODULE_PATH_LEN: usize = 1024;
/// Longest reason a yanked release may give: it is shown in policy status and Events.
pub const MAX_YANK_REASON_LEN: usize = 256;

impl Index {
    /// Checks every release and the relations between them: ids (`<kernelRelease>/v<version>`)
    /// are unique, and per kernel build (release and build id) versions strictly increase in
    /// the order the releases are listed and no two releases share a module name (the
    /// kernel refuses to load a module whose name is already loaded, so a cumulative
    /// release reusing its predecessor's name could never replace it).
    pub fn validate(&self) -> Result<(), RepositoryError> {
        check_timestamp(&self.generated_at).map_err(|problem| RepositoryError::InvalidIndex {
            field: "generatedAt",
            problem,
        })?;
        self.validate_freshness()?;
        let mut ids = HashSet::new();
        let mut newest: HashMap<(&str, &str), u64> = HashMap::new();
        let mut names: HashMap<(&str, &str, &str), &Release> = HashMap::new();
        for release in &self.releases {
            release.validate()?;
            if !ids.insert((release.kernel_release.as_str(), release.version)) {
                return Err(RepositoryError::DuplicateRelease { id: release.id() });
            }
            let build = (release.kernel_release.as_str(), release.build_id.as_str());
            if let Some(&previous) = newest.get(&build)
                && release.version <= previous
            {
                return Err(RepositoryError::NonMonotonicVersion {
                    id: release.id(),
                    kernel_release: release.kernel_release.clone(),
                    build_id: release.build_id.clone(),
                    version: release.version,
                    previous,
                    next: previous.saturating_add(1),
                });
            }
            newest.insert(build, release.version);
            let name = (build.0, build.1, release.module_name.as_str());
            if let Some(earlier) = names.insert(name, release) {
                return Err(RepositoryError::ModuleNameReused {
                    id: release.id(),
                    module_name: release.module_name.clone(),
                    earlier: earlier.id(),
                    build_id: release.build_id.clone(),
                });
            }
        }
        Ok(())
    }

    /// `serial` and `expires` come together (both set by `kpersist-repo sign`), the serial
    /// is 1 or more, and the expiry is a time after `generatedAt`.
    fn validate_freshness(&self) -> Result<(), RepositoryError> {
        let fail =
            |field: &'static str, problem: String| RepositoryError::InvalidIndex { field, problem };
        let expires = match (self.serial, self.expires.as_deref()) {
            (None, None) => return Ok(()),
            (Some(0), _) => return Err(fail("serial", "must be 1 or more".into())),
            (Some(_), Some(expires)) => expires,
            (Some(_), None) | (None, Some(_)) => {
                return Err(fail(
                    "serial",
                    "serial and expires must both be present or both absent; sign the index \
                     with `kpersist-repo sign`, which sets both"
                        .into(),
                ));
            }
        };
        check_timestamp(expires).map_err(|p| fail("expires", p))?;
        if self.expires_at() <= self.generated_at.parse().ok() {
            return Err(fail(
                "expires",
                format!(
                    "{expires:?} is not after generatedAt {:?}; sign with a positive --valid-for",
                    self.generated_at
                ),
            ));
        }
        Ok(())
    }
}

impl Release {
    /// Checks this release's own fields; errors name the release and the field.
    pub fn validate(&self) -> Result<(), RepositoryError> {
        let fail = |field: &'static str, problem: String| RepositoryError::InvalidRelease {
            id: self.id(),
            field,
            problem,
        };
        check_kernel_release(&self.kernel_release).map_err(|p| fail("kernelRelease", p))?;
        check_build_id(&self.build_id).map_err(|p| fail("buildId", p))?;
        if self.version == 0 {
            return Err(fail("version", "must be 1 or more".into()));
        }
        check_module_path(&self.module).map_err(|p| fail("module", p))?;
        if !is_lower_hex(&self.sha256) || self.sha256.len() != 64 {
            return Err(fail(
                "sha256",
                format!("{:?} is not 64 lowercase hex digits", self.sha256),
            ));
        }
        if self.size == 0 || self.size > MAX_MODULE_SIZE {
            return Err(fail(
                "size",
                format!("{} is outside 1..={MAX_MODULE_SIZE} bytes", self.size),
            ));
        }
        check_module_name(&self.module_name).map_err(|p| fail("moduleName", p))?;
        check_list(&self.cves, is_cve_id, "CVE-YYYY-NNNN").map_err(|p| fail("cves", p))?;
        if self.channels.is_empty() {
            return Err(fail("channels", "must name at least one channel".into()));
        }
        check_list(
            &self.channels,
            is_channel,
            "lowercase letters, digits, `.`, `_`, `-`",
        )
        .map_err(|p| fail("channels", p))?;
        check_timestamp(&self.published).map_err(|p| fail("published", p))?;
        match &self.yanked {
            Some(reason) => check_yank_reason(reason).map_err(|p| fail("yanked", p)),
            None => Ok(()),
        }
    }
}

/// Checks the reason a yanked release gives: one line of 1 to [`MAX_YANK_REASON_LEN`]
/// bytes, no control characters.
pub fn check_yank_reason(reason: &str) -> Result<(), String> {
    if reason.trim().is_empty() || reason.len() > MAX_YANK_REASON_LEN {
        return Err(format!(
            "the reason must be 1 to {MAX_YANK_REASON_LEN} bytes, not {}",
            reason.len()
        ));
    }
    if reason.chars().any(char::is_control) {
        return Err(format!("{reason:?} has control characters; give one line"));
    }
    Ok(())
}

/// Whether `id` looks like `CVE-YYYY-NNNN` (four or more digits at the end).
pub fn is_cve_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("CVE-") else {
        return false;
    };
    let Some((year, number)) = rest.split_once('-') else {
        return false;
    };
    year.len() == 4
        && year.bytes().all(|b| b.is_ascii_digit())
        && number.len() >= 4
        && number.len() <= 19
        && number.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `name` is a channel name (the policy's `channel` pattern
/// `^[a-z0-9][a-z0-9._-]{0,62}$`).
pub fn is_channel(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && name.len() <= 63
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
}

/// Checks a module path: relative, `/`-separated, no `.` or `..` parts, no URL escapes or
/// query, nothing that could leave the repository directory.
pub fn check_module_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > MAX_MODULE_PATH_LEN {
        return Err(format!("{path:?} must be 1 to {MAX_MODULE_PATH_LEN} bytes"));
    }
    if path.starts_with('/') {
        return Err(format!("{path:?} must be relative to the repository root"));
    }
    // The path becomes part of a module URL, where `%2e%2e` is `..` and `?` or `#` end
    // the path, so those are refused as well as what a file system would misread.
    if path.contains(['\\', '\0', ':', '%', '?', '#']) || path.chars().any(char::is_control) {
        return Err(format!(
            "{path:?} has a backslash, colon, `%`, `?`, `#` or control character; use \
             plain relative paths such as modules/<sha256>.ko"
        ));
    }
    if path.split('/').any(|part| matches!(part, "" | "." | "..")) {
        return Err(format!("{path:?} has an empty, `.` or `..` component"));
    }
    Ok(())
}

fn check_kernel_release(release: &str) -> Result<(), String> {
    let printable = release.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    if release.is_empty() || release.len() > MAX_KERNEL_RELEASE_LEN || !printable {
        return Err(format!(
            "{release:?} must be 1 to {MAX_KERNEL_RELEASE_LEN} printable characters without \
             spaces or `/`, as `uname -r` prints"
        ));
    }
    Ok(())
}

fn check_build_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > MAX_BUILD_ID_HEX_LEN
        || !id.len().is_multiple_of(2)
        || !is_lower_hex(id)
    {
        return Err(format!(
            "{id:?} must be an even number (2 to {MAX_BUILD_ID_HEX_LEN}) of lowercase hex digits"
        ));
    }
    Ok(())
}

fn check_module_name(name: &str) -> Result<(), String> {
    let valid = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if name.is_empty() || name.len() > MAX_MODULE_NAME_LEN || !valid {
        return Err(format!(
            "{name:?} must be 1 to {MAX_MODULE_NAME_LEN} letters, digits, `_` or `-`"
        ));
    }
    Ok(())
}

/// Checks each item with `valid` and refuses repeats.
fn check_list(items: &[String], valid: fn(&str) -> bool, shape: &str) -> Result<(), String> {
    let mut seen = HashSet::new();
    for item in items {
        if !valid(item) {
            return Err(format!("{item:?} is not of the form {shape}"));
        }
        if !seen.insert(item) {
            return Err(format!("{item:?} is listed twice"));
        }
    }
    Ok(())
}

fn check_timestamp(text: &str) -> Result<(), String> {
    text.parse::<jiff::Timestamp>()
        .map(|_| ())
        .map_err(|e| format!("{text:?} is not an RFC 3339 time ({e})"))
}

pub(crate) fn is_lower_hex(text: &str) -> bool {
    text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
