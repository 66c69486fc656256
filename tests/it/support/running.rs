//! The `portcullis` binary running as a server, as a user starts it: its stdout (the access
//! log) and stderr (diagnostics) read line by line, the address it listens on read from its
//! diagnostics, and the process killed when the test ends.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{BIN, WAIT};

/// The running binary, its stdout (the access log) and stderr (diagnostics), line by line.
pub struct Running {
    pub child: Child,
    pub stdout: mpsc::Receiver<String>,
    pub stderr: mpsc::Receiver<String>,
}

fn lines_of(stream: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits up to 10 s for a line containing all of `needles`.
pub fn line_with(lines: &mpsc::Receiver<String>, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) if needles.iter().all(|n| line.contains(n)) => return line,
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    panic!("no line with {needles:?}");
}

impl Running {
    /// Starts `portcullis ARGS` with `RUST_LOG=info`.
    pub fn start(args: &[&str]) -> Running {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = lines_of(child.stdout.take().unwrap());
        let stderr = lines_of(child.stderr.take().unwrap());
        Running {
            child,
            stdout,
            stderr,
        }
    }

    /// The address of the next listener the diagnostics say the proxy listens on.
    pub fn listening_addr(&self) -> SocketAddr {
        let line = line_with(&self.stderr, &["listening"]);
        let addr = line.rsplit("addr=").next().unwrap().trim();
        addr.parse().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking client connection to the proxy at `addr`, whose reads give up after `WAIT`.
pub fn blocking_client(addr: SocketAddr) -> TcpStream {
    let client = TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    client
}

/// Sends `request` on a new blocking connection to `addr` and reads until the proxy closes
/// it (send `Connection: close`) or `WAIT` passes; what came back, as text.
pub fn blocking_exchange(addr: SocketAddr, request: &str) -> String {
    let mut client = blocking_client(addr);
    client.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = client.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// A configuration file holding `text`, removed when dropped.
pub fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}
