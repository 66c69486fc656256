//! `portcullis report --quotas`: the byte budgets as the proxy last kept them in
//! `[state] dir` (every 5 seconds when they changed, and at shutdown): per quota and key,
//! the bytes used, the budget, what is left and when it is full again. Read only; the
//! configuration is read through the one load path, as `check` and `explain` read it.

use std::path::PathBuf;

use crate::config::{load, Purpose, Source};
use crate::core::quota::{human_bytes, Standing};
use crate::observe::budget::Budgets;

use super::OutputFormat;

/// The budgets of the configuration `file` (the built-in defaults without one) at `now`,
/// rendered in `format`; the error is the configuration's, as `check` prints it.
pub fn render(
    file: Option<&PathBuf>,
    format: OutputFormat,
    now: jiff::Timestamp,
) -> Result<String, String> {
    let source = match file {
        Some(path) => Source::file(path, Vec::new()),
        None => Source::defaults(Vec::new()),
    };
    let loaded = load(&source, Purpose::Check).map_err(|e| e.to_string())?;
    let settings = &loaded.settings;
    if settings.quotas.is_empty() {
        return Err(format!("{} has no [[quotas]]", loaded.origin));
    }
    let clock = &settings.policy.clock;
    let kept = Budgets::read(&settings.state_dir, now);
    let standings = kept.standings(&settings.quotas, clock, now);
    Ok(table(&standings, format, &|s| clock.show(s.resets, now)))
}

/// The rows of `standings` in `format`; `resets` says when each is full again, as people
/// read it.
fn table(
    standings: &[Standing],
    format: OutputFormat,
    resets: &dyn Fn(&Standing) -> String,
) -> String {
    match format {
        OutputFormat::Json => {
            let rows: Vec<serde_json::Value> = standings
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "quota": &*s.quota,
                        "key": s.key,
                        "used": s.used,
                        "bytes": s.bytes,
                        "left": s.left(),
                        "per": s.per.as_str(),
                        "resets": s.resets.to_string(),
                    })
                })
                .collect();
            serde_json::Value::Array(rows).to_string() + "\n"
        }
        OutputFormat::Csv => {
            let mut out = String::from("quota,key,used,bytes,left,per,resets\r\n");
            for s in standings {
                out.push_str(&format!(
                    "{},{},{},{},{},{},{}\r\n",
                    super::render::csv_field(&s.quota),
                    super::render::csv_field(&s.key),
                    s.used,
                    s.bytes,
                    s.left(),
                    s.per,
                    s.resets
                ));
            }
            out
        }
        OutputFormat::Table => {
            let mut rows = vec![[
                "QUOTA".to_owned(),
                "KEY".to_owned(),
                "USED".to_owned(),
                "OF".to_owned(),
                "LEFT".to_owned(),
                "FULL AGAIN".to_owned(),
            ]];
            for s in standings {
                rows.push([
                    s.quota.to_string(),
                    s.key.clone(),
                    human_bytes(s.used),
                    format!("{} a {}", human_bytes(s.bytes), s.per),
                    human_bytes(s.left()),
                    resets(s),
                ]);
            }
            let widths: Vec<usize> = (0..6)
                .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
                .collect();
            let mut out = String::new();
            for row in rows {
                let line: Vec<String> = row
                    .iter()
                    .zip(&widths)
                    .map(|(cell, w)| format!("{cell:<w$}"))
                    .collect();
                out.push_str(line.join("  ").trim_end());
                out.push('\n');
            }
            if standings.is_empty() {
                out.push_str("(no budget counted in its period under way)\n");
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budgets_as_kept_are_a_table_csv_or_json() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("portcullis.toml");
        std::fs::write(
            &config,
            "[clock]\ntimezone = \"UTC\"\n[[quotas]]\nname = \"kids\"\nbytes = \"2GiB\"\nper = \"day\"\n",
        )
        .unwrap();
        let now: jiff::Timestamp = "2026-12-03T12:00:00Z".parse().unwrap();
        let day = "2026-12-03T00:00:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_second();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        std::fs::write(
            dir.path().join("state").join("quotas.json"),
            format!(
                "{{\"version\":1,\"counts\":[{{\"quota\":\"kids\",\"key\":\"10.0.0.5\",\"start\":{day},\"end\":{},\"used\":1610612736}}]}}",
                day + 86_400
            ),
        )
        .unwrap();
        let text = render(Some(&config), OutputFormat::Table, now).unwrap();
        assert!(text.starts_with("QUOTA"), "{text}");
        assert!(
            text.contains("kids   10.0.0.5  1.5 GiB  2.0 GiB a day  512.0 MiB  Fri 00:00"),
            "{text}"
        );
        let csv = render(Some(&config), OutputFormat::Csv, now).unwrap();
        assert!(
            csv.contains("kids,10.0.0.5,1610612736,2147483648,536870912,day,2026-12-04T00:00:00Z"),
            "{csv}"
        );
        let json = render(Some(&config), OutputFormat::Json, now).unwrap();
        assert!(json.contains("\"left\":536870912"), "{json}");
        // No quota configured: said, not an empty table.
        std::fs::write(&config, "").unwrap();
        assert!(render(Some(&config), OutputFormat::Table, now)
            .unwrap_err()
            .contains("no [[quotas]]"));
    }
}
