//! The report printed: an aligned table with totals (after a line naming the proxies when the
//! records came from several), CSV (RFC 4180) or JSON.

use std::borrow::Cow;
use std::fmt::Write as _;

use super::aggregate::{Proxies, Report, Row, RowKey};
use super::{GroupBy, OutputFormat};

impl Report {
    /// The report in `format`.
    pub fn render(&self, format: OutputFormat) -> String {
        match format {
            OutputFormat::Table => self.table(),
            OutputFormat::Csv => self.csv(),
            OutputFormat::Json => self.json(),
        }
    }

    fn service(&self, key: &RowKey) -> Option<&'static str> {
        match key {
            RowKey::Port(port) => crate::core::ports::service_name(*port),
            _ => None,
        }
    }

    fn table(&self) -> String {
        let by_port = self.by == GroupBy::Port;
        let mut header = vec![self.by.key_name().to_ascii_uppercase()];
        if by_port {
            header.push("SERVICE".into());
        }
        let numeric_from = header.len();
        for title in [
            "REQUESTS",
            "DENIED",
            "BYTES UP",
            "BYTES DOWN",
            "CLIENTS",
            "FIRST SEEN",
            "LAST SEEN",
        ] {
            header.push(title.into());
        }
        let cells = |row: &Row| {
            let mut cells = vec![row.key.text().into_owned()];
            if by_port {
                cells.push(match row.key {
                    RowKey::Total => String::new(),
                    _ => self.service(&row.key).unwrap_or("-").to_owned(),
                });
            }
            cells.push(row.requests.to_string());
            cells.push(row.denied.to_string());
            cells.push(human_bytes(row.bytes_up));
            cells.push(human_bytes(row.bytes_down));
            let approx = if row.clients_exact { "" } else { "~" };
            cells.push(format!("{approx}{}", row.clients));
            cells.push(humantime::format_rfc3339_seconds(row.first_seen).to_string());
            cells.push(humantime::format_rfc3339_seconds(row.last_seen).to_string());
            cells
        };
        let mut lines: Vec<Vec<String>> = vec![header];
        lines.extend(self.rows().iter().map(cells));
        match self.total() {
            Some(total) => lines.push(cells(&total)),
            None => {
                let mut empty = vec!["TOTAL".to_owned()];
                if by_port {
                    empty.push(String::new());
                }
                empty.extend(["0", "0", "0 B", "0 B", "0", "-", "-"].map(str::to_owned));
                lines.push(empty);
            }
        }
        let columns = lines[0].len();
        let mut out = String::new();
        if let Some(proxies) = proxies_line(self.proxies()) {
            out.push_str(&proxies);
            out.push('\n');
        }
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                lines
                    .iter()
                    .map(|l| l[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        // Numbers right-aligned; keys, services and times left-aligned.
        let right = |c: usize| c >= numeric_from && c < numeric_from + 5;
        for line in &lines {
            let mut text = String::new();
            for (c, cell) in line.iter().enumerate() {
                if c > 0 {
                    text.push_str("  ");
                }
                if right(c) {
                    let _ = write!(text, "{cell:>w$}", w = widths[c]);
                } else {
                    let _ = write!(text, "{cell:<w$}", w = widths[c]);
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        if self.counts.squid > 0 {
            out.push_str("Bytes up are not recorded in the Squid format: its lines count 0.\n");
        }
        out
    }

    fn csv(&self) -> String {
        let key = self.by.key_name();
        let mut out = String::new();
        out.push_str(key);
        if self.by == GroupBy::Port {
            out.push_str(",service");
        }
        out.push_str(",requests,denied,bytes_up,bytes_down,clients,first_seen,last_seen\r\n");
        for row in self.rows() {
            out.push_str(&csv_field(&row.key.text()));
            if self.by == GroupBy::Port {
                out.push(',');
                out.push_str(self.service(&row.key).unwrap_or(""));
            }
            let _ = write!(
                out,
                ",{},{},{},{},{},{},{}\r\n",
                row.requests,
                row.denied,
                row.bytes_up,
                row.bytes_down,
                row.clients,
                humantime::format_rfc3339_millis(row.first_seen),
                humantime::format_rfc3339_millis(row.last_seen),
            );
        }
        out
    }

    fn json(&self) -> String {
        let key = self.by.key_name();
        let rows = self.rows();
        let mut out = String::from("[");
        for (i, row) in rows.iter().enumerate() {
            out.push_str(if i == 0 { "\n  {" } else { ",\n  {" });
            match &row.key {
                RowKey::Port(port) => {
                    let service = self.service(&row.key);
                    let _ = write!(out, "\"{key}\":{port},\"service\":{}", json_string(service));
                }
                other => {
                    let _ = write!(out, "\"{key}\":{}", json_string(Some(&other.text())));
                }
            }
            let _ = write!(
                out,
                ",\"requests\":{},\"denied\":{},\"bytes_up\":{},\"bytes_down\":{},\"clients\":{},\"first_seen\":\"{}\",\"last_seen\":\"{}\"}}",
                row.requests,
                row.denied,
                row.bytes_up,
                row.bytes_down,
                row.clients,
                humantime::format_rfc3339_millis(row.first_seen),
                humantime::format_rfc3339_millis(row.last_seen),
            );
        }
        out.push_str(if rows.is_empty() { "]\n" } else { "\n]\n" });
        out
    }
}

/// Names listed in the line on the proxies; the rest are counted.
const LISTED_PROXIES: usize = 20;

/// `2 proxies: proxy-a, proxy-b` (with `; 12 records name no proxy (-)` when some records
/// have no `instance`), for a report whose records came from more than one proxy; `None`
/// otherwise.
fn proxies_line(proxies: &Proxies) -> Option<String> {
    if !proxies.several() {
        return None;
    }
    let n = proxies.names.len();
    let mut line = match (proxies.more, n) {
        (true, _) => format!("more than {n} proxies: "),
        (false, 1) => "1 proxy: ".to_owned(),
        (false, _) => format!("{n} proxies: "),
    };
    let listed: Vec<&str> = proxies
        .names
        .iter()
        .take(LISTED_PROXIES)
        .map(String::as_str)
        .collect();
    line.push_str(&listed.join(", "));
    if proxies.more {
        line.push_str(" and more");
    } else if n > listed.len() {
        let _ = write!(line, " and {} more", n - listed.len());
    }
    match proxies.unnamed {
        0 => {}
        1 => line.push_str("; 1 record names no proxy (-)"),
        u => {
            let _ = write!(line, "; {u} records name no proxy (-)");
        }
    }
    Some(line)
}

fn json_string(text: Option<&str>) -> String {
    match text {
        Some(text) => serde_json::to_string(text).unwrap_or_else(|_| "null".into()),
        None => "null".into(),
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
pub(super) fn csv_field(text: &str) -> Cow<'_, str> {
    if text.contains([',', '"', '\r', '\n']) {
        Cow::Owned(format!("\"{}\"", text.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(text)
    }
}

/// `512 B`, `1.5 KiB`, `3.2 GiB`.
pub use crate::core::quota::human_bytes;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::log::{format_line, Format};
    use crate::ops::report::fixtures::*;
    use crate::ops::report::parse::Window;

    #[test]
    fn json_output_has_numbers_and_every_key() {
        let text = report(GroupBy::Port, Window::default()).render(OutputFormat::Json);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[0],
            serde_json::json!({
                "port": 443, "service": "https", "requests": 3, "denied": 1,
                "bytes_up": 40, "bytes_down": 4000, "clients": 3,
                "first_seen": "2025-11-26T10:20:29.123Z", "last_seen": "2025-11-27T10:20:29.123Z",
            })
        );
        let text = report(GroupBy::User, Window::default()).render(OutputFormat::Json);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        assert_eq!(rows[3]["user"], "bob, jr");
        assert!(rows[3].get("service").is_none());
        let empty = Report::new(GroupBy::Host, Window::default()).render(OutputFormat::Json);
        assert!(serde_json::from_str::<Vec<serde_json::Value>>(&empty)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn csv_output_quotes_by_rfc_4180() {
        let text = report(GroupBy::User, Window::default()).render(OutputFormat::Csv);
        let lines: Vec<&str> = text.split_terminator("\r\n").collect();
        assert_eq!(
            lines[0],
            "user,requests,denied,bytes_up,bytes_down,clients,first_seen,last_seen"
        );
        assert_eq!(
            lines[4],
            "\"bob, jr\",1,0,40,4000,1,2025-11-26T10:20:49.123Z,2025-11-26T10:20:49.123Z"
        );
        assert_eq!(lines.len(), 5);
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,\"b\""), "\"a,\"\"b\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        let ports = report(GroupBy::Port, Window::default()).render(OutputFormat::Csv);
        assert!(ports.starts_with("port,service,requests,"), "{ports}");
        assert!(ports.contains("\r\n25,smtp,1,1,0,0,1,"), "{ports}");
    }

    #[test]
    fn table_output_is_aligned_with_totals() {
        let text = report(GroupBy::Port, Window::default()).render(OutputFormat::Table);
        let want = "\
PORT   SERVICE  REQUESTS  DENIED  BYTES UP  BYTES DOWN  CLIENTS  FIRST SEEN            LAST SEEN
443    https           3       1      40 B     3.9 KiB        3  2025-11-26T10:20:29Z  2025-11-27T10:20:29Z
80     http            2       0      60 B     5.9 KiB        2  2025-11-26T10:20:39Z  2025-11-26T10:20:49Z
25     smtp            1       1       0 B         0 B        1  2025-11-27T10:20:29Z  2025-11-27T10:20:29Z
TOTAL                  6       2     100 B     9.8 KiB        3  2025-11-26T10:20:29Z  2025-11-27T10:20:29Z
";
        assert_eq!(text, want);
        let empty = Report::new(GroupBy::Client, Window::default()).render(OutputFormat::Table);
        let want = "\
CLIENT  REQUESTS  DENIED  BYTES UP  BYTES DOWN  CLIENTS  FIRST SEEN  LAST SEEN
TOTAL          0       0       0 B         0 B        0  -           -
";
        assert_eq!(empty, want);
        // Squid lines carry no bytes up: the table says so.
        let mut squid = Report::new(GroupBy::User, Window::default());
        scan(
            &mut squid,
            format_line(Format::Squid, &record(), None).as_bytes(),
        );
        let text = squid.render(OutputFormat::Table);
        assert!(text.contains("\nalice  "), "{text}");
        assert!(
            text.ends_with("Bytes up are not recorded in the Squid format: its lines count 0.\n"),
            "{text}"
        );
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn failures_by_kind_in_every_format() {
        let report = report(GroupBy::Error, Window::default());
        let table = report.render(OutputFormat::Table);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("ERROR    REQUESTS  DENIED"), "{table}");
        assert!(lines[1].starts_with("-               3       0"), "{table}");
        assert!(lines[3].starts_with("refused         1       0"), "{table}");
        assert!(lines[4].starts_with("TOTAL           6       2"), "{table}");
        let csv = report.render(OutputFormat::Csv);
        assert!(
            csv.starts_with("error,requests,denied,bytes_up,bytes_down,clients,"),
            "{csv}"
        );
        assert!(csv.contains("\r\nrefused,1,0,30,3000,1,"), "{csv}");
        let json = report.render(OutputFormat::Json);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
        assert_eq!(rows[2]["error"], "refused");
        assert_eq!(rows[0]["error"], "-");
        // Squid lines carry no kind: they all count as `-`.
        let mut squid = Report::new(GroupBy::Error, Window::default());
        let mut r = record();
        r.error = Some(crate::core::error::ErrorKind::Refused);
        scan(&mut squid, format_line(Format::Squid, &r, None).as_bytes());
        scan(&mut squid, format_line(Format::Json, &r, None).as_bytes());
        let keys: Vec<String> = squid
            .rows()
            .iter()
            .map(|r| r.key.text().into_owned())
            .collect();
        assert_eq!(keys, ["-", "refused"]);
    }

    #[test]
    fn a_table_of_several_proxies_names_them_first() {
        let mut report = Report::new(GroupBy::Port, Window::default());
        let mut line = Vec::new();
        for instance in ["proxy-b", "proxy-a", "proxy-b"] {
            crate::observe::format::write_json(&mut line, &record(), None, Some(instance));
        }
        scan(&mut report, &line);
        let table = report.render(OutputFormat::Table);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "2 proxies: proxy-a, proxy-b", "{table}");
        assert!(lines[1].starts_with("PORT "), "{table}");
        assert!(lines[3].starts_with("TOTAL  "), "{table}");
        assert_eq!(lines[3].split_whitespace().nth(1), Some("3"), "{table}");
        // CSV and JSON stay rows only.
        assert!(report.render(OutputFormat::Csv).starts_with("port,"));
        assert!(report.render(OutputFormat::Json).starts_with("[\n  {"));
        // Older lines without a name are counted, and said to be.
        let unnamed = |format| format_line(format, &record(), None);
        scan(&mut report, unnamed(Format::Json).as_bytes());
        scan(&mut report, unnamed(Format::Squid).as_bytes());
        let table = report.render(OutputFormat::Table);
        assert!(
            table.starts_with("2 proxies: proxy-a, proxy-b; 2 records name no proxy (-)\n"),
            "{table}"
        );
        let mut one = Report::new(GroupBy::Instance, Window::default());
        scan(&mut one, &line[..line.len() / 3]);
        assert!(one.render(OutputFormat::Table).starts_with("INSTANCE "));
        scan(&mut one, unnamed(Format::Json).as_bytes());
        let table = one.render(OutputFormat::Table);
        assert!(
            table.starts_with("1 proxy: proxy-b; 1 record names no proxy (-)\nINSTANCE "),
            "{table}"
        );
        let mut names = Proxies::default();
        for i in 0..25 {
            names.names.insert(format!("p{i:02}"));
        }
        let text = proxies_line(&names).unwrap();
        assert!(text.starts_with("25 proxies: p00, p01, "), "{text}");
        assert!(text.ends_with(", p19 and 5 more"), "{text}");
        names.more = true;
        assert!(proxies_line(&names)
            .unwrap()
            .starts_with("more than 25 proxies: "));
    }
}
