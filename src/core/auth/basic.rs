//! `Proxy-Authorization: Basic` credentials and the challenge of a `407`.

use super::*;

// ---------------------------------------------------------------------------------------------
// Basic credentials
// ---------------------------------------------------------------------------------------------

/// A user name and password from a `Proxy-Authorization: Basic` header. `Debug` masks the
/// password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name (never empty, no control characters).
    pub user: String,
    /// The password (may be empty, may contain `:`).
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// Why a `Proxy-Authorization` value is not usable Basic credentials. Safe to log: no variant
/// carries any part of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BasicError {
    /// Longer than [`MAX_HEADER_LEN`].
    #[error("Proxy-Authorization is longer than {MAX_HEADER_LEN} bytes")]
    TooLong,
    /// Empty or only whitespace.
    #[error("Proxy-Authorization is empty")]
    Empty,
    /// A scheme other than `Basic`, or no scheme at all.
    #[error("Proxy-Authorization does not use the Basic scheme")]
    NotBasic,
    /// `Basic` with nothing after it.
    #[error("Proxy-Authorization: Basic without credentials")]
    MissingToken,
    /// The credentials are not standard base64.
    #[error("Proxy-Authorization: Basic credentials are not valid base64")]
    BadBase64,
    /// The decoded credentials are not UTF-8.
    #[error("Proxy-Authorization: Basic credentials are not UTF-8")]
    NotUtf8,
    /// No `:` between user and password.
    #[error("Proxy-Authorization: Basic credentials have no ':' between user and password")]
    NoColon,
    /// Nothing before the `:`.
    #[error("Proxy-Authorization: Basic credentials have an empty user name")]
    EmptyUser,
    /// The user name contains a control character (it would end up in log lines).
    #[error("Proxy-Authorization: Basic user name contains a control character")]
    ControlInUser,
}

/// Standard alphabet; `=` padding may be present or left out (some clients omit it), but
/// non-canonical trailing bits are rejected.
const BASIC_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Parses a `Proxy-Authorization` value: `Basic` (any case), one or more spaces, then base64
/// (standard alphabet, padding tolerated) of `user:password`, split at the first `:`.
/// Surrounding spaces and tabs are ignored; the separator after `Basic` must be spaces.
pub fn parse_basic(value: &[u8]) -> Result<Credentials, BasicError> {
    if value.len() > MAX_HEADER_LEN {
        return Err(BasicError::TooLong);
    }
    let value = value.trim_ascii();
    if value.is_empty() {
        return Err(BasicError::Empty);
    }
    let (scheme, rest) = match value.iter().position(|&b| b == b' ') {
        Some(at) => value.split_at(at),
        None => (value, &[][..]),
    };
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return Err(BasicError::NotBasic);
    }
    let spaces = rest.iter().take_while(|&&b| b == b' ').count();
    let token = rest.get(spaces..).unwrap_or_default();
    if token.is_empty() {
        return Err(BasicError::MissingToken);
    }
    let decoded = BASIC_BASE64
        .decode(token)
        .map_err(|_| BasicError::BadBase64)?;
    let text = String::from_utf8(decoded).map_err(|_| BasicError::NotUtf8)?;
    let (user, password) = text.split_once(':').ok_or(BasicError::NoColon)?;
    if user.is_empty() {
        return Err(BasicError::EmptyUser);
    }
    if user.chars().any(char::is_control) {
        return Err(BasicError::ControlInUser);
    }
    Ok(Credentials {
        user: user.to_owned(),
        password: password.to_owned(),
    })
}

/// The `Proxy-Authenticate` value for a `407`: `Basic realm="...", charset="UTF-8"`, with `"`
/// and `\` in the realm escaped and control characters dropped (so the result is always a
/// valid header value; non-ASCII realms need `HeaderValue::from_bytes`).
pub fn challenge(realm: &str) -> String {
    let mut out = String::with_capacity(realm.len() + 40);
    out.push_str("Basic realm=\"");
    for c in realm.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push_str("\", charset=\"UTF-8\"");
    out
}

// ---------------------------------------------------------------------------------------------
// Memories: verified credentials, failing clients
// ---------------------------------------------------------------------------------------------
