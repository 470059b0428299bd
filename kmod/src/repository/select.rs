//! Choosing the release a node should run: the newest one for its exact kernel build in the
//! policy's channel, within the policy's delay or pin, skipping releases the caller rules out
//! (for example ones marked bad). Pure: the caller supplies the time bound.

use jiff::Timestamp;

use super::{Index, Release};

/// What a node needs from the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReleaseQuery<'a> {
    /// The node's kernel release (`uname -r`).
    pub kernel_release: &'a str,
    /// The node's kernel build id, hex (compared without regard to case).
    pub build_id: &'a str,
    /// The channel the policy follows, e.g. `stable`.
    pub channel: &'a str,
    /// Only releases published at or before this time: the policy's `delay` subtracted from
    /// now. `None` places no bound.
    pub published_before: Option<Timestamp>,
    /// Only this version: the policy's pinned release. `None` means the newest.
    pub pinned_version: Option<u64>,
}

impl Index {
    /// The newest release matching `query` for which `exclude` returns false, or `None` when
    /// no release fits (the node is then unsupported by this repository).
    ///
    /// A release matches when its kernel release and build id equal the query's, its
    /// channels include the query's channel, it was published at or before
    /// `published_before` (when given), and its version equals `pinned_version` (when
    /// given). Excluded releases are skipped, so when the newest release is excluded the
    /// next newest one is chosen: releases are cumulative, so an older one is a safe target.
    pub fn newest_for(
        &self,
        query: &ReleaseQuery<'_>,
        exclude: &dyn Fn(&Release) -> bool,
    ) -> Option<&Release> {
        self.releases
            .iter()
            .filter(|r| r.is_for(query.kernel_release, query.build_id))
            .filter(|r| r.channels.iter().any(|c| c == query.channel))
            .filter(|r| query.pinned_version.is_none_or(|v| r.version == v))
            .filter(|r| match query.published_before {
                None => true,
                Some(bound) => r.published_at().is_some_and(|p| p <= bound),
            })
            .filter(|r| !exclude(r))
            .max_by_key(|r| r.version)
    }

    /// Every release for one kernel build, in index order.
    pub fn releases_for<'s>(
        &'s self,
        kernel_release: &'s str,
        build_id: &'s str,
    ) -> impl Iterator<Item = &'s Release> + 's {
        self.releases
            .iter()
            .filter(move |r| r.is_for(kernel_release, build_id))
    }

    /// The release with this id (`<kernelRelease>/v<version>`), if any.
    pub fn release(&self, id: &str) -> Option<&Release> {
        self.releases.iter().find(|r| r.id() == id)
    }
}

impl Release {
    /// Whether this release is for the kernel build `kernel_release` with `build_id` (hex,
    /// compared without regard to case).
    pub fn is_for(&self, kernel_release: &str, build_id: &str) -> bool {
        self.kernel_release == kernel_release && self.build_id.eq_ignore_ascii_case(build_id)
    }
}
