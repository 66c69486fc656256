//! Byte budgets (`[[quotas]]`), as numbers and decisions: the sizes as written (`"2GiB"`),
//! the periods they count over (a local day, a week from Monday, a month from the 1st, each
//! computed through the [`Clock`] so that summer time is right), whose count a request
//! falls into (its client's address or its user), and the refusal of a request whose
//! budget is used up. Pure: the moment and the bytes used are passed in; counting them as
//! they move, and keeping them across restarts, is `crate::observe::budget`'s.

use std::fmt;
use std::sync::Arc;

use jiff::civil::{Date, DateTime};
use jiff::{Timestamp, ToSpan};

use crate::core::clock::Clock;
use crate::core::policy::{Decider, Denial, Facts, Rule};

/// How long a budget lasts before it starts again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    /// From local midnight to the next.
    Day,
    /// From Monday 00:00 to the next.
    Week,
    /// From the 1st of the month, 00:00, to the next 1st.
    Month,
}

impl Period {
    /// The word the configuration writes (`per = "day"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }

    /// Reads `per` as written.
    pub fn parse(text: &str) -> Result<Period, String> {
        match text {
            "day" => Ok(Period::Day),
            "week" => Ok(Period::Week),
            "month" => Ok(Period::Month),
            other => Err(format!(
                "{other:?} is not a period: write \"day\", \"week\" or \"month\""
            )),
        }
    }

    /// The local date the period holding `at` starts on.
    fn first_day(self, clock: &Clock, at: Timestamp) -> Date {
        let today = clock.local(at).date();
        match self {
            Period::Day => today,
            Period::Week => {
                let back = today.weekday().to_monday_zero_offset();
                today.checked_sub(i64::from(back).days()).unwrap_or(today)
            }
            Period::Month => today.first_of_month(),
        }
    }

    /// The first day of the period after the one starting on `first`.
    fn next_first_day(self, first: Date) -> Date {
        let next = match self {
            Period::Day => first.checked_add(1.day()),
            Period::Week => first.checked_add(7.days()),
            Period::Month => first.checked_add(1.month()),
        };
        next.unwrap_or(Date::MAX)
    }

    /// The period holding `at`: when it started and when it ends (local midnight, through
    /// the clock: a day with a change to or from summer time is 23 or 25 hours long).
    pub fn span(self, clock: &Clock, at: Timestamp) -> Span {
        let first = self.first_day(clock, at);
        let midnight =
            |date: Date| clock.instant(DateTime::from_parts(date, jiff::civil::Time::midnight()));
        Span {
            start: midnight(first),
            end: midnight(self.next_first_day(first)),
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One period of a budget: from `start` (counted) to `end` (the next one's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// When it started.
    pub start: Timestamp,
    /// When the next one starts: when the budget is full again.
    pub end: Timestamp,
}

/// Whose count a request goes into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyed {
    /// The client's address: each PC its own budget.
    Client,
    /// The logged-in user: a person's budget, whichever PC they use.
    User,
}

impl Keyed {
    /// The word the configuration writes (`key = "client"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Keyed::Client => "client",
            Keyed::User => "user",
        }
    }
}

/// One compiled `[[quotas]]` entry.
#[derive(Debug, Clone)]
pub struct Quota {
    /// Its name, shown in refusals, on the pages and in the metrics.
    pub name: Arc<str>,
    /// Which requests it counts: a rule's matchers (its action unused).
    pub matcher: Rule,
    /// The bytes each key may move in a period, both ways added up.
    pub bytes: u64,
    /// How long a budget lasts.
    pub per: Period,
    /// Whose count a request goes into.
    pub keyed: Keyed,
    /// Whether transfers under way are cut when the budget runs out (otherwise they finish,
    /// and the next request is refused).
    pub cut: bool,
}

impl Quota {
    /// The count `facts` go into, when this quota applies to them: the client's address, or
    /// the user (a request without a log-in is counted by its address).
    pub fn key(&self, facts: &Facts<'_>) -> Option<String> {
        if !self.matcher.matches(facts, None) {
            return None;
        }
        Some(key_of(self.keyed, facts.client, facts.user))
    }

    /// Whether this budget is a person's at `client` (logged in as `user`): its `clients`
    /// and `users` conditions name them (its hosts, ports and methods say which of their
    /// requests count).
    pub fn concerns(&self, client: std::net::IpAddr, user: Option<&str>) -> bool {
        let client = client.to_canonical();
        let m = &self.matcher;
        m.clients
            .as_ref()
            .is_none_or(|nets| nets.iter().any(|n| n.contains(&client)))
            && m.users
                .as_ref()
                .is_none_or(|users| user.is_some_and(|u| users.iter().any(|x| x == u)))
    }

    /// Refuses a request when `used` bytes of this budget are used up in the period
    /// holding `now`.
    pub fn check(&self, used: u64, clock: &Clock, now: Timestamp) -> Result<(), Denial> {
        if used < self.bytes {
            return Ok(());
        }
        let resets = self.per.span(clock, now).end;
        Err(Denial {
            rule: Decider::Quota(self.name.clone()),
            reason: format!(
                "quota \"{}\" used {} of {}; resets {}",
                self.name,
                human_bytes(used),
                human_bytes(self.bytes),
                clock.show(resets, now)
            ),
        })
    }
}

/// The key of a count: the user's name when the quota is per user and one logged in, else
/// the client's address as the proxy writes it.
pub fn key_of(keyed: Keyed, client: std::net::IpAddr, user: Option<&str>) -> String {
    match (keyed, user) {
        (Keyed::User, Some(user)) => user.to_owned(),
        _ => client.to_canonical().to_string(),
    }
}

/// What one budget stands at, for the pages, the metrics and the reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// The quota's name.
    pub quota: Arc<str>,
    /// Whose count: an address or a user name.
    pub key: String,
    /// Bytes used in this period.
    pub used: u64,
    /// The budget.
    pub bytes: u64,
    /// The period.
    pub per: Period,
    /// When the budget is full again.
    pub resets: Timestamp,
}

impl Standing {
    /// Bytes still to use (none once over).
    pub fn left(&self) -> u64 {
        self.bytes.saturating_sub(self.used)
    }
}

/// A budget as written (`"2GiB"`, `"500MB"`, `"1.5GiB"`, `"65536"`), in bytes: `k`, `M`, `G`,
/// `T` are powers of 1000, `Ki`, `Mi`, `Gi`, `Ti` of 1024. At least 1 KiB.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let bad = || {
        format!("\"{text}\" is not an amount of bytes: write e.g. \"2GiB\", \"500MB\" or \"64KiB\"")
    };
    let t = text.trim();
    let unit_at = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(unit_at);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let scale: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let bytes = number * scale;
    if !bytes.is_finite() || !(1024.0..=1e18).contains(&bytes) {
        return Err(format!(
            "\"{text}\" is out of range: a budget is between 1 KiB and 1000 PB"
        ));
    }
    Ok(bytes.round() as u64)
}

/// `512 B`, `1.5 KiB`, `3.2 GiB`: bytes as the pages, refusals and reports show them.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::policy::{Action, Kind};
    use crate::core::target::Host;

    fn amsterdam() -> Clock {
        Clock::named("Europe/Amsterdam").unwrap()
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn periods_start_at_local_midnight_on_monday_and_on_the_first() {
        let clock = amsterdam();
        // Thursday 2026-12-03, 20:15 in Amsterdam (CET, +01:00).
        let now = at("2026-12-03T19:15:00Z");
        let day = Period::Day.span(&clock, now);
        assert_eq!(day.start, at("2026-12-02T23:00:00Z"));
        assert_eq!(day.end, at("2026-12-03T23:00:00Z"));
        let week = Period::Week.span(&clock, now);
        assert_eq!(week.start, at("2026-11-29T23:00:00Z"), "Monday 30 November");
        assert_eq!(week.end, at("2026-12-06T23:00:00Z"));
        let month = Period::Month.span(&clock, now);
        assert_eq!(month.start, at("2026-11-30T23:00:00Z"));
        assert_eq!(month.end, at("2026-12-31T23:00:00Z"));
        // Just before and at midnight: the old day, then the new one.
        assert_eq!(
            Period::Day.span(&clock, at("2026-12-03T22:59:59Z")).end,
            at("2026-12-03T23:00:00Z")
        );
        assert_eq!(
            Period::Day.span(&clock, at("2026-12-03T23:00:00Z")).start,
            at("2026-12-03T23:00:00Z")
        );
        // A Monday is the first day of its own week.
        assert_eq!(
            Period::Week.span(&clock, at("2026-11-30T10:00:00Z")).start,
            at("2026-11-29T23:00:00Z")
        );
    }

    #[test]
    fn a_day_with_a_summer_time_change_is_23_or_25_hours() {
        let clock = amsterdam();
        let spring = Period::Day.span(&clock, at("2026-03-29T12:00:00Z"));
        assert_eq!(
            (spring.end.as_second() - spring.start.as_second()) / 3600,
            23
        );
        let autumn = Period::Day.span(&clock, at("2026-10-25T12:00:00Z"));
        assert_eq!(
            (autumn.end.as_second() - autumn.start.as_second()) / 3600,
            25
        );
    }

    #[test]
    fn budgets_read_as_written() {
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("64KiB"), Ok(64 << 10));
        assert_eq!(parse_bytes("1.5 GiB"), Ok(3 << 29));
        assert_eq!(parse_bytes("500MB"), Ok(500_000_000));
        assert_eq!(parse_bytes("65536"), Ok(65536));
        assert!(parse_bytes("2 gigs").unwrap_err().contains("not an amount"));
        assert!(parse_bytes("10").unwrap_err().contains("out of range"));
        assert_eq!(human_bytes(2 << 30), "2.0 GiB");
        assert_eq!(human_bytes(1023), "1023 B");
    }

    fn quota() -> Quota {
        Quota {
            name: "kids".into(),
            matcher: Rule {
                name: "kids".into(),
                clients: Some(vec!["10.0.0.0/24".parse().unwrap()]),
                users: None,
                groups: None,
                hosts: None,
                list: None,
                ports: None,
                methods: None,
                times: None,
                times_cut: false,
                action: Action::Deny,
            },
            bytes: 2 << 30,
            per: Period::Day,
            keyed: Keyed::Client,
            cut: false,
        }
    }

    #[test]
    fn a_used_up_budget_refuses_naming_the_quota_and_when_it_resets() {
        let q = quota();
        let clock = amsterdam();
        // Wednesday 2026-12-02, 15:00 local: resets at Thursday's midnight.
        let now = at("2026-12-02T14:00:00Z");
        assert!(q.check((2 << 30) - 1, &clock, now).is_ok());
        let refused = q.check(2 << 30, &clock, now).unwrap_err();
        assert_eq!(refused.rule, "quota \"kids\"");
        assert_eq!(
            refused.reason,
            "quota \"kids\" used 2.0 GiB of 2.0 GiB; resets Thu 00:00"
        );
    }

    #[test]
    fn the_key_is_the_address_or_the_user_and_only_matching_requests_count() {
        let mut q = quota();
        let host = Host::Name("example.com".into());
        let facts = |client: &str, user: Option<&'static str>| Facts {
            client: client.parse().unwrap(),
            user,
            groups: &[],
            method: "GET",
            kind: Kind::Http,
            host: &host,
            port: 80,
            at: Timestamp::UNIX_EPOCH,
        };
        assert_eq!(q.key(&facts("10.0.0.5", None)).as_deref(), Some("10.0.0.5"));
        assert_eq!(
            q.key(&facts("::ffff:10.0.0.5", Some("ann"))).as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(q.key(&facts("10.0.1.5", None)), None);
        q.keyed = Keyed::User;
        assert_eq!(
            q.key(&facts("10.0.0.5", Some("ann"))).as_deref(),
            Some("ann")
        );
    }
}
