//! The data path: listeners, connections, the hyper service, forwarding, tunnels and bodies.
//!
//! The order inside: `listener` → {`service`, `socks` → `socks_udp`} → {`forward`, `tunnel`,
//! `pages`, `authenticate`, `respond`, `budget`} → {`exchange`, `body`} → {`conn`, `admission`, `state`}; nothing imports
//! upward.

pub mod admission;
pub mod authenticate;
pub mod body;
pub mod budget;
pub mod conn;
pub mod exchange;
pub mod forward;
pub mod listener;
pub mod lists;
pub mod pages;
pub(crate) mod relay;
pub mod respond;
pub mod service;
pub mod shaper;
pub mod socks;
pub mod socks_udp;
pub mod state;
pub mod tunnel;
pub(crate) mod window;
