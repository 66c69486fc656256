//! Schedules: the `times` of a rule, windows of the week in wall-clock time
//! (`"mon-fri 08:00-15:30"`, `"sat,sun 10:00-12:00"`, `"fri 22:00-02:00"`).
//!
//! A window holds from its start (inclusive) to its end (exclusive), in the time zone of
//! [`crate::core::clock::Clock`]; an end at or before the start runs past midnight into the
//! next day, and the days name the day the window starts on. Because windows are wall-clock
//! times, `08:00` is 08:00 on both sides of a change to or from summer time; the hour a
//! spring change skips is simply never reached.

use std::fmt;

use std::net::IpAddr;

use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::Timestamp;

use crate::core::policy::{Decider, Decision, Facts, Policy, Rule};

/// Seconds in a day.
const DAY: u32 = 86_400;
/// Seconds in a week.
const WEEK: u32 = 7 * DAY;

/// One window: days of the week and a time span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Bit `d` set: the window starts on weekday `d` (Monday 0 … Sunday 6).
    days: u8,
    /// Seconds after midnight.
    start: u32,
    /// Seconds after midnight, up to 24:00; at or before `start`: the next day.
    end: u32,
    /// As written.
    text: String,
}

/// The `times` of a rule: it applies while any window holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    windows: Vec<Window>,
}

impl Schedule {
    /// Reads the windows as written in the configuration.
    pub fn parse<S: AsRef<str>>(texts: &[S]) -> Result<Schedule, String> {
        let windows = texts
            .iter()
            .map(|t| Window::parse(t.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Schedule { windows })
    }

    /// Whether some window holds at the wall-clock time `at`.
    pub fn contains(&self, at: DateTime) -> bool {
        self.windows.iter().any(|w| w.contains(at))
    }

    /// The wall-clock times, from `from` (inclusive) over the next `days` days, at which a
    /// window starts or ends: the only moments at which [`Schedule::contains`] can change.
    pub fn edges(&self, from: DateTime, days: i16) -> Vec<DateTime> {
        let mut edges = Vec::new();
        let first = from.date();
        for offset in -1..=days {
            let Ok(date) = first.checked_add(jiff::Span::new().days(offset)) else {
                continue;
            };
            for w in self.windows.iter().filter(|w| w.starts_on(date.weekday())) {
                if w.is_empty() {
                    continue;
                }
                let start = at_second(date, w.start);
                let end = if w.end <= w.start || w.end == DAY {
                    date.tomorrow().ok().map(|d| at_second(d, w.end % DAY))
                } else {
                    Some(at_second(date, w.end))
                };
                edges.push(start);
                edges.extend(end);
            }
        }
        edges.retain(|e| *e >= from);
        edges.sort();
        edges.dedup();
        edges
    }

    /// The windows as written, for messages.
    pub fn windows(&self) -> impl Iterator<Item = &str> {
        self.windows.iter().map(|w| w.text.as_str())
    }

    /// Windows that never hold (start equal to end), as written.
    pub fn empty_windows(&self) -> Vec<&str> {
        self.windows
            .iter()
            .filter(|w| w.is_empty())
            .map(|w| w.text.as_str())
            .collect()
    }

    /// Whether no window ever holds: the rule never applies.
    pub fn never(&self) -> bool {
        self.windows.iter().all(Window::is_empty)
    }

    /// Pairs of windows that hold at the same time somewhere in the week, as written.
    pub fn overlaps(&self) -> Vec<(&str, &str)> {
        let spans: Vec<Vec<(u32, u32)>> = self.windows.iter().map(Window::week_spans).collect();
        let mut pairs = Vec::new();
        for (i, a) in spans.iter().enumerate() {
            for (j, b) in spans.iter().enumerate().skip(i + 1) {
                let meet = a.iter().any(|x| b.iter().any(|y| x.0 < y.1 && y.0 < x.1));
                if meet {
                    pairs.push((self.windows[i].text.as_str(), self.windows[j].text.as_str()));
                }
            }
        }
        pairs
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, w) in self.windows.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(&w.text)?;
        }
        Ok(())
    }
}

impl Window {
    fn parse(text: &str) -> Result<Window, String> {
        let written = text.trim();
        let lower = written.to_ascii_lowercase();
        let (days, span) = match lower.rsplit_once(char::is_whitespace) {
            Some((days, span)) => (Some(days.trim()), Some(span)),
            // One word: days alone (the whole day) or a span alone (every day).
            None if lower.contains(':') => (None, Some(lower.as_str())),
            None => (Some(lower.as_str()), None),
        };
        let days = match days {
            Some(days) => parse_days(days).map_err(|e| format!("{written:?}: {e}"))?,
            None => 0x7f,
        };
        let (start, end) = match span {
            Some(span) => {
                let (start, end) = span.split_once('-').ok_or_else(|| {
                    format!("{written:?}: the times are a span, start-end (08:00-15:30)")
                })?;
                let start = parse_time(start).map_err(|e| format!("{written:?}: {e}"))?;
                let end = parse_time(end).map_err(|e| format!("{written:?}: {e}"))?;
                if start == DAY {
                    return Err(format!("{written:?}: a window cannot start at 24:00"));
                }
                (start, end)
            }
            None => (0, DAY),
        };
        Ok(Window {
            days,
            start,
            end,
            text: written.to_owned(),
        })
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn starts_on(&self, day: Weekday) -> bool {
        self.days & (1 << day.to_monday_zero_offset()) != 0
    }

    fn contains(&self, at: DateTime) -> bool {
        let t = at.time();
        let second = u32::from(t.hour().unsigned_abs()) * 3600
            + u32::from(t.minute().unsigned_abs()) * 60
            + u32::from(t.second().unsigned_abs());
        let day = at.weekday();
        if self.start < self.end {
            self.starts_on(day) && (self.start..self.end).contains(&second)
        } else if self.start > self.end {
            (self.starts_on(day) && second >= self.start)
                || (self.starts_on(day.previous()) && second < self.end)
        } else {
            false
        }
    }

    /// The spans of the week (seconds from Monday 00:00) the window holds, wrapped at the
    /// week's end.
    fn week_spans(&self) -> Vec<(u32, u32)> {
        let length = if self.is_empty() {
            return Vec::new();
        } else if self.end > self.start {
            self.end - self.start
        } else {
            DAY - self.start + self.end
        };
        let mut spans = Vec::new();
        for d in 0..7u32 {
            if self.days & (1 << d) == 0 {
                continue;
            }
            let from = d * DAY + self.start;
            let to = from + length;
            if to <= WEEK {
                spans.push((from, to));
            } else {
                spans.push((from, WEEK));
                spans.push((0, to - WEEK));
            }
        }
        spans
    }
}

fn at_second(date: Date, second: u32) -> DateTime {
    let time = Time::new(
        (second / 3600) as i8,
        (second / 60 % 60) as i8,
        (second % 60) as i8,
        0,
    )
    .unwrap_or(Time::midnight());
    date.to_datetime(time)
}

/// `mon-fri`, `sat,sun`, `fri-mon` (wrapping), `weekdays`, `weekend`, `daily`.
fn parse_days(text: &str) -> Result<u8, String> {
    let mut days = 0u8;
    for item in text.split(',').map(str::trim) {
        days |= match item {
            "daily" | "everyday" => 0x7f,
            "weekdays" => 0x1f,
            "weekend" | "weekends" => 0x60,
            _ => match item.split_once('-') {
                Some((from, to)) => {
                    let (from, to) = (day(from.trim())?, day(to.trim())?);
                    let mut bits = 0u8;
                    let mut d = from;
                    loop {
                        bits |= 1 << d;
                        if d == to {
                            break;
                        }
                        d = (d + 1) % 7;
                    }
                    bits
                }
                None => 1 << day(item)?,
            },
        };
    }
    Ok(days)
}

fn day(name: &str) -> Result<u8, String> {
    const NAMES: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    NAMES
        .iter()
        .position(|full| name.len() >= 3 && full.starts_with(name))
        .map(|d| d as u8)
        .ok_or_else(|| {
            format!("{name:?} is not a day: write mon, tue, wed, thu, fri, sat, sun, a range (mon-fri), weekdays, weekend or daily")
        })
}

/// `HH:MM` (or `HH:MM:SS`) from 00:00 to 24:00, in seconds after midnight.
fn parse_time(text: &str) -> Result<u32, String> {
    let bad = || format!("{text:?} is not a time of day: write HH:MM, 00:00 to 24:00");
    let mut parts = text.trim().split(':');
    let mut field = |most: u32, required: bool| -> Result<Option<u32>, String> {
        match parts.next() {
            None if !required => Ok(None),
            Some(p) if (1..=2).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) => {
                let n: u32 = p.parse().map_err(|_| bad())?;
                (n <= most).then_some(Some(n)).ok_or_else(bad)
            }
            _ => Err(bad()),
        }
    };
    let h = field(24, true)?.unwrap_or(0);
    let m = field(59, true)?.unwrap_or(0);
    let sec = field(59, false)?.unwrap_or(0);
    if parts.next().is_some() || text.trim().split(':').nth(1).is_some_and(|m| m.len() != 2) {
        return Err(bad());
    }
    let at = h * 3600 + m * 60 + sec;
    if at > DAY {
        return Err(bad());
    }
    Ok(at)
}

/// A policy over time: when the rules' `times` turn a decision.
impl Policy {
    /// The first moment within a week after `facts.at` at which the rules' `times`
    /// allow a request they refuse now; `None` when no rule has `times`, or none opens.
    pub fn opens_at(&self, facts: &Facts<'_>, addr: Option<IpAddr>) -> Option<Timestamp> {
        self.first_edge(
            facts,
            |_| true,
            |at| {
                let later = Facts { at, ..*facts };
                matches!(self.decide_now(&later, addr), Decision::Allow(_))
            },
        )
    }

    /// For a tunnel the policy allows now: the first moment within a week at which a rule with
    /// `times_cut` ends it, when it is cut: a `deny` rule whose window begins and refuses it,
    /// or the `allow` rule that let it through, whose window ends and leaves it refused.
    /// `None` when that happens to it nowhere within the week (ask again by then).
    pub fn closes_at(&self, facts: &Facts<'_>, addr: Option<IpAddr>) -> Option<Timestamp> {
        let allowed_by_cutting = match self.decide_now(facts, addr) {
            Decision::Allow(decider) => self.cuts(&decider),
            _ => return None,
        };
        self.first_edge(
            facts,
            |rule| rule.times_cut,
            |at| {
                let later = Facts { at, ..*facts };
                match self.decide_now(&later, addr) {
                    Decision::Deny(denial) => allowed_by_cutting || self.cuts(&denial.rule),
                    _ => false,
                }
            },
        )
    }

    /// Whether `decider` is a rule with `times` and `times_cut`.
    fn cuts(&self, decider: &Decider) -> bool {
        let Decider::Rule(name) = decider else {
            return false;
        };
        self.rules
            .iter()
            .any(|r| r.name == *name && r.times_cut && r.times.is_some())
    }

    /// Whether any rule cuts tunnels at the end of its window.
    pub fn cuts_tunnels(&self) -> bool {
        self.rules.iter().any(|r| r.times_cut && r.times.is_some())
    }

    /// The first edge of the `times` of the rules `chosen` picks, after `facts.at`, within a
    /// week, at which `holds`.
    fn first_edge(
        &self,
        facts: &Facts<'_>,
        chosen: impl Fn(&Rule) -> bool,
        holds: impl Fn(Timestamp) -> bool,
    ) -> Option<Timestamp> {
        let schedules: Vec<&Schedule> = self
            .rules
            .iter()
            .filter(|r| chosen(r))
            .filter_map(|r| r.times.as_deref())
            .collect();
        if schedules.is_empty() {
            return None;
        }
        let now = facts.at;
        let local = self.clock.local(now);
        let mut edges: Vec<Timestamp> = schedules
            .iter()
            .flat_map(|s| s.edges(local, 7))
            .map(|edge| self.clock.instant(edge))
            .filter(|edge| *edge > now)
            .collect();
        edges.sort();
        edges.dedup();
        edges.into_iter().find(|edge| holds(*edge))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime {
        text.parse().unwrap()
    }

    fn schedule(windows: &[&str]) -> Schedule {
        Schedule::parse(windows).unwrap()
    }

    #[test]
    fn a_window_holds_from_its_start_to_just_before_its_end() {
        // 2026-12-07 is a Monday.
        let school = schedule(&["mon-fri 08:00-15:30"]);
        assert!(!school.contains(at("2026-12-07T07:59:59")));
        assert!(school.contains(at("2026-12-07T08:00:00")));
        assert!(school.contains(at("2026-12-07T15:29:59")));
        assert!(!school.contains(at("2026-12-07T15:30:00")));
        assert!(school.contains(at("2026-12-11T12:00"))); // Friday
        assert!(!school.contains(at("2026-12-12T12:00"))); // Saturday
        assert!(!school.contains(at("2026-12-13T12:00"))); // Sunday
    }

    #[test]
    fn windows_past_midnight_and_around_the_week_end() {
        // Friday 22:00 to Saturday 02:00, and Sunday 23:00 to Monday 01:00.
        let late = schedule(&["fri 22:00-02:00", "sun 23:00-01:00"]);
        assert!(late.contains(at("2026-12-11T23:00"))); // Friday
        assert!(late.contains(at("2026-12-12T01:59:59"))); // Saturday morning
        assert!(!late.contains(at("2026-12-12T02:00")));
        assert!(!late.contains(at("2026-12-12T23:00"))); // Saturday night: not listed
        assert!(late.contains(at("2026-12-13T23:30"))); // Sunday
        assert!(late.contains(at("2026-12-14T00:30"))); // Monday: the week wraps
        assert!(!late.contains(at("2026-12-14T01:00")));
        assert!(!late.contains(at("2026-12-10T00:30"))); // Thursday: Wednesday not listed
                                                         // A day range that wraps, whole days and 24:00.
        let weekend = schedule(&["fri-mon"]);
        assert!(weekend.contains(at("2026-12-13T12:00")));
        assert!(weekend.contains(at("2026-12-14T12:00")));
        assert!(!weekend.contains(at("2026-12-15T12:00")));
        let evening = schedule(&["weekdays 21:00-24:00"]);
        assert!(evening.contains(at("2026-12-07T23:59:59")));
        assert!(!evening.contains(at("2026-12-08T00:00")));
        let every_day = schedule(&["12:00-13:00"]);
        assert!(every_day.contains(at("2026-12-13T12:30")));
    }

    #[test]
    fn edges_are_the_starts_and_ends_in_order() {
        let breaks = schedule(&["mon-fri 10:00-10:15", "fri 22:00-02:00"]);
        let edges = breaks.edges(at("2026-12-11T10:05"), 1); // Friday
        let shown: Vec<String> = edges.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            shown,
            [
                "2026-12-11T10:15:00",
                "2026-12-11T22:00:00",
                "2026-12-12T02:00:00"
            ]
        );
        // A window that began the day before still ends today.
        let edges = breaks.edges(at("2026-12-12T00:00"), 0);
        assert_eq!(edges, [at("2026-12-12T02:00")]);
    }

    #[test]
    fn written_mistakes_are_refused_with_the_window_named() {
        for (bad, says) in [
            ("mon-fri 8-15", "not a time"),
            ("mon-fri 08:00", "span"),
            ("funday 08:00-09:00", "not a day"),
            ("mon 25:00-26:00", "not a time"),
            ("mon 24:00-01:00", "24:00"),
            ("mon 08:60-09:00", "not a time"),
        ] {
            let err = Schedule::parse(&[bad]).unwrap_err();
            assert!(err.contains(bad) && err.contains(says), "{bad}: {err}");
        }
        assert!(Schedule::parse(&["Monday,Wed 08:00-09:00"]).is_ok());
        // Seconds, for windows that must end to the second.
        let exact = schedule(&["12:00:30-12:00:45"]);
        assert!(!exact.contains(at("2026-12-07T12:00:29")));
        assert!(exact.contains(at("2026-12-07T12:00:30")));
        assert!(!exact.contains(at("2026-12-07T12:00:45")));
        assert!(Schedule::parse(&["mon 24:00:01-01:00"]).is_err());
    }

    #[test]
    fn empty_overlapping_and_never_holding_windows_are_found() {
        let s = schedule(&["mon 10:00-10:00", "mon-fri 08:00-12:00", "mon 11:00-13:00"]);
        assert_eq!(s.empty_windows(), ["mon 10:00-10:00"]);
        assert_eq!(s.overlaps(), [("mon-fri 08:00-12:00", "mon 11:00-13:00")]);
        assert!(!s.never());
        assert!(schedule(&["sat 09:00-09:00"]).never());
        // Across the week's end: Sunday night into Monday meets Monday morning.
        let wrap = schedule(&["sun 23:00-02:00", "mon 01:00-03:00"]);
        assert_eq!(wrap.overlaps().len(), 1);
        assert!(schedule(&["mon 08:00-10:00", "mon 10:00-12:00"])
            .overlaps()
            .is_empty());
    }
}
