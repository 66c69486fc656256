//! One exchange (a request and its answer, or a tunnel): the context every handler of the
//! data path gets.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::Settings;
use crate::observe::access::PendingRecord;
use crate::proxy::state::ProxyState;

/// One request's context: the pending record and what the handlers need.
pub struct Exchange {
    /// The shared state.
    pub shared: Arc<ProxyState>,
    /// The configuration this request is served under (one snapshot, whatever reloads).
    pub settings: Arc<Settings>,
    /// The client's address.
    pub client: SocketAddr,
    /// The proxy address the request arrived on.
    pub local: SocketAddr,
    /// The authenticated user, when `[auth]` is on.
    pub user: Option<String>,
    /// What the group helper said about the user and the groups the rules name.
    pub groups: Vec<crate::core::policy::GroupAnswer>,
    /// The record, filled in as the request goes.
    pub record: PendingRecord,
    /// Held while the request's body is unread; forwarding takes it into the body it sends.
    pub body: Option<crate::proxy::conn::BodyGuard>,
}
