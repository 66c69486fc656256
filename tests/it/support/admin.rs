//! The admin listener as its users read it: a page fetched over a real socket, and
//! `/metrics` parsed by a Prometheus exposition parser (`prometheus-parse`), as a scraper
//! would.

use std::net::SocketAddr;

use super::raw::{raw, RawResponse};

/// GET `path` from the admin listener.
pub async fn admin_get(admin: SocketAddr, path: &str) -> RawResponse {
    raw(
        admin,
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
}

/// One scrape of `/metrics`.
pub struct Metrics {
    pub scrape: prometheus_parse::Scrape,
    /// The exposition as served, for messages.
    pub text: String,
}

impl Metrics {
    /// Scrapes the admin listener's `/metrics`; fails the test unless it answers 200 in the
    /// Prometheus text format 0.0.4, and it parses.
    pub async fn scrape(admin: SocketAddr) -> Metrics {
        let r = admin_get(admin, "/metrics").await;
        assert_eq!(r.status, 200);
        assert!(r
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        let text = r.text();
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        Metrics { scrape, text }
    }

    /// The value of the first sample of `metric` with all of `labels`.
    pub fn value(&self, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples(metric)
            .into_iter()
            .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    }

    /// Every sample of `metric`.
    pub fn samples(&self, metric: &str) -> Vec<&prometheus_parse::Sample> {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == metric)
            .collect()
    }

    /// Every sample, of any metric, with label `name` equal to `value`.
    pub fn labelled(&self, name: &str, value: &str) -> Vec<&prometheus_parse::Sample> {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.labels.get(name) == Some(value))
            .collect()
    }
}
