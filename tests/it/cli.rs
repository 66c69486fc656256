//! The `portcullis` binary as a user runs it: configuration file, `--listen`, the access
//! log on stdout and diagnostics on stderr, clear errors for bad configuration, and exit 0
//! after SIGTERM.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{
    blocking_client, blocking_exchange, check_refuses, line_with, write_config, Running, BIN,
};

#[test]
fn runs_from_a_config_file_logs_access_and_exits_0_on_sigterm() {
    // A one-request origin.
    let origin = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin_addr = origin.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = origin.accept() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi");
        }
    });
    let config = write_config(&format!(
        "listen = [\"127.0.0.1:1\"]\n[ports]\nhttp = [{}]\n[destinations]\nallow_loopback = true\n[admin]\nlisten = \"off\"\n",
        origin_addr.port()
    ));
    let path = config.path().to_str().unwrap();
    // --listen replaces the file's listen list.
    let running = Running::start(&["--config", path, "--listen", "127.0.0.1:0"]);
    let addr = running.listening_addr();

    let response = blocking_exchange(
        addr,
        &format!("GET http://{origin_addr}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    );
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.ends_with("hi"), "{response}");

    // The access log, on stdout, in Squid's native format by default.
    let access = line_with(&running.stdout, &["TCP_MISS/200"]);
    let fields: Vec<&str> = access.split_whitespace().collect();
    assert_eq!(fields.len(), 10, "{access}");
    assert_eq!(fields[2], "127.0.0.1");
    assert_eq!(fields[4], "2", "bytes to the client: {access}");
    assert_eq!(fields[5], "GET");
    assert_eq!(fields[6], format!("http://{origin_addr}/"));
    assert_eq!(fields[8], format!("HIER_DIRECT/{}", origin_addr.ip()));

    let mut running = running;
    let status = Command::new("kill")
        .args(["-TERM", &running.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = running.child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "no exit within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn a_bad_configuration_stops_start_up_with_a_clear_message() {
    let cases: &[(&str, &str)] = &[
        (
            "[ports]\nconnect = [\"htps\"]\n",
            "ports.connect: entry \"htps\": unknown service name",
        ),
        ("[ports]\nhttp = []\n", "ports.http: the list is empty"),
        (
            "[ports]\nhttp = [\"90-80\"]\n",
            "range \"90-80\" is reversed",
        ),
        ("[porst]\nhttp = [80]\n", "unknown field `porst`"),
        ("listen = [\"127.0.0.1:80:80\"]\n", "line 1"),
    ];
    for (text, message) in cases {
        let config = write_config(text);
        let output = Command::new(BIN)
            .args(["--config", config.path().to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!output.status.success(), "{text}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{text}: {stderr}");
    }
    let output = Command::new(BIN)
        .args(["--config", "/nonexistent/portcullis.toml"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("cannot read /nonexistent/portcullis.toml"));
}

#[test]
fn a_listen_address_in_use_is_reported() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = Command::new(BIN)
        .args(["--listen", &addr])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

/// Open file descriptors of a process.
#[cfg(target_os = "linux")]
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Waits up to 5 s for the process to hold `want` descriptors; returns what it holds.
#[cfg(target_os = "linux")]
fn settle_fds(pid: u32, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = open_fds(pid);
        if now == want || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_tunnel_gives_back_its_pipes_when_quiet_and_everything_when_closed() {
    // An echo origin.
    let origin = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin_addr = origin.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in origin.incoming().take(4) {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || {
                let mut read = stream.try_clone().unwrap();
                let mut write = stream;
                let _ = std::io::copy(&mut read, &mut write);
                let _ = write.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    let config = write_config(&format!(
        "listen = [\"127.0.0.1:0\"]\n[ports]\nconnect = [{}]\n[destinations]\nallow_loopback = true\n[admin]\nlisten = \"off\"\n",
        origin_addr.port()
    ));
    let running = Running::start(&["--config", config.path().to_str().unwrap()]);
    let addr = running.listening_addr();
    let pid = running.child.id();
    let baseline = open_fds(pid);

    let mut client = blocking_client(addr);
    write!(
        client,
        "CONNECT {origin_addr} HTTP/1.1\r\nHost: {origin_addr}\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(client.read(&mut byte).unwrap(), 1, "closed before the 200");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );

    // A burst both ways: each direction goes busy and takes a pipe.
    let burst: Vec<u8> = (0..(2usize << 20)).map(|i| (i % 251) as u8).collect();
    let mut sender = client.try_clone().unwrap();
    let to_send = burst.clone();
    let writer = std::thread::spawn(move || sender.write_all(&to_send).unwrap());
    let mut back = vec![0u8; burst.len()];
    client.read_exact(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == burst, "the burst came back changed");

    // A few bytes each way end the burst: the tunnel keeps its two sockets and nothing else.
    client.write_all(b"quiet now").unwrap();
    let mut small = [0u8; 9];
    client.read_exact(&mut small).unwrap();
    assert_eq!(&small, b"quiet now");
    assert_eq!(
        settle_fds(pid, baseline + 2),
        baseline + 2,
        "a quiet tunnel holds only its sockets"
    );

    // Closed: all of it is given back.
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    drop(client);
    assert_eq!(
        settle_fds(pid, baseline),
        baseline,
        "a closed tunnel holds nothing"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn workers_sets_the_number_of_serving_threads() {
    // Threads by name: tokio's workers, and all of them.
    let threads = |pid: u32| {
        let names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(Result::ok)
            .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
            .map(|name| name.trim().to_owned())
            .collect();
        let workers = names.iter().filter(|n| *n == "tokio-rt-worker").count();
        (workers, names.len())
    };
    // Three workers beside the main thread and the access-log writer; one worker is the
    // main thread itself, with no thread of tokio's.
    for (setting, want) in [("workers = 3", (3, 5)), ("workers = 1", (0, 2))] {
        let config = write_config(&format!(
            "listen = [\"127.0.0.1:0\"]\n{setting}\n[admin]\nlisten = \"off\"\n"
        ));
        let running = Running::start(&["--config", config.path().to_str().unwrap()]);
        let addr = running.listening_addr();
        // A thread names itself once it runs: wait a little for the last to start.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = threads(running.child.id());
        while seen != want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            seen = threads(running.child.id());
        }
        assert_eq!(seen, want, "{setting}: (workers, threads)");
        // The threads serve: a request for the proxy's own page is answered.
        let answer = blocking_exchange(
            addr,
            "GET / HTTP/1.1\r\nHost: portcullis\r\nConnection: close\r\n\r\n",
        );
        assert!(answer.starts_with("HTTP/1.1 200"), "{setting}: {answer}");
        // And no more start later.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(threads(running.child.id()), want, "{setting}");
    }
}

/// `instance` names the proxy in every JSON log line and on `/status.json`, so that logs of
/// several proxies can be merged; left out, the machine's host name; a bad name is refused.
#[test]
fn the_instance_name_is_in_json_records_and_the_status() {
    let admin = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = write_config(&format!(
        "instance = \"proxy-a\"\nlisten = [\"127.0.0.1:0\"]\n[log]\nformat = \"json\"\n\
         [admin]\nlisten = \"{admin}\"\n"
    ));
    let running = Running::start(&["--config", config.path().to_str().unwrap()]);
    let addr = running.listening_addr();
    let answer = blocking_exchange(
        addr,
        "GET / HTTP/1.1\r\nHost: portcullis\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let line = line_with(&running.stdout, &["\"method\":\"GET\""]);
    let record: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["instance"], "proxy-a", "{line}");
    let status = blocking_exchange(
        admin,
        "GET /status.json HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    );
    let body = status.split_once("\r\n\r\n").unwrap().1;
    let status: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(status["instance"], "proxy-a");
    drop(running);

    // Left out: the host name, as the kernel says it.
    let config = write_config(
        "listen = [\"127.0.0.1:0\"]\n[log]\nformat = \"json\"\n[admin]\nlisten = \"off\"\n",
    );
    let running = Running::start(&["--config", config.path().to_str().unwrap()]);
    let addr = running.listening_addr();
    blocking_exchange(
        addr,
        "GET / HTTP/1.1\r\nHost: portcullis\r\nConnection: close\r\n\r\n",
    );
    let line = line_with(&running.stdout, &["\"method\":\"GET\""]);
    let record: serde_json::Value = serde_json::from_str(&line).unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(record["instance"], host.trim(), "{line}");

    let said = check_refuses("instance = \"proxy a\"\n");
    assert!(said.contains("is not an instance name"), "{said}");
    // `-` alone is what `portcullis report` calls records that name no proxy.
    let said = check_refuses("instance = \"-\"\n");
    assert!(said.contains("but not '-' alone"), "{said}");
}
