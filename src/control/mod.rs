//! Live levers over a running proxy: the admin listener, reloads and signals.

pub(crate) mod admin;
pub mod reload;
pub(crate) mod signal;
