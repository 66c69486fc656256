//! The only place sockets open outbound: resolve, check each address against the guards,
//! connect (to origins in [`dial`], to parent proxies in `parent`).

pub mod dial;
pub mod fetch;
pub(crate) mod parent;
pub mod resolve;
