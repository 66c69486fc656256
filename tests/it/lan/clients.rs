//! The PCs of the LAN as the proxy sees them: two browsing at once are told apart by their
//! addresses in the access log, `/metrics` and `portcullis report`; a PC outside
//! `clients.allow` is refused.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::*;
use crate::support::dns::{Answer, Zone};
use crate::support::netns::*;
use crate::support::{hex, pattern_sha256, portcullis, HttpOrigin};

/// The sample of `metric` whose labels include `labels`, from a Prometheus text exposition.
fn sample(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pcs_at_once_are_told_apart_in_the_log_the_metrics_and_the_report() {
    let Some(lan) = Lan::build(2) else { return };
    let web = server_v4(10);
    let _dns = start_dns(&lan, Zone::new().with("www.example", Answer::v4(&[web])));
    let _http = HttpOrigin::start_on(lan.internet.listen(at(web, 80)));
    let _proxy_process = lan.start_proxy(&Conf::default().text(&lan));
    let proxy = format!("http://{}", proxy_v4());
    let (pc0, pc1) = (&lan.pcs[0], &lan.pcs[1]);
    let upload = lan.dir.path().join("upload");
    std::fs::write(&upload, vec![b'u'; 200_000]).unwrap();
    let upload_arg = format!("@{}", upload.display());

    // PC 0 downloads 3 MB while PC 1 downloads 1.2 MB and uploads 200 kB.
    let (down0, down1, up1) = tokio::join!(
        pc0.ns
            .curl(&["-x", &proxy, "http://www.example/bytes/3000000"]),
        pc1.ns
            .curl(&["-x", &proxy, "http://www.example/bytes/1234567"]),
        pc1.ns.curl(&[
            "-x",
            &proxy,
            "--data-binary",
            &upload_arg,
            "-H",
            "Content-Type: application/octet-stream",
            "http://www.example/sha256",
        ]),
    );
    for (curl, n) in [(&down0, 3_000_000), (&down1, 1_234_567)] {
        assert_eq!(curl.code, 200, "{}", curl.stderr);
        assert_eq!(hex(&Sha256::digest(&curl.body)), pattern_sha256(n));
    }
    assert_eq!(up1.code, 200, "{}", up1.stderr);
    assert!(up1.text().ends_with(" 200000"), "{}", up1.text());

    // The access log: every byte under the PC that moved it.
    let records = {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let records = access_log(&lan);
            if records.len() >= 3 {
                break records;
            }
            assert!(std::time::Instant::now() < deadline, "{records:#?}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let mut per_client: BTreeMap<String, (u64, u64, String)> = BTreeMap::new();
    for r in &records {
        let entry = per_client
            .entry(r["client"].as_str().unwrap().to_owned())
            .or_default();
        entry.0 += r["bytes_up"].as_u64().unwrap();
        entry.1 += r["bytes_down"].as_u64().unwrap();
        entry.2 = r["client_name"].as_str().unwrap_or_default().to_owned();
    }
    let (ip0, ip1) = (pc0.v4.to_string(), pc1.v4.to_string());
    let up1_answer = up1.body.len() as u64;
    assert_eq!(
        per_client,
        BTreeMap::from([
            (ip0.clone(), (0, 3_000_000, "pc0".to_owned())),
            (
                ip1.clone(),
                (200_000, 1_234_567 + up1_answer, "pc1".to_owned())
            ),
        ])
    );

    // /metrics, from the gateway's loopback.
    let metrics = _proxy_process.admin("/metrics").await;
    assert_eq!(metrics.status, 200);
    let scrape =
        prometheus_parse::Scrape::parse(metrics.text().lines().map(|l| Ok(l.to_owned()))).unwrap();
    for (ip, name, up, down) in [
        (&ip0, "pc0", 0, 3_000_000),
        (&ip1, "pc1", 200_000, 1_234_567 + up1_answer),
    ] {
        let labels = [("client", ip.as_str()), ("name", name)];
        assert_eq!(
            sample(&scrape, "portcullis_client_bytes_down_total", &labels),
            Some(down as f64),
            "{ip}"
        );
        assert_eq!(
            sample(&scrape, "portcullis_client_bytes_up_total", &labels),
            Some(up as f64),
            "{ip}"
        );
    }
    assert_eq!(
        sample(
            &scrape,
            "portcullis_client_requests_total",
            &[("client", &ip1)]
        ),
        Some(2.0)
    );

    // `portcullis report --by client` over the log.
    let log = access_log_path(&lan);
    let report = portcullis(
        &[
            "report",
            "--by",
            "client",
            "--format",
            "json",
            log.to_str().unwrap(),
        ],
        "",
    );
    assert!(report.status.success(), "{}", report.stderr);
    let rows: Vec<Value> = serde_json::from_slice(&report.stdout).unwrap();
    let row = |ip: &str| {
        rows.iter()
            .find(|r| r["client"] == ip)
            .unwrap_or_else(|| panic!("no row for {ip}: {rows:#?}"))
            .clone()
    };
    assert_eq!(row(&ip0)["bytes_down"], 3_000_000);
    assert_eq!(row(&ip0)["requests"], 1);
    assert_eq!(row(&ip1)["bytes_down"], 1_234_567 + up1_answer);
    assert_eq!(row(&ip1)["bytes_up"], 200_000);
    assert_eq!(row(&ip1)["requests"], 2);
    assert_eq!(rows.len(), 2, "{rows:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pc_outside_clients_allow_is_refused() {
    let Some(lan) = Lan::build(3) else { return };
    let web = server_v4(10);
    let _dns = start_dns(&lan, Zone::new().with("www.example", Answer::v4(&[web])));
    let http = HttpOrigin::start_on(lan.internet.listen(at(web, 80)));
    let _proxy = lan.start_proxy(&Conf::default().text(&lan));
    let outsider = &lan.pcs[2];

    for proxy in [proxy_v4(), proxy_v6()] {
        let curl = outsider
            .ns
            .curl(&["-x", &format!("http://{proxy}"), "http://www.example/"])
            .await;
        assert_eq!(curl.code, 403, "{}: {}", proxy, curl.text());
    }
    // An allowed PC, for comparison, is served.
    let allowed = lan.pcs[1]
        .ns
        .curl(&[
            "-x",
            &format!("http://{}", proxy_v4()),
            "http://www.example/",
        ])
        .await;
    assert_eq!(allowed.code, 200, "{}", allowed.stderr);
    assert_eq!(
        http.accepts(),
        1,
        "only the allowed PC's request reached the origin"
    );

    let refused = wait_record(&lan, |r| r["client"] == outsider.v4.to_string()).await;
    assert_eq!(refused["status"], 403, "{refused}");
    assert_eq!(refused["rule"], "clients.allow", "{refused}");
    assert_eq!(refused["client_name"], "pc2");
    let refused = wait_record(&lan, |r| r["client"] == outsider.v6.to_string()).await;
    assert_eq!(refused["rule"], "clients.allow", "{refused}");
}
