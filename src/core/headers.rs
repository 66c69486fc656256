//! Header hygiene of forwarded messages (RFC 9110 §7.6): the hop-by-hop fields, `Via`, the
//! transfer codings the proxy can pass on, the URI sent upstream, and the echo of a TRACE.
//! Pure functions of `http` types; the forwarding code in `proxy` applies them.

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri, Version};

use crate::core::error::{EdgeError, ErrorKind};

/// The transfer codings of a message other than `chunked`, as text, if any.
pub fn transfer_codings_besides_chunked(headers: &HeaderMap) -> Option<String> {
    let codings: Vec<&str> = transfer_codings(headers)
        .filter(|c| !c.eq_ignore_ascii_case("chunked"))
        .collect();
    (!codings.is_empty()).then(|| codings.join(", "))
}

/// The transfer codings of a message, in order, from every `Transfer-Encoding` field (a
/// value that is not text counts as one coding, `(not text)`).
pub fn transfer_codings(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .map(|v| v.to_str().unwrap_or("(not text)"))
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty())
}

/// The fields that are always hop-by-hop (lower case); `Connection` can name more.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// Whether `name` (any case) is one of [`HOP_BY_HOP`].
fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|field| field.eq_ignore_ascii_case(name))
}

/// Removes the hop-by-hop fields, including every field that `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One look at each name finds the fields present (usually `Connection` alone, or none):
    // removing just those is cheaper than a hashed removal for each of the eight.
    let present: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n.as_str()))
        .cloned()
        .collect();
    if present.is_empty() {
        return;
    }
    // Options naming the fields above (`keep-alive`, usually) are already among those present.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|name| !is_hop_by_hop(name))
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    for name in named.into_iter().chain(present) {
        headers.remove(name);
    }
}

/// This proxy's name in `Via` (RFC 9110 §7.6.3), with the field values for a message that
/// carries no `Via` yet made once, one for each protocol version received.
pub struct Via {
    name: String,
    alone: [HeaderValue; 3],
}

impl Via {
    /// `name` is a token (letters, digits, `-`).
    pub fn new(name: String) -> Via {
        let alone = ["1.0", "1.1", "2"].map(|version| {
            HeaderValue::from_str(&format!("{version} {name}"))
                .unwrap_or(HeaderValue::from_static("1.1 portcullis"))
        });
        Via { name, alone }
    }

    /// The name alone.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Appends this proxy to `Via`, with the protocol version it received.
pub fn append_via(headers: &mut HeaderMap, received: Version, via: &Via) {
    let ours = &via.alone[match received {
        Version::HTTP_10 => 0,
        Version::HTTP_2 => 2,
        _ => 1,
    }];
    let existing = headers.get(header::VIA).and_then(|v| v.to_str().ok());
    let Some(existing) = existing else {
        headers.insert(header::VIA, ours.clone());
        return;
    };
    let mut value = Vec::with_capacity(existing.len() + 2 + ours.len());
    value.extend_from_slice(existing.as_bytes());
    value.extend_from_slice(b", ");
    value.extend_from_slice(ours.as_bytes());
    if let Ok(value) = HeaderValue::from_bytes(&value) {
        headers.insert(header::VIA, value);
    }
}

/// The absolute URI the pooled client dials (`authority`) and rewrites to origin form.
pub fn upstream_uri(authority: String, original: &Uri) -> Result<Uri, EdgeError> {
    let unusable = || EdgeError::new(ErrorKind::Client, "the request target cannot be forwarded");
    // The path and query are kept as they came (a shared buffer, not a copy).
    let path = match original.path_and_query() {
        Some(pq) if pq.as_str().starts_with('/') => pq.clone(),
        Some(pq) if pq.as_str().starts_with('?') => {
            http::uri::PathAndQuery::try_from(format!("/{}", pq.as_str()))
                .map_err(|_| unusable())?
        }
        _ => http::uri::PathAndQuery::from_static("/"),
    };
    Uri::builder()
        .scheme(http::uri::Scheme::HTTP)
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| unusable())
}

/// The request as received, for TRACE; credentials and cookies are left out.
pub fn trace_echo(
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
) -> bytes::Bytes {
    let mut out = BytesMut::new();
    out.put_slice(format!("{method} {uri} {version:?}\r\n").as_bytes());
    for (name, value) in headers {
        if name == header::PROXY_AUTHORIZATION
            || name == header::AUTHORIZATION
            || name == header::COOKIE
        {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_fields_go_and_end_to_end_fields_stay() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "x-other"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("proxy-authenticate", "Basic"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("trailer", "x-checksum"),
            ("accept", "*/*"),
            ("content-length", "5"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["accept", "content-length", "trailer"]);
    }

    #[test]
    fn each_hop_by_hop_field_goes_when_alone() {
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
            "proxy-authenticate",
            "te",
            "transfer-encoding",
            "upgrade",
        ] {
            let mut h = headers(&[("accept", "*/*"), (name, "x"), ("host", "a.b")]);
            strip_hop_by_hop(&mut h);
            let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
            assert_eq!(left, vec!["accept", "host"], "{name}");
        }
    }

    #[test]
    fn via_is_appended() {
        let mut h = HeaderMap::new();
        append_via(&mut h, Version::HTTP_10, &Via::new("portcullis-1".into()));
        assert_eq!(h[header::VIA], "1.0 portcullis-1");
        append_via(&mut h, Version::HTTP_11, &Via::new("portcullis-2".into()));
        assert_eq!(h[header::VIA], "1.0 portcullis-1, 1.1 portcullis-2");
        append_via(&mut h, Version::HTTP_2, &Via::new("portcullis-3".into()));
        assert_eq!(
            h[header::VIA],
            "1.0 portcullis-1, 1.1 portcullis-2, 2 portcullis-3"
        );
        let mut h = HeaderMap::new();
        append_via(&mut h, Version::HTTP_2, &Via::new("p".into()));
        assert_eq!(h[header::VIA], "2 p");
    }

    #[test]
    fn upstream_uri_keeps_path_and_query() {
        let at = |text: &str| upstream_uri("example.com:8080".into(), &text.parse().unwrap());
        assert_eq!(
            at("http://example.com:8080/a/b?c=d").unwrap(),
            "http://example.com:8080/a/b?c=d"
        );
        assert_eq!(
            at("http://example.com:8080").unwrap(),
            "http://example.com:8080/"
        );
        assert_eq!(
            at("http://example.com:8080?q").unwrap(),
            "http://example.com:8080/?q"
        );
        let uri = upstream_uri(
            "10.0.0.5:8080".into(),
            &"http://example.com/x".parse().unwrap(),
        );
        assert_eq!(uri.unwrap(), "http://10.0.0.5:8080/x");
    }
}
