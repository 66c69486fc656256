//! Proxy authentication: `Proxy-Authorization: Basic` credentials, the htpasswd file they are
//! checked against, and the two small memories around that check — a cache of recently
//! verified credentials and a tracker of clients that keep failing.
//!
//! Everything here is pure: no sockets, no tasks, no clock. Callers pass the current
//! [`Instant`] in, so tests drive time by hand. Verification is slow on purpose (bcrypt and
//! friends), so the request path calls [`Htpasswd::verify`] on the blocking pool and consults
//! [`CredentialCache`] first. Turning a failure into a `407` (with [`challenge`]), logging it,
//! and stripping the header before forwarding belong to the service; whether an authenticated
//! user may go where they ask belongs to the policy.
//!
//! Secrets never leave this module in readable form: errors and `Debug` output name users,
//! files and line numbers, never a password, a hash or a header value.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use sha_crypt::{PasswordVerifier as _, ShaCrypt};

/// The longest `Proxy-Authorization` value [`parse_basic`] looks at, in bytes.
pub const MAX_HEADER_LEN: usize = 4096;

/// Passwords longer than this are refused without hashing (a Basic header cannot carry one).
const MAX_PASSWORD_LEN: usize = MAX_HEADER_LEN;

/// Durations given to [`CredentialCache`] and [`FailureTracker`] are capped at this, so that
/// `now + duration` can never overflow.
const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// Verified against when the user is unknown and the file has no entry to borrow a cost from:
/// bcrypt, cost 10 (what `portcullis passwd` writes), of a password nobody uses.
const DUMMY_BCRYPT: &str = "$2y$10$cG9ydGN1bGxpcy1kdW1teOzDmHbyoT1C5.9XDFkBMFuZSM1xE1pR6";

/// The hash formats a line may use, for error messages.
const SUPPORTED: &str =
    "use bcrypt ($2y$), SHA-256-crypt ($5$), SHA-512-crypt ($6$) or Apache MD5 ($apr1$)";

// ---------------------------------------------------------------------------------------------
// htpasswd
// ---------------------------------------------------------------------------------------------

/// The users of an htpasswd file and their password hashes.
///
/// Lines are `user:hash`; blank lines and lines starting with `#` are skipped, a trailing `\r`
/// is ignored, and anything after a second `:` (some tools put a comment there) is ignored.
/// Accepted hashes: bcrypt (`$2y$`, `$2b$`, `$2a$`), SHA-256-crypt (`$5$`), SHA-512-crypt
/// (`$6$`) and Apache MD5 (`$apr1$`). Anything else is an error naming the line.
#[derive(Clone)]
pub struct Htpasswd {
    /// In file order.
    entries: Vec<(String, StoredHash)>,
    /// User name → index into `entries`.
    index: HashMap<String, usize>,
    /// Verified against for unknown users, so they cost what a known one does.
    dummy: StoredHash,
}

/// One stored password hash. Its `Debug` shows only the scheme.
#[derive(Clone)]
enum StoredHash {
    /// `$2y$`, `$2b$` or `$2a$`: the whole string, already checked by the bcrypt crate.
    Bcrypt(String),
    /// `$5$` or `$6$`: the whole string, already checked for shape.
    ShaCrypt(String),
    /// `$apr1$salt$checksum`.
    Apr1 { salt: String, checksum: String },
}

impl StoredHash {
    fn scheme(&self) -> &'static str {
        match self {
            StoredHash::Bcrypt(_) => "bcrypt",
            StoredHash::ShaCrypt(_) => "SHA-crypt",
            StoredHash::Apr1 { .. } => "apr1",
        }
    }

    /// Slow; every scheme compares the digests in constant time.
    fn verify(&self, password: &str) -> bool {
        match self {
            StoredHash::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            StoredHash::ShaCrypt(hash) => ShaCrypt::default()
                .verify_password(password.as_bytes(), hash.as_str())
                .is_ok(),
            StoredHash::Apr1 { salt, checksum } => {
                apr1::verify(password.as_bytes(), salt.as_bytes(), checksum.as_bytes())
            }
        }
    }
}

impl fmt::Debug for StoredHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(<hidden>)", self.scheme())
    }
}

impl fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Htpasswd")
            .field("users", &self.users().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Why an htpasswd file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not an acceptable entry.
    #[error("{origin}:{line}: {problem}")]
    Line {
        /// The file, or whatever the text came from.
        origin: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        problem: LineProblem,
    },
}

/// What is wrong with one htpasswd line. Names the user, never the hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    /// The file is not UTF-8 text at this line.
    #[error("the line is not valid UTF-8")]
    NotUtf8,
    /// No `:` between user and hash.
    #[error("expected `user:hash`, but the line has no ':'")]
    NoColon,
    /// Nothing before the `:`.
    #[error("the user name before ':' is empty")]
    EmptyUser,
    /// Nothing after the `:`.
    #[error("user {user:?}: no password hash after ':'")]
    NoHash {
        /// The user.
        user: String,
    },
    /// The user already has an entry.
    #[error("user {user:?} appears again (first on line {first_line}); keep one entry per user")]
    Duplicate {
        /// The user.
        user: String,
        /// Where the first entry is.
        first_line: usize,
    },
    /// Not a recognised hash and not starting with `$`: a plain-text password or DES-crypt.
    #[error(
        "user {user:?}: plain-text or DES-crypt passwords are not accepted; \
         re-create the entry with `portcullis passwd`"
    )]
    PlainOrDes {
        /// The user.
        user: String,
    },
    /// `{SHA}`: unsalted SHA-1.
    #[error(
        "user {user:?}: {{SHA}} (unsalted SHA-1) passwords are not accepted; \
         re-create the entry with `portcullis passwd`"
    )]
    Sha1 {
        /// The user.
        user: String,
    },
    /// A known crypt scheme that this proxy does not verify.
    #[error(
        "user {user:?}: {scheme} hashes are not supported; {SUPPORTED}, \
         or re-create the entry with `portcullis passwd`"
    )]
    Unsupported {
        /// The user.
        user: String,
        /// The scheme's name and prefix, such as `MD5-crypt ($1$)`.
        scheme: &'static str,
    },
    /// Starts with `$` but names no scheme we know.
    #[error(
        "user {user:?}: unrecognised password hash format; {SUPPORTED}, \
         or re-create the entry with `portcullis passwd`"
    )]
    Unrecognised {
        /// The user.
        user: String,
    },
    /// A supported scheme, but the hash is damaged.
    #[error(
        "user {user:?}: malformed {scheme} hash ({why}); \
         re-create the entry with `portcullis passwd`"
    )]
    Malformed {
        /// The user.
        user: String,
        /// `bcrypt`, `SHA-256-crypt`, `SHA-512-crypt` or `Apache MD5`.
        scheme: &'static str,
        /// What is wrong with it, without quoting it.
        why: &'static str,
    },
}

impl Htpasswd {
    /// Parses htpasswd text; `origin` names it in errors (usually the file name).
    pub fn parse(text: &str, origin: &str) -> Result<Htpasswd, HtpasswdError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut entries: Vec<(String, StoredHash)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut first_lines: HashMap<String, usize> = HashMap::new();
        for (number, raw) in (1..).zip(text.lines()) {
            let fail = |problem| HtpasswdError::Line {
                origin: origin.to_owned(),
                line: number,
                problem,
            };
            let line = raw.trim_end();
            let content = line.trim_start();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let Some((user, rest)) = line.split_once(':') else {
                return Err(fail(LineProblem::NoColon));
            };
            if user.is_empty() {
                return Err(fail(LineProblem::EmptyUser));
            }
            if let Some(&first_line) = first_lines.get(user) {
                return Err(fail(LineProblem::Duplicate {
                    user: user.to_owned(),
                    first_line,
                }));
            }
            let hash = rest.split(':').next().unwrap_or_default();
            let stored = classify(user, hash).map_err(fail)?;
            first_lines.insert(user.to_owned(), number);
            index.insert(user.to_owned(), entries.len());
            entries.push((user.to_owned(), stored));
        }
        // An unknown user is checked against the first entry's hash, so that (in the usual
        // file written by one tool at one cost) it takes as long as a known user.
        let dummy = match entries.first() {
            Some((_, hash)) => hash.clone(),
            None => StoredHash::Bcrypt(DUMMY_BCRYPT.to_owned()),
        };
        Ok(Htpasswd {
            entries,
            index,
            dummy,
        })
    }

    /// Reads and parses an htpasswd file.
    pub fn load(path: &Path) -> Result<Htpasswd, HtpasswdError> {
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| HtpasswdError::Read {
            path: origin.clone(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let valid = e.as_bytes().get(..e.utf8_error().valid_up_to());
            let line = 1 + valid.map_or(0, |v| v.iter().filter(|&&b| b == b'\n').count());
            HtpasswdError::Line {
                origin: origin.clone(),
                line,
                problem: LineProblem::NotUtf8,
            }
        })?;
        Htpasswd::parse(&text, &origin)
    }

    /// Whether `password` is `user`'s password. Slow on purpose (run it on the blocking
    /// pool). An unknown user costs about as much as a known one and is never accepted.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        if password.len() > MAX_PASSWORD_LEN {
            return false;
        }
        match self.index.get(user).and_then(|&i| self.entries.get(i)) {
            Some((_, hash)) => hash.verify(password),
            None => {
                std::hint::black_box(self.dummy.verify(password));
                false
            }
        }
    }

    /// The user names, in file order.
    pub fn users(&self) -> impl Iterator<Item = &str> + '_ {
        self.entries.iter().map(|(user, _)| user.as_str())
    }

    /// How many users the file has.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the file has no users.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Recognises one hash, checking its shape so a damaged entry fails at load, not at login.
fn classify(user: &str, hash: &str) -> Result<StoredHash, LineProblem> {
    let user = user.to_owned();
    let malformed = |user, scheme, why| LineProblem::Malformed { user, scheme, why };
    if hash.is_empty() {
        return Err(LineProblem::NoHash { user });
    }
    if ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
        return match hash.parse::<bcrypt::HashParts>() {
            Ok(parts) if (4..=31).contains(&parts.get_cost()) => {
                Ok(StoredHash::Bcrypt(hash.to_owned()))
            }
            Ok(_) => Err(malformed(user, "bcrypt", "the cost must be 04 to 31")),
            Err(_) => Err(malformed(
                user,
                "bcrypt",
                "expected 60 characters: $2y$, a two-digit cost, $, then 53 of ./A-Za-z0-9",
            )),
        };
    }
    if let Some((scheme, len)) = [("$5$", 43), ("$6$", 86)]
        .into_iter()
        .find(|(p, _)| hash.starts_with(p))
    {
        let name = if scheme == "$5$" {
            "SHA-256-crypt"
        } else {
            "SHA-512-crypt"
        };
        return match check_sha_crypt(&hash[scheme.len()..], len) {
            Ok(()) if sha_crypt::PasswordHashRef::new(hash).is_ok() => {
                Ok(StoredHash::ShaCrypt(hash.to_owned()))
            }
            Ok(()) => Err(malformed(user, name, "not in modular crypt format")),
            Err(why) => Err(malformed(user, name, why)),
        };
    }
    if hash.starts_with(apr1::MAGIC) {
        return match apr1::parse(hash) {
            Ok((salt, checksum)) => Ok(StoredHash::Apr1 {
                salt: salt.to_owned(),
                checksum: checksum.to_owned(),
            }),
            Err(why) => Err(malformed(user, "Apache MD5", why)),
        };
    }
    if hash.starts_with("{SHA}") {
        return Err(LineProblem::Sha1 { user });
    }
    if hash.starts_with('$') {
        const KNOWN: &[(&str, &str)] = &[
            ("$1$", "MD5-crypt ($1$)"),
            ("$2x$", "bcrypt with the 8-bit bug ($2x$)"),
            ("$2$", "original bcrypt ($2$)"),
            ("$3$", "NT-hash ($3$)"),
            ("$7$", "scrypt ($7$)"),
            ("$y$", "yescrypt ($y$)"),
            ("$gy$", "gost-yescrypt ($gy$)"),
            ("$sha1$", "SHA1-crypt ($sha1$)"),
            ("$md5", "Sun MD5-crypt ($md5)"),
            ("$argon2", "Argon2 ($argon2…$)"),
            ("$pbkdf2", "PBKDF2 ($pbkdf2…$)"),
        ];
        return Err(match KNOWN.iter().find(|(p, _)| hash.starts_with(p)) {
            Some(&(_, scheme)) => LineProblem::Unsupported { user, scheme },
            None => LineProblem::Unrecognised { user },
        });
    }
    Err(LineProblem::PlainOrDes { user })
}

/// Checks `[rounds=N$]salt$checksum` (what follows `$5$` or `$6$`).
fn check_sha_crypt(body: &str, checksum_len: usize) -> Result<(), &'static str> {
    let mut fields: Vec<&str> = body.split('$').collect();
    if fields.first().is_some_and(|f| f.starts_with("rounds=")) {
        let rounds = fields.remove(0);
        let ok = rounds["rounds=".len()..]
            .parse::<u32>()
            .is_ok_and(|n| (1_000..=999_999_999).contains(&n));
        if !ok {
            return Err("rounds must be 1000 to 999999999");
        }
    }
    let [salt, checksum] = fields.as_slice() else {
        return Err("expected salt$checksum after the prefix");
    };
    if salt.is_empty() || salt.len() > 16 {
        return Err("the salt must be 1 to 16 characters");
    }
    if checksum.len() != checksum_len || !checksum.bytes().all(is_crypt64) {
        return Err("the checksum has the wrong length or characters");
    }
    Ok(())
}

/// The crypt(3) base-64 alphabet: `./0-9A-Za-z`.
fn is_crypt64(b: u8) -> bool {
    b == b'.' || b == b'/' || b.is_ascii_alphanumeric()
}

/// Apache's MD5 (`$apr1$`): Poul-Henning Kamp's MD5-crypt with Apache's magic string, as in
/// apr-util's `apr_md5_encode`. No maintained crate implements it; this sits on the `md-5`
/// crate's MD5 and is tested against Apache's published vector.
mod apr1 {
    use md5::{Digest, Md5};
    use subtle::ConstantTimeEq;

    pub(super) const MAGIC: &str = "$apr1$";

    const ITOA64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

    /// Splits `$apr1$salt$checksum` into salt and checksum, checking their shape.
    pub(super) fn parse(hash: &str) -> Result<(&str, &str), &'static str> {
        let rest = hash.strip_prefix(MAGIC).unwrap_or(hash);
        let Some((salt, checksum)) = rest.split_once('$') else {
            return Err("expected $apr1$salt$checksum");
        };
        if salt.is_empty() || salt.len() > 8 {
            return Err("the salt must be 1 to 8 characters");
        }
        if checksum.len() != 22 || !checksum.bytes().all(|b| ITOA64.contains(&b)) {
            return Err("the checksum must be 22 characters of ./0-9A-Za-z");
        }
        Ok((salt, checksum))
    }

    /// The 22-character checksum of `password` with `salt` (at most 8 bytes are used).
    pub(super) fn checksum(password: &[u8], salt: &[u8]) -> [u8; 22] {
        let salt = salt.get(..8).unwrap_or(salt);
        let mut ctx = Md5::new();
        ctx.update(password);
        ctx.update(MAGIC.as_bytes());
        ctx.update(salt);
        let alt = Md5::new()
            .chain_update(password)
            .chain_update(salt)
            .chain_update(password)
            .finalize();
        let mut left = password.len();
        while left > 0 {
            let n = left.min(16);
            ctx.update(&alt[..n]);
            left -= n;
        }
        let mut bits = password.len();
        while bits > 0 {
            if bits & 1 == 1 {
                ctx.update([0u8]);
            } else {
                ctx.update(password.get(..1).unwrap_or_default());
            }
            bits >>= 1;
        }
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&ctx.finalize());
        for round in 0..1000 {
            let mut ctx = Md5::new();
            if round & 1 == 1 {
                ctx.update(password);
            } else {
                ctx.update(digest);
            }
            if round % 3 != 0 {
                ctx.update(salt);
            }
            if round % 7 != 0 {
                ctx.update(password);
            }
            if round & 1 == 1 {
                ctx.update(digest);
            } else {
                ctx.update(password);
            }
            digest.copy_from_slice(&ctx.finalize());
        }
        let mut out = [0u8; 22];
        let mut at = 0;
        let mut push = |mut value: u32, count: usize| {
            for _ in 0..count {
                out[at] = ITOA64[(value & 0x3f) as usize];
                value >>= 6;
                at += 1;
            }
        };
        let d = |i: usize| u32::from(digest[i]);
        for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
            push((d(a) << 16) | (d(b) << 8) | d(c), 4);
        }
        push(d(11), 2);
        out
    }

    /// Constant-time comparison of the computed and stored checksums.
    pub(super) fn verify(password: &[u8], salt: &[u8], stored: &[u8]) -> bool {
        checksum(password, salt).ct_eq(stored).into()
    }
}

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

/// Locks, carrying on after a panic elsewhere: the maps stay consistent between statements.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `now + d`, which cannot overflow for durations capped at [`MAX_DURATION`].
fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or(now)
}

/// Recently verified credentials, so that a keep-alive browser does not pay bcrypt on every
/// request. Keyed by the SHA-256 of the raw header value (the password itself is never
/// stored); each entry lives for a fixed TTL from its verification, so a removed user or
/// changed password stops working within that time (or at once after [`clear`]).
///
/// Bounded: when full, expired entries go first, then the oldest. Capacity 0 turns it off.
///
/// [`clear`]: CredentialCache::clear
pub struct CredentialCache {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<CacheInner>,
}

struct CacheInner {
    entries: HashMap<[u8; 32], CachedUser>,
    next_seq: u64,
}

struct CachedUser {
    user: String,
    expires: Instant,
    seq: u64,
}

impl CredentialCache {
    /// A cache keeping each verified credential for `ttl` (capped at ten years), holding at
    /// most `capacity` of them.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        CredentialCache {
            ttl: ttl.min(MAX_DURATION),
            capacity,
            inner: Mutex::new(CacheInner {
                entries: HashMap::new(),
                next_seq: 0,
            }),
        }
    }

    fn key(header_value: &[u8]) -> [u8; 32] {
        Sha256::digest(header_value).into()
    }

    /// The user these exact header bytes were verified as, if that was less than the TTL ago.
    pub fn get(&self, header_value: &[u8], now: Instant) -> Option<String> {
        if self.capacity == 0 {
            return None;
        }
        let key = Self::key(header_value);
        let mut inner = lock(&self.inner);
        match inner.entries.get(&key) {
            Some(entry) if now < entry.expires => Some(entry.user.clone()),
            Some(_) => {
                inner.entries.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Remembers that these header bytes were verified as `user` at `now`.
    pub fn insert(&self, header_value: &[u8], user: String, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        let key = Self::key(header_value);
        let expires = after(now, self.ttl);
        let mut inner = lock(&self.inner);
        if !inner.entries.contains_key(&key) && inner.entries.len() >= self.capacity {
            inner.entries.retain(|_, e| now < e.expires);
            if inner.entries.len() >= self.capacity {
                let oldest = inner
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.seq)
                    .map(|(k, _)| *k);
                if let Some(oldest) = oldest {
                    inner.entries.remove(&oldest);
                }
            }
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.entries.insert(key, CachedUser { user, expires, seq });
    }

    /// Forgets everything (on reload of the htpasswd file).
    pub fn clear(&self) {
        lock(&self.inner).entries.clear();
    }

    /// How many credentials are remembered (expired ones included until evicted).
    pub fn len(&self) -> usize {
        lock(&self.inner).entries.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for CredentialCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialCache")
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

/// Failed authentication attempts per client address. After `max_failures` failures within
/// `window` (a fixed window starting at the first failure), the address is blocked for
/// `block_for`. IPv4-mapped IPv6 addresses count as their IPv4 address.
///
/// Bounded: when a new address arrives and the map is full, records that no longer matter
/// (window over, no block in force) go first, then the least recently failed unblocked
/// address, and only then the oldest blocked one. `max_failures` 0 turns blocking off.
#[derive(Debug)]
pub struct FailureTracker {
    max_failures: u32,
    window: Duration,
    block_for: Duration,
    capacity: usize,
    inner: Mutex<TrackerInner>,
}

#[derive(Debug)]
struct TrackerInner {
    clients: HashMap<IpAddr, ClientFailures>,
    next_seq: u64,
}

#[derive(Debug)]
struct ClientFailures {
    /// Failures in the current window.
    failures: u32,
    window_ends: Instant,
    blocked_until: Option<Instant>,
    /// Order of the last failure, for eviction.
    seq: u64,
}

impl ClientFailures {
    fn blocked_at(&self, now: Instant) -> bool {
        self.blocked_until.is_some_and(|until| now < until)
    }

    fn matters_at(&self, now: Instant) -> bool {
        self.blocked_at(now) || now < self.window_ends
    }
}

impl FailureTracker {
    /// A tracker blocking an address for `block_for` after `max_failures` failures within
    /// `window`, remembering at most `capacity` addresses (at least one). Durations are
    /// capped at ten years.
    pub fn new(max_failures: u32, window: Duration, block_for: Duration, capacity: usize) -> Self {
        FailureTracker {
            max_failures,
            window: window.min(MAX_DURATION),
            block_for: block_for.min(MAX_DURATION),
            capacity: capacity.max(1),
            inner: Mutex::new(TrackerInner {
                clients: HashMap::new(),
                next_seq: 0,
            }),
        }
    }

    /// Records a failed attempt from `ip`; true if the address is now blocked.
    pub fn note_failure(&self, ip: IpAddr, now: Instant) -> bool {
        if self.max_failures == 0 {
            return false;
        }
        let ip = ip.to_canonical();
        let mut inner = lock(&self.inner);
        if inner.clients.get(&ip).is_some_and(|c| c.blocked_at(now)) {
            return true;
        }
        if !inner.clients.contains_key(&ip) && inner.clients.len() >= self.capacity {
            inner.clients.retain(|_, c| c.matters_at(now));
            if inner.clients.len() >= self.capacity {
                let victim = inner
                    .clients
                    .iter()
                    .min_by_key(|(_, c)| (c.blocked_at(now), c.seq))
                    .map(|(ip, _)| *ip);
                if let Some(victim) = victim {
                    inner.clients.remove(&victim);
                }
            }
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let record = inner.clients.entry(ip).or_insert(ClientFailures {
            failures: 0,
            window_ends: after(now, self.window),
            blocked_until: None,
            seq,
        });
        record.seq = seq;
        if record.blocked_until.is_some() || now >= record.window_ends {
            // A block that has run out, or a window that has: start afresh.
            record.blocked_until = None;
            record.failures = 0;
            record.window_ends = after(now, self.window);
        }
        record.failures = record.failures.saturating_add(1);
        if record.failures >= self.max_failures {
            record.failures = 0;
            record.blocked_until = Some(after(now, self.block_for));
            return !self.block_for.is_zero();
        }
        false
    }

    /// How much longer `ip` is blocked, if it is.
    pub fn blocked_for(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let ip = ip.to_canonical();
        let inner = lock(&self.inner);
        let until = inner.clients.get(&ip)?.blocked_until?;
        until.checked_duration_since(now).filter(|d| !d.is_zero())
    }

    /// Records a successful login from `ip`: its failure count starts again (a block in force
    /// stays until it runs out).
    pub fn note_success(&self, ip: IpAddr) {
        let ip = ip.to_canonical();
        let mut inner = lock(&self.inner);
        match inner.clients.get_mut(&ip) {
            Some(record) if record.blocked_until.is_some() => record.failures = 0,
            Some(_) => {
                inner.clients.remove(&ip);
            }
            None => {}
        }
    }

    /// How many addresses are remembered.
    pub fn len(&self) -> usize {
        lock(&self.inner).clients.len()
    }

    /// Whether no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Apache's published vectors, `openssl passwd` and glibc `crypt(3)` output.
    const FILE: &str = "\
# Apache's published vectors (httpd docs, misc/password_encryptions)
apache-md5:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/
apache-bcrypt:$2y$05$c4WoMPo3SXsafkva.HHa6uXQZWr7oboPiC2bT/r7q1BB8I2s0BRqC

  # indented comment; blank lines above and below

b2b:$2b$04$abcdefghijklmnopqrstuuNHMni3OgcJkeWDjMstpoO7ciiYiImFa
b2a:$2a$04$abcdefghijklmnopqrstuuN2f4ZDSoR8/TAG80qUYDM9bRnmRm0Zy
sha256:$5$portcullis5$KO5aCse50WZOiJOrDEC4BK7DP92OWKjPs2xnnqF/m79
sha512:$6$portcullis6$sr2qJ/uCXktkO0fSBG0n9P9dLMQzXh3OO.dRF0fkNzlJYDdKGZrh5J9bHQJCjk8AGhRbBXd.XirP7ZRQL2rzQ.
sha256-colon:$5$saltsaltsaltsalt$Z5Jk2VkaWpQGxssc07y4TIL0Qvxb.xqWLbFfgqzXHzC
sha512-unicode:$6$x$asqgm6Ao9tQqhpEeZZlp6ARsDWYSYzE49cijCVChn3jprf7GkoStBV8THVzFw3/K8Y5LRmWLik.X7OVTWr.BU1
sha256-rounds:$5$rounds=1000$roundsalt$IAeUApZkl7PDb9GdKdj6ejcPsDQUFCYyLOKraFC1pG6\r
sha512-rounds:$6$rounds=2000$roundsalt$jmeYupb/wAsUdy5GEvJQMfE/Gtn.KtKty4jvRTPU7RSosV231M4XYMhXeJXEvJckevGaOP0hOFecw9P9ThCBk.
apr1-colon:$apr1$Hx8/$TWqBs9ttVH7FSgRmY4VvK1:a trailing comment field
apr1-long:$apr1$abcdefgh$TdiQJnzy2qNhKfc9I0/T50
apr1-short:$apr1$z$LmKThnQ/TYkKa0li0YNgP1   
";

    const LONG: &str = "a much longer password than sixteen bytes, to exercise the loop";

    #[test]
    fn every_supported_scheme_verifies() {
        let file = Htpasswd::parse(FILE, "users.htpasswd").unwrap();
        assert_eq!(file.len(), 13);
        let cases: &[(&str, &str, bool)] = &[
            ("apache-md5", "myPassword", true),
            ("apache-md5", "mypassword", false),
            ("apache-md5", "", false),
            ("apache-bcrypt", "myPassword", true),
            ("apache-bcrypt", "myPassword ", false),
            ("b2b", "pass:with colon", true),
            ("b2b", "pass", false),
            ("b2a", "myPassword", true),
            ("b2a", "MyPassword", false),
            ("sha256", "myPassword", true),
            ("sha256", "myPasswor", false),
            ("sha512", "myPassword", true),
            ("sha512", "", false),
            ("sha256-colon", "pass:with colon", true),
            ("sha512-unicode", "ünïcödé pw", true),
            ("sha512-unicode", "unicode pw", false),
            ("sha256-rounds", "myPassword", true),
            ("sha256-rounds", "other", false),
            ("sha512-rounds", "myPassword", true),
            ("apr1-colon", "pass:with colon", true),
            ("apr1-colon", "pass:with", false),
            ("apr1-long", LONG, true),
            ("apr1-long", &LONG[..40], false),
            ("apr1-short", "x", true),
            ("apr1-short", "y", false),
            // Unknown users, including near misses of known ones.
            ("nobody", "myPassword", false),
            ("Apache-md5", "myPassword", false),
            ("apache-md5 ", "myPassword", false),
            ("", "myPassword", false),
        ];
        for (user, password, want) in cases {
            assert_eq!(file.verify(user, password), *want, "{user}:{password}");
        }
        let too_long = "x".repeat(MAX_PASSWORD_LEN + 1);
        assert!(!file.verify("apr1-short", &too_long));
    }

    #[test]
    fn apr1_matches_apache_and_openssl() {
        let cases: &[(&str, &str, &str)] = &[
            ("myPassword", "r31.....", "HqJZimcKQFAMYayBlzkrA/"),
            ("pass:with colon", "Hx8/", "TWqBs9ttVH7FSgRmY4VvK1"),
            (LONG, "abcdefgh", "TdiQJnzy2qNhKfc9I0/T50"),
            ("x", "z", "LmKThnQ/TYkKa0li0YNgP1"),
        ];
        for (password, salt, want) in cases {
            let got = apr1::checksum(password.as_bytes(), salt.as_bytes());
            assert_eq!(std::str::from_utf8(&got).unwrap(), *want, "{password}");
        }
    }

    #[test]
    fn users_are_listed_in_file_order_and_debug_hides_hashes() {
        let file = Htpasswd::parse(FILE, "f").unwrap();
        let users: Vec<&str> = file.users().collect();
        assert_eq!(users[..3], ["apache-md5", "apache-bcrypt", "b2b"]);
        assert!(!file.is_empty());
        let debug = format!("{file:?}");
        assert!(debug.contains("apache-md5"), "{debug}");
        assert!(!debug.contains('$'), "{debug}");
        let empty = Htpasswd::parse("# nobody yet\n\n", "f").unwrap();
        assert!(empty.is_empty());
        assert!(!empty.verify("anyone", "anything"));
    }

    #[test]
    fn a_byte_order_mark_and_crlf_are_tolerated() {
        let text = "\u{feff}apache-md5:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/\r\n";
        let file = Htpasswd::parse(text, "f").unwrap();
        assert!(file.verify("apache-md5", "myPassword"));
    }

    #[test]
    fn bad_lines_are_errors_naming_origin_line_and_user_but_not_the_hash() {
        const BCRYPT: &str = "$2y$05$c4WoMPo3SXsafkva.HHa6uXQZWr7oboPiC2bT/r7q1BB8I2s0BRqC";
        let cases: &[(String, usize, &str)] = &[
            (
                "alice:secret".into(),
                1,
                "user \"alice\": plain-text or DES-crypt passwords are not accepted; \
                 re-create the entry with `portcullis passwd`",
            ),
            (
                "# c\n\nbob:abJnggxhB/yWI".into(),
                3,
                "user \"bob\": plain-text or DES-crypt",
            ),
            (
                "carol:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=".into(),
                1,
                "user \"carol\": {SHA} (unsalted SHA-1) passwords are not accepted",
            ),
            (
                format!("ok:{BCRYPT}\ndave:$1$abc$slWW57FRrAoZ7sZIQUP4N/"),
                2,
                "user \"dave\": MD5-crypt ($1$) hashes are not supported",
            ),
            (
                "erin:$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7"
                    .into(),
                1,
                "yescrypt ($y$) hashes are not supported",
            ),
            (
                "x:$2x$05$c4WoMPo3SXsafkva.HHa6uXQZWr7oboPiC2bT/r7q1BB8I2s0BRqC".into(),
                1,
                "$2x$",
            ),
            (
                "frank:$zz$whatever".into(),
                1,
                "user \"frank\": unrecognised password hash format",
            ),
            (
                "a line without a colon".into(),
                1,
                "expected `user:hash`, but the line has no ':'",
            ),
            (format!(":{BCRYPT}"), 1, "the user name before ':' is empty"),
            (
                format!("gina:{BCRYPT}\nhal:{BCRYPT}\ngina:{BCRYPT}"),
                3,
                "user \"gina\" appears again (first on line 1)",
            ),
            ("ivy:".into(), 1, "user \"ivy\": no password hash after ':'"),
            (
                "jo:$2y$05$c4WoMPo3SXsafkva.HHa6u".into(),
                1,
                "user \"jo\": malformed bcrypt hash",
            ),
            (
                "jo:$2y$99$c4WoMPo3SXsafkva.HHa6uXQZWr7oboPiC2bT/r7q1BB8I2s0BRqC".into(),
                1,
                "malformed bcrypt hash (the cost must be 04 to 31)",
            ),
            (
                "jo:$2y$05$c4WoMPo3SXsafkva.HHa6uXQZWr7oboPiC2bT/r7q1BB8I2s0BR!C".into(),
                1,
                "malformed bcrypt hash",
            ),
            (
                "kim:$5$rounds=10$roundsalt$IAeUApZkl7PDb9GdKdj6ejcPsDQUFCYyLOKraFC1pG6".into(),
                1,
                "malformed SHA-256-crypt hash (rounds must be 1000 to 999999999)",
            ),
            (
                "kim:$6$portcullis6$tooshort".into(),
                1,
                "malformed SHA-512-crypt hash (the checksum has the wrong length",
            ),
            (
                "kim:$5$KO5aCse50WZOiJOrDEC4BK7DP92OWKjPs2xnnqF/m79".into(),
                1,
                "malformed SHA-256-crypt hash (expected salt$checksum",
            ),
            (
                "kim:$5$seventeen-chars-x$KO5aCse50WZOiJOrDEC4BK7DP92OWKjPs2xnnqF/m79".into(),
                1,
                "the salt must be 1 to 16 characters",
            ),
            (
                "lee:$apr1$toolongsalt$HqJZimcKQFAMYayBlzkrA/".into(),
                1,
                "malformed Apache MD5 hash (the salt must be 1 to 8 characters)",
            ),
            (
                "lee:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA".into(),
                1,
                "malformed Apache MD5 hash (the checksum must be 22 characters",
            ),
            (
                "lee:$apr1$HqJZimcKQFAMYayBlzkrA/".into(),
                1,
                "malformed Apache MD5 hash (expected $apr1$salt$checksum)",
            ),
        ];
        for (text, line, fragment) in cases {
            let err = Htpasswd::parse(text, "users.htpasswd").unwrap_err();
            let HtpasswdError::Line { line: got, .. } = &err else {
                panic!("{text}: {err}");
            };
            assert_eq!(got, line, "{text}: {err}");
            let shown = err.to_string();
            let prefix = format!("users.htpasswd:{line}: ");
            assert!(shown.starts_with(&prefix), "{shown}");
            assert!(
                shown.contains(fragment),
                "{text}:\n{shown}\nlacks {fragment}"
            );
            // The faulty line's secret part appears in neither Display nor Debug.
            let bad_line = text.lines().nth(line - 1).unwrap();
            if let Some((_, secret)) = bad_line.split_once(':') {
                if secret.len() > 4 {
                    assert!(!shown.contains(secret), "{shown}");
                    assert!(!format!("{err:?}").contains(secret), "{err:?}");
                }
            }
        }
    }

    #[test]
    fn load_reads_files_and_reports_bad_bytes_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, "apache-md5:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/\n").unwrap();
        assert!(Htpasswd::load(&good)
            .unwrap()
            .verify("apache-md5", "myPassword"));

        let bad = dir.path().join("bad");
        std::fs::write(&bad, b"# ok\nuser:\xff\xfe\n").unwrap();
        let err = Htpasswd::load(&bad).unwrap_err().to_string();
        assert!(err.ends_with("bad:2: the line is not valid UTF-8"), "{err}");

        let err = Htpasswd::load(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(err, HtpasswdError::Read { .. }), "{err}");
        assert!(err.to_string().starts_with("cannot read "), "{err}");
    }

    fn basic(plain: &[u8]) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(plain)
        )
    }

    #[test]
    fn basic_credentials_parse() {
        // 3066 bytes encode to 4088 characters: "Basic" + 3 spaces + 4088 = 4096 bytes.
        let long_password = "p".repeat(3064);
        let longest = format!(
            "Basic   {}",
            base64::engine::general_purpose::STANDARD.encode(format!("u:{long_password}"))
        );
        assert_eq!(longest.len(), MAX_HEADER_LEN);
        // (header value, (user, password) or the error)
        type Case<'a> = (Vec<u8>, Result<(&'a str, &'a str), BasicError>);
        let cases: &[Case] = &[
            (basic(b"alice:secret").into(), Ok(("alice", "secret"))),
            (b"Basic YWxpY2U6c2VjcmV0".to_vec(), Ok(("alice", "secret"))),
            (b"basic YWxpY2U6c2VjcmV0".to_vec(), Ok(("alice", "secret"))),
            (
                b"BASIC    YWxpY2U6c2VjcmV0".to_vec(),
                Ok(("alice", "secret")),
            ),
            (
                b" \tBasic YWxpY2U6c2VjcmV0 \t".to_vec(),
                Ok(("alice", "secret")),
            ),
            // Padding: canonical and missing are both accepted.
            (b"Basic YWI6Yw==".to_vec(), Ok(("ab", "c"))),
            (b"Basic YWI6Yw".to_vec(), Ok(("ab", "c"))),
            (basic(b"u:p:q").into(), Ok(("u", "p:q"))),
            (basic(b"u:").into(), Ok(("u", ""))),
            (
                basic("jürgen:pässword".as_bytes()).into(),
                Ok(("jürgen", "pässword")),
            ),
            (basic(b"a b:c d").into(), Ok(("a b", "c d"))),
            (longest.clone().into(), Ok(("u", long_password.as_str()))),
            (b"".to_vec(), Err(BasicError::Empty)),
            (b"  \t ".to_vec(), Err(BasicError::Empty)),
            (b"YWxpY2U6c2VjcmV0".to_vec(), Err(BasicError::NotBasic)),
            (
                b"Bearer YWxpY2U6c2VjcmV0".to_vec(),
                Err(BasicError::NotBasic),
            ),
            (b"Digest username=\"a\"".to_vec(), Err(BasicError::NotBasic)),
            (b"BasicYWxpY2U6c2VjcmV0".to_vec(), Err(BasicError::NotBasic)),
            (
                b"Basic\tYWxpY2U6c2VjcmV0".to_vec(),
                Err(BasicError::NotBasic),
            ),
            (b"Basic".to_vec(), Err(BasicError::MissingToken)),
            (b"Basic    ".to_vec(), Err(BasicError::MissingToken)),
            (b"Basic !!!!".to_vec(), Err(BasicError::BadBase64)),
            (
                b"Basic YWxp Y2U6c2VjcmV0".to_vec(),
                Err(BasicError::BadBase64),
            ),
            (
                b"Basic YWxpY2U6c2VjcmV0=".to_vec(),
                Err(BasicError::BadBase64),
            ),
            (
                b"Basic YWxpY2U-c2VjcmV0".to_vec(),
                Err(BasicError::BadBase64),
            ),
            (b"Basic YWI6Yx==".to_vec(), Err(BasicError::BadBase64)),
            (basic(b"alicesecret").into(), Err(BasicError::NoColon)),
            (basic(b":secret").into(), Err(BasicError::EmptyUser)),
            (basic(b"\xff\xfe:secret").into(), Err(BasicError::NotUtf8)),
            (basic(b"alice:\xff").into(), Err(BasicError::NotUtf8)),
            (
                basic(b"ali\nce:secret").into(),
                Err(BasicError::ControlInUser),
            ),
            (
                basic(b"alice\x1b[31m:secret").into(),
                Err(BasicError::ControlInUser),
            ),
            (format!("{longest} ").into(), Err(BasicError::TooLong)),
            (
                format!("Basic {}", "A".repeat(10_000)).into(),
                Err(BasicError::TooLong),
            ),
        ];
        for (value, want) in cases {
            let got = parse_basic(value);
            let shown = String::from_utf8_lossy(value);
            match (want, &got) {
                (Ok((user, password)), Ok(c)) => {
                    assert_eq!((c.user.as_str(), c.password.as_str()), (*user, *password));
                }
                (Err(want), Err(e)) => {
                    assert_eq!(e, want, "{shown}");
                    // Errors are safe to log: no part of the credential is in them.
                    assert!(!e.to_string().contains("YWxp"), "{e}");
                    assert!(!e.to_string().contains("secret"), "{e}");
                }
                _ => panic!("{shown}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn credentials_debug_masks_the_password() {
        let c = parse_basic(basic(b"alice:hunter2").as_bytes()).unwrap();
        let debug = format!("{c:?}");
        assert!(debug.contains("alice"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn challenges_escape_the_realm() {
        let cases: &[(&str, &str)] = &[
            ("Portcullis", r#"Basic realm="Portcullis", charset="UTF-8""#),
            ("", r#"Basic realm="", charset="UTF-8""#),
            (
                r#"The "office" proxy"#,
                r#"Basic realm="The \"office\" proxy", charset="UTF-8""#,
            ),
            (
                r"back\slash",
                r#"Basic realm="back\\slash", charset="UTF-8""#,
            ),
            (
                "line\r\nbreak\t",
                r#"Basic realm="linebreak", charset="UTF-8""#,
            ),
            ("Büro", r#"Basic realm="Büro", charset="UTF-8""#),
        ];
        for (realm, want) in cases {
            assert_eq!(challenge(realm), *want, "{realm:?}");
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn the_cache_remembers_for_the_ttl_only() {
        let t0 = Instant::now();
        let cache = CredentialCache::new(secs(10), 8);
        let alice = basic(b"alice:secret");
        cache.insert(alice.as_bytes(), "alice".into(), t0);
        let cases: &[(&[u8], u64, Option<&str>)] = &[
            (alice.as_bytes(), 0, Some("alice")),
            (alice.as_bytes(), 9, Some("alice")),
            (b"Basic YWxpY2U6c2VjcmV1", 1, None),
            (b"basic YWxpY2U6c2VjcmV0", 1, None), // other bytes, other key
            (alice.as_bytes(), 10, None),
            (alice.as_bytes(), 5, None), // the expired entry was dropped
        ];
        for (value, at, want) in cases {
            let got = cache.get(value, t0 + secs(*at));
            assert_eq!(
                got.as_deref(),
                *want,
                "{} at {at}",
                String::from_utf8_lossy(value)
            );
        }
        assert!(cache.is_empty());
        let debug = format!("{cache:?}");
        assert!(!debug.contains("alice"), "{debug}");
    }

    #[test]
    fn the_cache_is_bounded() {
        let t0 = Instant::now();
        // TTL 15 s. (capacity, inserts as (key, at second), len after them, keys present
        // when looked up one second after the last insert)
        type Case = (
            usize,
            &'static [(&'static str, u64)],
            usize,
            &'static [&'static str],
        );
        let cases: &[Case] = &[
            // Full: the oldest goes.
            (2, &[("a", 0), ("b", 1), ("c", 2)], 2, &["b", "c"]),
            // Re-inserting a key refreshes it without evicting anything.
            (2, &[("a", 0), ("b", 1), ("a", 2), ("c", 3)], 2, &["a", "c"]),
            // Expired entries all go (here two) before anything live is evicted.
            (
                3,
                &[("a", 0), ("b", 0), ("c", 10), ("d", 20)],
                2,
                &["c", "d"],
            ),
            // Nothing expired: only the oldest goes.
            (
                3,
                &[("a", 15), ("b", 15), ("c", 16), ("d", 20)],
                3,
                &["b", "c", "d"],
            ),
            // Capacity 0 remembers nothing.
            (0, &[("a", 9)], 0, &[]),
        ];
        for (capacity, inserts, len, present) in cases {
            let cache = CredentialCache::new(secs(15), *capacity);
            let mut last = 0;
            for (key, at) in *inserts {
                cache.insert(key.as_bytes(), key.to_string(), t0 + secs(*at));
                last = *at;
            }
            assert_eq!(cache.len(), *len, "{inserts:?}");
            for key in ["a", "b", "c", "d"] {
                let want = present.contains(&key);
                let got = cache.get(key.as_bytes(), t0 + secs(last + 1));
                assert_eq!(got.is_some(), want, "{inserts:?}: {key}");
            }
        }
        let cache = CredentialCache::new(secs(15), 4);
        cache.insert(b"x", "x".into(), t0);
        cache.clear();
        assert_eq!(cache.get(b"x", t0), None);
        // An absurd TTL does not overflow.
        let cache = CredentialCache::new(Duration::MAX, 4);
        cache.insert(b"x", "x".into(), t0);
        assert_eq!(cache.get(b"x", t0 + secs(86_400)).as_deref(), Some("x"));
    }

    /// One step of a tracker scenario.
    #[derive(Debug)]
    enum Step {
        /// A failure from this address at this second; whether it is then blocked.
        Fail(&'static str, u64, bool),
        /// A success from this address.
        Success(&'static str),
        /// At this second, how many seconds the address is still blocked.
        Blocked(&'static str, u64, Option<u64>),
        /// How many addresses are remembered.
        Len(usize),
    }

    #[test]
    fn the_tracker_blocks_after_repeated_failures() {
        use Step::*;
        const A: &str = "192.168.1.5";
        const A6: &str = "::ffff:192.168.1.5";
        const B: &str = "192.168.1.6";
        const C: &str = "fd00::7";
        // (max_failures, window, block_for, capacity, steps)
        type Case = (u32, u64, u64, usize, &'static [Step]);
        let cases: &[Case] = &[
            // Three failures in the window block for the block time, then it runs out.
            (
                3,
                60,
                300,
                16,
                &[
                    Fail(A, 0, false),
                    Fail(A, 1, false),
                    Blocked(A, 1, None),
                    Fail(A, 2, true),
                    Blocked(A, 2, Some(300)),
                    Blocked(A, 301, Some(1)),
                    Fail(A, 100, true),
                    Blocked(A, 302, None),
                    Blocked(B, 2, None),
                    // After the block the count starts again.
                    Fail(A, 302, false),
                    Fail(A, 303, false),
                    Fail(A, 304, true),
                ],
            ),
            // Failures spread beyond the window do not add up.
            (
                3,
                60,
                300,
                16,
                &[
                    Fail(A, 0, false),
                    Fail(A, 59, false),
                    Fail(A, 60, false),
                    Fail(A, 61, false),
                    Fail(A, 62, true),
                ],
            ),
            // A success starts the count again; other addresses count on their own.
            (
                3,
                60,
                300,
                16,
                &[
                    Fail(A, 0, false),
                    Fail(A, 1, false),
                    Success(A),
                    Fail(A, 2, false),
                    Fail(B, 2, false),
                    Fail(B, 3, false),
                    Fail(A, 3, false),
                    Len(2),
                    Fail(A, 4, true),
                    Success(A),
                    Blocked(A, 5, Some(299)),
                ],
            ),
            // An IPv4-mapped IPv6 address is its IPv4 address.
            (
                2,
                60,
                30,
                16,
                &[
                    Fail(A, 0, false),
                    Fail(A6, 1, true),
                    Blocked(A, 1, Some(30)),
                    Blocked(A6, 1, Some(30)),
                    Len(1),
                ],
            ),
            // max_failures 0: never blocks.
            (
                0,
                60,
                30,
                16,
                &[Fail(A, 0, false), Fail(A, 1, false), Len(0)],
            ),
            // Full: the least recently failing unblocked address goes.
            (
                2,
                60,
                300,
                2,
                &[
                    Fail(A, 0, false),
                    Fail(B, 1, false),
                    Fail(C, 2, false),
                    Len(2),
                    Fail(B, 3, true),
                    Fail(A, 3, false),
                ],
            ),
            // Full: a blocked address outlives an unblocked one that failed later.
            (
                2,
                60,
                300,
                2,
                &[
                    Fail(A, 0, false),
                    Fail(A, 0, true),
                    Fail(B, 1, false),
                    Fail(C, 2, false),
                    Blocked(A, 2, Some(298)),
                    Len(2),
                    // B was forgotten: its next failure is its first again.
                    Fail(B, 3, false),
                    Blocked(A, 3, Some(297)),
                ],
            ),
            // Full: records whose window is over go first, even if touched more recently.
            (
                3,
                60,
                300,
                2,
                &[
                    Fail(A, 0, false),
                    Fail(B, 10, false),
                    Fail(A, 20, false),
                    Fail(C, 61, false),
                    Len(2),
                    Fail(B, 62, false),
                    Fail(B, 63, true),
                ],
            ),
            // A block of zero length never blocks.
            (1, 60, 0, 4, &[Fail(A, 0, false), Blocked(A, 0, None)]),
        ];
        let t0 = Instant::now();
        for (i, (max, window, block, capacity, steps)) in cases.iter().enumerate() {
            let tracker = FailureTracker::new(*max, secs(*window), secs(*block), *capacity);
            for step in *steps {
                let ip = |s: &str| s.parse::<IpAddr>().unwrap();
                match step {
                    Fail(addr, at, want) => {
                        let got = tracker.note_failure(ip(addr), t0 + secs(*at));
                        assert_eq!(got, *want, "case {i}: {step:?}");
                    }
                    Success(addr) => tracker.note_success(ip(addr)),
                    Blocked(addr, at, want) => {
                        let got = tracker.blocked_for(ip(addr), t0 + secs(*at));
                        assert_eq!(got, want.map(secs), "case {i}: {step:?}");
                    }
                    Len(want) => assert_eq!(tracker.len(), *want, "case {i}: {step:?}"),
                }
            }
        }
    }

    #[test]
    fn a_scan_from_many_addresses_stays_bounded() {
        let t0 = Instant::now();
        let tracker = FailureTracker::new(5, secs(60), secs(300), 100);
        for n in 0..10_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            tracker.note_failure(ip, t0 + Duration::from_millis(u64::from(n)));
        }
        assert_eq!(tracker.len(), 100);
        let cache = CredentialCache::new(secs(60), 100);
        for n in 0..10_000u32 {
            cache.insert(&n.to_be_bytes(), "u".into(), t0);
        }
        assert_eq!(cache.len(), 100);
    }
}
