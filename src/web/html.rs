//! Small helpers of the pages people read.

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Whether any `Accept` header value names `text/html` (media types are case-insensitive).
pub fn accepts_html(headers: &http::HeaderMap) -> bool {
    headers.get_all(http::header::ACCEPT).iter().any(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .to_ascii_lowercase()
            .contains("text/html")
    })
}

/// A page of the proxy's own (an error, its own page, the admin pages): `body` with
/// `status`, its `content_type`, and `Cache-Control: no-store`, since what it says is true now
/// and for this client only.
pub fn own_answer<B>(
    status: http::StatusCode,
    content_type: &'static str,
    body: B,
) -> http::Response<B> {
    let mut response = http::Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape_html("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn html_is_wanted_whatever_the_case() {
        let mut headers = http::HeaderMap::new();
        assert!(!accepts_html(&headers));
        headers.append(http::header::ACCEPT, "text/plain".parse().unwrap());
        assert!(!accepts_html(&headers));
        headers.append(http::header::ACCEPT, "Text/HTML;q=0.9".parse().unwrap());
        assert!(accepts_html(&headers));
    }
}
