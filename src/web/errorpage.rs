//! Error pages for browsers: the HTML a person sees when the proxy refuses or cannot complete
//! a plain-HTTP request, instead of the one-line text other clients get. It owns the choice
//! of who gets a page ([`Asked::for_page`]), the built-in page and the substitution of the
//! owner's template (`[pages] dir`, file `error.html`). It leaves the status, the reason and
//! the headers to [`crate::core::error`], and building the response and the access record to
//! [`crate::proxy::respond`].
//!
//! A page is shown when the request is plain HTTP (not `CONNECT`: browsers never show a
//! proxy's answer to `CONNECT`) and its `Accept` header contains `text/html`.
//!
//! # Template variables
//!
//! An `error.html` in `[pages] dir` replaces the built-in page. These variables are replaced,
//! each HTML-escaped; any other `{{…}}` is left as written, and substituted values are never
//! substituted again:
//!
//! | variable      | value                                                                  |
//! |---------------|------------------------------------------------------------------------|
//! | `{{status}}`  | the status code: `403`                                                 |
//! | `{{title}}`   | a short title for the status: `Access refused`, `Cannot reach the site` |
//! | `{{reason}}`  | the one-line reason, as in the access log                              |
//! | `{{rule}}`    | what decided: `ports.http`, `rule "no mail"`; empty when nothing did   |
//! | `{{method}}`  | the request method: `GET`                                              |
//! | `{{host}}`    | the host asked for                                                     |
//! | `{{port}}`    | the port asked for: `25`; empty when unknown                           |
//! | `{{service}}` | the port's service name: `smtp`; empty when the port has none          |
//! | `{{url}}`     | the URL as the client sent it                                          |
//! | `{{client}}`  | the client's address: `192.168.1.20`                                   |
//! | `{{contact}}` | whom to ask, from `[pages] contact`                                    |
//! | `{{time}}`    | when, in UTC: `2025-11-26 12:00:00 UTC`                                |
//!
//! Whitespace inside the braces is allowed (`{{ host }}`). The template is otherwise used as
//! it is: it should be self-contained (no external resources), since the browser asked the
//! proxy for a page on another site.

use std::net::IpAddr;
use std::time::SystemTime;

use http::{header, Method, Request, StatusCode};

use crate::core::error::EdgeError;
use crate::core::ports;
use crate::web::html::escape_html;

/// What the client asked for, as far as it can be read, for a client that wants a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    /// The request method.
    pub method: String,
    /// The host asked for (the URL's, or else the `Host` header's); empty when unreadable.
    pub host: String,
    /// The port asked for, when known.
    pub port: Option<u16>,
    /// The request target as the client sent it.
    pub url: String,
}

impl Asked {
    /// What `req` asks for, when its answer should be an HTML page: a request other than
    /// `CONNECT` whose `Accept` header contains `text/html`. `None` for every other request.
    pub fn for_page<B>(req: &Request<B>) -> Option<Asked> {
        if req.method() == Method::CONNECT || !crate::web::html::accepts_html(req.headers()) {
            return None;
        }
        let uri = req.uri();
        let (host, port) = match uri.authority() {
            Some(authority) => {
                let default = match uri.scheme_str() {
                    Some(s) if s.eq_ignore_ascii_case("http") => Some(80),
                    Some(s) if s.eq_ignore_ascii_case("https") => Some(443),
                    _ => None,
                };
                (
                    authority.host().to_owned(),
                    authority.port_u16().or(default),
                )
            }
            None => req
                .headers()
                .get(header::HOST)
                .map(|h| split_host_port(&String::from_utf8_lossy(h.as_bytes())))
                .unwrap_or_default(),
        };
        Some(Asked {
            method: req.method().as_str().to_owned(),
            host,
            port,
            url: uri.to_string(),
        })
    }
}

/// `host:port` of a `Host` header, as written; `[v6]:port` keeps its brackets.
fn split_host_port(value: &str) -> (String, Option<u16>) {
    let value = value.trim();
    match value.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => match port.parse() {
            Ok(port) => (host.to_owned(), Some(port)),
            Err(_) => (value.to_owned(), None),
        },
        _ => (value.to_owned(), None),
    }
}

/// Everything a page may show, as plain (unescaped) text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageValues {
    /// `403`
    pub status: String,
    /// `Access refused`
    pub title: String,
    /// The one-line reason.
    pub reason: String,
    /// What decided; empty when nothing did.
    pub rule: String,
    /// `GET`
    pub method: String,
    /// The host asked for.
    pub host: String,
    /// The port asked for; empty when unknown.
    pub port: String,
    /// The port's service name; empty when it has none.
    pub service: String,
    /// The URL as sent.
    pub url: String,
    /// The client's address.
    pub client: String,
    /// Whom to ask.
    pub contact: String,
    /// When, in UTC.
    pub time: String,
}

impl PageValues {
    /// The values of the page for `error` answering `asked` from `client` at `time`.
    pub fn new(
        error: &EdgeError,
        asked: &Asked,
        client: IpAddr,
        contact: &str,
        time: SystemTime,
    ) -> Self {
        let service = asked.port.and_then(ports::service_name).unwrap_or_default();
        PageValues {
            status: error.status.as_u16().to_string(),
            title: title(error.status).to_owned(),
            reason: error.reason.clone(),
            rule: error
                .rule
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            method: asked.method.clone(),
            host: asked.host.clone(),
            port: asked.port.map(|p| p.to_string()).unwrap_or_default(),
            service: service.to_owned(),
            url: asked.url.clone(),
            client: client.to_string(),
            contact: contact.to_owned(),
            time: utc(time),
        }
    }

    /// The value of template variable `name`, unescaped; `None` for an unknown name.
    pub fn get(&self, name: &str) -> Option<&str> {
        Some(match name {
            "status" => &self.status,
            "title" => &self.title,
            "reason" => &self.reason,
            "rule" => &self.rule,
            "method" => &self.method,
            "host" => &self.host,
            "port" => &self.port,
            "service" => &self.service,
            "url" => &self.url,
            "client" => &self.client,
            "contact" => &self.contact,
            "time" => &self.time,
            _ => return None,
        })
    }
}

/// The page: the owner's `template` with its variables substituted, or the built-in page.
pub fn render(values: &PageValues, template: Option<&str>) -> String {
    match template {
        Some(template) => substitute(template, values),
        None => builtin(values),
    }
}

/// A short title for a status, in the words of someone browsing.
pub fn title(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "Bad request",
        403 => "Access refused",
        407 => "Proxy log-in required",
        408 => "The request took too long",
        414 => "Web address too long",
        429 => "Too many attempts",
        431 => "Request headers too large",
        501 => "Not supported by this proxy",
        502 => "Cannot reach the site",
        503 => "The proxy is busy",
        504 => "The site did not answer in time",
        508 => "Forwarding loop",
        _ if status.is_client_error() => "Request refused",
        _ => "The request could not be completed",
    }
}

/// What a person can do about it, ending with whom to ask.
fn advice(status: StatusCode, contact: &str) -> String {
    match status.as_u16() {
        403 => format!("If you need this, ask {contact}."),
        407 => format!(
            "Your browser should ask for a user name and password for the proxy. \
             If you have none, ask {contact}."
        ),
        429 | 503 => format!("Try again in a little while. If it keeps happening, ask {contact}."),
        502 | 504 => format!(
            "The site may be down, or its address may be wrong. If it keeps happening, \
             ask {contact}."
        ),
        _ => format!("If you think this is wrong, ask {contact}."),
    }
}

/// Replaces each `{{name}}` of a known variable with its escaped value, in one pass.
pub fn substitute(template: &str, values: &PageValues) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = after[..end].trim();
        let is_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !is_name {
            // Not a variable here (`{{{x}}`, `{{ a b }}`): keep one brace, look again after it.
            out.push('{');
            rest = &rest[start + 1..];
            continue;
        }
        let whole = &rest[start..start + 2 + end + 2];
        match values.get(name) {
            Some(value) => out.push_str(&escape_html(value)),
            None => out.push_str(whole),
        }
        rest = &rest[start + whole.len()..];
    }
    out.push_str(rest);
    out
}

/// The built-in page.
fn builtin(v: &PageValues) -> String {
    let e = |s: &str| escape_html(s);
    let port = match (v.port.as_str(), v.service.as_str()) {
        ("", _) => "unknown".to_owned(),
        (port, "") => port.to_owned(),
        (port, service) => format!("{port} ({service})"),
    };
    let mut rows = String::new();
    let mut row = |label: &str, value: &str| {
        rows.push_str(&format!("<tr><th>{label}</th><td>{value}</td></tr>\n"));
    };
    row(
        "You asked for",
        &format!("<code>{} {}</code>", e(&v.method), e(&v.url)),
    );
    row(
        "Host",
        &e(if v.host.is_empty() {
            "unknown"
        } else {
            &v.host
        }),
    );
    row("Port", &e(&port));
    if !v.rule.is_empty() {
        row("Decided by", &e(&v.rule));
    }
    row("Your address", &e(&v.client));
    row("Time", &e(&v.time));
    let status = StatusCode::from_u16(v.status.parse().unwrap_or(500))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\n\
         <title>{status_code} {title}</title>\n\
         <style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:3em auto;\
         padding:0 1em;color:#222}}h1{{font-size:1.6em;margin-bottom:.2em}}\
         .reason{{font-size:1.1em;padding:.6em .8em;background:#fdf1e6;\
         border-left:4px solid #c60}}table{{border-collapse:collapse;margin:1em 0}}\
         th{{text-align:left;font-weight:normal;color:#666;padding:.15em 1em .15em 0;\
         vertical-align:top}}td{{padding:.15em 0;word-break:break-all}}\
         code{{background:#eee;padding:0 .3em}}footer{{color:#888;font-size:.85em}}</style>\n\
         </head><body>\n\
         <h1>{title}</h1>\n\
         <p class=\"reason\">{reason}</p>\n\
         <table>\n{rows}</table>\n\
         <p>{advice}</p>\n\
         <footer>Portcullis proxy &middot; {status_code} {canonical}</footer>\n\
         </body></html>\n",
        status_code = e(&v.status),
        title = e(&v.title),
        reason = e(&v.reason),
        advice = e(&advice(status, &v.contact)),
        canonical = e(status.canonical_reason().unwrap_or("")),
    )
}

/// `2025-11-26 12:00:00 UTC`
fn utc(time: SystemTime) -> String {
    let rfc = humantime::format_rfc3339_seconds(time).to_string();
    format!("{} UTC", rfc.trim_end_matches('Z').replacen('T', " ", 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::policy::{Builtin, Decider};

    const HOSTILE: &str = "<script>alert('x')</script>&\"{{host}}";

    fn error(status: StatusCode, rule: Option<Decider>, reason: &str) -> EdgeError {
        EdgeError {
            rule,
            ..EdgeError::new(crate::core::error::ErrorKind::Client, reason).with_status(status)
        }
    }

    fn at_noon() -> SystemTime {
        humantime::parse_rfc3339("2025-11-26T12:00:00Z").unwrap()
    }

    fn values() -> PageValues {
        let asked = Asked {
            method: "GET".into(),
            host: "mail.example".into(),
            port: Some(25),
            url: "http://mail.example:25/".into(),
        };
        let error = error(
            StatusCode::FORBIDDEN,
            Some(Decider::Builtin(Builtin::PortsHttp)),
            "port 25 (smtp) is not allowed for plain HTTP",
        );
        PageValues::new(
            &error,
            &asked,
            "192.168.1.20".parse().unwrap(),
            "the help desk",
            at_noon(),
        )
    }

    fn hostile_values() -> PageValues {
        PageValues {
            status: HOSTILE.into(),
            title: HOSTILE.into(),
            reason: HOSTILE.into(),
            rule: HOSTILE.into(),
            method: HOSTILE.into(),
            host: HOSTILE.into(),
            port: HOSTILE.into(),
            service: HOSTILE.into(),
            url: HOSTILE.into(),
            client: HOSTILE.into(),
            contact: HOSTILE.into(),
            time: HOSTILE.into(),
        }
    }

    const ALL: [&str; 12] = [
        "status", "title", "reason", "rule", "method", "host", "port", "service", "url", "client",
        "contact", "time",
    ];

    #[test]
    fn values_describe_the_refusal() {
        let v = values();
        assert_eq!(v.status, "403");
        assert_eq!(v.title, "Access refused");
        assert_eq!(v.rule, "ports.http");
        assert_eq!(v.port, "25");
        assert_eq!(v.service, "smtp");
        assert_eq!(v.client, "192.168.1.20");
        assert_eq!(v.time, "2025-11-26 12:00:00 UTC");
        for name in ALL {
            assert!(v.get(name).is_some(), "{name}");
        }
        assert_eq!(v.get("nope"), None);
    }

    #[test]
    fn builtin_page_says_what_who_and_whom_to_ask() {
        let page = render(&values(), None);
        for needle in [
            "<title>403 Access refused</title>",
            "<h1>Access refused</h1>",
            "port 25 (smtp) is not allowed for plain HTTP",
            "<code>GET http://mail.example:25/</code>",
            "<td>mail.example</td>",
            "<td>25 (smtp)</td>",
            "<td>ports.http</td>",
            "<td>192.168.1.20</td>",
            "<td>2025-11-26 12:00:00 UTC</td>",
            "ask the help desk.",
        ] {
            assert!(page.contains(needle), "{needle} missing in\n{page}");
        }
        // Self-contained: no scripts, no external resources.
        for banned in ["<script", "src=", "href=", "url(", "@import"] {
            assert!(!page.contains(banned), "{banned} in\n{page}");
        }
    }

    #[test]
    fn builtin_page_leaves_out_what_is_unknown() {
        let asked = Asked {
            method: "GET".into(),
            host: String::new(),
            port: None,
            url: "/".into(),
        };
        let error = EdgeError::new(crate::core::error::ErrorKind::Refused, "cannot connect");
        let v = PageValues::new(&error, &asked, "::1".parse().unwrap(), "Bob", at_noon());
        assert_eq!(v.rule, "");
        assert_eq!(v.service, "");
        let page = render(&v, None);
        assert!(page.contains("<h1>Cannot reach the site</h1>"));
        assert!(!page.contains("Decided by"));
        assert!(page.contains("<th>Port</th><td>unknown</td>"));
        assert!(page.contains("<td>::1</td>"));
    }

    #[test]
    fn builtin_page_escapes_every_value() {
        let page = render(&hostile_values(), None);
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("alert('x')"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;{{host}}"));
    }

    #[test]
    fn template_substitutes_every_variable_escaped() {
        let template: String = ALL.iter().map(|n| format!("[{n}={{{{{n}}}}}]\n")).collect();
        let out = render(&hostile_values(), Some(&template));
        let escaped = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;{{host}}";
        for name in ALL {
            assert!(
                out.contains(&format!("[{name}={escaped}]")),
                "{name}: {out}"
            );
        }
        assert!(!out.contains("<script"));

        let out = render(&values(), Some(&template));
        assert!(out.contains("[status=403]"));
        assert!(out.contains("[service=smtp]"));
        assert!(out.contains("[contact=the help desk]"));
    }

    #[test]
    fn template_is_substituted_in_one_pass() {
        let mut v = values();
        v.host = "{{contact}}".into();
        v.reason = "{{reason}}".into();
        let out = substitute("<p>{{host}} / {{reason}} / {{contact}}</p>", &v);
        assert_eq!(out, "<p>{{contact}} / {{reason}} / the help desk</p>");
    }

    #[test]
    fn unknown_and_broken_variables_stay_as_written() {
        let v = values();
        for (template, expected) in [
            ("{{nope}} {{host}}", "{{nope}} mail.example"),
            ("{{ host }}", "mail.example"),
            ("{{}}", "{{}}"),
            ("{{ a b }}", "{{ a b }}"),
            ("{{{host}}}", "{mail.example}"),
            ("{{{{port}}", "{{25"),
            ("{{host", "{{host"),
            ("}} {{port}} {{", "}} 25 {{"),
            ("{host}", "{host}"),
            ("{{HOST}}", "{{HOST}}"),
            ("é{{port}}ü", "é25ü"),
            ("", ""),
        ] {
            assert_eq!(substitute(template, &v), expected, "{template}");
        }
    }

    #[test]
    fn titles_follow_the_status() {
        assert_eq!(title(StatusCode::FORBIDDEN), "Access refused");
        assert_eq!(title(StatusCode::BAD_GATEWAY), "Cannot reach the site");
        assert_eq!(title(StatusCode::BAD_REQUEST), "Bad request");
        assert_eq!(
            title(StatusCode::PROXY_AUTHENTICATION_REQUIRED),
            "Proxy log-in required"
        );
        assert_eq!(title(StatusCode::GONE), "Request refused");
        assert_eq!(
            title(StatusCode::INTERNAL_SERVER_ERROR),
            "The request could not be completed"
        );
    }

    #[test]
    fn only_plain_http_requests_accepting_html_get_a_page() {
        let req = |method: &str, uri: &str, accept: Option<&str>| {
            let mut b = Request::builder().method(method).uri(uri);
            if let Some(accept) = accept {
                b = b.header(header::ACCEPT, accept);
            }
            b.body(()).unwrap()
        };
        let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        let asked = Asked::for_page(&req("GET", "http://127.0.0.1:25/x?y", Some(browser)));
        assert_eq!(
            asked,
            Some(Asked {
                method: "GET".into(),
                host: "127.0.0.1".into(),
                port: Some(25),
                url: "http://127.0.0.1:25/x?y".into(),
            })
        );
        let asked = Asked::for_page(&req("POST", "http://localhost/", Some("TEXT/HTML"))).unwrap();
        assert_eq!((asked.host.as_str(), asked.port), ("localhost", Some(80)));
        assert_eq!(
            Asked::for_page(&req("GET", "http://localhost/", None)),
            None
        );
        assert_eq!(
            Asked::for_page(&req("GET", "http://localhost/", Some("*/*"))),
            None
        );
        assert_eq!(
            Asked::for_page(&req("CONNECT", "localhost:443", Some(browser))),
            None
        );
        // Origin-form: the Host header names what was asked.
        let mut origin = req("GET", "/", Some(browser));
        origin
            .headers_mut()
            .insert(header::HOST, "[::1]:3128".parse().unwrap());
        let asked = Asked::for_page(&origin).unwrap();
        assert_eq!((asked.host.as_str(), asked.port), ("[::1]", Some(3128)));
        assert_eq!(split_host_port("[::1]"), ("[::1]".into(), None));
        assert_eq!(split_host_port("h:x"), ("h:x".into(), None));
    }
}
