//! What the proxy tells about itself: the access record (one per exchange), the access log
//! and its formats, and the live counters behind `/metrics` and `/status`.

pub mod access;
pub mod log;
pub mod stats;
