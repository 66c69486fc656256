//! `portcullis passwd FILE USER` as a script runs it: the password piped on standard input,
//! the file then loaded the way the proxy loads it.

use std::path::Path;

use portcullis::core::auth::Htpasswd;

use crate::support::{portcullis, Ran};

/// Apache's published bcrypt vector for `myPassword`.
const OTHER_USER: &str = "carol:$2y$05$c4WoMPo3SXsafkva.HHa6uXQZWr7oboPiC2bT/r7q1BB8I2s0BRqC";

/// Runs `portcullis passwd FILE USER` with `stdin` piped in.
fn passwd(file: &Path, user: &str, stdin: &str) -> Ran {
    portcullis(&["passwd", file.to_str().unwrap(), user], stdin)
}

#[test]
fn passwd_creates_then_replaces_an_entry_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.htpasswd");

    // A new file: created private, with one entry that verifies.
    let out = passwd(&file, "alice", "first secret\n");
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stderr.contains("created"), "{}", out.stderr);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let users = Htpasswd::load(&file).unwrap();
    assert_eq!(users.users().collect::<Vec<_>>(), ["alice"]);
    assert!(users.verify("alice", "first secret"));
    assert!(!users.verify("alice", "first secret\n"));
    assert!(!users.verify("alice", "wrong"));

    // Another user and a comment around it, then a second run for alice.
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("# office users\n{text}{OTHER_USER}\n")).unwrap();
    let out = passwd(&file, "alice", "second: secret\r\nignored line\n");
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stderr.contains("updated"), "{}", out.stderr);

    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0], "# office users");
    assert!(lines[1].starts_with("alice:$2y$10$"), "{text}");
    assert_eq!(lines[2], OTHER_USER);
    let users = Htpasswd::load(&file).unwrap();
    assert_eq!(users.len(), 2);
    assert!(users.verify("alice", "second: secret"));
    assert!(!users.verify("alice", "first secret"));
    assert!(users.verify("carol", "myPassword"));
    assert!(!users.verify("nobody", "second: secret"));
}

#[test]
fn passwd_refuses_bad_input_and_leaves_the_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.htpasswd");
    let before = format!("# keep me\n{OTHER_USER}\n");
    std::fs::write(&file, &before).unwrap();

    let cases: &[(&str, &str, &str)] = &[
        // (user, stdin, message)
        ("alice", "\n", "the password is empty"),
        ("alice", "", "no password on standard input"),
        ("al:ice", "secret\n", "contains ':'"),
        ("al ice", "secret\n", "contains whitespace"),
        ("", "secret\n", "is empty"),
    ];
    for (user, stdin, message) in cases {
        let out = passwd(&file, user, stdin);
        let err = out.stderr;
        assert_eq!(out.status.code(), Some(1), "{user:?} {stdin:?}: {err}");
        assert!(err.contains(message), "{user:?} {stdin:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
    }

    // Refused before a file is ever created.
    let missing = dir.path().join("new.htpasswd");
    let out = passwd(&missing, "bob", "\n");
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(!missing.exists());

    // No temporary files are left behind by any of it.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["users.htpasswd"]);
}
