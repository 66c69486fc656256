//! One `[[rules]]` entry compiled into a [`Rule`], with every problem it has: its name, its
//! conditions (clients, users, groups, hosts and lists, ports, methods, times) and its action.
//! Caps (`[[limits.rate]]`) and budgets (`[[quotas]]`) compile their matchers here too.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use crate::core::policy::{Action, Rule};
use crate::core::schedule::Schedule;

use super::problem::{KeyPath, Problem, ProblemKind};
use super::schema::{RuleAction, RuleConfig};
use super::validate::port_set;

/// Compiles one rule (or a cap's matchers, which are a rule's), its problems at `key(field)`;
/// `names` holds the names seen so far among its kind. `None` when it has problems.
pub(super) fn compile_rule(
    r: &RuleConfig,
    key: &dyn Fn(&str) -> KeyPath,
    names: &mut HashSet<String>,
    base: &Path,
    has_auth: bool,
    problems: &mut Vec<Problem>,
    reports: &mut Vec<super::lists::ListReport>,
) -> Option<Rule> {
    {
        {
            let at =
                |field: &str, kind: ProblemKind| Problem::new(key(field), kind).in_rule(&r.name);
            let before = problems.len();
            if r.name.trim().is_empty() {
                problems.push(at("name", ProblemKind::EmptyRuleName));
            } else if !names.insert(r.name.clone()) {
                problems.push(at("name", ProblemKind::DuplicateRuleName));
            }
            let clients = r.clients.as_ref().map(|c| {
                if c.is_empty() {
                    problems.push(at("clients", ProblemKind::EmptyCondition));
                }
                c.iter().map(|n| n.0).collect::<Vec<_>>()
            });
            let users = r.users.clone().inspect(|u| {
                if u.is_empty() {
                    problems.push(at("users", ProblemKind::EmptyCondition));
                }
                if !has_auth {
                    problems.push(at("users", ProblemKind::UsersWithoutAuth));
                }
            });
            let (hosts, list) = super::lists::rule_hosts(r, base, &at, problems, reports);
            let ports = r
                .ports
                .as_ref()
                .map(|specs| port_set(key("ports"), Some(&r.name), specs, problems));
            let methods = r.methods.as_ref().map(|methods| {
                if methods.is_empty() {
                    problems.push(at("methods", ProblemKind::EmptyCondition));
                }
                methods
                    .iter()
                    .map(|m| {
                        let upper = m.trim().to_ascii_uppercase();
                        if upper.is_empty()
                            || !upper
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        {
                            problems.push(
                                at("methods", ProblemKind::BadMethod(m.clone())).entry(m.as_str()),
                            );
                        }
                        upper
                    })
                    .collect::<Vec<_>>()
            });
            let times = r.times.as_ref().and_then(|windows| {
                if windows.is_empty() {
                    problems.push(at("times", ProblemKind::EmptyCondition));
                }
                Schedule::parse(windows)
                    .map_err(|e| problems.push(at("times", ProblemKind::BadTimes(e))))
                    .ok()
                    .map(Arc::new)
            });
            if r.times_cut && r.times.is_none() {
                problems.push(at(
                    "times_cut",
                    ProblemKind::BadTimes(
                        "applies to times only: add them, or leave it out".into(),
                    ),
                ));
            }
            if problems.len() > before {
                return None;
            }
            Some(Rule {
                times,
                times_cut: r.times_cut,
                name: r.name.as_str().into(),
                clients,
                users,
                groups: None,
                hosts,
                list,
                ports,
                methods,
                action: match r.action {
                    RuleAction::Allow => Action::Allow,
                    RuleAction::Deny => Action::Deny,
                },
            })
        }
    }
}
