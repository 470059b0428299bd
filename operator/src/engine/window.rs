//! Maintenance windows: recurring local-time intervals in an IANA time zone, on given
//! days, possibly running past midnight. They gate only the start of new nodes.
//!
//! Daylight saving time moves the wall clock, and a window is read as the clock reads:
//! - **Skipped hour (spring forward).** A start or end that the clock skips is taken as
//!   the first instant after the gap: in Europe/Berlin on 2026-03-29 (02:00 jumps to
//!   03:00) a 02:30-04:00 window opens at 03:00 and closes at 04:00. A window wholly
//!   inside the gap (02:10-02:50) does not happen that day, and its next opening is the
//!   next day on which it does happen (a week later for a Sunday-only window), never an
//!   instant the clock does not show.
//! - **Repeated hour (fall back).** A window opens once, at the first time the clock
//!   shows its start, and closes at the first time after that at which the clock shows
//!   its end. In Europe/Berlin on 2026-10-25 (03:00 goes back to 02:00) a 02:10-02:50
//!   window opens at 02:10 summer time for 40 minutes and does not open again when 02:10
//!   comes round a second time; a 02:30-04:00 window stays open from 02:30 summer time
//!   to 04:00 winter time, as long as the clock takes to get there.

use jiff::civil::{DateTime, Time, Weekday as CivilWeekday};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{Timestamp, ToSpan};
use kpersist_crds::{MaintenanceWindow, Weekday};

/// One parsed window.
#[derive(Clone, Debug)]
pub(crate) struct Window {
    days: Vec<CivilWeekday>,
    start: Time,
    end: Time,
    zone: TimeZone,
}

/// Why a window could not be read: which field and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WindowProblem {
    pub field: &'static str,
    pub problem: String,
}

/// Parses `HH:MM` in 24-hour form.
pub(crate) fn parse_clock(text: &str) -> Result<Time, String> {
    let bad = || format!("{text:?} is not a time of day; write it as HH:MM, e.g. 02:30 or 23:00");
    let (hour, minute) = text.split_once(':').ok_or_else(bad)?;
    if hour.len() != 2 || minute.len() != 2 {
        return Err(bad());
    }
    let hour: i8 = hour.parse().map_err(|_| bad())?;
    let minute: i8 = minute.parse().map_err(|_| bad())?;
    Time::new(hour, minute, 0, 0).map_err(|_| bad())
}

impl Window {
    /// Reads a window from the API, naming the field that is wrong.
    pub(crate) fn parse(window: &MaintenanceWindow) -> Result<Window, WindowProblem> {
        let start = parse_clock(&window.start).map_err(|problem| WindowProblem {
            field: "start",
            problem,
        })?;
        let end = parse_clock(&window.end).map_err(|problem| WindowProblem {
            field: "end",
            problem,
        })?;
        let zone = TimeZone::get(&window.time_zone).map_err(|_| WindowProblem {
            field: "timeZone",
            problem: format!(
                "{:?} is not a known IANA time zone; use a name such as UTC or Europe/Berlin",
                window.time_zone
            ),
        })?;
        let days = window.days.iter().map(|d| civil_weekday(*d)).collect();
        Ok(Window {
            days,
            start,
            end,
            zone,
        })
    }

    /// The intervals of this window whose opening day is within a day before and two
    /// weeks after `now`'s local date, in order. Looking two weeks ahead finds the next
    /// real opening of a weekly window whose occurrence this week falls in a DST gap.
    /// An occurrence the clock skips entirely is left out.
    fn intervals(&self, now: Timestamp) -> Vec<(Timestamp, Timestamp)> {
        let today = now.to_zoned(self.zone.clone()).date();
        let mut out = Vec::new();
        for offset in -1i64..=LOOK_AHEAD_DAYS {
            let Ok(day) = today.checked_add(offset.days()) else {
                continue;
            };
            if !self.days.is_empty() && !self.days.contains(&day.weekday()) {
                continue;
            }
            // An end at or before the start runs into the next day; equal means all day.
            let closing_day = if self.end <= self.start {
                day.tomorrow().ok()
            } else {
                Some(day)
            };
            let Some(open) = self.first_instant(day.to_datetime(self.start), None) else {
                continue;
            };
            let Some(close) =
                closing_day.and_then(|d| self.first_instant(d.to_datetime(self.end), Some(open)))
            else {
                continue;
            };
            if open < close {
                out.push((open, close));
            }
        }
        out
    }

    /// The first instant, after `after` when given, at which this zone's clock shows
    /// `local`, or the end of the gap when the clock skips it (see the module docs).
    fn first_instant(&self, local: DateTime, after: Option<Timestamp>) -> Option<Timestamp> {
        let candidates: Vec<Timestamp> = match self.zone.to_ambiguous_timestamp(local).offset() {
            AmbiguousOffset::Unambiguous { offset } => vec![offset.to_timestamp(local).ok()?],
            // Read with the offset after the gap, the skipped time lies before the jump;
            // the jump itself is the first instant the clock is past it.
            AmbiguousOffset::Gap { after: later, .. } => {
                let before_jump = later.to_timestamp(local).ok()?;
                vec![self.zone.following(before_jump).next()?.timestamp()]
            }
            AmbiguousOffset::Fold {
                before,
                after: later,
            } => {
                vec![
                    before.to_timestamp(local).ok()?,
                    later.to_timestamp(local).ok()?,
                ]
            }
        };
        candidates
            .into_iter()
            .filter(|instant| after.is_none_or(|after| *instant >= after))
            .min()
    }
}

/// How many days past today [`Window::intervals`] looks for an opening.
const LOOK_AHEAD_DAYS: i64 = 14;

/// Every window of a policy. No windows means always open.
#[derive(Clone, Debug, Default)]
pub(crate) struct Windows(pub Vec<Window>);

impl Windows {
    /// Whether new nodes may start at `now`.
    pub(crate) fn is_open(&self, now: Timestamp) -> bool {
        self.0.is_empty()
            || self
                .0
                .iter()
                .flat_map(|w| w.intervals(now))
                .any(|(open, close)| open <= now && now < close)
    }

    /// The next time a window opens after `now`, if one opens within two weeks.
    pub(crate) fn next_open(&self, now: Timestamp) -> Option<Timestamp> {
        self.0
            .iter()
            .flat_map(|w| w.intervals(now))
            .map(|(open, _)| open)
            .filter(|open| *open > now)
            .min()
    }
}

fn civil_weekday(day: Weekday) -> CivilWeekday {
    match day {
        Weekday::Mon => CivilWeekday::Monday,
        Weekday::Tue => CivilWeekday::Tuesday,
        Weekday::Wed => CivilWeekday::Wednesday,
        Weekday::Thu => CivilWeekday::Thursday,
        Weekday::Fri => CivilWeekday::Friday,
        Weekday::Sat => CivilWeekday::Saturday,
        Weekday::Sun => CivilWeekday::Sunday,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(days: Vec<Weekday>, start: &str, end: &str, zone: &str) -> Windows {
        let spec = MaintenanceWindow {
            days,
            start: start.to_string(),
            end: end.to_string(),
            time_zone: zone.to_string(),
        };
        match Window::parse(&spec) {
            Ok(w) => Windows(vec![w]),
            Err(e) => panic!("test window does not parse: {e:?}"),
        }
    }

    fn at(text: &str) -> Timestamp {
        text.parse()
            .unwrap_or_else(|e| panic!("bad test time {text}: {e}"))
    }

    #[test]
    fn clock_must_be_hh_mm() {
        assert_eq!(parse_clock("02:30"), Ok(Time::constant(2, 30, 0, 0)));
        for bad in ["2:30", "24:00", "12:60", "1230", "12:3a", ""] {
            assert!(parse_clock(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn unknown_time_zone_names_the_field() {
        let spec = MaintenanceWindow {
            days: vec![],
            start: "01:00".into(),
            end: "02:00".into(),
            time_zone: "Mars/Olympus".into(),
        };
        let err = Window::parse(&spec).err();
        assert_eq!(err.map(|e| e.field), Some("timeZone"));
    }

    #[test]
    fn no_windows_is_always_open() {
        assert!(Windows::default().is_open(at("2026-01-01T00:00:00Z")));
    }

    #[test]
    fn window_follows_its_time_zone() {
        // 02:00-04:00 in Berlin is 01:00-03:00 UTC in winter.
        let w = window(vec![], "02:00", "04:00", "Europe/Berlin");
        assert!(!w.is_open(at("2026-01-15T00:59:00Z")));
        assert!(w.is_open(at("2026-01-15T01:00:00Z")));
        assert!(w.is_open(at("2026-01-15T02:59:00Z")));
        assert!(!w.is_open(at("2026-01-15T03:00:00Z")));
        // and 00:00-02:00 UTC in summer.
        assert!(w.is_open(at("2026-07-15T00:30:00Z")));
        assert!(!w.is_open(at("2026-07-15T02:30:00Z")));
    }

    #[test]
    fn window_past_midnight_belongs_to_its_opening_day() {
        // Fri 22:00 to Sat 02:00 only.
        let w = window(vec![Weekday::Fri], "22:00", "02:00", "UTC");
        // 2026-01-16 is a Friday.
        assert!(w.is_open(at("2026-01-16T23:00:00Z")));
        assert!(w.is_open(at("2026-01-17T01:59:00Z")));
        assert!(!w.is_open(at("2026-01-17T02:00:00Z")));
        assert!(
            !w.is_open(at("2026-01-17T23:00:00Z")),
            "Saturday evening is closed"
        );
        assert!(
            !w.is_open(at("2026-01-16T01:00:00Z")),
            "Friday early morning is closed"
        );
    }

    #[test]
    fn next_open_finds_the_next_allowed_day() {
        let w = window(vec![Weekday::Mon], "03:00", "05:00", "UTC");
        // Friday 2026-01-16 noon → Monday 2026-01-19 03:00.
        assert_eq!(
            w.next_open(at("2026-01-16T12:00:00Z")),
            Some(at("2026-01-19T03:00:00Z"))
        );
    }

    #[test]
    fn equal_start_and_end_is_a_whole_day() {
        let w = window(vec![Weekday::Sun], "00:00", "00:00", "UTC");
        // 2026-01-18 is a Sunday.
        assert!(w.is_open(at("2026-01-18T00:00:00Z")));
        assert!(w.is_open(at("2026-01-18T23:59:00Z")));
        assert!(!w.is_open(at("2026-01-19T00:00:00Z")));
    }

    // Europe/Berlin springs forward on Sunday 2026-03-29 at 02:00 CET (01:00 UTC) to
    // 03:00 CEST and falls back on Sunday 2026-10-25 at 03:00 CEST (01:00 UTC) to 02:00 CET.

    #[test]
    fn a_window_starting_in_the_skipped_hour_opens_when_the_clock_jumps() {
        let w = window(vec![Weekday::Sun], "02:30", "04:00", "Europe/Berlin");
        assert_eq!(
            w.next_open(at("2026-03-28T12:00:00Z")),
            Some(at("2026-03-29T01:00:00Z")),
            "opens at 03:00 CEST, not 03:30"
        );
        assert!(!w.is_open(at("2026-03-29T00:59:59Z")));
        assert!(w.is_open(at("2026-03-29T01:00:00Z")));
        assert!(w.is_open(at("2026-03-29T01:59:59Z")));
        assert!(
            !w.is_open(at("2026-03-29T02:00:00Z")),
            "closes at 04:00 CEST"
        );
    }

    #[test]
    fn a_window_wholly_in_the_skipped_hour_reports_its_next_real_opening() {
        let w = window(vec![Weekday::Sun], "02:10", "02:50", "Europe/Berlin");
        // The next Sunday, 02:10 CEST.
        let next_week = Some(at("2026-04-05T00:10:00Z"));
        assert_eq!(w.next_open(at("2026-03-28T12:00:00Z")), next_week);
        assert_eq!(w.next_open(at("2026-03-29T00:30:00Z")), next_week);
        for instant in [
            "2026-03-29T00:59:59Z",
            "2026-03-29T01:00:00Z",
            "2026-03-29T01:30:00Z",
        ] {
            assert!(!w.is_open(at(instant)), "open at {instant}");
        }
        assert!(w.is_open(at("2026-04-05T00:10:00Z")));
    }

    #[test]
    fn a_window_ending_in_the_skipped_hour_closes_when_the_clock_jumps() {
        let w = window(vec![Weekday::Sun], "01:00", "02:30", "Europe/Berlin");
        assert!(w.is_open(at("2026-03-29T00:00:00Z")));
        assert!(w.is_open(at("2026-03-29T00:59:59Z")));
        assert!(
            !w.is_open(at("2026-03-29T01:00:00Z")),
            "03:00 CEST is past 02:30"
        );
    }

    #[test]
    fn a_window_in_the_repeated_hour_opens_once_at_its_first_occurrence() {
        let w = window(vec![Weekday::Sun], "02:10", "02:50", "Europe/Berlin");
        assert_eq!(
            w.next_open(at("2026-10-24T12:00:00Z")),
            Some(at("2026-10-25T00:10:00Z")),
            "02:10 CEST"
        );
        assert!(w.is_open(at("2026-10-25T00:10:00Z")));
        assert!(w.is_open(at("2026-10-25T00:49:59Z")));
        assert!(
            !w.is_open(at("2026-10-25T00:50:00Z")),
            "closes at 02:50 CEST"
        );
        assert!(
            !w.is_open(at("2026-10-25T01:30:00Z")),
            "02:30 CET, the second time round, is closed"
        );
        assert_eq!(
            w.next_open(at("2026-10-25T00:50:00Z")),
            Some(at("2026-11-01T01:10:00Z")),
            "next Sunday, 02:10 CET"
        );
    }

    #[test]
    fn a_window_through_the_repeated_hour_stays_open_until_the_clock_reaches_its_end() {
        let w = window(vec![Weekday::Sun], "02:30", "04:00", "Europe/Berlin");
        assert!(!w.is_open(at("2026-10-25T00:29:59Z")));
        assert!(w.is_open(at("2026-10-25T00:30:00Z")), "02:30 CEST");
        assert!(w.is_open(at("2026-10-25T01:15:00Z")), "02:15 CET");
        assert!(w.is_open(at("2026-10-25T02:59:59Z")));
        assert!(!w.is_open(at("2026-10-25T03:00:00Z")), "04:00 CET");
    }
}
