//! The only place sockets open outbound: resolve, check each address against the guards,
//! connect (to origins in [`dial`], to parent proxies in `parent`), the connection to the
//! shared store of byte budgets ([`store`]); and the other way the proxy asks the world
//! something, the helper programs of `[auth]` ([`helper`]). Also the counts by which bulk
//! transfers let light exchanges go first ([`express`]), which origin reads here act on.

pub mod dial;
pub mod express;
pub mod fetch;
pub mod helper;
pub(crate) mod parent;
pub mod resolve;
pub mod store;
