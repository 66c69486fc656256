//! `listen_tls` and `[tls]`: the certificate chain and key read from their PEM files into a
//! rustls server configuration (TLS 1.2 and 1.3, rustls's safe defaults, the ring provider),
//! at start and again at each reload, so that a renewed certificate is served to new
//! connections without a restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::problem::{KeyPath, Problem, ProblemKind};
use super::schema::Config;

/// The protocols offered by ALPN, in order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

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
        })
    }
}
