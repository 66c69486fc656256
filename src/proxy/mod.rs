//! The data path: listeners, connections, the hyper service, forwarding, tunnels and bodies.

pub mod admission;
pub mod body;
pub mod conn;
pub mod forward;
pub mod listener;
pub mod pages;
pub mod service;
pub mod tunnel;
