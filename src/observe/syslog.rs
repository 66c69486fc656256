//! Access records as syslog messages (RFC 5424), beside the access log: to a unix datagram
//! socket (`/dev/log`), a UDP server or a TCP server (octet-counting framing, RFC 6587), with
//! a JSON, Squid or Common payload (`[log] syslog`). What the settings mean is
//! [`crate::config::syslog`]'s; the payloads are [`crate::observe::format`]'s.
//!
//! A message is formatted on the request path and handed to a writer thread through a
//! bounded queue; the request never waits for the network. When the queue is full, or the
//! server cannot be reached, the message is dropped and counted
//! (`portcullis_syslog_dropped_total`), and the diagnostics say so at the start of an
//! outage, once a minute while it lasts and at its end. The writer connects when it starts
//! (a server that is not there yet is a warning, never a failure to start), connects again at
//! once when a send fails on a connection that had worked (a restarted rsyslog), and otherwise
//! waits 1 s, then twice as long each time up to a minute. Like the rest of `[log]`, the
//! settings are read at start-up only.
//!
//! The framing is a few lines, written here:
//! `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`, with the instance name as HOSTNAME
//! and `access` as MSGID. Every message has the
//! severity `info`. A datagram carries at most [`DATAGRAM_LIMIT`] bytes: a longer message is
//! cut there and ends in [`TRUNCATED`] (a JSON payload cut so no longer parses).

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
#[cfg(unix)]
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;

use crate::config::syslog::{SyslogSettings, SyslogTarget};
use crate::config::{Format, Settings};
use crate::observe::access::{AccessRecord, AccessSink};
use crate::observe::format::{format_line, write_json, Rfc3339Millis};

/// Messages waiting for the writer at most; past it they are dropped and counted.
pub const QUEUE_MESSAGES: usize = 4096;

/// The longest datagram sent (UDP, unix socket): what rsyslog and syslog-ng take by default.
pub const DATAGRAM_LIMIT: usize = 8192;

/// The longest message sent over TCP.
const STREAM_LIMIT: usize = 65_536;

/// What ends a message cut to its limit.
pub const TRUNCATED: &str = "...[truncated]";

/// Severity `info` (6).
const SEVERITY: u8 = 6;

/// The first wait before connecting again, doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How long a write or a TCP connect may take before the message is given up.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How often, at most, the diagnostics say that syslog still cannot be reached.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// The syslog sink: among the recorder's sinks, sending when `[log] syslog` is set.
pub struct Syslog {
    active: ArcSwapOption<Active>,
    dropped: Arc<AtomicU64>,
}

/// What the messages carry, and the queue to the writer thread. The thread ends when this
/// is dropped and it has sent what the queue held.
struct Active {
    settings: SyslogSettings,
    hostname: String,
    names: Arc<std::collections::BTreeMap<std::net::IpAddr, String>>,
    queue: SyncSender<Vec<u8>>,
    /// Told when the writer has sent all it held and ended.
    ended: Mutex<Receiver<()>>,
}

impl Syslog {
    /// A sink for `settings` (`[log]`, read at start-up only, like the access log's), that
    /// counts its drops in `dropped`; starts the writer thread when syslog is on.
    pub fn new(settings: &Settings, dropped: Arc<AtomicU64>) -> Syslog {
        let active = settings.syslog.as_ref().and_then(|wanted| {
            let (queue, messages) = mpsc::sync_channel(QUEUE_MESSAGES);
            let (done, ended) = mpsc::channel();
            let writer = Writer::new(wanted.target.clone(), dropped.clone());
            let started = std::thread::Builder::new()
                .name("syslog".into())
                .spawn(move || {
                    writer.run(messages);
                    let _ = done.send(());
                });
            match started {
                Ok(_) => {
                    tracing::info!(target = %wanted.target, "access records also go to syslog");
                    Some(Active {
                        settings: wanted.clone(),
                        hostname: settings.instance.clone(),
                        names: settings.client_names.clone(),
                        queue,
                        ended: Mutex::new(ended),
                    })
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the syslog writer: records are not sent to syslog");
                    None
                }
            }
        });
        Syslog {
            active: ArcSwapOption::from(active.map(Arc::new)),
            dropped,
        }
    }

    /// Stops the writer, letting it send what it holds; waits at most `limit` (for the
    /// proxy's exit). Records after this are not sent.
    pub fn close(&self, limit: Duration) {
        // Another holder (a record being queued right now) keeps the queue open; the writer
        // then ends with it, unwaited.
        if let Some(Ok(active)) = self.active.swap(None).map(Arc::try_unwrap) {
            let Active { queue, ended, .. } = active;
            drop(queue);
            let ended = ended.into_inner().unwrap_or_else(|e| e.into_inner());
            let _ = ended.recv_timeout(limit);
        }
    }
}

impl AccessSink for Syslog {
    fn record(&self, record: &AccessRecord) {
        let active = self.active.load();
        let Some(active) = &*active else {
            return;
        };
        let message = message(active, record);
        match active.queue.try_send(message) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // Said at once (the writer may be the one stuck), then at 2, 4, 8 … drops.
                if dropped.is_power_of_two() {
                    tracing::warn!(dropped, "syslog cannot keep up: records dropped");
                }
            }
            // The writer thread is gone (it panicked): nothing sends any more.
            Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The message of `record`, framed as RFC 5424 says, without transport framing.
fn message(active: &Active, record: &AccessRecord) -> Vec<u8> {
    let settings = &active.settings;
    let mut out = Vec::with_capacity(512);
    header(
        &mut out,
        settings.facility,
        record.time,
        &active.hostname,
        &settings.app_name,
        std::process::id(),
    );
    match settings.format {
        Format::Json => {
            let name = active.names.get(&record.client.ip().to_canonical());
            write_json(
                &mut out,
                record,
                name.map(String::as_str),
                Some(&active.hostname),
            );
        }
        format => out.extend_from_slice(format_line(format, record, None).as_bytes()),
    }
    if out.last() == Some(&b'\n') {
        out.pop();
    }
    out
}

/// Writes `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID access - ` (the MSG follows).
fn header(out: &mut Vec<u8>, facility: u8, time: SystemTime, host: &str, app: &str, pid: u32) {
    let pri = u16::from(facility) * 8 + u16::from(SEVERITY);
    let _ = write!(
        out,
        "<{pri}>1 {} {host} {app} {pid} access - ",
        Rfc3339Millis::new(time).as_str()
    );
}

/// Cuts `message` to `limit` bytes, ending in [`TRUNCATED`], at a character's start.
fn truncate(message: &mut Vec<u8>, limit: usize) {
    if message.len() <= limit {
        return;
    }
    let mut cut = limit - TRUNCATED.len();
    // Back to the start of a UTF-8 character (never a continuation byte, 0b10xxxxxx).
    while cut > 0 && (message[cut] & 0xC0) == 0x80 {
        cut -= 1;
    }
    message.truncate(cut);
    message.extend_from_slice(TRUNCATED.as_bytes());
}

/// An open connection to the syslog server.
enum Connection {
    #[cfg(unix)]
    Unix(UnixDatagram),
    Udp(UdpSocket),
    Tcp(TcpStream),
}

impl Connection {
    fn open(target: &SyslogTarget) -> io::Result<Connection> {
        match target {
            #[cfg(unix)]
            SyslogTarget::Unix(path) => {
                let socket = UnixDatagram::unbound()?;
                socket.connect(path)?;
                socket.set_write_timeout(Some(IO_TIMEOUT))?;
                Ok(Connection::Unix(socket))
            }
            #[cfg(not(unix))]
            SyslogTarget::Unix(_) => Err(io::ErrorKind::Unsupported.into()),
            SyslogTarget::Udp(address) => {
                let to = resolve(address)?;
                let any: std::net::SocketAddr = if to.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let socket = UdpSocket::bind(any)?;
                socket.connect(to)?;
                Ok(Connection::Udp(socket))
            }
            SyslogTarget::Tcp(address) => {
                let stream = TcpStream::connect_timeout(&resolve(address)?, IO_TIMEOUT)?;
                stream.set_write_timeout(Some(IO_TIMEOUT))?;
                stream.set_nodelay(true)?;
                Ok(Connection::Tcp(stream))
            }
        }
    }

    /// Sends one message, cut to the transport's limit.
    fn send(&mut self, message: &[u8]) -> io::Result<()> {
        match self {
            #[cfg(unix)]
            Connection::Unix(socket) => {
                socket.send(cut(message, DATAGRAM_LIMIT).as_ref()).map(drop)
            }
            Connection::Udp(socket) => socket.send(cut(message, DATAGRAM_LIMIT).as_ref()).map(drop),
            Connection::Tcp(stream) => {
                peer_open(stream)?;
                stream.write_all(&octet_counted(&cut(message, STREAM_LIMIT)))
            }
        }
    }
}

/// `message` framed by octet counting (RFC 6587 3.4.1): its length in bytes, a space, itself.
fn octet_counted(message: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(message.len() + 8);
    let _ = write!(framed, "{} ", message.len());
    framed.extend_from_slice(message);
    framed
}

/// `message`, or a copy cut to `limit` bytes (see [`truncate`]).
fn cut(message: &[u8], limit: usize) -> std::borrow::Cow<'_, [u8]> {
    if message.len() <= limit {
        return message.into();
    }
    let mut copy = message.to_vec();
    truncate(&mut copy, limit);
    copy.into()
}

/// Fails when the server closed the connection (it never sends, so anything readable is its
/// end): a write would still succeed once into the kernel's buffer and the message be lost
/// without a count.
fn peer_open(stream: &mut TcpStream) -> io::Result<()> {
    stream.set_nonblocking(true)?;
    let mut byte = [0u8; 1];
    let seen = stream.read(&mut byte);
    stream.set_nonblocking(false)?;
    match seen {
        Ok(0) => Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the syslog server closed the connection",
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

fn resolve(address: &str) -> io::Result<std::net::SocketAddr> {
    address
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("{address} has no address")))
}

/// A time when messages cannot be sent: from a failure to the next message sent.
struct Outage {
    began: Instant,
    total: u64,
    unsaid: u64,
    summary_at: Instant,
}

impl Outage {
    fn new(now: Instant) -> Outage {
        Outage {
            began: now,
            total: 0,
            unsaid: 0,
            summary_at: now + SUMMARY_EVERY,
        }
    }
}

/// The writer thread's state.
struct Writer {
    target: SyslogTarget,
    connection: Option<Connection>,
    /// When to try connecting again, after a failure.
    retry_at: Option<Instant>,
    backoff: Duration,
    dropped: Arc<AtomicU64>,
    outage: Option<Outage>,
}

impl Writer {
    fn new(target: SyslogTarget, dropped: Arc<AtomicU64>) -> Writer {
        Writer {
            target,
            connection: None,
            retry_at: None,
            backoff: FIRST_BACKOFF,
            dropped,
            outage: None,
        }
    }

    /// Connects, then sends the queue's messages until the sink closes it.
    fn run(mut self, messages: Receiver<Vec<u8>>) {
        self.connect(Instant::now());
        loop {
            match messages.recv_timeout(SUMMARY_EVERY) {
                Ok(message) => self.send(&message, Instant::now()),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.report(Instant::now());
        }
    }

    /// Whether there is a connection, opening one unless a failure asked to wait.
    fn connect(&mut self, now: Instant) -> bool {
        if self.connection.is_some() {
            return true;
        }
        if self.retry_at.is_some_and(|at| now < at) {
            return false;
        }
        match Connection::open(&self.target) {
            Ok(connection) => {
                self.connection = Some(connection);
                true
            }
            Err(e) => {
                self.failed(&e, now);
                false
            }
        }
    }

    fn send(&mut self, message: &[u8], now: Instant) {
        // A connection that had worked is opened again at once when a send fails on it (the
        // server restarted); a failure on a new one waits.
        if let Some(connection) = &mut self.connection {
            if connection.send(message).is_ok() {
                return self.reached(now);
            }
            self.connection = None;
            self.retry_at = None;
        }
        if self.connect(now) {
            if let Some(connection) = &mut self.connection {
                match connection.send(message) {
                    Ok(()) => return self.reached(now),
                    Err(e) => {
                        self.connection = None;
                        self.failed(&e, now);
                    }
                }
            }
        }
        self.lost(now);
    }

    /// A message was sent: ends an outage, and resets the wait.
    fn reached(&mut self, now: Instant) {
        self.backoff = FIRST_BACKOFF;
        self.retry_at = None;
        if let Some(outage) = self.outage.take() {
            let secs = now.duration_since(outage.began).as_secs();
            tracing::warn!(
                target = %self.target,
                dropped = outage.total,
                lasted = %humantime::format_duration(Duration::from_secs(secs)),
                "syslog is reached again; records dropped meanwhile"
            );
        }
    }

    /// Connecting or sending failed: waits before connecting again, and says so when it
    /// starts an outage.
    fn failed(&mut self, error: &io::Error, now: Instant) {
        self.retry_at = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        if self.outage.is_none() {
            tracing::warn!(
                target = %self.target,
                %error,
                "cannot reach syslog: records are dropped and counted until it can be reached"
            );
            self.outage = Some(Outage::new(now));
        }
    }

    /// Counts a message not sent.
    fn lost(&mut self, now: Instant) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        let outage = self.outage.get_or_insert_with(|| Outage::new(now));
        outage.total += 1;
        outage.unsaid += 1;
    }

    /// Once a minute during an outage, says how many records were dropped.
    fn report(&mut self, now: Instant) {
        if let Some(outage) = &mut self.outage {
            if now >= outage.summary_at && outage.unsaid > 0 {
                tracing::warn!(
                    target = %self.target,
                    dropped = outage.unsaid,
                    total = outage.total,
                    "syslog still cannot be reached: records dropped in the last minute"
                );
                outage.unsaid = 0;
                outage.summary_at = now + SUMMARY_EVERY;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings for `format` and `facility`, with a writer whose queue holds one message
    /// and is never read (the receiver is returned to keep it open).
    fn active(format: Format, facility: u8) -> (Active, Receiver<Vec<u8>>) {
        let (queue, messages) = mpsc::sync_channel(1);
        let (_, ended) = mpsc::channel();
        let active = Active {
            settings: SyslogSettings {
                target: SyslogTarget::Udp("127.0.0.1:514".into()),
                format,
                facility,
                app_name: "portcullis".into(),
            },
            hostname: "gw-1".into(),
            names: Arc::default(),
            queue,
            ended: Mutex::new(ended),
        };
        (active, messages)
    }

    #[test]
    fn a_message_is_rfc5424_with_the_record_as_its_payload() {
        let record = AccessRecord::example();
        let (json, _queue) = active(Format::Json, 16);
        let json = String::from_utf8(message(&json, &record)).unwrap();
        let pid = std::process::id();
        let head = format!("<134>1 2025-11-26T10:20:29.123Z gw-1 portcullis {pid} access - ");
        assert!(json.starts_with(&head), "{json}");
        let payload: serde_json::Value = serde_json::from_str(&json[head.len()..]).unwrap();
        assert_eq!(payload["host"], "example.com");
        assert_eq!(payload["instance"], "gw-1");
        assert!(!json.contains('\n'));
        // local4 (20) and info (6): 20 * 8 + 6.
        let (squid, _queue) = active(Format::Squid, 20);
        let squid = String::from_utf8(message(&squid, &record)).unwrap();
        let head = head.replace("<134>", "<166>");
        assert!(squid.starts_with(&head), "{squid}");
        assert!(squid[head.len()..].contains("TCP_MISS/200 5120 GET http://example.com/index.html"));
        assert!(!squid.ends_with('\n'));
    }

    #[test]
    fn tcp_messages_are_framed_by_their_length_in_bytes() {
        assert_eq!(octet_counted(b"<134>1 - x"), b"10 <134>1 - x");
        assert_eq!(octet_counted("é".as_bytes()), "2 é".as_bytes());
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let (active, _queue) = active(Format::Json, 16);
        let syslog = Syslog {
            active: ArcSwapOption::from_pointee(active),
            dropped: Arc::default(),
        };
        let record = AccessRecord::example();
        for _ in 0..3 {
            syslog.record(&record);
        }
        // The queue holds one; the other two are counted.
        assert_eq!(syslog.dropped.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn long_messages_are_cut_at_a_character_with_a_marker() {
        let mut text = "é".repeat(DATAGRAM_LIMIT).into_bytes();
        truncate(&mut text, DATAGRAM_LIMIT);
        assert!(text.len() <= DATAGRAM_LIMIT);
        let text = String::from_utf8(text).unwrap();
        assert!(text.ends_with(TRUNCATED));
        let mut short = b"short".to_vec();
        truncate(&mut short, DATAGRAM_LIMIT);
        assert_eq!(short, b"short");
        assert_eq!(cut(b"short", 5).as_ref(), b"short");
        assert_eq!(cut(&[b'x'; 40], 20).len(), 20);
    }
}
