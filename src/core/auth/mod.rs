//! Proxy authentication: `Proxy-Authorization: Basic` credentials, the htpasswd file they are
//! checked against, and the two small memories around that check — a cache of recently
//! verified credentials and a tracker of clients that keep failing; and the text of Squid's
//! helper protocol ([`helper`]), for log-ins and groups a helper program checks.
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
use std::sync::Mutex;
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

mod basic;
pub mod helper;
mod htpasswd;
mod memory;

pub use basic::*;
pub use htpasswd::*;
pub use memory::*;

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

    fn basic(plain: &[u8]) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(plain)
        )
    }

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
            let got = htpasswd::apr1::checksum(password.as_bytes(), salt.as_bytes());
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

    #[test]
    fn checks_under_way_count_against_the_failure_budget() {
        let t0 = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let tracker = FailureTracker::new(3, secs(60), secs(300), 100);
        // Three at once: the fourth is refused before any of them fails.
        let running: Vec<_> = (0..3).map(|_| tracker.attempt(ip, t0).unwrap()).collect();
        assert!(tracker.attempt(ip, t0).is_none());
        assert!(
            tracker.attempt(other, t0).is_some(),
            "another address has its own"
        );
        // One of them fails: two failures' room is left, one taken by a check.
        drop(running);
        tracker.note_failure(ip, t0);
        let a = tracker.attempt(ip, t0).unwrap();
        let b = tracker.attempt(ip, t0).unwrap();
        assert!(tracker.attempt(ip, t0).is_none());
        drop((a, b));
        // Blocked: none; after the block, the budget is whole again.
        tracker.note_failure(ip, t0);
        tracker.note_failure(ip, t0);
        assert!(tracker.attempt(ip, t0 + secs(1)).is_none());
        let after = t0 + secs(301);
        let whole: Vec<_> = (0..3)
            .map(|_| tracker.attempt(ip, after).unwrap())
            .collect();
        assert_eq!(whole.len(), 3);
        // max_failures = 0: no block, and no budget either.
        let open = FailureTracker::new(0, secs(60), secs(300), 100);
        let many: Vec<_> = (0..50).map(|_| open.attempt(ip, t0).unwrap()).collect();
        assert_eq!(many.len(), 50);
    }
}
