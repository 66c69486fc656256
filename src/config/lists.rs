//! The block lists of the rules: `hosts_file` read with the list parser
//! ([`crate::core::blocklist`]), `hosts_url` and `refresh` checked, the last good copy of a
//! downloaded list found on disk and read at load, and what `portcullis check` and the
//! start-up warnings say of each list ([`ListReport`]).
//!
//! A bad line of a `hosts_file` does not fail the configuration: it is skipped, counted, and
//! shown (the first few, with their line numbers) by `check` and in a start-up warning. A
//! file with skipped lines and not one entry is refused: it is not a list (or the wrong file).
//!
//! The last good copy of a `hosts_url` is kept at `<state dir>/lists/<hash>.list`, the hash
//! being the first 16 hex digits of the URL's SHA-256 ([`disk_copy`]); the fetcher
//! (`proxy::lists`) writes it, the load path reads it. Reading it needs no network, so
//! `check` and `explain` see the list the proxy would start with.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::core::blocklist::{parse_list, HostList, ListLoad, ListSource, SkippedLine};
use crate::core::hosts::{HostPattern, HostSet};

use super::problem::{Problem, ProblemKind};
use super::schema::RuleConfig;
use super::Settings;

/// How often a `hosts_url` is fetched again when `refresh` is left out.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(24 * 3600);
/// The shortest `refresh` accepted.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);

/// What was read of one list: for `portcullis check` and the start-up warnings.
#[derive(Debug, Clone)]
pub struct ListReport {
    /// The rule.
    pub rule: String,
    /// `hosts_file PATH`, or `hosts_url URL (copy PATH)`.
    pub what: String,
    /// Entries loaded.
    pub entries: usize,
    /// Lines skipped.
    pub skipped: usize,
    /// The first skipped lines.
    pub first_skipped: Vec<SkippedLine>,
    /// For a `hosts_url` without a copy on disk yet: why the rule matches nothing for now.
    pub missing: Option<String>,
}

impl ListReport {
    fn new(rule: &str, what: String, load: &ListLoad) -> ListReport {
        ListReport {
            rule: rule.to_owned(),
            what,
            entries: load.entries(),
            skipped: load.skipped,
            first_skipped: load.first_skipped.clone(),
            missing: None,
        }
    }

    /// The report as lines of text: the counts, then the first skipped lines indented.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![match &self.missing {
            Some(why) => format!("rule \"{}\": {}: {why}", self.rule, self.what),
            None => format!(
                "rule \"{}\": {}: {} entries loaded, {} skipped",
                self.rule, self.what, self.entries, self.skipped
            ),
        }];
        for s in &self.first_skipped {
            out.push(format!("    skipped {s}"));
        }
        if self.skipped > self.first_skipped.len() {
            out.push(format!(
                "    … and {} more",
                self.skipped - self.first_skipped.len()
            ));
        }
        out
    }
}

/// Where the last good copy of the list at `url` is kept under `state_dir`.
pub fn disk_copy(state_dir: &Path, url: &str) -> PathBuf {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(url.as_bytes());
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    state_dir.join("lists").join(format!("{hex}.list"))
}

/// A rule's host condition: `hosts` and `hosts_file` into one set, and its `hosts_url` as
/// an empty [`HostList`] (the load path puts the disk copy in it). Problems go to `problems`
/// through `at(field, kind)`; the reports of the lists read go to `reports`.
pub(super) fn rule_hosts(
    r: &RuleConfig,
    base: &Path,
    at: &dyn Fn(&str, ProblemKind) -> Problem,
    problems: &mut Vec<Problem>,
    reports: &mut Vec<ListReport>,
) -> (Option<Arc<HostSet>>, Option<Arc<HostList>>) {
    let list = r.hosts_url.as_ref().and_then(|url| {
        let ok = (url.starts_with("http://") || url.starts_with("https://"))
            && url
                .parse::<http::Uri>()
                .is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()));
        if !ok {
            problems.push(at(
                "hosts_url",
                ProblemKind::BadHostsUrl(format!(
                    "\"{url}\" is not an http:// or https:// URL with a host"
                )),
            ));
        }
        let refresh = r.refresh.unwrap_or(DEFAULT_REFRESH);
        if refresh < MIN_REFRESH {
            problems.push(at(
                "refresh",
                ProblemKind::BadHostsUrl("must be at least 1s (a day is usual)".into()),
            ));
        }
        ok.then(|| Arc::new(HostList::new(r.name.as_str().into(), url.clone(), refresh)))
    });
    if r.refresh.is_some() && r.hosts_url.is_none() {
        problems.push(at(
            "refresh",
            ProblemKind::BadHostsUrl("applies to hosts_url only: add one, or leave it out".into()),
        ));
    }
    if r.hosts.is_none() && r.hosts_file.is_none() {
        return (None, list);
    }
    let mut set = HostSet::new();
    for text in r.hosts.iter().flatten() {
        match HostPattern::parse(text) {
            Ok(p) => set.insert(p),
            Err(e) => {
                problems.push(at("hosts", ProblemKind::BadHostPattern(e)).entry(text.as_str()))
            }
        }
    }
    if r.hosts.as_ref().is_some_and(|h| h.is_empty())
        && r.hosts_file.is_none()
        && r.hosts_url.is_none()
    {
        problems.push(at("hosts", ProblemKind::EmptyCondition));
    }
    if let Some(file) = &r.hosts_file {
        let path = base.join(file);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let load = parse_list(&text);
                if load.entries() == 0 && load.skipped > 0 {
                    problems.push(at(
                        "hosts_file",
                        ProblemKind::BadHostsFile(format!(
                            "{}: not one entry, {}",
                            path.display(),
                            load.summary()
                        )),
                    ));
                }
                reports.push(ListReport::new(
                    &r.name,
                    format!("hosts_file {}", path.display()),
                    &load,
                ));
                set.extend(load.set);
            }
            Err(e) => problems.push(at(
                "hosts_file",
                ProblemKind::UnreadableFile {
                    path,
                    error: e.to_string(),
                },
            )),
        }
    }
    (Some(Arc::new(set)), list)
}

/// Puts the last good copy on disk of every downloaded list of `settings` in force, and
/// reports each (a copy that cannot be read is reported as missing; the rule matches
/// nothing until a fetch succeeds).
pub fn read_disk_copies(settings: &mut Settings) {
    let lists: Vec<Arc<HostList>> = settings
        .policy
        .rules
        .iter()
        .filter_map(|r| r.list.clone())
        .collect();
    for list in lists {
        let path = disk_copy(&settings.state_dir, &list.url);
        let what = format!("hosts_url {} (copy {})", list.url, path.display());
        let read = std::fs::read_to_string(&path).map(|text| {
            let modified = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            (parse_list(&text), modified)
        });
        match read {
            Ok((load, modified)) => {
                settings
                    .lists
                    .push(ListReport::new(&list.rule, what, &load));
                list.put(load, ListSource::Disk, modified, (None, None));
            }
            Err(e) => settings.lists.push(ListReport {
                missing: Some(match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        "no copy on disk yet: the rule matches nothing until the first fetch"
                            .to_owned()
                    }
                    _ => format!("the copy cannot be read ({e}): the rule matches nothing until the next fetch"),
                }),
                ..ListReport::new(&list.rule, what, &ListLoad::default())
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_named_by_the_url() {
        let a = disk_copy(Path::new("/s"), "https://lists.example/hosts");
        let b = disk_copy(Path::new("/s"), "https://lists.example/other");
        assert_ne!(a, b);
        assert!(a.starts_with("/s/lists"));
        assert_eq!(a.file_name().unwrap().len(), 16 + ".list".len());
    }

    #[test]
    fn reports_show_counts_and_the_first_skipped_lines() {
        let load = parse_list("0.0.0.0 a.example\n0.0.0.0 localhost\nbad line here\n");
        let lines = ListReport::new("r", "hosts_file f".into(), &load).lines();
        assert_eq!(
            lines[0],
            "rule \"r\": hosts_file f: 1 entries loaded, 2 skipped"
        );
        assert!(
            lines[1].starts_with("    skipped line 2: 0.0.0.0 localhost"),
            "{lines:?}"
        );
        assert!(
            lines[2].starts_with("    skipped line 3: bad line here"),
            "{lines:?}"
        );
    }
}
