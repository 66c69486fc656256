//! CONNECT to the services of the seed article's LAN (SMTP, POP3, Telnet, NetBIOS): refused
//! by the default port list, served once `[ports] connect` allows them, and the access log
//! names the port either way.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::support::dns::{Answer, Zone};
use crate::support::netns::*;

/// A service of the seed article's LAN, as the test plays it.
struct Service {
    port: u16,
    /// Its name in the proxy's refusals and access log.
    name: &'static str,
    /// What the server says first (nothing for NetBIOS, where the client speaks first).
    banner: &'static [u8],
    /// What the client says next, and what the server answers.
    hello: &'static [u8],
    reply: &'static [u8],
}

const SERVICES: &[Service] = &[
    Service {
        port: 25,
        name: "smtp",
        banner: b"220 mail.example ESMTP ready\r\n",
        hello: b"EHLO pc\r\n",
        reply: b"250 mail.example\r\n",
    },
    Service {
        port: 110,
        name: "pop3",
        banner: b"+OK POP3 ready\r\n",
        hello: b"CAPA\r\n",
        reply: b"+OK\r\n",
    },
    Service {
        port: 23,
        name: "telnet",
        banner: b"\xff\xfd\x18login: ",
        hello: b"guest\r\n",
        reply: b"Password: ",
    },
    // A NetBIOS session request, and a positive session response.
    Service {
        port: 139,
        name: "netbios",
        banner: b"",
        hello: b"\x81\x00\x00\x44",
        reply: b"\x82\x00\x00\x00",
    },
];

/// Reads until `buf` holds `n` bytes, for 5 s at most; takes them out of `buf` (what came,
/// when fewer).
async fn read_n(stream: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> Vec<u8> {
    let mut chunk = [0u8; 256];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while buf.len() < n {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(k)) if k > 0 => buf.extend_from_slice(&chunk[..k]),
            _ => break,
        }
    }
    buf.drain(..n.min(buf.len())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_mail_telnet_and_netbios_is_refused_by_default_and_served_when_allowed() {
    let Some(lan) = Lan::build(1) else { return };
    let host = server_v4(13);
    let _dns = start_dns(
        &lan,
        Zone::new().with("services.example", Answer::v4(&[host])),
    );
    let servers: Vec<_> = SERVICES
        .iter()
        .map(|s| banner_origin(lan.internet.listen(at(host, s.port)), s.banner, s.reply))
        .collect();
    let proxy = lan.start_proxy(&Conf::default().text(&lan));
    let pc = &lan.pcs[0];

    for Service { port, name, .. } in SERVICES {
        let (answer, ..) = pc.connect(&format!("services.example:{port}")).await;
        assert_eq!(answer.status, 403, "port {port}: {}", answer.text());
        assert!(
            answer.text().contains(&format!("port {port} ({name})")),
            "{}",
            answer.text()
        );
    }
    assert!(
        servers.iter().all(|s| s.accepts() == 0),
        "nothing reached a service"
    );
    for Service { port, name, .. } in SERVICES {
        let record = wait_record(&lan, |r| r["port"] == *port).await;
        assert_eq!(record["service"], *name);
        assert_eq!(record["rule"], "ports.connect");
        assert_eq!(record["status"], 403);
    }

    proxy.reload(
        &Conf::with(
            "[ports]\nconnect = [\"https\", \"smtp\", \"pop3\", \"telnet\", \"netbios-ssn\"]\n",
        )
        .text(&lan),
    );
    for Service {
        port,
        banner,
        hello,
        reply,
        ..
    } in SERVICES
    {
        let (answer, mut tunnel, mut early) = pc.connect(&format!("services.example:{port}")).await;
        assert_eq!(answer.status, 200, "port {port}: {}", answer.text());
        assert_eq!(
            read_n(&mut tunnel, &mut early, banner.len()).await,
            *banner,
            "port {port}"
        );
        tunnel.write_all(hello).await.unwrap();
        assert_eq!(
            read_n(&mut tunnel, &mut early, reply.len()).await,
            *reply,
            "port {port}"
        );
    }
    for Service { port, name, .. } in SERVICES {
        let record = wait_record(&lan, |r| r["port"] == *port && r["status"] == 200).await;
        assert_eq!(record["service"], *name);
        assert_eq!(record["method"], "CONNECT");
        assert_eq!(record["upstream"], format!("{host}:{port}"));
    }
}
