//! `[[quotas]]`, byte budgets, into [`Quota`]s: each budget's size and period read, its key
//! checked, its matchers compiled as a rule's (by the rule compiler of `validate`, as the
//! caps of `[[limits.rate]]` are).

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::core::ports::PortSpec;
use crate::core::quota::{parse_bytes, Keyed, Period, Quota};

use super::problem::{KeyPath, Problem, ProblemKind};
use super::rules::compile_rule;
use super::schema::{Config, Network, RuleConfig};

/// `[[quotas]]`: a byte budget for the requests its matchers pick, per client or per user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Shown in refusals (`quota "kids"`), on the pages, in the metrics and the record.
    pub name: String,
    /// Client networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<Vec<Network>>,
    /// Authenticated users (needs `[auth]`).
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
    /// The budget, both ways added up (`"2GiB"`).
    pub bytes: String,
    /// `"day"`, `"week"` or `"month"`.
    pub per: String,
    /// Whose budget: `"client"` (each address; the default) or `"user"` (each logged-in
    /// user, needs `[auth]`).
    #[serde(default = "client_key", skip_serializing_if = "is_client_key")]
    pub key: String,
    /// Cut transfers under way when the budget runs out (default: they finish).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cut: bool,
}

fn client_key() -> String {
    "client".to_owned()
}

fn is_client_key(key: &str) -> bool {
    key == "client"
}

impl QuotaConfig {
    /// Its matchers as a rule's, for the rule compiler.
    fn as_rule(&self) -> RuleConfig {
        RuleConfig::of_matchers(
            &self.name,
            (&self.clients, &self.users, &self.hosts),
            (&self.ports, &self.methods),
        )
    }
}

impl Config {
    /// `[state] store`: a `redis://` URL the client can use.
    pub(super) fn store_url(&self, problems: &mut Vec<Problem>) -> Option<String> {
        let url = self.state.store.as_ref()?;
        let shown = super::validate::mask_credentials(url);
        let problem = if !url.starts_with("redis://") {
            Some(format!(
                "\"{shown}\" is not a store: write redis://host:6379/0 (Redis or Valkey; redis://:password@host:6379/0 with a password)"
            ))
        } else {
            redis::Client::open(url.as_str())
                .err()
                .map(|e| format!("\"{shown}\": {e}"))
        };
        match problem {
            Some(words) => {
                problems.push(Problem::new(
                    KeyPath::keys(["state", "store"]),
                    ProblemKind::BadStore(words),
                ));
                None
            }
            None => Some(url.clone()),
        }
    }

    /// `[[quotas]]`: sizes and periods read, matchers compiled as a rule's.
    pub(super) fn quota_settings(
        &self,
        base: &Path,
        has_auth: bool,
        problems: &mut Vec<Problem>,
    ) -> Vec<Quota> {
        let mut names = HashSet::new();
        let mut quotas = Vec::with_capacity(self.quotas.len());
        for (index, q) in self.quotas.iter().enumerate() {
            let path = |field: &str| KeyPath(vec!["quotas".into(), index.into(), field.into()]);
            let before = problems.len();
            let matcher = compile_rule(
                &q.as_rule(),
                &path,
                &mut names,
                base,
                has_auth,
                problems,
                &mut Vec::new(),
            );
            let mut bad = |field: &str, words: String| {
                problems.push(
                    Problem::new(path(field), ProblemKind::BadBudget(words)).in_rule(&q.name),
                );
            };
            let bytes = parse_bytes(&q.bytes).map_err(|e| bad("bytes", e)).ok();
            let per = Period::parse(&q.per).map_err(|e| bad("per", e)).ok();
            let keyed = match q.key.as_str() {
                "client" => Some(Keyed::Client),
                "user" if has_auth => Some(Keyed::User),
                "user" => {
                    bad(
                        "key",
                        "\"user\" needs [auth] htpasswd, or no request would have a user".into(),
                    );
                    None
                }
                other => {
                    bad(
                        "key",
                        format!("{other:?} is not a key: write \"client\" or \"user\""),
                    );
                    None
                }
            };
            if let (Some(matcher), Some(bytes), Some(per), Some(keyed), true) =
                (matcher, bytes, per, keyed, problems.len() == before)
            {
                quotas.push(Quota {
                    name: matcher.name.clone(),
                    matcher,
                    bytes,
                    per,
                    keyed,
                    cut: q.cut,
                });
            }
        }
        quotas
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn problems(toml: &str) -> String {
        match Config::from_toml(toml, "t").unwrap().validate("t") {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_budget_reads_its_size_period_and_key() {
        let settings = Config::from_toml(
            "[[quotas]]\nname = \"kids\"\nclients = [\"10.0.0.0/24\"]\nbytes = \"2GiB\"\nper = \"week\"\ncut = true\n",
            "t",
        )
        .unwrap()
        .validate("t")
        .unwrap();
        let q = &settings.quotas[0];
        assert_eq!(&*q.name, "kids");
        assert_eq!(q.bytes, 2 << 30);
        assert_eq!(q.per, crate::core::quota::Period::Week);
        assert_eq!(q.keyed, crate::core::quota::Keyed::Client);
        assert!(q.cut);
    }

    #[test]
    fn bad_budgets_are_named_at_their_key() {
        let text = problems(
            "[[quotas]]\nname = \"a\"\nbytes = \"lots\"\nper = \"fortnight\"\nkey = \"user\"\n",
        );
        assert!(
            text.contains("quotas[1].bytes: \"lots\" is not an amount of bytes"),
            "{text}"
        );
        assert!(
            text.contains("quotas[1].per: \"fortnight\" is not a period"),
            "{text}"
        );
        assert!(
            text.contains("quotas[1].key: \"user\" needs [auth] htpasswd"),
            "{text}"
        );
        let twice = problems(
            "[[quotas]]\nname = \"a\"\nbytes = \"1GiB\"\nper = \"day\"\n[[quotas]]\nname = \"a\"\nbytes = \"1GiB\"\nper = \"day\"\n",
        );
        assert!(twice.contains("another rule has the same name"), "{twice}");
    }
}
