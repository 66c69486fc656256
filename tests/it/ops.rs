//! Operations commands as a user runs them: `portcullis check` (exit codes, FILE:LINE:COLUMN
//! errors, each lint warning), `portcullis explain` (a table of cases through the binary, and
//! the same questions asked of a live proxy: both must agree), completions and the man page.
//!
//! Only loopback addresses; `--resolve` is only ever used on `localhost`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;
use portcullis::observe::access::Verdict as RecordVerdict;
use portcullis::ops::explain::{explain, Lookups, Question, Resolver, Verdict};
use portcullis::Settings;

/// Runs the binary; its exit code, stdout and stderr.
fn run(args: &[&str]) -> (i32, String, String) {
    let out = portcullis(args, Vec::new());
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.stderr,
    )
}

/// A directory of configuration files for one test.
struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Files {
        Files(tempfile::tempdir().unwrap())
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// An htpasswd file with `users` (password "secret", bcrypt at the lowest cost).
    fn htpasswd(&self, users: &[&str]) -> PathBuf {
        let users: Vec<(&str, &str)> = users.iter().map(|u| (*u, "secret")).collect();
        htpasswd(self.0.path(), &users)
    }
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn check_exit_codes_and_locations() {
    let files = Files::new();
    let good = files.write(
        "good.toml",
        "listen = [\"127.0.0.1:3128\"]\n[ports]\nhttp = [80]\nconnect = [\"https\"]\n[destinations]\nallow_loopback = true\n",
    );
    let (code, out, err) = run(&["check", "--config", s(&good)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with(&format!("{}: valid configuration", s(&good))),
        "{out}"
    );
    assert!(out.contains("ports.connect  443 (https)\n"), "{out}");
    assert!(out.contains("loopback allowed"), "{out}");
    assert!(out.contains("warnings: none"), "{out}");
    assert!(err.is_empty(), "{err}");
    let (code, out, _) = run(&["check", "--strict", "--config", s(&good)]);
    assert_eq!(code, 0, "{out}");

    // No --config: the built-in defaults, which draw no warning.
    let (code, out, _) = run(&["check", "--strict"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("<built-in defaults>: valid configuration"),
        "{out}"
    );

    // A validation problem, placed at its line and column, with a hint.
    let bad = files.write(
        "bad.toml",
        "listen = [\"127.0.0.1:1\"]\n[ports]\nhttp = [80]\nconnect = [\"no-such-service\"]\n",
    );
    let (code, out, err) = run(&["check", "--config", s(&bad)]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.starts_with(&format!(
            "{}:4:12: ports.connect: entry \"no-such-service\": unknown service name",
            s(&bad)
        )),
        "{err}"
    );
    assert!(err.contains("  hint: "), "{err}");

    let typo = files.write("typo.toml", "[ports]\nconnect = [\"https\", \"imapz\"]\n");
    let (code, _, err) = run(&["check", "--config", s(&typo)]);
    assert_eq!(code, 1);
    assert!(err.starts_with(&format!("{}:2:21: ", s(&typo))), "{err}");
    assert!(err.contains("did you mean \"imap\""), "{err}");

    // Problems in rules, at their rule's line.
    let rules = files.write(
        "rules.toml",
        "[[rules]]\nname = \"a\"\naction = \"allow\"\n\n[[rules]]\nname = \"b\"\nmethods = [\"GET\", \"G_T\"]\naction = \"deny\"\n",
    );
    let (code, _, err) = run(&["check", "--config", s(&rules)]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with(&format!(
            "{}:7:19: rules[2] \"b\": methods: \"G_T\" is not a method name",
            s(&rules)
        )),
        "{err}"
    );

    // A parse error: toml's line and column, and what was expected.
    let parse = files.write("parse.toml", "[ports]\nhttp = [80\nconnect = 5\n");
    let (code, _, err) = run(&["check", "--config", s(&parse)]);
    assert_eq!(code, 1);
    assert!(err.starts_with(&format!("{}:3:1: ", s(&parse))), "{err}");
    assert!(err.contains("expected `,`"), "{err}");
    let unknown = files.write("unknown.toml", "[ports]\nhtp = [80]\n");
    let (code, _, err) = run(&["check", "--config", s(&unknown)]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with(&format!(
            "{}:2:1: unknown field `htp`, expected `http` or `connect`",
            s(&unknown)
        )),
        "{err}"
    );

    // A file that cannot be read.
    let missing = files.0.path().join("missing.toml");
    let (code, _, err) = run(&["check", "--config", s(&missing)]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read"), "{err}");

    // An open proxy: valid, so 0, but 2 under --strict.
    let open = files.write(
        "open.toml",
        "listen = [\"0.0.0.0:3128\"]\n[clients]\nallow = [\"0.0.0.0/0\", \"::/0\"]\n",
    );
    let (code, out, _) = run(&["check", "--config", s(&open)]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = run(&["check", "--strict", "--config", s(&open)]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("warning: open proxy"), "{out}");
}

#[test]
fn check_prints_every_lint_warning() {
    let files = Files::new();
    files.htpasswd(&["alice"]);
    let cases: &[(&str, &str)] = &[
        (
            "[clients]\nallow = [\"0.0.0.0/0\"]\n",
            "warning: open proxy: listening on 0.0.0.0:3128",
        ),
        (
            "[ports]\nconnect = [\"https\", \"smtp\"]\n",
            "warning: SMTP (port 25) is reachable through CONNECT (ports.connect)",
        ),
        (
            "[[rules]]\nname = \"wide\"\nhosts = [\".example.com\"]\naction = \"deny\"\n\
             [[rules]]\nname = \"narrow\"\nhosts = [\"www.example.com\"]\nports = [80]\naction = \"allow\"\n",
            "warning: rule \"narrow\" can never match: rule \"wide\" before it matches every request it would",
        ),
        (
            "[[rules]]\nname = \"everything\"\naction = \"deny\"\n\
             [[rules]]\nname = \"later\"\nports = [80]\naction = \"allow\"\n",
            "warning: rule \"everything\" has no conditions, so it matches every request",
        ),
        (
            "[auth]\nhtpasswd = \"users.htpasswd\"\n\
             [[rules]]\nname = \"bob may ssh\"\nusers = [\"bob\"]\nports = [\"ssh\"]\naction = \"allow\"\n",
            "warning: rule \"bob may ssh\" names user \"bob\", who is not in the htpasswd file",
        ),
    ];
    for (i, (text, warning)) in cases.iter().enumerate() {
        let path = files.write(&format!("lint{i}.toml"), text);
        let (code, out, err) = run(&["check", "--config", s(&path)]);
        assert_eq!(code, 0, "{text}\n{out}{err}");
        assert!(out.contains(warning), "{warning:?} in\n{out}");
        let (code, _, _) = run(&["check", "--strict", "--config", s(&path)]);
        assert_eq!(code, 2, "{text}");
    }
    // The summary names the rules and their actions, and parents without their credentials.
    let path = files.write(
        "summary.toml",
        "[auth]\nhtpasswd = \"users.htpasswd\"\n\
         [[rules]]\nname = \"alice may ssh\"\nusers = [\"alice\"]\nports = [\"ssh\"]\nmethods = [\"CONNECT\"]\naction = \"allow\"\n\
         [upstream]\nproxy = \"http://carol:hunter2@127.0.0.1:8080\"\n",
    );
    let (code, out, _) = run(&["check", "--config", s(&path)]);
    assert_eq!(code, 0, "{out}");
    for fragment in [
        "auth           on: 1 user in users.htpasswd",
        "1. \"alice may ssh\" allow: users alice; ports 22 (ssh); methods CONNECT",
        "upstream       parents 127.0.0.1:8080 (with credentials)",
    ] {
        assert!(out.contains(fragment), "{fragment:?} in\n{out}");
    }
    assert!(!out.contains("hunter2"), "{out}");
}

#[test]
fn explain_through_the_binary() {
    let files = Files::new();
    files.htpasswd(&["alice"]);
    let plain = files.write(
        "plain.toml",
        "listen = [\"127.0.0.1:3128\"]\n[ports]\nhttp = [80, 8080]\nconnect = [\"https\"]\n\
         [[rules]]\nname = \"office only\"\nhosts = [\"10.0.0.0/8\"]\nports = [8080]\naction = \"deny\"\n\
         [[rules]]\nname = \"lan may ssh\"\nclients = [\"192.168.1.0/24\"]\nports = [\"ssh\"]\nmethods = [\"CONNECT\"]\naction = \"allow\"\n",
    );
    let auth = files.write(
        "auth.toml",
        "listen = [\"127.0.0.1:3128\"]\n[auth]\nhtpasswd = \"users.htpasswd\"\n",
    );
    let loopback = files.write(
        "loopback.toml",
        "listen = [\"127.0.0.1:3128\"]\n[destinations]\nallow_loopback = true\n[ports]\nconnect = [\"https\", 3128]\n",
    );
    // CONFIG | CLIENT [OPTIONS] METHOD TARGET | EXIT CODE | the answer's first line starts with
    let cases = [
        // The port lists.
        "plain | 192.168.1.20 CONNECT example.com:25 | 1 | denied by ports.connect: port 25 (smtp) is not allowed for CONNECT",
        "plain | 192.168.1.20 CONNECT example.com:443 | 0 | allowed by ports.connect",
        "plain | 192.168.1.20 GET http://example.com/ | 0 | allowed by ports.http",
        "plain | 192.168.1.20 GET http://example.com:81/ | 1 | denied by ports.http: port 81 is not allowed for plain HTTP",
        // A rule, by name.
        "plain | 192.168.1.20 CONNECT git.example:22 | 0 | allowed by rule \"lan may ssh\"",
        "plain | 192.168.1.20 GET http://10.1.2.3:8080/ | 1 | denied by rule \"office only\": plain HTTP to 10.1.2.3 port 8080 (http-alt) is not allowed",
        // A client not allowed.
        "plain | 8.8.8.8 CONNECT example.com:443 | 1 | denied by clients.allow: client 8.8.8.8 is not allowed to use this proxy",
        // Log-in.
        "auth | 192.168.1.20 CONNECT example.com:443 | 1 | denied by auth: needs a log-in (407, auth)",
        "auth | 192.168.1.20 --user alice CONNECT example.com:443 | 0 | allowed by ports.connect",
        "auth | 192.168.1.20 --user bob CONNECT example.com:443 | 1 | denied by auth: wrong user name or password",
        // IP literals meet the destination guards.
        "plain | 192.168.1.20 CONNECT 127.0.0.1:443 | 1 | denied by destinations.loopback: 127.0.0.1 is a loopback address",
        "loopback | 192.168.1.20 CONNECT 127.0.0.1:443 | 0 | allowed by ports.connect",
        "loopback | 192.168.1.20 CONNECT 127.0.0.1:3128 | 1 | denied by destinations.self",
        // A rule that needs the address, without --resolve.
        "plain | 192.168.1.20 GET http://intranet.example:8080/ | 3 | undecided: rule \"office only\" needs the address intranet.example resolves to; run again with --resolve",
        // --resolve, on localhost only.
        "plain | 192.168.1.20 --resolve CONNECT localhost:443 | 1 | denied by destinations.loopback: localhost (",
        "loopback | 192.168.1.20 --resolve CONNECT localhost:443 | 0 | allowed by ports.connect",
        "plain | 192.168.1.20 --resolve GET http://localhost:8080/ | 1 | denied by destinations.loopback",
        // The proxy's own pages, and what it does not serve.
        "plain | 192.168.1.20 GET http://127.0.0.1:3128/proxy.pac | 0 | allowed by local",
        "plain | 192.168.1.20 GET https://example.com/ | 1 | denied by request: https:// URLs are not fetched by the proxy",
    ];
    for row in cases {
        let [config, request, want_code, want] = row.split(" | ").collect::<Vec<_>>()[..] else {
            panic!("bad row {row:?}");
        };
        let config = match config {
            "plain" => &plain,
            "auth" => &auth,
            _ => &loopback,
        };
        let mut request = request.split_whitespace();
        let client = request.next().unwrap();
        let mut args = vec!["explain", "--config", s(config), "--client", client];
        args.extend(request);
        let (code, out, err) = run(&args);
        assert_eq!(code.to_string(), want_code, "{args:?}\n{out}{err}");
        assert!(out.starts_with(want), "{args:?}: want {want:?}\n{out}{err}");
        assert!(out.contains("the client gets: "), "{out}");
    }
    // The resolved addresses are listed one by one.
    let (_, out, _) = run(&[
        "explain",
        "--config",
        s(&plain),
        "--client",
        "192.168.1.20",
        "--resolve",
        "CONNECT",
        "localhost:443",
    ]);
    assert!(
        out.contains("address 127.0.0.1: denied by destinations.loopback"),
        "{out}"
    );

    // Usage and configuration errors: exit 2.
    let broken = files.write("broken.toml", "[ports]\nconnect = [\"nope\"]\n");
    for args in [
        &[
            "explain",
            "--config",
            s(&broken),
            "--client",
            "192.168.1.20",
            "CONNECT",
            "example.com:443",
        ][..],
        &[
            "explain",
            "--client",
            "192.168.1.20",
            "GE(T",
            "http://example.com/",
        ],
        &[
            "explain",
            "--client",
            "192.168.1.20",
            "GET",
            "http://exa mple.com/",
        ],
        &[
            "explain",
            "--client",
            "not-an-ip",
            "GET",
            "http://example.com/",
        ],
        &["explain", "GET", "http://example.com/"],
    ] {
        let (code, out, err) = run(args);
        assert_eq!(code, 2, "{args:?}\n{out}{err}");
    }
}

#[test]
fn completions_and_man_page() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let (code, out, err) = run(&["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.len() > 500, "{shell}: {out}");
        assert!(out.contains("portcullis"), "{shell}");
        assert!(out.contains("explain"), "{shell}");
    }
    let (code, out, _) = run(&["man"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(".ie") || out.contains(".TH portcullis 1"),
        "{out}"
    );
    for fragment in ["check", "explain", "completions", "\\-\\-config"] {
        assert!(out.contains(fragment), "{fragment} in\n{out}");
    }
    let (code, out, _) = run(&["man", "explain"]);
    assert_eq!(code, 0);
    assert!(out.contains(".TH portcullis-explain 1"), "{out}");
    assert!(out.contains("\\-\\-resolve"), "{out}");
    let (code, _, err) = run(&["man", "nope"]);
    assert_eq!(code, 2);
    assert!(err.contains("check"), "{err}");
    assert!(err.contains("portcullis.toml"), "{err}");
}

/// portcullis.toml(5) is printed beside the generated pages, and has a section for every
/// table and a line for every key of the documented example file (which equals the defaults).
#[test]
fn the_configuration_file_has_its_man_page() {
    let (code, page, err) = run(&["man", "portcullis.toml"]);
    assert_eq!(code, 0, "{err}");
    assert!(page.contains(".TH PORTCULLIS.TOML 5"), "{page}");
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/portcullis.toml"),
    )
    .unwrap();
    let mut table = String::new();
    for line in example.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = name.to_owned();
            assert!(
                page.contains(&format!(".SH [{name}]")),
                "no section [{name}]"
            );
        } else if let Some((key, _)) = line.split_once(" = ") {
            let key = key.trim();
            assert!(
                page.contains(key.replace('_', "\\_").as_str()) || page.contains(key),
                "[{table}] {key} is not in portcullis.toml(5)"
            );
        }
    }
}

/// Sends `request` from `client` (an address of 127.0.0.0/8) to the proxy and returns the
/// status of its answer; the connection is then dropped.
async fn status_from(client: IpAddr, proxy: SocketAddr, request: &str) -> u16 {
    let mut stream = connect_from(&client.to_string(), proxy).await;
    exchange(&mut stream, request).await.status
}

/// Asks the proxy for a SOCKS5 CONNECT to `target` (`host:port`, by name or IPv4 address)
/// from `client`, without a log-in; the reply code.
async fn socks5_reply_from(client: IpAddr, proxy: SocketAddr, target: &str) -> u8 {
    let mut stream = connect_from(&client.to_string(), proxy).await;
    let (host, port) = target.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    let mut request = vec![5, 1, 0, 5, 1, 0];
    match host.parse::<std::net::Ipv4Addr>() {
        Ok(ip) => {
            request.push(1);
            request.extend_from_slice(&ip.octets());
        }
        Err(_) => {
            request.extend_from_slice(&[3, host.len() as u8]);
            request.extend_from_slice(host.as_bytes());
        }
    }
    request.extend_from_slice(&port.to_be_bytes());
    stream.write_all(&request).await.unwrap();
    let mut reply = [0u8; 12];
    tokio::time::timeout(WAIT, stream.read_exact(&mut reply))
        .await
        .expect("the SOCKS reply in time")
        .expect("greeting answer and reply");
    assert_eq!(reply[..2], [5, 0], "no log-in needed");
    reply[3]
}

/// The system resolver, for `localhost` only: no other name may be looked up by a test.
fn localhost_only(name: &str, port: u16) -> Result<Vec<IpAddr>, String> {
    assert_eq!(name, "localhost", "tests resolve localhost only");
    use std::net::ToSocketAddrs;
    (name, port)
        .to_socket_addrs()
        .map(|a| a.map(|a| a.ip()).collect())
        .map_err(|e| e.to_string())
}

/// Asks `explain` and the live proxy the same questions, and compares verdict, decider and
/// (for refusals) status.
async fn agree(toml: &str, cases: &[(&str, &str, String)]) {
    let proxy = Proxy::start(toml).await;
    let mut settings: Settings = settings_of(toml);
    // explain is asked offline: it learns the listen address from the settings alone.
    settings.policy.listen = vec![proxy.addr];
    let resolver: Resolver<'_> = &localhost_only;
    for (n, (client, method, target)) in cases.iter().enumerate() {
        let client: IpAddr = client.parse().unwrap();
        let question = Question {
            client,
            user: None,
            method,
            target,
            at: jiff::Timestamp::now(),
        };
        let lookups = Lookups {
            groups: None,
            resolve: Some(resolver),
            is_local: &portcullis::egress::dial::is_local_address,
        };
        let explained = explain(&settings, &question, &lookups).unwrap();
        let what = format!("{method} {target} from {client}:\n{}", explained.render());

        if *method == "SOCKS5" {
            // The SOCKS reply code is what explain must name.
            let code = socks5_reply_from(client, proxy.addr, target).await;
            let record = proxy.wait_records(n + 1).await[n].clone();
            assert_eq!(record.method, "SOCKS5", "records arrive in order: {what}");
            assert_eq!(
                explained.verdict == Verdict::Allowed,
                record.verdict == RecordVerdict::Allow,
                "{what}\nproxy: {record:?}"
            );
            assert_eq!(
                explained.decider.as_ref().map(ToString::to_string),
                Some(record.rule.to_string()),
                "{what}\nproxy: {record:?}"
            );
            assert!(
                explained.status.contains(&format!("0x{code:02X}")),
                "{what}\nproxy replied 0x{code:02X}"
            );
            continue;
        }
        let request = if *method == "CONNECT" {
            format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n")
        } else {
            let host = target
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap();
            format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        };
        let status = status_from(client, proxy.addr, &request).await;
        let record = proxy.wait_records(n + 1).await[n].clone();

        assert_eq!(record.method, *method, "records arrive in order: {what}");
        let live_allowed = record.verdict == RecordVerdict::Allow;
        assert_eq!(
            explained.verdict == Verdict::Allowed,
            live_allowed,
            "{what}\nproxy: {record:?}"
        );
        assert_eq!(
            explained.decider.as_ref().map(ToString::to_string),
            Some(record.rule.to_string()),
            "{what}\nproxy: {record:?}"
        );
        if !live_allowed || *method == "CONNECT" {
            assert!(
                explained.status.starts_with(&status.to_string()),
                "{what}\nproxy answered {status}"
            );
        }
    }
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn explain_agrees_with_the_live_proxy() {
    let web = HttpOrigin::start().await;
    let extra = HttpOrigin::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unused = closed.local_addr().unwrap().port();
    drop(closed);
    let (w, x) = (web.addr.port(), extra.addr.port());

    // Loopback origins allowed: the port lists and the rules decide.
    let rules = format!(
        r#"
[destinations]
allow_loopback = true
[clients]
allow = ["127.0.0.1", "127.0.0.2"]
[ports]
http = [{w}]
connect = [{w}]
[[rules]]
name = "second client: no tunnels"
clients = ["127.0.0.2"]
methods = ["CONNECT"]
action = "deny"
[[rules]]
name = "first client: the extra port"
clients = ["127.0.0.1"]
ports = [{x}]
action = "allow"
[[rules]]
name = "no posts"
methods = ["POST"]
action = "deny"
[[rules]]
name = "blocked names"
hosts = ["blocked.test", ".blocked.test"]
action = "deny"
[[rules]]
name = "no 127.0.0.99"
hosts = ["127.0.0.99/32"]
action = "deny"
"#
    );
    let cases: Vec<(&str, &str, String)> = vec![
        // The port lists.
        ("127.0.0.1", "CONNECT", format!("127.0.0.1:{w}")),
        ("127.0.0.1", "GET", format!("http://127.0.0.1:{w}/a")),
        ("127.0.0.1", "CONNECT", format!("127.0.0.1:{unused}")),
        ("127.0.0.1", "GET", format!("http://127.0.0.1:{unused}/")),
        // Rules by client, port and method.
        ("127.0.0.1", "GET", format!("http://127.0.0.1:{x}/b")),
        ("127.0.0.1", "CONNECT", format!("127.0.0.1:{x}")),
        ("127.0.0.2", "GET", format!("http://127.0.0.1:{x}/b")),
        ("127.0.0.2", "CONNECT", format!("127.0.0.1:{w}")),
        ("127.0.0.2", "GET", format!("http://127.0.0.1:{w}/c")),
        ("127.0.0.1", "POST", format!("http://127.0.0.1:{w}/d")),
        // Rules by host: names refused before any lookup, and address patterns.
        ("127.0.0.1", "GET", format!("http://blocked.test:{w}/")),
        ("127.0.0.2", "GET", format!("http://www.blocked.test:{w}/")),
        ("127.0.0.1", "GET", format!("http://127.0.0.99:{w}/")),
        // localhost: the rule with a network needs its addresses.
        ("127.0.0.1", "GET", format!("http://localhost:{w}/e")),
        // A client not in clients.allow.
        ("127.0.0.3", "CONNECT", format!("127.0.0.1:{w}")),
        // SOCKS5: the same port list and rules; the CONNECT-only rule does not apply.
        ("127.0.0.1", "SOCKS5", format!("127.0.0.1:{w}")),
        ("127.0.0.1", "SOCKS5", format!("127.0.0.1:{unused}")),
        ("127.0.0.1", "SOCKS5", format!("127.0.0.1:{x}")),
        ("127.0.0.2", "SOCKS5", format!("127.0.0.1:{w}")),
        ("127.0.0.1", "SOCKS5", format!("blocked.test:{w}")),
        ("127.0.0.1", "SOCKS5", format!("127.0.0.99:{w}")),
        // The proxy's own page.
        ("127.0.0.1", "GET", "/".to_owned()),
    ];
    agree(&rules, &cases).await;

    // Loopback refused: the guard on IP literals, after the port lists.
    let strict =
        format!("[clients]\nallow = [\"127.0.0.0/8\"]\n[ports]\nhttp = [{w}]\nconnect = [{w}]\n");
    let cases: Vec<(&str, &str, String)> = vec![
        ("127.0.0.1", "CONNECT", format!("127.0.0.1:{w}")),
        ("127.0.0.2", "GET", format!("http://127.0.0.1:{w}/")),
        ("127.0.0.1", "GET", format!("http://[::1]:{w}/")),
        ("127.0.0.1", "CONNECT", format!("127.0.0.1:{unused}")),
        ("127.0.0.1", "CONNECT", format!("localhost:{w}")),
        ("127.0.0.1", "CONNECT", format!("0.0.0.0:{w}")),
    ];
    agree(&strict, &cases).await;

    // The proxy's own listener: never a tunnel destination, even with loopback allowed; an
    // absolute URL naming it is its own page.
    let own = "[destinations]\nallow_loopback = true\n[clients]\nallow = [\"127.0.0.0/8\"]\n[ports]\nhttp = [\"1024-65535\"]\nconnect = [\"1024-65535\"]\n";
    agree_own_listener(own).await;
}

/// The proxy's own address as a destination: `destinations.self` for CONNECT, the own page
/// for an absolute URL.
async fn agree_own_listener(toml: &str) {
    let proxy = Proxy::start(toml).await;
    let mut settings: Settings = settings_of(toml);
    // explain is asked offline: it learns the listen address from the settings alone.
    settings.policy.listen = vec![proxy.addr];
    let me = proxy.addr;
    let cases = [
        ("CONNECT", me.to_string(), "destinations.self", false),
        ("GET", format!("http://{me}/proxy.pac"), "local", true),
        // A path the own pages do not have: their own 404, not a refusal.
        ("GET", format!("http://{me}/nope"), "local", true),
    ];
    for (n, (method, target, decider, allowed)) in cases.iter().enumerate() {
        let question = Question {
            client: "127.0.0.1".parse().unwrap(),
            user: None,
            method,
            target,
            at: jiff::Timestamp::now(),
        };
        let lookups = Lookups {
            groups: None,
            resolve: None,
            is_local: &portcullis::egress::dial::is_local_address,
        };
        let explained = explain(&settings, &question, &lookups).unwrap();
        let request = if *method == "CONNECT" {
            format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n")
        } else {
            format!("GET {target} HTTP/1.1\r\nHost: {me}\r\nConnection: close\r\n\r\n")
        };
        let status = status_from("127.0.0.1".parse().unwrap(), me, &request).await;
        let record = proxy.wait_records(n + 1).await[n].clone();
        assert_eq!(record.rule.to_string(), *decider, "{record:?}");
        assert_eq!(
            explained
                .decider
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some(*decider),
            "{}",
            explained.render()
        );
        assert_eq!(explained.verdict == Verdict::Allowed, *allowed);
        assert_eq!(record.verdict == RecordVerdict::Allow, *allowed);
        assert!(explained.status.starts_with(&status.to_string()));
    }
    proxy.stop().await.unwrap();
}
