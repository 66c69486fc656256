//! The SOCKS wire formats, pure: the SOCKS5 greeting, the RFC 1929 log-in, the request, the
//! UDP datagram header (RFC 1928), and the SOCKS4/4a request; the replies; and which reply
//! code says what happened to a request. Decoders take the bytes read so far and say whether
//! more are needed, so that a message trickled byte by byte decodes as one sent whole. The
//! I/O (reading, dialling, relaying) is `crate::proxy::socks`'s.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::core::error::ErrorKind;
use crate::core::target::{parse_host, Host, Target};

/// Method 0x00: no authentication.
pub const NO_AUTH: u8 = 0x00;
/// Method 0x02: user name and password (RFC 1929).
pub const PASSWORD: u8 = 0x02;
/// The reply to a greeting none of whose methods is acceptable.
pub const NO_ACCEPTABLE: u8 = 0xFF;

/// The most bytes any SOCKS message the proxy reads can take (a SOCKS4a request with a
/// 255-byte user id and a 255-byte name is the longest, 520 bytes).
pub const MAX_MESSAGE: usize = 600;

/// The method of a UDP association's record, and the one rules match for its datagrams.
pub const UDP_METHOD: &str = "SOCKS5-UDP";

/// What a decoder made of the bytes so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decode<T> {
    /// The message is not complete: read more.
    More,
    /// The message, and how many bytes it took.
    Done(T, usize),
    /// The bytes are not this message.
    Bad(Malformed),
}

/// Why bytes are not a SOCKS message; the reply code that says so, where there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// The version byte is not the one expected.
    #[error("SOCKS version {0} is not spoken here")]
    Version(u8),
    /// A greeting that offers no method at all.
    #[error("the SOCKS greeting offers no authentication method")]
    NoMethods,
    /// The sub-negotiation version of RFC 1929 is not 1.
    #[error("the user name and password sub-negotiation has version {0}, not 1")]
    LogInVersion(u8),
    /// A command other than CONNECT, BIND and UDP ASSOCIATE.
    #[error("SOCKS command {0:#04x} is not known")]
    Command(u8),
    /// An address type other than IPv4, a name and IPv6.
    #[error("SOCKS address type {0:#04x} is not known")]
    AddressType(u8),
    /// A name of length 0 (or, in SOCKS4a, missing or too long).
    #[error("the destination name is empty")]
    Name,
    /// A name no resolver could look up (RFC 1928 allows 255 octets of anything; DNS 253 of
    /// a host name's characters): answered as an unreachable host, not a malformed request.
    #[error("the destination name is not a host name DNS could resolve")]
    NotAHostName,
    /// The reserved byte of a request is not 0.
    #[error("the reserved byte of the SOCKS request is not 0")]
    Reserved,
    /// More bytes than any SOCKS message holds, and still not one.
    #[error("the SOCKS message is too long")]
    TooLong,
}

impl Malformed {
    /// The SOCKS5 reply code that answers it.
    pub fn reply(self) -> u8 {
        match self {
            Malformed::Command(_) => Reply::COMMAND_NOT_SUPPORTED,
            Malformed::AddressType(_) => Reply::ADDRESS_TYPE_NOT_SUPPORTED,
            Malformed::NotAHostName => Reply::HOST_UNREACHABLE,
            _ => Reply::GENERAL_FAILURE,
        }
    }
}

/// SOCKS5 reply codes (RFC 1928 §6).
pub struct Reply;

impl Reply {
    /// Succeeded.
    pub const SUCCEEDED: u8 = 0x00;
    /// General SOCKS server failure.
    pub const GENERAL_FAILURE: u8 = 0x01;
    /// Connection not allowed by ruleset.
    pub const NOT_ALLOWED: u8 = 0x02;
    /// Network unreachable.
    pub const NETWORK_UNREACHABLE: u8 = 0x03;
    /// Host unreachable.
    pub const HOST_UNREACHABLE: u8 = 0x04;
    /// Connection refused.
    pub const CONNECTION_REFUSED: u8 = 0x05;
    /// TTL expired.
    pub const TTL_EXPIRED: u8 = 0x06;
    /// Command not supported.
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x07;
    /// Address type not supported.
    pub const ADDRESS_TYPE_NOT_SUPPORTED: u8 = 0x08;
}

/// The SOCKS5 reply code for a request that ended with a failure of `kind`.
pub fn reply_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Denied | ErrorKind::Auth | ErrorKind::Limit => Reply::NOT_ALLOWED,
        ErrorKind::Unreachable => Reply::NETWORK_UNREACHABLE,
        ErrorKind::Dns => Reply::HOST_UNREACHABLE,
        ErrorKind::Refused => Reply::CONNECTION_REFUSED,
        ErrorKind::Timeout => Reply::TTL_EXPIRED,
        _ => Reply::GENERAL_FAILURE,
    }
}

/// What a SOCKS5 greeting offers, of what the proxy can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Greeting {
    /// Method 0x00 is offered.
    pub no_auth: bool,
    /// Method 0x02 is offered.
    pub password: bool,
}

/// Decodes `05 NMETHODS METHODS...`.
pub fn greeting(buf: &[u8]) -> Decode<Greeting> {
    let Some(&version) = buf.first() else {
        return Decode::More;
    };
    if version != 5 {
        return Decode::Bad(Malformed::Version(version));
    }
    let Some(&n) = buf.get(1) else {
        return Decode::More;
    };
    if n == 0 {
        return Decode::Bad(Malformed::NoMethods);
    }
    let end = 2 + usize::from(n);
    let Some(methods) = buf.get(2..end) else {
        return Decode::More;
    };
    Decode::Done(
        Greeting {
            no_auth: methods.contains(&NO_AUTH),
            password: methods.contains(&PASSWORD),
        },
        end,
    )
}

/// A user name and password (RFC 1929), as sent: bytes, not necessarily UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub user: Vec<u8>,
    /// The password.
    pub password: Vec<u8>,
}

/// Decodes `01 ULEN UNAME PLEN PASSWD`.
pub fn credentials(buf: &[u8]) -> Decode<Credentials> {
    let Some(&version) = buf.first() else {
        return Decode::More;
    };
    if version != 1 {
        return Decode::Bad(Malformed::LogInVersion(version));
    }
    let Some(&ulen) = buf.get(1) else {
        return Decode::More;
    };
    let user_end = 2 + usize::from(ulen);
    let Some(&plen) = buf.get(user_end) else {
        return Decode::More;
    };
    let end = user_end + 1 + usize::from(plen);
    let Some(password) = buf.get(user_end + 1..end) else {
        return Decode::More;
    };
    Decode::Done(
        Credentials {
            user: buf[2..user_end].to_vec(),
            password: password.to_vec(),
        },
        end,
    )
}

/// A SOCKS command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// CONNECT: a TCP connection to the destination.
    Connect,
    /// BIND: a listening socket for a connection back (not supported).
    Bind,
    /// UDP ASSOCIATE: a UDP relay.
    UdpAssociate,
}

/// A SOCKS5 request: the command and the address it names (for UDP ASSOCIATE, the address
/// the client will send from, often `0.0.0.0:0`). A port of 0 is decoded as such: it is
/// meaningful for UDP ASSOCIATE, and refused by the plan for CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What the client asks for.
    pub command: Command,
    /// Where.
    pub target: Target,
}

/// Decodes `05 CMD 00 ATYP DST.ADDR DST.PORT`.
pub fn request(buf: &[u8]) -> Decode<Request> {
    let Some(head) = buf.get(..3) else {
        return match buf.first() {
            Some(&v) if v != 5 => Decode::Bad(Malformed::Version(v)),
            _ => Decode::More,
        };
    };
    if head[0] != 5 {
        return Decode::Bad(Malformed::Version(head[0]));
    }
    let command = match head[1] {
        1 => Command::Connect,
        2 => Command::Bind,
        3 => Command::UdpAssociate,
        other => return Decode::Bad(Malformed::Command(other)),
    };
    if head[2] != 0 {
        return Decode::Bad(Malformed::Reserved);
    }
    match address(&buf[3..]) {
        Decode::More => Decode::More,
        Decode::Bad(e) => Decode::Bad(e),
        Decode::Done(target, used) => Decode::Done(Request { command, target }, 3 + used),
    }
}

/// Decodes `ATYP ADDR PORT`, the address of requests and of UDP headers.
pub fn address(buf: &[u8]) -> Decode<Target> {
    let Some(&atyp) = buf.first() else {
        return Decode::More;
    };
    let (host, at) = match atyp {
        1 => {
            let Some(b) = buf.get(1..5) else {
                return Decode::More;
            };
            (
                Host::Ip(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
                5,
            )
        }
        4 => {
            let Some(b) = buf.get(1..17) else {
                return Decode::More;
            };
            let mut octets = [0u8; 16];
            octets.copy_from_slice(b);
            (Host::Ip(IpAddr::V6(Ipv6Addr::from(octets))), 17)
        }
        3 => {
            let Some(&len) = buf.get(1) else {
                return Decode::More;
            };
            if len == 0 {
                return Decode::Bad(Malformed::Name);
            }
            let end = 2 + usize::from(len);
            let Some(name) = buf.get(2..end) else {
                return Decode::More;
            };
            let host = std::str::from_utf8(name)
                .ok()
                .filter(|n| !n.starts_with('['))
                .and_then(|n| parse_host(n).ok());
            match host {
                Some(host) => (host, end),
                None => return Decode::Bad(Malformed::NotAHostName),
            }
        }
        other => return Decode::Bad(Malformed::AddressType(other)),
    };
    let Some(p) = buf.get(at..at + 2) else {
        return Decode::More;
    };
    let port = u16::from_be_bytes([p[0], p[1]]);
    Decode::Done(Target { host, port }, at + 2)
}

/// Appends `ATYP ADDR PORT` for an address.
fn put_address(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip().to_canonical() {
        IpAddr::V4(ip) => {
            out.push(1);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// A SOCKS5 reply: `05 REP 00 ATYP BND.ADDR BND.PORT`; `bound` is `0.0.0.0:0` when there is
/// nothing to tell.
pub fn reply(code: u8, bound: Option<SocketAddr>) -> Vec<u8> {
    // Room for the longest (IPv6) at once.
    let mut out = Vec::with_capacity(22);
    out.extend_from_slice(&[5, code, 0]);
    put_address(
        &mut out,
        bound.unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)),
    );
    out
}

/// A UDP datagram from the client, decoded: `RSV RSV FRAG ATYP DST.ADDR DST.PORT DATA`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The fragment number; the proxy drops every datagram whose number is not 0.
    pub frag: u8,
    /// Where to.
    pub target: Target,
    /// Where the data starts in the datagram.
    pub data_at: usize,
}

/// Decodes the SOCKS UDP header of a datagram; `None` when it is not one (a datagram comes
/// whole: there is no "more").
pub fn datagram(buf: &[u8]) -> Option<Datagram> {
    let head = buf.get(..3)?;
    if head[0] != 0 || head[1] != 0 {
        return None;
    }
    match address(&buf[3..]) {
        Decode::Done(target, used) => Some(Datagram {
            frag: head[2],
            target,
            data_at: 3 + used,
        }),
        _ => None,
    }
}

/// The SOCKS UDP header of a datagram coming back from `from`.
pub fn datagram_header(from: SocketAddr) -> Vec<u8> {
    let mut out = vec![0, 0, 0];
    put_address(&mut out, from);
    out
}

/// A SOCKS4 or 4a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request4 {
    /// CONNECT or BIND.
    pub command: Command,
    /// Where: an IPv4 address, or (4a, address `0.0.0.x`) a name.
    pub target: Target,
    /// The user id, as sent.
    pub user: Vec<u8>,
}

/// The longest user id or name a SOCKS4 request may carry.
const MAX_FIELD4: usize = 255;

/// Decodes `04 CMD PORT IP USERID 00 [NAME 00]`.
pub fn request4(buf: &[u8]) -> Decode<Request4> {
    let Some(&version) = buf.first() else {
        return Decode::More;
    };
    if version != 4 {
        return Decode::Bad(Malformed::Version(version));
    }
    let Some(head) = buf.get(..8) else {
        return Decode::More;
    };
    let command = match head[1] {
        1 => Command::Connect,
        2 => Command::Bind,
        other => return Decode::Bad(Malformed::Command(other)),
    };
    let port = u16::from_be_bytes([head[2], head[3]]);
    let ip = Ipv4Addr::new(head[4], head[5], head[6], head[7]);
    let (user, after_user) = match field4(&buf[8..]) {
        Ok(Some((user, used))) => (user.to_vec(), 8 + used),
        Ok(None) => return Decode::More,
        Err(e) => return Decode::Bad(e),
    };
    let o = ip.octets();
    // SOCKS4a: 0.0.0.x with x != 0 says a name follows.
    if o[..3] == [0, 0, 0] && o[3] != 0 {
        return match field4(&buf[after_user..]) {
            Ok(Some((name, used))) => {
                let host = std::str::from_utf8(name)
                    .ok()
                    .filter(|n| !n.is_empty() && !n.starts_with('['))
                    .and_then(|n| parse_host(n).ok());
                match host {
                    Some(host) => Decode::Done(
                        Request4 {
                            command,
                            target: Target { host, port },
                            user,
                        },
                        after_user + used,
                    ),
                    None => Decode::Bad(Malformed::Name),
                }
            }
            Ok(None) => Decode::More,
            Err(e) => Decode::Bad(e),
        };
    }
    Decode::Done(
        Request4 {
            command,
            target: Target {
                host: Host::Ip(IpAddr::V4(ip)),
                port,
            },
            user,
        },
        after_user,
    )
}

/// A NUL-terminated field of at most [`MAX_FIELD4`] bytes: the bytes and the length with the
/// NUL; `None` until the NUL arrives.
fn field4(buf: &[u8]) -> Result<Option<(&[u8], usize)>, Malformed> {
    match buf.iter().position(|&b| b == 0) {
        Some(at) if at <= MAX_FIELD4 => Ok(Some((&buf[..at], at + 1))),
        Some(_) => Err(Malformed::Name),
        None if buf.len() > MAX_FIELD4 => Err(Malformed::Name),
        None => Ok(None),
    }
}

/// A SOCKS4 reply: `00 5A` (granted) or `00 5B` (rejected), then the bound port and IPv4
/// address (zeros when there is none to tell).
pub fn reply4(granted: bool, bound: Option<SocketAddr>) -> [u8; 8] {
    let mut out = [0, if granted { 0x5A } else { 0x5B }, 0, 0, 0, 0, 0, 0];
    if let Some(addr) = bound {
        if let IpAddr::V4(ip) = addr.ip().to_canonical() {
            out[2..4].copy_from_slice(&addr.port().to_be_bytes());
            out[4..8].copy_from_slice(&ip.octets());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> Host {
        Host::Name(n.to_owned())
    }

    /// A request decodes the same whether its bytes come whole or cut anywhere: every prefix
    /// asks for more, the whole gives the request and its length, and bytes after it are
    /// left alone.
    fn same_when_trickled<T: std::fmt::Debug + PartialEq + Clone>(
        decode: fn(&[u8]) -> Decode<T>,
        bytes: &[u8],
    ) -> Decode<T> {
        let whole = decode(bytes);
        let mut with_tail = bytes.to_vec();
        with_tail.extend_from_slice(b"tail");
        match &whole {
            Decode::Done(_, used) => {
                assert_eq!(*used, bytes.len(), "{bytes:?}");
                for cut in 0..bytes.len() {
                    assert_eq!(decode(&bytes[..cut]), Decode::More, "{bytes:?} at {cut}");
                }
                assert_eq!(decode(&with_tail), whole);
            }
            Decode::Bad(_) => {
                // Once bad, more bytes do not make it good.
                assert_eq!(decode(&with_tail), whole, "{bytes:?}");
            }
            Decode::More => {}
        }
        whole
    }

    #[test]
    fn requests_decode_by_address_type() {
        let cases: Vec<(Vec<u8>, Decode<Request>)> = vec![
            (
                vec![5, 1, 0, 1, 127, 0, 0, 1, 0, 80],
                Decode::Done(
                    Request {
                        command: Command::Connect,
                        target: Target {
                            host: Host::Ip("127.0.0.1".parse().unwrap()),
                            port: 80,
                        },
                    },
                    10,
                ),
            ),
            (
                [&[5u8, 1, 0, 4][..], &[0; 15], &[1, 1, 187]].concat(),
                Decode::Done(
                    Request {
                        command: Command::Connect,
                        target: Target {
                            host: Host::Ip("::1".parse().unwrap()),
                            port: 443,
                        },
                    },
                    22,
                ),
            ),
            (
                [&[5u8, 3, 0, 3, 11][..], b"Example.COM", &[0, 0]].concat(),
                Decode::Done(
                    Request {
                        command: Command::UdpAssociate,
                        target: Target {
                            host: name("example.com"),
                            port: 0,
                        },
                    },
                    18,
                ),
            ),
            (
                [&[5u8, 2, 0, 3, 9][..], b"127.0.0.1", &[0, 21]].concat(),
                Decode::Done(
                    Request {
                        command: Command::Bind,
                        target: Target {
                            host: Host::Ip("127.0.0.1".parse().unwrap()),
                            port: 21,
                        },
                    },
                    16,
                ),
            ),
            (vec![5, 1, 0, 3, 0, 0, 80], Decode::Bad(Malformed::Name)),
            (
                [&[5u8, 1, 0, 3, 3][..], b"a b", &[0, 80]].concat(),
                Decode::Bad(Malformed::NotAHostName),
            ),
            (vec![5, 1, 0, 9], Decode::Bad(Malformed::AddressType(9))),
            (vec![5, 9, 0, 1], Decode::Bad(Malformed::Command(9))),
            (vec![5, 1, 1, 1], Decode::Bad(Malformed::Reserved)),
            (vec![4], Decode::Bad(Malformed::Version(4))),
            (vec![5, 1], Decode::More),
        ];
        for (bytes, want) in cases {
            assert_eq!(same_when_trickled(request, &bytes), want, "{bytes:?}");
        }
    }

    /// Property-style: requests built from random parts (every command byte, every address
    /// type, names of random length and bytes, random ports) decode, whole and cut at every
    /// point, to what they were built from, or are refused for the part that is wrong; no
    /// input panics, and no input of random bytes is taken for more than it holds.
    #[test]
    fn random_requests_decode_to_what_they_were_built_from() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n) as u8
        };
        let (mut done, mut bad) = (0, 0);
        for _ in 0..3_000 {
            let command = next(5);
            let atyp = [1u8, 3, 4, 2, 5][usize::from(next(5))];
            let mut bytes = vec![5, command, 0, atyp];
            let mut host = None;
            match atyp {
                1 => {
                    let o = [next(255), next(255), next(255), next(255)];
                    bytes.extend_from_slice(&o);
                    host = Some(Host::Ip(IpAddr::V4(Ipv4Addr::from(o))));
                }
                4 => {
                    let o: [u8; 16] = std::array::from_fn(|_| next(255));
                    bytes.extend_from_slice(&o);
                    host = Some(Host::Ip(IpAddr::V6(Ipv6Addr::from(o))));
                }
                3 => {
                    let len = next(40);
                    let alphabet = b"abcxyz019-.";
                    let text: Vec<u8> = (0..len)
                        .map(|_| alphabet[usize::from(next(alphabet.len() as u64))])
                        .collect();
                    bytes.push(len);
                    bytes.extend_from_slice(&text);
                    host = std::str::from_utf8(&text)
                        .ok()
                        .filter(|t| !t.is_empty())
                        .and_then(|t| parse_host(t).ok());
                }
                _ => {}
            }
            let port = u16::from_be_bytes([next(255), next(255)]);
            bytes.extend_from_slice(&port.to_be_bytes());
            let got = same_when_trickled(request, &bytes);
            let want_command = match command {
                1 => Some(Command::Connect),
                2 => Some(Command::Bind),
                3 => Some(Command::UdpAssociate),
                _ => None,
            };
            match (want_command, atyp, &host, got) {
                (None, _, _, Decode::Bad(Malformed::Command(c))) => {
                    assert_eq!(c, command);
                    bad += 1
                }
                (Some(_), 2 | 5, _, Decode::Bad(Malformed::AddressType(t))) => {
                    assert_eq!(t, atyp);
                    bad += 1
                }
                (Some(_), 3, None, Decode::Bad(Malformed::Name | Malformed::NotAHostName)) => {
                    bad += 1
                }
                (Some(c), _, Some(h), Decode::Done(r, _)) => {
                    assert_eq!(r.command, c);
                    assert_eq!(&r.target.host, h);
                    assert_eq!(r.target.port, port);
                    done += 1;
                }
                (c, a, h, got) => panic!("{bytes:?}: {c:?} {a} {h:?} gave {got:?}"),
            }
            // Random bytes never panic and never claim more than they hold.
            let noise: Vec<u8> = (0..next(30)).map(|_| next(255)).collect();
            for decoded in [request(&noise).clone()] {
                if let Decode::Done(_, used) = decoded {
                    assert!(used <= noise.len());
                }
            }
            let _ = (greeting(&noise), credentials(&noise), request4(&noise));
            let _ = datagram(&noise);
        }
        assert!(done > 500 && bad > 500, "{done} {bad}");
    }

    #[test]
    fn greetings_and_log_ins() {
        let g = |no_auth, password| Greeting { no_auth, password };
        assert_eq!(
            same_when_trickled(greeting, &[5, 2, 0, 2]),
            Decode::Done(g(true, true), 4)
        );
        assert_eq!(
            same_when_trickled(greeting, &[5, 1, 0x80]),
            Decode::Done(g(false, false), 3)
        );
        assert_eq!(greeting(&[5, 0]), Decode::Bad(Malformed::NoMethods));
        assert_eq!(greeting(&[4, 1, 0]), Decode::Bad(Malformed::Version(4)));
        // A method list longer than what came: more is needed.
        assert_eq!(greeting(&[5, 5, 0, 2]), Decode::More);
        let c = same_when_trickled(credentials, b"\x01\x05alice\x06s3cret");
        assert_eq!(
            c,
            Decode::Done(
                Credentials {
                    user: b"alice".to_vec(),
                    password: b"s3cret".to_vec()
                },
                14
            )
        );
        assert_eq!(
            same_when_trickled(credentials, b"\x01\x00\x00"),
            Decode::Done(
                Credentials {
                    user: vec![],
                    password: vec![]
                },
                3
            )
        );
        assert_eq!(
            credentials(b"\x05"),
            Decode::Bad(Malformed::LogInVersion(5))
        );
    }

    #[test]
    fn socks4_and_4a_requests() {
        let r = same_when_trickled(request4, b"\x04\x01\x00\x50\x7f\x00\x00\x01bob\x00");
        assert_eq!(
            r,
            Decode::Done(
                Request4 {
                    command: Command::Connect,
                    target: Target {
                        host: Host::Ip("127.0.0.1".parse().unwrap()),
                        port: 80
                    },
                    user: b"bob".to_vec()
                },
                12
            )
        );
        let r = same_when_trickled(
            request4,
            b"\x04\x01\x00\x50\x00\x00\x00\x01\x00LocalHost\x00",
        );
        assert!(
            matches!(&r, Decode::Done(q, 19) if q.target.host == name("localhost")),
            "{r:?}"
        );
        assert_eq!(
            request4(b"\x04\x01\x00\x50\x00\x00\x00\x01\x00\x00"),
            Decode::Bad(Malformed::Name)
        );
        assert_eq!(
            request4(&[&b"\x04\x01\x00\x50\x7f\x00\x00\x01"[..], &[b'u'; 300]].concat()),
            Decode::Bad(Malformed::Name)
        );
        assert_eq!(request4(b"\x04\x03"), Decode::More);
        assert_eq!(
            request4(b"\x04\x03\x00\x00\x00\x00\x00\x00"),
            Decode::Bad(Malformed::Command(3))
        );
    }

    #[test]
    fn replies_and_datagrams() {
        assert_eq!(
            reply(Reply::SUCCEEDED, Some("10.0.0.1:4242".parse().unwrap())),
            [5, 0, 0, 1, 10, 0, 0, 1, 0x10, 0x92]
        );
        assert_eq!(
            reply(Reply::NOT_ALLOWED, None),
            [5, 2, 0, 1, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(reply(0, Some("[::1]:1".parse().unwrap())).len(), 22);
        assert_eq!(
            reply4(true, Some("10.0.0.1:80".parse().unwrap())),
            [0, 0x5A, 0, 80, 10, 0, 0, 1]
        );
        assert_eq!(reply4(false, None), [0, 0x5B, 0, 0, 0, 0, 0, 0]);
        let mut d = datagram_header("127.0.0.1:53".parse().unwrap());
        assert_eq!(d, [0, 0, 0, 1, 127, 0, 0, 1, 0, 53]);
        d.extend_from_slice(b"data");
        let got = datagram(&d).unwrap();
        assert_eq!(
            (got.frag, got.target.port, &d[got.data_at..]),
            (0, 53, &b"data"[..])
        );
        d[2] = 1;
        assert_eq!(datagram(&d).unwrap().frag, 1);
        assert_eq!(datagram(&[0, 1, 0, 1]), None);
        assert_eq!(datagram(&[0, 0, 0, 1, 1]), None);
        for (kind, code) in [
            (ErrorKind::Denied, 2),
            (ErrorKind::Unreachable, 3),
            (ErrorKind::Dns, 4),
            (ErrorKind::Refused, 5),
            (ErrorKind::Timeout, 6),
            (ErrorKind::Parent, 1),
        ] {
            assert_eq!(reply_code(kind), code, "{kind:?}");
        }
    }
}
