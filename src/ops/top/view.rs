//! The full-screen view of `portcullis top` on a terminal, drawn with ratatui over its
//! crossterm backend: a title line, the link line (or why there is no reading), the clients
//! with their rates and shares, then the ports and the hosts. A thread reads the admin
//! listener every interval and hands each reading (or its error) over; the view redraws when
//! one arrives or the terminal is resized, and ends on `q`, Esc or Ctrl-C. The terminal is
//! put back (raw mode off, the alternate screen left, the cursor shown) on every way out: a
//! key, an error, or a panic. The readings and rates are the parent module's.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, Wrap};
use ratatui::Frame;

use super::{cell, moving, take_reading, ClientNow, Flow, Rates, Reading};

/// How long to wait for a key before looking for a new reading.
const TICK: Duration = Duration::from_millis(100);

/// Below this width, the ports and hosts are stacked instead of side by side.
const SIDE_BY_SIDE: u16 = 100;

/// The width of a rate's column: `99.9 MB/s`, `999 kB/s`.
const RATE: u16 = 9;

/// The width of a share's column (its title, `share down`).
const SHARE: u16 = 10;
/// The width of the caps' column: the names of the caps holding a client.
const CAPS: u16 = 16;
/// Its title, on the left as the names are.
const CAPS_TITLE: &str = " caps";

/// One reading as the reading thread hands it over: when it was taken, and it or its error.
type Taken = (Instant, Result<Reading, String>);

/// Runs the view until a key ends it; the error of the terminal, if any.
pub(super) fn run(admin: SocketAddr, interval: Duration) -> Result<(), String> {
    let readings = read_every(admin, interval);
    // Made before the terminal is set up, so that a failure half-way is undone too; dropped
    // last (after the terminal, which shows the cursor again).
    let _restore = Restore;
    let mut terminal =
        ratatui::try_init().map_err(|e| format!("cannot set up the terminal: {e}"))?;
    let mut view = View::new(admin, interval);
    let mut dirty = true;
    loop {
        if dirty {
            terminal
                .draw(|frame| view.draw(frame))
                .map_err(|e| format!("cannot draw on the terminal: {e}"))?;
            dirty = false;
        }
        let error = |e: std::io::Error| format!("cannot read the terminal: {e}");
        if event::poll(TICK).map_err(error)? {
            match event::read().map_err(error)? {
                Event::Key(key) if quits(&key) => return Ok(()),
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
        while let Ok(taken) = readings.try_recv() {
            view.take(taken);
            dirty = true;
        }
    }
}

/// Puts the terminal back when dropped.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = ratatui::try_restore();
        let _ = ratatui::crossterm::execute!(std::io::stdout(), ratatui::crossterm::cursor::Show);
    }
}

/// Whether `key` ends the view: `q`, Esc or Ctrl-C (raw mode makes Ctrl-C a key).
fn quits(key: &KeyEvent) -> bool {
    key.kind == KeyEventKind::Press
        && match key.code {
            KeyCode::Char('q' | 'Q') | KeyCode::Esc => true,
            KeyCode::Char('c' | 'C') => key.modifiers.contains(KeyModifiers::CONTROL),
            _ => false,
        }
}

/// Reads the admin listener every `interval` on a thread of its own, so that a slow or
/// unreachable listener never holds up the keys. The thread ends when the view does.
fn read_every(admin: SocketAddr, interval: Duration) -> mpsc::Receiver<Taken> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || loop {
        let began = Instant::now();
        let got = take_reading(admin);
        if sender.send((Instant::now(), got)).is_err() {
            return;
        }
        std::thread::sleep(interval.saturating_sub(began.elapsed()));
    });
    receiver
}

/// What the view shows.
struct View {
    admin: SocketAddr,
    interval: Duration,
    /// The last good reading, and when it was taken.
    last: Option<(Instant, Reading)>,
    /// The rates of the last good reading against the one before.
    rates: Rates,
    /// Why the last reading failed, when it did.
    error: Option<String>,
}

impl View {
    fn new(admin: SocketAddr, interval: Duration) -> View {
        View {
            admin,
            interval,
            last: None,
            rates: Rates::default(),
            error: None,
        }
    }

    /// Takes a reading, or its error. A reading's rates are against the last good reading
    /// (across failed ones); after a failure no rates are shown, only the error, until a
    /// reading succeeds.
    fn take(&mut self, (at, got): Taken) {
        match got {
            Ok(reading) => {
                let before = self.last.as_ref();
                let secs = before.map_or(0.0, |(then, _)| (at - *then).as_secs_f64());
                self.rates = Rates::between(&reading, before.map(|(_, r)| r), secs);
                self.last = Some((at, reading));
                self.error = None;
            }
            Err(error) => {
                // Nothing is known of the link now: no rates, rather than stale ones.
                self.rates = Rates {
                    instance: self.rates.instance.clone(),
                    ..Rates::default()
                };
                self.error = Some(error);
            }
        }
    }

    fn draw(&self, frame: &mut Frame) {
        let (status, style) = self.status();
        // The status wraps onto as many rows as it needs, up to three.
        let width = frame.area().width.max(1) as usize;
        let rows = status.chars().count().div_ceil(width).clamp(1, 3) as u16;
        let [title, link, clients, rest] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(rows),
            Constraint::Fill(1),
            Constraint::Fill(1),
        ])
        .areas(frame.area());
        self.draw_title(frame, title);
        frame.render_widget(
            Paragraph::new(status)
                .style(style)
                .wrap(Wrap { trim: false }),
            link,
        );
        frame.render_widget(clients_table(&self.rates.clients), clients);
        let [ports, hosts] = if rest.width >= SIDE_BY_SIDE {
            Layout::horizontal([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(rest)
        } else {
            Layout::vertical([Constraint::Fill(1), Constraint::Fill(1)]).areas(rest)
        };
        frame.render_widget(flows_table("Ports", "port", &self.rates.ports), ports);
        frame.render_widget(flows_table("Hosts", "host", &self.rates.hosts), hosts);
    }

    /// The title's left part: what is read, and how many connections are open.
    fn title(&self) -> String {
        let mut left = format!(" portcullis top — {}", self.admin);
        if !self.rates.instance.is_empty() {
            left.push_str(&format!(" ({})", self.rates.instance));
        }
        if self.last.is_some() && self.error.is_none() {
            left.push_str(&format!(" — {} connections open", self.rates.connections));
        }
        left
    }

    fn draw_title(&self, frame: &mut Frame, area: Rect) {
        let bar = Style::default().add_modifier(Modifier::REVERSED);
        let left = self.title();
        let right = format!("every {:.1} s — q quits ", self.interval.as_secs_f64());
        // The hint on the right when there is room for it beside the rest.
        let line = if left.chars().count() + right.chars().count() < area.width as usize {
            let gap = area.width as usize - left.chars().count() - right.chars().count();
            format!("{left}{}{right}", " ".repeat(gap))
        } else {
            left
        };
        frame.render_widget(Paragraph::new(line).style(bar), area);
    }

    /// The line below the title, and its style: the link now, or why there is no reading.
    fn status(&self) -> (String, Style) {
        let bold = Style::default().add_modifier(Modifier::BOLD);
        match (&self.error, &self.last) {
            (Some(error), _) => (
                format!(
                    " {error} — trying again every {:.1} s",
                    self.interval.as_secs_f64()
                ),
                bold.fg(Color::Red),
            ),
            (None, None) => (format!(" reading {} …", self.admin), Style::default()),
            (None, Some(_)) => (format!(" link: {}", self.rates.link_line()), bold),
        }
    }
}

/// A table's header row: the titles of the first column and of the caps on the left, the
/// numbers' on the right.
fn header<const N: usize>(titles: [&'static str; N]) -> Row<'static> {
    let style = Style::default()
        .add_modifier(Modifier::BOLD)
        .add_modifier(Modifier::UNDERLINED);
    Row::new(titles.into_iter().enumerate().map(|(i, title)| {
        if i == 0 || title == CAPS_TITLE {
            Cell::from(title)
        } else {
            number(title.to_owned())
        }
    }))
    .style(style)
}

/// A number in a table, on the right of its column.
fn number(text: String) -> Cell<'static> {
    Cell::from(Line::from(text).right_aligned())
}

fn clients_table(clients: &[ClientNow]) -> Table<'static> {
    let rows = clients.iter().map(|c| {
        Row::new([
            Cell::from(c.flow.key.clone()),
            number(moving(c.flow.down)),
            number(moving(c.flow.up)),
            number(cell(c.share_down)),
            number(cell(c.share_up)),
            Cell::from(format!(" {}", c.caps)),
        ])
    });
    let titles = ["client", "down", "up", "share down", "share up", CAPS_TITLE];
    table(
        " Clients ",
        header(titles),
        rows,
        &[RATE, RATE, SHARE, SHARE, CAPS],
    )
}

fn flows_table(title: &str, what: &'static str, flows: &[Flow]) -> Table<'static> {
    let rows = flows.iter().map(|f| {
        Row::new([
            Cell::from(f.key.clone()),
            number(moving(f.down)),
            number(moving(f.up)),
        ])
    });
    let title = format!(" {title} ");
    table(&title, header([what, "down", "up"]), rows, &[RATE, RATE])
}

/// A table in a box titled `title`: the first column takes the room the others' `widths`
/// leave; a dim `(nothing moving)` when there are no rows.
fn table(
    title: &str,
    header: Row<'static>,
    rows: impl Iterator<Item = Row<'static>>,
    widths: &[u16],
) -> Table<'static> {
    let mut rows: Vec<Row> = rows.collect();
    if rows.is_empty() {
        let dim = Style::default().add_modifier(Modifier::DIM);
        rows.push(Row::new(["(nothing moving)"]).style(dim));
    }
    let widths =
        std::iter::once(Constraint::Fill(1)).chain(widths.iter().map(|w| Constraint::Length(*w)));
    Table::new(rows, widths)
        .header(header)
        .block(Block::bordered().title(title.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn screen(view: &View, width: u16, height: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|frame| view.draw(frame)).unwrap();
        let buffer = terminal.backend().buffer();
        (0..height)
            .map(|y| {
                (0..width)
                    .map(|x| buffer[(x, y)].symbol().to_owned())
                    .collect::<String>()
            })
            .collect()
    }

    #[test]
    fn the_view_shows_the_link_and_the_tables_at_any_width() {
        let (before, now) = crate::ops::top::tests::two_readings();
        let mut view = View::new("127.0.0.1:3129".parse().unwrap(), Duration::from_secs(1));
        let then = Instant::now();
        view.take((then, Ok(before)));
        view.take((then + Duration::from_secs(2), Ok(now)));
        let wide = screen(&view, 120, 30);
        let text = wide.join("\n");
        assert!(
            wide[0].starts_with(" portcullis top — 127.0.0.1:3129 (gateway) — 4 connections open"),
            "{text}"
        );
        assert!(
            wide[0].trim_end().ends_with("every 1.0 s — q quits"),
            "{text}"
        );
        assert!(
            wide[1].contains("link: down 1.3 MB/s of 2.6 MB/s (50%), up 2.0 kB/s; shaped"),
            "{text}"
        );
        let kid = wide
            .iter()
            .find(|l| l.contains("192.168.1.20 (kid)"))
            .unwrap();
        assert!(kid.contains(" kids,evenings "), "its caps: {text}");
        assert!(
            kid.contains("1.0 MB/s") && kid.contains("2.5 MB/s"),
            "{text}"
        );
        // Ports and hosts side by side.
        let side = wide.iter().find(|l| l.contains("443 (https)")).unwrap();
        assert!(side.contains("example.com"), "{text}");
        // Narrow: stacked, and the hint gives way to the title.
        let narrow = screen(&view, 60, 30);
        let text = narrow.join("\n");
        assert!(
            narrow
                .iter()
                .any(|l| l.contains("443 (https)") && !l.contains("example.com")),
            "{text}"
        );
        assert!(narrow.iter().any(|l| l.contains("example.com")), "{text}");
        assert!(!narrow[0].contains("q quits"), "{text}");
    }

    #[test]
    fn an_unreachable_admin_listener_is_said_and_tried_again() {
        let mut view = View::new("127.0.0.1:1".parse().unwrap(), Duration::from_secs(1));
        let text = screen(&view, 100, 20).join("\n");
        assert!(text.contains("reading 127.0.0.1:1 …"), "{text}");
        view.take((
            Instant::now(),
            Err("cannot reach the admin listener at 127.0.0.1:1: refused".into()),
        ));
        let text = screen(&view, 100, 20).join("\n");
        assert!(
            text.contains("cannot reach the admin listener at 127.0.0.1:1: refused — trying again every 1.0 s"),
            "{text}"
        );
        assert_eq!(text.matches("(nothing moving)").count(), 3, "{text}");
    }

    #[test]
    fn q_esc_and_ctrl_c_quit() {
        let key = |code, modifiers| KeyEvent::new(code, modifiers);
        assert!(quits(&key(KeyCode::Char('q'), KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Esc, KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)));
        assert!(!quits(&key(KeyCode::Char('c'), KeyModifiers::NONE)));
        assert!(!quits(&key(KeyCode::Char('x'), KeyModifiers::NONE)));
    }
}
