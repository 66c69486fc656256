//! The proxy's own pages: which answer each path gets ([`OwnPage`]), and what someone who
//! opens the proxy's address in a browser reads (how to set the proxy up, by address and port
//! or by its PAC file, and their own recent refusals), as HTML or as text.

use http::{Method, StatusCode};

use jiff::Timestamp;

use crate::core::clock::Clock;
use crate::core::quota::{human_bytes, Standing};
use crate::observe::stats::RecentDenial;
use crate::web::html::escape_html;

/// What the proxy answers to an origin-form request (`GET /path`) for its own pages.
///
/// Every answer here is the proxy's own, decided by nothing but the path: none is a refusal
/// of the person who asked, a `404` included. Browsers ask some paths of every site on their
/// own (`/favicon.ico`, `/apple-touch-icon.png`, `/robots.txt` …), so a visit to the page
/// brings them along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OwnPage {
    /// `/`: the page that says this is a proxy.
    Welcome,
    /// `/proxy.pac`, `/wpad.dat`: the PAC file ([`crate::web::pac`]).
    Pac,
    /// `/favicon.ico`: the proxy's icon ([`ICON_SVG`]).
    Icon,
    /// `/robots.txt`: nothing here is for crawlers ([`ROBOTS_TXT`]).
    Robots,
    /// `/ca.pem` (PEM) and `/ca.crt` (DER): the certificate authority of `[tls] ca`, for
    /// clients to install (`404` when none is set).
    Ca {
        /// Whether DER (`/ca.crt`, what Windows and Android install with a tap).
        der: bool,
    },
    /// Any other path: `404`.
    NotFound,
    /// A method other than `GET` and `HEAD`: `405`.
    NotAllowed,
}

impl OwnPage {
    /// The answer to `method` on `path`.
    pub(crate) fn of(method: &Method, path: &str) -> OwnPage {
        if method != Method::GET && method != Method::HEAD {
            return OwnPage::NotAllowed;
        }
        match path {
            "/" => OwnPage::Welcome,
            "/favicon.ico" => OwnPage::Icon,
            "/robots.txt" => OwnPage::Robots,
            "/ca.pem" => OwnPage::Ca { der: false },
            "/ca.crt" => OwnPage::Ca { der: true },
            p if crate::web::pac::PATHS.contains(&p) => OwnPage::Pac,
            _ => OwnPage::NotFound,
        }
    }

    /// The status it is answered with.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            OwnPage::NotFound => StatusCode::NOT_FOUND,
            OwnPage::NotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            OwnPage::Welcome
            | OwnPage::Pac
            | OwnPage::Icon
            | OwnPage::Robots
            | OwnPage::Ca { .. } => StatusCode::OK,
        }
    }

    /// For a `404` or `405`, its one-line reason (the answer's text, and the record's).
    pub(crate) fn missing(self, method: &Method, path: &str) -> Option<String> {
        match self {
            OwnPage::NotFound => Some(format!("{path} is not a page of this proxy")),
            OwnPage::NotAllowed => Some(format!(
                "{method} is not supported on the proxy's own pages"
            )),
            OwnPage::Welcome
            | OwnPage::Pac
            | OwnPage::Icon
            | OwnPage::Robots
            | OwnPage::Ca { .. } => None,
        }
    }
}

/// The proxy's icon, at `/favicon.ico` (as `image/svg+xml`): a portcullis, a grille of bars.
pub(crate) const ICON_SVG: &str =
    "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 16\">\
<rect width=\"16\" height=\"16\" rx=\"3\" fill=\"#2f4858\"/>\
<path d=\"M4.5 2v12M8 2v12M11.5 2v12M2 5.5h12M2 9.5h12\" stroke=\"#fff\" stroke-width=\"1.5\"/>\
</svg>\n";

/// `/robots.txt`: a proxy has nothing for crawlers.
pub(crate) const ROBOTS_TXT: &str = "User-agent: *\nDisallow: /\n";

/// The URL of the PAC file of a proxy reached at `proxy` (`host:port`, as
/// [`crate::web::pac::proxy_authority`] gives it).
pub(crate) fn pac_url(proxy: &str) -> String {
    format!("http://{proxy}{}", crate::web::pac::PATHS[0])
}

/// The page as text, for a proxy reached at `proxy` (`host:port`, as
/// [`crate::web::pac::proxy_authority`] gives it).
pub(crate) fn welcome_text(proxy: &str) -> String {
    let pac = pac_url(proxy);
    format!(
        "This is Portcullis, a web proxy, not a web site.\n\
         To browse through it, set {proxy} as the HTTP and HTTPS proxy in your browser's or \
         system's proxy settings (Windows: Internet Options > Connections > LAN settings), \
         or for command-line tools: export http_proxy=http://{proxy} https_proxy=http://{proxy}\n\
         Automatic configuration (setup script): {pac}\n"
    )
}

/// The page as HTML, for a proxy reached at `proxy` (as [`welcome_text`]).
pub(crate) fn welcome_html(proxy: &str) -> String {
    let pac = escape_html(&pac_url(proxy));
    let host = escape_html(proxy);
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Portcullis proxy</title>\
         <link rel=\"icon\" href=\"/favicon.ico\" type=\"image/svg+xml\">\
         <style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em}}\
         code{{background:#eee;padding:0 .3em}}</style></head><body>\
         <h1>This is a web proxy</h1>\
         <p>You have reached <b>Portcullis</b>, the proxy that shares this network's internet \
         connection. It is not a web site.</p>\
         <p>To browse through it, set <code id=\"proxy\">{host}</code> as the proxy for HTTP and HTTPS:</p>\
         <ul><li>Windows: Settings &rarr; Network &amp; Internet &rarr; Proxy, or Internet \
         Options &rarr; Connections &rarr; LAN settings</li>\
         <li>macOS: System Settings &rarr; Network &rarr; Details &rarr; Proxies</li>\
         <li>Linux and command-line tools: <code>export http_proxy=http://{host} \
         https_proxy=http://{host}</code></li></ul>\
         <p>Or let the system or browser set itself up: automatic configuration \
         (&ldquo;setup script&rdquo;) <code id=\"pac\">{pac}</code></p>\
         </body></html>\n"
    )
}

/// The part of the page that offers this network's certificate authority (`[tls] ca`), for
/// the proxy's TLS listener.
pub(crate) fn ca_html(proxy: &str) -> String {
    let host = escape_html(proxy);
    format!(
        "<h2>Encrypted connections to the proxy</h2><p>This proxy also speaks TLS. To use it,          install this network's certificate authority once, as a trusted root:          <a id=\"ca\" href=\"http://{host}/ca.crt\">ca.crt</a> (Windows, Android: open it to          install) or <a href=\"http://{host}/ca.pem\">ca.pem</a> (macOS, Linux, Firefox).</p>"
    )
}

/// [`ca_html`] as text.
pub(crate) fn ca_text(proxy: &str) -> String {
    format!(
        "This proxy also speaks TLS: install this network's certificate authority once,          as a trusted root: http://{proxy}/ca.crt (Windows, Android) or http://{proxy}/ca.pem          (macOS, Linux, Firefox).\n"
    )
}

/// The person's share of the link and caps (`lines`, from
/// [`crate::config::settings::ShapingSettings::for_client`]) and their use of it now.
pub(crate) fn share_html(lines: &[String], now: Option<(f64, f64)>) -> String {
    let mut out = String::from("<h2>Your share of the link</h2>");
    if let Some((down, up)) = now {
        out.push_str(&format!(
            "<p>You use now: down {}, up {}.</p>",
            crate::core::shaping::show_rate(down),
            crate::core::shaping::show_rate(up)
        ));
    }
    for line in lines {
        out.push_str(&format!("<p>{}</p>", escape_html(line)));
    }
    out
}

/// The same as text.
pub(crate) fn share_text(lines: &[String], now: Option<(f64, f64)>) -> String {
    let mut out = String::from("\nYour share of the link:\n");
    if let Some((down, up)) = now {
        out.push_str(&format!(
            "  you use now: down {}, up {}\n",
            crate::core::shaping::show_rate(down),
            crate::core::shaping::show_rate(up)
        ));
    }
    for line in lines {
        out.push_str(&format!("  {line}\n"));
    }
    out
}

/// The person's own byte budgets (`[[quotas]]`): used, left, and when each is full again.
pub(crate) fn budgets_html(standings: &[Standing], clock: &Clock, now: Timestamp) -> String {
    let mut out = String::from("<h2>Your byte budgets</h2>");
    if standings.is_empty() {
        out.push_str("<p>No byte budget counts your traffic.</p>");
        return out;
    }
    out.push_str(
        "<table id=\"budgets\"><tr><th>budget</th><th>for</th><th>used</th><th>of</th><th>left</th><th>full again</th></tr>",
    );
    for s in standings {
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} a {}</td><td>{}</td><td>{}</td></tr>",
            escape_html(&s.quota),
            escape_html(&s.key),
            human_bytes(s.used),
            human_bytes(s.bytes),
            s.per,
            human_bytes(s.left()),
            clock.show(s.resets, now)
        ));
    }
    out.push_str("</table><p>Once a budget is used up, new requests it counts are refused until it is full again.</p>");
    out
}

/// The same as text.
pub(crate) fn budgets_text(standings: &[Standing], clock: &Clock, now: Timestamp) -> String {
    let mut out = String::from("\nYour byte budgets:\n");
    if standings.is_empty() {
        out.push_str("  none counts your traffic\n");
    }
    for s in standings {
        out.push_str(&format!(
            "  {} ({}): used {} of {} a {}, {} left; full again {}\n",
            s.quota,
            s.key,
            human_bytes(s.used),
            human_bytes(s.bytes),
            s.per,
            human_bytes(s.left()),
            clock.show(s.resets, now)
        ));
    }
    out
}

/// The self-service part of the page: this client's own recent refusals, and nobody else's.
/// Browsers hide a proxy's answer to a refused CONNECT, so this is where people can see why.
pub(crate) fn denials_html(client: std::net::IpAddr, denials: &[RecentDenial]) -> String {
    let mut out = format!("<h2>Recently refused for your address ({client})</h2>");
    if denials.is_empty() {
        out.push_str("<p>Nothing has been refused for your address recently.</p>");
        return out;
    }
    out.push_str(
        "<table id=\"denials\"><tr><th>time (UTC)</th><th>destination</th><th>why</th></tr>",
    );
    for d in denials {
        out.push_str(&format!(
            "<tr><td>{}</td><td>{} {}</td><td>{} ({})</td></tr>",
            escape_html(&d.time),
            escape_html(&d.method),
            escape_html(&d.destination),
            escape_html(&d.reason),
            escape_html(&d.rule)
        ));
    }
    out.push_str("</table><p>If you need one of these, ask the person who runs this proxy.</p>");
    out
}

pub(crate) fn denials_text(client: std::net::IpAddr, denials: &[RecentDenial]) -> String {
    let mut out = format!("\nRecently refused for your address ({client}):\n");
    if denials.is_empty() {
        out.push_str("  nothing\n");
    }
    for d in denials {
        out.push_str(&format!(
            "  {}  {} {}  {} ({})\n",
            d.time, d.method, d.destination, d.reason, d.rule
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert!(!welcome_html("<script>").contains("<script>"));
    }

    #[test]
    fn both_forms_give_the_pac_url_beside_the_address() {
        let url = "http://proxy.lan:3128/proxy.pac";
        assert!(welcome_text("proxy.lan:3128").contains(&format!("setup script): {url}\n")));
        assert!(welcome_html("proxy.lan:3128").contains(&format!("<code id=\"pac\">{url}</code>")));
    }

    #[test]
    fn each_path_gets_its_answer_and_none_is_a_refusal() {
        let get = |path| OwnPage::of(&Method::GET, path);
        assert_eq!(get("/"), OwnPage::Welcome);
        assert_eq!(get("/proxy.pac"), OwnPage::Pac);
        assert_eq!(get("/wpad.dat"), OwnPage::Pac);
        assert_eq!(get("/favicon.ico"), OwnPage::Icon);
        assert_eq!(get("/robots.txt"), OwnPage::Robots);
        assert_eq!(OwnPage::of(&Method::HEAD, "/favicon.ico"), OwnPage::Icon);
        let missing = get("/apple-touch-icon.png");
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            missing
                .missing(&Method::GET, "/apple-touch-icon.png")
                .as_deref(),
            Some("/apple-touch-icon.png is not a page of this proxy")
        );
        let post = OwnPage::of(&Method::POST, "/");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(get("/").missing(&Method::GET, "/"), None);
        assert!(ICON_SVG.starts_with("<svg ") && ICON_SVG.ends_with("</svg>\n"));
    }
}
