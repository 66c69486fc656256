//! A pseudo-terminal for a program that draws on a terminal (`portcullis top`), as a person
//! runs it: the program has the terminal's far end as its standard input, output and error,
//! in a session of its own whose controlling terminal it is (`setsid --ctty`), so that it
//! gets SIGWINCH when the terminal is resized. The test reads the screen through a `vt100`
//! parser, types keys, resizes, and reads the terminal's modes back. Every wait is bounded.

use std::fs::File;
use std::io::{Read, Write};
use std::num::NonZeroU16;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::pty::{grantpt, ioctl_tiocgptpeer, openpt, unlockpt, OpenptFlags};
use rustix::termios::{tcgetattr, tcsetwinsize, LocalModes, Winsize};

/// A program running in a pseudo-terminal.
pub struct Terminal {
    /// The terminal's near end: what the program writes is read here, keys are written here.
    master: File,
    child: Child,
    /// The screen as a terminal would show it.
    parser: Arc<Mutex<vt100::Parser>>,
    /// Everything the program wrote, as written.
    written: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
}

fn size(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).expect("a terminal size is not 0")
}

impl Terminal {
    /// Starts `program` with `args` in a new terminal of `rows` by `cols`.
    pub fn start(program: &str, args: &[&str], rows: u16, cols: u16) -> Terminal {
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("a pseudo-terminal");
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        set_size(&master, rows, cols);
        let far: OwnedFd = ioctl_tiocgptpeer(&master, OpenptFlags::RDWR | OpenptFlags::NOCTTY)
            .expect("the pseudo-terminal's far end");
        let child = {
            let end = || Stdio::from(far.try_clone().unwrap());
            // setsid(1) makes a session and takes its standard input, the far end, as the
            // session's controlling terminal, then runs the program in its place (or, if it
            // had to fork, waits for it and exits with its status).
            let mut command = Command::new("setsid");
            command
                .args(["--ctty", "--wait"])
                .arg(program)
                .args(args)
                .env("TERM", "xterm-256color")
                .env_remove("RUST_LOG")
                .stdin(end())
                .stdout(end())
                .stderr(end());
            command
                .spawn()
                .unwrap_or_else(|e| panic!("setsid --ctty {program} starts: {e}"))
            // The command, and with it the far end's copies, is dropped here: once the
            // program ends, reading the near end ends too.
        };
        drop(far);
        let master = File::from(master);
        let parser = Arc::new(Mutex::new(vt100::Parser::new(size(rows), size(cols), 0)));
        let written = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let mut master = master.try_clone().unwrap();
            let (parser, written) = (parser.clone(), written.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                // Ends with EIO once no process holds the far end.
                while let Ok(n @ 1..) = master.read(&mut buf) {
                    written.lock().unwrap().extend_from_slice(&buf[..n]);
                    parser.lock().unwrap().process(&buf[..n]);
                }
            })
        };
        Terminal {
            master,
            child,
            parser,
            written,
            reader: Some(reader),
        }
    }

    /// The screen's rows as text.
    pub fn rows(&self) -> Vec<String> {
        let parser = self.parser.lock().unwrap();
        let (_, cols) = parser.screen().size();
        parser.screen().rows(0, cols.get()).collect()
    }

    /// Waits until the screen's rows satisfy `ready`, at most `limit`; the rows then. Fails
    /// the test with the screen as it is when they do not, or when the program ends first.
    pub fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        ready: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            let rows = self.rows();
            if ready(&rows) {
                return rows;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the program ended ({status}) before {what}:\n{}",
                    rows.join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "not within {limit:?}: {what}; the screen:\n{}",
                rows.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Types `keys` (bytes as a terminal sends them: `q`, `\x1b` for Esc, `\x03` for Ctrl-C).
    pub fn type_keys(&mut self, keys: &[u8]) {
        self.master.write_all(keys).unwrap();
    }

    /// Resizes the terminal (the program gets SIGWINCH) and the screen read back.
    pub fn resize(&mut self, rows: u16, cols: u16) {
        self.parser.lock().unwrap().set_size(size(rows), size(cols));
        set_size(&self.master, rows, cols);
    }

    /// Waits for the program to end, at most `limit`, then for the last of what it wrote;
    /// its exit status. Fails the test (and kills it) when it does not end in time.
    pub fn exit_within(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the program did not end within {limit:?}; the screen:\n{}",
                    self.rows().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let reader = self.reader.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !reader.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            reader.is_finished(),
            "the terminal still reads after the program ended"
        );
        status
    }

    /// Whether the program is in the alternate screen, and whether it hides the cursor.
    pub fn alternate_screen_and_hidden_cursor(&self) -> (bool, bool) {
        let parser = self.parser.lock().unwrap();
        (
            parser.screen().alternate_screen(),
            parser.screen().hide_cursor(),
        )
    }

    /// Everything the program wrote, as written.
    pub fn written(&self) -> Vec<u8> {
        self.written.lock().unwrap().clone()
    }

    /// Whether the terminal is in line mode, as a shell leaves it: lines edited and echoed
    /// (not raw).
    pub fn line_mode(&self) -> bool {
        let modes = tcgetattr(&self.master).unwrap().local_modes;
        modes.contains(LocalModes::ICANON | LocalModes::ECHO)
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn set_size(master: impl std::os::fd::AsFd, rows: u16, cols: u16) {
    tcsetwinsize(
        master,
        Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
    .unwrap();
}
