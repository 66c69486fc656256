//! The one way a configuration is loaded: read (a file, or the built-in defaults), parse,
//! apply `--listen`, validate, and place every problem at its line and column. Start-up,
//! `portcullis check`, `portcullis explain` and reloads all call [`load`]; they differ only in
//! [`Purpose`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::{Config, ConfigError, Settings};
use crate::core::auth::{Htpasswd, HtpasswdError};

/// The origin named in messages when there is no file.
pub const BUILT_IN: &str = "<built-in defaults>";

/// Where a configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// The file; `None` for the built-in defaults.
    pub file: Option<PathBuf>,
    /// `--listen` addresses, which replace the configuration's `listen` when any are given.
    pub listen: Vec<SocketAddr>,
}

impl Source {
    /// The file at `path`, with the `--listen` addresses `listen`.
    pub fn file(path: impl Into<PathBuf>, listen: Vec<SocketAddr>) -> Source {
        Source {
            file: Some(path.into()),
            listen,
        }
    }

    /// The built-in defaults, with the `--listen` addresses `listen`.
    pub fn defaults(listen: Vec<SocketAddr>) -> Source {
        Source { file: None, listen }
    }
}

/// What the configuration is loaded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Starting the proxy.
    Start,
    /// `portcullis check`.
    Check,
    /// `portcullis explain`.
    Explain,
    /// Reloading a running proxy: a file that holds no settings is refused, being far
    /// likelier a file caught half-written than a wish for the defaults (which listen on
    /// every interface).
    Reload,
}

/// A configuration loaded and valid.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// As written (with `--listen` applied).
    pub config: Config,
    /// As validated.
    pub settings: Settings,
    /// The file's path, or [`BUILT_IN`].
    pub origin: String,
    /// The file's text; `None` for the built-in defaults.
    pub text: Option<String>,
}

/// Why a configuration could not be loaded; problems are placed at their line and column.
pub type LoadError = ConfigError;

/// Loads the configuration `source` names, for `purpose`.
pub fn load(source: &Source, purpose: Purpose) -> Result<Loaded, LoadError> {
    match &source.file {
        Some(path) => {
            let text = read(path)?;
            load_text(text, &path.display().to_string(), &source.listen, purpose)
        }
        None => {
            let mut config = Config::default();
            override_listen(&mut config, &source.listen);
            let settings = config.validate(BUILT_IN)?;
            Ok(Loaded {
                config,
                settings,
                origin: BUILT_IN.to_owned(),
                text: None,
            })
        }
    }
}

/// Loads configuration `text`; `origin` names it in messages, and files it names are read
/// relative to the directory of `origin`.
pub fn load_text(
    text: String,
    origin: &str,
    listen: &[SocketAddr],
    purpose: Purpose,
) -> Result<Loaded, LoadError> {
    if purpose == Purpose::Reload && holds_nothing(&text) {
        return Err(ConfigError::HoldsNothing {
            origin: origin.to_owned(),
        });
    }
    let mut config = Config::from_toml(&text, origin)?;
    override_listen(&mut config, listen);
    let mut settings = match config.validate(origin) {
        Ok(settings) => settings,
        Err(ConfigError::Invalid {
            origin,
            mut problems,
        }) => {
            super::locate::locate_all(&text, &mut problems);
            return Err(ConfigError::Invalid { origin, problems });
        }
        Err(other) => return Err(other),
    };
    // The last good copy of each downloaded list: the proxy starts with it, `check` and
    // `explain` see it; nothing is fetched here.
    super::lists::read_disk_copies(&mut settings);
    Ok(Loaded {
        config,
        settings,
        origin: origin.to_owned(),
        text: Some(text),
    })
}

/// Reads a configuration file.
pub(super) fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.display().to_string(),
        error,
    })
}

fn override_listen(config: &mut Config, listen: &[SocketAddr]) {
    if !listen.is_empty() {
        config.listen = listen.to_vec();
    }
}

/// Whether a configuration text has nothing but blank lines and comments.
fn holds_nothing(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|line| line.is_empty() || line.starts_with('#'))
}

impl Htpasswd {
    /// Reads and parses an htpasswd file (`[auth] htpasswd`). Defined here, with the other
    /// files a configuration names, so that the pure core reads no file.
    pub fn load(path: &Path) -> Result<Htpasswd, HtpasswdError> {
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| HtpasswdError::Read {
            path: origin.clone(),
            source,
        })?;
        Htpasswd::from_bytes(bytes, &origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::auth::{Htpasswd, HtpasswdError};

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

    use crate::config::{Place, ProblemKind};

    const PURPOSES: [Purpose; 4] = [
        Purpose::Start,
        Purpose::Check,
        Purpose::Explain,
        Purpose::Reload,
    ];

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn an_empty_file_is_refused_only_on_reload() {
        for text in [
            "",
            "\n  \n",
            "# all commented out\n# listen = [\"0.0.0.0:3128\"]\n",
        ] {
            let (_dir, path) = file(text);
            let source = Source::file(&path, Vec::new());
            for purpose in PURPOSES {
                let loaded = load(&source, purpose);
                if purpose == Purpose::Reload {
                    let e = loaded.unwrap_err().to_string();
                    assert_eq!(
                        e,
                        format!(
                            "{}: the file holds no settings (empty, or comments only); a reload \
                             keeps the running configuration rather than falling back to the \
                             defaults",
                            path.display()
                        )
                    );
                } else {
                    let loaded = loaded.unwrap();
                    assert_eq!(loaded.config, Config::default(), "{purpose:?}");
                    assert_eq!(loaded.origin, path.display().to_string());
                    assert_eq!(loaded.text.as_deref(), Some(text));
                }
            }
        }
        let (_dir, path) = file("# one setting\nlisten = [\"127.0.0.1:3128\"]\n");
        for purpose in PURPOSES {
            load(&Source::file(&path, Vec::new()), purpose).unwrap();
        }
    }

    #[test]
    fn listen_overrides_replace_the_file_and_the_defaults() {
        let over: Vec<SocketAddr> = vec!["127.0.0.1:9".parse().unwrap()];
        let (_dir, path) = file("listen = [\"127.0.0.1:3128\", \"127.0.0.1:3130\"]\n");
        for purpose in PURPOSES {
            let loaded = load(&Source::file(&path, over.clone()), purpose).unwrap();
            assert_eq!(loaded.config.listen, over);
            assert_eq!(loaded.settings.policy.listen, over);
            let loaded = load(&Source::file(&path, Vec::new()), purpose).unwrap();
            assert_eq!(loaded.config.listen.len(), 2);
            let loaded = load(&Source::defaults(over.clone()), purpose).unwrap();
            assert_eq!(loaded.config.listen, over);
            assert_eq!(loaded.origin, BUILT_IN);
            assert_eq!(loaded.text, None);
        }
        // An empty override leaves the file's list, even an empty (invalid) one, alone.
        let (_dir, path) = file("listen = []\n");
        assert!(load(&Source::file(&path, Vec::new()), Purpose::Start).is_err());
        assert!(load(&Source::file(&path, over), Purpose::Start).is_ok());
    }

    #[test]
    fn an_unreadable_file_names_itself() {
        for purpose in PURPOSES {
            let e = load(&Source::file("/nonexistent/p.toml", Vec::new()), purpose).unwrap_err();
            assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
            assert!(
                e.to_string()
                    .starts_with("cannot read /nonexistent/p.toml: "),
                "{e}"
            );
            assert_eq!(e.located(), e.to_string());
        }
    }

    #[test]
    fn parse_errors_carry_line_and_column() {
        let (_dir, path) = file("[ports]\nhttp = [80\nconnect = 5\n");
        for purpose in PURPOSES {
            let e = load(&Source::file(&path, Vec::new()), purpose).unwrap_err();
            let ConfigError::Parse { origin, message } = &e else {
                panic!("{e:?}");
            };
            assert_eq!(origin, &path.display().to_string());
            assert!(
                message.starts_with("TOML parse error at line 3, column 1"),
                "{message}"
            );
        }
    }

    #[test]
    fn validation_problems_are_located_for_every_purpose() {
        let (_dir, path) = file(
            "[ports]\nhttp = [80]\nconnect = [\"https\", \"htps\"]\n[timeouts]\nconnect = \"0s\"\n",
        );
        let origin = path.display().to_string();
        for purpose in PURPOSES {
            let e = load(&Source::file(&path, Vec::new()), purpose).unwrap_err();
            let ConfigError::Invalid { problems, .. } = &e else {
                panic!("{e:?}");
            };
            assert!(matches!(
                &problems[0].kind,
                ProblemKind::UnknownServiceName { name, .. } if name == "htps"
            ));
            assert_eq!(
                problems[0].at,
                Some(Place {
                    line: 3,
                    column: 21
                })
            );
            assert!(matches!(problems[1].kind, ProblemKind::ZeroDuration));
            assert_eq!(
                e.located(),
                format!(
                    "{origin}:3:21: ports.connect: entry \"htps\": unknown service name \"htps\" \
                     (see \"Service names\" in the manual, docs/src/service-names.md)\n\
                     {origin}:5:1: timeouts.connect: must be longer than zero"
                )
            );
            assert_eq!(
                e.to_string(),
                format!(
                    "{origin}: invalid configuration:\n  - {origin}:3:21: ports.connect: entry \
                     \"htps\": unknown service name \"htps\" (see \"Service names\" in the manual, \
                     docs/src/service-names.md)\n  - {origin}:5:1: timeouts.connect: must be longer than zero"
                )
            );
        }
        // Validated without a text (Config::validate), the problems have no place.
        let e = Config::from_toml("listen = []", "t")
            .unwrap()
            .validate("t")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "t: invalid configuration:\n  - listen: the list is empty; give at least one \
             address such as \"0.0.0.0:3128\""
        );
        assert_eq!(
            e.located(),
            "t: listen: the list is empty; give at least one address such as \"0.0.0.0:3128\""
        );
    }
}
