//! Helper programs that speak Squid's helper protocol (`[auth] program`, `[auth.groups]
//! program`): a pool of `children` processes started with the proxy, fed from one bounded
//! queue, each taking one request at a time or `concurrency` at once with channel IDs.
//!
//! Every wait is bounded: a request waits at most `timeout` for its answer (queue included);
//! a process that leaves a request unanswered that long is killed, and one that ends is
//! started again after a back-off (0.1 s, doubling to 30 s; back to 0.1 s once a process has
//! run a minute). While no process runs, a request fails at once rather than wait. The text
//! of the protocol is `core::auth::helper`'s; what a failure means for a client (407, a
//! refusal) is the caller's. What a helper prints on stderr is logged as a warning.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::{HelperSpec, Settings};
use crate::core::auth::helper::{
    parse_reply, request_line, HelperHealth, Reply, Verdict, MAX_REPLY_LINE,
};

/// Requests that may wait for a process, per pool; more fail at once.
const QUEUE_LIMIT: usize = 1024;
/// The longest pause before a process is started again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A process that ran this long was healthy: the back-off starts again from the shortest.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Why a helper gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelperError {
    /// No process runs (they all ended, or cannot be started).
    #[error("no {name} helper is running ({why})")]
    Unavailable {
        /// The pool.
        name: &'static str,
        /// The last problem seen.
        why: String,
    },
    /// Too many requests wait already.
    #[error("the {0} helpers are busy: {QUEUE_LIMIT} requests wait already")]
    Busy(&'static str),
    /// No answer within `timeout`.
    #[error("the {name} helper did not answer within {}", humantime::format_duration(*after))]
    Timeout {
        /// The pool.
        name: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// The process ended (or was killed) before it answered, or answered nonsense.
    #[error("the {name} helper failed: {why}")]
    Failed {
        /// The pool.
        name: &'static str,
        /// What happened.
        why: String,
    },
}

/// One request on its way to a process.
struct Job {
    fields: Vec<String>,
    reply: oneshot::Sender<Result<Reply, HelperError>>,
}

/// Counters a pool's drivers and callers share.
#[derive(Default)]
struct Shared {
    running: AtomicUsize,
    in_flight: AtomicUsize,
    restarts: AtomicU64,
    ok: AtomicU64,
    err: AtomicU64,
    bh: AtomicU64,
    unavailable: AtomicU64,
    timeouts: AtomicU64,
    answer_micros: AtomicU64,
    answers: AtomicU64,
    last_problem: Mutex<Option<String>>,
}

impl Shared {
    fn problem(&self, what: String) {
        *self.last_problem.lock().unwrap_or_else(|e| e.into_inner()) = Some(what);
    }

    fn last_problem(&self) -> Option<String> {
        self.last_problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A running pool of helper processes. Dropping the last handle stops them.
pub struct Helpers {
    spec: HelperSpec,
    queue: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Helpers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Helpers")
            .field("name", &self.spec.name)
            .field("program", &self.spec.command.first())
            .finish_non_exhaustive()
    }
}

impl Drop for Helpers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Helpers {
    /// Starts `spec.children` processes (on the current tokio runtime). Processes that cannot
    /// be started are tried again in the background, with a warning each time.
    pub fn start(spec: HelperSpec) -> Arc<Helpers> {
        let (queue, jobs) = mpsc::channel(QUEUE_LIMIT);
        let jobs = Arc::new(tokio::sync::Mutex::new(jobs));
        let shared = Arc::new(Shared::default());
        let stop = CancellationToken::new();
        for index in 0..spec.children {
            // Started here, so that the pool is ready when `start` returns.
            let first = match spawn(&spec) {
                Ok(child) => {
                    shared.running.fetch_add(1, Ordering::Relaxed);
                    Some(child)
                }
                Err(e) => {
                    let what = format!("cannot start {}: {e}", program(&spec));
                    warn!(target: "portcullis::helper", helper = spec.name, "{what}");
                    shared.problem(what);
                    None
                }
            };
            tokio::spawn(drive(
                index,
                spec.clone(),
                first,
                jobs.clone(),
                shared.clone(),
                stop.clone(),
            ));
        }
        Arc::new(Helpers {
            spec,
            queue,
            shared,
            stop,
        })
    }

    /// What the pool was started with.
    pub fn spec(&self) -> &HelperSpec {
        &self.spec
    }

    /// Sends one request (`fields`, escaped on the way) and waits for its answer, at most
    /// `timeout`.
    pub async fn ask(&self, fields: &[&str]) -> Result<Reply, HelperError> {
        let name = self.spec.name;
        if self.shared.running.load(Ordering::Relaxed) == 0 {
            self.shared.unavailable.fetch_add(1, Ordering::Relaxed);
            let why = self
                .shared
                .last_problem()
                .unwrap_or_else(|| "none started yet".to_owned());
            return Err(HelperError::Unavailable { name, why });
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            reply,
        };
        if let Err(e) = self.queue.try_send(job) {
            self.shared.unavailable.fetch_add(1, Ordering::Relaxed);
            return Err(match e {
                mpsc::error::TrySendError::Full(_) => HelperError::Busy(name),
                mpsc::error::TrySendError::Closed(_) => HelperError::Unavailable {
                    name,
                    why: "the proxy is stopping".to_owned(),
                },
            });
        }
        match tokio::time::timeout(self.spec.timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(HelperError::Failed {
                name,
                why: "the request was dropped".to_owned(),
            }),
            Err(_) => {
                self.shared.timeouts.fetch_add(1, Ordering::Relaxed);
                let after = self.spec.timeout;
                warn!(target: "portcullis::helper", helper = name, "no answer within {} (timeout); the process is killed and started again", humantime::format_duration(after));
                Err(HelperError::Timeout { name, after })
            }
        }
    }

    /// For a group helper: whether `user` is in `group` (`OK`, `ERR`), or why it cannot
    /// tell (`BH`, no answer).
    pub async fn member(&self, user: &str, group: &str) -> Result<bool, String> {
        match self.ask(&[user, group]).await {
            Ok(reply) => match reply.verdict {
                Verdict::Ok => Ok(true),
                Verdict::Err => Ok(false),
                Verdict::Bh => Err(format!(
                    "the helper could not tell ({})",
                    reply.message.as_deref().unwrap_or("BH, no message")
                )),
            },
            Err(e) => Err(e.to_string()),
        }
    }

    /// How the pool is doing, for `/status` and `/metrics`.
    pub fn health(&self) -> HelperHealth {
        let s = &self.shared;
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        HelperHealth {
            name: self.spec.name.to_owned(),
            program: program(&self.spec),
            children: self.spec.children,
            running: s.running.load(Ordering::Relaxed),
            queued: self.queue.max_capacity() - self.queue.capacity(),
            in_flight: s.in_flight.load(Ordering::Relaxed),
            restarts: load(&s.restarts),
            ok: load(&s.ok),
            err: load(&s.err),
            bh: load(&s.bh),
            unavailable: load(&s.unavailable),
            timeouts: load(&s.timeouts),
            answer_seconds: load(&s.answer_micros) as f64 / 1e6,
            answers: load(&s.answers),
            last_problem: s.last_problem(),
        }
    }
}

/// The helper pools a configuration asks for.
#[derive(Debug, Default, Clone)]
pub struct Pools {
    /// `[auth] program`.
    pub auth: Option<Arc<Helpers>>,
    /// `[auth.groups] program`.
    pub groups: Option<Arc<Helpers>>,
}

impl Pools {
    /// The pools `settings` ask for: those of `old` whose command and sizes are the same are
    /// kept running; others are started (and the old ones stop once unused).
    pub fn for_settings(settings: &Settings, old: Option<&Pools>) -> Pools {
        let auth = settings.auth.as_ref();
        let keep = |spec: Option<&HelperSpec>, old: Option<&Arc<Helpers>>| {
            spec.map(|spec| match old {
                Some(pool) if pool.spec == *spec => pool.clone(),
                _ => Helpers::start(spec.clone()),
            })
        };
        Pools {
            auth: keep(
                auth.and_then(|a| a.program.as_ref()),
                old.and_then(|o| o.auth.as_ref()),
            ),
            groups: keep(
                auth.and_then(|a| a.groups.as_ref()),
                old.and_then(|o| o.groups.as_ref()),
            ),
        }
    }

    /// The health of each pool.
    pub fn health(&self) -> Vec<HelperHealth> {
        self.auth
            .iter()
            .chain(&self.groups)
            .map(|p| p.health())
            .collect()
    }
}

/// The program's path, as logs name it.
fn program(spec: &HelperSpec) -> String {
    spec.command.first().cloned().unwrap_or_default()
}

fn spawn(spec: &HelperSpec) -> std::io::Result<Child> {
    let (program, args) = spec
        .command
        .split_first()
        .ok_or_else(|| std::io::Error::other("no program"))?;
    Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
}

/// Keeps process `index` of a pool running: serves it, and starts it again when it ends.
async fn drive(
    index: usize,
    spec: HelperSpec,
    mut child: Option<Child>,
    jobs: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let mut failures: u32 = 0;
    loop {
        let started = Instant::now();
        if let Some(running) = child.take() {
            let end = serve(index, &spec, running, &jobs, &shared, &stop).await;
            shared.running.fetch_sub(1, Ordering::Relaxed);
            match end {
                None => return,
                Some(why) => {
                    let what = format!("{} (process {index}) {why}", program(&spec));
                    warn!(target: "portcullis::helper", helper = spec.name, "{what}");
                    shared.problem(what);
                }
            }
        }
        if started.elapsed() >= HEALTHY_RUN {
            failures = 0;
        }
        let delay = Duration::from_millis(100)
            .saturating_mul(1 << failures.min(9))
            .min(MAX_BACKOFF);
        failures = failures.saturating_add(1);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        shared.restarts.fetch_add(1, Ordering::Relaxed);
        match spawn(&spec) {
            Ok(started) => {
                debug!(target: "portcullis::helper", helper = spec.name, index, "helper started again");
                shared.running.fetch_add(1, Ordering::Relaxed);
                child = Some(started);
            }
            Err(e) => {
                let what = format!("cannot start {}: {e}", program(&spec));
                warn!(target: "portcullis::helper", helper = spec.name, "{what}; trying again");
                shared.problem(what);
            }
        }
    }
}

/// Serves one process until it ends (`Some(why)`) or the pool stops (`None`).
async fn serve(
    index: usize,
    spec: &HelperSpec,
    mut child: Child,
    jobs: &tokio::sync::Mutex<mpsc::Receiver<Job>>,
    shared: &Shared,
    stop: &CancellationToken,
) -> Option<String> {
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Some("has no pipes".to_owned());
    };
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(log_stderr(spec.name, index, stderr));
    }
    let (lines_tx, mut lines) = mpsc::channel(64);
    tokio::spawn(read_lines(stdout, lines_tx));
    let channels = spec.concurrency > 0;
    let slots = spec.per_process();
    let mut pending: HashMap<u64, (Job, Instant)> = HashMap::new();
    // Without channel IDs, answers come in the order of the requests: one at a time.
    let mut order: std::collections::VecDeque<u64> = Default::default();
    let mut next: u64 = 0;
    let end = loop {
        let deadline = pending.values().map(|(_, sent)| *sent + spec.timeout).min();
        tokio::select! {
            _ = stop.cancelled() => break None,
            line = lines.recv() => {
                let Some(line) = line else {
                    let status = match tokio::time::timeout(Duration::from_secs(1), child.wait()).await {
                        Ok(Ok(status)) => status.to_string(),
                        _ => "closed its output".to_owned(),
                    };
                    break Some(format!("ended ({status})"));
                };
                let parsed = parse_reply(&line, channels);
                let id = match &parsed {
                    Ok(reply) if channels => reply.channel,
                    _ if channels => None,
                    _ => order.front().copied(),
                };
                let Some((job, sent)) = id.and_then(|id| pending.remove(&id)) else {
                    warn!(target: "portcullis::helper", helper = spec.name, index, "an answer to no request: {:?}", shorten(&line));
                    continue;
                };
                order.retain(|x| Some(*x) != id);
                shared.in_flight.fetch_sub(1, Ordering::Relaxed);
                let result = match parsed {
                    Ok(reply) => {
                        let counter = match reply.verdict {
                            Verdict::Ok => &shared.ok,
                            Verdict::Err => &shared.err,
                            Verdict::Bh => &shared.bh,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        Ok(reply)
                    }
                    Err(e) => {
                        shared.bh.fetch_add(1, Ordering::Relaxed);
                        Err(HelperError::Failed { name: spec.name, why: e.to_string() })
                    }
                };
                shared.answers.fetch_add(1, Ordering::Relaxed);
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                shared.answer_micros.fetch_add(micros, Ordering::Relaxed);
                let _ = job.reply.send(result);
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                break Some(format!(
                    "did not answer within {} (timeout): killed",
                    humantime::format_duration(spec.timeout)
                ));
            }
            job = async { jobs.lock().await.recv().await }, if pending.len() < slots => {
                let Some(job) = job else { break None };
                if job.reply.is_closed() {
                    continue;
                }
                let id = if channels {
                    // The lowest free channel, as Squid numbers them.
                    (0..slots as u64).find(|id| !pending.contains_key(id)).unwrap_or(0)
                } else {
                    next = next.wrapping_add(1);
                    next
                };
                let fields: Vec<&str> = job.fields.iter().map(String::as_str).collect();
                let line = request_line(channels.then_some(id), &fields);
                let written = tokio::time::timeout(spec.timeout, async {
                    stdin.write_all(line.as_bytes()).await?;
                    stdin.flush().await
                })
                .await;
                match written {
                    Ok(Ok(())) => {
                        shared.in_flight.fetch_add(1, Ordering::Relaxed);
                        pending.insert(id, (job, Instant::now()));
                        order.push_back(id);
                    }
                    Ok(Err(e)) => {
                        let _ = job.reply.send(Err(HelperError::Failed { name: spec.name, why: format!("cannot write to it: {e}") }));
                        break Some(format!("does not read its input ({e})"));
                    }
                    Err(_) => {
                        let _ = job.reply.send(Err(HelperError::Timeout { name: spec.name, after: spec.timeout }));
                        break Some("does not read its input: killed".to_owned());
                    }
                }
            }
        }
    };
    // Whatever was asked of this process gets an answer now.
    let why = end.clone().unwrap_or_else(|| "the pool stopped".to_owned());
    for (_, (job, _)) in pending.drain() {
        shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        let _ = job.reply.send(Err(HelperError::Failed {
            name: spec.name,
            why: why.clone(),
        }));
    }
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
    end
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Reads a process's output a line at a time (each cut at [`MAX_REPLY_LINE`]) into `out`,
/// until it ends.
async fn read_lines(stdout: impl AsyncRead + Unpin, out: mpsc::Sender<String>) {
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let limit = (MAX_REPLY_LINE + 1) as u64;
        match (&mut reader).take(limit).read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if buf.last() != Some(&b'\n') {
            // Too long: skip to the end of the line.
            let mut rest = Vec::new();
            loop {
                rest.clear();
                match (&mut reader).take(limit).read_until(b'\n', &mut rest).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) if rest.last() == Some(&b'\n') => break,
                    Ok(_) => {}
                }
            }
        }
        let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
        if out.send(line).await.is_err() {
            return;
        }
    }
}

/// Logs what a process prints on stderr, a line at a time.
async fn log_stderr(name: &'static str, index: usize, stderr: impl AsyncRead + Unpin) {
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader).take(1024).read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end();
                if !line.is_empty() {
                    warn!(target: "portcullis::helper", helper = name, index, "helper says: {line}");
                }
            }
        }
    }
}

/// At most 100 characters, for a warning.
fn shorten(line: &str) -> String {
    line.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(auth: &str) -> Settings {
        crate::config::Config::from_toml(auth, "t")
            .unwrap()
            .validate("t")
            .unwrap()
    }

    #[tokio::test]
    async fn a_reload_keeps_helpers_whose_command_is_unchanged() {
        let cat = "[auth]\nprogram = [\"cat\"]\nchildren = 1\n";
        let first = Pools::for_settings(&settings(cat), None);
        let auth = first.auth.clone().unwrap();
        assert!(first.groups.is_none());
        let same = Pools::for_settings(&settings(cat), Some(&first));
        assert!(Arc::ptr_eq(same.auth.as_ref().unwrap(), &auth));
        let more = cat.replace("children = 1", "children = 2");
        let changed = Pools::for_settings(&settings(&more), Some(&same));
        assert!(!Arc::ptr_eq(changed.auth.as_ref().unwrap(), &auth));
        assert_eq!(changed.health()[0].children, 2);
        let off = Pools::for_settings(&settings("[auth]\nrealm = \"x\"\n"), Some(&changed));
        assert!(off.auth.is_none());
        // `cat` sends the request back: no verdict, an answer that is a failure.
        let e = auth.ask(&["alice", "pw"]).await.unwrap_err();
        assert!(e.to_string().contains("not OK, ERR or BH"), "{e}");
        assert_eq!(auth.health().bh, 1);
    }
}
