//! The pure core: what the proxy decides, as functions of plain data. Nothing here opens a
//! socket, reads a file, waits or reads the clock: std, `http`, `ipnet` and the crate's own
//! core types only (the tests at the end of `src/lib.rs` hold it so).

pub mod auth;
pub mod blocklist;
pub mod clock;
pub(crate) mod error;
pub(crate) mod headers;
pub mod hosts;
pub(crate) mod limits;
pub(crate) mod plan;
pub mod policy;
pub mod ports;
pub mod quota;
pub mod schedule;
pub mod shaping;
pub(crate) mod socks;
pub(crate) mod sync;
pub mod target;
