//! The rule-shaped parts of the configuration file as written: `[[rules]]` entries, and the
//! caps of `[[limits.rate]]`, whose matchers are a rule's.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::schema::Network;
use crate::core::ports::PortSpec;

/// `[[limits.rate]]`: a cap on what the clients a rule's matchers pick may move, each client
/// (or user) across all its connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateCapConfig {
    /// Shown in `explain`, the status page and the record.
    pub name: String,
    /// Client networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<Vec<Network>>,
    /// Authenticated users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<String>>,
    /// Destination host patterns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
    /// Destination ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PortSpec>>,
    /// Request methods (`CONNECT`, `GET`, `SOCKS5` …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// The cap towards the client (`"5Mbit/s"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down: Option<String>,
    /// The cap from the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up: Option<String>,
    /// What may go at once after a pause (`"256KiB"`); left out, a tenth of a second of the
    /// rate, at least 16 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<String>,
}

impl RateCapConfig {
    /// Its matchers as a rule's, for the rule compiler (`hosts_file` is not offered here).
    pub(crate) fn as_rule(&self) -> RuleConfig {
        RuleConfig::of_matchers(
            &self.name,
            (&self.clients, &self.users, &self.hosts),
            (&self.ports, &self.methods),
        )
    }
}

/// The matchers a cap or a quota shares with a rule: clients, users, hosts; ports, methods.
type Matchers<'a> = (
    &'a Option<Vec<Network>>,
    &'a Option<Vec<String>>,
    &'a Option<Vec<String>>,
);

impl RuleConfig {
    /// A rule named `name` of only these matchers (the rest left out, action `allow`): what
    /// the rule compiler checks of a cap's or a quota's matchers.
    pub(crate) fn of_matchers(
        name: &str,
        (clients, users, hosts): Matchers<'_>,
        (ports, methods): (&Option<Vec<PortSpec>>, &Option<Vec<String>>),
    ) -> RuleConfig {
        RuleConfig {
            name: name.to_owned(),
            clients: clients.clone(),
            users: users.clone(),
            groups: None,
            hosts: hosts.clone(),
            hosts_file: None,
            hosts_url: None,
            refresh: None,
            times: None,
            times_cut: false,
            ports: ports.clone(),
            methods: methods.clone(),
            action: RuleAction::Allow,
        }
    }
}
/// One `[[rules]]` entry as written. A condition left out matches everything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Shown in refusals and logs.
    pub name: String,
    /// Client networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<Vec<Network>>,
    /// Authenticated users (needs `[auth]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<String>>,
    /// Groups of authenticated users, as `[auth.groups] program` answers (any of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    /// Host patterns: `example.com`, `.example.com`, `10.0.0.0/8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
    /// A file of host patterns, one a line; relative to the configuration file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts_file: Option<PathBuf>,
    /// A block list downloaded from an `http://` or `https://` URL, refreshed in the
    /// background; its last good copy is kept in `[state] dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts_url: Option<String>,
    /// How often `hosts_url` is fetched again (default 1 day, at least 1 second).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub refresh: Option<std::time::Duration>,
    /// Destination ports, as in `[ports]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PortSpec>>,
    /// Request methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// When the rule applies: windows of the week in local time (`"mon-fri 08:00-15:30"`,
    /// `"sat,sun 10:00-12:00"`); left out, always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<Vec<String>>,
    /// Cut tunnels when this rule's window turns them into refusals (default: they run on).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub times_cut: bool,
    /// `allow` or `deny`.
    pub action: RuleAction,
}

/// `action = "allow" | "deny"`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// Let the request through.
    Allow,
    /// Refuse it.
    Deny,
}
