//! The test DNS server answers as a resolver expects: the ID and the question echoed, RD
//! copied, records for A and AAAA, an SOA with the negative answers, silence for
//! [`Answer::Never`].

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::support::dns::{Answer, DnsServer, Zone};

/// A query for `name` of type `qtype` with ID `id`, RD set, the name in the case given, and
/// an EDNS OPT record (as resolvers send).
fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    // OPT: root name, type 41, UDP size 1232, no extended RCODE or flags, no options.
    q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    q
}

/// Sends `q` to `server` and returns the reply, or `None` after 300 ms of silence.
async fn ask(server: &DnsServer, q: &[u8]) -> Option<Vec<u8>> {
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.send_to(q, server.addr).await.unwrap();
    let mut buf = vec![0u8; 1500];
    let (n, _) = tokio::time::timeout(Duration::from_millis(300), client.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    buf.truncate(n);
    Some(buf)
}

fn u16_at(msg: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([msg[at], msg[at + 1]])
}

/// The header fields: (id, flags, qdcount, ancount, nscount, arcount).
fn header(msg: &[u8]) -> (u16, u16, u16, u16, u16, u16) {
    (
        u16_at(msg, 0),
        u16_at(msg, 2),
        u16_at(msg, 4),
        u16_at(msg, 6),
        u16_at(msg, 8),
        u16_at(msg, 10),
    )
}

#[tokio::test]
async fn the_test_dns_server_answers_like_a_dns_server() {
    let v4 = Ipv4Addr::new(192, 0, 2, 10);
    let v6: Ipv6Addr = "2001:db8::10".parse().unwrap();
    let zone = Zone::new()
        .with("Both.Example", Answer::dual(&[v4], &[v6]))
        .with(
            "v4.example.",
            Answer::v4(&[v4, Ipv4Addr::new(192, 0, 2, 11)]),
        )
        .with("gone.example", Answer::NxDomain)
        .with("silent.example", Answer::Never);
    let server = DnsServer::start("127.0.0.1:0".parse().unwrap(), zone).await;

    // A, in mixed case: the question comes back as sent, after the ID and flags.
    let q = query(0x1234, "bOTh.example", 1);
    let reply = ask(&server, &q).await.expect("an answer for A");
    let question_end = q.len() - 11;
    let (id, flags, qd, an, ns, _) = header(&reply);
    assert_eq!(id, 0x1234);
    assert_eq!(flags & 0x8000, 0x8000, "QR is set");
    assert_eq!(flags & 0x0100, 0x0100, "RD is copied");
    assert_eq!(flags & 0x000f, 0, "NOERROR");
    assert_eq!((qd, an, ns), (1, 1, 0));
    assert_eq!(&reply[12..question_end], &q[12..question_end]);
    // The answer: a pointer to the question's name, A, IN, TTL 60, 4 bytes of address.
    let rr = &reply[question_end..];
    assert_eq!(&rr[..2], &[0xc0, 0x0c]);
    assert_eq!((u16_at(rr, 2), u16_at(rr, 4)), (1, 1));
    assert_eq!(u32::from_be_bytes(rr[6..10].try_into().unwrap()), 60);
    assert_eq!(u16_at(rr, 10), 4);
    assert_eq!(&rr[12..16], &v4.octets());

    // AAAA of the same name.
    let reply = ask(&server, &query(7, "both.example", 28)).await.unwrap();
    let (id, _, _, an, _, _) = header(&reply);
    assert_eq!((id, an), (7, 1));
    assert_eq!(&reply[reply.len() - 16..], &v6.octets());

    // Two A records; AAAA of a v4-only name is NOERROR, empty, with an SOA whose MINIMUM
    // (the negative TTL) is the records' TTL.
    let reply = ask(&server, &query(8, "v4.example", 1)).await.unwrap();
    assert_eq!(header(&reply).3, 2);
    let reply = ask(&server, &query(9, "v4.example", 28)).await.unwrap();
    let (_, flags, _, an, ns, _) = header(&reply);
    assert_eq!((flags & 0x000f, an, ns), (0, 0, 1));
    assert_eq!(&reply[reply.len() - 4..], &60u32.to_be_bytes());

    // NXDOMAIN, for a listed name and for a name the zone does not hold, with an SOA.
    for name in ["gone.example", "unknown.example"] {
        let reply = ask(&server, &query(10, name, 1)).await.unwrap();
        let (_, flags, qd, an, ns, _) = header(&reply);
        assert_eq!((flags & 0x000f, qd, an, ns), (3, 1, 0, 1), "{name}");
    }

    // Another type (MX) of an existing name: NOERROR, no records.
    let reply = ask(&server, &query(11, "both.example", 15)).await.unwrap();
    let (_, flags, _, an, _, _) = header(&reply);
    assert_eq!((flags & 0x000f, an), (0, 0));

    // Never: no reply, but counted.
    assert!(ask(&server, &query(12, "silent.example", 1))
        .await
        .is_none());
    assert_eq!(server.queries_for("SILENT.example."), 1);
    assert_eq!(server.queries_for("both.example"), 3);
    assert_eq!(server.queries(), 8);
}
