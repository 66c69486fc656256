//! Rules with `times`: refused inside the window and allowed outside it, the refusal saying
//! when access opens; `explain --at` at the edges and across a change to summer time; tunnels
//! cut when a `times_cut` window turns, and left to run without it.
//!
//! Windows of the live tests are written around the current time in UTC (`[clock] timezone =
//! "UTC"`), to the second.

use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// The time of day in UTC `offset` from now, as a window writes it (`HH:MM:SS`).
fn utc_in(now: Timestamp, offset: i64) -> String {
    let at = now + SignedDuration::from_secs(offset);
    at.to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .strftime("%H:%M:%S")
        .to_string()
}

/// A rule in TOML.
fn rule(name: &str, condition: &str, times: &str, cut: bool) -> String {
    format!(
        "[[rules]]\nname = \"{name}\"\n{condition}\ntimes = [\"{times}\"]\ntimes_cut = {cut}\naction = \"deny\"\n"
    )
}

#[tokio::test]
async fn a_rule_refuses_inside_its_window_only_and_says_when_access_opens() {
    let origin = HttpOrigin::start().await;
    let now = Timestamp::now();
    // "localhost" is refused from an hour ago to two hours ahead; 127.0.0.1 only later today.
    let open_at = utc_in(now, 7200);
    let config = format!(
        "{}[clock]\ntimezone = \"UTC\"\n{}{}",
        loopback_config(&[origin.addr.port()], &[]),
        rule(
            "homework",
            "hosts = [\"localhost\"]",
            &format!("daily {}-{open_at}", utc_in(now, -3600)),
            false
        ),
        rule(
            "later",
            "hosts = [\"127.0.0.1\"]",
            &format!("daily {}-{}", utc_in(now, 3 * 3600), utc_in(now, 4 * 3600)),
            false
        ),
    );
    let proxy = Proxy::start(&config).await;
    let refused = get(
        proxy.addr,
        &format!("http://localhost:{}/", origin.addr.port()),
    )
    .await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    let page = refused.text();
    assert!(page.contains("homework"), "{page}");
    // The refusal says when: the window's end, to the minute.
    assert!(
        page.contains("allowed from") && page.contains(&open_at[..5]),
        "{page}"
    );
    let allowed = get(
        proxy.addr,
        &format!("http://127.0.0.1:{}/", origin.addr.port()),
    )
    .await;
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    let records = proxy.wait_records(2).await;
    assert_eq!(records[0].rule, "rule \"homework\"");
    assert!(
        records[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("allowed from")),
        "{:?}",
        records[0]
    );
}

#[test]
fn explain_at_decides_by_the_wall_clock_of_the_configured_zone() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        "[clock]\ntimezone = \"Europe/Amsterdam\"\n\
         [[rules]]\nname = \"school-hours\"\nhosts = [\"games.test\"]\ntimes = [\"mon-fri 08:00-15:30\"]\naction = \"deny\"\n\
         [[rules]]\nname = \"breakfast\"\nhosts = [\"news.test\"]\ntimes = [\"daily 08:00-09:00\"]\naction = \"deny\"\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let explain = |at: &str, url: &str| {
        let ran = portcullis(
            &[
                "explain",
                "--config",
                config,
                "--client",
                "127.0.0.1",
                "--at",
                at,
                "GET",
                url,
            ],
            "",
        );
        let out = String::from_utf8_lossy(&ran.stdout).into_owned() + &ran.stderr;
        (ran.status.code(), out)
    };
    // 2026-12-07 is a Monday.
    let (code, out) = explain("2026-12-07T15:29:59", "http://games.test/");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("school-hours"), "{out}");
    assert!(out.contains("allowed from Mon 15:30"), "{out}");
    assert!(
        out.contains("Mon 2026-12-07 15:29:59 (Europe/Amsterdam)"),
        "{out}"
    );
    let (code, out) = explain("2026-12-07T15:30:00", "http://games.test/");
    assert_eq!(code, Some(0), "{out}");
    // Friday evening: the window opens again on Monday.
    let (code, out) = explain("2026-12-11T10:00", "http://games.test/");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("allowed from Fri 15:30"), "{out}");
    let (code, out) = explain("2026-12-12T10:00", "http://games.test/");
    assert_eq!(code, Some(0), "{out}");

    // Summer time begins in Amsterdam on 2026-03-29 (02:00 CET becomes 03:00 CEST): 08:30 is
    // 07:30 UTC the day before, and 06:30 UTC that day.
    for (at, refused) in [
        ("2026-03-28T07:30:00Z", true),
        ("2026-03-29T06:30:00Z", true),
        ("2026-03-29T07:30:00Z", false),
        ("2026-03-29T08:30:00+02:00", true),
    ] {
        let (code, out) = explain(at, "http://news.test/");
        assert_eq!(code, Some(if refused { 1 } else { 0 }), "{at}: {out}");
    }

    let (code, out) = explain("tomorrow", "http://games.test/");
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("--at") && out.contains("not a time"), "{out}");
}

#[tokio::test]
async fn a_times_cut_window_cuts_open_tunnels_and_others_run_on() {
    let (cut, kept) = (echo_origin().await, echo_origin().await);
    let now = Timestamp::now();
    // Both windows begin two seconds from now and last an hour.
    let window = format!("daily {}-{}", utc_in(now, 2), utc_in(now, 3600));
    let config = format!(
        "{}[clock]\ntimezone = \"UTC\"\n{}{}",
        loopback_config(&[], &[cut.port(), kept.port()]),
        rule(
            "bedtime",
            &format!("ports = [{}]", cut.port()),
            &window,
            true
        ),
        rule(
            "bedtime-soft",
            &format!("ports = [{}]", kept.port()),
            &window,
            false
        ),
    );
    let proxy = Proxy::start(&config).await;
    let (answer, mut cut_tunnel) = connect(proxy.addr, &cut.to_string()).await;
    assert_eq!(answer.status, 200);
    let (answer, mut kept_tunnel) = connect(proxy.addr, &kept.to_string()).await;
    assert_eq!(answer.status, 200);
    for tunnel in [&mut cut_tunnel, &mut kept_tunnel] {
        assert_eq!(echo(tunnel, b"before").await, b"before");
    }

    let started = Instant::now();
    assert!(
        closes_within(&mut cut_tunnel, Duration::from_secs(8)).await,
        "the tunnel was not cut when its window began"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "cut before the window began"
    );
    // The other tunnel runs on inside its window; a new one is refused.
    assert_eq!(echo(&mut kept_tunnel, b"after").await, b"after");
    let (answer, _) = connect(proxy.addr, &kept.to_string()).await;
    assert_eq!(answer.status, 403, "{}", answer.text());
    assert!(answer.text().contains("bedtime-soft"), "{}", answer.text());

    let records = proxy.wait_records(2).await;
    let cut_record = records
        .iter()
        .find(|r| r.port == cut.port() && r.status == 200)
        .expect("the cut tunnel's record");
    let reason = cut_record.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("cut at") && reason.contains("rule \"bedtime\""),
        "{cut_record:?}"
    );
    assert_eq!(cut_record.bytes_up, 6);
    drop(kept_tunnel);
}

/// Sends `bytes` through an echoing tunnel and reads them back.
async fn echo(tunnel: &mut tokio::net::TcpStream, bytes: &[u8]) -> Vec<u8> {
    tunnel.write_all(bytes).await.unwrap();
    let mut back = vec![0; bytes.len()];
    tokio::time::timeout(WAIT, tunnel.read_exact(&mut back))
        .await
        .expect("the echo within the bound")
        .expect("the echo");
    back
}
