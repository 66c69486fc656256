//! The real proxy, started in this process on `127.0.0.1:0` (or another address, `[::]:0`
//! say), and the access records it makes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis::{AccessRecord, AccessSink, Config, Recorder, Settings};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::WAIT;

/// A proxy running in this process.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The admin listener, when started with one.
    pub admin: Option<SocketAddr>,
    records: Arc<Mutex<Vec<AccessRecord>>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

struct Collect(Arc<Mutex<Vec<AccessRecord>>>);

impl AccessSink for Collect {
    fn record(&self, record: &AccessRecord) {
        self.0.lock().unwrap().push(record.clone());
    }
}

impl Proxy {
    /// Starts the proxy on `127.0.0.1:0` with the configuration in `toml` (its `listen` is
    /// replaced).
    pub async fn start(toml: &str) -> Proxy {
        Proxy::start_with(settings_of(toml)).await
    }

    /// Starts the proxy on `127.0.0.1:0` with validated settings (their `listen` is replaced).
    pub async fn start_with(settings: Settings) -> Proxy {
        Proxy::start_observed(settings, false, None).await
    }

    /// Starts the proxy with an admin listener on `127.0.0.1:0` when `admin`, and `sink`
    /// (an access log, say) among its record sinks.
    pub async fn start_observed(
        settings: Settings,
        admin: bool,
        sink: Option<Arc<dyn AccessSink>>,
    ) -> Proxy {
        Proxy::start_listening("127.0.0.1:0", settings, admin, sink.into_iter().collect()).await
    }

    /// Starts the proxy listening on `listen` (`[::]:0`, `[::1]:0` …), with an admin listener
    /// on `127.0.0.1:0` when `admin`, and `sinks` (access logs, say) among its record sinks.
    pub async fn start_listening(
        listen: &str,
        settings: Settings,
        admin: bool,
        sinks: Vec<Arc<dyn AccessSink>>,
    ) -> Proxy {
        let listener = TcpListener::bind(listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin_listener = if admin {
            Some(TcpListener::bind("127.0.0.1:0").await.unwrap())
        } else {
            None
        };
        let admin_addr = admin_listener.as_ref().map(|l| l.local_addr().unwrap());
        let records = Arc::new(Mutex::new(Vec::new()));
        let mut recorder = Recorder::new().with_sink(Arc::new(Collect(records.clone())));
        for sink in sinks {
            recorder = recorder.with_sink(sink);
        }
        let (tx, rx) = oneshot::channel::<()>();
        // `serve` takes the policy's listen addresses from the listeners as bound.
        let task = tokio::spawn(portcullis::serve(
            vec![listener],
            admin_listener,
            settings,
            recorder,
            None,
            async {
                let _ = rx.await;
            },
        ));
        Proxy {
            addr,
            admin: admin_addr,
            records,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// The records so far.
    pub fn records(&self) -> Vec<AccessRecord> {
        self.records.lock().unwrap().clone()
    }

    /// Waits until at least `n` records exist and returns them all.
    pub async fn wait_records(&self, n: usize) -> Vec<AccessRecord> {
        self.wait_until(&format!("{n} access records"), |records| records.len() >= n)
            .await
    }

    /// Waits until `done` holds of the records and returns them all; fails the test, saying
    /// it expected `what`, when it does not within `WAIT`.
    pub async fn wait_until(
        &self,
        what: &str,
        done: impl Fn(&[AccessRecord]) -> bool,
    ) -> Vec<AccessRecord> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let records = self.records();
            if done(&records) {
                return records;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {what}, have {}: {records:#?}",
                records.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Asks the proxy to shut down and waits for `run` to return.
    pub async fn stop(mut self) -> std::io::Result<()> {
        self.begin_stop();
        self.join().await
    }

    /// Sends the shutdown signal without waiting.
    pub fn begin_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for `run` to return (after [`Proxy::begin_stop`]).
    pub async fn join(&mut self) -> std::io::Result<()> {
        let task = self.task.take().expect("joined once");
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the proxy stops within 30 s")
            .expect("the proxy task does not panic")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The validated settings of the configuration in `toml`.
pub fn settings_of(toml: &str) -> Settings {
    Config::from_toml(toml, "test")
        .expect("test config parses")
        .validate("test")
        .expect("test config is valid")
}
