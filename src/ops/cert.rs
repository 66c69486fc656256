//! `portcullis cert`: a certificate for a proxy on a LAN that has no public name, so that
//! clients can speak TLS to it (`listen_tls`). It makes a small local certificate authority
//! (kept and reused: the clients trust it once) and, signed by it, a server certificate for
//! the names and addresses clients use, and says how to make each kind of client trust the
//! authority.
//!
//! Files in `--out DIR`: `ca.pem` (the authority's certificate, to install on the clients),
//! `ca.key` (its key: keep it on this machine), `proxy.pem` (the server certificate and then
//! the authority's: the chain `[tls] cert` names) and `proxy.key` (`[tls] key`). The two keys
//! are written with mode 0600, whole or not at all.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// How long the server certificate is valid: 825 days, the most Apple's systems accept for
/// a server certificate, even from an authority the user installed.
const SERVER_DAYS: i64 = 825;
/// How long the authority is valid: ten years.
const CA_DAYS: i64 = 3650;

/// What `portcullis cert` is asked for.
#[derive(Debug, Clone)]
pub struct Request {
    /// Host names clients use for the proxy (`proxy.lan`).
    pub names: Vec<String>,
    /// Addresses clients use for it (`192.168.1.2`).
    pub ips: Vec<IpAddr>,
    /// Where the files go (made if missing).
    pub out: PathBuf,
}

/// What was done, for the person who ran it.
#[derive(Debug)]
pub struct Made {
    /// Whether the authority was made now (else an existing `ca.pem`/`ca.key` was reused).
    pub new_ca: bool,
    /// The folder.
    pub out: PathBuf,
}

/// Makes (or reuses) the authority and makes the server certificate.
pub fn run(request: &Request) -> Result<Made, String> {
    if request.names.is_empty() && request.ips.is_empty() {
        return Err("name at least one --name or --ip that clients use for the proxy".into());
    }
    for name in &request.names {
        if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() || name.contains(':') {
            return Err(format!("--name {name:?} is not a host name"));
        }
    }
    fs::create_dir_all(&request.out)
        .map_err(|e| format!("cannot make {}: {e}", request.out.display()))?;
    let (ca_pem_path, ca_key_path) = (request.out.join("ca.pem"), request.out.join("ca.key"));
    let (issuer, ca_pem, new_ca) = if ca_pem_path.exists() || ca_key_path.exists() {
        let (issuer, pem) = existing_ca(&ca_pem_path, &ca_key_path)?;
        (issuer, pem, false)
    } else {
        let (params, key, pem) = new_authority()?;
        write(&ca_key_path, key.serialize_pem().as_bytes(), true)?;
        write(&ca_pem_path, pem.as_bytes(), false)?;
        (Issuer::new(params, key), pem, true)
    };

    let mut params = CertificateParams::new(request.names.clone())
        .map_err(|e| format!("cannot make the certificate: {e}"))?;
    params
        .subject_alt_names
        .extend(request.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let mut subject = DistinguishedName::new();
    let first = request
        .names
        .first()
        .cloned()
        .unwrap_or_else(|| request.ips[0].to_string());
    subject.push(DnType::CommonName, first);
    params.distinguished_name = subject;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    set_validity(&mut params, SERVER_DAYS);
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| format!("cannot sign the certificate: {e}"))?;
    write(
        &request.out.join("proxy.key"),
        key.serialize_pem().as_bytes(),
        true,
    )?;
    let chain = format!("{}{}", cert.pem(), ca_pem);
    write(&request.out.join("proxy.pem"), chain.as_bytes(), false)?;
    Ok(Made {
        new_ca,
        out: request.out.clone(),
    })
}

/// A new authority: its parameters, key and certificate (PEM).
fn new_authority() -> Result<(CertificateParams, KeyPair, String), String> {
    let mut params = CertificateParams::default();
    let host = crate::config::host_name();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, format!("Portcullis LAN CA ({host})"));
    name.push(DnType::OrganizationName, "Portcullis");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, CA_DAYS);
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("cannot make the authority: {e}"))?;
    Ok((params, key, cert.pem()))
}

/// From yesterday (clocks differ) to `days` from today, in whole days (UTC).
fn set_validity(params: &mut CertificateParams, days: i64) {
    let today = jiff::Timestamp::now()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date();
    let day = |offset: i64| {
        let date = today
            .checked_add(jiff::Span::new().days(offset))
            .unwrap_or(today);
        rcgen::date_time_ymd(
            i32::from(date.year()),
            date.month().unsigned_abs(),
            date.day().unsigned_abs(),
        )
    };
    params.not_before = day(-1);
    params.not_after = day(days);
}

/// The authority already in the folder, to sign with again.
fn existing_ca(pem: &Path, key: &Path) -> Result<(Issuer<'static, KeyPair>, String), String> {
    let read = |path: &Path| {
        fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read {}: {e} (ca.pem and ca.key go together: remove both to make a new authority, which every client must then trust again)",
                path.display()
            )
        })
    };
    let (pem_text, key_text) = (read(pem)?, read(key)?);
    let key = KeyPair::from_pem(&key_text)
        .map_err(|e| format!("{} is not a private key: {e}", key.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&pem_text, key)
        .map_err(|e| format!("{} is not a certificate: {e}", pem.display()))?;
    Ok((issuer, pem_text))
}

/// Writes `bytes` to `path` whole (a file beside, then a rename); private files get mode 0600
/// from the start.
fn write(path: &Path, bytes: &[u8], private: bool) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let beside = path.with_extension("new");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&beside).map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    fs::rename(&beside, path).map_err(fail)
}

/// What to do next: the configuration, and how each kind of client trusts the authority.
pub fn instructions(made: &Made) -> String {
    let dir = made.out.display();
    let fresh = if made.new_ca {
        format!("A new certificate authority is in {dir}/ca.pem (its key, ca.key, stays here: anyone with it can make certificates your clients trust).")
    } else {
        format!("The certificate authority already in {dir} signed it: clients that trust {dir}/ca.pem trust the new certificate too.")
    };
    format!(
        "Wrote {dir}/proxy.pem (the certificate and the authority's) and {dir}/proxy.key.
{fresh}

In portcullis.toml:
  listen_tls = [\"0.0.0.0:3443\"]
  [tls]
  cert = \"{dir}/proxy.pem\"
  key = \"{dir}/proxy.key\"
  ca = \"{dir}/ca.pem\"     # offered for download on the proxy's own page
  [pac]
  tls = true        # the PAC offers HTTPS first

Make each client trust {dir}/ca.pem once:
  Windows:  certutil -addstore -f Root ca.pem   (as administrator; or double-click it, Install
            Certificate, Local Machine, \"Trusted Root Certification Authorities\")
  macOS:    sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain ca.pem
  Linux:    Debian/Ubuntu: sudo cp ca.pem /usr/local/share/ca-certificates/portcullis.crt && sudo update-ca-certificates
            Fedora: sudo cp ca.pem /etc/pki/ca-trust/source/anchors/portcullis.pem && sudo update-ca-trust
            Chrome and Chromium on Linux trust what the user's NSS database holds (libnss3-tools):
            certutil -d sql:$HOME/.pki/nssdb -A -t \"C,,\" -n \"Portcullis LAN CA\" -i ca.pem
  Firefox:  Settings, Privacy & Security, Certificates, View Certificates, Authorities, Import
            (or set security.enterprise_roots.enabled to use the system's on Windows and macOS)
  Android:  copy ca.pem to the device; Settings, Security, Encryption & credentials, Install a
            certificate, CA certificate
  curl:     curl --proxy https://proxy.lan:3443 --proxy-cacert ca.pem …
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_authority_is_made_once_and_signs_each_new_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let request = Request {
            names: vec!["proxy.lan".into()],
            ips: vec!["192.168.1.2".parse().unwrap()],
            out: dir.path().join("tls"),
        };
        let first = run(&request).unwrap();
        assert!(first.new_ca);
        let ca = fs::read_to_string(dir.path().join("tls/ca.pem")).unwrap();
        let second = run(&request).unwrap();
        assert!(!second.new_ca);
        assert_eq!(
            fs::read_to_string(dir.path().join("tls/ca.pem")).unwrap(),
            ca
        );
        let chain = fs::read_to_string(dir.path().join("tls/proxy.pem")).unwrap();
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(chain.ends_with(&ca));
        #[cfg(unix)]
        for private in ["ca.key", "proxy.key"] {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("tls").join(private))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{private}");
        }
        assert!(instructions(&second).contains("certutil"));
        let none = Request {
            names: vec![],
            ips: vec![],
            out: dir.path().into(),
        };
        assert!(run(&none).is_err());
        let bad = Request {
            names: vec!["proxy lan".into()],
            ..request
        };
        assert!(run(&bad).unwrap_err().contains("not a host name"));
    }
}
