//! A LAN in a box: network namespaces built as root with `ip` (iproute2), one set per test.
//!
//! ```text
//!  PC 0  10.77.0.10   fd00:77::a  ─┐
//!  PC 1  10.77.0.11   fd00:77::b  ─┼─ bridge "lan" ─ GATEWAY ─ "wan" ─ INTERNET
//!  PC 2  10.77.0.12   fd00:77::c  ─┘   10.77.0.1           203.0.113.1  203.0.113.2
//!                                      fd00:77::1          2001:db8:1::1 2001:db8:1::2
//!                                      (the proxy)         (and ::3, .3) DNS 198.51.100.53
//!                                                                      servers 192.0.2.N,
//!                                                                      2001:db8:2::N
//! ```
//!
//! Nothing leaves this machine: no namespace has a default route, the gateway does not
//! forward (the PCs reach the internet only through the proxy), and the internet's addresses
//! are documentation ranges. [`BLACK_HOLE_V4`] and [`BLACK_HOLE_V6`] sit on the internet link
//! and belong to nobody: packets to them wait for ARP or neighbour discovery that never
//! completes (about 3 s, then "no route to host"), so they look like a silently dropping
//! network.
//!
//! The test process opens sockets inside a namespace with [`Ns::run`] (a thread that calls
//! setns(2) and ends); the sockets stay in their namespace, and the test's runtime serves
//! them ([`Ns::listen`], [`Ns::bind_udp`], [`Ns::connect`]). The proxy is the `portcullis`
//! binary, started in the gateway by [`Lan::start_proxy`] (`ip netns exec`, whose system
//! resolver asks the internet's DNS server); clients run in the PCs (curl with [`Ns::curl`],
//! or sockets from [`Pc::send`] and [`Pc::connect`]). Building a LAN, starting and reloading
//! the proxy block the calling thread for a moment: call them from a multi-thread runtime.
//!
//! [`Lan::build`] skips (with one line on stderr) when this is not root or `ip netns` does not
//! work, and panics instead when `CI=true`. Every namespace, and everything started in it, is
//! removed when the [`Lan`] drops, also when the test fails; the leftovers of a run that was
//! killed are removed by the next one.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::origin::Origin;
use super::raw::{exchange, read_answer, RawResponse};
use super::{run_bounded, BIN, WAIT};

/// The proxy's address on the LAN, and its port.
pub const PROXY_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const PROXY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 1);
pub const PROXY_PORT: u16 = 3128;
/// The proxy's admin listener, on the gateway's loopback.
pub const ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 3129);
/// The gateway's leg on the internet link, and the internet's.
pub const GATEWAY_WAN_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const GATEWAY_WAN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// Second addresses of the gateway on the internet link (for `upstream.bind`).
pub const GATEWAY_WAN2_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 3);
pub const GATEWAY_WAN2_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 3);
pub const INTERNET_WAN_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const INTERNET_WAN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
/// Addresses on the internet link that nobody owns.
pub const BLACK_HOLE_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 99);
pub const BLACK_HOLE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x99);
/// Where the internet's DNS server answers.
pub const DNS_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
/// The numbers `n` of the internet's server addresses [`server_v4`] and [`server_v6`].
pub const SERVERS: std::ops::RangeInclusive<u8> = 10..=19;

/// An IPv4 address of the internet's servers: `192.0.2.n`, `n` in [`SERVERS`].
pub fn server_v4(n: u8) -> Ipv4Addr {
    assert!(SERVERS.contains(&n), "server {n} is not configured");
    Ipv4Addr::new(192, 0, 2, n)
}

/// An IPv6 address of the internet's servers: `2001:db8:2::n` (hex), `n` in [`SERVERS`].
pub fn server_v6(n: u8) -> Ipv6Addr {
    assert!(SERVERS.contains(&n), "server {n} is not configured");
    Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, n.into())
}

/// Where the namespaces of this machine are named.
const NETNS_DIR: &str = "/var/run/netns";
/// Every namespace these tests make is named `PREFIX-PID-N-ROLE`.
const PREFIX: &str = "pclan";

/// A network namespace, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ns(String);

impl Ns {
    pub fn name(&self) -> &str {
        &self.0
    }

    /// Runs `f` on a thread that has moved into this namespace: the sockets it opens belong
    /// to the namespace, wherever they are used later.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = Path::new(NETNS_DIR).join(&self.0);
        std::thread::scope(|scope| {
            let thread = scope.spawn(|| {
                let file = File::open(&path)
                    .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap_or_else(|e| panic!("setns into {}: {e}", self.0));
                f()
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// A TCP listener on `addr` in this namespace. Must be called within a tokio runtime.
    pub fn listen(&self, addr: SocketAddr) -> TcpListener {
        let std = self.run(|| std::net::TcpListener::bind(addr));
        let std = std.unwrap_or_else(|e| panic!("listen on {addr} in {}: {e}", self.0));
        std.set_nonblocking(true).unwrap();
        TcpListener::from_std(std).unwrap()
    }

    /// A UDP socket on `addr` in this namespace.
    pub fn bind_udp(&self, addr: SocketAddr) -> std::net::UdpSocket {
        self.run(|| std::net::UdpSocket::bind(addr))
            .unwrap_or_else(|e| panic!("bind UDP {addr} in {}: {e}", self.0))
    }

    /// A TCP connection from this namespace to `to`, made within `WAIT`.
    pub async fn connect(&self, to: SocketAddr) -> TcpStream {
        let ns = self.clone();
        let std = tokio::task::spawn_blocking(move || {
            ns.run(|| std::net::TcpStream::connect_timeout(&to, WAIT))
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("connect to {to} from {}: {e}", self.0));
        std.set_nonblocking(true).unwrap();
        TcpStream::from_std(std).unwrap()
    }

    /// `program` to be run inside this namespace (`ip netns exec`), with the proxy
    /// variables of this environment removed.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.0, program]);
        for var in [
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "no_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "NO_PROXY",
        ] {
            command.env_remove(var);
        }
        command
    }

    /// Runs curl in this namespace with `args` (after `--silent --show-error --max-time 10
    /// --write-out '\n%{http_code}'`), killing it after 15 s. (The command is made at once,
    /// so the future borrows nothing.)
    pub fn curl(&self, args: &[&str]) -> impl std::future::Future<Output = Curl> + 'static {
        let mut command = self.command("curl");
        command
            .args(["--silent", "--show-error", "--max-time", "10"])
            .args(["--write-out", "\n%{http_code}"])
            .args(args);
        let shown = format!("curl {}", args.join(" "));
        async move {
            let (output, killed) = tokio::task::spawn_blocking(move || {
                run_bounded(command, Vec::new(), Duration::from_secs(15))
            })
            .await
            .unwrap();
            assert!(!killed, "{shown} did not finish within 15 s");
            Curl::of(output)
        }
    }
}

/// What curl printed: the body, the status (0 when there was none) and its errors.
#[derive(Debug)]
pub struct Curl {
    pub body: Vec<u8>,
    pub code: u16,
    pub stderr: String,
}

impl Curl {
    fn of(output: Output) -> Curl {
        let mut body = output.stdout;
        let split = body.iter().rposition(|&b| b == b'\n').unwrap_or(0);
        let code = String::from_utf8_lossy(&body[split..])
            .trim()
            .parse()
            .unwrap_or(0);
        body.truncate(split);
        Curl {
            body,
            code,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A PC on the LAN.
#[derive(Debug, Clone)]
pub struct Pc {
    pub ns: Ns,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

impl Pc {
    /// The address of PC `i`: `10.77.0.(10 + i)` and `fd00:77::(10 + i)`.
    pub fn addresses(i: usize) -> (Ipv4Addr, Ipv6Addr) {
        let host = 10 + i as u8;
        (
            Ipv4Addr::new(10, 77, 0, host),
            Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, host.into()),
        )
    }

    /// Sends `request` to the proxy (its IPv4 address) on a new connection from this PC and
    /// reads one response.
    pub async fn send(&self, request: &str) -> RawResponse {
        let mut stream = self.ns.connect(proxy_v4()).await;
        exchange(&mut stream, request).await
    }

    /// Sends `CONNECT authority` to the proxy (its IPv4 address) from this PC: the answer,
    /// the stream, and the tunnel's bytes that came in the same reads as a 200 (a server that
    /// speaks first may be that quick).
    pub async fn connect(&self, authority: &str) -> (RawResponse, TcpStream, Vec<u8>) {
        let mut stream = self.ns.connect(proxy_v4()).await;
        let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut early = Vec::new();
        let answer = read_answer(&mut stream, &mut early, request.as_bytes())
            .await
            .unwrap_or_else(|| panic!("no answer to CONNECT {authority}"));
        (answer, stream, early)
    }
}

/// The proxy's listener on its IPv4 LAN address.
pub fn proxy_v4() -> SocketAddr {
    SocketAddr::new(PROXY_V4.into(), PROXY_PORT)
}

/// The proxy's listener on its IPv6 LAN address.
pub fn proxy_v6() -> SocketAddr {
    SocketAddr::new(PROXY_V6.into(), PROXY_PORT)
}

/// The namespaces of one test; all removed on drop.
pub struct Lan {
    pub internet: Ns,
    pub gateway: Ns,
    pub pcs: Vec<Pc>,
    /// Every namespace made so far (for the clean-up).
    made: Vec<Ns>,
    /// A directory for configuration files and logs.
    pub dir: tempfile::TempDir,
}

impl Lan {
    /// Builds the internet, the gateway and `pcs` PCs (at most 10). `None` (after one line on
    /// stderr) when namespaces cannot be made here and `CI` is not `true`.
    pub fn build(pcs: usize) -> Option<Lan> {
        assert!(pcs <= 10, "at most 10 PCs");
        if let Err(why) = available() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but the LAN tests cannot run: {why}"
            );
            eprintln!("skipped: {why}");
            return None;
        }
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let tag = format!(
            "{PREFIX}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let ns = |role: &str| Ns(format!("{tag}-{role}"));
        let mut lan = Lan {
            internet: ns("inet"),
            gateway: ns("gw"),
            pcs: (0..pcs)
                .map(|i| {
                    let (v4, v6) = Pc::addresses(i);
                    Pc {
                        ns: ns(&format!("pc{i}")),
                        v4,
                        v6,
                    }
                })
                .collect(),
            made: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        let all: Vec<Ns> = [lan.internet.clone(), lan.gateway.clone()]
            .into_iter()
            .chain(lan.pcs.iter().map(|p| p.ns.clone()))
            .collect();
        for ns in &all {
            remove(ns);
            ip(&["netns", "add", ns.name()]);
            lan.made.push(ns.clone());
        }
        let gw = lan.gateway.name();
        veth(("wan", &lan.gateway), ("wan", &lan.internet));
        ip(&["-n", gw, "link", "add", "lan", "type", "bridge"]);
        let mut gateway = vec![
            "link set lo up".to_owned(),
            "link set wan up".to_owned(),
            "link set lan up".to_owned(),
            format!("addr add {PROXY_V4}/24 dev lan"),
            format!("addr add {PROXY_V6}/64 dev lan nodad"),
            format!("addr add {GATEWAY_WAN_V4}/24 dev wan"),
            format!("addr add {GATEWAY_WAN_V6}/64 dev wan nodad"),
            format!("addr add {GATEWAY_WAN2_V4}/24 dev wan"),
            format!("addr add {GATEWAY_WAN2_V6}/64 dev wan nodad"),
            // The internet's networks are reached through its leg; there is no default route.
            format!("route add 192.0.2.0/24 via {INTERNET_WAN_V4}"),
            format!("route add 198.51.100.0/24 via {INTERNET_WAN_V4}"),
            format!("route add 2001:db8::/32 via {INTERNET_WAN_V6}"),
        ];
        for (i, pc) in lan.pcs.iter().enumerate() {
            let port = format!("p{i}");
            veth((&port, &lan.gateway), ("eth0", &pc.ns));
            gateway.push(format!("link set {port} master lan"));
            gateway.push(format!("link set {port} up"));
            batch(
                &pc.ns,
                &[
                    "link set lo up".to_owned(),
                    "link set eth0 up".to_owned(),
                    format!("addr add {}/24 dev eth0", pc.v4),
                    format!("addr add {}/64 dev eth0 nodad", pc.v6),
                ],
            );
        }
        batch(&lan.gateway, &gateway);
        let mut internet = vec![
            "link set lo up".to_owned(),
            "link set wan up".to_owned(),
            format!("addr add {INTERNET_WAN_V4}/24 dev wan"),
            format!("addr add {INTERNET_WAN_V6}/64 dev wan nodad"),
            format!("addr add {DNS_V4}/32 dev lo"),
        ];
        for n in SERVERS {
            internet.push(format!("addr add {}/32 dev lo", server_v4(n)));
            internet.push(format!("addr add {}/128 dev lo nodad", server_v6(n)));
        }
        batch(&lan.internet, &internet);
        // The gateway is no router: the PCs reach the internet through the proxy only.
        // (/proc/sys/net shows the namespace of the thread that opens it.)
        lan.gateway.run(|| {
            for knob in ["ipv4/ip_forward", "ipv6/conf/all/forwarding"] {
                let path = format!("/proc/sys/net/{knob}");
                std::fs::write(&path, "0").unwrap_or_else(|e| panic!("write {path}: {e}"));
            }
        });
        // `ip netns exec` mounts the files of /etc/netns/NAME over /etc: the system resolver
        // of processes started in the gateway asks the internet's DNS server. Its timeout is
        // longer than any test's connect timeout, so a name never answered meets the latter.
        let etc = etc_dir(&lan.gateway);
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("resolv.conf"),
            format!("nameserver {DNS_V4}\noptions timeout:5 attempts:1\n"),
        )
        .unwrap();
        Some(lan)
    }

    /// Starts the `portcullis` binary in the gateway with `config` (written to
    /// `dir/portcullis.toml`) and waits until it listens on the proxy's IPv4 address (and on
    /// the admin address when `config` has no `[admin]` table).
    pub fn start_proxy(&self, config: &str) -> Portcullis {
        let path = self.dir.path().join("portcullis.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = self
            .gateway
            .command(BIN)
            .arg("--config")
            .arg(&path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            // The access log goes to a file in these tests' configurations.
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("ip netns exec {BIN} starts: {e}"));
        let running = Portcullis {
            stderr: collect(child.stderr.take().unwrap()),
            child: Mutex::new(child),
            config: path,
            gateway: self.gateway.clone(),
        };
        running.wait_stderr(&format!("addr={}", proxy_v4()), 0);
        if !config.contains("[admin]") {
            running.wait_stderr("admin listening", 0);
        }
        running
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            remove(ns);
        }
    }
}

/// The proxy binary running in the gateway; killed on drop (its stderr is printed then when
/// the test failed).
pub struct Portcullis {
    child: Mutex<Child>,
    stderr: Arc<Mutex<Vec<String>>>,
    config: PathBuf,
    gateway: Ns,
}

impl Portcullis {
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// Fails the test when the proxy has exited.
    fn assert_running(&self) {
        if let Ok(Some(status)) = self.child.lock().unwrap().try_wait() {
            // Its last words may still be on their way through the pipe.
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "the proxy exited ({status}); stderr:\n{}",
                self.stderr().join("\n")
            );
        }
    }

    /// The lines of stderr (diagnostics) so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits up to `WAIT` for a line of stderr, from line `from` on, that contains `needle`.
    pub fn wait_stderr(&self, needle: &str, from: usize) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self.stderr().iter().skip(from).find(|l| l.contains(needle)) {
                return line.clone();
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "the proxy wrote no line with {needle:?} within {WAIT:?}; stderr:\n{}",
                self.stderr().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends a signal (`HUP`, `TERM` …) to the proxy.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} {}", self.pid());
    }

    /// Rewrites the gateway's `/etc/resolv.conf` (the file `ip netns exec` mounts there, written
    /// in place so the mount shows the new text).
    pub fn set_resolv_conf(&self, text: &str) {
        std::fs::write(etc_dir(&self.gateway).join("resolv.conf"), text).unwrap();
    }

    /// Rewrites the configuration file with `config`, sends SIGHUP and waits until the proxy
    /// says it reloaded; fails the test when it says the reload failed.
    pub fn reload(&self, config: &str) {
        std::fs::write(&self.config, config).unwrap();
        let from = self.stderr().len();
        self.signal("HUP");
        let deadline = Instant::now() + WAIT;
        loop {
            let lines = self.stderr();
            let new = &lines[from.min(lines.len())..];
            if new.iter().any(|l| l.contains("configuration reloaded")) {
                return;
            }
            assert!(
                !new.iter().any(|l| l.contains("reload failed")),
                "the reload failed:\n{}",
                new.join("\n")
            );
            self.assert_running();
            assert!(Instant::now() < deadline, "no reload within {WAIT:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `GET path` on the admin listener (from the gateway's loopback).
    pub async fn admin(&self, path: &str) -> RawResponse {
        let mut stream = self.gateway.connect(ADMIN).await;
        exchange(
            &mut stream,
            format!("GET {path} HTTP/1.1\r\nHost: {ADMIN}\r\nConnection: close\r\n\r\n"),
        )
        .await
    }
}

impl Drop for Portcullis {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
        if std::thread::panicking() {
            eprintln!("the proxy's stderr:\n{}", self.stderr().join("\n"));
        }
    }
}

/// Collects the lines of `stream` as they come.
fn collect(stream: impl Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// A server in the internet that greets each connection with `banner` (SMTP's `220 …`,
/// POP3's `+OK …`; nothing for NetBIOS, where the client speaks first), then answers each
/// read with `reply`, until the client closes or `WAIT` passes.
pub fn banner_origin(listener: TcpListener, banner: &'static [u8], reply: &'static [u8]) -> Origin {
    Origin::serve_on(listener, move |mut stream| async move {
        if stream.write_all(banner).await.is_err() {
            return;
        }
        let mut buf = [0u8; 1024];
        for _ in 0..100 {
            match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {
                    if stream.write_all(reply).await.is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    })
}

/// Why namespaces cannot be made here, checked once per process; the first check also
/// removes what earlier runs that were killed left.
fn available() -> Result<(), String> {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let euid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_owned));
            if euid.as_deref() != Some("0") {
                return Err("the LAN tests need root (network namespaces)".into());
            }
            remove_leftovers();
            let probe = Ns(format!("{PREFIX}-{}-probe", std::process::id()));
            let made = Command::new("ip")
                .args(["netns", "add", probe.name()])
                .output()
                .map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
            if !made.status.success() {
                return Err(format!(
                    "ip netns add fails: {}",
                    String::from_utf8_lossy(&made.stderr).trim()
                ));
            }
            remove(&probe);
            Ok(())
        })
        .clone()
}

/// Removes the namespaces (and their processes and /etc/netns files) of earlier runs of
/// these tests whose process is gone.
fn remove_leftovers() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten().take(10_000) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(&format!("{PREFIX}-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            remove(&Ns(name));
        }
    }
}

/// Kills the processes in `ns` (started by these tests), deletes it and its /etc/netns
/// directory; quietly does nothing for what does not exist.
fn remove(ns: &Ns) {
    if let Ok(out) = Command::new("ip")
        .args(["netns", "pids", ns.name()])
        .output()
    {
        let me = std::process::id().to_string();
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if pid != me {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "delete", ns.name()])
        .stderr(Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(etc_dir(ns));
}

/// The directory whose files `ip netns exec` mounts over /etc for `ns`.
fn etc_dir(ns: &Ns) -> PathBuf {
    Path::new("/etc/netns").join(ns.name())
}

/// Runs `ip ARGS`; fails the test when it fails.
fn ip(args: &[&str]) {
    let mut command = Command::new("ip");
    command.args(args);
    run(&mut command);
}

/// A veth pair, each end made in its namespace (so their names are private to it).
fn veth(a: (&str, &Ns), b: (&str, &Ns)) {
    ip(&[
        "link",
        "add",
        a.0,
        "netns",
        a.1.name(),
        "type",
        "veth",
        "peer",
        "name",
        b.0,
        "netns",
        b.1.name(),
    ]);
}

/// Runs `commands` with `ip -n NS -batch -`, one process for all.
fn batch(ns: &Ns, commands: &[String]) {
    let mut command = Command::new("ip");
    command.args(["-n", ns.name(), "-batch", "-"]);
    let (output, killed) = run_bounded(command, commands.join("\n").into_bytes(), WAIT);
    assert!(
        !killed && output.status.success(),
        "ip -n {} -batch failed: {}\n{}",
        ns.name(),
        String::from_utf8_lossy(&output.stderr),
        commands.join("\n")
    );
}

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?} starts: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
