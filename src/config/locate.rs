//! Where a validation problem lies in the text: its [`KeyPath`] walked through the document as
//! toml's own parser spans it, then the entry at fault within the value (an array entry, a
//! table key, or the value itself).
//!
//! The place is the entry when the problem has one and it is written there, else the key:
//! for a table written as a header (`[auth]`, `[[rules]]`) the header, for a dotted key
//! (`ports.http = …`) the start of the dotted key. A key not written (a default) is placed at
//! the nearest enclosing key that is, or nowhere.

use std::net::IpAddr;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::problem::{KeyPath, Place, Problem, Segment};

/// Places each problem in `text` (sets its `at`); leaves them unplaced when the text does
/// not parse.
pub fn locate_all(text: &str, problems: &mut [Problem]) {
    let Ok(document) = DeTable::parse(text) else {
        return;
    };
    let root = Spanned::new(document.span(), DeValue::Table(document.into_inner()));
    for problem in problems {
        problem.at = offset(text, &root, &problem.key, problem.entry.as_deref())
            .map(|at| line_and_column(text, at));
    }
}

/// Where `key` (and `entry` in its value) is in `text`, if it is written there.
#[cfg(test)]
pub fn locate(text: &str, key: &KeyPath, entry: Option<&str>) -> Option<Place> {
    let document = DeTable::parse(text).ok()?;
    let root = Spanned::new(document.span(), DeValue::Table(document.into_inner()));
    offset(text, &root, key, entry).map(|at| line_and_column(text, at))
}

/// The byte offset of `entry` in the value at `key`, else of the deepest part of `key` that is
/// written.
fn offset(
    text: &str,
    root: &Spanned<DeValue<'_>>,
    key: &KeyPath,
    entry: Option<&str>,
) -> Option<usize> {
    let mut node = root;
    let mut at: Option<usize> = None;
    // Whether `node` is a table made by a dotted key (`ports` in `ports.http = …`).
    let mut dotted = false;
    for segment in &key.0 {
        match (segment, node.get_ref()) {
            (Segment::Key(name), DeValue::Table(table)) => {
                let Some((k, value)) = table.iter().find(|(k, _)| k.get_ref() == name) else {
                    return at;
                };
                at = Some(key_offset(
                    k.span().start,
                    value,
                    dotted.then_some(at).flatten(),
                ));
                dotted = is_dotted_table(text, k, value);
                node = value;
            }
            (Segment::Index(i), DeValue::Array(items)) => {
                let Some(item) = items.get(*i) else {
                    return at;
                };
                at = Some(item.span().start);
                dotted = false;
                node = item;
            }
            _ => return at,
        }
    }
    let Some(entry) = entry else {
        return at;
    };
    let found = match node.get_ref() {
        DeValue::Array(items) => items
            .iter()
            .find(|item| value_is(item.get_ref(), entry))
            .map(|item| item.span().start),
        DeValue::Table(table) => table
            .iter()
            .find(|(k, _)| key_is(k.get_ref(), entry))
            .map(|(k, value)| key_offset(k.span().start, value, None)),
        value => value_is(value, entry).then(|| node.span().start),
    };
    found.or(at)
}

/// Where a key is shown: a header table at its header, a key inside a dotted key at the start
/// of the dotted key (`dotted_start`), any other key at itself.
fn key_offset(
    key_start: usize,
    value: &Spanned<DeValue<'_>>,
    dotted_start: Option<usize>,
) -> usize {
    // A table or array of tables written as a header spans its header, which starts before
    // the key; an inline value starts after it.
    if value.span().start < key_start {
        return value.span().start;
    }
    dotted_start.unwrap_or(key_start)
}

/// Whether `value` is a table made by a dotted key: neither a header (`[x]`) nor inline
/// (`{ … }`), it spans its own key.
fn is_dotted_table(
    text: &str,
    key: &Spanned<std::borrow::Cow<'_, str>>,
    value: &Spanned<DeValue<'_>>,
) -> bool {
    matches!(value.get_ref(), DeValue::Table(_))
        && value.span() == key.span()
        && !text[value.span()].starts_with(['[', '{'])
}

/// Whether a value as written is `entry`: the same string, or the same integer.
fn value_is(value: &DeValue<'_>, entry: &str) -> bool {
    match value {
        DeValue::String(s) => s == entry,
        DeValue::Integer(i) => {
            let digits = i.as_str().replace('_', "");
            let digits = ["0x", "0o", "0b"]
                .iter()
                .find_map(|p| digits.strip_prefix(p))
                .unwrap_or(&digits);
            match (i64::from_str_radix(digits, i.radix()), entry.parse::<i64>()) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            }
        }
        _ => false,
    }
}

/// Whether a table key is `entry`: the same text, or the same address (`clients.names`).
fn key_is(key: &str, entry: &str) -> bool {
    key == entry
        || matches!(
            (key.trim().parse::<IpAddr>(), entry.parse::<IpAddr>()),
            (Ok(a), Ok(b)) if a == b
        )
}

/// The 1-based line and column (in characters) of byte `offset`.
fn line_and_column(text: &str, offset: usize) -> Place {
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Place {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::load_text;
    use crate::config::{ConfigError, Purpose};

    /// The problems validation finds in `text`, located.
    fn problems(text: &str) -> Vec<Problem> {
        match load_text(text.to_owned(), "t", &[], Purpose::Check) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn problems_are_placed_at_their_entry_or_key() {
        // (file text, the problem's start, the line and column wanted)
        let cases: &[(&str, &str, (usize, usize))] = &[
            (
                "listen = [\"127.0.0.1:1\"]\n[ports]\nhttp = [80]\nconnect = [\"no-such-service\"]\n",
                "ports.connect: entry \"no-such-service\"",
                (4, 12),
            ),
            (
                "[ports]\nhttp = [\n  80,\n  \"90-80\",  # reversed\n]\nconnect = [\"https\"]\n",
                "ports.http: entry \"90-80\"",
                (4, 3),
            ),
            ("[ports]\nhttp = [0, 80]\n", "ports.http: entry 0:", (2, 9)),
            ("[ports]\nhttp = [80, 0x0]\n", "ports.http: entry 0:", (2, 13)),
            (
                "[ports]\nhttp = [80]\n\n[timeouts]\n# the dial\nconnect = \"0s\"\n",
                "timeouts.connect: must be longer",
                (6, 1),
            ),
            (
                "[admin]\nlisten = \"nowhere\"\n",
                "admin.listen: \"nowhere\"",
                (2, 10),
            ),
            ("listen = []\n", "listen: the list is empty", (1, 1)),
            (
                "[clients]\nallow = []\n",
                "clients.allow: the list is empty",
                (2, 1),
            ),
            ("[log]\nlevel = \"loud\"\n", "log.level: \"loud\"", (2, 9)),
            ("workers = \"many\"\n", "workers: \"many\"", (1, 11)),
            ("workers = 0\n", "workers: 0;", (1, 1)),
            // rules[n] fields.
            (
                "[[rules]]\nname = \"a\"\naction = \"allow\"\n[[rules]]\nname = \"b\"\nports = [\"https\", \"smtpx\"]\naction = \"deny\"\n",
                "rules[2] \"b\": ports: entry \"smtpx\"",
                (6, 19),
            ),
            (
                "[[rules]]\nname = \"a\"\nmethods = [\"G_T\"]\naction = \"allow\"\n",
                "rules[1] \"a\": methods: \"G_T\" is not a method name",
                (3, 12),
            ),
            (
                "[[rules]]\nname = \"a\"\naction = \"allow\"\n[[rules]]\n  name = \"a\"\n  action = \"deny\"\n",
                "rules[2] \"a\": another rule has the same name",
                (5, 3),
            ),
            (
                "[[rules]]\nname = \"\"\naction = \"allow\"\n",
                "rules[1]: the name is empty",
                (2, 1),
            ),
            (
                "[[rules]]\nname = \"a\"\nhosts = []\naction = \"allow\"\n",
                "rules[1] \"a\": hosts is an empty list",
                (3, 1),
            ),
            (
                "[[rules]]\nname = \"a\"\nusers = [\"alice\"]\naction = \"allow\"\n",
                "rules[1] \"a\": users needs [auth]",
                (3, 1),
            ),
            (
                "[[rules]]\nname = \"a\"\nhosts = [\"ok.example\", \"bad host\"]\naction = \"deny\"\n",
                "rules[1] \"a\": hosts: \"bad host\" is not",
                (3, 24),
            ),
            // Rules as an inline array of inline tables.
            (
                "rules = [\n  { name = \"a\", action = \"allow\" },\n  { name = \"b\", ports = [\"smtpx\"], action = \"deny\" },\n]\n",
                "rules[2] \"b\": ports: entry \"smtpx\"",
                (3, 26),
            ),
            // Array entries.
            (
                "[pac]\nproxies = [\"proxy.lan:3128\", \"nope\"]\n",
                "pac.proxies: \"nope\" is not host:port",
                (2, 30),
            ),
            (
                "[upstream]\nproxy = [\"http://a:1\", \"ftp://b:2\"]\n",
                "upstream.proxy: \"ftp://b:2\"",
                (2, 24),
            ),
            (
                "[upstream]\nproxy = \"ftp://b:2\"\n",
                "upstream.proxy: \"ftp://b:2\"",
                (2, 9),
            ),
            // Quoted keys, and a table key as the entry.
            (
                "[clients.names]\n\"10.0.0.7\" = \"printer\"\n\"10.0.0.8\" = \" \"\n",
                "clients.names: the name of 10.0.0.8 must be",
                (3, 1),
            ),
            (
                "[clients]\nnames = { \"10.0.0.7\" = \"printer\", '::ffff:10.0.0.8' = \"\" }\n",
                "clients.names: the name of ::ffff:10.0.0.8 must be",
                (2, 35),
            ),
            (
                "[\"timeouts\"]\n\"connect\" = \"0s\"\n",
                "timeouts.connect: must be longer",
                (2, 1),
            ),
            // Dotted keys and inline tables.
            (
                "ports.http = [80]\nports.connect = [\"htps\"]\n",
                "ports.connect: entry \"htps\"",
                (2, 18),
            ),
            ("timeouts.connect = \"0s\"\n", "timeouts.connect: must", (1, 1)),
            (
                "[limits]\n\n  max_headers = 2\n",
                "limits.max_headers: must be at least 8",
                (3, 3),
            ),
            (
                "[limits]\nnetwork_prefix_v6 = 129\n",
                "limits.network_prefix_v6: must be from 1 to 128",
                (2, 1),
            ),
            (
                "[limits]\nlisten_backlog = 0\nmax_connections_per_network = 0\n",
                "limits.max_connections_per_network: must be at least 1",
                (3, 1),
            ),
            (
                "ports = { http = [80], connect = [\"htps\"] }\n",
                "ports.connect: entry \"htps\"",
                (1, 35),
            ),
            (
                "timeouts = { connect = \"0s\" }\n",
                "timeouts.connect: must",
                (1, 14),
            ),
            // Nested tables: a problem of the table itself is at its header.
            (
                "[auth]\nhtpasswd = \"/nonexistent/users\"\ncache = \"0s\"\n",
                "auth: cache, failure_window and max_failures",
                (1, 1),
            ),
            // A "# [ports]" comment and brackets inside strings do not confuse the parser.
            (
                "# [ports]\n[pac]\nproxy_host = \"[x]\"\n[ports]\nconnect = [ # ports\n  \"https\", \"nope\"\n]\n",
                "ports.connect: entry \"nope\"",
                (6, 12),
            ),
            // Columns count characters, not bytes.
            (
                "[pages]\ncontact = \"Zoë\"\n[ports]\nconnect = [\"é\", \"x\"]\n",
                "ports.connect: entry \"x\"",
                (4, 17),
            ),
        ];
        for (text, start, (line, column)) in cases {
            let found = problems(text);
            let problem = found
                .iter()
                .find(|p| p.to_string().starts_with(start))
                .unwrap_or_else(|| panic!("{start:?} not in {found:?}"));
            assert_eq!(
                problem.at,
                Some(Place {
                    line: *line,
                    column: *column
                }),
                "{start:?} in\n{text}"
            );
        }
    }

    #[test]
    fn keys_not_written_are_placed_at_what_encloses_them_or_nowhere() {
        let connect = KeyPath::keys(["ports", "connect"]);
        assert_eq!(locate("", &KeyPath::keys(["listen"]), None), None);
        // A default is not in the text, even when a comment quotes the entry.
        assert_eq!(locate("# uses \"x\"\n", &connect, Some("x")), None);
        assert_eq!(
            locate("[ports]\nhttp = [80]\n", &connect, Some("x")),
            Some(Place { line: 1, column: 1 })
        );
        // An entry not found in the value: the key.
        assert_eq!(
            locate("[ports]\nconnect = [443]\n", &connect, Some("x")),
            Some(Place { line: 2, column: 1 })
        );
        // A rule past the end: nowhere in it, so the rules.
        assert_eq!(
            locate(
                "[[rules]]\nname = \"a\"\naction = \"deny\"\n",
                &KeyPath::rule(3, "ports"),
                None
            ),
            Some(Place { line: 1, column: 1 })
        );
        // Text that does not parse places nothing.
        assert_eq!(locate("[ports\n", &connect, None), None);
    }
}
