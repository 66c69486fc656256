//! The state every connection of the running proxy shares. It lives below the code that uses
//! it (the service, forwarding, tunnels, the admin listener, reloads), so none of them
//! imports another to reach it.

use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use hyper_util::client::legacy::Client;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::core::auth::helper::GroupCache;
use crate::core::auth::{CredentialCache, FailureTracker};
use crate::egress::dial::{Dialer, Outbound, OutboundError};
use crate::observe::access::Recorder;
use crate::observe::stats::Stats;
use crate::proxy::body::UpBody;

/// The pooled client that carries plain HTTP to origins.
pub type UpstreamClient = Client<Dialer, UpBody>;

/// What every connection of the running proxy shares: the settings in force, the recorder,
/// the pooled clients, the log-in memory, and the tasks to wait for on shutdown.
pub struct ProxyState {
    /// The validated configuration in force; a reload swaps it whole.
    pub live: Arc<ArcSwap<Settings>>,
    /// Where access records go (the statistics among them).
    pub recorder: Arc<Recorder>,
    /// Live counters of port use.
    pub stats: Arc<Stats>,
    /// Keep-alive connections to origins.
    pub client: UpstreamClient,
    /// The resolver, connect timeouts and source addresses dials use; rebuilt on reload
    /// (the resolver, and its cache, only when `[dns]`, `/etc/resolv.conf` or `/etc/hosts`
    /// changed).
    pub outbound: Arc<ArcSwap<Outbound>>,
    /// Parent proxies, when `[upstream]` names any; rebuilt on reload.
    pub parents: ArcSwapOption<crate::egress::parent::Parents<UpBody>>,
    /// Every connection and tunnel task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Cancelled when the shutdown grace period is over: cuts what is still open.
    pub hard_stop: CancellationToken,
    /// Verified credentials and failed log-ins; rebuilt on reload.
    pub login: ArcSwap<Login>,
    /// The helper programs of `[auth]`; a reload keeps those whose command is unchanged.
    pub helpers: ArcSwap<crate::egress::helper::Pools>,
    /// Open client connections, for `[limits]`.
    pub admission: Arc<crate::proxy::admission::Admission>,
    /// This proxy's name in `Via`, with a token unique to this process: a request that
    /// already carries it has looped back.
    pub via: crate::core::headers::Via,
    /// The shared link and the caps, when anything is shaped; rebuilt on reload (transfers
    /// under way keep the one they started with).
    pub shaper: ArcSwapOption<crate::proxy::shaper::Shaper>,
    /// Access records as syslog messages (`[log] syslog`), among the recorder's sinks; the
    /// proxy's exit lets it send what it holds.
    pub syslog: Arc<crate::observe::syslog::Syslog>,
    /// The counts of the byte budgets (`[[quotas]]`), kept in `[state] dir`; one for the
    /// process, whatever reloads change.
    pub budgets: Arc<crate::observe::budget::Budgets>,
    /// The store the budgets are shared through (`[state] store`), when there is one;
    /// rebuilt on reload when its URL or `instance` changes.
    pub store: ArcSwapOption<crate::egress::store::Store>,
    /// The light exchanges in flight, for which bulk transfers take short turns (the same
    /// counts as the outbound side's, which origin reads act on).
    pub express: Arc<crate::egress::express::Express>,
}

/// What authentication remembers between requests.
pub struct Login {
    /// Credentials verified recently (`[auth] cache`).
    pub credentials: CredentialCache,
    /// Failed log-ins per client address (`[auth] max_failures`).
    pub failures: FailureTracker,
    /// Group answers (`[auth.groups] ttl`, `negative_ttl`).
    pub groups: GroupCache,
}

impl Login {
    fn new(settings: &Settings) -> Login {
        let auth = settings
            .auth
            .as_ref()
            .map(|a| a.config.clone())
            .unwrap_or_default();
        Login {
            groups: GroupCache::new(
                auth.groups.ttl,
                auth.groups.negative_ttl,
                GROUP_CACHE_ENTRIES,
            ),
            credentials: CredentialCache::new(auth.cache, CREDENTIAL_CACHE_ENTRIES),
            failures: FailureTracker::new(
                auth.max_failures,
                auth.failure_window,
                auth.block_for,
                FAILURE_TRACKER_ENTRIES,
            ),
        }
    }
}

fn parents_for(
    settings: &Settings,
    outbound: &Arc<Outbound>,
) -> Option<Arc<crate::egress::parent::Parents<UpBody>>> {
    settings.upstream.as_ref().map(|u| {
        Arc::new(crate::egress::parent::Parents::new(
            u,
            outbound.clone(),
            settings.timeouts.origin_write(),
        ))
    })
}

impl ProxyState {
    /// Builds the shared state (the resolver and the upstream client among it) from
    /// validated settings.
    pub fn new(settings: Settings, recorder: Recorder) -> Result<Self, OutboundError> {
        let outbound = Arc::new(Outbound::new(&settings, None)?);
        let live = Arc::new(ArcSwap::from_pointee(settings));
        let settings = live.load_full();
        let parents = parents_for(&settings, &outbound);
        let express = outbound.express.clone();
        let outbound = Arc::new(ArcSwap::new(outbound));
        let client =
            crate::egress::dial::pooled_client().build(Dialer::new(live.clone(), outbound.clone()));
        let stats = Arc::new(Stats::with_dropped_counter(recorder.dropped_counter()));
        let shaper = crate::proxy::shaper::Shaper::new(&settings.shaping, &stats, None);
        let syslog = Arc::new(crate::observe::syslog::Syslog::new(
            &settings,
            stats.syslog_dropped.clone(),
        ));
        let budgets = Arc::new(crate::observe::budget::Budgets::open(
            &settings.state_dir,
            jiff::Timestamp::now(),
        ));
        Ok(ProxyState {
            live,
            recorder: Arc::new(recorder.with_sink(stats.clone()).with_sink(syslog.clone())),
            syslog,
            stats,
            client,
            outbound,
            parents: ArcSwapOption::new(parents),
            tracker: TaskTracker::new(),
            hard_stop: CancellationToken::new(),
            login: ArcSwap::from_pointee(Login::new(&settings)),
            helpers: ArcSwap::from_pointee(crate::egress::helper::Pools::for_settings(
                &settings, None,
            )),
            admission: Arc::default(),
            via: crate::core::headers::Via::new(format!("portcullis-{:08x}", instance_token())),
            shaper: ArcSwapOption::new(shaper),
            budgets,
            store: ArcSwapOption::new(crate::proxy::budget::store_for(&settings, None)),
            express,
        })
    }

    /// The configuration in force now.
    pub fn settings(&self) -> Arc<Settings> {
        self.live.load_full()
    }

    /// Puts new settings in force for new requests: the outbound side, parents and log-in
    /// state follow them. Requests and tunnels already running keep the settings they
    /// started with. Nothing changes when the outbound side cannot be built.
    pub fn swap(&self, settings: Settings) -> Result<(), OutboundError> {
        let outbound = Arc::new(Outbound::new(&settings, Some(&self.outbound.load()))?);
        self.parents.store(parents_for(&settings, &outbound));
        self.outbound.store(outbound);
        self.login.store(Arc::new(Login::new(&settings)));
        let helpers =
            crate::egress::helper::Pools::for_settings(&settings, Some(&self.helpers.load()));
        self.helpers.store(Arc::new(helpers));
        self.shaper.store(crate::proxy::shaper::Shaper::new(
            &settings.shaping,
            &self.stats,
            self.shaper.load().as_deref(),
        ));
        crate::proxy::lists::carry_over(&self.live.load(), &settings);
        self.budgets.keep_in(&settings.state_dir);
        self.store.store(crate::proxy::budget::store_for(
            &settings,
            self.store.load_full(),
        ));
        self.live.store(Arc::new(settings));
        Ok(())
    }
}

/// Verified credentials remembered at most (each a hash and a user name).
const CREDENTIAL_CACHE_ENTRIES: usize = 4096;
/// Group answers remembered at most (each a user, a group and a verdict).
const GROUP_CACHE_ENTRIES: usize = 16_384;
/// Client addresses whose failed log-ins are remembered at most.
const FAILURE_TRACKER_ENTRIES: usize = 16_384;

/// A random number for this process, from the standard library's randomly keyed hasher.
fn instance_token() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish() as u32
}
