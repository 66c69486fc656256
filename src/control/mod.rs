//! Live levers over a running proxy: the admin listener, reloads and signals.

pub mod admin;
pub mod reload;
pub mod signal;
