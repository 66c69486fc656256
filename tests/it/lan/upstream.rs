//! Where the proxy's connections to the internet start from: the address the gateway's
//! system chooses, or the ones `upstream.bind` names, per family.

use std::net::IpAddr;

use tokio::io::AsyncWriteExt;

use super::*;
use crate::support::dns::{Answer, Zone};
use crate::support::netns::*;
use crate::support::{read_head, Origin};

/// An origin that answers each request with the address the connection came from.
fn whoami(lan: &Lan, addr: SocketAddr) -> Origin {
    Origin::serve_on(lan.internet.listen(addr), |mut stream| async move {
        let Ok(peer) = stream.peer_addr() else { return };
        if read_head(&mut stream, &mut Vec::new()).await.is_none() {
            return;
        }
        let body = peer.ip().to_string();
        let _ = stream
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await;
    })
}

/// The source address the origins saw for `GET http://{host}/` from `pc`.
async fn seen_from(pc: &Pc, host: &str) -> IpAddr {
    let response = pc
        .send(&format!(
            "GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        ))
        .await;
    assert_eq!(response.status, 200, "{host}: {}", response.text());
    response.text().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_start_from_the_addresses_upstream_bind_names() {
    if !DNS_TABLE {
        eprintln!("skipped: upstream.bind is not in this proxy's configuration yet");
        return;
    }
    let Some(lan) = Lan::build(1) else { return };
    let _dns = start_dns(
        &lan,
        Zone::new()
            .with("four.example", Answer::v4(&[server_v4(14)]))
            .with("six.example", Answer::v6(&[server_v6(14)])),
    );
    let _four = whoami(&lan, at(server_v4(14), 80));
    let _six = whoami(&lan, at(server_v6(14), 80));
    let proxy = lan.start_proxy(&Conf::default().text(&lan));
    let pc = &lan.pcs[0];

    // The system's choice: one of the gateway's two addresses on the link, per family.
    let chosen4 = seen_from(pc, "four.example").await;
    let chosen6 = seen_from(pc, "six.example").await;
    let other = |chosen: IpAddr, a: IpAddr, b: IpAddr| {
        assert!(chosen == a || chosen == b, "{chosen} is not the gateway's");
        if chosen == a {
            b
        } else {
            a
        }
    };
    let bind4 = other(chosen4, GATEWAY_WAN_V4.into(), GATEWAY_WAN2_V4.into());
    let bind6 = other(chosen6, GATEWAY_WAN_V6.into(), GATEWAY_WAN2_V6.into());

    // Bound to the other ones, connections start from them.
    proxy.reload(
        &Conf::with(&format!("[upstream]\nbind = [\"{bind4}\", \"{bind6}\"]\n")).text(&lan),
    );
    assert_eq!(seen_from(pc, "four.example").await, bind4);
    assert_eq!(seen_from(pc, "six.example").await, bind6);
}
