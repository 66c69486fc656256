//! `portcullis top` as a person runs it: in a pseudo-terminal (`support::pty`) against a
//! running proxy, the screen read back as a terminal shows it. It shows a client that
//! downloads through the shaped link with its rate, lays itself out again when the terminal
//! is resized, says when the admin listener cannot be reached and keeps trying, and ends on
//! `q`, Esc or Ctrl-C with the terminal as it found it. The plain text of `--once` is tested
//! in `shaping.rs`.

use std::time::Duration;

use crate::shaping::{download, shaped_link};
use crate::support::pty::Terminal;
use crate::support::*;

/// Whether a row shows a rate that is not nothing (`-` and `0 B/s` are).
fn moving(row: &str) -> bool {
    ["kB/s", "MB/s", "GB/s"]
        .iter()
        .any(|unit| row.contains(unit))
}

/// Ends `top` with `keys`, then checks that it ended well and left the terminal as a shell
/// needs it: the alternate screen left, the cursor shown, line mode back.
fn quit_with(terminal: &mut Terminal, keys: &[u8]) {
    terminal.type_keys(keys);
    let status = terminal.exit_within(Duration::from_secs(3));
    assert!(status.success(), "{keys:?}: {status}");
    assert_eq!(
        terminal.alternate_screen_and_hidden_cursor(),
        (false, false),
        "{keys:?}: the alternate screen is left and the cursor shown"
    );
    assert!(terminal.line_mode(), "{keys:?}: raw mode is off again");
    let written = String::from_utf8_lossy(&terminal.written()).into_owned();
    let entered = written
        .find("\x1b[?1049h")
        .expect("the alternate screen entered");
    let left = written
        .rfind("\x1b[?1049l")
        .expect("the alternate screen left");
    assert!(entered < left);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_in_a_terminal_shows_who_uses_the_link_and_quits_on_q() {
    let (web, p) = shaped_link().await;
    let admin = p.admin.unwrap().to_string();
    // 64 MiB through 4 MiB/s, about 16 s: longer than the test, which drops it.
    let download = tokio::spawn(download(p.addr, "127.0.0.9", web.addr, 64 << 20));
    tokio::task::spawn_blocking(move || {
        let args = ["top", "--admin", &admin, "--interval", "0.3"];
        let mut top = Terminal::start(BIN, &args, 30, 110);
        let rows = top.wait_for("the client and its rate", WAIT, |rows| {
            rows.iter().any(|r| r.contains("127.0.0.9") && moving(r))
        });
        let screen = rows.join("\n");
        assert!(
            rows[0].starts_with(&format!(" portcullis top — {admin}")),
            "{screen}"
        );
        assert!(rows[0].trim_end().ends_with("q quits"), "{screen}");
        assert!(
            rows.iter()
                .any(|r| r.contains("link: down") && r.contains("shaped")),
            "{screen}"
        );
        // Wide: ports and hosts side by side; narrower than 90 columns, stacked.
        assert!(
            rows.iter()
                .any(|r| r.contains("Ports") && r.contains("Hosts")),
            "{screen}"
        );
        top.resize(24, 70);
        top.wait_for("the view laid out for 70 columns", WAIT, |rows| {
            rows.iter().any(|r| r.contains(" Ports "))
                && rows.iter().any(|r| r.contains(" Hosts "))
                && !rows
                    .iter()
                    .any(|r| r.contains("Ports") && r.contains("Hosts"))
                && !rows[0].contains("q quits")
        });
        quit_with(&mut top, b"q");
    })
    .await
    .unwrap();
    download.abort();
}

/// Without an admin listener to read, the view says so and keeps trying until a key ends it
/// (Esc here, Ctrl-C next); `--once` exits with the error instead (`shaping.rs`).
#[test]
fn top_in_a_terminal_keeps_trying_an_admin_listener_it_cannot_reach() {
    for keys in [&b"\x1b"[..], b"\x03"] {
        let args = ["top", "--admin", "127.0.0.1:1", "--interval", "0.2"];
        let mut top = Terminal::start(BIN, &args, 24, 100);
        // At 100 columns the message takes two rows: read as one text.
        let said = |rows: &[String]| {
            let text: Vec<&str> = rows.iter().map(|r| r.trim()).collect();
            let text = text.join(" ");
            text.contains("cannot reach the admin listener at 127.0.0.1:1")
                && text.contains("trying again every 0.2 s")
        };
        top.wait_for("the admin listener is said to be unreachable", WAIT, said);
        // Still there, still saying so, a few tries later.
        std::thread::sleep(Duration::from_millis(700));
        top.wait_for("it keeps trying", Duration::from_millis(100), said);
        quit_with(&mut top, keys);
    }
}
