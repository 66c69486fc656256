//! The proxy's idea of local time: the time zone that schedules (`[[rules]] times`) and the
//! periods of byte budgets are read in (`[clock] timezone`, else the machine's), and the
//! conversions between an instant and the wall-clock time a person means.
//!
//! Everything that depends on the time of day takes the instant as an argument
//! ([`jiff::Timestamp`]) rather than reading the system clock itself, so that tests (and
//! `explain --at`) can ask about any moment; the machine's zone is looked up by `config`.

use std::fmt;
use std::sync::Arc;

use jiff::civil::{DateTime, Weekday};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::Timestamp;

/// A time zone and its name, as configured.
#[derive(Clone)]
pub struct Clock {
    zone: TimeZone,
    name: Arc<str>,
}

impl Clock {
    /// A clock in `zone` (the machine's, as `config` finds it, or one by name).
    pub fn new(zone: TimeZone) -> Clock {
        let name = zone
            .iana_name()
            .unwrap_or("the machine's local time")
            .into();
        Clock { zone, name }
    }

    /// A zone of the time zone database by its name (`Europe/Amsterdam`, `UTC`).
    pub fn named(name: &str) -> Result<Clock, String> {
        match TimeZone::get(name) {
            Ok(zone) => Ok(Clock {
                zone,
                name: name.into(),
            }),
            Err(e) => Err(format!("{name:?} is not a time zone ({e})")),
        }
    }

    /// The zone's name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The wall-clock time at `at` in this zone.
    pub fn local(&self, at: Timestamp) -> DateTime {
        self.zone.to_datetime(at)
    }

    /// The instant a wall-clock time names. A time skipped by a change to summer time (02:30
    /// on the night clocks go from 02:00 to 03:00) is the moment of the change, when the
    /// clock first reads past it; a time that happens twice when clocks go back is the first.
    pub fn instant(&self, local: DateTime) -> Timestamp {
        let ambiguous = self.zone.to_ambiguous_timestamp(local);
        if let AmbiguousOffset::Gap { after, .. } = ambiguous.offset() {
            // Read with the offset after the change, the time falls before it: the change is
            // the next transition from there.
            let change = after
                .to_timestamp(local)
                .ok()
                .and_then(|before| self.zone.following(before).next());
            if let Some(change) = change {
                return change.timestamp();
            }
        }
        ambiguous.compatible().unwrap_or(Timestamp::MAX)
    }

    /// `at` as a person reads it, to the minute: `Thu 15:30` within the coming week,
    /// else `Thu 2026-12-10 15:30`.
    pub fn show(&self, at: Timestamp, now: Timestamp) -> String {
        let local = self.local(at);
        let day = short_day(local.weekday());
        let within_week = at.as_second() - now.as_second() < 6 * 86_400;
        if within_week {
            format!("{day} {}", local.strftime("%H:%M"))
        } else {
            format!("{day} {}", local.strftime("%Y-%m-%d %H:%M"))
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Clock({})", self.name)
    }
}

impl Default for Clock {
    /// UTC: what tests and policies built by hand read times in.
    fn default() -> Self {
        Clock::new(TimeZone::UTC)
    }
}

/// A weekday's three-letter English name, as schedules write it.
pub fn short_day(day: Weekday) -> &'static str {
    match day {
        Weekday::Monday => "Mon",
        Weekday::Tuesday => "Tue",
        Weekday::Wednesday => "Wed",
        Weekday::Thursday => "Thu",
        Weekday::Friday => "Fri",
        Weekday::Saturday => "Sat",
        Weekday::Sunday => "Sun",
    }
}

/// Reads `--at`-style times: a wall-clock time in the clock's zone (`2026-12-03T20:15`,
/// seconds optional, `T` or a space) or an instant with an offset (`2026-12-03T20:15Z`,
/// `…+01:00`).
pub fn parse_moment(text: &str, clock: &Clock) -> Result<Timestamp, String> {
    let text = text.trim();
    if let Ok(at) = text.parse::<Timestamp>() {
        return Ok(at);
    }
    match text.replacen(' ', "T", 1).parse::<DateTime>() {
        Ok(local) => Ok(clock.instant(local)),
        Err(_) => Err(format!(
            "{text:?} is not a time: write it as 2026-12-03T20:15 (local time in {}) or with an offset, 2026-12-03T20:15+01:00",
            clock.name()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amsterdam() -> Clock {
        Clock::named("Europe/Amsterdam").unwrap()
    }

    #[test]
    fn wall_clock_times_in_a_gap_or_twice_are_read_as_people_mean_them() {
        let clock = amsterdam();
        // 2026-03-29: 02:00 CET becomes 03:00 CEST. 02:30 does not exist: the change, when
        // the clock first reads past 02:30.
        let gap = clock.instant("2026-03-29T02:30".parse().unwrap());
        assert_eq!(gap.to_string(), "2026-03-29T01:00:00Z");
        assert_eq!(
            clock.local(gap),
            "2026-03-29T03:00".parse::<DateTime>().unwrap()
        );
        // 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice: the first.
        let twice = clock.instant("2026-10-25T02:30".parse().unwrap());
        assert_eq!(twice.to_string(), "2026-10-25T00:30:00Z");
        assert_eq!(
            clock.local(twice),
            "2026-10-25T02:30".parse::<DateTime>().unwrap()
        );
    }

    #[test]
    fn moments_are_read_in_the_clock_zone_unless_they_carry_an_offset() {
        let clock = amsterdam();
        let local = parse_moment("2026-12-03T20:15", &clock).unwrap();
        assert_eq!(local.to_string(), "2026-12-03T19:15:00Z");
        let spaced = parse_moment("2026-12-03 20:15:30", &clock).unwrap();
        assert_eq!(spaced.to_string(), "2026-12-03T19:15:30Z");
        let utc = parse_moment("2026-12-03T20:15Z", &clock).unwrap();
        assert_eq!(utc.to_string(), "2026-12-03T20:15:00Z");
        let err = parse_moment("tomorrow", &clock).unwrap_err();
        assert!(err.contains("Europe/Amsterdam"), "{err}");
        assert!(Clock::named("Mars/Olympus").is_err());
    }

    #[test]
    fn times_are_shown_with_the_day_and_the_date_when_far() {
        let clock = amsterdam();
        let now = parse_moment("2026-12-03T10:00", &clock).unwrap();
        let soon = parse_moment("2026-12-07T15:30", &clock).unwrap();
        assert_eq!(clock.show(soon, now), "Mon 15:30");
        let far = parse_moment("2026-12-10T08:00", &clock).unwrap();
        assert_eq!(clock.show(far, now), "Thu 2026-12-10 08:00");
    }
}
