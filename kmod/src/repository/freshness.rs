//! Freshness of a signed index: its serial grows with every signing and it expires. Readers
//! refuse an index whose serial is below one they already accepted (an old signed index
//! replayed by a mirror, cache or attacker) and report one past its expiry as stale (a
//! withheld index, or a publisher that stopped signing).

use jiff::{SignedDuration, Timestamp};

use super::{Index, RepositoryError};

/// How long a signed index stays current when the publisher does not say: a week, so a
/// weekly signing job with a day of slack never lets it lapse.
pub const DEFAULT_VALIDITY: SignedDuration = SignedDuration::from_hours(7 * 24);

impl Index {
    /// The index's serial; 0 for an index signed before serials existed.
    pub fn serial(&self) -> u64 {
        self.serial.unwrap_or(0)
    }

    /// When the index expires; `None` for an index without an expiry (a validated index
    /// never has an unreadable one).
    pub fn expires_at(&self) -> Option<Timestamp> {
        self.expires.as_deref().and_then(|text| text.parse().ok())
    }

    /// Whether the index carries a serial and an expiry, i.e. was signed by a
    /// `kpersist-repo` that sets them.
    pub fn has_freshness(&self) -> bool {
        self.serial.is_some() && self.expires.is_some()
    }

    /// Whether the index has expired at `now`. An index without an expiry never does.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at().is_some_and(|expires| expires <= now)
    }

    /// Refuses this index when its serial is below `accepted`, the highest serial already
    /// accepted from the same repository. An equal serial is the same signing served again.
    pub fn check_not_rolled_back(&self, accepted: u64) -> Result<(), RepositoryError> {
        if self.serial() < accepted {
            return Err(RepositoryError::RolledBack {
                serial: self.serial(),
                accepted,
            });
        }
        Ok(())
    }

    /// Refuses this index when it has expired at `now`.
    pub fn check_not_expired(&self, now: Timestamp) -> Result<(), RepositoryError> {
        match self.expires_at() {
            Some(expires) if expires <= now => Err(RepositoryError::Expired {
                expires: expires.to_string(),
                serial: self.serial(),
            }),
            _ => Ok(()),
        }
    }

    /// Stamps the index for signing at `now`: generated now, valid for `valid_for`, with a
    /// serial above the previous one and at least the Unix time in seconds, so that even a
    /// repository rebuilt from scratch by `init` moves forward.
    pub fn refresh(&mut self, now: Timestamp, valid_for: SignedDuration) {
        let clock = u64::try_from(now.as_second()).unwrap_or(0);
        self.serial = Some(self.serial().saturating_add(1).max(clock));
        self.generated_at = now.to_string();
        let expires = now.checked_add(valid_for).unwrap_or(Timestamp::MAX);
        self.expires = Some(expires.to_string());
    }
}
