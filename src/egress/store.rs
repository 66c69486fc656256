//! The shared store of byte budgets (`[state] store = "redis://host:6379/0"`, Redis or
//! Valkey): the one outbound connection that is not to a destination or a parent. Every proxy
//! that names the same store keeps one budget per quota, key and period there.
//!
//! Each count is a hash, `portcullis:quota:<period start>:<quota, hex>:<key>`, that expires a
//! day after its period ends; each proxy writes one field of it, its own name (`instance`),
//! with the bytes *it* counted in the period, and the total is the sum of the fields. One Lua
//! script per count does it atomically: the field becomes the larger of what it held and what
//! the proxy sends, the expiry is set, and the script answers that field and the total. So
//! the writes are idempotent (sent twice, counted once), a proxy that was cut off from the
//! store merges back by writing its field again when the store returns (nothing is counted
//! twice, nothing lost), and a store that lost its data (a restart without persistence) is
//! filled again by every proxy's next write.
//!
//! Connecting, and every round trip, is bounded by [`TIMEOUT`]; a failed connection is
//! dropped and made again at the next sync.

use std::time::Duration;

use tokio::sync::Mutex;

/// The most a connection or one sync's round trip may take.
pub const TIMEOUT: Duration = Duration::from_secs(1);

/// Counts sent in one pipeline at most.
const BATCH: usize = 1000;

/// Sets this proxy's field to the larger of what it holds and ARGV[2], the expiry to ARGV[3];
/// answers {this proxy's field, the sum of all fields}.
const SCRIPT: &str = r#"
local held = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local mine = tonumber(ARGV[2])
if mine > held then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) else mine = held end
redis.call('EXPIREAT', KEYS[1], ARGV[3])
local total = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do total = total + tonumber(v) end
return {mine, total}
"#;

/// One count as this proxy sends it.
#[derive(Debug, Clone)]
pub struct Share {
    /// The quota's name.
    pub quota: String,
    /// Whose count: an address or a user.
    pub key: String,
    /// When its period started, seconds since the epoch (the same on every proxy that
    /// reads periods in the same time zone).
    pub start: i64,
    /// When the store may forget it, seconds since the epoch.
    pub expire_at: i64,
    /// The bytes this proxy counted in the period.
    pub mine: u64,
}

/// What the store holds of a count after a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shared {
    /// This proxy's part (at least what it sent).
    pub mine: u64,
    /// Every proxy's parts together.
    pub total: u64,
}

/// Why a sync failed: the store's words.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(String);

/// The connection to the store.
pub struct Store {
    client: redis::Client,
    /// The URL as configured.
    url: String,
    /// The URL without a password, for messages.
    shown: String,
    /// This proxy's field in every count.
    field: String,
    connection: Mutex<Option<redis::aio::MultiplexedConnection>>,
}

impl Store {
    /// The store at `url` (`redis://[:password@]host:port/db`), where this proxy writes as
    /// `field`. Nothing is connected until the first sync.
    pub fn new(url: &str, field: &str) -> Result<Store, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        Ok(Store {
            client,
            url: url.to_owned(),
            shown: crate::config::mask_credentials(url),
            field: field.to_owned(),
            connection: Mutex::new(None),
        })
    }

    /// The URL without a password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Whether this is the store at `url` written to as `field`.
    pub fn is(&self, url: &str, field: &str) -> bool {
        self.url == url && self.field == field
    }

    /// Writes this proxy's part of every count of `shares` and reads back the totals, in
    /// the same order.
    pub async fn sync(&self, shares: &[Share]) -> Result<Vec<Shared>, StoreError> {
        let mut held = self.connection.lock().await;
        let connection = match held.as_mut() {
            Some(connection) => connection,
            None => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(TIMEOUT))
                    .set_response_timeout(Some(TIMEOUT));
                let made = self
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(|e| StoreError(e.to_string()))?;
                held.insert(made)
            }
        };
        let mut out = Vec::with_capacity(shares.len());
        for batch in shares.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for share in batch {
                pipe.cmd("EVAL")
                    .arg(SCRIPT)
                    .arg(1)
                    .arg(key_of(share))
                    .arg(&self.field)
                    .arg(share.mine)
                    .arg(share.expire_at);
            }
            let answered: Result<Vec<(u64, u64)>, _> =
                match tokio::time::timeout(TIMEOUT, pipe.query_async(connection)).await {
                    Ok(answered) => answered.map_err(|e| StoreError(e.to_string())),
                    Err(_) => Err(StoreError(format!(
                        "no answer within {}",
                        humantime::format_duration(TIMEOUT)
                    ))),
                };
            match answered {
                Ok(answered) => out.extend(
                    answered
                        .into_iter()
                        .map(|(mine, total)| Shared { mine, total }),
                ),
                Err(e) => {
                    // Made again at the next sync.
                    *held = None;
                    return Err(e);
                }
            }
        }
        Ok(out)
    }
}

/// The name of a count in the store: the period's start, the quota's name in hex (any
/// character may be in it), and the key.
fn key_of(share: &Share) -> String {
    let hex: String = share.quota.bytes().map(|b| format!("{b:02x}")).collect();
    format!("portcullis:quota:{}:{hex}:{}", share.start, share.key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_named_by_their_period_quota_and_key() {
        let share = Share {
            quota: "a:b".into(),
            key: "2001:db8::1".into(),
            start: 1_796_000_000,
            expire_at: 0,
            mine: 0,
        };
        assert_eq!(
            key_of(&share),
            "portcullis:quota:1796000000:613a62:2001:db8::1"
        );
    }
}
