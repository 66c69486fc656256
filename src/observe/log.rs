//! The access log: each [`AccessRecord`] as one line, in Squid's native format, the Common
//! Log Format or JSON, written to stdout or a file.
//!
//! Lines are formatted on the request path and handed to a writer thread through a bounded
//! queue, so a slow or full disk never blocks a request: when the queue is full the line is
//! dropped and counted, and the count is reported in the diagnostics and in `/metrics`. The
//! writer takes the queued lines every 100 ms (at once when many wait) and writes them in one
//! go, so logging costs a request no system call and no thread wake-up. When a write fails
//! (a full disk) the file keeps whole lines only and the lines that did not get in are
//! counted exactly, with one warning when it starts, one a minute while it lasts and one when
//! it ends (`Writer`).
//! SIGUSR1 (or [`AccessLog::reopen`]) makes the writer reopen the file, for `logrotate`.
//!
//! The formats, field by field, are in the book (docs/src/access-log.md); [`crate::ops::report`] reads them back.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::core::error::ErrorKind;
use crate::core::policy::{Builtin, Decider};
use crate::observe::access::{AccessRecord, AccessSink, Verdict};

pub use crate::config::{Destination, Format};

/// Lines waiting for the writer at most; past it lines are dropped and counted.
pub const QUEUE_LINES: usize = 16_384;

/// Lines that make the writer start at once; fewer wait for its next round.
const WAKE_LINES: usize = 512;

/// How long a line may wait before the writer takes it.
const ROUND: Duration = Duration::from_millis(100);

/// What waits for the writer: formatted lines, and requests for it.
#[derive(Default)]
struct Pending {
    text: Vec<u8>,
    lines: usize,
    acks: Vec<std::sync::mpsc::Sender<()>>,
    reopen: bool,
    closed: bool,
}

/// The queue between the request path and the writer thread.
#[derive(Default)]
struct Queue {
    pending: Mutex<Pending>,
    wake: Condvar,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        crate::core::sync::lock(&self.pending)
    }
}

/// The access log sink.
///
/// Appending a line takes one short lock and, most of the time, no system call: the writer
/// thread collects lines every `ROUND` (or at once when many wait) and writes them together.
pub struct AccessLog {
    format: Format,
    queue: Arc<Queue>,
    dropped: Arc<AtomicU64>,
    names: Arc<dyn Fn(std::net::IpAddr) -> Option<String> + Send + Sync>,
}

impl AccessLog {
    /// Starts the writer thread for `destination`. `dropped` counts lines lost to a full
    /// queue (shared with the statistics); `names` gives a client's friendly name.
    pub fn start(
        destination: Destination,
        format: Format,
        dropped: Arc<AtomicU64>,
        names: Arc<dyn Fn(std::net::IpAddr) -> Option<String> + Send + Sync>,
    ) -> io::Result<Option<AccessLog>> {
        let out = match &destination {
            Destination::Off => return Ok(None),
            Destination::Stdout => Out::stdout(),
            Destination::File(path) => Out::of(open(path)?),
        };
        let queue = Arc::new(Queue::default());
        let writer = Writer::new(destination, out, dropped.clone());
        let for_writer = queue.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run(&for_writer))?;
        Ok(Some(AccessLog {
            format,
            queue,
            dropped,
            names,
        }))
    }

    /// Asks the writer to reopen its file (after `logrotate` moved it).
    pub fn reopen(&self) {
        self.queue.lock().reopen = true;
        self.queue.wake.notify_one();
    }

    /// Writes every queued line out; waits at most `limit` (for the proxy's exit).
    pub fn flush(&self, limit: Duration) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.queue.lock().acks.push(tx);
        self.queue.wake.notify_one();
        let _ = rx.recv_timeout(limit);
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.wake.notify_one();
    }
}

impl AccessSink for AccessLog {
    fn record(&self, record: &AccessRecord) {
        // Only the JSON format carries the client's name.
        let name = match self.format {
            Format::Json => (self.names)(record.client.ip()),
            Format::Squid | Format::Common => None,
        };
        // JSON is written straight into the queue; the other formats are built first.
        let line = match self.format {
            Format::Json => None,
            Format::Squid | Format::Common => Some(format_line(self.format, record, None)),
        };
        let mut pending = self.queue.lock();
        if pending.lines >= QUEUE_LINES {
            drop(pending);
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // Said at once (the writer may be the one stuck), then at 2, 4, 8 … drops.
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, "the access log cannot keep up: records dropped");
            }
            return;
        }
        match line {
            Some(line) => pending.text.extend_from_slice(line.as_bytes()),
            None => write_json(&mut pending.text, record, name.as_deref()),
        }
        pending.lines += 1;
        if pending.lines == WAKE_LINES {
            drop(pending);
            self.queue.wake.notify_one();
        }
    }
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))
}

/// How often, at most, the diagnostics say that the log still cannot be written.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Where the writer's lines go.
trait Output: Sized + Send {
    /// Writes some of `bytes`, as [`Write::write`] does.
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize>;
    /// Whether [`Output::take_back`] can work here.
    fn can_take_back(&self) -> bool;
    /// Removes the last `bytes` bytes written.
    fn take_back(&mut self, bytes: u64) -> io::Result<()>;
    /// The output on the file at `path`, opened again (after rotation).
    fn reopen(&self, path: &Path) -> io::Result<Self>;
}

/// The log's destination as the writer has it.
enum Out {
    /// A regular file: what a failed write left of a line can be cut off again.
    File(File),
    /// Anything else (a pipe, a terminal, `/dev/full`): what is written stays.
    Stream(Box<dyn Write + Send>),
}

impl Out {
    fn of(file: File) -> Out {
        match file.metadata() {
            Ok(meta) if meta.is_file() => Out::File(file),
            _ => Out::Stream(Box::new(file)),
        }
    }

    /// Standard output; a file of its own (a copy of the descriptor) where it can be, so
    /// that stdout sent to a file (`>>`, systemd's `StandardOutput=append:`) is cut back as
    /// a log file is.
    fn stdout() -> Out {
        #[cfg(unix)]
        if let Ok(fd) = std::os::fd::AsFd::as_fd(&io::stdout()).try_clone_to_owned() {
            return Out::of(File::from(fd));
        }
        Out::Stream(Box::new(io::stdout()))
    }
}

impl Output for Out {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Out::File(file) => file.write(bytes),
            Out::Stream(stream) => stream.write(bytes),
        }
    }

    fn can_take_back(&self) -> bool {
        matches!(self, Out::File(_))
    }

    fn take_back(&mut self, bytes: u64) -> io::Result<()> {
        let Out::File(file) = self else {
            return Err(io::ErrorKind::Unsupported.into());
        };
        // After a write the file's position is the end of what was written (the end of the
        // file, for a file opened to append).
        let end = file.stream_position()?;
        let keep = end
            .checked_sub(bytes)
            .ok_or_else(|| io::Error::other("the access log is shorter than what was written"))?;
        file.set_len(keep)?;
        // A file not opened to append (stdout sent with `>`) writes at its position.
        file.seek(SeekFrom::Start(keep))?;
        Ok(())
    }

    fn reopen(&self, path: &Path) -> io::Result<Out> {
        open(path).map(Out::of)
    }
}

/// A time when lines cannot be written: from a failed write to the next batch written whole.
struct Outage {
    began: Instant,
    /// Lines dropped since it began.
    total: u64,
    /// Lines dropped since the diagnostics last said how many.
    unsaid: u64,
    /// When the next summary is due.
    summary_at: Instant,
}

/// The writer thread's state.
///
/// A batch of lines is written with one `write` (more only when the output takes part of
/// it). When a write fails (a full disk), the lines of the batch that got in whole stay and
/// the others are dropped and counted. Of a line cut short, what got into a file is cut off
/// again; a stream (a pipe, a terminal) gets the rest of the line first when it takes bytes
/// again, and the line counts as dropped until then. So the output holds whole lines only,
/// and `dropped` is exactly the lines missing from it.
struct Writer<O = Out> {
    destination: Destination,
    out: O,
    /// Bytes at the end of a file that begin a line a failed write cut short, to cut off.
    torn: u64,
    /// The rest of a line a failed write to a stream cut short, to write first.
    rest: Vec<u8>,
    dropped: Arc<AtomicU64>,
    /// How much of `dropped` is accounted for: the writer's own drops, and the queue's
    /// already reported.
    seen: u64,
    outage: Option<Outage>,
}

impl<O: Output> Writer<O> {
    fn new(destination: Destination, out: O, dropped: Arc<AtomicU64>) -> Writer<O> {
        let seen = dropped.load(Ordering::Relaxed);
        Writer {
            destination,
            out,
            torn: 0,
            rest: Vec::new(),
            dropped,
            seen,
            outage: None,
        }
    }

    fn run(mut self, queue: &Queue) {
        let mut spare = Vec::new();
        loop {
            let (text, lines, acks, reopen, closed) = {
                let mut pending = queue.lock();
                let waited = Instant::now();
                while pending.lines < WAKE_LINES
                    && pending.acks.is_empty()
                    && !pending.reopen
                    && !pending.closed
                {
                    let left = ROUND.saturating_sub(waited.elapsed());
                    if left.is_zero() {
                        break;
                    }
                    pending = queue
                        .wake
                        .wait_timeout(pending, left)
                        .map(|(guard, _)| guard)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
                let text = std::mem::replace(&mut pending.text, std::mem::take(&mut spare));
                let lines = std::mem::take(&mut pending.lines);
                let acks = std::mem::take(&mut pending.acks);
                let reopen = std::mem::take(&mut pending.reopen);
                (text, lines, acks, reopen, pending.closed)
            };
            let now = Instant::now();
            if lines > 0 {
                self.write(&text, lines as u64, now);
            }
            spare = text;
            spare.clear();
            for ack in acks {
                let _ = ack.send(());
            }
            if reopen {
                self.reopen();
            }
            self.report(now);
            if closed {
                return;
            }
        }
    }

    /// Writes a batch, `text`, of `lines` lines (each ends in its only `\n`); the lines that do
    /// not get in whole are dropped and counted.
    fn write(&mut self, text: &[u8], lines: u64, now: Instant) {
        match self.put(text) {
            Ok(()) => {
                if let Some(outage) = self.outage.take() {
                    let secs = now.duration_since(outage.began).as_secs();
                    tracing::warn!(
                        dropped = outage.total,
                        lasted = %humantime::format_duration(Duration::from_secs(secs)),
                        "the access log is written again; records dropped meanwhile"
                    );
                }
            }
            Err((error, whole)) => {
                let kept = memchr::memchr_iter(b'\n', &text[..whole]).count() as u64;
                let lost = lines.saturating_sub(kept);
                self.dropped.fetch_add(lost, Ordering::Relaxed);
                self.seen += lost;
                match &mut self.outage {
                    Some(outage) => {
                        outage.total += lost;
                        outage.unsaid += lost;
                    }
                    None => {
                        tracing::warn!(
                            error = %error,
                            dropped = lost,
                            "cannot write the access log: its records are dropped and counted until it can be written again"
                        );
                        self.outage = Some(Outage {
                            began: now,
                            total: lost,
                            unsaid: 0,
                            summary_at: now + SUMMARY_EVERY,
                        });
                    }
                }
            }
        }
    }

    /// Writes `text` whole, or gives the error and how many of its bytes, whole lines, are in
    /// the output.
    fn put(&mut self, text: &[u8]) -> Result<(), (io::Error, usize)> {
        self.mend().map_err(|e| (e, 0))?;
        let mut written = 0;
        while written < text.len() {
            match write_some(&mut self.out, &text[written..]) {
                Ok(n) => written += n,
                Err(error) => {
                    let whole = memchr::memrchr(b'\n', &text[..written]).map_or(0, |at| at + 1);
                    if written > whole && self.out.can_take_back() {
                        self.torn = (written - whole) as u64;
                        // At once, so that the file holds no piece of a line while the disk
                        // stays full; a failure is tried again before the next batch.
                        let _ = self.mend();
                    } else if written > whole {
                        let end = memchr::memchr(b'\n', &text[written..])
                            .map_or(text.len(), |at| written + at + 1);
                        self.rest = text[written..end].to_vec();
                    }
                    return Err((error, whole));
                }
            }
        }
        Ok(())
    }

    /// Makes the output end with a whole line again after a write cut one short: cuts off
    /// what got into a file, or writes the rest of the line to a stream.
    fn mend(&mut self) -> io::Result<()> {
        if self.torn > 0 {
            self.out.take_back(self.torn)?;
            self.torn = 0;
        }
        if !self.rest.is_empty() {
            while !self.rest.is_empty() {
                let n = write_some(&mut self.out, &self.rest)?;
                self.rest.drain(..n);
            }
            // The line is in the output after all.
            self.dropped.fetch_sub(1, Ordering::Relaxed);
            self.seen = self.seen.saturating_sub(1);
            if let Some(outage) = &mut self.outage {
                outage.total = outage.total.saturating_sub(1);
                outage.unsaid = outage.unsaid.saturating_sub(1);
            }
        }
        Ok(())
    }

    /// Says once a minute how many lines a lasting outage dropped, and at once how many the
    /// queue dropped.
    fn report(&mut self, now: Instant) {
        if let Some(outage) = &mut self.outage {
            if now >= outage.summary_at {
                if outage.unsaid > 0 {
                    tracing::warn!(
                        dropped = outage.unsaid,
                        total = outage.total,
                        "the access log still cannot be written: records dropped in the last minute"
                    );
                }
                outage.unsaid = 0;
                outage.summary_at = now + SUMMARY_EVERY;
            }
        }
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > self.seen {
            tracing::warn!(
                dropped = dropped - self.seen,
                total = dropped,
                "the access log could not keep up: records dropped"
            );
            self.seen = dropped;
        }
    }

    fn reopen(&mut self) {
        let Destination::File(path) = self.destination.clone() else {
            return;
        };
        match self.out.reopen(&path) {
            Ok(out) => {
                // The old output keeps a piece of a line only if it cannot be mended even now.
                let _ = self.mend();
                self.torn = 0;
                self.rest.clear();
                self.out = out;
                tracing::info!(path = %path.display(), "access log reopened");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reopen the access log; still writing to the old file")
            }
        }
    }
}

/// One write of some of `bytes` to `out`, again after a signal; writing nothing is an error.
fn write_some(out: &mut impl Output, bytes: &[u8]) -> io::Result<usize> {
    loop {
        match out.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// One record as one line (ending in `\n`) in `format`; `name` is the client's friendly name.
pub fn format_line(format: Format, r: &AccessRecord, name: Option<&str>) -> String {
    match format {
        Format::Squid => squid(r),
        Format::Common => common(r),
        Format::Json => json(r, name),
    }
}

/// The URL as logged: `http://host[:port]/path` for plain HTTP, `host:port` for CONNECT.
pub fn logged_url(r: &AccessRecord) -> String {
    let mut url = Vec::with_capacity(r.host.len() + r.path.as_ref().map_or(0, String::len) + 14);
    LoggedUrl(r).write(&mut url);
    // Only whole strings and ASCII are appended.
    String::from_utf8(url).unwrap_or_default()
}

/// [`logged_url`], written where it is needed.
struct LoggedUrl<'a>(&'a AccessRecord);

impl LoggedUrl<'_> {
    /// Appends the URL to `out`.
    fn write(&self, out: &mut Vec<u8>) {
        let r = self.0;
        let host = r.host.as_bytes();
        let port = |out: &mut Vec<u8>| {
            out.push(b':');
            out.extend_from_slice(itoa::Buffer::new().format(r.port).as_bytes());
        };
        if host.is_empty() {
            return out.push(b'-');
        }
        match &r.path {
            Some(path) => {
                out.extend_from_slice(b"http://");
                out.extend_from_slice(host);
                if r.port != 80 {
                    port(out);
                }
                out.extend_from_slice(path.as_bytes());
            }
            None => {
                out.extend_from_slice(host);
                if r.port != 0 {
                    port(out);
                }
            }
        }
    }
}

/// Squid's result code for a record (`TCP_MISS`, `TCP_TUNNEL`, `TCP_DENIED` …).
pub fn squid_code(r: &AccessRecord) -> &'static str {
    let aborted = r.status == 499;
    match (r.verdict, r.method.as_str()) {
        (Verdict::Deny, _) if matches!(r.status, 403 | 407 | 429) => "TCP_DENIED",
        (Verdict::Deny, _) => {
            if aborted {
                "NONE_NONE_ABORTED"
            } else {
                "NONE_NONE"
            }
        }
        (Verdict::Allow, _) if r.rule == Decider::Builtin(Builtin::Local) => "TCP_MEM_HIT",
        (Verdict::Allow, "CONNECT") => "TCP_TUNNEL",
        (Verdict::Allow, _) if aborted => "TCP_MISS_ABORTED",
        (Verdict::Allow, _) => "TCP_MISS",
    }
}

fn unix_seconds(t: SystemTime) -> (u64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs(), d.subsec_millis())
}

/// Replaces what would split a whitespace-separated field.
fn field(text: &str) -> String {
    if text.is_empty() {
        return "-".to_owned();
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_whitespace() || c.is_control() || c == '"' || c == '%' {
            for b in c.to_string().bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn squid(r: &AccessRecord) -> String {
    let (secs, millis) = unix_seconds(r.time + r.duration);
    let status = if r.status == 499 { 0 } else { r.status };
    let hierarchy = match (r.upstream, &r.parent) {
        (Some(addr), Some(_)) => format!("FIRSTUP_PARENT/{}", addr.ip()),
        (Some(addr), None) => format!("HIER_DIRECT/{}", addr.ip()),
        (None, _) => "HIER_NONE/-".to_owned(),
    };
    format!(
        "{secs}.{millis:03} {:>6} {} {}/{status:03} {} {} {} {} {hierarchy} -\n",
        r.duration.as_millis(),
        r.client.ip(),
        squid_code(r),
        r.bytes_down,
        field(&r.method),
        field(&logged_url(r)),
        field(r.user.as_deref().unwrap_or("")),
    )
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `26/Nov/2026:10:20:29 +0000`
pub fn clf_time(t: SystemTime) -> String {
    let (secs, _) = unix_seconds(t);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's method).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn common(r: &AccessRecord) -> String {
    let status = if r.status == 499 { 0 } else { r.status };
    format!(
        "{} - {} [{}] \"{} {} {}\" {status} {}\n",
        r.client.ip(),
        field(r.user.as_deref().unwrap_or("")),
        clf_time(r.time),
        field(&r.method),
        field(&logged_url(r)),
        r.version,
        r.bytes_down
    )
}

/// The JSON form of a record: every field, with stable names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonRecord {
    /// When the request arrived (RFC 3339, UTC, milliseconds).
    pub time: String,
    /// From arrival to the end of the exchange.
    pub duration_ms: u64,
    /// The client's address.
    pub client: String,
    /// The client's port.
    pub client_port: u16,
    /// The client's friendly name (`[clients.names]`).
    pub client_name: Option<String>,
    /// The authenticated user.
    pub user: Option<String>,
    /// The method.
    pub method: String,
    /// The URL as in the Squid format.
    pub url: String,
    /// The destination host.
    pub host: String,
    /// The destination port.
    pub port: u16,
    /// The port's service name.
    pub service: Option<String>,
    /// The address the proxy connected to.
    pub upstream: Option<String>,
    /// Microseconds spent resolving the destination's name, when this exchange resolved
    /// one; absent from lines written before the field existed.
    #[serde(default)]
    pub dns_us: Option<u64>,
    /// Whether that resolution was answered from the cache (or `/etc/hosts`).
    #[serde(default)]
    pub dns_cached: Option<bool>,
    /// The parent proxy used, if any.
    #[serde(default)]
    pub parent: Option<String>,
    /// The status answered (499: none).
    pub status: u16,
    /// `allow` or `deny`.
    pub decision: String,
    /// What decided.
    pub rule: String,
    /// Why, for refusals and failures.
    pub reason: Option<String>,
    /// The failure's kind (`ErrorKind::as_str`: `refused`, `dns`, `timeout` …), `null` when
    /// the exchange did not fail; absent from lines written before the field existed.
    #[serde(default)]
    pub error: Option<String>,
    /// Payload bytes client to destination.
    pub bytes_up: u64,
    /// Payload bytes destination to client.
    pub bytes_down: u64,
}

/// A record's time as RFC 3339 in UTC with milliseconds (`2026-11-26T10:20:29.123Z`), the
/// form `humantime` writes, built from digits without the formatting machinery.
struct Rfc3339Millis([u8; 24]);

impl Rfc3339Millis {
    fn new(t: SystemTime) -> Self {
        let (secs, millis) = unix_seconds(t);
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (year, month, day) = civil_from_days(days as i64);
        let mut text = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut value: u64| {
            for i in (at..at + width).rev() {
                text[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, year.clamp(0, 9999) as u64);
        put(5, 2, month.into());
        put(8, 2, day.into());
        put(11, 2, rem / 3600);
        put(14, 2, rem % 3600 / 60);
        put(17, 2, rem % 60);
        put(20, 3, millis.into());
        Rfc3339Millis(text)
    }

    fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.0).unwrap_or("1970-01-01T00:00:00.000Z")
    }
}

fn json(r: &AccessRecord, name: Option<&str>) -> String {
    let mut line = Vec::with_capacity(384);
    write_json(&mut line, r, name);
    // Only whole UTF-8 strings and ASCII are written.
    String::from_utf8(line).unwrap_or_default()
}

/// Appends the JSON line of `r` (with its newline) to `out`: the [`JsonRecord`]'s fields in
/// its order, byte for byte the line serde_json writes for it (a test compares them), laid
/// out directly — a line is written for every request, and serde's general path cost about
/// 10% of a proxied request's instructions.
fn write_json(out: &mut Vec<u8>, r: &AccessRecord, name: Option<&str>) {
    let mut line = JsonOut { out };
    // `,"name":`, one piece of text made when compiling.
    macro_rules! key {
        ($name:literal) => {
            line.out
                .extend_from_slice(concat!(",\"", $name, "\":").as_bytes())
        };
    }
    line.out.extend_from_slice(b"{\"time\":");
    line.str(Rfc3339Millis::new(r.time).as_str());
    key!("duration_ms");
    line.num(r.duration.as_millis() as u64);
    key!("client");
    line.str(crate::core::target::AddrText::ip(r.client.ip()).as_str());
    key!("client_port");
    line.num(r.client.port().into());
    key!("client_name");
    line.opt(name);
    key!("user");
    line.opt(r.user.as_deref());
    key!("method");
    line.str(&r.method);
    key!("url");
    line.url(r);
    key!("host");
    line.str(&r.host);
    key!("port");
    line.num(r.port.into());
    key!("service");
    line.opt(r.service);
    key!("upstream");
    match r.upstream {
        Some(addr) => line.str(crate::core::target::AddrText::socket(addr).as_str()),
        None => line.null(),
    }
    key!("dns_us");
    match r.dns {
        Some(dns) => line.num(dns.took.as_micros() as u64),
        None => line.null(),
    }
    key!("dns_cached");
    match r.dns {
        Some(dns) => line
            .out
            .extend_from_slice(if dns.cached { b"true" } else { b"false" }),
        None => line.null(),
    }
    key!("parent");
    line.opt(r.parent.as_deref());
    key!("status");
    line.num(r.status.into());
    key!("decision");
    line.str(r.verdict.as_str());
    key!("rule");
    match &r.rule {
        Decider::Builtin(check) => line.str(check.as_str()),
        rule => line.str(&rule.to_string()),
    }
    key!("reason");
    line.opt(r.reason.as_deref());
    key!("error");
    line.opt(r.error.map(ErrorKind::as_str));
    key!("bytes_up");
    line.num(r.bytes_up);
    key!("bytes_down");
    line.num(r.bytes_down);
    line.out.extend_from_slice(b"}\n");
}

/// The pieces of a JSON line, appended to a buffer.
struct JsonOut<'a> {
    out: &'a mut Vec<u8>,
}

impl JsonOut<'_> {
    fn num(&mut self, n: u64) {
        self.out
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }

    fn null(&mut self) {
        self.out.extend_from_slice(b"null");
    }

    fn opt(&mut self, text: Option<&str>) {
        match text {
            Some(text) => self.str(text),
            None => self.null(),
        }
    }

    /// `text` as a JSON string: copied between quotes as it is, unless JSON needs something in
    /// it escaped; then serde_json writes it.
    fn str(&mut self, text: &str) {
        if needs_escape(text.as_bytes()) {
            // Writing into a Vec cannot fail, nor can serializing a str.
            let _ = serde_json::to_writer(&mut *self.out, text);
        } else {
            self.out.reserve(text.len() + 2);
            self.out.push(b'"');
            self.out.extend_from_slice(text.as_bytes());
            self.out.push(b'"');
        }
    }

    /// The URL as [`logged_url`] gives it, as a JSON string.
    fn url(&mut self, r: &AccessRecord) {
        let start = self.out.len();
        self.out.push(b'"');
        LoggedUrl(r).write(self.out);
        if needs_escape(&self.out[start + 1..]) {
            // Only whole strings were appended, so the span is UTF-8.
            let url = String::from_utf8_lossy(&self.out[start + 1..]).into_owned();
            self.out.truncate(start);
            self.str(&url);
        } else {
            self.out.push(b'"');
        }
    }
}

/// Whether a JSON string needs part of `text` escaped: a quote, a backslash or a control
/// character (serde_json leaves everything else, non-ASCII included, as it is). Looks at eight
/// bytes at a time: a byte below 0x20 or equal to `"` or `\` leaves a borrow in that byte's
/// top bit (the classic "has a zero / a smaller byte" word tests, exact for whether one is
/// there).
fn needs_escape(text: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const TOPS: u64 = u64::from_ne_bytes([0x80; 8]);
    let below = |word: u64, limit: u8| word.wrapping_sub(ONES * limit as u64) & !word & TOPS;
    let special = |word: u64| {
        below(word, 0x20)
            | below(word ^ (ONES * b'"' as u64), 1)
            | below(word ^ (ONES * b'\\' as u64), 1)
            != 0
    };
    let mut words = text.chunks_exact(8);
    if words
        .by_ref()
        .any(|w| special(u64::from_ne_bytes(w.try_into().unwrap_or([0; 8]))))
    {
        return true;
    }
    // The last bytes, with plain letters after them.
    let mut last = [b'a'; 8];
    last[..words.remainder().len()].copy_from_slice(words.remainder());
    special(u64::from_ne_bytes(last))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::core::policy::{Builtin, Decider};

    fn record() -> AccessRecord {
        AccessRecord::example()
    }

    #[test]
    fn json_lines_read_back_as_json_records_with_every_field() {
        // The line is written from borrowed fields; read back as the owned JsonRecord (the
        // documented schema) it must carry every field of the record.
        let mut odd = record();
        odd.user = Some("quote\" back\\slash \u{1} tab\t é 😀".into());
        odd.reason = Some("a \"reason\"\nwith a newline".into());
        odd.parent = Some("parent.lan:3128".into());
        odd.path = Some("/a\"b\\c".into());
        odd.rule = Decider::Rule("no \"ads\"".into());
        let mut tunnel = record();
        tunnel.method = "CONNECT".into();
        tunnel.path = None;
        tunnel.port = 443;
        tunnel.service = None;
        tunnel.user = None;
        tunnel.upstream = Some("[::1]:443".parse().unwrap());
        let mut unreadable = record();
        unreadable.host = String::new();
        unreadable.port = 0;
        unreadable.path = None;
        unreadable.upstream = None;
        unreadable.verdict = Verdict::Deny;
        unreadable.status = 400;
        unreadable.error = Some(ErrorKind::Client);
        let mut refused = record();
        refused.status = 502;
        refused.error = Some(ErrorKind::Refused);
        refused.reason = Some("connection refused".into());
        refused.dns = Some(crate::observe::access::DnsLookup {
            took: std::time::Duration::from_micros(1234),
            cached: false,
        });
        for (r, name) in [
            (record(), None),
            (odd, Some("Bob's \"PC\"")),
            (tunnel, Some("kitchen")),
            (unreadable, None),
            (refused, None),
        ] {
            let line = format_line(Format::Json, &r, name);
            let parsed: JsonRecord = serde_json::from_str(&line).unwrap();
            // Written again, the parsed record is the same line: same names, order and nulls.
            assert_eq!(serde_json::to_string(&parsed).unwrap() + "\n", line);
            assert_eq!(parsed, owned(&r, name));
        }
    }

    /// The owned JSON record of `r`, built with the standard library's formatting.
    fn owned(r: &AccessRecord, name: Option<&str>) -> JsonRecord {
        JsonRecord {
            time: humantime::format_rfc3339_millis(r.time).to_string(),
            duration_ms: r.duration.as_millis() as u64,
            client: r.client.ip().to_string(),
            client_port: r.client.port(),
            client_name: name.map(str::to_owned),
            user: r.user.clone(),
            method: r.method.clone(),
            url: match (&r.path, r.port) {
                _ if r.host.is_empty() => "-".to_owned(),
                (Some(path), 80) => format!("http://{}{path}", r.host),
                (Some(path), port) => format!("http://{}:{port}{path}", r.host),
                (None, 0) => r.host.clone(),
                (None, port) => format!("{}:{port}", r.host),
            },
            host: r.host.clone(),
            port: r.port,
            service: r.service.map(str::to_owned),
            upstream: r.upstream.map(|a| a.to_string()),
            dns_us: r.dns.map(|d| d.took.as_micros() as u64),
            dns_cached: r.dns.map(|d| d.cached),
            parent: r.parent.clone(),
            status: r.status,
            decision: r.verdict.as_str().to_owned(),
            rule: r.rule.to_string(),
            reason: r.reason.clone(),
            error: r.error.map(|k| k.as_str().to_owned()),
            bytes_up: r.bytes_up,
            bytes_down: r.bytes_down,
        }
    }

    #[test]
    fn json_lines_are_what_serde_json_writes_for_the_record_whatever_the_text() {
        // Every ASCII byte and some non-ASCII text at the start, middle and end of strings
        // around the 8-byte step of the escape check, in every string field; ports and paths in
        // each URL form; numbers of every width.
        let pieces = (0u8..0x80)
            .map(|b| char::from(b).to_string())
            .chain(["é", "😀", "\u{80}", "\u{2028}", "a\"b\\c\n"].map(String::from));
        let mut texts = vec![String::new()];
        for piece in pieces {
            for len in [1, 7, 8, 9, 15, 16, 17, 33] {
                for at in [0, len / 2, len - 1] {
                    texts.push(format!(
                        "{}{piece}{}",
                        "a".repeat(at),
                        "b".repeat(len - 1 - at)
                    ));
                }
            }
        }
        for (i, text) in texts.iter().enumerate() {
            let mut r = record();
            r.user = Some(text.clone());
            r.method = text.clone();
            r.host = text.clone();
            r.path = (i % 4 != 3).then(|| format!("/{text}"));
            r.port = [80, 0, 8080, 65535][i % 4];
            r.parent = Some(text.clone());
            r.reason = Some(text.clone());
            r.rule = match i % 2 {
                0 => Decider::Rule(text.as_str().into()),
                _ => Decider::Builtin(Builtin::PortsHttp),
            };
            r.bytes_up = u64::MAX >> (i % 64);
            r.error = (i % 5 != 0).then(|| ErrorKind::ALL[i % ErrorKind::ALL.len()]);
            r.duration = Duration::from_millis(i as u64 * 7919);
            let name = (i % 3 != 0).then_some(text.as_str());
            let line = format_line(Format::Json, &r, name);
            let want = serde_json::to_string(&owned(&r, name)).unwrap() + "\n";
            assert_eq!(line, want, "{text:?}");
        }
    }

    #[test]
    fn squid_lines_follow_the_native_layout() {
        let line = format_line(Format::Squid, &record(), None);
        assert_eq!(
            line,
            "1764152429.228    105 192.168.1.20 TCP_MISS/200 5120 GET http://example.com/index.html alice%20smith HIER_DIRECT/93.184.216.34 -\n"
        );
        let mut tunnel = record();
        tunnel.method = "CONNECT".into();
        tunnel.path = None;
        tunnel.port = 443;
        tunnel.user = None;
        let line = format_line(Format::Squid, &tunnel, None);
        assert!(
            line.contains(" TCP_TUNNEL/200 5120 CONNECT example.com:443 - HIER_DIRECT/"),
            "{line}"
        );
        let mut denied = tunnel.clone();
        denied.verdict = Verdict::Deny;
        denied.status = 403;
        denied.upstream = None;
        let line = format_line(Format::Squid, &denied, None);
        assert!(
            line.contains(" TCP_DENIED/403 5120 CONNECT example.com:443 - HIER_NONE/- -"),
            "{line}"
        );
    }

    #[test]
    fn common_and_json_lines() {
        assert_eq!(
            format_line(Format::Common, &record(), None),
            "192.168.1.20 - alice%20smith [26/Nov/2025:10:20:29 +0000] \"GET http://example.com/index.html HTTP/1.1\" 200 5120\n"
        );
        let line = format_line(Format::Json, &record(), Some("kids-laptop"));
        let parsed: JsonRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed.client_name.as_deref(), Some("kids-laptop"));
        assert_eq!(parsed.url, "http://example.com/index.html");
        assert_eq!(parsed.time, "2025-11-26T10:20:29.123Z");
        assert_eq!(
            (parsed.port, parsed.status, parsed.bytes_down),
            (80, 200, 5120)
        );
        // No failure: the field is there, null, as the format's other optional fields.
        assert!(line.contains(",\"reason\":null,\"error\":null,"), "{line}");
        let mut refused = record();
        refused.status = 502;
        refused.error = Some(ErrorKind::Refused);
        let line = format_line(Format::Json, &refused, None);
        assert!(line.contains(",\"error\":\"refused\","), "{line}");
        // A line written before the field existed still reads.
        let old = line.replace(",\"error\":\"refused\"", "");
        let parsed: JsonRecord = serde_json::from_str(&old).unwrap();
        assert_eq!(parsed.error, None);
        // Squid and Common lines do not carry the kind: a failure changes none of their bytes.
        for format in [Format::Squid, Format::Common] {
            let mut plain = refused.clone();
            plain.error = None;
            assert_eq!(
                format_line(format, &refused, None),
                format_line(format, &plain, None)
            );
        }
    }

    #[test]
    fn times_are_written_as_humantime_writes_them() {
        // Day and year boundaries, leap days, and a spread of instants up to 2300.
        let mut millis: Vec<u64> = vec![
            0,
            999,
            86_399_999,
            951_782_400_000,   // 2000-02-29
            4_107_542_399_999, // 2100-02-28T23:59:59.999
            1_764_152_429_123,
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            millis.push(x % 10_413_792_000_000);
        }
        for ms in millis {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            assert_eq!(
                Rfc3339Millis::new(t).as_str(),
                humantime::format_rfc3339_millis(t).to_string(),
                "{ms} ms"
            );
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    /// A real file on a disk with `room` bytes left: a write past it is cut short, and the
    /// next fails with ENOSPC, as on a full disk. `out` is the file as a log file
    /// ([`Out::File`]) or as a stream that cannot be cut back ([`Out::Stream`]).
    struct Small {
        out: Out,
        room: usize,
    }

    impl Output for Small {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::StorageFull.into());
            }
            let n = self.out.write(&bytes[..bytes.len().min(self.room)])?;
            self.room -= n;
            Ok(n)
        }

        fn can_take_back(&self) -> bool {
            self.out.can_take_back()
        }

        fn take_back(&mut self, bytes: u64) -> io::Result<()> {
            self.out.take_back(bytes)?;
            self.room = self.room.saturating_add(bytes as usize);
            Ok(())
        }

        fn reopen(&self, _: &Path) -> io::Result<Small> {
            unreachable!("not reopened in these tests")
        }
    }

    /// A writer to a new file in `dir` with `room` bytes left, as a log file or as a stream.
    fn small_writer(dir: &Path, cuttable: bool, room: usize) -> (Writer<Small>, PathBuf) {
        let path = dir.join(format!("access-{cuttable}-{room}.log"));
        let file = open(&path).unwrap();
        let out = match cuttable {
            true => Out::of(file),
            false => Out::Stream(Box::new(file)),
        };
        assert_eq!(out.can_take_back(), cuttable);
        let writer = Writer::new(
            Destination::File(path.clone()),
            Small { out, room },
            Arc::default(),
        );
        (writer, path)
    }

    /// Lines `from..to`, of differing lengths, and the batch they make.
    fn batch(from: usize, to: usize) -> (Vec<String>, Vec<u8>) {
        let lines: Vec<String> = (from..to)
            .map(|i| {
                let mut r = record();
                r.path = Some(format!("/{i}/{}", "x".repeat(i * 7 % 50)));
                format_line(Format::Squid, &r, None)
            })
            .collect();
        let text = lines.concat().into_bytes();
        (lines, text)
    }

    #[test]
    fn a_full_disk_leaves_whole_lines_and_counts_exactly_the_lines_missing() {
        // Two batches of 5 lines while the disk fills up (cut at every byte of them in turn),
        // then 5 once it has room again; to a log file, and to a stream, which cannot take
        // back what it was sent. Either way the output holds whole lines only, and the lines
        // in it plus the count are the lines sent.
        let dir = tempfile::tempdir().unwrap();
        let (sent, first) = batch(0, 5);
        let (more, second) = batch(5, 10);
        let (after, third) = batch(10, 15);
        let sent: Vec<String> = [sent, more, after].concat();
        let t0 = Instant::now();
        for cuttable in [true, false] {
            for room in 0..=first.len() + second.len() {
                let (mut writer, path) = small_writer(dir.path(), cuttable, room);
                writer.write(&first, 5, t0);
                writer.write(&second, 5, t0);
                writer.out.room = usize::MAX;
                writer.write(&third, 5, t0);
                let text = std::fs::read_to_string(&path).unwrap();
                let dropped = writer.dropped.load(Ordering::Relaxed);
                let whole: Vec<&str> = text.split_inclusive('\n').collect();
                let mut expected: Vec<&str> = sent.iter().map(String::as_str).collect();
                expected.retain(|line| whole.contains(line));
                assert_eq!(whole, expected, "{room}: lines in order, each once");
                assert_eq!(whole.len() as u64 + dropped, 15, "{room}: {text}");
                assert!(
                    text.ends_with(&sent[14]),
                    "{room}: the last batch is all there"
                );
                if room == first.len() + second.len() {
                    assert_eq!(dropped, 0);
                }
                std::fs::remove_file(path).unwrap();
            }
        }
    }

    /// What `tracing` events say while `f` runs, one line each.
    fn said(f: impl FnOnce()) -> Vec<String> {
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl Write for Lines {
            fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let for_events = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || for_events.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn a_lasting_outage_is_said_once_then_once_a_minute_then_at_its_end() {
        // A batch of 2 lines every 100 ms for 150 s on a full disk, then one that fits.
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _path) = small_writer(dir.path(), true, 0);
        let (_, text) = batch(0, 2);
        let t0 = Instant::now();
        let lines = said(|| {
            for tick in 0..=1500u32 {
                let now = t0 + ROUND * tick;
                if tick == 1500 {
                    writer.out.room = usize::MAX;
                }
                writer.write(&text, 2, now);
                writer.report(now);
            }
            // Lines the queue dropped are said apart.
            writer.dropped.fetch_add(7, Ordering::Relaxed);
            writer.report(t0 + ROUND * 1501);
        });
        let expected = [
            "cannot write the access log: its records are dropped and counted until it can be written again error=",
            // The minute to 60 s (after the first batch's 2), and the one to 120 s.
            "the access log still cannot be written: records dropped in the last minute dropped=1200 total=1202",
            "the access log still cannot be written: records dropped in the last minute dropped=1200 total=2402",
            "the access log is written again; records dropped meanwhile dropped=3000 lasted=2m 30s",
            "the access log could not keep up: records dropped dropped=7 total=3007",
        ];
        assert_eq!(lines.len(), expected.len(), "{lines:#?}");
        for (line, expected) in lines.iter().zip(expected) {
            assert!(line.contains(expected), "{line} lacks {expected}");
        }
        assert!(lines[0].ends_with("dropped=2"), "{}", lines[0]);
        assert_eq!(writer.dropped.load(Ordering::Relaxed), 3007);
    }
}
