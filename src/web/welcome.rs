//! The proxy's own page: what someone who opens the proxy's address in a browser reads (how
//! to set the proxy up, and their own recent refusals), as HTML or as text.

use crate::observe::stats::RecentDenial;
use crate::web::html::escape_html;

pub(crate) fn welcome_text(host: &str) -> String {
    format!(
        "This is Portcullis, a web proxy, not a web site.\n\
         To browse through it, set {host} as the HTTP and HTTPS proxy in your browser's or \
         system's proxy settings (Windows: Internet Options > Connections > LAN settings), \
         or for command-line tools: export http_proxy=http://{host} https_proxy=http://{host}\n"
    )
}

pub(crate) fn welcome_html(host: &str) -> String {
    let host = escape_html(host);
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Portcullis proxy</title>\
         <style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em}}\
         code{{background:#eee;padding:0 .3em}}</style></head><body>\
         <h1>This is a web proxy</h1>\
         <p>You have reached <b>Portcullis</b>, the proxy that shares this network's internet \
         connection. It is not a web site.</p>\
         <p>To browse through it, set <code>{host}</code> as the proxy for HTTP and HTTPS:</p>\
         <ul><li>Windows: Settings &rarr; Network &amp; Internet &rarr; Proxy, or Internet \
         Options &rarr; Connections &rarr; LAN settings</li>\
         <li>macOS: System Settings &rarr; Network &rarr; Details &rarr; Proxies</li>\
         <li>Linux and command-line tools: <code>export http_proxy=http://{host} \
         https_proxy=http://{host}</code></li></ul>\
         </body></html>\n"
    )
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
}
