//! `portcullis passwd FILE USER`: adds or replaces one user's entry in an htpasswd file with a
//! bcrypt hash, so that no Apache tools are needed.
//!
//! The editing itself is pure ([`set_entry`], [`check_user`], [`check_password`],
//! [`first_line`]); the thin outer part ([`run`]) reads the password from the terminal (twice,
//! without echo) or from the first line of standard input, and replaces the file atomically:
//! a temporary file in the same directory, then a rename. Every other line of the file,
//! comments included, is kept as it was. Reading htpasswd files for authentication is
//! [`crate::core::auth`]'s job.

use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use crate::core::auth::Htpasswd;

/// The bcrypt cost `portcullis passwd` writes (Apache's `htpasswd -B` default is 5; 10 is
/// what current guidance asks for and still verifies in tens of milliseconds).
pub const BCRYPT_COST: u32 = 10;

/// bcrypt ignores everything past this many bytes of a password.
pub const MAX_PASSWORD_BYTES: usize = 72;

/// The longest user name accepted.
const MAX_USER_BYTES: usize = 255;

/// How much of standard input is read looking for the password line.
const MAX_STDIN_BYTES: u64 = 4096;

/// Why `portcullis passwd` did not change the file.
#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    /// The user name cannot be stored in an htpasswd file or typed into a browser.
    #[error("user name {user:?}: {why}")]
    BadUser {
        /// The name given.
        user: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The password is empty.
    #[error("the password is empty; refusing to set it")]
    EmptyPassword,
    /// The password is longer than bcrypt can use.
    #[error(
        "the password is longer than {MAX_PASSWORD_BYTES} bytes, and bcrypt would ignore the rest"
    )]
    PasswordTooLong,
    /// The two passwords typed differ.
    #[error("the passwords do not match")]
    Mismatch,
    /// Standard input ended before any line.
    #[error("no password on standard input")]
    NoPassword,
    /// The password is not UTF-8.
    #[error("the password is not valid UTF-8")]
    NotUtf8,
    /// The terminal or standard input could not be read.
    #[error("cannot read the password: {0}")]
    ReadPassword(#[source] io::Error),
    /// bcrypt failed (it does not say anything about the password).
    #[error("cannot hash the password: {0}")]
    Hash(String),
    /// The existing file could not be read.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The new file could not be written.
    #[error("cannot write {path}: {source}")]
    WriteFile {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
}

/// Checks that `user` can be stored in an htpasswd file and sent in a Basic header.
pub fn check_user(user: &str) -> Result<(), PasswdError> {
    let why = if user.is_empty() {
        Some("is empty")
    } else if user.contains(':') {
        Some("contains ':', which separates user and hash")
    } else if user.chars().any(char::is_whitespace) {
        Some("contains whitespace")
    } else if user.chars().any(char::is_control) {
        Some("contains a control character")
    } else if user.starts_with('#') {
        Some("starts with '#', which marks a comment line")
    } else if user.len() > MAX_USER_BYTES {
        Some("is longer than 255 bytes")
    } else {
        None
    };
    match why {
        Some(why) => Err(PasswdError::BadUser {
            user: user.to_owned(),
            why,
        }),
        None => Ok(()),
    }
}

/// Checks that `password` is not empty and fits bcrypt.
pub fn check_password(password: &str) -> Result<(), PasswdError> {
    if password.is_empty() {
        Err(PasswdError::EmptyPassword)
    } else if password.len() > MAX_PASSWORD_BYTES {
        Err(PasswdError::PasswordTooLong)
    } else {
        Ok(())
    }
}

/// The first line of piped input, without its line ending (`\n` or `\r\n`).
pub fn first_line(input: &[u8]) -> Result<String, PasswdError> {
    if input.is_empty() {
        return Err(PasswdError::NoPassword);
    }
    let line = match input.iter().position(|&b| b == b'\n') {
        Some(end) => &input[..end],
        None => input,
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    String::from_utf8(line.to_vec()).map_err(|_| PasswdError::NotUtf8)
}

/// The user name of an htpasswd line, if it is an entry (not blank, not a comment).
fn entry_user(line: &str) -> Option<&str> {
    let content = line.trim_start();
    if content.is_empty() || content.starts_with('#') {
        return None;
    }
    line.split_once(':').map(|(user, _)| user)
}

/// Whether `text` has an entry for `user`.
pub fn has_entry(text: &str, user: &str) -> bool {
    text.lines().any(|line| entry_user(line) == Some(user))
}

/// `existing` with `user`'s entry set to `hash`: the first entry for the user is replaced in
/// place (keeping its line ending), any later ones are dropped, and every other line is kept
/// byte for byte. Without an entry, `user:hash` is appended on a line of its own.
pub fn set_entry(existing: &str, user: &str, hash: &str) -> String {
    let mut out = String::with_capacity(existing.len() + user.len() + hash.len() + 2);
    let mut replaced = false;
    for line in existing.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        if entry_user(body) != Some(user) {
            out.push_str(line);
            continue;
        }
        if !replaced {
            out.push_str(user);
            out.push(':');
            out.push_str(hash);
            out.push_str(&line[body.len()..]);
            replaced = true;
        }
    }
    if !replaced {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(user);
        out.push(':');
        out.push_str(hash);
        out.push('\n');
    }
    out
}

/// A bcrypt hash of `password` at [`BCRYPT_COST`], written `$2y$` as Apache's tools do.
pub fn hash_password(password: &str) -> Result<String, PasswdError> {
    check_password(password)?;
    bcrypt::hash_with_result(password, BCRYPT_COST)
        .map(|parts| parts.format_for_version(bcrypt::Version::TwoY))
        .map_err(|e| PasswdError::Hash(e.to_string()))
}

/// Reads the new password: twice without echo from the terminal when standard input is one,
/// otherwise the first line of standard input.
pub fn read_password() -> Result<String, PasswdError> {
    if io::stdin().is_terminal() {
        let first =
            rpassword::prompt_password("New password: ").map_err(PasswdError::ReadPassword)?;
        check_password(&first)?;
        let again = rpassword::prompt_password("Re-type new password: ")
            .map_err(PasswdError::ReadPassword)?;
        if first != again {
            return Err(PasswdError::Mismatch);
        }
        Ok(first)
    } else {
        let mut input = Vec::new();
        io::stdin()
            .lock()
            .take(MAX_STDIN_BYTES)
            .read_until(b'\n', &mut input)
            .map_err(PasswdError::ReadPassword)?;
        first_line(&input)
    }
}

/// Adds or replaces `user` in `file` with a bcrypt hash of a password read from the terminal
/// or standard input. Returns what to tell the person: one line, plus a warning line when
/// some other entry of the file would still stop the proxy from loading it.
pub fn run(file: &Path, user: &str) -> Result<String, PasswdError> {
    check_user(user)?;
    let password = read_password()?;
    let hash = hash_password(&password)?;
    let target = resolve(file);
    let shown = file.display().to_string();
    let existing = match fs::read(&target) {
        Ok(bytes) => Some(String::from_utf8(bytes).map_err(|_| PasswdError::ReadFile {
            path: shown.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, "the file is not UTF-8 text"),
        })?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(PasswdError::ReadFile {
                path: shown,
                source,
            })
        }
    };
    let old = existing.as_deref().unwrap_or_default();
    let new = set_entry(old, user, &hash);
    write_atomically(&target, new.as_bytes()).map_err(|source| PasswdError::WriteFile {
        path: shown.clone(),
        source,
    })?;
    let mut message = match (&existing, has_entry(old, user)) {
        (None, _) => format!("created {shown} with user {user:?}"),
        (Some(_), true) => format!("updated the password of user {user:?} in {shown}"),
        (Some(_), false) => format!("added user {user:?} to {shown}"),
    };
    if let Err(e) = Htpasswd::parse(&new, &shown) {
        message.push_str(&format!(
            "\nwarning: the proxy will not load this file until this is fixed: {e}"
        ));
    }
    Ok(message)
}

/// The file to write: a symlink's target, so that the link survives the rename.
fn resolve(file: &Path) -> PathBuf {
    match fs::symlink_metadata(file) {
        Ok(meta) if meta.file_type().is_symlink() => {
            fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf())
        }
        _ => file.to_path_buf(),
    }
}

/// Replaces `path` with `contents`: writes a temporary file beside it (mode 0600, or the
/// existing file's mode, owner and group where allowed), syncs it, and renames it over `path`.
fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "the path does not name a file")
    })?;
    let existing = fs::metadata(path).ok();
    let mut attempt = 0u32;
    let (tmp, mut file) = loop {
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.{attempt}.tmp", std::process::id()));
        let tmp = dir.join(tmp_name);
        match create_private(&tmp) {
            Ok(file) => break (tmp, file),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 16 => attempt += 1,
            Err(e) => return Err(e),
        }
    };
    let written = (|| {
        file.write_all(contents)?;
        if let Some(existing) = &existing {
            file.set_permissions(existing.permissions())?;
            keep_owner(&file, existing);
        }
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    // Make the rename itself durable; not every platform can open a directory.
    if let Ok(dir) = fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Gives the new file the old one's owner and group, so that root editing the proxy's file
/// does not make it unreadable to the proxy. Best effort: only root may give files away.
#[cfg(unix)]
fn keep_owner(file: &fs::File, existing: &fs::Metadata) {
    use std::os::unix::fs::MetadataExt;
    let _ = std::os::unix::fs::fchown(file, Some(existing.uid()), Some(existing.gid()));
}

#[cfg(not(unix))]
fn keep_owner(_file: &fs::File, _existing: &fs::Metadata) {}

/// Creates a new file readable and writable only by its owner.
fn create_private(path: &Path) -> io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_entry_replaces_or_appends_and_keeps_everything_else() {
        let cases: &[(&str, &str, &str)] = &[
            // (existing, user, want) with hash "H"
            ("", "bob", "bob:H\n"),
            ("alice:A\n", "bob", "alice:A\nbob:H\n"),
            ("alice:A", "bob", "alice:A\nbob:H\n"),
            (
                "# users\nbob:old\nalice:A\n",
                "bob",
                "# users\nbob:H\nalice:A\n",
            ),
            ("bob:old", "bob", "bob:H"),
            ("bob:old\r\nalice:A\r\n", "bob", "bob:H\r\nalice:A\r\n"),
            ("bob:old:comment\n", "bob", "bob:H\n"),
            // Later duplicates go, so the file loads again.
            ("bob:1\nalice:A\nbob:2\n", "bob", "bob:H\nalice:A\n"),
            // Only exact names match; comments and blank lines are never entries.
            ("bobby:B\n", "bob", "bobby:B\nbob:H\n"),
            ("#bob:old\n", "bob", "#bob:old\nbob:H\n"),
            ("  # bob:old\n\n", "bob", "  # bob:old\n\nbob:H\n"),
            (" bob:x\n", "bob", " bob:x\nbob:H\n"),
            ("Bob:x\n", "bob", "Bob:x\nbob:H\n"),
            // A line that is not an entry is kept as it was.
            ("garbage\n", "bob", "garbage\nbob:H\n"),
            ("\n\n", "bob", "\n\nbob:H\n"),
        ];
        for (existing, user, want) in cases {
            assert_eq!(set_entry(existing, user, "H"), *want, "{existing:?}");
            assert!(has_entry(want, user), "{want:?}");
        }
        assert!(!has_entry("# bob:x\nbobby:y\n", "bob"));
    }

    #[test]
    fn user_names_are_checked() {
        let cases: &[(&str, Option<&str>)] = &[
            ("alice", None),
            ("jürgen", None),
            ("first.last@example.com", None),
            ("a-b_c", None),
            ("", Some("is empty")),
            ("a:b", Some("contains ':'")),
            ("a b", Some("contains whitespace")),
            ("a\tb", Some("contains whitespace")),
            ("a\u{1b}b", Some("control character")),
            ("#admin", Some("starts with '#'")),
        ];
        for (user, want) in cases {
            match (check_user(user), want) {
                (Ok(()), None) => {}
                (Err(e), Some(fragment)) => assert!(e.to_string().contains(fragment), "{e}"),
                (got, _) => panic!("{user:?}: {got:?}"),
            }
        }
        assert!(check_user(&"u".repeat(256)).is_err());
    }

    #[test]
    fn passwords_are_checked() {
        let cases: &[(String, bool)] = &[
            (String::new(), false),
            ("x".into(), true),
            ("with spaces and: colons".into(), true),
            ("y".repeat(MAX_PASSWORD_BYTES), true),
            ("y".repeat(MAX_PASSWORD_BYTES + 1), false),
        ];
        for (password, ok) in cases {
            assert_eq!(check_password(password).is_ok(), *ok, "{password:?}");
        }
    }

    #[test]
    fn the_first_line_of_piped_input_is_the_password() {
        let cases: &[(&[u8], Result<&str, &str>)] = &[
            (b"secret\n", Ok("secret")),
            (b"secret\r\n", Ok("secret")),
            (b"secret", Ok("secret")),
            (b" spaced out \n", Ok(" spaced out ")),
            (b"first\nsecond\n", Ok("first")),
            (b"\n", Ok("")),
            (b"", Err("no password on standard input")),
            (b"\xff\n", Err("not valid UTF-8")),
        ];
        for (input, want) in cases {
            match (first_line(input), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want),
                (Err(e), Err(fragment)) => assert!(e.to_string().contains(fragment), "{e}"),
                (got, _) => panic!("{input:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn hashes_verify_and_use_the_apache_prefix() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$2y$10$"), "{hash}");
        let file = Htpasswd::parse(&set_entry("", "bob", &hash), "t").unwrap();
        assert!(file.verify("bob", "correct horse"));
        assert!(!file.verify("bob", "correct horse "));
        assert!(matches!(hash_password(""), Err(PasswdError::EmptyPassword)));
    }

    #[test]
    fn files_are_replaced_atomically_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        write_atomically(&path, b"one\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "one\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            // An existing file keeps its mode.
            fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
            write_atomically(&path, b"two\n").unwrap();
            assert_eq!(mode(&path), 0o640);
            // And its owner, where we may give files away (as root).
            if std::os::unix::fs::chown(&path, Some(65534), Some(65534)).is_ok() {
                use std::os::unix::fs::MetadataExt;
                write_atomically(&path, b"two\n").unwrap();
                let meta = fs::metadata(&path).unwrap();
                assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
            }
            // A symlink stays a symlink; its target changes.
            let link = dir.path().join("link");
            std::os::unix::fs::symlink(&path, &link).unwrap();
            write_atomically(&resolve(&link), b"three\n").unwrap();
            assert!(fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink());
            assert_eq!(fs::read_to_string(&path).unwrap(), "three\n");
        }
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            names.iter().all(|n| !n.to_string_lossy().ends_with(".tmp")),
            "{names:?}"
        );
        assert!(write_atomically(&dir.path().join("missing/users"), b"x").is_err());
    }
}
