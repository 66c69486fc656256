//! Sharing the link, as numbers: rates as written in the configuration, the token bucket
//! that holds a flow to its rate, and the weighted max-min fair share of a link among the
//! clients that use it. Pure: the clock is passed in, nothing waits here (the data path
//! does, `crate::proxy::shaper`).

use std::time::{Duration, Instant};

/// A rate as written (`"100Mbit/s"`, `"5MB/s"`, `"512KiB/s"`, `"800kbit/s"`), in bytes per
/// second. Bits and bytes are told apart by `bit` and `B`; `k`, `M`, `G` are powers of
/// 1000, `Ki`, `Mi`, `Gi` of 1024. At least 1 kB/s, so that a bucket never waits for ever.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "\"{text}\" is not a rate: write a number and a unit such as \"100Mbit/s\", \"5MB/s\" or \"512KiB/s\""
        )
    };
    let t = text.trim();
    let unit_at = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let (number, unit) = t.split_at(unit_at);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let unit = unit.trim();
    let unit = unit
        .strip_suffix("/s")
        .or_else(|| unit.strip_suffix("ps"))
        .ok_or_else(bad)?;
    let (prefix, bits) = if let Some(p) = unit.strip_suffix("bit") {
        (p, true)
    } else if let Some(p) = unit.strip_suffix('b') {
        // `Mbps`: bits, as the networking world writes them.
        (p, true)
    } else if let Some(p) = unit.strip_suffix('B') {
        (p, false)
    } else {
        return Err(bad());
    };
    let scale: f64 = match prefix {
        "" => 1.0,
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let bytes = number * scale / if bits { 8.0 } else { 1.0 };
    if !bytes.is_finite() || !(1000.0..=1e13).contains(&bytes) {
        return Err(format!(
            "\"{text}\" is out of range: a rate is between 1 kB/s (8kbit/s) and 10 TB/s"
        ));
    }
    Ok(bytes as u64)
}

/// A size as written (`"256KiB"`, `"1MB"`, `"65536"`), in bytes: at least 1 KiB, at most 1 GiB.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("\"{text}\" is not a size: write e.g. \"256KiB\", \"1MB\" or \"65536\"");
    let t = text.trim();
    let unit_at = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(unit_at);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1000,
        "MB" => 1_000_000,
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        _ => return Err(bad()),
    };
    let bytes = number.saturating_mul(scale);
    if !(1024..=1 << 30).contains(&bytes) {
        return Err(format!(
            "\"{text}\" is out of range: a burst is between 1 KiB and 1 GiB"
        ));
    }
    Ok(bytes)
}

/// A rate (`size` false) or a size (`size` true) as written, as a number of bytes (per second).
pub fn parse_amount(text: &str, size: bool) -> Result<f64, String> {
    let read = if size {
        parse_size(text)
    } else {
        parse_rate(text)
    };
    read.map(|v| v as f64)
}

/// `12.5 MB/s`, `800 kB/s`: a rate as the status page and `explain` show it.
pub fn show_rate(bytes_per_second: f64) -> String {
    let (value, unit) = if bytes_per_second >= 1e9 {
        (bytes_per_second / 1e9, "GB/s")
    } else if bytes_per_second >= 1e6 {
        (bytes_per_second / 1e6, "MB/s")
    } else if bytes_per_second >= 1e3 {
        (bytes_per_second / 1e3, "kB/s")
    } else {
        (bytes_per_second, "B/s")
    };
    if value >= 100.0 {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.1} {unit}")
    }
}

/// A token bucket that may go into debt: a flow sends what it has, is charged for it, and
/// waits before its next send until the bucket is out of debt. Waiting after the send keeps
/// the data path simple (a body frame or a `splice` is never split) and the average exact.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// Bytes per second.
    rate: f64,
    /// The most it holds: what a flow may send at once after a pause.
    burst: f64,
    /// What it holds now (negative: in debt).
    level: f64,
    /// When `level` was last brought up to date.
    at: Instant,
}

impl Bucket {
    /// A full bucket of `burst` bytes filling at `rate` bytes per second.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Bucket {
            rate: rate.max(1.0),
            burst: burst.max(1.0),
            level: burst.max(1.0),
            at: now,
        }
    }

    /// Its rate, bytes per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Fills at `rate` from now on (what it holds is kept, up to the burst).
    pub fn set_rate(&mut self, rate: f64, burst: f64, now: Instant) {
        self.refill(now);
        self.rate = rate.max(1.0);
        self.burst = burst.max(1.0);
        self.level = self.level.min(self.burst);
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * self.rate).min(self.burst);
        self.at = now;
    }

    /// Takes `n` bytes; answers how long to wait before sending more (zero when the bucket
    /// is not in debt).
    pub fn charge(&mut self, n: u64, now: Instant) -> Duration {
        self.refill(now);
        self.level -= n as f64;
        self.debt_wait()
    }

    /// Whether it is full: a new bucket of the same rate and burst would be the same.
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.level >= self.burst
    }

    /// How long until the bucket is out of debt, at its rate.
    pub fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        self.debt_wait()
    }

    fn debt_wait(&self) -> Duration {
        if self.level >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((-self.level / self.rate).min(60.0))
        }
    }
}

/// The bucket size for a rate when none is written: a tenth of a second of it, at least 16 KiB
/// (one body frame or pipe-load goes through at once).
pub fn default_burst(rate: f64) -> f64 {
    (rate / 10.0).max(16.0 * 1024.0)
}

/// One client's claim on the link, for [`fair_shares`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Claim {
    /// Its weight (1 unless `[shaping.weights]` says otherwise).
    pub weight: f64,
    /// What it would use, bytes per second; `f64::INFINITY` for a client held back by its
    /// share (it would take more).
    pub demand: f64,
}

/// Weighted max-min fair shares of `capacity` bytes per second: a client that wants less
/// than its weighted share gets what it wants, and what it leaves is shared among the
/// others by weight (work-conserving). The shares sum to at most `capacity`.
pub fn fair_shares(capacity: f64, claims: &[Claim]) -> Vec<f64> {
    let mut shares = vec![0.0; claims.len()];
    let mut order: Vec<usize> = (0..claims.len()).collect();
    // Those who want least per unit of weight are satisfied first.
    order.sort_by(|&a, &b| {
        let per = |c: &Claim| c.demand / c.weight.max(f64::MIN_POSITIVE);
        per(&claims[a]).total_cmp(&per(&claims[b]))
    });
    let mut left = capacity.max(0.0);
    let mut weight_left: f64 = claims.iter().map(|c| c.weight.max(0.0)).sum();
    for i in order {
        let claim = claims[i];
        let weight = claim.weight.max(0.0);
        if weight_left <= 0.0 {
            break;
        }
        let fair = left * weight / weight_left;
        let share = claim.demand.max(0.0).min(fair);
        shares[i] = share;
        left -= share;
        weight_left -= weight;
    }
    shares
}

/// One active client, as the status page and the metrics show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClientRate {
    /// The client's address, or `user:NAME`.
    pub client: String,
    /// Bytes per second towards it, over the last recompute's span.
    pub down: f64,
    /// From it.
    pub up: f64,
    /// Its share of the link towards it now, bytes per second (when shaped).
    pub share_down: Option<f64>,
    /// From it.
    pub share_up: Option<f64>,
    /// The caps (`[[limits.rate]]` names) holding its transfers now, in configuration order.
    #[serde(default)]
    pub caps: Vec<String>,
}

/// One minute of the link's use: bytes each client moved (both ways), busiest first.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LinkMinute {
    /// How many minutes ago it began (0: the minute under way).
    pub minutes_ago: u32,
    /// Bytes by client (its address, or `user:NAME`).
    pub clients: Vec<(String, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_read_in_bits_and_bytes() {
        for (text, bytes) in [
            ("100Mbit/s", 12_500_000),
            ("40Mbit/s", 5_000_000),
            ("8Mbit/s", 1_000_000),
            ("5MB/s", 5_000_000),
            ("512KiB/s", 524_288),
            ("800kbit/s", 100_000),
            ("1.5 Gbit/s", 187_500_000),
            ("20Mbps", 2_500_000),
            ("2MiB/s", 2_097_152),
        ] {
            assert_eq!(parse_rate(text), Ok(bytes), "{text}");
        }
        for text in [
            "", "fast", "100", "100Mbit", "5 MB", "1 xB/s", "0Mbit/s", "7bit/s",
        ] {
            assert!(parse_rate(text).is_err(), "{text}");
        }
        assert_eq!(parse_size("256KiB"), Ok(262_144));
        assert_eq!(parse_size("65536"), Ok(65_536));
        assert!(parse_size("12").is_err() && parse_size("5 parsecs").is_err());
    }

    #[test]
    fn a_bucket_holds_a_flow_to_its_rate_on_average() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1_000_000.0, 16_384.0, t0);
        // A flow that sends 64 KiB, waits as told, and sends again: 10 s of it.
        let mut now = t0;
        let mut sent = 0u64;
        while now < t0 + Duration::from_secs(10) {
            sent += 65_536;
            now += b.charge(65_536, now);
        }
        let rate = sent as f64 / now.duration_since(t0).as_secs_f64();
        assert!((rate - 1_000_000.0).abs() < 20_000.0, "{rate}");
        // After a pause it may send its burst at once, no more.
        let later = now + Duration::from_secs(5);
        assert_eq!(b.charge(16_384, later), Duration::ZERO);
        assert!(b.charge(1_000, later) > Duration::ZERO);
    }

    #[test]
    fn fair_shares_are_max_min_and_work_conserving() {
        let greedy = |weight| Claim {
            weight,
            demand: f64::INFINITY,
        };
        let light = |demand| Claim {
            weight: 1.0,
            demand,
        };
        assert_eq!(fair_shares(100.0, &[greedy(1.0)]), [100.0]);
        assert_eq!(
            fair_shares(100.0, &[greedy(1.0), greedy(1.0)]),
            [50.0, 50.0]
        );
        let weighted = fair_shares(90.0, &[greedy(2.0), greedy(1.0)]);
        assert!((weighted[0] - 60.0).abs() < 1e-9 && (weighted[1] - 30.0).abs() < 1e-9);
        // A light client gets what it wants; the greedy one the rest.
        assert_eq!(
            fair_shares(100.0, &[light(10.0), greedy(1.0)]),
            [10.0, 90.0]
        );
        assert_eq!(
            fair_shares(100.0, &[greedy(1.0), light(10.0), light(70.0)]),
            [45.0, 10.0, 45.0]
        );
        assert!(fair_shares(100.0, &[]).is_empty());
    }
}
