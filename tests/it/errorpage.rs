//! Error pages through the real proxy: browsers (plain HTTP, `Accept: text/html`) get an HTML
//! page naming what was refused, by what and whom to ask; every other client keeps the
//! one-line text; `[pages] dir` replaces the page with the owner's template.

use std::path::Path;

use crate::support::*;
use portcullis::Config;

const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

/// `GET url` through the proxy as a browser sends it.
async fn browse(proxy: std::net::SocketAddr, url: &str, extra: &str) -> RawResponse {
    get_with(proxy, url, &format!("Accept: {BROWSER_ACCEPT}\r\n{extra}")).await
}

fn assert_html(r: &RawResponse) {
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/html; charset=utf-8"),
        "{}",
        r.head
    );
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    let body = r.text();
    assert!(body.starts_with("<!doctype html>"), "{body}");
    for banned in ["<script", "src=", "href=", "@import"] {
        assert!(!body.contains(banned), "{banned} in {body}");
    }
}

#[tokio::test]
async fn a_browser_gets_a_page_other_clients_the_line() {
    let proxy = Proxy::start(
        "[destinations]\nallow_loopback = true\n\
         [pages]\ncontact = \"Dana <dana@example.net>, desk 4\"\n",
    )
    .await;

    let r = browse(proxy.addr, "http://127.0.0.1:25/", "").await;
    assert_eq!(r.status, 403);
    assert_html(&r);
    let body = r.text();
    for needle in [
        "<h1>Access refused</h1>",
        "port 25 (smtp) is not allowed for plain HTTP",
        "<code>GET http://127.0.0.1:25/</code>",
        "<td>127.0.0.1</td>",
        "<td>25 (smtp)</td>",
        "<td>ports.http</td>",
        "ask Dana &lt;dana@example.net&gt;, desk 4.",
        " UTC</td>",
    ] {
        assert!(body.contains(needle), "{needle} missing in\n{body}");
    }

    // The record keeps the one-line reason.
    let records = proxy.wait_records(1).await;
    let record = &records[0];
    assert_eq!(record.status, 403);
    assert_eq!(record.rule, "ports.http");
    assert_eq!(
        record.reason.as_deref(),
        Some("port 25 (smtp) is not allowed for plain HTTP")
    );
    assert_eq!((record.host.as_str(), record.port), ("127.0.0.1", 25));

    // Without text/html in Accept: the line, as before.
    for accept in ["", "Accept: */*\r\n", "Accept: application/json\r\n"] {
        let r = get_with(proxy.addr, "http://127.0.0.1:23/", accept).await;
        assert_eq!(r.status, 403);
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(
            r.text(),
            "port 23 (telnet) is not allowed for plain HTTP (decided by ports.http)\n"
        );
    }

    // CONNECT never gets a page, whatever it accepts.
    let r = raw(
        proxy.addr,
        format!(
            "CONNECT 127.0.0.1:25 HTTP/1.1\r\nHost: 127.0.0.1:25\r\nAccept: {BROWSER_ACCEPT}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(
        r.text(),
        "port 25 (smtp) is not allowed for CONNECT (decided by ports.connect)\n"
    );
    let (r, _) = connect(proxy.addr, "127.0.0.1:25").await;
    assert_eq!(r.status, 403);
    assert!(r.text().ends_with("(decided by ports.connect)\n"));

    assert_eq!(proxy.wait_records(6).await.len(), 6);
}

#[tokio::test]
async fn a_login_page_keeps_the_challenge() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.htpasswd");
    let hash = bcrypt::hash("alice pw", 4).unwrap();
    std::fs::write(&users, format!("alice:{hash}\n")).unwrap();
    let proxy = Proxy::start(&format!(
        "[destinations]\nallow_loopback = true\n\
         [auth]\nhtpasswd = {:?}\nrealm = \"the office\"\n\
         [pages]\ncontact = \"the office manager\"\n",
        users.display().to_string()
    ))
    .await;

    let r = browse(proxy.addr, "http://127.0.0.1:21/", "").await;
    assert_eq!(r.status, 407);
    assert_html(&r);
    assert_eq!(
        r.header("proxy-authenticate").as_deref(),
        Some("Basic realm=\"the office\", charset=\"UTF-8\"")
    );
    let body = r.text();
    assert!(body.contains("<h1>Proxy log-in required</h1>"), "{body}");
    assert!(body.contains("this proxy needs a user name and password"));
    assert!(body.contains("<td>auth</td>"));
    assert!(body.contains("ask the office manager."));
    assert!(body.contains("<td>21 (ftp)</td>"), "{body}");
}

#[tokio::test]
async fn an_unreachable_origin_is_a_502_page() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let proxy = Proxy::start(&loopback_config(&[closed], &[])).await;
    let url = format!("http://127.0.0.1:{closed}/index.html");

    let r = browse(proxy.addr, &url, "").await;
    assert_eq!(r.status, 502);
    assert_html(&r);
    let body = r.text();
    assert!(body.contains("<h1>Cannot reach the site</h1>"), "{body}");
    assert!(body.contains(&format!("<code>GET {url}</code>")), "{body}");
    assert!(body.contains("cannot connect to 127.0.0.1:"), "{body}");
    assert!(!body.contains("Decided by"), "no rule refused it: {body}");
    assert!(
        body.contains("ask the person who runs this network."),
        "{body}"
    );

    let r = get(proxy.addr, &url).await;
    assert_eq!(r.status, 502);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert!(r.text().starts_with("cannot connect to 127.0.0.1:"));
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn the_owners_template_replaces_the_page() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("pages")).unwrap();
    write(
        &dir.path().join("pages/error.html"),
        "<html><body><h1>{{status}} {{title}}</h1>\
         <p id=reason>{{reason}}</p><p id=rule>{{rule}}</p>\
         <p id=asked>{{method}} {{url}} host={{host}} port={{port}} service={{service}}</p>\
         <p id=who>{{client}} at {{time}}; ask {{contact}}</p>\
         <p id=unknown>{{owner_note}}</p></body></html>\n",
    );
    let config_path = dir.path().join("portcullis.toml");
    write(
        &config_path,
        "[destinations]\nallow_loopback = true\n\
         [pages]\ndir = \"pages\"\ncontact = \"IT & {{contact}} 'desk'\"\n",
    );
    let config = Config::load(&config_path).unwrap();
    let settings = config.validate(&config_path.display().to_string()).unwrap();
    let proxy = Proxy::start_with(settings).await;

    let r = browse(proxy.addr, "http://127.0.0.1:25/", "").await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    let body = r.text();
    for needle in [
        "<h1>403 Access refused</h1>",
        "<p id=reason>port 25 (smtp) is not allowed for plain HTTP</p>",
        "<p id=rule>ports.http</p>",
        "<p id=asked>GET http://127.0.0.1:25/ host=127.0.0.1 port=25 service=smtp</p>",
        "<p id=who>127.0.0.1 at ",
        " UTC; ask IT &amp; {{contact}} &#39;desk&#39;</p>",
        "<p id=unknown>{{owner_note}}</p>",
    ] {
        assert!(body.contains(needle), "{needle} missing in\n{body}");
    }

    // A hostile URL comes out escaped (hyper itself refuses `<`, `>` and `"` in a request
    // target), and percent-escapes are shown as sent, not decoded.
    let r = browse(
        proxy.addr,
        "http://127.0.0.1:25/x'onmouseover='alert(1)'%3Cscript%3E?a=1&b={{host}}",
        "",
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.head);
    let body = r.text();
    assert!(!body.contains("'onmouseover"), "{body}");
    assert!(
        body.contains(
            "GET http://127.0.0.1:25/x&#39;onmouseover=&#39;alert(1)&#39;%3Cscript%3E\
             ?a=1&amp;b={{host}} host=127.0.0.1 port=25"
        ),
        "{body}"
    );

    // A hostile Host header (named on an origin-form request the proxy refuses) too.
    let r = raw(
        proxy.addr,
        format!(
            "GET /#frag HTTP/1.1\r\nHost: <img onerror=\"x\">:80\r\nAccept: {BROWSER_ACCEPT}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.head);
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    let body = r.text();
    assert!(!body.contains("<img"), "{body}");
    assert!(
        body.contains("host=&lt;img onerror=&quot;x&quot;&gt; port=80 service=http"),
        "{body}"
    );
    assert!(body.contains("<h1>400 Bad request</h1>"), "{body}");
}
