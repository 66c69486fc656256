//! The `portcullis` binary: reads the command line and configuration, binds the listeners,
//! installs logging and signals, and runs the proxy until SIGINT or SIGTERM.

use clap::Parser;
use std::process::ExitCode;

use portcullis::ops::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Passwd { file, user }) => return passwd(file, user),
        Some(Command::Cert { names, ips, out }) => {
            let request = portcullis::ops::cert::Request {
                names: names.clone(),
                ips: ips.clone(),
                out: out.clone(),
            };
            return match portcullis::ops::cert::run(&request) {
                Ok(made) => {
                    print!("{}", portcullis::ops::cert::instructions(&made));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("portcullis cert: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Report(options)) => return report(options),
        Some(Command::Check { config, strict }) => return check(config.as_deref(), *strict),
        Some(Command::Explain {
            config,
            client,
            user,
            resolve,
            at,
            method,
            target,
        }) => {
            return explain(
                config.as_deref(),
                &portcullis::ops::explain::Question {
                    client: *client,
                    user: user.as_deref(),
                    method,
                    target,
                    at: jiff::Timestamp::now(),
                },
                *resolve,
                at.as_deref(),
            )
        }
        Some(Command::Completions { shell }) => return completions(*shell),
        Some(Command::Top {
            admin,
            interval,
            once,
        }) => {
            let every = std::time::Duration::from_secs_f64(interval.clamp(0.2, 3600.0));
            return match portcullis::ops::top::run(*admin, every, *once) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("portcullis top: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Man { command }) => return man(command.as_deref()),
        None => {}
    }
    let source = portcullis::config::Source {
        file: cli.config.clone(),
        listen: cli.listen.clone(),
    };
    match portcullis::runtime::launch(source) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// jemalloc: less CPU per request than the system allocator (the book, Performance).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// `portcullis report [FILES…]`: the report on stdout, notes on stderr; exit 1 when an input
/// could not be read.
fn report(options: &portcullis::ops::report::Options) -> ExitCode {
    match portcullis::ops::report::run(options) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("portcullis report: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `portcullis passwd FILE USER`: what happened on stderr, exit 1 with one line on error.
fn passwd(file: &std::path::Path, user: &str) -> ExitCode {
    match portcullis::ops::passwd::run(file, user) {
        Ok(message) => {
            eprintln!("portcullis: {message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `portcullis check [--config FILE] [--strict]`: the summary and warnings on stdout, errors
/// on stderr; exit 0 valid, 1 invalid, 2 valid with warnings under `--strict`.
fn check(config: Option<&std::path::Path>, strict: bool) -> ExitCode {
    let outcome = portcullis::ops::check::run(config, strict);
    print!("{}", outcome.stdout);
    eprint!("{}", outcome.stderr);
    ExitCode::from(outcome.code)
}

/// `portcullis explain …`: the decision and its steps on stdout; exit 0 allowed, 1 refused,
/// 2 for a usage or configuration error, 3 when a rule needs an address not resolved.
fn explain(
    config: Option<&std::path::Path>,
    question: &portcullis::ops::explain::Question<'_>,
    resolve: bool,
    at: Option<&str>,
) -> ExitCode {
    const USAGE: u8 = 2;
    let source = portcullis::config::Source {
        file: config.map(std::path::Path::to_path_buf),
        listen: Vec::new(),
    };
    let settings = match portcullis::config::load(&source, portcullis::config::Purpose::Explain) {
        Ok(loaded) => loaded.settings,
        Err(e @ portcullis::config::ConfigError::Invalid { .. }) => {
            eprintln!("portcullis explain: {e}\n(`portcullis check` says more)");
            return ExitCode::from(USAGE);
        }
        Err(e) => {
            eprintln!("portcullis explain: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let mut question = *question;
    if let Some(at) = at {
        match portcullis::core::clock::parse_moment(at, &settings.policy.clock) {
            Ok(at) => question.at = at,
            Err(e) => {
                eprintln!("portcullis explain: --at: {e}");
                return ExitCode::from(USAGE);
            }
        }
    }
    let question = &question;
    // The resolver `[dns]` sets up, as the proxy's dialler asks it; only with --resolve.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("portcullis explain: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let resolver = match resolve
        .then(|| {
            runtime.block_on(async { portcullis::egress::resolve::Resolver::new(&settings.dns) })
        })
        .transpose()
    {
        Ok(resolver) => resolver,
        Err(e) => {
            eprintln!("portcullis explain: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let timeout = settings.timeouts.connect;
    let configured = |name: &str, _port: u16| -> Result<Vec<std::net::IpAddr>, String> {
        let resolver = resolver.as_ref().ok_or("names are not resolved")?;
        runtime.block_on(async {
            use portcullis::egress::dial::{addresses_of, DialError};
            addresses_of(resolver, name, timeout, &mut None)
                .await
                .map_err(|e| match e {
                    DialError::Resolve { error, .. } => error,
                    DialError::NoAddress { .. } => "no address".to_owned(),
                    DialError::ResolveTimedOut { after, .. } => format!(
                        "no answer within {} (timeouts.connect)",
                        humantime::format_duration(after)
                    ),
                    other => other.to_string(),
                })
        })
    };
    // The group helper, asked as the proxy asks it: only when a user is named and rules
    // name groups.
    let group_helper = settings
        .auth
        .as_ref()
        .and_then(|a| a.groups.clone())
        .filter(|_| question.user.is_some() && !settings.policy.group_names().is_empty())
        .map(|spec| runtime.block_on(async { portcullis::egress::helper::Helpers::start(spec) }));
    let ask_group = |user: &str, group: &str| -> Result<bool, String> {
        let helper = group_helper.as_ref().ok_or("no group helper")?;
        runtime.block_on(helper.member(user, group))
    };
    let lookups = portcullis::ops::explain::Lookups {
        groups: group_helper
            .is_some()
            .then_some(&ask_group as portcullis::ops::explain::GroupLookup<'_>),
        resolve: resolve.then_some(&configured as portcullis::ops::explain::Resolver<'_>),
        is_local: &portcullis::egress::dial::is_local_address,
    };
    match portcullis::ops::explain::explain(&settings, question, &lookups) {
        Ok(explanation) => {
            print!("{}", explanation.render());
            ExitCode::from(explanation.exit_code())
        }
        Err(e) => {
            eprintln!("portcullis explain: {e}");
            ExitCode::from(USAGE)
        }
    }
}

/// `portcullis completions SHELL`: the completion script, generated from the CLI definition.
fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut command = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut command, "portcullis", &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// `portcullis man [COMMAND]`: portcullis(1), or portcullis-COMMAND(1), as roff.
fn man(subcommand: Option<&str>) -> ExitCode {
    if matches!(subcommand, Some("portcullis.toml" | "config")) {
        // portcullis.toml(5): written by hand, beside the pages clap generates.
        print!("{}", include_str!("../docs/man/portcullis.toml.5"));
        return ExitCode::SUCCESS;
    }
    let command = <Cli as clap::CommandFactory>::command();
    let source = format!("portcullis {}", command.get_version().unwrap_or_default());
    let page = match subcommand {
        None => command,
        Some(name) => match command.find_subcommand(name) {
            Some(sub) => sub
                .clone()
                .display_name(format!("portcullis-{name}"))
                .bin_name(format!("portcullis {name}")),
            None => {
                let names: Vec<&str> = command
                    .get_subcommands()
                    .map(|s| s.get_name())
                    .filter(|n| *n != "help")
                    .collect();
                eprintln!(
                    "portcullis man: no subcommand {name:?}; the subcommands are {} (and portcullis.toml, the configuration file)",
                    names.join(", ")
                );
                return ExitCode::from(2);
            }
        },
    };
    let mut out = Vec::new();
    match clap_mangen::Man::new(page).source(source).render(&mut out) {
        Ok(()) => {
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            match stdout.write_all(&out).and_then(|()| stdout.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            }
        }
        Err(e) => {
            eprintln!("portcullis man: {e}");
            ExitCode::FAILURE
        }
    }
}
