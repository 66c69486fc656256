//! Log-ins and groups through Squid's helper programs (`[auth] program`, `[auth.groups]
//! program`): small helper scripts that say OK for one user and ERR otherwise, crash, hang,
//! or answer channel IDs out of order; then the real thing, Debian's `basic_ldap_auth` and
//! `ext_ldap_group_acl` against a `slapd` of the test's own on a loopback port.
//!
//! Every wait is bounded: the helpers' `timeout` in the proxy, [`WAIT`] in the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// Writes an executable Python helper `name` into `dir`; `body` follows the imports (`sys`,
/// `time`, `threading`, `urllib.parse` as `up`).
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("#!/usr/bin/env python3\nimport sys, time, threading\nimport urllib.parse as up\n{body}"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// OK for alice (as "Alice", the name it approves) and carol, ERR with a message otherwise;
/// with channel IDs when the first word is a number.
const AUTH: &str = r#"
for line in sys.stdin:
    words = line.split()
    cid = words.pop(0) + " " if len(words) == 3 else ""
    user, pw = up.unquote(words[0]), up.unquote(words[1])
    if (user, pw) == ("alice", "s3cret word"):
        print(cid + "OK user=Alice", flush=True)
    elif (user, pw) == ("carol", "pw"):
        print(cid + "OK", flush=True)
    else:
        print(cid + 'ERR message="no such log-in"', flush=True)
"#;

/// Answers each request on its own thread, slow users after fast ones: channel IDs come
/// back out of order.
const OUT_OF_ORDER: &str = r#"
lock = threading.Lock()
def answer(cid, user, pw):
    time.sleep(0.8 if user.startswith("slow") else 0.05)
    with lock:
        print(cid + " " + ("OK" if pw == user + "-pw" else "ERR"), flush=True)
for line in sys.stdin:
    cid, user, pw = line.split()
    threading.Thread(target=answer, args=(cid, up.unquote(user), up.unquote(pw))).start()
"#;

/// `user group` → OK for alice (and Alice) in teachers.
const GROUPS: &str = r#"
for line in sys.stdin:
    user, group = [up.unquote(w) for w in line.split()]
    print("OK" if user.lower() == "alice" and group == "teachers" else "ERR", flush=True)
"#;

fn auth_config(origin: u16, program: &Path, extra: &str) -> String {
    format!(
        "{}[auth]\nprogram = [\"{}\"]\n{extra}",
        loopback_config(&[origin], &[]),
        program.display()
    )
}

fn url(origin: &HttpOrigin, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", origin.addr.port())
}

#[tokio::test]
async fn a_helper_decides_log_ins_and_names_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let origin = HttpOrigin::start().await;
    let helper = script(dir.path(), "auth.py", AUTH);
    let config = auth_config(origin.addr.port(), &helper, "children = 2\n");
    let proxy = Proxy::start_observed(settings_of(&config), true, None).await;
    let admin = proxy.admin.unwrap();
    let cases: &[(&str, &str, u16, &str)] = &[
        ("alice", "s3cret word", 200, ""),
        ("carol", "pw", 200, ""),
        ("alice", "wrong", 407, "no such log-in"),
        ("mallory", "s3cret word", 407, "wrong user name or password"),
    ];
    for (user, password, want, says) in cases {
        let r = get_with(
            proxy.addr,
            &url(&origin, "/who"),
            &proxy_authorization(user, password),
        )
        .await;
        assert_eq!(r.status, *want, "{user}: {}", r.text());
        assert!(r.text().contains(says), "{user}: {}", r.text());
    }
    let records = proxy.wait_records(4).await;
    let users: Vec<Option<&str>> = records.iter().map(|r| r.user.as_deref()).collect();
    // The helper said `user=Alice`: the record names the user so.
    assert_eq!(users[..2], [Some("Alice"), Some("carol")], "{records:?}");
    let m = Metrics::scrape(admin).await;
    let auth = [("helper", "auth")];
    assert_eq!(m.value("portcullis_helper_running", &auth), Some(2.0));
    assert_eq!(m.value("portcullis_helper_children", &auth), Some(2.0));
    let answers = |result| {
        m.value(
            "portcullis_helper_answers_total",
            &[("helper", "auth"), ("result", result)],
        )
    };
    assert_eq!(answers("ok"), Some(2.0));
    assert_eq!(answers("err"), Some(2.0));
    assert_eq!(
        m.value("portcullis_helper_answer_seconds_count", &auth),
        Some(4.0)
    );
    // The credential cache answers the second time: the helper is not asked again.
    let again = get_with(
        proxy.addr,
        &url(&origin, "/again"),
        &proxy_authorization("alice", "s3cret word"),
    )
    .await;
    assert_eq!(again.status, 200);
    let m = Metrics::scrape(admin).await;
    assert_eq!(
        m.value("portcullis_helper_answer_seconds_count", &auth),
        Some(4.0)
    );
    let status = admin_get(admin, "/status.json").await;
    assert!(status.text().contains("\"helpers\""), "{}", status.text());
    let page = admin_get(admin, "/status").await;
    assert!(page.text().contains("Log-in helpers"), "{}", page.text());
}

#[tokio::test]
async fn channel_ids_answered_out_of_order_reach_the_right_requests() {
    let dir = tempfile::tempdir().unwrap();
    let origin = HttpOrigin::start().await;
    let helper = script(dir.path(), "ooo.py", OUT_OF_ORDER);
    // One process taking four at once: the slow answers come after the fast ones.
    let config = auth_config(
        origin.addr.port(),
        &helper,
        "children = 1\nconcurrency = 4\ntimeout = \"5s\"\n",
    );
    let proxy = Proxy::start(&config).await;
    let ask = |user: &'static str, password: &'static str| {
        let url = url(&origin, &format!("/{user}"));
        let addr = proxy.addr;
        tokio::spawn(async move {
            get_with(addr, &url, &proxy_authorization(user, password))
                .await
                .status
        })
    };
    let started = Instant::now();
    let asked = [
        (ask("slow-ok", "slow-ok-pw"), 200),
        (ask("slow-no", "nope"), 407),
        (ask("fast-ok", "fast-ok-pw"), 200),
        (ask("fast-no", "nope"), 407),
    ];
    for (task, want) in asked {
        let got = tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
        assert_eq!(got, want);
    }
    // At once, not one after another (4 × 0.8 s).
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_helper_that_crashes_is_restarted_and_meanwhile_clients_get_407() {
    let dir = tempfile::tempdir().unwrap();
    let origin = HttpOrigin::start().await;
    // Answers one request, then dies.
    let once = script(
        dir.path(),
        "once.py",
        "line = sys.stdin.readline()\nprint(\"OK\", flush=True)\nsys.exit(3)\n",
    );
    let config = auth_config(origin.addr.port(), &once, "children = 1\n");
    let proxy = Proxy::start_observed(settings_of(&config), true, None).await;
    let admin = proxy.admin.unwrap();
    let first = get_with(
        proxy.addr,
        &url(&origin, "/1"),
        &proxy_authorization("a", "1"),
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.text());
    // It is started again (after 0.1 s at first); each time it answers one more log-in.
    let deadline = Instant::now() + WAIT;
    let mut served = 1;
    let mut refused_meanwhile = None;
    while served < 3 && Instant::now() < deadline {
        let r = get_with(
            proxy.addr,
            &url(&origin, "/n"),
            // A new password each time: the credential cache must not answer.
            &proxy_authorization("a", &format!("p{served}")),
        )
        .await;
        match r.status {
            200 => served += 1,
            407 => {
                refused_meanwhile = Some(r.text());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("{other}: {}", r.text()),
        }
    }
    assert_eq!(served, 3, "the helper was not started again in time");
    let m = Metrics::scrape(admin).await;
    let restarts = m
        .value("portcullis_helper_restarts_total", &[("helper", "auth")])
        .unwrap();
    assert!(restarts >= 2.0, "{restarts}");
    if let Some(text) = refused_meanwhile {
        assert!(text.contains("cannot be checked now"), "{text}");
    }

    // One that never stays up: 407 at once, with the reason, never a hang.
    let broken = shell(dir.path(), "broken.sh", "exit 1\n");
    let config = auth_config(origin.addr.port(), &broken, "children = 1\n");
    let proxy = Proxy::start_observed(settings_of(&config), true, None).await;
    let admin = proxy.admin.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let m = Metrics::scrape(admin).await;
        let auth = [("helper", "auth")];
        if m.value("portcullis_helper_running", &auth) == Some(0.0)
            && m.value("portcullis_helper_restarts_total", &auth) >= Some(2.0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the broken helper was not seen down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let r = get_with(
        proxy.addr,
        &url(&origin, "/x"),
        &proxy_authorization("a", "b"),
    )
    .await;
    assert_eq!(r.status, 407, "{}", r.text());
    assert!(r.text().contains("cannot be checked now"), "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// Writes an executable shell helper `name` into `dir` (it starts and ends faster than
/// Python on a busy machine).
fn shell(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn a_helper_that_hangs_gives_407_at_the_timeout_and_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let origin = HttpOrigin::start().await;
    let hang = script(dir.path(), "hang.py", "time.sleep(3600)\n");
    let config = auth_config(
        origin.addr.port(),
        &hang,
        "children = 1\ntimeout = \"500ms\"\n",
    );
    let proxy = Proxy::start_observed(settings_of(&config), true, None).await;
    let started = Instant::now();
    let r = get_with(
        proxy.addr,
        &url(&origin, "/h"),
        &proxy_authorization("a", "b"),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(r.status, 407, "{}", r.text());
    assert!(
        r.text().contains("did not answer within 500ms"),
        "{}",
        r.text()
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    // The hung process is killed and another started.
    let admin = proxy.admin.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let m = Metrics::scrape(admin).await;
        let restarts = m
            .value("portcullis_helper_restarts_total", &[("helper", "auth")])
            .unwrap_or(0.0);
        if restarts >= 1.0 {
            assert_eq!(
                m.value("portcullis_helper_timeouts_total", &[("helper", "auth")]),
                Some(1.0)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hung helper was not replaced"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A teacher-only rule before a rule that refuses everyone else.
fn groups_config(origin: u16, auth: &Path, groups: &Path) -> String {
    format!(
        "{}[auth]\nprogram = [\"{}\"]\n[auth.groups]\nprogram = [\"{}\"]\n\
         [[rules]]\nname = \"teachers-only\"\nhosts = [\"127.0.0.1\"]\ngroups = [\"teachers\"]\naction = \"allow\"\n\
         [[rules]]\nname = \"nobody-else\"\nhosts = [\"127.0.0.1\"]\naction = \"deny\"\n",
        loopback_config(&[origin], &[]),
        auth.display(),
        groups.display()
    )
}

#[tokio::test]
async fn groups_in_rules_are_asked_of_the_group_helper() {
    let dir = tempfile::tempdir().unwrap();
    let origin = HttpOrigin::start().await;
    let auth = script(dir.path(), "auth.py", AUTH);
    let groups = script(dir.path(), "groups.py", GROUPS);
    let config = groups_config(origin.addr.port(), &auth, &groups);
    let proxy = Proxy::start(&config).await;
    let teacher = get_with(
        proxy.addr,
        &url(&origin, "/t"),
        &proxy_authorization("alice", "s3cret word"),
    )
    .await;
    assert_eq!(teacher.status, 200, "{}", teacher.text());
    let other = get_with(
        proxy.addr,
        &url(&origin, "/o"),
        &proxy_authorization("carol", "pw"),
    )
    .await;
    assert_eq!(other.status, 403, "{}", other.text());
    assert!(other.text().contains("nobody-else"), "{}", other.text());

    // A group helper that cannot answer: refused, never let through by a guess.
    let hang = script(dir.path(), "hang.py", "time.sleep(3600)\n");
    let config = groups_config(origin.addr.port(), &auth, &hang)
        .replace("[auth.groups]\n", "[auth.groups]\ntimeout = \"300ms\"\n");
    let proxy = Proxy::start(&config).await;
    let r = get_with(
        proxy.addr,
        &url(&origin, "/t"),
        &proxy_authorization("alice", "s3cret word"),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("group helper could not tell"),
        "{}",
        r.text()
    );

    // `explain --user` asks the group helper, and says so.
    let file = dir.path().join("p.toml");
    std::fs::write(&file, groups_config(origin.addr.port(), &auth, &groups)).unwrap();
    let target = url(&origin, "/");
    let args = |user| {
        [
            "explain",
            "--config",
            file.to_str().unwrap(),
            "--client",
            "127.0.0.1",
            "--user",
            user,
            "GET",
            &target,
        ]
        .map(str::to_owned)
    };
    let a = args("alice");
    let ran = portcullis(&a.iter().map(String::as_str).collect::<Vec<_>>(), "");
    let out = String::from_utf8_lossy(&ran.stdout).into_owned();
    assert_eq!(ran.status.code(), Some(0), "{out}{}", ran.stderr);
    assert!(out.contains("asked the group helper"), "{out}");
    assert!(out.contains("alice is in \"teachers\""), "{out}");
    assert!(out.contains("allowed by rule \"teachers-only\""), "{out}");
    let b = args("bob");
    let ran = portcullis(&b.iter().map(String::as_str).collect::<Vec<_>>(), "");
    let out = String::from_utf8_lossy(&ran.stdout).into_owned();
    assert_eq!(ran.status.code(), Some(1), "{out}{}", ran.stderr);
    assert!(out.contains("bob is not in \"teachers\""), "{out}");
}

#[tokio::test]
async fn check_runs_each_helper_and_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let auth = script(dir.path(), "auth.py", AUTH);
    let dies = shell(
        dir.path(),
        "dies.sh",
        "echo 'no LDAP server given' >&2
exit 1
",
    );
    let file = dir.path().join("p.toml");
    let write = |text: String| std::fs::write(&file, text).unwrap();
    let check = || {
        let ran = portcullis(&["check", "--config", file.to_str().unwrap()], "");
        (
            ran.status.code(),
            String::from_utf8_lossy(&ran.stdout).into_owned() + &ran.stderr,
        )
    };
    write(format!("[auth]\nprogram = [\"{}\"]\n", auth.display()));
    let (code, out) = check();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("starts and stays up"), "{out}");
    write(format!(
        "[auth]\nprogram = [\"{}\"]\n[auth.groups]\nprogram = [\"/nonexistent/ext_ldap_group_acl\"]\n",
        auth.display()
    ));
    let (code, out) = check();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("auth.groups.program"), "{out}");
    assert!(out.contains("/nonexistent/ext_ldap_group_acl"), "{out}");
    write(format!("[auth]\nprogram = [\"{}\"]\n", dies.display()));
    let (code, out) = check();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("warning: auth.program:"), "{out}");
    assert!(out.contains("ended at once"), "{out}");
    assert!(out.contains("no LDAP server given"), "{out}");
    write("[[rules]]\nname = \"t\"\ngroups = [\"teachers\"]\naction = \"allow\"\n".into());
    let (code, out) = check();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("needs [auth.groups] program"), "{out}");
}

/// A `slapd` of the test's own: its configuration and database in a temporary folder, on a
/// loopback port; killed when dropped, whatever happened.
struct Slapd {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SLAPD: &str = "/usr/sbin/slapd";
const BASIC_LDAP_AUTH: &str = "/usr/lib/squid/basic_ldap_auth";
const EXT_LDAP_GROUP_ACL: &str = "/usr/lib/squid/ext_ldap_group_acl";
const BASE: &str = "dc=example,dc=lan";

impl Slapd {
    /// Starts slapd with two users (mia, a teacher, and tom, a pupil) and the group
    /// teachers.
    fn start() -> Slapd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("db")).unwrap();
        std::fs::write(
            d.join("slapd.conf"),
            format!(
                "include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\n\
                 include /etc/ldap/schema/inetorgperson.schema\npidfile {pid}\n\
                 modulepath /usr/lib/ldap\nmoduleload back_mdb\ndatabase mdb\nmaxsize 16777216\n\
                 suffix \"{BASE}\"\nrootdn \"cn=admin,{BASE}\"\nrootpw secret\ndirectory {db}\n\
                 access to attrs=userPassword by anonymous auth by * none\naccess to * by * read\n",
                pid = d.join("slapd.pid").display(),
                db = d.join("db").display()
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(SLAPD)
            .args(["-f", d.join("slapd.conf").to_str().unwrap()])
            .args(["-h", &format!("ldap://127.0.0.1:{port}/"), "-d", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let slapd = Slapd {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "slapd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let person = |uid: &str, password: &str| {
            format!(
                "dn: uid={uid},ou=people,{BASE}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\nuserPassword: {password}\n\n"
            )
        };
        let ldif = format!(
            "dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n\
             dn: ou=people,{BASE}\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: ou=groups,{BASE}\nobjectClass: organizationalUnit\nou: groups\n\n\
             {}{}\
             dn: cn=teachers,ou=groups,{BASE}\nobjectClass: groupOfNames\ncn: teachers\nmember: uid=mia,ou=people,{BASE}\n",
            person("mia", "chalk and talk"),
            person("tom", "homework")
        );
        let mut add = Command::new("ldapadd");
        add.args([
            "-x",
            "-H",
            &slapd.uri(),
            "-D",
            &format!("cn=admin,{BASE}"),
            "-w",
            "secret",
        ]);
        let (out, killed) = run_bounded(add, ldif.into_bytes(), WAIT);
        assert!(
            !killed && out.status.success(),
            "ldapadd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        slapd
    }

    fn uri(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }
}

#[tokio::test]
async fn debian_ldap_helpers_against_slapd() {
    let here = [
        SLAPD,
        BASIC_LDAP_AUTH,
        EXT_LDAP_GROUP_ACL,
        "/usr/bin/ldapadd",
    ]
    .iter()
    .all(|p| Path::new(p).exists())
    .then_some(());
    if tool_here(
        here,
        "slapd and Squid's LDAP helpers",
        "slapd ldap-utils squid",
    )
    .is_none()
    {
        return;
    }
    let slapd = tokio::task::spawn_blocking(Slapd::start).await.unwrap();
    let origin = HttpOrigin::start().await;
    let config = format!(
        "{}[auth]\nprogram = [\"{BASIC_LDAP_AUTH}\", \"-v\", \"3\", \"-b\", \"ou=people,{BASE}\", \"-f\", \"uid=%s\", \"-H\", \"{uri}\"]\n\
         children = 2\ntimeout = \"5s\"\n\
         [auth.groups]\nprogram = [\"{EXT_LDAP_GROUP_ACL}\", \"-v\", \"3\", \"-b\", \"ou=groups,{BASE}\", \"-f\", \"(&(objectClass=groupOfNames)(cn=%g)(member=uid=%u,ou=people,{BASE}))\", \"-H\", \"{uri}\"]\n\
         timeout = \"5s\"\n\
         [[rules]]\nname = \"teachers-only\"\nhosts = [\"127.0.0.1\"]\ngroups = [\"teachers\"]\naction = \"allow\"\n\
         [[rules]]\nname = \"nobody-else\"\nhosts = [\"127.0.0.1\"]\naction = \"deny\"\n",
        loopback_config(&[origin.addr.port()], &[]),
        uri = slapd.uri()
    );
    let proxy = Proxy::start(&config).await;
    let cases: &[(&str, &str, u16)] = &[
        ("mia", "chalk and talk", 200),
        ("mia", "wrong", 407),
        ("tom", "homework", 403),
        ("tom", "chalk and talk", 407),
        ("nobody", "homework", 407),
    ];
    for (user, password, want) in cases {
        let r = get_with(
            proxy.addr,
            &url(&origin, "/ldap"),
            &proxy_authorization(user, password),
        )
        .await;
        assert_eq!(r.status, *want, "{user} {password:?}: {}", r.text());
    }
    let records = proxy.wait_records(cases.len()).await;
    assert_eq!(records[0].user.as_deref(), Some("mia"));
    drop(slapd);
}
