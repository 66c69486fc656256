//! `listen_tls` and `[tls]`: the certificate chain and key read from their PEM files into a
//! rustls server configuration (TLS 1.2 and 1.3, rustls's safe defaults, the ring provider),
//! at start and again at each reload, so that a renewed certificate is served to new
//! connections without a restart; and the dates of each certificate of the chain, so that
//! `check`, the start and each reload warn of one that has expired, is not valid yet, or
//! ends within [`EXPIRY_WARNING_DAYS`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::problem::{KeyPath, Problem, ProblemKind};
use super::schema::Config;

/// The protocols offered by ALPN, in order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// How many days before a certificate ends its warning starts; a certificate made to live
/// less than three times as long is warned of in the last third of its life instead (what
/// ACME clients renew at), so that a short-lived certificate does not warn all its life.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

const DAY: i64 = 86_400;

/// The TLS listeners as the proxy runs them.
#[derive(Clone)]
pub struct TlsSettings {
    /// The addresses (`listen_tls`).
    pub listen: Vec<SocketAddr>,
    /// What the handshakes use: the chain, the key, the protocols.
    pub server: Arc<rustls::ServerConfig>,
    /// The certificate file, for messages.
    pub cert_path: PathBuf,
    /// The proxy's own certificate (the chain's first), for `check`'s look at its names.
    pub leaf: CertificateDer<'static>,
    /// The certificate authority offered for download on the proxy's own page (`[tls] ca`).
    pub ca: Option<Arc<CaFile>>,
    /// When each certificate of the chain is valid, in the file's order.
    pub dates: Vec<CertDates>,
}

/// When one certificate of the `[tls] cert` chain may be used: its notBefore and notAfter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertDates {
    /// Its place in the file, from 1 (the proxy's own certificate).
    pub place: usize,
    /// Its subject as people read it: the common name, else the whole name.
    pub subject: String,
    /// Valid from.
    pub not_before: jiff::Timestamp,
    /// Valid until.
    pub not_after: jiff::Timestamp,
}

impl CertDates {
    /// The dates of each certificate of `chain` that can be read (rustls has already
    /// accepted the chain; a certificate x509-parser cannot read is left out).
    fn of(chain: &[CertificateDer<'_>]) -> Vec<CertDates> {
        let mut out = Vec::new();
        for (i, der) in chain.iter().enumerate() {
            let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
                continue;
            };
            let validity = cert.validity();
            let (Ok(not_before), Ok(not_after)) = (
                jiff::Timestamp::from_second(validity.not_before.timestamp()),
                jiff::Timestamp::from_second(validity.not_after.timestamp()),
            ) else {
                continue;
            };
            let subject = cert
                .subject()
                .iter_common_name()
                .find_map(|cn| cn.as_str().ok().map(str::to_owned))
                .unwrap_or_else(|| cert.subject().to_string());
            out.push(CertDates {
                place: i + 1,
                subject,
                not_before,
                not_after,
            });
        }
        out
    }

    /// What is wrong with these dates at `now`, if anything, in one line naming the file
    /// (`cert_path`), the certificate and the date.
    pub fn finding(&self, cert_path: &Path, now: jiff::Timestamp) -> Option<String> {
        let which = match self.place {
            1 => format!("the certificate in {}", cert_path.display()),
            n => format!(
                "certificate {n} of the chain in {} ({})",
                cert_path.display(),
                self.subject
            ),
        };
        let (before, after, now) = (
            self.not_before.as_second(),
            self.not_after.as_second(),
            now.as_second(),
        );
        let warn_within = (EXPIRY_WARNING_DAYS * DAY).min((after - before) / 3);
        if now < before {
            Some(format!(
                "[tls] cert: {which} is not valid until {} (in {}): clients refuse it until then; check this machine's clock and the certificate's",
                show(self.not_before),
                days(before - now)
            ))
        } else if now >= after {
            Some(format!(
                "[tls] cert: {which} expired on {} ({} ago): clients refuse it; make a new one (portcullis cert) and reload",
                show(self.not_after),
                days(now - after)
            ))
        } else if after - now <= warn_within {
            Some(format!(
                "[tls] cert: {which} expires on {}, in {}: make a new one before then (portcullis cert, with the same --out to keep the authority) and reload",
                show(self.not_after),
                days(after - now)
            ))
        } else {
            None
        }
    }
}

/// A moment as the warnings show it: `2026-03-01 12:00 UTC`.
fn show(at: jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%d %H:%M UTC").to_string()
}

/// A span of `seconds` in whole days: `less than a day`, `1 day`, `12 days`.
fn days(seconds: i64) -> String {
    match seconds / DAY {
        0 => "less than a day".to_owned(),
        1 => "1 day".to_owned(),
        n => format!("{n} days"),
    }
}

/// A certificate authority's certificate, as the own page serves it.
#[derive(Debug)]
pub struct CaFile {
    /// PEM, as read (`/ca.pem`).
    pub pem: bytes::Bytes,
    /// DER, the first certificate of the file (`/ca.crt`).
    pub der: bytes::Bytes,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("listen", &self.listen)
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// Whether the certificate is valid for `name` (a host name or an IP address), as a
    /// client that trusts its issuer would check; `None` when `name` is neither.
    pub fn covers(&self, name: &str) -> Option<bool> {
        let name = ServerName::try_from(name.trim_start_matches('[').trim_end_matches(']'))
            .ok()?
            .to_owned();
        let cert = webpki::EndEntityCert::try_from(&self.leaf).ok()?;
        Some(cert.verify_is_valid_for_subject_name(&name).is_ok())
    }

    /// Every certificate of the chain that has expired, is not valid yet, or ends soon at
    /// `now`: one line each, for `check` and the warnings at start and reload.
    pub fn date_findings(&self, now: jiff::Timestamp) -> Vec<String> {
        self.dates
            .iter()
            .filter_map(|dates| dates.finding(&self.cert_path, now))
            .collect()
    }
}

impl Config {
    /// `listen_tls` and `[tls]`, checked and read; `None` when there is no TLS listener.
    pub(super) fn tls_settings(
        &self,
        base: &Path,
        problems: &mut Vec<Problem>,
    ) -> Option<TlsSettings> {
        let mut bad = |key: &str, why: String| {
            problems.push(Problem::new(
                KeyPath::keys(["tls", key]),
                ProblemKind::BadTls(why),
            ));
        };
        let (cert, key) = (&self.tls.cert, &self.tls.key);
        if self.listen_tls.is_empty() {
            return None;
        }
        let (Some(cert), Some(key)) = (cert, key) else {
            bad(
                if cert.is_none() { "cert" } else { "key" },
                "listen_tls needs [tls] cert and key: the PEM files of the proxy's certificate chain and its private key (`portcullis cert` makes a pair for a LAN)".into(),
            );
            return None;
        };
        let cert_path = base.join(cert);
        let key_path = base.join(key);
        let chain: Result<Vec<CertificateDer<'static>>, _> =
            match CertificateDer::pem_file_iter(&cert_path) {
                Ok(certs) => certs.collect(),
                Err(e) => Err(e),
            };
        let chain = match chain {
            Ok(chain) if !chain.is_empty() => chain,
            Ok(_) => {
                bad(
                    "cert",
                    format!("{} holds no PEM certificate", cert_path.display()),
                );
                return None;
            }
            Err(e) => {
                bad("cert", format!("cannot read {}: {e}", cert_path.display()));
                return None;
            }
        };
        let key_der = match PrivateKeyDer::from_pem_file(&key_path) {
            Ok(key) => key,
            Err(e) => {
                bad(
                    "key",
                    format!("cannot read a private key from {}: {e}", key_path.display()),
                );
                return None;
            }
        };
        let leaf = chain[0].clone();
        let dates = CertDates::of(&chain);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())
            .and_then(|builder| {
                builder
                    .with_no_client_auth()
                    .with_single_cert(chain, key_der)
                    .map_err(|e| e.to_string())
            });
        let mut server = match server {
            Ok(server) => server,
            Err(e) => {
                bad(
                    "key",
                    format!(
                        "{} and {} do not make a certificate and its key: {e}",
                        cert_path.display(),
                        key_path.display()
                    ),
                );
                return None;
            }
        };
        server.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        let ca = self.tls.ca.as_ref().and_then(|ca| {
            let path = base.join(ca);
            let read = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|pem| {
                    let der = CertificateDer::from_pem_slice(&pem).map_err(|e| e.to_string())?;
                    Ok(CaFile {
                        der: bytes::Bytes::copy_from_slice(&der),
                        pem: pem.into(),
                    })
                });
            read.map_err(|e| {
                bad(
                    "ca",
                    format!("cannot read a PEM certificate from {}: {e}", path.display()),
                )
            })
            .ok()
            .map(Arc::new)
        });
        Some(TlsSettings {
            listen: self.listen_tls.clone(),
            server: Arc::new(server),
            cert_path,
            leaf,
            ca,
            dates,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> jiff::Timestamp {
        text.parse().unwrap()
    }

    fn lived(place: usize, from: &str, until: &str) -> CertDates {
        CertDates {
            place,
            subject: "Portcullis LAN CA".into(),
            not_before: at(from),
            not_after: at(until),
        }
    }

    #[test]
    fn dates_warn_when_expired_not_yet_valid_or_ending_soon() {
        let file = Path::new("/etc/portcullis/tls/proxy.pem");
        let year = lived(1, "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z");
        let cases: &[(&CertDates, &str, Option<&str>)] = &[
            (&year, "2026-06-01T00:00:00Z", None),
            (&year, "2026-12-01T00:00:00Z", None),
            (
                &year,
                "2026-12-02T00:00:00Z",
                Some("the certificate in /etc/portcullis/tls/proxy.pem expires on 2027-01-01 00:00 UTC, in 30 days"),
            ),
            (&year, "2026-12-31T12:00:00Z", Some("expires on 2027-01-01 00:00 UTC, in less than a day")),
            (&year, "2027-01-01T00:00:00Z", Some("expired on 2027-01-01 00:00 UTC (less than a day ago)")),
            (
                &year,
                "2027-01-03T00:00:00Z",
                Some("the certificate in /etc/portcullis/tls/proxy.pem expired on 2027-01-01 00:00 UTC (2 days ago): clients refuse it"),
            ),
            (
                &year,
                "2025-12-30T23:00:00Z",
                Some("the certificate in /etc/portcullis/tls/proxy.pem is not valid until 2026-01-01 00:00 UTC (in 1 day)"),
            ),
        ];
        for (dates, now, want) in cases {
            let said = dates.finding(file, at(now));
            match want {
                None => assert_eq!(said, None, "{now}"),
                Some(want) => {
                    let said = said.unwrap_or_default();
                    assert!(said.contains(want), "{now}: {said}");
                }
            }
        }
        // Another certificate of the chain is named by its place and subject.
        let ca = lived(2, "2016-01-01T00:00:00Z", "2026-01-01T00:00:00Z");
        let said = ca.finding(file, at("2026-02-01T00:00:00Z")).unwrap();
        assert!(
            said.contains("certificate 2 of the chain in /etc/portcullis/tls/proxy.pem (Portcullis LAN CA) expired on 2026-01-01"),
            "{said}"
        );
        // A certificate made to live six days is warned of in its last two only.
        let short = lived(1, "2026-03-01T00:00:00Z", "2026-03-07T00:00:00Z");
        assert_eq!(short.finding(file, at("2026-03-04T00:00:00Z")), None);
        let said = short.finding(file, at("2026-03-05T12:00:00Z")).unwrap();
        assert!(said.contains("in 1 day"), "{said}");
    }

    #[test]
    fn dates_are_read_from_each_certificate_of_the_chain() {
        let params = |names: &[&str], from: (i32, u8, u8), until: (i32, u8, u8)| {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut params = rcgen::CertificateParams::new(names).unwrap();
            params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
            params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
            params
        };
        let mut ca_params = params(&[], (2020, 1, 1), (2030, 1, 1));
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = params(&["proxy.lan"], (2024, 5, 1), (2025, 5, 1))
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let dates = CertDates::of(&[leaf.der().clone(), ca.der().clone()]);
        assert_eq!(dates.len(), 2, "{dates:?}");
        assert_eq!(
            (dates[0].place, dates[0].not_before, dates[0].not_after),
            (1, at("2024-05-01T00:00:00Z"), at("2025-05-01T00:00:00Z"))
        );
        assert_eq!((dates[1].place, dates[1].subject.as_str()), (2, "Test CA"));
        assert_eq!(dates[1].not_after, at("2030-01-01T00:00:00Z"));
    }
}
