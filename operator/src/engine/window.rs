//! Maintenance windows: recurring local-time intervals in an IANA time zone, on given
//! days, possibly running past midnight. They gate only the start of new nodes.

use jiff::civil::{Date, Time, Weekday as CivilWeekday};
use jiff::tz::TimeZone;
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

    /// The open intervals of this window whose opening day is within a day before and a
    /// week after `now`'s local date, in order.
    fn intervals(&self, now: Timestamp) -> Vec<(Timestamp, Timestamp)> {
        let today = now.to_zoned(self.zone.clone()).date();
        let mut out = Vec::new();
        for offset in -1i64..=7 {
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
            let (Some(open), Some(close)) = (
                self.local(day, self.start),
                closing_day.and_then(|d| self.local(d, self.end)),
            ) else {
                continue;
            };
            out.push((open, close));
        }
        out
    }

    /// A local date and time as an instant. In a DST gap the later instant is taken, so a
    /// window never opens before its wall-clock time.
    fn local(&self, day: Date, time: Time) -> Option<Timestamp> {
        day.to_datetime(time)
            .to_zoned(self.zone.clone())
            .ok()
            .map(|z| z.timestamp())
    }
}

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

    /// The next time a window opens after `now`, if one opens within a week.
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
}
