//! The PAC file as browsers use it: fetched from the running proxy over a raw socket, then
//! evaluated by a real JavaScript engine (QuickJS) for representative URLs, with the standard
//! PAC helper functions written out as Netscape and Mozilla define them. `dnsResolve`,
//! `isResolvable` and `myIpAddress` throw, so a PAC that ever looks a name up fails here.

use crate::support::{raw, Proxy, RawResponse};
use portcullis::observe::access::Verdict;
use rquickjs::{Context, Runtime};

/// The PAC helpers the generated file may call. `isPlainHostName`, `dnsDomainIs`, `isInNet`
/// (with `isValidIpAddress` and `convert_addr`) follow Netscape's definitions as Mozilla's
/// `ascii_pac_utils.js` writes them; `isPlainHostName` is the original "no dot" test that
/// Chromium keeps (Firefox also counts a ':'), the stricter of the two for IPv6 literals.
/// `isInNetEx` is Microsoft's IPv6 extension (Chromium, Windows): an address literal and a
/// CIDR, false for anything that is not a literal. Name resolution is a test failure.
const HELPERS: &str = r#"
function dnsDomainIs(host, domain) {
  return (host.length >= domain.length &&
          host.substring(host.length - domain.length) == domain);
}
function isPlainHostName(host) {
  return (host.search('\\.') == -1);
}
function isValidIpAddress(ipchars) {
  var matches = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(ipchars);
  if (matches == null) {
    return false;
  } else if (matches[1] > 255 || matches[2] > 255 ||
             matches[3] > 255 || matches[4] > 255) {
    return false;
  }
  return true;
}
function convert_addr(ipchars) {
  var bytes = ipchars.split('.');
  var result = ((bytes[0] & 0xff) << 24) |
               ((bytes[1] & 0xff) << 16) |
               ((bytes[2] & 0xff) <<  8) |
                (bytes[3] & 0xff);
  return result;
}
function isInNet(ipaddr, pattern, maskstr) {
  if (!isValidIpAddress(pattern) || !isValidIpAddress(maskstr)) {
    return false;
  }
  if (!isValidIpAddress(ipaddr)) {
    ipaddr = dnsResolve(ipaddr);
    if (ipaddr == null) {
      return false;
    }
  }
  var host = convert_addr(ipaddr);
  var pat  = convert_addr(pattern);
  var mask = convert_addr(maskstr);
  return ((host & mask) == (pat & mask));
}
function shExpMatch(url, pattern) {
  pattern = pattern.replace(/\./g, '\\.');
  pattern = pattern.replace(/\*/g, '.*');
  pattern = pattern.replace(/\?/g, '.');
  var newRe = new RegExp('^' + pattern + '$');
  return newRe.test(url);
}

var lookups = [];
function dnsResolve(host) { lookups.push(host); throw new Error("the PAC resolved " + host); }
function dnsResolveEx(host) { lookups.push(host); throw new Error("the PAC resolved " + host); }
function isResolvable(host) { lookups.push(host); throw new Error("the PAC resolved " + host); }
function isResolvableEx(host) { lookups.push(host); throw new Error("the PAC resolved " + host); }
function myIpAddress() { throw new Error("the PAC asked for the client's address"); }
function myIpAddressEx() { throw new Error("the PAC asked for the client's address"); }

// An address literal as bytes (4 for IPv4, 16 for IPv6), or null.
function pacTestParseIp(text) {
  if (isValidIpAddress(text)) {
    return text.split('.').map(Number);
  }
  if (!/^[0-9a-fA-F:.]+$/.test(text) || text.indexOf(':') < 0) return null;
  var halves = text.split('::');
  if (halves.length > 2) return null;
  function groups(part, last) {
    if (part == '') return [];
    var out = [], pieces = part.split(':');
    for (var i = 0; i < pieces.length; i++) {
      var p = pieces[i];
      if (last && i == pieces.length - 1 && p.indexOf('.') >= 0) {
        if (!isValidIpAddress(p)) return null;
        var b = p.split('.').map(Number);
        out.push(b[0] * 256 + b[1], b[2] * 256 + b[3]);
      } else if (/^[0-9a-fA-F]{1,4}$/.test(p)) {
        out.push(parseInt(p, 16));
      } else {
        return null;
      }
    }
    return out;
  }
  var head = groups(halves[0], halves.length == 1);
  var tail = halves.length == 2 ? groups(halves[1], true) : [];
  if (head == null || tail == null) return null;
  var missing = 8 - head.length - tail.length;
  if (halves.length == 2 ? missing < 1 : missing != 0) return null;
  var all = head.concat(new Array(missing).fill(0), tail);
  var bytes = [];
  for (var j = 0; j < 8; j++) bytes.push(all[j] >> 8, all[j] & 0xff);
  return bytes;
}
function isInNetEx(ipAddress, ipPrefix) {
  var slash = ipPrefix.indexOf('/');
  if (slash < 0) return false;
  var addr = pacTestParseIp(ipAddress);
  var net = pacTestParseIp(ipPrefix.substring(0, slash));
  var bits = ipPrefix.substring(slash + 1);
  if (addr == null || net == null || addr.length != net.length || !/^[0-9]{1,3}$/.test(bits)) {
    return false;
  }
  var len = parseInt(bits, 10);
  if (len > addr.length * 8) return false;
  for (var i = 0; i < len; i++) {
    var byte = i >> 3, bit = 7 - (i & 7);
    if (((addr[byte] >> bit) & 1) != ((net[byte] >> bit) & 1)) return false;
  }
  return true;
}

function pacTestCall(url, host) {
  try {
    var answer = FindProxyForURL(url, host);
    if (lookups.length > 0) return "error: looked up " + lookups.join(", ");
    return typeof answer == "string" ? answer : "error: answered " + typeof answer;
  } catch (e) {
    return "error: " + e;
  } finally {
    lookups = [];
  }
}
"#;

/// A JavaScript engine with the PAC helpers and one PAC file loaded.
struct Engine {
    _runtime: Runtime,
    context: Context,
}

impl Engine {
    /// Loads `pac`; `with_ex` offers `isInNetEx` (Chromium, Windows) or not (Firefox).
    fn new(pac: &str, with_ex: bool) -> Engine {
        let runtime = Runtime::new().unwrap();
        let context = Context::full(&runtime).unwrap();
        context.with(|ctx| {
            ctx.eval::<(), _>(HELPERS).expect("the helpers load");
            if !with_ex {
                ctx.eval::<(), _>("isInNetEx = undefined;").unwrap();
            }
            if let Err(e) = ctx.eval::<(), _>(pac) {
                let thrown = ctx.catch();
                panic!("the PAC does not load: {e}: {thrown:?}\n{pac}");
            }
        });
        Engine {
            _runtime: runtime,
            context,
        }
    }

    /// Evaluates a JavaScript expression to a string (for checking the helpers themselves).
    fn eval(&self, expression: &str) -> String {
        self.context.with(|ctx| {
            ctx.eval::<String, _>(format!("String({expression})"))
                .unwrap_or_else(|e| format!("error: {e}: {:?}", ctx.catch()))
        })
    }

    /// `FindProxyForURL(url, host)` with `host` taken from `url` as browsers do.
    fn find(&self, url: &str) -> String {
        self.find_with_host(url, &host_of(url))
    }

    fn find_with_host(&self, url: &str, host: &str) -> String {
        self.context.with(|ctx| {
            let call: rquickjs::Function = ctx.globals().get("pacTestCall").unwrap();
            call.call::<_, String>((url, host))
                .unwrap_or_else(|e| format!("error: {e}"))
        })
    }

    /// Checks every `(url, expected answer)`; reports all mismatches at once.
    fn check(&self, cases: &[(&str, &str)]) {
        let wrong: Vec<String> = cases
            .iter()
            .filter_map(|(url, want)| {
                let got = self.find(url);
                (got != *want).then(|| format!("{url}: got {got:?}, want {want:?}"))
            })
            .collect();
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}

/// The host part of a URL, as Chromium passes it: IPv6 literals without brackets.
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if let Some(inner) = authority.strip_prefix('[') {
        return inner.split(']').next().unwrap_or("").to_owned();
    }
    authority
        .split(':')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// Fetches `path` from the proxy with `Host: host` (or none, as HTTP/1.0).
async fn fetch(proxy: &Proxy, path: &str, host: Option<&str>) -> RawResponse {
    let request = match host {
        Some(host) => format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        None => format!("GET {path} HTTP/1.0\r\n\r\n"),
    };
    raw(proxy.addr, request.as_bytes()).await
}

/// Fetches `/proxy.pac`, checks it is served as a PAC file, and returns its text.
async fn fetch_pac(proxy: &Proxy, host: Option<&str>) -> String {
    let r = fetch(proxy, "/proxy.pac", host).await;
    assert_eq!(r.status, 200, "{}{}", r.head, r.text());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/x-ns-proxy-autoconfig")
    );
    assert_eq!(r.header("cache-control").as_deref(), Some("max-age=300"));
    let text = r.text();
    assert!(
        text.contains("function FindProxyForURL(url, host)"),
        "{text}"
    );
    for call in [
        "dnsResolve(",
        "dnsResolveEx(",
        "isResolvable(",
        "myIpAddress(",
    ] {
        assert!(!text.contains(call), "{call} in {text}");
    }
    text
}

const ALLOW_LOOPBACK: &str = "[clients]\nallow = [\"127.0.0.0/8\", \"::1/128\"]\n";

#[test]
fn the_test_helpers_behave_as_browsers_do() {
    let e = Engine::new(
        "function FindProxyForURL(url, host) { return \"DIRECT\"; }",
        true,
    );
    let cases: &[(&str, &str)] = &[
        ("isPlainHostName('intranet')", "true"),
        ("isPlainHostName('a.lan')", "false"),
        ("dnsDomainIs('a.b.lan', '.lan')", "true"),
        ("dnsDomainIs('evil-lan', '.lan')", "false"),
        ("isInNet('10.1.2.3', '10.0.0.0', '255.0.0.0')", "true"),
        ("isInNet('11.1.2.3', '10.0.0.0', '255.0.0.0')", "false"),
        ("isInNetEx('fd12::1', 'fd00::/8')", "true"),
        ("isInNetEx('fe80::1', 'fd00::/8')", "false"),
        ("isInNetEx('fc00::1', 'fc00::/7')", "true"),
        ("isInNetEx('fdff:ffff::', 'fc00::/7')", "true"),
        ("isInNetEx('fe00::', 'fc00::/7')", "false"),
        ("isInNetEx('::1', '::1/128')", "true"),
        ("isInNetEx('0:0:0:0:0:0:0:1', '::1/128')", "true"),
        ("isInNetEx('::2', '::1/128')", "false"),
        ("isInNetEx('2001:db8::10.0.0.1', '2001:db8::/32')", "true"),
        ("isInNetEx('10.1.2.3', '10.0.0.0/8')", "true"),
        ("isInNetEx('10.1.2.3', 'fd00::/8')", "false"),
        ("isInNetEx('[fd00::1]', 'fd00::/8')", "false"),
        ("isInNetEx('fd00:::1', 'fd00::/8')", "false"),
        ("shExpMatch('a.lan', '*.lan')", "true"),
    ];
    for (expression, want) in cases {
        assert_eq!(e.eval(expression), *want, "{expression}");
    }
    // The trap works: a PAC that resolves is caught.
    let resolving = Engine::new(
        "function FindProxyForURL(url, host) { return isInNet(host, '10.0.0.0', '255.0.0.0') ? 'DIRECT' : 'PROXY p:1'; }",
        true,
    );
    assert!(resolving
        .find("http://www.example.org/")
        .starts_with("error: "));
    assert_eq!(resolving.find("http://10.0.0.1/"), "DIRECT");
}

#[tokio::test]
async fn direct_patterns_and_proxies_in_order() {
    let proxy = Proxy::start(&format!(
        "{ALLOW_LOOPBACK}[pac]\n\
         direct = [\".lan\", \"intranet.example.com\", \"192.168.1.0/24\", \"10.1.0.0/16\", \"fd00::/8\"]\n\
         proxies = [\"proxy-b.lan:8080\", \"proxy-a.lan:3128\", \"10.9.9.9:3128\"]\n"
    ))
    .await;
    let pac = fetch_pac(&proxy, Some("proxy.lan:3128")).await;
    let proxies = "PROXY proxy-b.lan:8080; PROXY proxy-a.lan:3128; PROXY 10.9.9.9:3128";
    let cases: &[(&str, &str)] = &[
        // Plain host names and loopback.
        ("http://intranet/", "DIRECT"),
        ("http://nas:5000/files", "DIRECT"),
        ("http://localhost:8080/", "DIRECT"),
        ("http://app.localhost/", "DIRECT"),
        ("http://127.0.0.1/", "DIRECT"),
        ("http://127.8.9.10:3000/", "DIRECT"),
        ("http://[::1]:8080/", "DIRECT"),
        // A .domain: the domain and every name under it, in any case, with a trailing dot.
        ("http://printer.lan/", "DIRECT"),
        ("https://a.b.c.lan/", "DIRECT"),
        ("http://PRINTER.LAN./", "DIRECT"),
        ("http://evil-lan.com/", proxies),
        ("http://printer.lan.example.org/", proxies),
        ("http://notlan/", "DIRECT"),
        ("http://x.notlan/", proxies),
        // An exact host: that name only.
        ("http://intranet.example.com/", "DIRECT"),
        ("https://Intranet.Example.COM/login", "DIRECT"),
        ("http://www.intranet.example.com/", proxies),
        ("http://example.com/", proxies),
        // IPv4 literals inside and outside the CIDRs.
        ("http://192.168.1.77/", "DIRECT"),
        ("http://192.168.1.255:8080/", "DIRECT"),
        ("http://192.168.2.1/", proxies),
        ("http://10.1.200.3/", "DIRECT"),
        ("http://10.2.0.1/", proxies),
        ("http://8.8.8.8/", proxies),
        // Not dotted quads of octets: never handed to isInNet, which would resolve them.
        ("http://999.1.1.1/", proxies),
        ("http://010.1.1.1/", proxies),
        ("http://192.168.1/", proxies),
        ("http://192.168.1.5.example.org/", proxies),
        // IPv6 literals: a ULA inside, others outside.
        ("http://[fd12:3456::1]/", "DIRECT"),
        ("https://[FD00::AB]:8443/", "DIRECT"),
        ("http://[fc00::1]/", proxies),
        ("http://[2001:db8::1]/", proxies),
        // Public names.
        ("https://www.example.org/", proxies),
        ("http://neverssl.com/", proxies),
    ];
    let engine = Engine::new(&pac, true);
    engine.check(cases);
    // Hosts as some browsers pass them: IPv6 in brackets, upper case.
    assert_eq!(
        engine.find_with_host("http://[fd00::1]/", "[fd00::1]"),
        "DIRECT"
    );
    assert_eq!(
        engine.find_with_host("http://PRINTER.lan/", "PRINTER.lan"),
        "DIRECT"
    );
    assert_eq!(
        engine.find_with_host("http://[2001:db8::1]/", "[2001:db8::1]"),
        proxies
    );
    // Without isInNetEx (Firefox), IPv6 networks cannot match: the proxy, never an error.
    let firefox = Engine::new(&pac, false);
    assert_eq!(firefox.find("http://[fd12::1]/"), proxies);
    assert_eq!(firefox.find("http://[::1]/"), "DIRECT");
    assert_eq!(firefox.find("http://192.168.1.5/"), "DIRECT");
    assert_eq!(firefox.find("http://printer.lan/"), "DIRECT");

    // /wpad.dat is the same file; the fetches are recorded as the proxy's own pages.
    let wpad = fetch(&proxy, "/wpad.dat", Some("proxy.lan:3128")).await;
    assert_eq!(wpad.status, 200);
    assert_eq!(
        wpad.header("content-type").as_deref(),
        Some("application/x-ns-proxy-autoconfig")
    );
    assert_eq!(wpad.header("cache-control").as_deref(), Some("max-age=300"));
    assert_eq!(wpad.text(), pac);
    let records = proxy.wait_records(2).await;
    for record in &records[..2] {
        assert_eq!(record.status, 200);
        assert_eq!(record.verdict, Verdict::Allow);
        assert!(record.rule == "local", "{:?}", record.rule);
    }
    assert_eq!(records[1].path.as_deref(), Some("/wpad.dat"));
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn an_empty_direct_list_sends_all_but_plain_names_to_the_proxy() {
    let proxy = Proxy::start(&format!("{ALLOW_LOOPBACK}[pac]\ndirect = []\n")).await;
    let pac = fetch_pac(&proxy, Some("gateway.lan:3128")).await;
    let this = "PROXY gateway.lan:3128";
    Engine::new(&pac, true).check(&[
        ("http://intranet/", "DIRECT"),
        ("http://localhost/", "DIRECT"),
        ("http://127.0.0.1:9000/", "DIRECT"),
        ("http://[::1]/", "DIRECT"),
        ("http://printer.lan/", this),
        ("http://192.168.1.5/", this),
        ("http://10.0.0.1/", this),
        ("http://[fd00::1]/", this),
        ("https://www.example.org/", this),
    ]);
}

#[tokio::test]
async fn by_default_the_private_networks_of_clients_allow_are_direct() {
    let proxy = Proxy::start(
        "[clients]\nallow = [\"127.0.0.0/8\", \"::1/128\", \"192.168.0.0/16\", \"fd00::/8\"]\n",
    )
    .await;
    let pac = fetch_pac(&proxy, Some("192.168.1.2:3128")).await;
    let this = "PROXY 192.168.1.2:3128";
    Engine::new(&pac, true).check(&[
        ("http://intranet/", "DIRECT"),
        ("http://192.168.3.4/", "DIRECT"),
        ("http://192.168.255.255/", "DIRECT"),
        ("http://[fd00::5]/", "DIRECT"),
        ("http://127.0.0.1/", "DIRECT"),
        ("http://10.0.0.1/", this),
        ("http://172.16.0.1/", this),
        ("http://[fe80::1]/", this),
        // Names are never resolved, so a LAN name goes through the proxy unless listed.
        ("http://printer.lan/", this),
        ("https://www.example.org/", this),
    ]);
    // Every default network is written into the file, and loopback only once, built in.
    assert!(pac.contains("isInNet(host, \"192.168.0.0\", \"255.255.0.0\")"));
    assert!(pac.contains("isInNetEx(host, \"fd00::/8\")"));
    assert_eq!(pac.matches("\"127.0.0.0\"").count(), 1, "{pac}");
    assert_eq!(pac.matches("\"::1/128\"").count(), 1, "{pac}");
}

#[tokio::test]
async fn the_built_in_defaults_make_a_working_pac() {
    // No [clients] at all: the default private networks, loopback among them.
    let proxy = Proxy::start("").await;
    let pac = fetch_pac(&proxy, Some("proxy.home.arpa:3128")).await;
    let this = "PROXY proxy.home.arpa:3128";
    Engine::new(&pac, true).check(&[
        ("http://10.0.0.1/", "DIRECT"),
        ("http://172.31.255.1/", "DIRECT"),
        ("http://100.64.0.1/", "DIRECT"),
        ("http://[fe80::1]/", "DIRECT"),
        ("http://[fc00::1]/", "DIRECT"),
        ("http://172.32.0.1/", this),
        ("https://www.example.org/", this),
    ]);
}

#[tokio::test]
async fn proxy_host_names_this_proxy_with_the_port_clients_used() {
    let proxy = Proxy::start(&format!(
        "{ALLOW_LOOPBACK}[pac]\ndirect = []\nproxy_host = \"Proxy.Home.Arpa\"\n"
    ))
    .await;
    let pac = fetch_pac(&proxy, Some("10.0.0.1:8080")).await;
    Engine::new(&pac, true).check(&[
        ("http://www.example.org/", "PROXY proxy.home.arpa:8080"),
        ("http://intranet/", "DIRECT"),
    ]);
    // No Host header: the port the request arrived on.
    let pac = fetch_pac(&proxy, None).await;
    let want = format!("PROXY proxy.home.arpa:{}", proxy.addr.port());
    Engine::new(&pac, true).check(&[("http://www.example.org/", want.as_str())]);
}

#[tokio::test]
async fn a_bad_host_header_falls_back_to_the_address_the_request_arrived_on() {
    let proxy = Proxy::start(&format!("{ALLOW_LOOPBACK}[pac]\ndirect = []\n")).await;
    let local = format!("PROXY 127.0.0.1:{}", proxy.addr.port());
    // The name clients used, without a port: the port the request arrived on.
    let pac = fetch_pac(&proxy, Some("Proxy.LAN")).await;
    let want = format!("PROXY proxy.lan:{}", proxy.addr.port());
    Engine::new(&pac, true).check(&[("http://www.example.org/", want.as_str())]);
    for host in [
        None,
        Some("evil\"); return \"DIRECT"),
        Some("evil.lan\\\"; }"),
        Some("x'+'y:1"),
        Some("proxy.lan:0"),
        Some("proxy.lan:99999"),
        Some("user@proxy.lan:3128"),
        Some("0.0.0.0:3128"),
        Some("fd00::1"),
        Some("a b"),
    ] {
        let pac = fetch_pac(&proxy, host).await;
        let engine = Engine::new(&pac, true);
        assert_eq!(engine.find("http://www.example.org/"), local, "{host:?}");
        assert_eq!(engine.find("http://intranet/"), "DIRECT", "{host:?}");
        assert!(!pac.contains("evil"), "{host:?}: {pac}");
    }
}

#[tokio::test]
async fn the_pac_needs_no_credentials_and_only_get_and_head() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.htpasswd");
    let hash = bcrypt::hash("alice pw", 4).unwrap();
    std::fs::write(&users, format!("alice:{hash}\n")).unwrap();
    let proxy = Proxy::start(&format!(
        "{ALLOW_LOOPBACK}[auth]\nhtpasswd = {:?}\n[pac]\nproxies = [\"proxy.lan:3128\"]\n",
        users.display().to_string()
    ))
    .await;
    let pac = fetch_pac(&proxy, Some("proxy.lan:3128")).await;
    Engine::new(&pac, true).check(&[("http://www.example.org/", "PROXY proxy.lan:3128")]);

    let head = raw(
        proxy.addr,
        b"HEAD /wpad.dat HTTP/1.1\r\nHost: proxy.lan:3128\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-type").as_deref(),
        Some("application/x-ns-proxy-autoconfig")
    );
    assert_eq!(
        head.header("content-length"),
        Some(pac.len().to_string()),
        "{}",
        head.head
    );
    assert!(head.body.is_empty());

    let post = raw(
        proxy.addr,
        b"POST /proxy.pac HTTP/1.1\r\nHost: proxy.lan:3128\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow").as_deref(), Some("GET, HEAD"));
    let other = fetch(&proxy, "/proxy.pac.bak", Some("proxy.lan:3128")).await;
    assert_eq!(other.status, 404);
}
