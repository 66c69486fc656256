//! `[shaping]` and `[[limits.rate]]` into [`ShapingSettings`]: rates and sizes read, weights
//! checked, each cap's matchers compiled as a rule's (by the rule compiler of `validate`).

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

use crate::core::shaping::parse_amount;

use super::problem::{KeyPath, Problem, ProblemKind};
use super::rules::compile_rule;
use super::schema::Config;
use super::settings::{RateCap, ShapingSettings};

impl Config {
    /// `[shaping]` and `[[limits.rate]]`: rates read, each cap's matchers compiled as a rule's.
    pub(super) fn shaping_settings(
        &self,
        base: &Path,
        has_auth: bool,
        problems: &mut Vec<Problem>,
    ) -> ShapingSettings {
        let mut rate = |key: KeyPath, text: &Option<String>, size: bool| {
            let read = parse_amount(text.as_ref()?, size);
            read.map_err(|e| problems.push(Problem::new(key, ProblemKind::BadRate(e))))
                .ok()
        };
        let shaping = &self.shaping;
        let down = rate(KeyPath::keys(["shaping", "down"]), &shaping.down, false);
        let up = rate(KeyPath::keys(["shaping", "up"]), &shaping.up, false);
        let mut weights = std::collections::HashMap::new();
        for (who, weight) in &shaping.weights {
            if !(weight.is_finite() && *weight > 0.0 && *weight <= 1000.0) {
                problems.push(
                    Problem::new(
                        KeyPath::keys(["shaping", "weights"]),
                        ProblemKind::BadRate(format!(
                            "the weight of {who:?} must be a number above 0 and at most 1000, not {weight}"
                        )),
                    )
                    .entry(who.as_str()),
                );
            }
            // Addresses as the data path writes them (canonical), names as they are.
            let key = match who.parse::<IpAddr>() {
                Ok(ip) => ip.to_canonical().to_string(),
                Err(_) => who.clone(),
            };
            weights.insert(key, *weight);
        }
        let mut names = HashSet::new();
        let mut caps = Vec::new();
        for (index, c) in self.limits.rate.iter().enumerate() {
            let path = |field: &str| {
                KeyPath(vec![
                    "limits".into(),
                    "rate".into(),
                    index.into(),
                    field.into(),
                ])
            };
            let before = problems.len();
            let as_rule = c.as_rule();
            let matcher = compile_rule(
                &as_rule,
                &path,
                &mut names,
                base,
                has_auth,
                problems,
                &mut Vec::new(),
            );
            let mut rate = |field: &str, text: &Option<String>, size: bool| {
                let read = parse_amount(text.as_ref()?, size);
                read.map_err(|e| {
                    problems
                        .push(Problem::new(path(field), ProblemKind::BadRate(e)).in_rule(&c.name))
                })
                .ok()
            };
            let cap_down = rate("down", &c.down, false);
            let cap_up = rate("up", &c.up, false);
            let burst = rate("burst", &c.burst, true);
            if c.down.is_none() && c.up.is_none() {
                problems.push(
                    Problem::new(
                        path("down"),
                        ProblemKind::BadRate("a cap needs down, up or both".to_owned()),
                    )
                    .in_rule(&c.name),
                );
            }
            if let (Some(matcher), true) = (matcher, problems.len() == before) {
                caps.push(RateCap {
                    matcher,
                    down: cap_down,
                    up: cap_up,
                    burst,
                });
            }
        }
        ShapingSettings {
            down,
            up,
            per: shaping.per,
            weights,
            caps,
        }
    }
}
