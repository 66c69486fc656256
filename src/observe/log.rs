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
//! The formats are in [`crate::observe::format`].

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::observe::access::{AccessRecord, AccessSink};
use crate::observe::format::write_json;

pub use crate::config::{Destination, Format};
pub use crate::observe::format::{clf_time, format_line, logged_url, squid_code, JsonRecord};

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
    instance: Option<Box<str>>,
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
            instance: None,
        }))
    }

    /// Names the proxy in every JSON line (`"instance"`), so that logs of several proxies can
    /// be merged; the Squid and Common formats have no place for it.
    pub fn with_instance(mut self, instance: &str) -> AccessLog {
        self.instance = Some(instance.into());
        self
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
            None => write_json(
                &mut pending.text,
                record,
                name.as_deref(),
                self.instance.as_deref(),
            ),
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn record() -> AccessRecord {
        AccessRecord::example()
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

    /// Held by the tests that make the writer warn: the other one, on another thread without
    /// a subscriber, could register the warnings' call sites while [`said`] listens, and
    /// have them marked as never wanted (seen once in a loaded run).
    static WARNS: Mutex<()> = Mutex::new(());

    #[test]
    fn a_full_disk_leaves_whole_lines_and_counts_exactly_the_lines_missing() {
        let _alone = WARNS.lock().unwrap_or_else(|e| e.into_inner());
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
        tracing::subscriber::with_default(subscriber, || {
            // A warning's call site first reached by another test's thread, with no
            // subscriber there, may have been marked as never wanted: ask again, now that
            // this thread has one.
            tracing::callsite::rebuild_interest_cache();
            f()
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn a_lasting_outage_is_said_once_then_once_a_minute_then_at_its_end() {
        let _alone = WARNS.lock().unwrap_or_else(|e| e.into_inner());
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
