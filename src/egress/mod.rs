//! The only place sockets open outbound: resolve, check each address against the guards,
//! connect (to origins in [`dial`], to parent proxies in `parent`), and the connection to the
//! shared store of byte budgets ([`store`]).

pub mod dial;
pub mod fetch;
pub(crate) mod parent;
pub mod resolve;
pub mod store;
