//! The shapes of the shared peer harness (`../shared/bench/`: A, L, B, C, D, E), in-repo, each
//! measured first directly (client → origin) and then through Portcullis, in the same run:
//! every figure is printed beside the direct one and their ratio.
//!
//! # To try this example
//!
//! 1. Build the proxy, then run the benchmark (about three minutes, and 30 s more for I):
//!
//!    ```sh
//!    cargo build --release && cargo run --release --example bench
//!    ```
//!
//! 2. A quick look (about 40 seconds, and I): `cargo run --release --example bench -- --quick`
//! 3. With 2,000 idle tunnels as well as 1,000 in D: `cargo run --release --example bench -- --full`
//! 4. The shared link alone (F), against a binary without shaping (built with
//!    `benches/shaping-off.patch` applied) for the cost of shaping when off:
//!    `cargo run --release --example bench -- --fair-only --baseline PATH`
//! 5. The SOCKS5 shapes alone, beside Dante (about 70 seconds; `apt-get install dante-server`
//!    first): `cargo run --release --example bench -- --socks-only` (with `--quick`, about
//!    15 seconds)
//! 6. The TLS shapes alone (A over TLS, D over HTTP/2; about 50 seconds, 20 with `--quick`):
//!    `cargo run --release --example bench -- --tls-only`
//!
//! It builds nothing itself: it runs `target/release/portcullis` (or `--binary PATH`) as a
//! child process, so that the proxy's CPU time (utime + stime of /proc/PID/stat) and memory
//! (VmRSS of /proc/PID/status) are its own. In this process it runs an HTTP/1.1 origin on
//! 127.0.0.1 (`/1k` and `/1m`, 1024 bytes and 1 MiB with Content-Length, keep-alive), a TCP
//! sink for tunnels (sends N bytes for each line "N" it reads, and closes after a line
//! "N close"), a DNS server for the runs by name, and the load generator (hyper's client
//! connection over TcpStream, one task per connection, a fixed time per shape):
//!
//! - A: keep-alive GET /1k, 50 connections: req/s, p50/p99 latency, proxy CPU µs per request;
//!   then the same through a second proxy with the access log off, for the cost of logging,
//!   as three interleaved pairs (on, off, on, off, …) and their median ratio (the live
//!   statistics have no switch: both proxies keep them).
//! - L: one connection, unloaded: p50/p99 latency, and what the proxy adds to it.
//! - B: keep-alive GET /1m, 8 connections: MB/s, proxy CPU seconds per GB.
//! - C: download through a CONNECT tunnel, 256 MiB a tunnel, repeated for the shape's time:
//!   MB/s, proxy CPU seconds per GB.
//! - D: a freshly started proxy holds 1,000 idle CONNECT tunnels (then 2,000 with `--full`):
//!   RSS per tunnel = (RSS with N − RSS before) / N; then one byte through each and again.
//!   "Before" is read after a warm-up: one tunnel opened, a byte through it and back, closed.
//!   The first tunnel of a process maps in the pages of the proxy's code its path runs
//!   (file-backed, shared, about 0.8 MiB over HTTP/1.1 and 1.4 MiB over HTTP/2 over TLS for
//!   Portcullis), which are not memory of the N tunnels; the progress lines on stderr show
//!   the file-backed pages mapped during the steps (0 after the warm-up). Before 2026-12-06
//!   there was no warm-up: those pages were in D's figures (about 0.8 and 1.4 KiB a tunnel
//!   at 1,000).
//! - E: `Connection: close` GET /1k, 50 connections (a TCP connection per request): req/s,
//!   p99 (not counting the TCP connect), proxy CPU µs per request.
//! - A by name: shape A with the origin named `bench.test:PORT` in the URL instead of
//!   `127.0.0.1:PORT`, through the logging proxy, which resolves it with its builtin resolver
//!   against a DNS server this process runs (`tests/it/support/dns.rs`: `bench.test` → 127.0.0.1
//!   with a TTL of an hour, no AAAA). Interleaved with the log pairs above (on, off, by name,
//!   …): proxy CPU µs per request, and by name − by address as the median of the differences.
//!   The pooled origin client keeps its connections, keyed by the name: the proxy resolves only
//!   when it opens one (the 50 of the warm-up, then hardly ever), so this shows what a name
//!   costs a request that does not resolve, not the cost of a lookup.
//! - T: a CONNECT tunnel per request, 50 connections, each asking the sink for 1 KiB through
//!   a new tunnel, which the sink then closes: tunnels/s, proxy CPU µs per tunnel; by address
//!   (`CONNECT 127.0.0.1:PORT`) and by name (`CONNECT bench.test:PORT`) as three interleaved
//!   pairs (address first, then name first, then address first). Every tunnel dials, so every
//!   tunnel by name resolves: with the cache warm, the difference is the cost of a cache hit
//!   (the AAAA and A lookups and the dial's handling of their answers).
//! - C over SOCKS5: C with the tunnel opened by SOCKS5 (no authentication, CONNECT to the
//!   sink's IPv4 address, address type 0x01) on the same port of the same proxy, as three
//!   interleaved pairs with C over CONNECT (CONNECT first, then SOCKS5 first, …): MB/s and
//!   proxy CPU seconds per GB of each (medians), and SOCKS5 ÷ CONNECT (median of the pairs'
//!   ratios). The target: equal within noise, taken as ±10%.
//! - S: a SOCKS5 connection per request, 50 connections, each one TCP connect, the greeting,
//!   CONNECT to the sink's IPv4 address, then 1 KiB from the sink, which closes: connections/s,
//!   p50/p99 from the TCP connect to the first byte from the sink, CPU µs per connection.
//!   Through Portcullis by CONNECT (T, with S's latency) and by SOCKS5, and through Dante
//!   (`danted`, `--dante PATH`, by default /usr/sbin/danted; left out with a note when it is
//!   not there), each warmed up, then three rounds of the three, each round starting with the
//!   next. Dante runs as a child process with a configuration this process writes to its
//!   temporary directory: a loopback port, `socksmethod: none`, client and socks rules that
//!   pass 127.0.0.0/8 only, `external: 127.0.0.1`, errors alone logged (to a file; Portcullis
//!   logs every connection), as root `user.privileged: root` and `user.unprivileged: nobody`.
//!   danted forks (a monitor, negotiate, request and I/O children; more under load, and they
//!   exit when idle), so its CPU is that of its process tree: utime + stime + cutime + cstime
//!   of danted and of every process whose parents lead to it, from one pass over /proc at each
//!   end of a run (a child that exits and is waited for moves its ticks into its parent's
//!   cutime + cstime; Portcullis, which does not fork, is counted the same way). C through
//!   Dante runs once, for comparison. The target: Portcullis's CPU per connection ≤ 0.5×
//!   Dante's (median of the rounds' ratios). `--socks-only` runs nothing else (with
//!   `--quick`, 1 s a run); `--no-socks` leaves them out.
//!
//! - A over TLS (issue 20): shape A through the TLS listener (`listen_tls`) of a proxy that
//!   also has a plain listener: HTTP/1.1 over TLS to the proxy (ALPN `http/1.1` alone), plain
//!   HTTP to the origin; beside A through the plain listener of the same proxy, as three
//!   interleaved pairs (plain first, then TLS first, …), each run opening its 50 connections
//!   (and so its 50 handshakes) anew. Proxy CPU µs per request of each, and TLS ÷ plain as the
//!   median of the pairs' ratios. The target: ≤ 1.5×. The certificate is the binary's own:
//!   `portcullis cert --ip 127.0.0.1 --out DIR` in the temporary directory; the client trusts
//!   its `ca.pem` alone.
//! - D over HTTP/2 (issue 20): idle CONNECT tunnels as streams of HTTP/2 connections over TLS
//!   (ALPN `h2`), 100 streams a connection (the most the proxy allows at once), so 10
//!   connections for D's 1,000 tunnels (20 for 2,000); beside D over HTTP/1.1 (plain, a
//!   connection a tunnel), each on a freshly started proxy with both listeners, in three
//!   rounds (HTTP/1.1 first, then HTTP/2 first, …). RSS per tunnel as in D (after a
//!   warm-up over the same listener and protocol: one connection, one tunnel), from the RSS
//!   before the connections were opened (their memory is in it); also the RSS with the
//!   connections alone, and per stream beyond it. The target: ≤ 4 KiB per idle tunnel (the
//!   median of the rounds). `--tls-only` runs nothing else; `--no-tls` leaves them out (for a
//!   binary from before `listen_tls`).
//!
//! - I: an idle flood. A third proxy, with the default `[limits]` and an admin listener,
//!   serves a normal client from 127.0.0.1 (one `GET /1k` on a connection of its own every
//!   100 ms, 100 visits, 30 with `--quick`) first alone, then while 5,040 idle connections from
//!   126 addresses (127.0.0.2 to 127.0.0.127, 40 each: under the per-client limit, over the
//!   total) reconnect as soon as the proxy closes them, on a thread and runtime of their own:
//!   requests answered, p50/p95/slowest, the proxy's RSS before and at the flood's peak, and
//!   from its `/metrics` the connections that made room or were shed. The target: at least
//!   95% answered with p95 at most 100 ms. `--flood-only` runs nothing else; `--no-flood`
//!   leaves it out. It needs about 5,600 open files in this process.
//!
//! - F: the shared link (issue 18), with `--fair-only` alone (about three minutes; with
//!   `--quick`, 4 s a sub-run). Each sub-run starts a proxy of its own with the `[shaping]`
//!   and `[[limits.rate]]` it needs; its clients bind 127.0.0.2, .3 and .4 before they
//!   connect (the proxy tells clients apart by address). A saturating client downloads
//!   `GET /1m` again and again on keep-alive connections (or, for the cap, asks the sink
//!   for a terabyte through CONNECT tunnels); its bytes are counted as they arrive, over a
//!   window of 10 s after 2 s of warm-up (3 s after 1 s with `--quick`), not by finished
//!   transfers. 1:1: two clients of 4 connections each on a 400 Mbit/s link, each one's
//!   share of the bytes (target 50% ± 10%). 2:1: the same with `[shaping.weights]` 2 and 1
//!   (67% ± 10% and 33% ± 10%). Cap: 127.0.0.2 capped at 5 Mbit/s over 8 connections beside
//!   an uncapped client of 4, by GET and by CONNECT (±5% of 625 kB/s). Latency: a light
//!   client sends a `GET /1k` every 20 ms on one keep-alive connection, alone and then beside
//!   a client saturating the proxy, unshaped and shaped at 400 Mbit/s (p95 ≤ 3× its idle p95
//!   and ≤ 10 ms). With `--baseline PATH`, a binary without shaping (this code with
//!   `benches/shaping-off.patch` applied, which takes issue 18's hooks out of the data path;
//!   or one from before shaping): A and C through it
//!   and through this one (neither with `[shaping]`), as three interleaved pairs (this one
//!   first, then the baseline first, …), and the median of the pairs' ratios of CPU per
//!   request and per GB (targets ≤ 1.03× and ≤ 1.05×); C starts 1.2 s after A, once the
//!   proxy no longer makes room for A's light clients (the express lane's linger). Every
//!   figure is printed beside its target, met or NOT MET.
//!
//! `--no-names` leaves out the DNS server, the proxy's `[dns]` section and the runs by name
//! (for a proxy binary from before the builtin resolver). `--serve-dns ADDR` runs nothing but
//! that DNS server on ADDR (UDP), until interrupted: for counting instructions by hand, as in
//! the book's Profiling section.
//!
//! The proxy logs every request as JSON to a file in a temporary directory, as the targets of
//! the performance issue require, and has no admin listener; its `[limits]` are raised so that
//! D's tunnels, all from 127.0.0.1, are not refused by `max_connections_per_client` (256).
//! Only loopback addresses are used.
//! The load generator and the origin share the machine's cores with the proxy, as wrk and
//! nginx do in the shared harness: absolute figures say as much about the machine as about the
//! proxy; read the ratios, the CPU per request or per GB, and the memory per tunnel.

use std::convert::Infallible;
use std::fs;
use std::io::{self, Read as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use clap::Parser;
use http::header::{CONNECTION, HOST};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;

/// Runs the A–E shapes directly and through Portcullis and prints one table; then the SOCKS5
/// shapes, beside Dante.
#[derive(Debug, Parser)]
struct Args {
    /// Short runs (1 s a shape): a quick look, noisier figures.
    #[arg(long)]
    quick: bool,
    /// Also hold 2,000 idle tunnels in D (after 1,000).
    #[arg(long)]
    full: bool,
    /// The proxy binary [default: target/release/portcullis].
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
    /// Leave out the runs by name and the proxy's `[dns]` section (for a binary from before
    /// the builtin resolver).
    #[arg(long)]
    no_names: bool,
    /// Leave out I, the idle flood (about 30 s, 5,040 connections).
    #[arg(long)]
    no_flood: bool,
    /// Run nothing but I, the idle flood.
    #[arg(long)]
    flood_only: bool,
    /// Only serve `bench.test` → 127.0.0.1 by DNS (UDP) on ADDR until interrupted.
    #[arg(long, value_name = "ADDR")]
    serve_dns: Option<SocketAddr>,
    /// Run nothing but the SOCKS5 shapes: C over SOCKS5 beside C over CONNECT, and S,
    /// through Portcullis and Dante.
    #[arg(long)]
    socks_only: bool,
    /// Leave out the SOCKS5 shapes.
    #[arg(long, conflicts_with = "socks_only")]
    no_socks: bool,
    /// Run nothing but F, the shared link: fair shares, a cap, a light client's latency
    /// beside a saturating one, and (with `--baseline`) what shaping's code costs when off.
    #[arg(long)]
    fair_only: bool,
    /// With `--fair-only`: only F's light client beside an unshaped saturating one, through
    /// the proxy and straight to its origin (for working on the data path's latency).
    #[arg(long, requires = "fair_only")]
    light_only: bool,
    /// A Portcullis binary without shaping (`benches/shaping-off.patch`), for F's A and C
    /// against it (F leaves that out without it).
    #[arg(long, value_name = "PATH")]
    baseline: Option<PathBuf>,
    /// Dante's server, measured beside Portcullis in the SOCKS5 shapes (left out, with a
    /// note, when it is not there).
    #[arg(long, value_name = "PATH", default_value = "/usr/sbin/danted")]
    dante: PathBuf,
    /// Run nothing but the TLS shapes: A over TLS beside A over the plain listener, and D
    /// over HTTP/2 beside D over HTTP/1.1.
    #[arg(long)]
    tls_only: bool,
    /// Leave out the TLS shapes (for a binary from before `listen_tls`).
    #[arg(long, conflicts_with = "tls_only")]
    no_tls: bool,
}

/// The DNS server this benchmark runs, from the integration tests.
#[path = "../tests/it/support/dns.rs"]
mod dns;

/// The origin's name in the runs by name; the sink has the same address.
const BENCH_NAME: &str = "bench.test";

/// The zone of the benchmark's DNS server: [`BENCH_NAME`] → 127.0.0.1, no AAAA, for an hour
/// (the proxy is told to remember the missing AAAA as long), so that no answer runs out
/// during a run.
fn bench_zone() -> dns::Zone {
    dns::Zone::new().with(
        BENCH_NAME,
        dns::Answer::Records {
            a: vec![Ipv4Addr::LOCALHOST],
            aaaa: Vec::new(),
            ttl: 3600,
        },
    )
}

/// Connections of shapes A and E, and of B.
const A_CONNS: usize = 50;
const B_CONNS: usize = 8;
const E_CONNS: usize = 50;
/// Bytes of one tunnel download in C.
const C_BYTES: u64 = 256 << 20;
/// Tunnel downloads in C at most, however fast they are.
const C_MAX_RUNS: usize = 16;
/// The longest one request, connect or tunnel step may take before it counts as an error.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Errors one load-generator connection tolerates before it gives up.
const MAX_ERRORS_PER_CONN: u64 = 100;
/// Connections of shape T, and the bytes through each tunnel.
const T_CONNS: usize = 50;
const T_BYTES: u64 = 1024;
/// Interleaved pairs of T, by address and by name.
const T_PAIRS: usize = 3;
/// Interleaved rounds of the SOCKS5 shapes: C by CONNECT and by SOCKS5; S by CONNECT, by
/// SOCKS5 and through Dante.
const SOCKS_ROUNDS: usize = 3;
/// C through Portcullis (by CONNECT or SOCKS5) counts as within noise of the other when
/// the median of the rounds' ratios is within this share of 1.
const SOCKS_NOISE: f64 = 0.10;
/// Tunnels D opens at once.
const D_CONCURRENCY: usize = 64;
/// Failed tunnels after which D stops opening more.
const D_MAX_FAILS: usize = 200;

/// How long each shape runs.
#[derive(Debug, Clone, Copy)]
struct Durations {
    warm_up: Duration,
    keep_alive: Duration,
    latency: Duration,
    tunnel: Duration,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(addr) = args.serve_dns {
        return runtime.block_on(serve_dns(addr));
    }
    // An interrupt drops the run, and with it the proxies it started (their guards kill them).
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = run(args) => outcome,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--serve-dns`: the benchmark's DNS server alone, until interrupted.
async fn serve_dns(addr: SocketAddr) -> ExitCode {
    let server = dns::DnsServer::start(addr, bench_zone()).await;
    eprintln!(
        "serving {BENCH_NAME} → 127.0.0.1 by DNS on {} (UDP); Ctrl-C ends it",
        server.addr
    );
    let _ = tokio::signal::ctrl_c().await;
    eprintln!(
        "{} queries for {BENCH_NAME}",
        server.queries_for(BENCH_NAME)
    );
    ExitCode::SUCCESS
}

async fn run(args: Args) -> anyhow::Result<()> {
    let durations = if args.quick {
        Durations {
            warm_up: Duration::from_millis(300),
            keep_alive: Duration::from_secs(1),
            latency: Duration::from_secs(1),
            tunnel: Duration::ZERO,
        }
    } else {
        Durations {
            warm_up: Duration::from_secs(1),
            keep_alive: Duration::from_secs(5),
            latency: Duration::from_secs(3),
            tunnel: Duration::from_secs(3),
        }
    };
    let binary = args.binary.clone().unwrap_or_else(default_binary);
    if !binary.is_file() {
        bail!(
            "{} not found: this benchmark runs the release binary and builds nothing itself.\n\
             Build it first: cargo build --release && cargo run --release --example bench",
            binary.display()
        );
    }
    warn_if_stale(&binary);
    let visits = if args.quick { 30 } else { 100 };
    let flood_files = (FLOOD_ADDRESSES * FLOOD_PER_ADDRESS) as u64 + 512;
    let flood = !args.no_flood && open_files_limit().is_none_or(|l| l >= flood_files);
    if !args.no_flood && !flood {
        eprintln!("bench: I (the idle flood) needs {flood_files} open files in this process: left out; raise it with `ulimit -n {flood_files}`");
    }
    if args.flood_only {
        ensure!(flood, "I cannot run: too few open files allowed");
        let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
        let origin = start_origin().await?;
        print_flood(&idle_flood(&binary, dir.path(), origin, visits).await?);
        return Ok(());
    }
    if args.fair_only {
        let t = if args.quick {
            FairTimes {
                warm_up: Duration::from_secs(1),
                window: Duration::from_secs(3),
            }
        } else {
            FairTimes {
                warm_up: Duration::from_secs(2),
                window: Duration::from_secs(10),
            }
        };
        let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
        let origin = start_origin().await?;
        let sink = start_sink().await?;
        let mut checks = Vec::new();
        print_header(&binary, &durations, Shapes::Fair(&t));
        if let Some(baseline) = &args.baseline {
            println!("baseline (without shaping): {}", baseline.display());
        }
        let baseline = args.baseline.as_deref();
        let rows = fair_shapes(
            &binary,
            args.light_only,
            baseline,
            dir.path(),
            origin,
            sink,
            &t,
            &durations,
            clock_ticks(),
            &mut checks,
        )
        .await?;
        print_fair(&rows, &t);
        if !checks.is_empty() {
            print_checks(&checks);
        }
        println!();
        println!(
            "loadavg_at_end: {}",
            fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
        );
        return Ok(());
    }
    if args.socks_only {
        let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
        let origin = start_origin().await?;
        let sink = start_sink().await?;
        let clk = clock_ticks();
        let mut checks = Vec::new();
        print_header(&binary, &durations, Shapes::Socks);
        let (proxy, _) = Proxy::logged(&binary, dir.path(), origin, sink, None)?;
        let dante = Dante::start_if_there(&args.dante, dir.path());
        let socks =
            socks_shapes(&proxy, dante.as_ref(), sink, &durations, clk, &mut checks).await?;
        drop(dante);
        print_socks(&socks);
        print_checks(&checks);
        return Ok(());
    }
    let mut steps = vec![1_000];
    if args.full {
        steps.push(2_000);
    }
    let needed = 2 * steps.last().copied().unwrap_or(0) as u64 + 512;
    let limit = open_files_limit();
    if limit.is_some_and(|l| l < needed) {
        bail!(
            "D needs about {needed} open files in this process (a client and a sink socket per tunnel); \
             the limit is {}: raise it with `ulimit -n {needed}`",
            limit.unwrap_or(0)
        );
    }
    if args.tls_only {
        let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
        let origin = start_origin().await?;
        let sink = start_sink().await?;
        let mut checks = Vec::new();
        print_header(&binary, &durations, Shapes::Tls(&steps));
        let tls = tls_shapes(
            &binary,
            dir.path(),
            (origin, sink),
            &steps,
            &durations,
            clock_ticks(),
            &mut checks,
        )
        .await?;
        print_tls(&tls);
        print_checks(&checks);
        return Ok(());
    }

    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let origin = start_origin().await?;
    let sink = start_sink().await?;
    let dns = if args.no_names {
        None
    } else {
        Some(dns::DnsServer::start("127.0.0.1:0".parse()?, bench_zone()).await)
    };
    let dns_addr = dns.as_ref().map(|d| d.addr);
    let clk = clock_ticks();
    let mut table = Table::default();
    let mut checks = Vec::new();

    print_header(&binary, &durations, Shapes::All(&steps));
    let (proxy, access_log) = Proxy::logged(&binary, dir.path(), origin, sink, dns_addr)?;
    let names = dns.is_some();
    preflight(proxy.addr, origin, sink, names).await?;
    let mut logged_requests: u64 = if names { 5 } else { 3 };

    let one_k = Target::new(origin, "/1k", 1024);
    let one_m = Target::new(origin, "/1m", ONE_MIB as u64);
    let one_k_named = Target::named(origin, "/1k", 1024);
    let direct = Via::Direct;
    let through = Via::Proxy(proxy.addr);

    // Warm-up, not recorded; by name it also opens the pooled connections to bench.test.
    let mut warm = vec![(direct, &one_k), (through, &one_k)];
    if names {
        warm.push((through, &one_k_named));
    }
    for (via, target) in warm {
        let r = http_load(via, target, A_CONNS, false, durations.warm_up, None, clk).await?;
        if via.is_proxy() {
            logged_requests += r.requests + r.errors;
        }
    }

    // A, and A with the access log off.
    let a_direct = measure(
        "A",
        direct,
        &one_k,
        A_CONNS,
        false,
        &durations,
        None,
        clk,
        &mut checks,
    )
    .await?;
    let a_proxy = measure(
        "A",
        through,
        &one_k,
        A_CONNS,
        false,
        &durations,
        Some(proxy.pid),
        clk,
        &mut checks,
    )
    .await?;
    logged_requests += a_proxy.requests + a_proxy.errors;
    let quiet = Proxy::start(
        &binary,
        dir.path(),
        "unlogged",
        &[origin],
        sink,
        Path::new("off"),
        dns_addr,
        "",
    )?;
    http_load(
        Via::Proxy(quiet.addr),
        &one_k,
        A_CONNS,
        false,
        durations.warm_up,
        None,
        clk,
    )
    .await?;
    // The cost of logging is a few percent, less than two runs differ on a shared machine:
    // compare it over interleaved pairs (the first "on" is A above), on then off, and take
    // the median ratio. A by name follows each pair, through the logging proxy, and is
    // compared with the pair's "on".
    let mut a_quiet = None;
    let mut on_off = Vec::new();
    let mut a_named = None;
    let mut by_name = Vec::new();
    for pair in 0..LOG_PAIRS {
        let later;
        let on = if pair == 0 {
            &a_proxy
        } else {
            let on = measure(
                "A log on",
                through,
                &one_k,
                A_CONNS,
                false,
                &durations,
                Some(proxy.pid),
                clk,
                &mut checks,
            )
            .await?;
            logged_requests += on.requests + on.errors;
            later = on;
            &later
        };
        let off = measure(
            "A log off",
            Via::Proxy(quiet.addr),
            &one_k,
            A_CONNS,
            false,
            &durations,
            Some(quiet.pid),
            clk,
            &mut checks,
        )
        .await?;
        on_off.push((
            on.rps() / off.rps(),
            on.cpu_us_per_request()
                .zip(off.cpu_us_per_request())
                .map(|(on, off)| on / off),
        ));
        a_quiet.get_or_insert(off);
        if names {
            let named = measure(
                "A name",
                through,
                &one_k_named,
                A_CONNS,
                false,
                &durations,
                Some(proxy.pid),
                clk,
                &mut checks,
            )
            .await?;
            logged_requests += named.requests + named.errors;
            by_name.extend(Compared::of(on, &named));
            a_named.get_or_insert(named);
        }
    }
    let a_quiet = a_quiet.context("no run with the access log off")?;
    drop(quiet);
    table.row(
        "A keep-alive 1 KiB, 50 conns, req/s",
        Some(a_direct.rps()),
        Some(a_proxy.rps()),
    );
    table.row(
        "A p50, ms",
        Some(a_direct.percentile_ms(0.50)),
        Some(a_proxy.percentile_ms(0.50)),
    );
    table.row(
        "A p99, ms",
        Some(a_direct.percentile_ms(0.99)),
        Some(a_proxy.percentile_ms(0.99)),
    );
    table.row(
        "A proxy CPU per request, µs",
        None,
        a_proxy.cpu_us_per_request(),
    );
    table.row(
        "A access log off, req/s",
        Some(a_direct.rps()),
        Some(a_quiet.rps()),
    );
    table.row(
        "A access log off, proxy CPU per request, µs",
        None,
        a_quiet.cpu_us_per_request(),
    );
    table.ratio_row(
        "A access log on ÷ off, req/s (median of pairs)",
        median(on_off.iter().map(|&(rps, _)| rps).collect()),
    );
    table.ratio_row(
        "A access log on ÷ off, CPU per request (median of pairs)",
        median(on_off.iter().filter_map(|&(_, cpu)| cpu).collect()),
    );
    if let Some(named) = &a_named {
        let shown = ("A", "(pooled: hardly resolves)", "req/s", "request");
        Compared::rows(&mut table, shown, &a_direct, named, &by_name);
    }

    // L: one connection, unloaded.
    let l = Durations {
        keep_alive: durations.latency,
        ..durations
    };
    let l_direct = measure("L", direct, &one_k, 1, false, &l, None, clk, &mut checks).await?;
    let l_proxy = measure(
        "L",
        through,
        &one_k,
        1,
        false,
        &l,
        Some(proxy.pid),
        clk,
        &mut checks,
    )
    .await?;
    logged_requests += l_proxy.requests + l_proxy.errors;
    let l_d50 = l_direct.percentile_ms(0.50) * 1e3;
    let l_p50 = l_proxy.percentile_ms(0.50) * 1e3;
    table.row("L one connection, p50, µs", Some(l_d50), Some(l_p50));
    table.row(
        "L one connection, p99, µs",
        Some(l_direct.percentile_ms(0.99) * 1e3),
        Some(l_proxy.percentile_ms(0.99) * 1e3),
    );
    table.row("L added latency at p50, µs", None, Some(l_p50 - l_d50));
    table.row(
        "L proxy CPU per request, µs",
        None,
        l_proxy.cpu_us_per_request(),
    );

    // B: 1 MiB bodies.
    let b_direct = measure(
        "B",
        direct,
        &one_m,
        B_CONNS,
        false,
        &durations,
        None,
        clk,
        &mut checks,
    )
    .await?;
    let b_proxy = measure(
        "B",
        through,
        &one_m,
        B_CONNS,
        false,
        &durations,
        Some(proxy.pid),
        clk,
        &mut checks,
    )
    .await?;
    logged_requests += b_proxy.requests + b_proxy.errors;
    table.row(
        "B keep-alive 1 MiB, 8 conns, MB/s",
        Some(b_direct.mb_per_s()),
        Some(b_proxy.mb_per_s()),
    );
    table.row(
        "B proxy CPU-s per GB",
        None,
        b_proxy.cpu_s_per_gb(b_proxy.bytes),
    );

    // C: CONNECT tunnel downloads.
    let c_direct = tunnel_load("C", direct, sink, durations.tunnel, None, clk, &mut checks).await?;
    let c_proxy = tunnel_load(
        "C",
        through,
        sink,
        durations.tunnel,
        Some(proxy.pid),
        clk,
        &mut checks,
    )
    .await?;
    logged_requests += c_proxy.requests + c_proxy.errors;
    table.row(
        "C CONNECT download, 256 MiB a tunnel, MB/s",
        Some(c_direct.mb_per_s()),
        Some(c_proxy.mb_per_s()),
    );
    table.row(
        "C proxy CPU-s per GB",
        None,
        c_proxy.cpu_s_per_gb(c_proxy.bytes),
    );

    // E: a connection per request.
    let e_direct = measure(
        "E",
        direct,
        &one_k,
        E_CONNS,
        true,
        &durations,
        None,
        clk,
        &mut checks,
    )
    .await?;
    let e_proxy = measure(
        "E",
        through,
        &one_k,
        E_CONNS,
        true,
        &durations,
        Some(proxy.pid),
        clk,
        &mut checks,
    )
    .await?;
    logged_requests += e_proxy.requests + e_proxy.errors;

    // T: a tunnel per request, by address and (interleaved) by name.
    let by_address = sink.to_string();
    let by_name_authority = format!("{BENCH_NAME}:{}", sink.port());
    let t_direct = measure_tunnels(
        "T",
        direct,
        sink,
        &by_address,
        Until::End,
        &durations,
        None,
        clk,
        &mut checks,
    )
    .await?;
    let mut t_proxy = None;
    let mut t_named = None;
    let mut t_by_name = Vec::new();
    for pair in 0..T_PAIRS {
        // By address first, then by name first, and so on, so that a drift of the machine's
        // speed during the pairs does not always favour one of them.
        let mut order = vec![("T", &by_address)];
        if names {
            order.push(("T name", &by_name_authority));
        }
        if pair % 2 == 1 {
            order.reverse();
        }
        let (mut address, mut named) = (None, None);
        for (shape, authority) in order {
            let load = measure_tunnels(
                shape,
                through,
                sink,
                authority,
                Until::End,
                &durations,
                Some(proxy.pid),
                clk,
                &mut checks,
            )
            .await?;
            logged_requests += load.requests + load.errors;
            if authority == &by_address {
                address = Some(load);
            } else {
                named = Some(load);
            }
        }
        let address = address.context("no run of T by address")?;
        if let Some(named) = named {
            t_by_name.extend(Compared::of(&address, &named));
            t_named.get_or_insert(named);
        }
        t_proxy.get_or_insert(address);
    }
    let t_proxy = t_proxy.context("no run of T")?;

    // The SOCKS5 shapes, through the same proxy, beside Dante.
    let socks = if args.no_socks {
        None
    } else {
        let dante = Dante::start_if_there(&args.dante, dir.path());
        let socks =
            socks_shapes(&proxy, dante.as_ref(), sink, &durations, clk, &mut checks).await?;
        logged_requests += socks.through_portcullis;
        Some(socks)
    };

    // The access log of the logging proxy, once its writer has had a round.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (log_lines, log_bytes) = count_lines(&access_log);
    drop(proxy);

    // D: idle tunnels on a freshly started proxy.
    let fresh = Proxy::start(
        &binary,
        dir.path(),
        "fresh",
        &[origin],
        sink,
        &access_log,
        dns_addr,
        "",
    )?;
    let d = idle_tunnels(&fresh, sink, &steps).await?;
    drop(fresh);
    // The TLS shapes, on proxies of their own with a TLS listener beside the plain one.
    let tls = if args.no_tls {
        None
    } else {
        Some(
            tls_shapes(
                &binary,
                dir.path(),
                (origin, sink),
                &steps,
                &durations,
                clk,
                &mut checks,
            )
            .await?,
        )
    };
    table.row(
        "D proxy RSS at start, MiB",
        None,
        Some(d.rss0_kib as f64 / 1024.0),
    );
    for step in &d.steps {
        table.count_row(
            &format!("D idle tunnels held, of {}", thousands(step.n as f64)),
            step.ok as u64,
        );
        table.row(
            &format!("D RSS per idle tunnel at {}, KiB", thousands(step.n as f64)),
            None,
            step.kib_per_tunnel(d.rss0_kib),
        );
    }
    table.row(
        "D RSS per tunnel after 1 byte through each, KiB",
        None,
        d.after_use.kib_per_tunnel(d.rss0_kib),
    );
    table.count_row(
        &format!(
            "D proxy threads with {} tunnels",
            thousands(d.after_use.n as f64)
        ),
        d.after_use.threads,
    );
    table.row(
        "E Connection: close 1 KiB, 50 conns, req/s",
        Some(e_direct.rps()),
        Some(e_proxy.rps()),
    );
    table.row(
        "E p99 (not counting the TCP connect), ms",
        Some(e_direct.percentile_ms(0.99)),
        Some(e_proxy.percentile_ms(0.99)),
    );
    table.row(
        "E proxy CPU per request, µs",
        None,
        e_proxy.cpu_us_per_request(),
    );
    table.row(
        "T CONNECT per request, 1 KiB, 50 conns, tunnels/s",
        Some(t_direct.rps()),
        Some(t_proxy.rps()),
    );
    table.row(
        "T proxy CPU per tunnel, µs",
        None,
        t_proxy.cpu_us_per_request(),
    );
    if let Some(named) = &t_named {
        let shown = ("T", "(resolves each)", "tunnels/s", "tunnel");
        Compared::rows(&mut table, shown, &t_direct, named, &t_by_name);
    }

    println!();
    table.print();
    println!();
    println!("Ratio: portcullis ÷ direct (for req/s and MB/s, the share of direct kept; for latency, times direct).");
    println!(
        "The load generator and origin run in this process and share the cores with the proxy."
    );
    if let Some(socks) = &socks {
        print_socks(socks);
    }
    if let Some(tls) = &tls {
        print_tls(tls);
    }
    print_checks(&checks);
    println!(
        "| D | portcullis | {} tunnels | {} failed, {} of {} answered 1 byte | — | — |",
        d.after_use.n, d.fails, d.echo_ok, d.after_use.n
    );
    println!();
    println!(
        "access log (JSON): {log_lines} lines, {:.1} MB, for {logged_requests} requests, tunnels and SOCKS connections sent through the logging proxy",
        log_bytes as f64 / 1e6
    );
    if let Some(dns) = &dns {
        println!(
            "DNS server: {} queries for {BENCH_NAME} (A and AAAA once per proxy that asked, while the cache holds them)",
            dns.queries_for(BENCH_NAME)
        );
    }
    let errors: u64 = checks.iter().map(|c| c.errors).sum();
    if errors > 0 || d.fails > 0 {
        println!("WARNING: {errors} request errors and {} failed tunnels: the figures above are suspect.", d.fails);
    }
    if flood {
        println!();
        print_flood(&idle_flood(&binary, dir.path(), origin, visits).await?);
    }
    Ok(())
}

// ------------------------------------------------------------------ the proxy process

/// `target/release/portcullis` under `CARGO_TARGET_DIR` or this crate's `target`.
fn default_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("release").join("portcullis")
}

/// Warns when a file under `src/` is newer than the binary: it measures older code.
fn warn_if_stale(binary: &Path) {
    let Ok(built) = fs::metadata(binary).and_then(|m| m.modified()) else {
        return;
    };
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let newest = fs::read_dir(&src)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max();
    if newest.is_some_and(|n| n > built) {
        eprintln!(
            "warning: {} is older than {}: it measures the code it was built from; `cargo build --release` first",
            binary.display(),
            src.display()
        );
    }
}

/// A running proxy, killed when dropped (at the end, on an error and on a panic).
struct Proxy {
    child: Child,
    pid: u32,
    addr: SocketAddr,
}

impl Proxy {
    /// The benchmark's main proxy, which writes its JSON access log into `dir`; and that log.
    fn logged(
        binary: &Path,
        dir: &Path,
        origin: SocketAddr,
        sink: SocketAddr,
        dns: Option<SocketAddr>,
    ) -> anyhow::Result<(Proxy, PathBuf)> {
        let access_log = dir.join("access.log");
        let proxy = Proxy::start(binary, dir, "logged", &[origin], sink, &access_log, dns, "")?;
        Ok((proxy, access_log))
    }

    /// Writes a configuration named `name` into `dir` and starts `binary` with it; plain HTTP
    /// may reach the ports of `origins`, CONNECT that of `sink`. `access` is
    /// the access log file, or `off`; `dns` the DNS server of its `[dns] servers`, if any.
    /// `extra` goes at the end of the configuration (F's `[shaping]` and `[[limits.rate]]`).
    #[allow(clippy::too_many_arguments)]
    fn start(
        binary: &Path,
        dir: &Path,
        name: &str,
        origins: &[SocketAddr],
        sink: SocketAddr,
        access: &Path,
        dns: Option<SocketAddr>,
        extra: &str,
    ) -> anyhow::Result<Proxy> {
        let addr = free_port()?;
        let mut config = Proxy::config(addr, origins, sink, access, dns);
        config.push_str(extra);
        Proxy::launch(binary, dir, name, addr, &config)
    }

    /// The configuration of [`Proxy::start`], without its `extra`: a plain listener on `addr`.
    fn config(
        addr: SocketAddr,
        origins: &[SocketAddr],
        sink: SocketAddr,
        access: &Path,
        dns: Option<SocketAddr>,
    ) -> String {
        let mut config = format!(
            r#"listen = ["{addr}"]
[ports]
http = [{origin_ports}]
connect = [{sink_port}]
[destinations]
allow_loopback = true
[limits]
max_connections = 10000
max_connections_per_client = 10000
[log]
access = "{access}"
format = "json"
level = "warn"
[admin]
listen = "off"
"#,
            origin_ports = origins
                .iter()
                .map(|o| o.port().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            sink_port = sink.port(),
            access = access.display(),
        );
        if let Some(dns) = dns {
            // Answers kept an hour, missing ones too (30 s by default): none runs out mid-run.
            config.push_str(&format!(
                "[dns]\nservers = [\"{dns}\"]\nnegative_ttl = \"1h\"\n"
            ));
        }
        config
    }

    /// Starts `binary` with `config` (written into `dir` as `name`.toml), which makes it
    /// listen on `addr`; waits until it does.
    fn launch(
        binary: &Path,
        dir: &Path,
        name: &str,
        addr: SocketAddr,
        config: &str,
    ) -> anyhow::Result<Proxy> {
        let config_path = dir.join(format!("{name}.toml"));
        fs::write(&config_path, config)?;
        let stderr_path = dir.join(format!("{name}.stderr"));
        let stderr = fs::File::create(&stderr_path)?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut proxy = Proxy {
            pid: child.id(),
            child,
            addr,
        };
        wait_until_listening(&mut proxy.child, "the proxy", addr, &[&stderr_path])?;
        Ok(proxy)
    }
}

/// Waits until `child` (`name`) listens on `addr`, at most 10 s; fails with what it wrote to
/// `logs` when it exits or does not listen by then.
fn wait_until_listening(
    child: &mut Child,
    name: &str,
    addr: SocketAddr,
    logs: &[&Path],
) -> anyhow::Result<()> {
    let said = || -> String {
        logs.iter()
            .map(|log| fs::read_to_string(log).unwrap_or_default())
            .collect()
    };
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("{name} exited ({status}) at start:\n{}", said());
        }
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(10) {
            bail!("{name} did not listen on {addr} within 10 s:\n{}", said());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Dante's SOCKS server (`danted`) for the SOCKS5 shapes, with a configuration of ours in the
/// temporary directory; stopped when dropped.
struct Dante {
    child: Child,
    /// The main process: its descendants (the children it forks) are counted with it.
    pid: u32,
    addr: SocketAddr,
    /// What `danted -v` says.
    version: String,
}

impl Dante {
    /// Starts `binary` if it is there; otherwise, or when it does not start, says why on
    /// stderr and gives none: the SOCKS5 shapes then run through Portcullis alone.
    fn start_if_there(binary: &Path, dir: &Path) -> Option<Dante> {
        if !binary.is_file() {
            eprintln!(
                "bench: {} not found: Dante is left out of the SOCKS5 shapes \
                 (`apt-get install dante-server`, or `--dante PATH`)",
                binary.display()
            );
            return None;
        }
        match Dante::start(binary, dir) {
            Ok(dante) => Some(dante),
            Err(e) => {
                eprintln!("bench: Dante is left out of the SOCKS5 shapes: {e:#}");
                None
            }
        }
    }

    /// SOCKS5 without authentication on a loopback port, for clients in 127.0.0.0/8 and
    /// destinations in 127.0.0.0/8 only, leaving from 127.0.0.1; it logs errors alone (to a
    /// file), where Portcullis writes an access record for every connection.
    fn start(binary: &Path, dir: &Path) -> anyhow::Result<Dante> {
        let addr = free_port()?;
        let log = dir.join("danted.log");
        // As root, danted must be told whom to be; as anyone else, it stays who it is.
        let users = if status_field(std::process::id(), "Uid:") == Some(0) {
            "user.privileged: root\nuser.unprivileged: nobody\n"
        } else {
            ""
        };
        let config = format!(
            "logoutput: {log}\ninternal: {ip} port = {port}\nexternal: 127.0.0.1\n\
             clientmethod: none\nsocksmethod: none\n{users}\
             client pass {{\n  from: 127.0.0.0/8 to: 127.0.0.0/8\n  log: error\n}}\n\
             socks pass {{\n  from: 127.0.0.0/8 to: 127.0.0.0/8\n  command: connect\n  log: error\n}}\n",
            log = log.display(),
            ip = addr.ip(),
            port = addr.port(),
        );
        let config_path = dir.join("danted.conf");
        fs::write(&config_path, config)?;
        let stderr_path = dir.join("danted.stderr");
        let child = Command::new(binary)
            .arg("-f")
            .arg(&config_path)
            .arg("-p")
            .arg(dir.join("danted.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr_path)?)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut dante = Dante {
            pid: child.id(),
            child,
            addr,
            version: String::new(),
        };
        wait_until_listening(&mut dante.child, "danted", addr, &[&stderr_path, &log])?;
        let said = Command::new(binary).arg("-v").output().ok();
        dante.version = said
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| {
                let first = s.lines().next()?.split("  ").next()?;
                Some(first.trim_end_matches('.').to_owned())
            })
            .unwrap_or_else(|| "Dante (version unknown)".to_owned());
        Ok(dante)
    }
}

impl Drop for Dante {
    fn drop(&mut self) {
        // SIGTERM, so that the main process ends its children; SIGKILL after 3 s.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .stderr(Stdio::null())
            .status();
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// A process's parent and CPU times, from /proc/PID/stat.
struct Stat {
    ppid: u32,
    /// utime + stime, in clock ticks.
    own: u64,
    /// cutime + cstime: its children that have exited and been waited for.
    children: u64,
}

fn stat(pid: &str) -> Option<Stat> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    let field = |i: usize| rest.get(i)?.parse::<u64>().ok();
    Some(Stat {
        ppid: rest.get(1)?.parse().ok()?,
        own: field(11)? + field(12)?,
        children: field(13)? + field(14)?,
    })
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    Some(stat(pid)?.own)
}

/// CPU ticks of a process and all its descendants: utime + stime + cutime + cstime of `root`
/// and of every process whose chain of parents leads to it, read in one pass over /proc.
///
/// danted forks (a monitor, negotiate, request and I/O children, more under load, which exit
/// again when idle). A child's ticks are in its own utime + stime while it lives; once it has
/// exited and been waited for (danted waits for its children), they are in its parent's
/// cutime + cstime, together with those of its own waited-for children. So each tick counts
/// once whether its process is alive at both ends of a run, started during it or exited
/// during it. What this misses: a child waited for by a process outside the tree (none
/// here), and a child waited for while the pass reads /proc, which is counted twice or not at
/// all (its own ticks, a few per child, against the thousands of a run). Portcullis does not
/// fork: its figure is its own utime + stime.
fn tree_ticks(root: u32) -> Option<u64> {
    let mut procs = Vec::new();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(s) = stat(&pid.to_string()) {
            procs.push((pid, s.ppid, s.own + s.children));
        }
    }
    let mut tree = std::collections::HashSet::from([root]);
    let mut total = procs.iter().find(|p| p.0 == root)?.2;
    // Parents usually have lower pids than their children, but not always (pids wrap).
    loop {
        let before = tree.len();
        for &(pid, ppid, ticks) in &procs {
            if tree.contains(&ppid) && tree.insert(pid) {
                total += ticks;
            }
        }
        if tree.len() == before {
            return Some(total);
        }
    }
}

/// A field of /proc/PID/status (VmRSS in KiB, Threads).
fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The soft limit on open files of this process.
fn open_files_limit() -> Option<u64> {
    fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// Lines and bytes of a file.
fn count_lines(path: &Path) -> (u64, u64) {
    let Ok(mut file) = fs::File::open(path) else {
        return (0, 0);
    };
    let mut buf = vec![0u8; 1 << 20];
    let (mut lines, mut bytes) = (0, 0);
    while let Ok(n) = file.read(&mut buf) {
        if n == 0 {
            break;
        }
        bytes += n as u64;
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
    (lines, bytes)
}

/// The machine, the binary and the durations; `steps` are D's, and none in a run of the SOCKS5
/// shapes alone.
/// What a run measures, for its header: all the shapes (with D's steps), the SOCKS5 shapes
/// or F.
enum Shapes<'a> {
    All(&'a [usize]),
    Socks,
    Fair(&'a FairTimes),
    Tls(&'a [usize]),
}

fn print_header(binary: &Path, d: &Durations, shapes: Shapes<'_>) {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let built = fs::metadata(binary)
        .and_then(|m| m.modified())
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default();
    println!(
        "# Portcullis in-repo benchmark, {}",
        humantime::format_rfc3339_seconds(SystemTime::now())
    );
    println!();
    println!("```");
    println!(
        "host: Linux {}; {cores} CPUs: {cpu}",
        read("/proc/sys/kernel/osrelease").trim()
    );
    println!("loadavg_at_start: {}", read("/proc/loadavg").trim());
    println!("proxy: {} (built {built})", binary.display());
    let c = format!(
        "C 256 MiB downloads for {} s (at least 1, at most {C_MAX_RUNS})",
        d.tunnel.as_secs_f64()
    );
    let (keep_alive, warm_up) = (d.keep_alive.as_secs_f64(), d.warm_up.as_secs_f64());
    match shapes {
        Shapes::All(steps) => println!(
            "durations: A B E T S {keep_alive} s, L {} s, {c}, warm-up {warm_up} s; D steps {steps:?}",
            d.latency.as_secs_f64(),
        ),
        Shapes::Socks => println!(
            "durations: S {keep_alive} s, {c}, warm-up {warm_up} s; {SOCKS_ROUNDS} rounds"
        ),
        Shapes::Fair(t) => println!(
            "durations: F {} s warm-up and {} s counted a sub-run; A {keep_alive} s, {c}, warm-up {warm_up} s; {F_COST_PAIRS} pairs",
            t.warm_up.as_secs_f64(),
            t.window.as_secs_f64(),
        ),
        Shapes::Tls(steps) => println!(
            "durations: A {keep_alive} s a run, {TLS_PAIRS} pairs, warm-up {warm_up} s; D steps {steps:?}, {TLS_D_ROUNDS} rounds"
        ),
    }
    println!("```");
    eprintln!();
}

// ------------------------------------------------------------------ origin and sink

const ONE_MIB: usize = 1 << 20;

/// An HTTP/1.1 origin on 127.0.0.1: `/1k` and `/1m` (bytes of a repeating pattern).
async fn start_origin() -> anyhow::Result<SocketAddr> {
    let listener = listen().await?;
    let addr = listener.local_addr()?;
    let body: Bytes = (0..ONE_MIB).map(|i| (i % 251) as u8).collect();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let body = body.clone();
                    async move {
                        let response = match req.uri().path() {
                            "/1k" => Response::new(Full::new(body.slice(..1024))),
                            "/1m" => Response::new(Full::new(body)),
                            _ => {
                                let mut r = Response::new(Full::new(Bytes::from_static(b"")));
                                *r.status_mut() = StatusCode::NOT_FOUND;
                                r
                            }
                        };
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// A TCP sink on 127.0.0.1: for each line "N" it reads it sends N bytes, until the client
/// closes; after a line "N close" it sends N bytes and closes the connection itself.
async fn start_sink() -> anyhow::Result<SocketAddr> {
    let listener = listen().await?;
    let addr = listener.local_addr()?;
    let chunk = Bytes::from(vec![b'x'; 256 * 1024]);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let chunk = chunk.clone();
            tokio::spawn(async move {
                let _ = sink_connection(stream, chunk).await;
            });
        }
    });
    Ok(addr)
}

async fn sink_connection(mut stream: TcpStream, chunk: Bytes) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut line = [0u8; 32];
    let mut len = 0;
    loop {
        let n = stream.read(&mut line[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        while let Some(end) = line[..len].iter().position(|&b| b == b'\n') {
            let text = std::str::from_utf8(&line[..end]).unwrap_or_default().trim();
            let (count, close) = match text.strip_suffix(" close") {
                Some(count) => (count, true),
                None => (text, false),
            };
            let want: u64 = count
                .parse()
                .map_err(|_| io::Error::other("not a byte count"))?;
            let mut left = want;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                stream.write_all(&chunk[..n]).await?;
                left -= n as u64;
            }
            if close {
                return Ok(());
            }
            line.copy_within(end + 1..len, 0);
            len -= end + 1;
        }
        if len == line.len() {
            return Err(io::Error::other("line too long"));
        }
    }
}

/// A listener on a free loopback port with a deep accept queue.
async fn listen() -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind("127.0.0.1:0".parse().expect("a socket address"))?;
    socket.listen(4096)
}

// ------------------------------------------------------------------ load generator

/// Straight to the origin, through the proxy at this address, through the proxy's TLS
/// listener at this address (HTTP/1.1 over TLS, with this client side of TLS; the HTTP shapes
/// only), or (tunnels only) through the SOCKS5 server at this address, named for the reports.
#[derive(Clone, Copy)]
enum Via {
    Direct,
    Proxy(SocketAddr),
    ProxyTls(SocketAddr, &'static TlsConnector),
    Socks(SocketAddr, &'static str),
}

impl Via {
    fn is_proxy(self) -> bool {
        !matches!(self, Via::Direct)
    }

    fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Proxy(_) | Via::ProxyTls(..) => "portcullis",
            Via::Socks(_, name) => name,
        }
    }
}

/// Where one load-generator connection goes: an address, and the client side of TLS when it
/// is the proxy's TLS listener (then HTTP/1.1 over TLS, offered alone by ALPN).
#[derive(Clone, Copy)]
struct Dial {
    addr: SocketAddr,
    tls: Option<&'static TlsConnector>,
}

impl From<SocketAddr> for Dial {
    fn from(addr: SocketAddr) -> Dial {
        Dial { addr, tls: None }
    }
}

/// A resource of the origin.
struct Target {
    origin: SocketAddr,
    /// Origin form (`/1k`), sent directly.
    path: Uri,
    /// Absolute form (`http://127.0.0.1:P/1k`), sent to the proxy.
    absolute: Uri,
    host: HeaderValue,
    size: u64,
}

impl Target {
    fn new(origin: SocketAddr, path: &'static str, size: u64) -> Target {
        Target {
            origin,
            path: Uri::from_static(path),
            absolute: format!("http://{origin}{path}")
                .parse()
                .expect("an absolute URI"),
            host: HeaderValue::from_str(&origin.to_string()).expect("a Host value"),
            size,
        }
    }

    /// The same resource with the origin named [`BENCH_NAME`] (for the proxy only).
    fn named(origin: SocketAddr, path: &'static str, size: u64) -> Target {
        let authority = format!("{BENCH_NAME}:{}", origin.port());
        Target {
            origin,
            path: Uri::from_static(path),
            absolute: format!("http://{authority}{path}")
                .parse()
                .expect("an absolute URI"),
            host: HeaderValue::from_str(&authority).expect("a Host value"),
            size,
        }
    }

    fn request(&self, via: Via, close: bool) -> Request<Empty<Bytes>> {
        let uri = match via {
            Via::Direct | Via::Socks(..) => self.path.clone(),
            Via::Proxy(_) | Via::ProxyTls(..) => self.absolute.clone(),
        };
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = uri;
        req.headers_mut().insert(HOST, self.host.clone());
        if close {
            req.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        req
    }

    fn connect_to(&self, via: Via) -> Dial {
        match via {
            Via::Direct => self.origin.into(),
            Via::Proxy(proxy) => proxy.into(),
            Via::ProxyTls(proxy, tls) => Dial {
                addr: proxy,
                tls: Some(tls),
            },
            Via::Socks(..) => unreachable!("the HTTP shapes do not speak SOCKS"),
        }
    }
}

/// What one load run did.
#[derive(Default)]
struct Load {
    requests: u64,
    errors: u64,
    /// Body bytes received.
    bytes: u64,
    secs: f64,
    /// Latency of each request in µs, sorted.
    latencies: Vec<u32>,
    /// CPU seconds the proxy used during the run.
    proxy_cpu: Option<f64>,
    /// CPU seconds this process (load generator, origin, sink) used during the run.
    bench_cpu: f64,
}

impl Load {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.secs
    }

    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }

    fn percentile_ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        f64::from(self.latencies[i]) / 1e3
    }

    fn cpu_us_per_request(&self) -> Option<f64> {
        self.proxy_cpu
            .filter(|_| self.requests > 0)
            .map(|cpu| cpu * 1e6 / self.requests as f64)
    }

    fn cpu_s_per_gb(&self, bytes: u64) -> Option<f64> {
        self.proxy_cpu
            .filter(|_| bytes > 0)
            .map(|cpu| cpu / (bytes as f64 / 1e9))
    }
}

/// One line of the checks table.
struct Check {
    shape: &'static str,
    via: &'static str,
    requests: u64,
    errors: u64,
    bench_cpu_pct: f64,
    proxy_cpu_pct: Option<f64>,
}

/// CPU ticks of the proxy (when measured; with its descendants, see [`tree_ticks`]) and of
/// this process, for a run's start and end.
struct CpuMark {
    proxy: Option<u64>,
    bench: u64,
    at: Instant,
}

impl CpuMark {
    fn now(proxy: Option<u32>) -> CpuMark {
        CpuMark {
            proxy: proxy.and_then(tree_ticks),
            bench: cpu_ticks("self").unwrap_or(0),
            at: Instant::now(),
        }
    }

    /// Sets the CPU figures and the duration of `load` from `self` to now.
    fn finish(self, load: &mut Load, proxy: Option<u32>, clk: f64) {
        let end = CpuMark::now(proxy);
        load.secs = end.at.duration_since(self.at).as_secs_f64();
        load.bench_cpu = end.bench.saturating_sub(self.bench) as f64 / clk;
        load.proxy_cpu = self
            .proxy
            .zip(end.proxy)
            .map(|(a, b)| b.saturating_sub(a) as f64 / clk);
    }
}

/// On/off pairs of shape A for the cost of the access log.
const LOG_PAIRS: usize = 3;

/// The median of some ratios (`None` when there are none).
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

/// A run by name against the run by address next to it: proxy CPU per request.
struct Compared {
    /// By name − by address, µs.
    difference: f64,
    /// By name ÷ by address.
    ratio: f64,
}

impl Compared {
    fn of(address: &Load, name: &Load) -> Option<Compared> {
        let (address, name) = (address.cpu_us_per_request()?, name.cpu_us_per_request()?);
        Some(Compared {
            difference: name - address,
            ratio: name / address,
        })
    }

    /// The rows of a shape by name: its rate beside the direct run's and its CPU per
    /// `unit`, then the median difference and ratio of `pairs` against the shape by address.
    /// `shown` is the shape, a note on how often it resolves, the rate's unit and `unit`.
    fn rows(
        table: &mut Table,
        (shape, note, rate, unit): (&str, &str, &str, &str),
        direct: &Load,
        named: &Load,
        pairs: &[Compared],
    ) {
        table.row(
            &format!("{shape} by name {note}, {rate}"),
            Some(direct.rps()),
            Some(named.rps()),
        );
        table.row(
            &format!("{shape} by name, proxy CPU per {unit}, µs"),
            None,
            named.cpu_us_per_request(),
        );
        table.row(
            &format!("{shape} by name − by address, proxy CPU per {unit}, µs (median of pairs)"),
            None,
            median(pairs.iter().map(|c| c.difference).collect()),
        );
        table.ratio_row(
            &format!("{shape} by name ÷ by address, CPU per {unit} (median of pairs)"),
            median(pairs.iter().map(|c| c.ratio).collect()),
        );
    }
}

/// Runs one HTTP shape, reports it on stderr and adds it to the checks.
#[allow(clippy::too_many_arguments)]
async fn measure(
    shape: &'static str,
    via: Via,
    target: &Target,
    conns: usize,
    close: bool,
    d: &Durations,
    pid: Option<u32>,
    clk: f64,
    checks: &mut Vec<Check>,
) -> anyhow::Result<Load> {
    let load = http_load(via, target, conns, close, d.keep_alive, pid, clk).await?;
    report(shape, via, load, checks)
}

/// Prints one run on stderr and adds it to the checks; fails when nothing succeeded.
fn report(
    shape: &'static str,
    via: Via,
    load: Load,
    checks: &mut Vec<Check>,
) -> anyhow::Result<Load> {
    eprintln!(
        "{shape:<9} {:<10} {:>9.0} req/s {:>8.1} MB/s  p50 {:>6.3} ms  p99 {:>6.3} ms  proxy CPU {}  errors {}",
        via.name(),
        load.rps(),
        load.mb_per_s(),
        load.percentile_ms(0.5),
        load.percentile_ms(0.99),
        load.cpu_us_per_request()
            .map_or("—".to_owned(), |c| format!("{c:.1} µs/req")),
        load.errors
    );
    checks.push(Check {
        shape,
        via: via.name(),
        requests: load.requests,
        errors: load.errors,
        bench_cpu_pct: 100.0 * load.bench_cpu / load.secs,
        proxy_cpu_pct: load.proxy_cpu.map(|c| 100.0 * c / load.secs),
    });
    ensure!(
        load.requests > 0,
        "{shape} {}: no request succeeded",
        via.name()
    );
    Ok(load)
}

/// `conns` connections, each a task sending GETs one after another for `duration`.
async fn http_load(
    via: Via,
    target: &Target,
    conns: usize,
    close: bool,
    duration: Duration,
    pid: Option<u32>,
    clk: f64,
) -> anyhow::Result<Load> {
    let mark = CpuMark::now(pid);
    let deadline = Instant::now() + duration;
    let mut tasks = JoinSet::new();
    for _ in 0..conns {
        let to = target.connect_to(via);
        let req = target.request(via, close);
        let size = target.size;
        if close {
            tasks.spawn(close_connection(to, req, size, deadline));
        } else {
            tasks.spawn(keep_alive_connection(to, req, size, deadline));
        }
    }
    gather(tasks, duration, mark, pid, clk).await
}

/// The connections' loads added up, once every task has ended, and the CPU used since `mark`.
async fn gather(
    mut tasks: JoinSet<ConnLoad>,
    duration: Duration,
    mark: CpuMark,
    pid: Option<u32>,
    clk: f64,
) -> anyhow::Result<Load> {
    let mut load = Load::default();
    let all = async {
        while let Some(done) = tasks.join_next().await {
            let one = done.unwrap_or_default();
            load.requests += one.requests;
            load.errors += one.errors;
            load.bytes += one.bytes;
            load.latencies.extend(one.latencies);
        }
    };
    if tokio::time::timeout(duration + OP_TIMEOUT + Duration::from_secs(5), all)
        .await
        .is_err()
    {
        bail!("a load run did not end in time");
    }
    mark.finish(&mut load, pid, clk);
    load.latencies.sort_unstable();
    Ok(load)
}

/// What one load-generator connection did.
#[derive(Default)]
struct ConnLoad {
    requests: u64,
    errors: u64,
    bytes: u64,
    latencies: Vec<u32>,
}

impl ConnLoad {
    /// Counts an error; false once the connection has had too many.
    fn error(&mut self) -> bool {
        self.errors += 1;
        self.errors < MAX_ERRORS_PER_CONN
    }

    fn done(&mut self, started: Instant, bytes: u64) {
        self.done_at(started, Instant::now(), bytes);
    }

    /// A request that took from `started` to `ended`.
    fn done_at(&mut self, started: Instant, ended: Instant, bytes: u64) {
        self.requests += 1;
        self.bytes += bytes;
        let us = ended
            .duration_since(started)
            .as_micros()
            .min(u128::from(u32::MAX)) as u32;
        self.latencies.push(us);
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;
/// A load-generator connection: a socket, or TLS over one (to the proxy's TLS listener).
type Stream = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;
/// The future that drives an HTTP/1.1 client connection.
type Driver = hyper::client::conn::http1::Connection<TokioIo<Stream>, Empty<Bytes>>;

/// Opens an HTTP/1.1 client connection; its driver future runs beside the requests.
async fn open(to: Dial) -> anyhow::Result<(Sender, Driver)> {
    open_from(None, to).await
}

/// [`open`] from the address `from` (F's clients), or any when `None`.
async fn open_from(from: Option<Ipv4Addr>, to: Dial) -> anyhow::Result<(Sender, Driver)> {
    let stream = connect_from(from, to.addr).await?;
    let stream = match to.tls {
        None => Either::Left(stream),
        Some(tls) => Either::Right(tls_to_proxy(tls, stream, b"http/1.1").await?),
    };
    Ok(hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?)
}

/// Sends one request and reads the whole answer; the body's length in bytes.
async fn exchange(
    sender: &mut Sender,
    req: Request<Empty<Bytes>>,
    size: u64,
) -> anyhow::Result<u64> {
    let exchange = async {
        sender.ready().await?;
        let response = sender.send_request(req).await?;
        ensure!(
            response.status() == StatusCode::OK,
            "status {}",
            response.status()
        );
        let mut body = response.into_body();
        let mut bytes = 0;
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                bytes += data.len() as u64;
            }
        }
        ensure!(bytes == size, "a body of {bytes} bytes, not {size}");
        Ok(bytes)
    };
    tokio::time::timeout(OP_TIMEOUT, exchange).await?
}

/// One keep-alive connection sending requests until `deadline`, reconnecting after errors.
async fn keep_alive_connection(
    to: Dial,
    req: Request<Empty<Bytes>>,
    size: u64,
    deadline: Instant,
) -> ConnLoad {
    keep_alive_from(None, to, req, size, deadline, None).await
}

/// [`keep_alive_connection`] from the address `from` (any when `None`), and with `tick`, a
/// request at each of its ticks rather than one after another.
async fn keep_alive_from(
    from: Option<Ipv4Addr>,
    to: Dial,
    req: Request<Empty<Bytes>>,
    size: u64,
    deadline: Instant,
    mut tick: Option<tokio::time::Interval>,
) -> ConnLoad {
    let mut out = ConnLoad::default();
    while Instant::now() < deadline {
        let (mut sender, conn) = match open_from(from, to).await {
            Ok(opened) => opened,
            Err(_) => {
                if !out.error() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let requests = async {
            while Instant::now() < deadline {
                if let Some(tick) = tick.as_mut() {
                    tick.tick().await;
                    if Instant::now() >= deadline {
                        break;
                    }
                }
                let started = Instant::now();
                match exchange(&mut sender, clone_request(&req), size).await {
                    Ok(bytes) => out.done(started, bytes),
                    Err(_) => {
                        out.error();
                        break;
                    }
                }
            }
            drop(sender);
        };
        let _ = tokio::join!(requests, conn);
        if out.errors >= MAX_ERRORS_PER_CONN {
            break;
        }
    }
    out
}

/// Requests with `Connection: close`: a new TCP connection for each, until `deadline`.
async fn close_connection(
    to: Dial,
    req: Request<Empty<Bytes>>,
    size: u64,
    deadline: Instant,
) -> ConnLoad {
    let mut out = ConnLoad::default();
    while Instant::now() < deadline {
        let (mut sender, conn) = match open(to).await {
            Ok(opened) => opened,
            Err(_) => {
                if !out.error() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Latency from the request on, as wrk counts it: the TCP connect is not in it.
        let started = Instant::now();
        let request = async {
            let result = exchange(&mut sender, clone_request(&req), size).await;
            drop(sender);
            result
        };
        let (result, _) = tokio::join!(request, tokio::time::timeout(OP_TIMEOUT, conn));
        match result {
            Ok(bytes) => out.done(started, bytes),
            Err(_) => {
                if !out.error() {
                    break;
                }
            }
        }
    }
    out
}

fn clone_request(req: &Request<Empty<Bytes>>) -> Request<Empty<Bytes>> {
    let mut copy = Request::new(Empty::new());
    *copy.uri_mut() = req.uri().clone();
    *copy.headers_mut() = req.headers().clone();
    copy
}

// ------------------------------------------------------------------ tunnels

/// Opens a connection to `sink`, through a CONNECT tunnel of the proxy when `via` is one.
async fn open_tunnel(via: Via, sink: SocketAddr) -> anyhow::Result<TcpStream> {
    open_tunnel_to(via, sink, &sink.to_string()).await
}

/// [`open_tunnel`] with the sink named `authority` in the CONNECT request (`host:port`); over
/// SOCKS5 the sink is named by its IPv4 address.
async fn open_tunnel_to(via: Via, sink: SocketAddr, authority: &str) -> anyhow::Result<TcpStream> {
    let open = async {
        let proxy = match via {
            Via::Direct => {
                let stream = TcpStream::connect(sink).await?;
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Via::Proxy(proxy) | Via::Socks(proxy, _) => proxy,
            Via::ProxyTls(..) => bail!("the tunnel shapes do not speak TLS to the proxy"),
        };
        let mut stream = TcpStream::connect(proxy).await?;
        stream.set_nodelay(true)?;
        if let Via::Socks(..) = via {
            socks5_connect(&mut stream, sink).await?;
            return Ok(stream);
        }
        connect_tunnel(&mut stream, authority).await?;
        Ok(stream)
    };
    tokio::time::timeout(OP_TIMEOUT, open).await?
}

/// Asks the proxy at the other end of `stream` for a CONNECT tunnel to `authority` and reads
/// its answer's head.
async fn connect_tunnel(stream: &mut TcpStream, authority: &str) -> anyhow::Result<()> {
    stream
        .write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await?;
    // The sink sends nothing before it reads a line, so nothing follows the head yet.
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(OP_TIMEOUT, stream.read(&mut buf)).await??;
        ensure!(n > 0, "the proxy closed the tunnel before answering");
        head.extend_from_slice(&buf[..n]);
        ensure!(head.len() < 8192, "an answer head longer than 8 KiB");
    }
    ensure!(
        head.starts_with(b"HTTP/1.1 200"),
        "CONNECT answered {}",
        String::from_utf8_lossy(&head[..head.len().min(40)])
    );
    Ok(())
}

/// A SOCKS5 client's side (RFC 1928) up to an open tunnel to `sink`: a greeting that offers
/// "no authentication" alone, then CONNECT to the sink's IPv4 address (address type 0x01),
/// each answer awaited before the next message, as clients do.
async fn socks5_connect(stream: &mut TcpStream, sink: SocketAddr) -> anyhow::Result<()> {
    let SocketAddr::V4(sink) = sink else {
        bail!("the sink has no IPv4 address");
    };
    stream.write_all(&[5, 1, 0]).await?;
    let mut chosen = [0u8; 2];
    stream.read_exact(&mut chosen).await?;
    ensure!(
        chosen == [5, 0],
        "the SOCKS5 greeting was answered {chosen:?}"
    );
    let mut request = vec![5, 1, 0, 1];
    request.extend_from_slice(&sink.ip().octets());
    request.extend_from_slice(&sink.port().to_be_bytes());
    stream.write_all(&request).await?;
    // VER REP RSV ATYP, then the bound address and port.
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    ensure!(
        head[0] == 5 && head[1] == 0,
        "the SOCKS5 CONNECT was answered with reply code {}",
        head[1]
    );
    let bound = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut len = [0u8; 1];
            stream.read_exact(&mut len).await?;
            usize::from(len[0]) + 2
        }
        other => bail!("a SOCKS5 reply with address type {other}"),
    };
    let mut rest = [0u8; 257];
    stream.read_exact(&mut rest[..bound]).await?;
    Ok(())
}

/// Asks the sink for `n` bytes and reads them all.
async fn download<S>(stream: &mut S, n: u64) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(format!("{n}\n").as_bytes()).await?;
    stream.flush().await?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < n {
        let read = tokio::time::timeout(OP_TIMEOUT, stream.read(&mut buf)).await??;
        ensure!(read > 0, "the tunnel closed after {got} of {n} bytes");
        got += read as u64;
    }
    ensure!(got == n, "{got} bytes, not {n}");
    Ok(())
}

/// Asks the sink for `n` bytes and to close, and reads them and the end of the stream; when
/// the first of them arrived.
async fn download_to_end(stream: &mut TcpStream, n: u64) -> anyhow::Result<Instant> {
    stream.write_all(format!("{n} close\n").as_bytes()).await?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut got = 0;
    let mut first = None;
    loop {
        let read = tokio::time::timeout(OP_TIMEOUT, stream.read(&mut buf)).await??;
        if read == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        got += read as u64;
    }
    ensure!(got == n, "{got} bytes, not {n}");
    Ok(first.unwrap_or_else(Instant::now))
}

/// C: 256 MiB downloads, each through a new tunnel, one after another: at least one, then
/// more until `duration` has passed (at most [`C_MAX_RUNS`]).
async fn tunnel_load(
    shape: &'static str,
    via: Via,
    sink: SocketAddr,
    duration: Duration,
    pid: Option<u32>,
    clk: f64,
    checks: &mut Vec<Check>,
) -> anyhow::Result<Load> {
    let mark = CpuMark::now(pid);
    let mut load = Load::default();
    while load.requests + load.errors < C_MAX_RUNS as u64
        && (load.requests == 0 || mark.at.elapsed() < duration)
    {
        let run = async {
            let mut stream = open_tunnel(via, sink).await?;
            download(&mut stream, C_BYTES).await
        };
        match run.await {
            Ok(()) => {
                load.requests += 1;
                load.bytes += C_BYTES;
            }
            Err(e) => {
                load.errors += 1;
                eprintln!("{shape} {}: {e:#}", via.name());
                if load.errors >= 3 {
                    break;
                }
            }
        }
    }
    mark.finish(&mut load, pid, clk);
    eprintln!(
        "{shape:<9} {:<10} {:>9.0} MB/s ({} × 256 MiB)  proxy CPU {}",
        via.name(),
        load.mb_per_s(),
        load.requests,
        load.cpu_s_per_gb(load.bytes)
            .map_or("—".to_owned(), |c| format!("{c:.2} s/GB"))
    );
    checks.push(Check {
        shape,
        via: via.name(),
        requests: load.requests,
        errors: load.errors,
        bench_cpu_pct: 100.0 * load.bench_cpu / load.secs,
        proxy_cpu_pct: load.proxy_cpu.map(|c| 100.0 * c / load.secs),
    });
    ensure!(
        load.requests > 0,
        "{shape} {}: no download succeeded",
        via.name()
    );
    Ok(load)
}

/// Where a tunnel's latency ends: at the end of its stream (T), or at the first byte from the
/// sink (S).
#[derive(Debug, Clone, Copy)]
enum Until {
    End,
    FirstByte,
}

/// T and S: [`T_CONNS`] connections, each opening a tunnel to the sink (named `authority` in
/// the CONNECT request; over SOCKS5, its IPv4 address) and taking [`T_BYTES`] through it, one
/// tunnel after another for the shape's time; reported like an HTTP shape, a tunnel counting
/// as a request (its latency from the TCP connect to `until`). The sink closes each tunnel, as an origin
/// closes a connection after its answer: the side that closes first keeps the connection in
/// TIME_WAIT, and on the sides that connect (this process to the proxy, the proxy to the
/// sink) tens of thousands of those would make each new connection's search for a free port
/// slower and slower over the runs.
#[allow(clippy::too_many_arguments)]
async fn measure_tunnels(
    shape: &'static str,
    via: Via,
    sink: SocketAddr,
    authority: &str,
    until: Until,
    d: &Durations,
    pid: Option<u32>,
    clk: f64,
    checks: &mut Vec<Check>,
) -> anyhow::Result<Load> {
    let mark = CpuMark::now(pid);
    let deadline = Instant::now() + d.keep_alive;
    let mut tasks = JoinSet::new();
    for _ in 0..T_CONNS {
        tasks.spawn(tunnel_per_request(
            via,
            sink,
            authority.to_owned(),
            until,
            deadline,
        ));
    }
    let load = gather(tasks, d.keep_alive, mark, pid, clk).await?;
    report(shape, via, load, checks)
}

/// One T or S connection: a new tunnel for each [`T_BYTES`] until `deadline`.
async fn tunnel_per_request(
    via: Via,
    sink: SocketAddr,
    authority: String,
    until: Until,
    deadline: Instant,
) -> ConnLoad {
    let mut out = ConnLoad::default();
    while Instant::now() < deadline {
        let started = Instant::now();
        let one = async {
            let mut stream = open_tunnel_to(via, sink, &authority).await?;
            download_to_end(&mut stream, T_BYTES).await
        };
        match one.await {
            Ok(first) => match until {
                Until::End => out.done(started, T_BYTES),
                Until::FirstByte => out.done_at(started, first, T_BYTES),
            },
            Err(_) => {
                if !out.error() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    out
}

/// What the SOCKS5 shapes measured, round by round (the rounds' figures in the same order).
struct Socks {
    /// C through Portcullis, by CONNECT and by SOCKS5.
    c_connect: Vec<Load>,
    c_socks: Vec<Load>,
    /// C through Dante, once.
    c_dante: Option<Load>,
    /// S through Portcullis, by CONNECT and by SOCKS5, and through Dante.
    s_connect: Vec<Load>,
    s_socks: Vec<Load>,
    s_dante: Vec<Load>,
    /// Dante's version, when it ran.
    dante: Option<String>,
    /// Tunnels and connections sent through Portcullis (each makes an access record).
    through_portcullis: u64,
}

/// The SOCKS5 shapes, through `proxy` (which also serves CONNECT, for the comparison) and
/// `dante` when there is one: C by CONNECT and by SOCKS5 in [`SOCKS_ROUNDS`] interleaved
/// pairs, then C through Dante once; S by CONNECT, by SOCKS5 and through Dante, each warmed
/// up first, in [`SOCKS_ROUNDS`] rounds, each round starting with the next of the three.
async fn socks_shapes(
    proxy: &Proxy,
    dante: Option<&Dante>,
    sink: SocketAddr,
    d: &Durations,
    clk: f64,
    checks: &mut Vec<Check>,
) -> anyhow::Result<Socks> {
    let connect = Via::Proxy(proxy.addr);
    let socks = Via::Socks(proxy.addr, "portcullis");
    let mut servers = vec![
        ("S CONNECT", connect, proxy.pid),
        ("S SOCKS5", socks, proxy.pid),
    ];
    if let Some(dante) = dante {
        servers.push(("S SOCKS5", Via::Socks(dante.addr, "dante"), dante.pid));
    }
    let mut out = Socks {
        c_connect: Vec::new(),
        c_socks: Vec::new(),
        c_dante: None,
        s_connect: Vec::new(),
        s_socks: Vec::new(),
        s_dante: Vec::new(),
        dante: dante.map(|d| d.version.clone()),
        through_portcullis: 0,
    };
    for &(_, via, _) in &servers {
        let mut stream = open_tunnel(via, sink)
            .await
            .with_context(|| format!("preflight: a tunnel through {}", via.name()))?;
        download(&mut stream, 100_000)
            .await
            .with_context(|| format!("preflight: 100 kB through {}", via.name()))?;
        if via.name() == "portcullis" {
            out.through_portcullis += 1;
        }
    }
    eprintln!(
        "preflight: PASS (CONNECT and SOCKS5 + 100 kB through portcullis{})",
        if dante.is_some() {
            ", SOCKS5 + 100 kB through dante"
        } else {
            ""
        }
    );

    for round in 0..SOCKS_ROUNDS {
        let mut order = [("C", connect), ("C SOCKS5", socks)];
        if round % 2 == 1 {
            order.reverse();
        }
        for (shape, via) in order {
            let load =
                tunnel_load(shape, via, sink, d.tunnel, Some(proxy.pid), clk, checks).await?;
            out.through_portcullis += load.requests + load.errors;
            match via {
                Via::Socks(..) => out.c_socks.push(load),
                _ => out.c_connect.push(load),
            }
        }
    }
    if let Some(dante) = dante {
        let via = Via::Socks(dante.addr, "dante");
        out.c_dante = Some(
            tunnel_load(
                "C SOCKS5",
                via,
                sink,
                d.tunnel,
                Some(dante.pid),
                clk,
                checks,
            )
            .await?,
        );
    }

    let authority = sink.to_string();
    let warm = Durations {
        keep_alive: d.warm_up,
        ..*d
    };
    for &(_, via, _) in &servers {
        let load = measure_tunnels(
            "S warm-up",
            via,
            sink,
            &authority,
            Until::FirstByte,
            &warm,
            None,
            clk,
            &mut Vec::new(),
        )
        .await?;
        if via.name() == "portcullis" {
            out.through_portcullis += load.requests + load.errors;
        }
    }
    for round in 0..SOCKS_ROUNDS {
        let mut order: Vec<usize> = (0..servers.len()).collect();
        order.rotate_left(round % servers.len());
        for i in order {
            let (shape, via, pid) = servers[i];
            let load = measure_tunnels(
                shape,
                via,
                sink,
                &authority,
                Until::FirstByte,
                d,
                Some(pid),
                clk,
                checks,
            )
            .await?;
            match i {
                0 => out.s_connect.push(load),
                1 => out.s_socks.push(load),
                _ => out.s_dante.push(load),
            }
        }
    }
    out.through_portcullis += out
        .s_connect
        .iter()
        .chain(&out.s_socks)
        .map(|l| l.requests + l.errors)
        .sum::<u64>();
    Ok(out)
}

/// The proxy's memory with N tunnels open.
struct Step {
    n: usize,
    ok: usize,
    rss_kib: u64,
    threads: u64,
}

impl Step {
    fn kib_per_tunnel(&self, rss0_kib: u64) -> Option<f64> {
        (self.ok > 0).then(|| (self.rss_kib as f64 - rss0_kib as f64) / self.ok as f64)
    }
}

/// What D measured.
struct Tunnels {
    rss0_kib: u64,
    steps: Vec<Step>,
    after_use: Step,
    fails: usize,
    echo_ok: usize,
}

/// How long D lets the proxy settle before it reads its memory.
const D_SETTLE: Duration = Duration::from_millis(500);

/// A process's resident memory now, KiB.
fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS:").unwrap_or(0)
}

/// A process's threads now.
fn thread_count(pid: u32) -> u64 {
    status_field(pid, "Threads:").unwrap_or(0)
}

/// D: opens tunnels up to each step (64 at a time), holds them idle and reads the proxy's
/// RSS; then sends one byte through each and reads it again.
async fn idle_tunnels(proxy: &Proxy, sink: SocketAddr, steps: &[usize]) -> anyhow::Result<Tunnels> {
    let via = Via::Proxy(proxy.addr);
    warm_up(open_tunnel(via, sink)).await;
    tokio::time::sleep(D_SETTLE).await;
    let rss0_kib = rss_kib(proxy.pid);
    hold_tunnels(proxy.pid, rss0_kib, steps, "D", || open_tunnel(via, sink)).await
}

/// D's warm-up, before the proxy's memory at rest is read: one tunnel opened, a byte
/// through it and back, closed. The first tunnel maps in the pages of the proxy's code that
/// its path runs (file-backed, read from the binary once for the process and shared with
/// any other process running it; about 0.8 MiB over HTTP/1.1 and 1.4 MiB over HTTP/2 over
/// TLS): in the memory at rest, they are not counted as memory of the tunnels held after.
/// A tunnel that fails here fails again in the steps, which count it.
async fn warm_up<T>(open: impl std::future::Future<Output = anyhow::Result<T>>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let once = async {
        let mut tunnel = open.await?;
        tunnel.write_all(b"1\n").await?;
        tunnel.flush().await?;
        let mut byte = [0u8; 1];
        tunnel.read_exact(&mut byte).await?;
        anyhow::Ok(())
    };
    match tokio::time::timeout(OP_TIMEOUT, once).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("D warm-up: {e:#}"),
        Err(_) => eprintln!("D warm-up: no answer within {OP_TIMEOUT:?}"),
    }
}

/// D's steps from a proxy (`pid`) whose RSS was `rss0_kib` before: tunnels opened by `open`
/// up to each step ([`D_CONCURRENCY`] at a time), held idle while the proxy's RSS is read;
/// then a byte through each (the sink answers "1\n" with one byte) and the RSS again.
async fn hold_tunnels<T, F, Fut>(
    pid: u32,
    rss0_kib: u64,
    steps: &[usize],
    shape: &str,
    mut open_one: F,
) -> anyhow::Result<Tunnels>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let settle = D_SETTLE;
    let file_kib = || status_field(pid, "RssFile:").unwrap_or(0);
    let file0_kib = file_kib();
    let rss = || rss_kib(pid);
    let threads = || thread_count(pid);
    let mut open: Vec<T> = Vec::new();
    let mut fails = 0;
    let mut out = Vec::new();
    let started = Instant::now();
    for &n in steps {
        while open.len() + fails < n && fails < D_MAX_FAILS {
            let batch = (n - open.len() - fails).min(D_CONCURRENCY);
            let mut set = JoinSet::new();
            for _ in 0..batch {
                set.spawn(open_one());
            }
            while let Some(done) = set.join_next().await {
                match done {
                    Ok(Ok(stream)) => open.push(stream),
                    _ => fails += 1,
                }
            }
        }
        tokio::time::sleep(settle).await;
        out.push(Step {
            n,
            ok: open.len(),
            rss_kib: rss(),
            threads: threads(),
        });
        eprintln!(
            "{shape:<9} portcullis {} of {n} tunnels open in {:.1} s, RSS {:.1} MiB \
             (file-backed pages {:+} KiB since at rest)",
            open.len(),
            started.elapsed().as_secs_f64(),
            rss() as f64 / 1024.0,
            file_kib() as i64 - file0_kib as i64
        );
    }
    let mut echo_ok = 0;
    for stream in &mut open {
        let one = async {
            stream.write_all(b"1\n").await?;
            stream.flush().await?;
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await?;
            Ok::<_, io::Error>(())
        };
        if let Ok(Ok(())) = tokio::time::timeout(OP_TIMEOUT, one).await {
            echo_ok += 1;
        }
    }
    tokio::time::sleep(settle).await;
    let after_use = Step {
        n: open.len(),
        ok: open.len(),
        rss_kib: rss(),
        threads: threads(),
    };
    drop(open);
    Ok(Tunnels {
        rss0_kib,
        steps: out,
        after_use,
        fails,
        echo_ok,
    })
}

/// Checks that the proxy answers each kind of request before anything is measured.
/// With `names`, also a GET and a tunnel by name.
async fn preflight(
    proxy: SocketAddr,
    origin: SocketAddr,
    sink: SocketAddr,
    names: bool,
) -> anyhow::Result<()> {
    let via = Via::Proxy(proxy);
    let mut gets = vec![
        Target::new(origin, "/1k", 1024),
        Target::new(origin, "/1m", ONE_MIB as u64),
    ];
    let mut tunnels = vec![sink.to_string()];
    if names {
        gets.push(Target::named(origin, "/1k", 1024));
        tunnels.push(format!("{BENCH_NAME}:{}", sink.port()));
    }
    for target in &gets {
        let (mut sender, conn) = open(proxy.into()).await?;
        let driver = tokio::spawn(conn);
        let bytes = exchange(&mut sender, target.request(via, false), target.size)
            .await
            .with_context(|| format!("preflight: GET {} through the proxy", target.absolute))?;
        ensure!(
            bytes == target.size,
            "preflight: {} gave {bytes} bytes",
            target.absolute
        );
        drop(sender);
        let _ = driver.await;
    }
    for authority in &tunnels {
        let mut stream = open_tunnel_to(via, sink, authority)
            .await
            .with_context(|| format!("preflight: CONNECT {authority} through the proxy"))?;
        download(&mut stream, 100_000)
            .await
            .context("preflight: download through a tunnel")?;
    }
    eprintln!(
        "preflight: PASS (GET 1k, GET 1m, CONNECT + 100 kB{})",
        if names {
            "; GET 1k and CONNECT + 100 kB to bench.test"
        } else {
            ""
        }
    );
    Ok(())
}

// ------------------------------------------------------------------ the table

// ------------------------------------------------------------------ I: an idle flood

/// I's attackers come from 127.0.0.2 to 127.0.0.127, this many connections from each: under
/// the per-client limit (256), 5,040 in all, over the total (4,096).
const FLOOD_ADDRESSES: usize = 126;
const FLOOD_PER_ADDRESS: usize = 40;

/// A normal client's visits: one GET /1k on a connection of its own every 100 ms, each
/// given at most 5 s.
#[derive(Default)]
struct Visits {
    sent: usize,
    answered: usize,
    latencies_ms: Vec<f64>,
    /// The first few failures, as they were seen.
    failures: Vec<String>,
}

impl Visits {
    fn answered_pct(&self) -> f64 {
        100.0 * self.answered as f64 / self.sent.max(1) as f64
    }

    fn percentile_ms(&self, p: f64) -> Option<f64> {
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let i = ((sorted.len() as f64 * p).ceil() as usize).checked_sub(1)?;
        sorted.get(i).copied()
    }
}

/// What I measured.
struct Flood {
    quiet: Visits,
    flooded: Visits,
    /// Attacker connections the proxy had accepted and not closed, at the start of the visits.
    held: usize,
    /// Connections the attackers opened in all.
    opened: u64,
    rss_before_kib: u64,
    rss_peak_kib: u64,
    rss_after_kib: u64,
    /// From the proxy's /metrics at the end of the visits.
    open_at_end: Option<f64>,
    made_room: Option<f64>,
    shed: Option<f64>,
}

/// I: a proxy with the default limits; a normal client's visits without a flood, then under
/// 5,040 idle connections that reconnect as soon as they are closed; the proxy's memory
/// before, during and after.
async fn idle_flood(
    binary: &Path,
    dir: &Path,
    origin: SocketAddr,
    visits: usize,
) -> anyhow::Result<Flood> {
    let addr = free_port()?;
    let admin = free_port()?;
    let config = format!(
        "listen = [\"{addr}\"]\n[ports]\nhttp = [{}]\n[destinations]\nallow_loopback = true\n\
         [log]\naccess = \"off\"\nlevel = \"error\"\n[admin]\nlisten = \"{admin}\"\n",
        origin.port()
    );
    let proxy = Proxy::launch(binary, dir, "flood", addr, &config)?;
    let quiet = normal_visits(addr, origin, visits, None).await;
    let rss_before_kib = status_field(proxy.pid, "VmRSS:").unwrap_or(0);

    let stop = tokio_util::sync::CancellationToken::new();
    let held = Arc::new(AtomicUsize::new(0));
    let opened = Arc::new(AtomicU64::new(0));
    // The attackers run on a runtime of their own, on their own thread: as other machines
    // would, they share this machine's cores with the proxy and the normal client, but not
    // the normal client's and the origin's task queues.
    let attackers = {
        let (stop, held, opened) = (stop.clone(), held.clone(), opened.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(attack(addr, stop, held, opened));
            Ok(())
        })
    };
    // Until the proxy holds as many as it will (its limit), or 20 s.
    let ramp = Instant::now();
    let mut last = 0;
    while ramp.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = held.load(Ordering::Relaxed);
        if now >= 4_000 && now == last {
            break;
        }
        last = now;
    }
    let held_at_start = held.load(Ordering::Relaxed);
    let flooded = normal_visits(addr, origin, visits, Some(proxy.pid)).await;
    let metrics = scrape(admin).await.unwrap_or_default();
    stop.cancel();
    let ended = tokio::task::spawn_blocking(move || attackers.join()).await;
    ensure!(
        matches!(ended, Ok(Ok(Ok(())))),
        "the attackers did not end well"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sum = |name: &str| -> Option<f64> {
        let values: Vec<f64> = metrics
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    };
    Ok(Flood {
        rss_peak_kib: flooded.rss_peak_kib.max(rss_before_kib),
        quiet: quiet.visits,
        flooded: flooded.visits,
        held: held_at_start,
        opened: opened.load(Ordering::Relaxed),
        rss_before_kib,
        rss_after_kib: status_field(proxy.pid, "VmRSS:").unwrap_or(0),
        open_at_end: sum("portcullis_connections_open "),
        made_room: sum("portcullis_connections_made_room_total{"),
        shed: sum("portcullis_connections_shed_total "),
    })
}

/// I's attackers: idle connections that are opened again as soon as the proxy closes them,
/// until `stop`.
async fn attack(
    addr: SocketAddr,
    stop: tokio_util::sync::CancellationToken,
    held: Arc<AtomicUsize>,
    opened: Arc<AtomicU64>,
) {
    let mut attackers = JoinSet::new();
    for i in 0..FLOOD_ADDRESSES * FLOOD_PER_ADDRESS {
        let from = Ipv4Addr::new(127, 0, 0, 2 + (i % FLOOD_ADDRESSES) as u8);
        let (stop, held, opened) = (stop.clone(), held.clone(), opened.clone());
        attackers.spawn(async move {
            // Bounded: an attacker opens at most this many connections.
            for _ in 0..100_000 {
                let Ok(socket) = TcpSocket::new_v4() else {
                    return;
                };
                if socket.bind(SocketAddr::from((from, 0))).is_err() {
                    return;
                }
                let connected = tokio::select! {
                    _ = stop.cancelled() => return,
                    c = tokio::time::timeout(Duration::from_secs(5), socket.connect(addr)) => c,
                };
                let Ok(Ok(mut stream)) = connected else {
                    continue;
                };
                opened.fetch_add(1, Ordering::Relaxed);
                held.fetch_add(1, Ordering::Relaxed);
                let mut buf = [0u8; 512];
                let stopped = loop {
                    tokio::select! {
                        _ = stop.cancelled() => break true,
                        read = stream.read(&mut buf) => if matches!(read, Ok(0) | Err(_)) {
                            break false;
                        },
                    }
                };
                held.fetch_sub(1, Ordering::Relaxed);
                if stopped {
                    return;
                }
            }
        });
    }
    while attackers.join_next().await.is_some() {}
}

/// Visits and the proxy's largest RSS seen meanwhile (when `pid` is given).
struct Observed {
    visits: Visits,
    rss_peak_kib: u64,
}

/// `n` visits of a normal client from 127.0.0.1, one every 100 ms.
async fn normal_visits(
    proxy: SocketAddr,
    origin: SocketAddr,
    n: usize,
    pid: Option<u32>,
) -> Observed {
    let mut visits = Visits::default();
    let mut rss_peak_kib = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for _ in 0..n {
        tick.tick().await;
        let start = Instant::now();
        visits.sent += 1;
        match tokio::time::timeout(Duration::from_secs(5), one_visit(proxy, origin)).await {
            Ok(Ok(())) => {
                visits.answered += 1;
                visits
                    .latencies_ms
                    .push(start.elapsed().as_secs_f64() * 1e3);
            }
            Ok(Err(e)) if visits.failures.len() < 5 => visits.failures.push(format!("{e:#}")),
            Err(_) if visits.failures.len() < 5 => {
                visits.failures.push("no answer within 5 s".into())
            }
            _ => {}
        }
        if let Some(pid) = pid {
            rss_peak_kib = rss_peak_kib.max(status_field(pid, "VmRSS:").unwrap_or(0));
        }
    }
    Observed {
        visits,
        rss_peak_kib,
    }
}

/// One GET /1k through the proxy on a connection of its own; Ok when answered 200 in full.
async fn one_visit(proxy: SocketAddr, origin: SocketAddr) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(proxy).await.context("connect")?;
    let request =
        format!("GET http://{origin}/1k HTTP/1.1\r\nHost: {origin}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.context("send")?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.context("read")?;
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or("(closed without an answer)");
    ensure!(status.starts_with("HTTP/1.1 200"), "{status}");
    ensure!(
        answer.len() > 1024,
        "a short answer: {} bytes",
        answer.len()
    );
    Ok(())
}

/// The proxy's /metrics text.
async fn scrape(admin: SocketAddr) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(admin).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// I's table: the same client without and under the flood.
fn print_flood(f: &Flood) {
    let mut t = Table::default();
    let mib = |kib: u64| Some(kib as f64 / 1024.0);
    let (q, u) = (&f.quiet, &f.flooded);
    t.row(
        "I normal client: requests answered, %",
        Some(q.answered_pct()),
        Some(u.answered_pct()),
    );
    t.row(
        "I normal client: p50, ms",
        q.percentile_ms(0.5),
        u.percentile_ms(0.5),
    );
    t.row(
        "I normal client: p95, ms",
        q.percentile_ms(0.95),
        u.percentile_ms(0.95),
    );
    t.row(
        "I normal client: slowest, ms",
        q.percentile_ms(1.0),
        u.percentile_ms(1.0),
    );
    t.row(
        "I proxy RSS, MiB (before; at the flood's peak)",
        mib(f.rss_before_kib),
        mib(f.rss_peak_kib),
    );
    println!("I: {} idle connections from {FLOOD_ADDRESSES} addresses, reconnecting when closed; a normal client from 127.0.0.1, one GET /1k per connection every 100 ms ({} visits)", FLOOD_ADDRESSES * FLOOD_PER_ADDRESS, q.sent);
    t.print_headed(["figure", "no flood", "under the flood", "ratio"]);
    println!(
        "attacker connections held by the proxy when the visits began: {}; opened in all: {}; \
         at the end: {} open, {} closed to make room, {} shed; RSS after the flood: {:.0} MiB",
        f.held,
        f.opened,
        number(f.open_at_end),
        number(f.made_room),
        number(f.shed),
        f.rss_after_kib as f64 / 1024.0
    );
    for failure in &u.failures {
        println!("  a failed visit under the flood: {failure}");
    }
    let ok = u.answered_pct() >= 95.0 && u.percentile_ms(0.95).is_some_and(|p| p <= 100.0);
    println!(
        "I target (≥ 95% answered, p95 ≤ 100 ms under the flood): {}",
        if ok { "met" } else { "NOT MET" }
    );
}

/// A figure of a load (MB/s, CPU per connection, …), when it has one.
type Figure = fn(&Load) -> Option<f64>;

/// A figure of each load, its median.
fn median_of(loads: &[Load], figure: Figure) -> Option<f64> {
    median(loads.iter().filter_map(figure).collect())
}

/// A figure's ratio `b` ÷ `a`, round by round.
fn ratios(a: &[Load], b: &[Load], figure: Figure) -> Vec<f64> {
    a.iter()
        .zip(b)
        .filter_map(|(a, b)| Some(figure(b)? / figure(a)?))
        .collect()
}

/// `0.98 / 1.02 / 1.00`
fn listed(values: &[f64]) -> String {
    let shown: Vec<String> = values.iter().map(|v| format!("{v:.2}")).collect();
    shown.join(" / ")
}

/// The SOCKS5 shapes' tables: CONNECT against SOCKS5 through Portcullis, then Dante against
/// Portcullis, each with its target.
fn print_socks(s: &Socks) {
    let rate: Figure = |l| Some(l.mb_per_s());
    let per_gb: Figure = |l| l.cpu_s_per_gb(l.bytes);
    let rps: Figure = |l| Some(l.rps());
    let p50: Figure = |l| Some(l.percentile_ms(0.50));
    let p99: Figure = |l| Some(l.percentile_ms(0.99));
    let per_conn: Figure = Load::cpu_us_per_request;
    let s_rows = |t: &mut Table, a: &[Load], b: &[Load]| {
        let rows: [(&str, Figure); 4] = [
            ("S a connection per request, 1 KiB, 50 conns, conn/s", rps),
            ("S p50 from the TCP connect to the first byte, ms", p50),
            ("S p99 from the TCP connect to the first byte, ms", p99),
            ("S proxy CPU per connection, µs", per_conn),
        ];
        t.medians(&rows, a, b);
    };

    println!();
    println!(
        "SOCKS5 (no authentication, CONNECT to the sink's IPv4 address) beside CONNECT, through \
         the same Portcullis: medians of {SOCKS_ROUNDS} interleaved rounds; ratio SOCKS5 ÷ CONNECT"
    );
    let mut t = Table::default();
    t.row(
        "C download, 256 MiB a tunnel, MB/s",
        median_of(&s.c_connect, rate),
        median_of(&s.c_socks, rate),
    );
    t.row(
        "C proxy CPU-s per GB",
        median_of(&s.c_connect, per_gb),
        median_of(&s.c_socks, per_gb),
    );
    let c_rate = ratios(&s.c_connect, &s.c_socks, rate);
    let c_cpu = ratios(&s.c_connect, &s.c_socks, per_gb);
    let (c_rate_median, c_cpu_median) = (median(c_rate.clone()), median(c_cpu.clone()));
    t.ratio_row("C SOCKS5 ÷ CONNECT, MB/s (median of rounds)", c_rate_median);
    t.ratio_row(
        "C SOCKS5 ÷ CONNECT, CPU per GB (median of rounds)",
        c_cpu_median,
    );
    s_rows(&mut t, &s.s_connect, &s.s_socks);
    t.ratio_row(
        "S SOCKS5 ÷ CONNECT, CPU per connection (median of rounds)",
        median(ratios(&s.s_connect, &s.s_socks, per_conn)),
    );
    t.print_headed(["figure", "CONNECT", "SOCKS5", "ratio"]);
    let met = c_rate_median.is_some_and(|r| r >= 1.0 - SOCKS_NOISE)
        && c_cpu_median.is_some_and(|r| r <= 1.0 + SOCKS_NOISE);
    println!(
        "C target (SOCKS5's MB/s and CPU per GB equal to CONNECT's within noise, taken as ±{:.0}% \
         on the median of the rounds' ratios): MB/s {}, CPU per GB {}: {}",
        SOCKS_NOISE * 100.0,
        listed(&c_rate),
        listed(&c_cpu),
        if met { "met" } else { "NOT MET" }
    );

    println!();
    let Some(version) = &s.dante else {
        println!("Dante: not run (see the note on stderr), so S has no comparison with it.");
        return;
    };
    println!(
        "SOCKS5 through Dante ({version}) and Portcullis: medians of {SOCKS_ROUNDS} rounds (C \
         through Dante: one run); ratio portcullis ÷ dante"
    );
    let mut t = Table::default();
    let c_dante = s.c_dante.as_slice();
    t.row(
        "C SOCKS5 download, 256 MiB a tunnel, MB/s",
        median_of(c_dante, rate),
        median_of(&s.c_socks, rate),
    );
    t.row(
        "C SOCKS5 CPU-s per GB",
        median_of(c_dante, per_gb),
        median_of(&s.c_socks, per_gb),
    );
    s_rows(&mut t, &s.s_dante, &s.s_socks);
    let s_cpu = ratios(&s.s_dante, &s.s_socks, per_conn);
    let ratio = median(s_cpu.clone());
    t.ratio_row(
        "S portcullis ÷ dante, CPU per connection (median of rounds)",
        ratio,
    );
    t.print_headed(["figure", "dante", "portcullis", "ratio"]);
    println!(
        "S target (Portcullis's CPU per SOCKS5 connection ≤ 0.5× Dante's): {} by round, median {}: {}",
        listed(&s_cpu),
        ratio.map_or("—".to_owned(), |r| format!("{r:.2}×")),
        if ratio.is_some_and(|r| r <= 0.5) {
            "met"
        } else {
            "NOT MET"
        }
    );
    println!(
        "Dante's CPU is that of danted and every process descended from it: utime + stime + \
         cutime + cstime from /proc/*/stat at both ends of each run, so its children that exit \
         during a run are counted too."
    );
}

/// The checks table: every run's requests, errors and CPU shares.
fn print_checks(checks: &[Check]) {
    println!();
    println!("| shape | via | requests | errors | bench CPU % of a core | proxy CPU % of a core |");
    println!("|---|---|---:|---:|---:|---:|");
    for c in checks {
        println!(
            "| {} | {} | {} | {} | {:.0} | {} |",
            c.shape,
            c.via,
            c.requests,
            c.errors,
            c.bench_cpu_pct,
            c.proxy_cpu_pct
                .map_or("—".to_owned(), |p| format!("{p:.0}"))
        );
    }
}

#[derive(Default)]
struct Table {
    rows: Vec<[String; 4]>,
}

impl Table {
    /// A figure measured directly and through the proxy; the ratio is proxy ÷ direct.
    fn row(&mut self, figure: &str, direct: Option<f64>, proxy: Option<f64>) {
        let ratio = match (direct, proxy) {
            (Some(d), Some(p)) if d != 0.0 => format!("{:.2}×", p / d),
            _ => "—".to_owned(),
        };
        self.rows
            .push([figure.to_owned(), number(direct), number(proxy), ratio]);
    }

    /// A row for each figure of `rows`: its median over the loads `a` and over `b`.
    fn medians(&mut self, rows: &[(&str, Figure)], a: &[Load], b: &[Load]) {
        for &(figure, f) in rows {
            self.row(figure, median_of(a, f), median_of(b, f));
        }
    }

    /// A count of the proxy's alone.
    fn count_row(&mut self, figure: &str, count: u64) {
        self.rows.push([
            figure.to_owned(),
            "—".into(),
            thousands(count as f64),
            "—".into(),
        ]);
    }

    /// A comparison between two proxy runs: only a ratio.
    fn ratio_row(&mut self, figure: &str, ratio: Option<f64>) {
        let ratio = ratio.map_or("—".to_owned(), |r| format!("{r:.2}×"));
        self.rows
            .push([figure.to_owned(), "—".into(), "—".into(), ratio]);
    }

    fn print(&self) {
        self.print_headed(["figure", "direct", "portcullis", "ratio"]);
    }

    /// Prints the table under these column names.
    fn print_headed(&self, head: [&str; 4]) {
        let mut widths = head.map(|h| h.chars().count());
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: [&str; 4]| {
            let mut out = String::from("|");
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                let pad = " ".repeat(w - cell.chars().count());
                if i == 0 {
                    out.push_str(&format!(" {cell}{pad} |"));
                } else {
                    out.push_str(&format!(" {pad}{cell} |"));
                }
            }
            out
        };
        println!("{}", line(head));
        let rule: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i == 0 {
                    "-".repeat(w + 2)
                } else {
                    format!("{}:", "-".repeat(w + 1))
                }
            })
            .collect();
        println!("|{}|", rule.join("|"));
        for row in &self.rows {
            println!("{}", line([&row[0], &row[1], &row[2], &row[3]]));
        }
    }
}

/// A figure as the shared harness prints it: 3 significant digits, thousands separated.
fn number(value: Option<f64>) -> String {
    match value {
        None => "—".to_owned(),
        Some(v) if !v.is_finite() => "—".to_owned(),
        Some(v) if v.abs() >= 10_000.0 => thousands(v),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// `12,345`
fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 {
        out.insert(0, '-');
    }
    out
}

// ------------------------------------------------------------------ F: the shared link

/// F's windows: each sub-run's clients run for `warm_up`, then their bytes are counted over
/// `window`.
#[derive(Debug, Clone, Copy)]
struct FairTimes {
    warm_up: Duration,
    window: Duration,
}

/// The shaped link of F: 400 Mbit/s, in bytes per second.
const F_LINK: f64 = 50e6;
/// The cap of F: 5 Mbit/s, in bytes per second.
const F_CAP: f64 = 625e3;
/// Connections of each saturating client, and of the capped one.
const F_CONNS: usize = 4;
const F_CAPPED_CONNS: usize = 8;
/// The light client sends a GET /1k this often.
const F_LIGHT_EVERY: Duration = Duration::from_millis(20);
/// A bulk connection is opened again after an error at most this many times.
const F_MAX_CONNECTS: usize = 1_000;
/// Requests on one bulk or light connection at most.
const F_MAX_REQUESTS: usize = 100_000;
/// Interleaved pairs of A and C against the binary from before shaping.
const F_COST_PAIRS: usize = 3;
/// Between A and C on the same proxy in F's cost pairs: longer than the express lane's
/// linger (`egress::express::LINGER`, 1 s), for which the proxy still makes room for A's
/// light clients after their last request; C is downloads with no one browsing beside them.
const F_LINGER_PAST: Duration = Duration::from_millis(1_200);

/// F's client number `i`: 127.0.0.2, .3, … (the proxy tells clients apart by address).
fn fair_client(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + i)
}

/// How a saturating client downloads: GET /1m again and again, or an endless download
/// from the sink through a CONNECT tunnel.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Bulk {
    Http,
    Tunnel,
}

/// One saturating client of F: its address, its connections and how it downloads.
#[derive(Debug, Clone, Copy)]
struct Heavy {
    from: Ipv4Addr,
    conns: usize,
    bulk: Bulk,
}

/// What one sub-run of F measured.
#[derive(Default)]
struct FairOutcome {
    /// Each heavy client's bytes per second over the window, in the order given.
    rates: Vec<f64>,
    /// The light client's requests over the window (latencies sorted).
    light: Load,
    errors: u64,
}

impl FairOutcome {
    /// A heavy client's share of what all received, in percent.
    fn share_pct(&self, i: usize) -> f64 {
        let total: f64 = self.rates.iter().sum();
        100.0 * self.rates.get(i).copied().unwrap_or(0.0) / total
    }

    fn light_p95_ms(&self) -> f64 {
        self.light.percentile_ms(0.95)
    }
}

/// A connection from `from` (any loopback address when `None`) to `to`, Nagle off.
async fn connect_from(from: Option<Ipv4Addr>, to: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(from) = from {
        socket.bind(SocketAddr::from((from, 0)))?;
    }
    let stream = tokio::time::timeout(OP_TIMEOUT, socket.connect(to)).await??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Runs `heavy` clients through `proxy` for the warm-up and the window, and with `light`,
/// a light client from that address sending a GET /1k every [`F_LIGHT_EVERY`] during the
/// window; the heavy clients' bytes are counted as they arrive, between the window's ends.
async fn fair_run(
    proxy: SocketAddr,
    origin: SocketAddr,
    sink: SocketAddr,
    heavy: &[Heavy],
    light: Option<Light<'_>>,
    t: &FairTimes,
) -> anyhow::Result<FairOutcome> {
    let start = Instant::now();
    let until = start + t.warm_up + t.window + Duration::from_millis(200);
    let big = Target::new(origin, "/1m", ONE_MIB as u64);
    let counters: Vec<Arc<AtomicU64>> = heavy.iter().map(|_| Arc::default()).collect();
    let mut tasks = JoinSet::new();
    for (h, got) in heavy.iter().zip(&counters) {
        for _ in 0..h.conns {
            let (from, got) = (h.from, got.clone());
            match h.bulk {
                Bulk::Http => {
                    let req = big.request(Via::Proxy(proxy), false);
                    tasks.spawn(bulk_http(from, proxy, req, got, until));
                }
                Bulk::Tunnel => {
                    tasks.spawn(bulk_tunnel(from, proxy, sink, got, until));
                }
            }
        }
    }
    let light = light.map(|light| {
        let (from_t, to_t) = (start + t.warm_up, start + t.warm_up + t.window);
        let apart = light.apart;
        let (via, to) = match light.direct {
            false => (Via::Proxy(proxy), proxy),
            true => (Via::Direct, apart.origin),
        };
        let req = Target::new(apart.origin, "/1k", 1024).request(via, false);
        apart
            .runtime
            .spawn(light_client(light.from, to, req, from_t, to_t))
    });
    tokio::time::sleep_until((start + t.warm_up).into()).await;
    let before: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let opened = Instant::now();
    tokio::time::sleep_until((start + t.warm_up + t.window).into()).await;
    let secs = opened.elapsed().as_secs_f64();
    let mut out = FairOutcome {
        rates: counters
            .iter()
            .zip(before)
            .map(|(c, b)| c.load(Ordering::Relaxed).saturating_sub(b) as f64 / secs)
            .collect(),
        ..FairOutcome::default()
    };
    let ends = async {
        while let Some(errors) = tasks.join_next().await {
            out.errors += errors.unwrap_or(1);
        }
        if let Some(light) = light {
            let (latencies, errors) = light.await.unwrap_or((Vec::new(), 1));
            out.light.requests = latencies.len() as u64;
            out.light.latencies = latencies;
            out.errors += errors;
        }
    };
    let left =
        until.saturating_duration_since(Instant::now()) + OP_TIMEOUT + Duration::from_secs(5);
    ensure!(
        tokio::time::timeout(left, ends).await.is_ok(),
        "F: a client did not end in time"
    );
    out.light.latencies.sort_unstable();
    Ok(out)
}

/// The light client from `light` alone, then beside `heavy`.
async fn light_beside(
    proxy: SocketAddr,
    origin: SocketAddr,
    sink: SocketAddr,
    heavy: Heavy,
    light: Light<'_>,
    t: &FairTimes,
) -> anyhow::Result<(FairOutcome, FairOutcome)> {
    let idle = fair_run(proxy, origin, sink, &[], Some(light), t).await?;
    let loaded = fair_run(proxy, origin, sink, &[heavy], Some(light), t).await?;
    Ok((idle, loaded))
}

/// One connection of a saturating client from `from`: `req` (a GET /1m) again and again
/// until `until`, each body frame's bytes added to `got` as it arrives; opened again after
/// an error. Its errors.
async fn bulk_http(
    from: Ipv4Addr,
    proxy: SocketAddr,
    req: Request<Empty<Bytes>>,
    got: Arc<AtomicU64>,
    until: Instant,
) -> u64 {
    let (req, got) = (&req, &got);
    reconnecting(until, || async move {
        let (mut sender, conn) = open_from(Some(from), proxy.into()).await?;
        let requests = async {
            for _ in 0..F_MAX_REQUESTS {
                if Instant::now() >= until {
                    break;
                }
                sender.ready().await?;
                let response = sender.send_request(clone_request(req)).await?;
                ensure!(
                    response.status() == StatusCode::OK,
                    "status {}",
                    response.status()
                );
                let mut body = response.into_body();
                // Bounded by the time: no frame is waited for after `until`.
                while let Ok(Some(frame)) =
                    tokio::time::timeout_at(until.into(), body.frame()).await
                {
                    if let Some(data) = frame?.data_ref() {
                        got.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                }
            }
            Ok::<(), anyhow::Error>(())
        };
        tokio::select! {
            done = requests => done,
            closed = conn => {
                closed?;
                bail!("the proxy closed the connection")
            }
        }
    })
    .await
}

/// One tunnel of a saturating client from `from`: a CONNECT to the sink, which is asked for
/// a terabyte, read until `until` and counted in `got`; opened again after an error. Its
/// errors.
async fn bulk_tunnel(
    from: Ipv4Addr,
    proxy: SocketAddr,
    sink: SocketAddr,
    got: Arc<AtomicU64>,
    until: Instant,
) -> u64 {
    let got = &got;
    reconnecting(until, || async move {
        let mut stream = connect_from(Some(from), proxy).await?;
        connect_tunnel(&mut stream, &sink.to_string()).await?;
        stream
            .write_all(format!("{}\n", 1u64 << 40).as_bytes())
            .await?;
        let mut buf = vec![0u8; 64 * 1024];
        // Bounded by the time: nothing is read after `until`.
        while let Ok(read) = tokio::time::timeout_at(until.into(), stream.read(&mut buf)).await {
            let n = read?;
            ensure!(n > 0, "the tunnel closed");
            got.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(())
    })
    .await
}

/// Runs `connection` (one connection's work until `until`), and again after an error, at
/// most [`F_MAX_CONNECTS`] times and never after `until`; its errors.
async fn reconnecting<F, Fut>(until: Instant, mut connection: F) -> u64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut errors = 0;
    for _ in 0..F_MAX_CONNECTS {
        if Instant::now() >= until {
            break;
        }
        let left = until.saturating_duration_since(Instant::now()) + OP_TIMEOUT;
        if !matches!(tokio::time::timeout(left, connection()).await, Ok(Ok(()))) {
            errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    errors
}

/// F's light client: its address, its thread, and whether it goes through the proxy or
/// straight to its origin (the reference for what the machine alone adds).
#[derive(Clone, Copy)]
struct Light<'a> {
    from: Ipv4Addr,
    apart: &'a Apart,
    direct: bool,
}

/// A thread with a runtime of its own, for F's light client and an origin of its own, as
/// another PC and another server are: the light client's latencies are then the proxy's and
/// the machine's, not the queue of this process's runtime, busy with the saturating clients
/// and their origin. The thread ends when this is dropped.
struct Apart {
    runtime: tokio::runtime::Handle,
    origin: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Apart {
    fn start() -> anyhow::Result<Apart> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("light".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = tx.send(Err(anyhow::Error::from(e)));
                        return;
                    }
                };
                let origin = runtime.block_on(start_origin());
                let _ = tx.send(origin.map(|origin| (runtime.handle().clone(), origin)));
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        let (runtime, origin) = rx
            .recv_timeout(Duration::from_secs(10))
            .context("F: the light client's thread did not start")??;
        Ok(Apart {
            runtime,
            origin,
            _stop: stop,
        })
    }
}

/// The light client: from `start` to `end`, `req` (a GET /1k) every [`F_LIGHT_EVERY`] on one
/// keep-alive connection from `from` (opened again after an error); the latencies in µs and
/// the errors.
async fn light_client(
    from: Ipv4Addr,
    proxy: SocketAddr,
    req: Request<Empty<Bytes>>,
    start: Instant,
    end: Instant,
) -> (Vec<u32>, u64) {
    tokio::time::sleep_until(start.into()).await;
    let mut tick = tokio::time::interval(F_LIGHT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let out = keep_alive_from(Some(from), proxy.into(), req, 1024, end, Some(tick)).await;
    (out.latencies, out.errors)
}

/// F's configuration: a link of 400 Mbit/s, with weights when given.
fn shaped_link(weights: &[(Ipv4Addr, u32)]) -> String {
    let mut config = format!("[shaping]\ndown = \"{}Mbit/s\"\n", F_LINK * 8.0 / 1e6);
    if !weights.is_empty() {
        config.push_str("[shaping.weights]\n");
        for (client, weight) in weights {
            config.push_str(&format!("\"{client}\" = {weight}\n"));
        }
    }
    config
}

/// One line of F's table: a figure, its target and whether it is met.
struct FairRow {
    figure: String,
    measured: String,
    target: String,
    met: Option<bool>,
}

/// F: the shared link. Shares of two saturating clients, 1:1 and 2:1; a cap over eight
/// connections, by plain HTTP and by CONNECT; a light client's p95 alone and beside a
/// saturating one, unshaped and shaped; and, with `baseline`, A and C against the binary
/// from before shaping. Prints the table and returns nothing else.
#[allow(clippy::too_many_arguments)]
async fn fair_shapes(
    binary: &Path,
    light_only: bool,
    baseline: Option<&Path>,
    dir: &Path,
    origin: SocketAddr,
    sink: SocketAddr,
    t: &FairTimes,
    durations: &Durations,
    clk: f64,
    checks: &mut Vec<Check>,
) -> anyhow::Result<Vec<FairRow>> {
    let mut rows = Vec::new();
    let mut row = |figure: String, measured: String, target: &str, met: Option<bool>| {
        rows.push(FairRow {
            figure,
            measured,
            target: target.to_owned(),
            met,
        });
    };
    let log = dir.join("fair-access.log");
    let apart = Apart::start()?;
    let light_origin = apart.origin;
    let start = |name: &str, extra: &str, binary: &Path| {
        Proxy::start(
            binary,
            dir,
            name,
            &[origin, light_origin],
            sink,
            &log,
            None,
            extra,
        )
    };
    let (a, b) = (fair_client(0), fair_client(1));
    let light_from = fair_client(2);
    let light = Light {
        from: light_from,
        apart: &apart,
        direct: false,
    };
    let http = |from, conns| Heavy {
        from,
        conns,
        bulk: Bulk::Http,
    };
    let within = |v: f64, want: f64, by: f64| (v - want).abs() <= by;
    let mb = |rate: f64| format!("{:.2} MB/s", rate / 1e6);

    // The light client beside a saturating one on a shaped link, when measured.
    let mut lights = Vec::new();
    if !light_only {
        // Two saturating clients, equal weights; then the light client on the same link.
        let shaped = start("fair-link", &shaped_link(&[]), binary)?;
        let two = [http(a, F_CONNS), http(b, F_CONNS)];
        let even = fair_run(shaped.addr, origin, sink, &two, None, t).await?;
        let total: f64 = even.rates.iter().sum();
        eprintln!(
            "F 1:1     {} + {} = {} ({} errors)",
            mb(even.rates[0]),
            mb(even.rates[1]),
            mb(total),
            even.errors
        );
        for (i, client) in [a, b].iter().enumerate() {
            let pct = even.share_pct(i);
            row(
                format!("1:1, {client}'s share of the bytes ({})", mb(even.rates[i])),
                format!("{pct:.1}%"),
                "50% ± 10%",
                Some(within(pct, 50.0, 10.0)),
            );
        }
        row(
            "1:1, both together, share of the 400 Mbit/s link".into(),
            format!("{:.1}% ({})", 100.0 * total / F_LINK, mb(total)),
            "(for reading the above)",
            None,
        );
        let (idle, loaded) =
            light_beside(shaped.addr, origin, sink, http(a, F_CONNS), light, t).await?;
        lights.push(("shaped 400 Mbit/s", idle, loaded));
        drop(shaped);

        // Weights 2:1.
        let weighted = start("fair-weights", &shaped_link(&[(a, 2), (b, 1)]), binary)?;
        let uneven = fair_run(weighted.addr, origin, sink, &two, None, t).await?;
        drop(weighted);
        eprintln!(
            "F 2:1     {} + {} ({} errors)",
            mb(uneven.rates[0]),
            mb(uneven.rates[1]),
            uneven.errors
        );
        for (i, (client, want)) in [(a, 200.0 / 3.0), (b, 100.0 / 3.0)].iter().enumerate() {
            let pct = uneven.share_pct(i);
            row(
                format!(
                    "2:1, {client} (weight {}) share of the bytes ({})",
                    2 - i,
                    mb(uneven.rates[i])
                ),
                format!("{pct:.1}%"),
                if i == 0 { "67% ± 10%" } else { "33% ± 10%" },
                Some(within(pct, *want, 10.0)),
            );
        }

        // A cap of 5 Mbit/s on one client's eight connections, beside an uncapped client.
        let cap = format!(
            "{}[[limits.rate]]\nname = \"capped\"\nclients = [\"{a}\"]\ndown = \"{}Mbit/s\"\n",
            shaped_link(&[]),
            F_CAP * 8.0 / 1e6
        );
        let capped = start("fair-cap", &cap, binary)?;
        for bulk in [Bulk::Http, Bulk::Tunnel] {
            let clients = [
                Heavy {
                    from: a,
                    conns: F_CAPPED_CONNS,
                    bulk,
                },
                Heavy {
                    from: b,
                    conns: F_CONNS,
                    bulk,
                },
            ];
            let run = fair_run(capped.addr, origin, sink, &clients, None, t).await?;
            let how = if bulk == Bulk::Http {
                "GET /1m"
            } else {
                "CONNECT"
            };
            eprintln!(
                "F cap {how:<8} capped {} (of {}), uncapped {} ({} errors)",
                mb(run.rates[0]),
                mb(F_CAP),
                mb(run.rates[1]),
                run.errors
            );
            let off = 100.0 * (run.rates[0] / F_CAP - 1.0);
            row(
                format!("cap 5 Mbit/s, {a} over {F_CAPPED_CONNS} conns, {how}"),
                format!("{} ({off:+.1}%)", mb(run.rates[0])),
                "0.625 MB/s ± 5%",
                Some(off.abs() <= 5.0),
            );
            row(
                format!("  beside it, {b} uncapped, {F_CONNS} conns, {how}"),
                mb(run.rates[1]),
                "(the rest of the link)",
                None,
            );
        }
        drop(capped);
    }

    // The light client beside a saturating one, unshaped.
    let open = start("fair-open", "", binary)?;
    let (idle_open, loaded_open) =
        light_beside(open.addr, origin, sink, http(a, F_CONNS), light, t).await?;
    drop(open);
    // The same light client straight to its origin beside the same load: what the machine
    // (two cores shared by the proxy, the load generator and the origins) adds without a proxy.
    let bare = start("fair-bare", "", binary)?;
    let direct = Light {
        direct: true,
        ..light
    };
    let (idle_direct, loaded_direct) =
        light_beside(bare.addr, origin, sink, http(a, F_CONNS), direct, t).await?;
    drop(bare);
    row(
        format!(
            "{light_from} GET /1k p95 straight to its origin beside {a} at {}, unshaped",
            mb(loaded_direct.rates[0])
        ),
        format!(
            "{:.2} ms (idle {:.2} ms)",
            loaded_direct.light_p95_ms(),
            idle_direct.light_p95_ms()
        ),
        "(the machine without the proxy)",
        None,
    );
    lights.insert(0, ("unshaped", idle_open, loaded_open));
    for (how, idle, loaded) in &lights {
        let (p_idle, p_loaded) = (idle.light_p95_ms(), loaded.light_p95_ms());
        eprintln!(
            "F light   {how}: p95 idle {p_idle:.2} ms ({} requests), beside {} {p_loaded:.2} ms ({} requests, {} errors)",
            idle.light.requests,
            mb(loaded.rates[0]),
            loaded.light.requests,
            idle.errors + loaded.errors
        );
        row(
            format!("{light_from} GET /1k p95 idle, {how}"),
            format!("{p_idle:.2} ms"),
            "(the reference)",
            None,
        );
        row(
            format!(
                "{light_from} GET /1k p95 beside {a} at {}, {how}",
                mb(loaded.rates[0])
            ),
            format!("{p_loaded:.2} ms ({:.1}× idle)", p_loaded / p_idle),
            "≤ 3× idle and ≤ 10 ms",
            Some(p_loaded <= 3.0 * p_idle && p_loaded <= 10.0),
        );
    }

    if light_only {
        return Ok(rows);
    }

    // Shaping off: A and C, this binary without [shaping] against the one from before it.
    let Some(baseline) = baseline else {
        row(
            "shaping off, A and C against a binary without shaping".into(),
            "not run (no --baseline)".into(),
            "≤ 3% / ≤ 5%",
            None,
        );
        return Ok(rows);
    };
    let now = start("fair-now", "", binary)?;
    let before = start("fair-before", "", baseline)?;
    let one_k = Target::new(origin, "/1k", 1024);
    for proxy in [&now, &before] {
        let via = Via::Proxy(proxy.addr);
        http_load(via, &one_k, A_CONNS, false, durations.warm_up, None, clk).await?;
    }
    let (mut a_ratios, mut c_ratios) = (Vec::new(), Vec::new());
    let (mut a_cpu, mut c_cpu) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for pair in 0..F_COST_PAIRS {
        let mut order = [
            (0, &now, "F A now", "F C now"),
            (1, &before, "F A before", "F C before"),
        ];
        if pair % 2 == 1 {
            order.reverse();
        }
        let mut a_pair = [None, None];
        let mut c_pair = [None, None];
        for (i, proxy, a_name, c_name) in order {
            let via = Via::Proxy(proxy.addr);
            let pid = Some(proxy.pid);
            let load = measure(
                a_name, via, &one_k, A_CONNS, false, durations, pid, clk, checks,
            )
            .await?;
            a_pair[i] = load.cpu_us_per_request();
            tokio::time::sleep(F_LINGER_PAST).await;
            let load = tunnel_load(c_name, via, sink, durations.tunnel, pid, clk, checks).await?;
            c_pair[i] = load.cpu_s_per_gb(load.bytes);
        }
        for (pair, ratios, cpu) in [
            (a_pair, &mut a_ratios, &mut a_cpu),
            (c_pair, &mut c_ratios, &mut c_cpu),
        ] {
            if let [Some(now), Some(before)] = pair {
                ratios.push(now / before);
                cpu[0].push(now);
                cpu[1].push(before);
            }
        }
    }
    for (shape, unit, ratios, cpu, limit) in [
        ("A", "µs per request", a_ratios, a_cpu, 1.03),
        ("C", "CPU-s per GB", c_ratios, c_cpu, 1.05),
    ] {
        let [now, before] = cpu;
        let median_ratio = median(ratios.clone());
        row(
            format!(
                "shaping off, {shape}: {unit} now ÷ without shaping (now {}, without {}; pairs {})",
                number(median(now)),
                number(median(before)),
                listed(&ratios)
            ),
            median_ratio.map_or("—".to_owned(), |r| format!("{r:.3}×")),
            if shape == "A" {
                "≤ 1.03×"
            } else {
                "≤ 1.05×"
            },
            median_ratio.map(|r| r <= limit),
        );
    }
    Ok(rows)
}

/// F's table: each figure beside its target.
fn print_fair(rows: &[FairRow], t: &FairTimes) {
    println!();
    println!(
        "F: the shared link (issue 18). Each sub-run has its own proxy; the clients are \
         127.0.0.2 (weight 2, capped), 127.0.0.3 and 127.0.0.4 (the light client); bytes are \
         counted as they arrive over {} s after {} s of warm-up; the light client sends a \
         GET /1k every {} ms on one keep-alive connection.",
        t.window.as_secs_f64(),
        t.warm_up.as_secs_f64(),
        F_LIGHT_EVERY.as_millis()
    );
    let mut table = Table::default();
    for r in rows {
        let verdict = match r.met {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "—",
        };
        table.rows.push([
            r.figure.clone(),
            r.measured.clone(),
            r.target.clone(),
            verdict.to_owned(),
        ]);
    }
    table.print_headed(["figure", "measured", "target", ""]);
}

// ------------------------------------------------------------------ TLS to the proxy

/// Interleaved pairs of A through the plain listener and the TLS listener of one proxy.
const TLS_PAIRS: usize = 3;
/// Rounds of D over HTTP/1.1 and over HTTP/2, each on a freshly started proxy.
const TLS_D_ROUNDS: usize = 3;
/// Streams the proxy allows at once on one HTTP/2 connection (`H2_STREAMS` in
/// `src/proxy/listener.rs`): D over HTTP/2 fills each connection up to it.
const H2_STREAMS: usize = 100;
/// Issue 20's targets: the proxy's CPU per request over TLS at most this many times that
/// over the plain listener; its RSS growth per idle tunnel over HTTP/2 at most this many KiB.
const TLS_CPU_TARGET: f64 = 1.5;
const H2_KIB_TARGET: f64 = 4.0;

type H2Sender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

/// What the TLS shapes measured, pair by pair and round by round.
struct Tls {
    /// A through the plain listener and through the TLS listener of the same proxy.
    a_plain: Vec<Load>,
    a_tls: Vec<Load>,
    /// D over HTTP/1.1 (a connection a tunnel, plain) and over HTTP/2 (streams of a few TLS
    /// connections), each on a freshly started proxy.
    d_plain: Vec<Tunnels>,
    d_h2: Vec<H2Tunnels>,
    /// The TLS the proxy chose: version and cipher suite.
    session: String,
}

/// D over HTTP/2: the tunnels, and the proxy's memory with their connections alone.
struct H2Tunnels {
    tunnels: Tunnels,
    conns: Step,
}

/// The TLS shapes: a certificate from the binary's own `portcullis cert`; A through the plain
/// and the TLS listener of one proxy (which logs every request, like the main one) in
/// [`TLS_PAIRS`] interleaved pairs; then D over HTTP/1.1 and over HTTP/2 in [`TLS_D_ROUNDS`]
/// rounds, each on a freshly started proxy and each round starting with the other.
async fn tls_shapes(
    binary: &Path,
    dir: &Path,
    (origin, sink): (SocketAddr, SocketAddr),
    steps: &[usize],
    d: &Durations,
    clk: f64,
    checks: &mut Vec<Check>,
) -> anyhow::Result<Tls> {
    let certs = dir.join("tls");
    make_certificate(binary, &certs)?;
    // Leaked, once a run: `Via` is `Copy` and names it.
    let client: &'static TlsConnector = Box::leak(Box::new(tls_client(&certs.join("ca.pem"))?));
    let log = dir.join("tls-access.log");
    let (proxy, tls_addr) = Proxy::start_tls(binary, dir, "tls", (origin, sink), &log, &certs)?;
    let session = tls_preflight(tls_addr, client, origin, sink).await?;
    let mut out = Tls {
        a_plain: Vec::new(),
        a_tls: Vec::new(),
        d_plain: Vec::new(),
        d_h2: Vec::new(),
        session,
    };
    let one_k = Target::new(origin, "/1k", 1024);
    let (plain, tls) = (Via::Proxy(proxy.addr), Via::ProxyTls(tls_addr, client));
    for via in [plain, tls] {
        http_load(via, &one_k, A_CONNS, false, d.warm_up, None, clk).await?;
    }
    for pair in 0..TLS_PAIRS {
        let mut order = [("A plain", plain), ("A TLS", tls)];
        if pair % 2 == 1 {
            order.reverse();
        }
        for (shape, via) in order {
            let pid = Some(proxy.pid);
            let load = measure(shape, via, &one_k, A_CONNS, false, d, pid, clk, checks).await?;
            match via {
                Via::ProxyTls(..) => out.a_tls.push(load),
                _ => out.a_plain.push(load),
            }
        }
    }
    drop(proxy);

    for round in 0..TLS_D_ROUNDS {
        let mut order = [false, true];
        if round % 2 == 1 {
            order.reverse();
        }
        for h2 in order {
            let (fresh, tls_addr) =
                Proxy::start_tls(binary, dir, "tls-fresh", (origin, sink), &log, &certs)?;
            if h2 {
                out.d_h2
                    .push(idle_h2_tunnels(&fresh, tls_addr, client, sink, steps).await?);
            } else {
                out.d_plain.push(idle_tunnels(&fresh, sink, steps).await?);
            }
        }
    }
    Ok(out)
}

/// `portcullis cert --ip 127.0.0.1 --out DIR` with the binary under test: an authority
/// (`ca.pem`) and the proxy's certificate for 127.0.0.1 signed by it (`proxy.pem`,
/// `proxy.key`).
fn make_certificate(binary: &Path, out: &Path) -> anyhow::Result<()> {
    let made = Command::new(binary)
        .args(["cert", "--ip", "127.0.0.1", "--out"])
        .arg(out)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {} cert", binary.display()))?;
    ensure!(
        made.status.success(),
        "`portcullis cert` failed ({}): {}",
        made.status,
        String::from_utf8_lossy(&made.stderr)
    );
    Ok(())
}

/// The client side of TLS to the proxy, trusting the authority in `ca` alone.
fn tls_client(ca: &Path) -> anyhow::Result<TlsConnector> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("cannot read {}", ca.display()))?;
    for cert in certs {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// TLS over `stream` to the proxy's TLS listener, offering `alpn` alone by ALPN; fails unless
/// the proxy chose it.
async fn tls_to_proxy(
    tls: &TlsConnector,
    stream: TcpStream,
    alpn: &[u8],
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = rustls::pki_types::ServerName::from(stream.peer_addr()?.ip());
    let handshake = tls.with_alpn(vec![alpn.to_vec()]).connect(name, stream);
    let stream = tokio::time::timeout(OP_TIMEOUT, handshake).await??;
    ensure!(
        stream.get_ref().1.alpn_protocol() == Some(alpn),
        "the proxy did not choose {} by ALPN",
        String::from_utf8_lossy(alpn)
    );
    Ok(stream)
}

impl Proxy {
    /// A proxy with a plain listener and a TLS one (`listen_tls`; `[tls]` with the
    /// certificate in `certs`): plain HTTP to `origin`, CONNECT to `sink`, its JSON access
    /// log in `access`. The address of its TLS listener with it.
    fn start_tls(
        binary: &Path,
        dir: &Path,
        name: &str,
        (origin, sink): (SocketAddr, SocketAddr),
        access: &Path,
        certs: &Path,
    ) -> anyhow::Result<(Proxy, SocketAddr)> {
        let (addr, tls) = (free_port()?, free_port()?);
        // `listen_tls` is a key of the file's top level: before the tables.
        let config = format!(
            "listen_tls = [\"{tls}\"]\n{}[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            Proxy::config(addr, &[origin], sink, access, None),
            certs.join("proxy.pem").display(),
            certs.join("proxy.key").display(),
        );
        let mut proxy = Proxy::launch(binary, dir, name, addr, &config)?;
        let said = dir.join(format!("{name}.stderr"));
        wait_until_listening(&mut proxy.child, "the proxy's TLS listener", tls, &[&said])?;
        Ok((proxy, tls))
    }
}

/// Checks the TLS listener before anything is measured: a GET /1k over HTTP/1.1 over TLS,
/// and a tunnel over HTTP/2 with 100 kB through it. What TLS the proxy chose.
async fn tls_preflight(
    tls_addr: SocketAddr,
    client: &'static TlsConnector,
    origin: SocketAddr,
    sink: SocketAddr,
) -> anyhow::Result<String> {
    let probe = tls_to_proxy(client, connect_from(None, tls_addr).await?, b"h2")
        .await
        .context("preflight: TLS to the proxy")?;
    let session = probe.get_ref().1;
    let chose = format!(
        "{:?}, {:?}",
        session.protocol_version().context("no TLS version")?,
        session
            .negotiated_cipher_suite()
            .context("no cipher suite")?
            .suite()
    );
    drop(probe);

    let via = Via::ProxyTls(tls_addr, client);
    let target = Target::new(origin, "/1k", 1024);
    let (mut sender, conn) = open(target.connect_to(via)).await?;
    let driver = tokio::spawn(conn);
    exchange(&mut sender, target.request(via, false), target.size)
        .await
        .context("preflight: GET /1k over HTTP/1.1 over TLS")?;
    drop(sender);
    let _ = driver.await;

    let (sender, driver) = open_h2(tls_addr, client).await?;
    let mut tunnel = h2_tunnel(Some(sender), sink.to_string())
        .await
        .context("preflight: CONNECT over HTTP/2")?;
    download(&mut tunnel, 100_000)
        .await
        .context("preflight: 100 kB through a tunnel over HTTP/2")?;
    drop(tunnel);
    driver.abort();
    eprintln!("preflight: PASS (GET 1k over TLS, CONNECT over HTTP/2 + 100 kB; {chose})");
    Ok(chose)
}

/// An HTTP/2 connection over TLS to the proxy's TLS listener (ALPN `h2` alone); its driver
/// runs as a task until the connection ends or the handle is aborted.
async fn open_h2(
    tls_addr: SocketAddr,
    client: &TlsConnector,
) -> anyhow::Result<(H2Sender, tokio::task::JoinHandle<()>)> {
    let stream = tls_to_proxy(client, connect_from(None, tls_addr).await?, b"h2").await?;
    let handshake = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    );
    let (sender, conn) = tokio::time::timeout(OP_TIMEOUT, handshake).await??;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, driver))
}

/// A CONNECT tunnel to `authority` as a stream of the HTTP/2 connection of `sender` (RFC 9113
/// §8.5); none when there is no connection for it.
async fn h2_tunnel(
    sender: Option<H2Sender>,
    authority: String,
) -> anyhow::Result<TokioIo<hyper::upgrade::Upgraded>> {
    let mut sender = sender.context("no HTTP/2 connection has room for another stream")?;
    let open = async {
        sender.ready().await?;
        let mut req = Request::new(Empty::new());
        *req.method_mut() = http::Method::CONNECT;
        *req.uri_mut() = authority.parse()?;
        let response = sender.send_request(req).await?;
        ensure!(
            response.status() == StatusCode::OK,
            "CONNECT over HTTP/2 answered {}",
            response.status()
        );
        Ok(TokioIo::new(hyper::upgrade::on(response).await?))
    };
    tokio::time::timeout(OP_TIMEOUT, open).await?
}

/// D over HTTP/2: after the proxy's RSS at rest, enough TLS connections to its TLS listener
/// (ALPN `h2`) for D's last step at [`H2_STREAMS`] streams each, and the RSS with them alone;
/// then D's steps, each tunnel a CONNECT stream, the connections filled one after another.
async fn idle_h2_tunnels(
    proxy: &Proxy,
    tls_addr: SocketAddr,
    client: &TlsConnector,
    sink: SocketAddr,
    steps: &[usize],
) -> anyhow::Result<H2Tunnels> {
    match open_h2(tls_addr, client).await {
        Ok((sender, driver)) => {
            warm_up(h2_tunnel(Some(sender), sink.to_string())).await;
            driver.abort();
        }
        Err(e) => eprintln!("D HTTP/2 warm-up: {e:#}"),
    }
    tokio::time::sleep(D_SETTLE).await;
    let rss0_kib = rss_kib(proxy.pid);
    let wanted = steps.last().copied().unwrap_or(0).div_ceil(H2_STREAMS);
    let (mut senders, mut drivers) = (Vec::new(), Vec::new());
    for _ in 0..wanted {
        let (sender, driver) = open_h2(tls_addr, client).await?;
        senders.push(sender);
        drivers.push(driver);
    }
    tokio::time::sleep(D_SETTLE).await;
    let conns = Step {
        n: wanted,
        ok: wanted,
        rss_kib: rss_kib(proxy.pid),
        threads: thread_count(proxy.pid),
    };
    eprintln!(
        "D HTTP/2  portcullis {wanted} TLS connections open, RSS {:.1} MiB",
        conns.rss_kib as f64 / 1024.0
    );
    let authority = sink.to_string();
    let mut next = 0;
    let tunnels = hold_tunnels(proxy.pid, rss0_kib, steps, "D HTTP/2", || {
        let sender = senders.get(next / H2_STREAMS).cloned();
        next += 1;
        h2_tunnel(sender, authority.clone())
    })
    .await;
    for driver in drivers {
        driver.abort();
    }
    Ok(H2Tunnels {
        tunnels: tunnels?,
        conns,
    })
}

/// The TLS shapes' tables: A through the TLS listener beside the plain one, D over HTTP/2
/// beside D over HTTP/1.1; each with its target, met or NOT MET.
fn print_tls(t: &Tls) {
    let rps: Figure = |l| Some(l.rps());
    let p50: Figure = |l| Some(l.percentile_ms(0.50));
    let p99: Figure = |l| Some(l.percentile_ms(0.99));
    let per_request: Figure = Load::cpu_us_per_request;
    println!();
    println!(
        "A over TLS: keep-alive GET /1k, {A_CONNS} connections, HTTP/1.1 over TLS to the \
         proxy's TLS listener ({}), plain HTTP to the origin, beside the same through the plain \
         listener of the same proxy: medians of {TLS_PAIRS} interleaved pairs (each run opens \
         its {A_CONNS} connections anew); ratio TLS ÷ plain",
        t.session
    );
    let mut table = Table::default();
    let rows: [(&str, Figure); 4] = [
        ("A keep-alive 1 KiB, 50 conns, req/s", rps),
        ("A p50, ms", p50),
        ("A p99, ms", p99),
        ("A proxy CPU per request, µs", per_request),
    ];
    table.medians(&rows, &t.a_plain, &t.a_tls);
    let cpu = ratios(&t.a_plain, &t.a_tls, per_request);
    let ratio = median(cpu.clone());
    table.ratio_row("A TLS ÷ plain, CPU per request (median of pairs)", ratio);
    table.print_headed(["figure", "plain", "TLS", "ratio"]);
    println!(
        "A over TLS target (proxy CPU per request over TLS ≤ {TLS_CPU_TARGET}× over the plain \
         listener): {} by pair, median {}: {}",
        listed(&cpu),
        ratio.map_or("—".to_owned(), |r| format!("{r:.2}×")),
        verdict(ratio.is_some_and(|r| r <= TLS_CPU_TARGET))
    );

    let h2: Vec<&Tunnels> = t.d_h2.iter().map(|d| &d.tunnels).collect();
    let plain: Vec<&Tunnels> = t.d_plain.iter().collect();
    let of = |rounds: &[&Tunnels], f: &dyn Fn(&Tunnels) -> Option<f64>| {
        median(rounds.iter().filter_map(|d| f(d)).collect())
    };
    let conns = t.d_h2.first().map_or(0, |d| d.conns.n);
    println!();
    println!(
        "D over HTTP/2: idle CONNECT tunnels as streams of {conns} TLS connections ({H2_STREAMS} \
         each at most), beside D over HTTP/1.1 (a plain connection a tunnel), each on a freshly \
         started proxy with both listeners: medians of {TLS_D_ROUNDS} rounds; ratio HTTP/2 ÷ \
         HTTP/1.1. Per tunnel = (RSS with the tunnels − RSS at start) ÷ tunnels held: over \
         HTTP/2 their connections' memory is in it."
    );
    let mut table = Table::default();
    table.row(
        "D proxy RSS at start, MiB",
        of(&plain, &|d| Some(d.rss0_kib as f64 / 1024.0)),
        of(&h2, &|d| Some(d.rss0_kib as f64 / 1024.0)),
    );
    table.row(
        &format!("D RSS with the {conns} TLS connections alone, no stream, MiB"),
        None,
        median(
            t.d_h2
                .iter()
                .map(|d| d.conns.rss_kib as f64 / 1024.0)
                .collect(),
        ),
    );
    let steps = t.d_h2.first().map_or(0, |d| d.tunnels.steps.len());
    let mut last = Vec::new();
    for i in 0..steps {
        let n = t.d_h2[0].tunnels.steps[i].n;
        let per = |d: &Tunnels| d.steps.get(i)?.kib_per_tunnel(d.rss0_kib);
        table.row(
            &format!("D RSS per idle tunnel at {}, KiB", thousands(n as f64)),
            of(&plain, &per),
            of(&h2, &per),
        );
        table.row(
            &format!(
                "D HTTP/2 RSS per stream at {}, beyond its connections, KiB",
                thousands(n as f64)
            ),
            None,
            median(
                t.d_h2
                    .iter()
                    .filter_map(|d| d.tunnels.steps.get(i)?.kib_per_tunnel(d.conns.rss_kib))
                    .collect(),
            ),
        );
        last = h2.iter().filter_map(|d| per(d)).collect();
    }
    let after: &dyn Fn(&Tunnels) -> Option<f64> = &|d| d.after_use.kib_per_tunnel(d.rss0_kib);
    table.row(
        "D RSS per tunnel after 1 byte through each, KiB",
        of(&plain, after),
        of(&h2, after),
    );
    table.print_headed(["figure", "HTTP/1.1", "HTTP/2", "ratio"]);
    let held = |rounds: &[&Tunnels]| -> String {
        let shown: Vec<String> = rounds
            .iter()
            .map(|d| {
                let kib = d.steps.last().and_then(|s| s.kib_per_tunnel(d.rss0_kib));
                format!(
                    "{} KiB a tunnel ({} held, {} failed, {} answered 1 byte)",
                    number(kib),
                    d.after_use.ok,
                    d.fails,
                    d.echo_ok
                )
            })
            .collect();
        shown.join("; ")
    };
    println!("D over HTTP/1.1 by round: {}", held(&plain));
    println!("D over HTTP/2 by round: {}", held(&h2));
    let kib = median(last.clone());
    println!(
        "D over HTTP/2 target (RSS growth per idle tunnel ≤ {H2_KIB_TARGET} KiB, its share of \
         the connections included, at the last step): {} KiB by round, median {}: {}",
        listed(&last),
        kib.map_or("—".to_owned(), |k| format!("{k:.2} KiB")),
        verdict(kib.is_some_and(|k| k <= H2_KIB_TARGET))
    );
    let a_errors: u64 = t.a_plain.iter().chain(&t.a_tls).map(|l| l.errors).sum();
    let d_fails: usize = plain.iter().chain(&h2).map(|d| d.fails).sum();
    if a_errors > 0 || d_fails > 0 {
        println!("WARNING: {a_errors} request errors in A and {d_fails} failed tunnels in D: the TLS figures are suspect.");
    }
}

/// "met" or "NOT MET".
fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT MET"
    }
}
