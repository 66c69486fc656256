//! What the proxy tells about itself: the access record (one per exchange), the access log
//! and its formats, the live counters behind `/metrics` and `/status`, and their Prometheus
//! exposition.

pub mod access;
pub mod budget;
pub mod format;
pub mod log;
pub(crate) mod metrics;
pub mod state_file;
pub(crate) mod stats;
pub mod syslog;
