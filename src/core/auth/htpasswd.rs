//! The htpasswd file: its users and their password hashes (bcrypt, SHA-crypt, Apache MD5),
//! verified in constant time, with a dummy hash for unknown users.

use super::*;

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

    /// Parses the bytes of an htpasswd file (the file is read by `config`, which reads the
    /// files a configuration names); `origin` names it in errors.
    pub fn from_bytes(bytes: Vec<u8>, origin: &str) -> Result<Htpasswd, HtpasswdError> {
        let text = String::from_utf8(bytes).map_err(|e| {
            let valid = e.as_bytes().get(..e.utf8_error().valid_up_to());
            let line = 1 + valid.map_or(0, |v| v.iter().filter(|&&b| b == b'\n').count());
            HtpasswdError::Line {
                origin: origin.to_owned(),
                line,
                problem: LineProblem::NotUtf8,
            }
        })?;
        Htpasswd::parse(&text, origin)
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
pub(super) mod apr1 {
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
    pub(in crate::core::auth) fn checksum(password: &[u8], salt: &[u8]) -> [u8; 22] {
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
