//! The access log on a disk that fills up, as a user meets it: the `portcullis` binary writes
//! its JSON log to a small tmpfs, mounted for the test (as root: skipped with one line
//! otherwise, failing when `CI=true`), and a filler file takes all its room. Every request is
//! still answered; the log holds whole records only; the records it lacks are exactly the
//! count in `/metrics`; the diagnostics say it once when it starts and once when it ends.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// The size of the disk: 64 pages.
const SIZE: &str = "256k";

/// A tmpfs mounted on a new directory, unmounted when dropped (also when the test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (after one line on stderr) when it cannot be mounted here and `CI` is not `true`.
    fn mount() -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={SIZE}"), "tmpfs"])
            .arg(dir.path())
            .output();
        let why = match mounted {
            Ok(out) if out.status.success() => return Some(Tmpfs { dir }),
            Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            Err(e) => format!("cannot run mount: {e}"),
        };
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but the full-disk test cannot mount a tmpfs: {why}"
        );
        eprintln!("skipped: mounting a tmpfs needs root: {why}");
        None
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A file that takes all the room left.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = [0u8; 4096];
        while file.write_all(&block).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(self.path()).status();
        if !unmounted.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        }
    }
}

/// The proxy's diagnostics so far, and more as they come.
struct Said {
    lines: Vec<String>,
    from: mpsc::Receiver<String>,
}

impl Said {
    fn take(&mut self) -> &[String] {
        self.lines.extend(self.from.try_iter());
        &self.lines
    }

    /// Waits up to `WAIT` for a line containing `needle`.
    async fn wait(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self.take().iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the diagnostics:\n{}",
                self.lines.join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn count(&mut self, needle: &str) -> usize {
        self.take().iter().filter(|l| l.contains(needle)).count()
    }
}

/// The address at the end of a line `… addr=IP:PORT`.
fn addr_in(line: &str) -> SocketAddr {
    line.rsplit("addr=").next().unwrap().trim().parse().unwrap()
}

/// The log's records (each line must be one whole JSON record), and whether it ends with a
/// line's end.
fn records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "a piece of a line at the end: {text}"
    );
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect()
}

async fn dropped(admin: SocketAddr) -> u64 {
    let metrics = Metrics::scrape(admin).await;
    metrics
        .value("portcullis_access_log_dropped_total", &[])
        .unwrap() as u64
}

/// Waits up to `WAIT` until the log's records and the dropped count add up to `sent`; the
/// records, and the count.
async fn wait_accounted(log: &Path, admin: SocketAddr, sent: u64) -> (Vec<Value>, u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (records, dropped) = (records(log), dropped(admin).await);
        if records.len() as u64 + dropped == sent {
            return (records, dropped);
        }
        assert!(
            Instant::now() < deadline,
            "{} records and {dropped} dropped of {sent} requests",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Requests `/n/N` of the proxy's own pages for each `N` of `numbers` (the log keeps no
/// query); each must be answered, with the page's `404`.
async fn visit(proxy: SocketAddr, numbers: std::ops::Range<u64>) {
    for n in numbers {
        let request = format!("GET /n/{n} HTTP/1.1\r\nHost: {proxy}\r\nConnection: close\r\n\r\n");
        assert_eq!(
            raw(proxy, request.as_bytes()).await.status,
            404,
            "request {n}"
        );
    }
}

#[tokio::test]
async fn a_full_disk_leaves_whole_records_counts_the_rest_and_warns_twice() {
    let Some(disk) = Tmpfs::mount() else {
        return;
    };
    let log = disk.path().join("access.log");
    let config = write_config(&format!(
        "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = {:?}\nformat = \"json\"\n",
        log.display().to_string()
    ));
    let mut running = Running::start(&["--config", config.path().to_str().unwrap()]);
    let mut said = Said {
        lines: Vec::new(),
        from: std::mem::replace(&mut running.stderr, mpsc::channel().1),
    };
    let admin = addr_in(&said.wait("admin listening").await);
    let proxy = addr_in(&said.wait(" listening addr=").await);

    visit(proxy, 0..3).await;
    wait_accounted(&log, admin, 3).await;

    // The disk fills up: a batch that is cut short, then one that gets nothing in. The
    // diagnostics say so once.
    let filler = disk.fill();
    visit(proxy, 3..23).await;
    said.wait("cannot write the access log").await;
    visit(proxy, 23..43).await;
    let (records_full, dropped_full) = wait_accounted(&log, admin, 43).await;
    assert!(dropped_full >= 20, "{dropped_full} dropped");
    assert!(records_full.len() >= 3);
    assert_eq!(
        said.count("cannot write the access log"),
        1,
        "{:#?}",
        said.lines
    );

    // Room again: the next records are written, and the diagnostics say how many were lost.
    std::fs::remove_file(filler).unwrap();
    visit(proxy, 43..53).await;
    let recovered = said.wait("the access log is written again").await;
    let (records, dropped) = wait_accounted(&log, admin, 53).await;
    assert_eq!(dropped, dropped_full, "nothing dropped once there is room");
    assert!(
        recovered.contains(&format!("dropped={dropped} ")),
        "{recovered}: {dropped} dropped"
    );
    // One line when it started and one when it ended: none per record, no summary (it lasted
    // less than a minute), no word of a queue that could not keep up.
    let warnings: Vec<&String> = said.take().iter().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");

    // The records there are the first ones, then the last ones, each once.
    let numbers: Vec<u64> = records
        .iter()
        .map(|r| {
            let url = r["url"].as_str().unwrap();
            let n = url.rsplit("/n/").next().unwrap();
            n.parse().unwrap_or_else(|_| panic!("{r}"))
        })
        .collect();
    let mut sorted = numbers.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(numbers, sorted, "in order, each once");
    for n in (0..3).chain(43..53) {
        assert!(numbers.contains(&n), "record {n} is missing: {numbers:?}");
    }
}
