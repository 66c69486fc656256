//! The helper programs of `[auth]` (`program`) and `[auth.groups]` as settings: the command
//! found and runnable, and the pool's bounds checked.

use std::path::Path;

use super::problem::{KeyPath, Problem, ProblemKind};
use super::settings::HelperSpec;

/// A helper pool's settings at `key` (`auth`, `auth.groups`): the command must name a
/// program that exists and may be run (a bare name is looked up in `PATH`), `children` 1 to
/// 64, `concurrency` 0 to 1000, `timeout` above zero.
pub(super) fn helper_spec(
    name: &'static str,
    key: &[&str],
    command: &[String],
    (children, concurrency, timeout): (usize, usize, std::time::Duration),
    base: &Path,
    problems: &mut Vec<Problem>,
) -> Option<HelperSpec> {
    let at = |field: &str| match key {
        [a, b] => KeyPath::keys([a, b, field]),
        _ => KeyPath::keys([key.first().copied().unwrap_or("auth"), field]),
    };
    let before = problems.len();
    if !(1..=64).contains(&children) {
        problems.push(Problem::new(at("children"), ProblemKind::OutOfRange(1, 64)));
    }
    if concurrency > 1000 {
        problems.push(Problem::new(
            at("concurrency"),
            ProblemKind::OutOfRange(0, 1000),
        ));
    }
    if timeout.is_zero() {
        problems.push(Problem::new(at("timeout"), ProblemKind::ZeroDuration));
    }
    let mut command = command.to_vec();
    match command.first() {
        None => problems.push(Problem::new(
            at("program"),
            ProblemKind::BadHelper(
                "the list is empty; give the program and its arguments, such as [\"/usr/lib/squid/basic_ldap_auth\", \"-b\", \"dc=example,dc=lan\"]".into(),
            ),
        )),
        Some(program) => match find_program(program, base) {
            Ok(path) => command[0] = path.display().to_string(),
            Err(why) => problems.push(
                Problem::new(at("program"), ProblemKind::BadHelper(why)).entry(program.as_str()),
            ),
        },
    }
    (problems.len() == before).then_some(HelperSpec {
        name,
        command,
        children,
        concurrency,
        timeout,
    })
}

/// The file a helper's program names: a path (relative to the configuration's directory)
/// or a bare name looked up in `PATH`; it must be a file someone may execute.
fn find_program(program: &str, base: &Path) -> Result<std::path::PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |path: &Path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.trim().is_empty() {
        return Err("the program's name is empty".into());
    }
    if !program.contains('/') {
        let path = std::env::var_os("PATH").unwrap_or_default();
        return std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|p| runnable(p))
            .ok_or_else(|| format!("{program:?} is not a program found in PATH"));
    }
    let path = base.join(program);
    match std::fs::metadata(&path) {
        Err(e) => Err(format!("cannot run {}: {e}", path.display())),
        Ok(_) if !runnable(&path) => Err(format!(
            "cannot run {}: not an executable file (chmod +x?)",
            path.display()
        )),
        Ok(_) => Ok(path),
    }
}
