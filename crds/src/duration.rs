//! Durations in the API are strings such as `90s`, `10m` or `1h30m` (units `ms`, `s`, `m`,
//! `h`, `d`), the same shape Kubernetes users know from Go's `time.ParseDuration`.

use std::time::Duration;

/// The schema pattern every duration field carries, so the API server refuses bad ones.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h|d))+$";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("duration {0:?} is empty; write it like 30s, 10m or 1h30m")]
    Empty(String),
    #[error(
        "duration {input:?} has no unit after {digits}; write it like 30s, 10m or 1h30m (units ms, s, m, h, d)"
    )]
    MissingUnit { input: String, digits: String },
    #[error("duration {input:?} has unknown unit {unit:?}; use ms, s, m, h or d")]
    UnknownUnit { input: String, unit: String },
    #[error("duration {input:?} has a number where none is expected at {rest:?}")]
    MissingNumber { input: String, rest: String },
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Parses a duration such as `1h30m` or `250ms`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    if input.is_empty() {
        return Err(DurationError::Empty(input.to_string()));
    }
    let mut total_ms: u64 = 0;
    let mut rest = input;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits_end == 0 {
            return Err(DurationError::MissingNumber {
                input: input.to_string(),
                rest: rest.to_string(),
            });
        }
        let (digits, after) = rest.split_at(digits_end);
        let unit_end = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let unit_ms: u64 = match unit {
            "" => {
                return Err(DurationError::MissingUnit {
                    input: input.to_string(),
                    digits: digits.to_string(),
                });
            }
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            other => {
                return Err(DurationError::UnknownUnit {
                    input: input.to_string(),
                    unit: other.to_string(),
                });
            }
        };
        let overflow = || DurationError::Overflow(input.to_string());
        let value: u64 = digits.parse().map_err(|_| overflow())?;
        let part = value.checked_mul(unit_ms).ok_or_else(overflow)?;
        total_ms = total_ms.checked_add(part).ok_or_else(overflow)?;
        rest = next;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Writes a duration back in the API's shape, largest units first (`5400s` → `1h30m`).
pub fn format_duration(duration: Duration) -> String {
    let mut ms = duration.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_compound_durations() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_bad_durations_with_a_reason() {
        assert!(matches!(parse_duration(""), Err(DurationError::Empty(_))));
        assert!(matches!(
            parse_duration("10"),
            Err(DurationError::MissingUnit { .. })
        ));
        assert!(matches!(
            parse_duration("10y"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("h1"),
            Err(DurationError::MissingNumber { .. })
        ));
        assert!(matches!(
            parse_duration("99999999999999999999d"),
            Err(DurationError::Overflow(_))
        ));
        let message = parse_duration("5 minutes").unwrap_err().to_string();
        assert!(message.contains("5 minutes"), "{message}");
    }

    proptest! {
        #[test]
        fn format_and_parse_round_trip(ms in 0u64..10_000_000_000) {
            let duration = Duration::from_millis(ms);
            prop_assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
        }

        #[test]
        fn never_panics_on_any_text(text in ".{0,24}") {
            let _ = parse_duration(&text);
        }
    }
}
