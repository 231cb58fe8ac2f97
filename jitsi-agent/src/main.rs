//! The `jitsi-agent` command line.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use jitsi_agent::{
    check,
    config::Config,
    listeners::Listeners,
    run::{self, Control},
    stack::compose_cli,
    status,
};

#[derive(Parser)]
#[command(version, about = "Steers a self-hosted Jitsi Meet's public ports to its containers with XDP/TC")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum StackCommand {
    /// Write the Docker Compose project (`docker-compose.yml`, `.env` with upstream's variable
    /// names and fresh secrets, `coturn/turnserver.conf`, the config directories owned by
    /// uid 1000) into `[stack] directory`. Files edited since they were generated and existing
    /// secrets are kept unless `--force` (secrets are kept even then); prints what it did.
    Init {
        /// Configuration file with a `[stack]` section.
        #[arg(long, default_value = "/etc/jitsi-agent/agent.toml")]
        config: PathBuf,
        /// Replace generated files even if they were edited (secrets are still kept).
        #[arg(long)]
        force: bool,
    },
    /// `docker compose up -d` on the project (v2, else `docker-compose`), then `show`.
    ///
    /// With `letsencrypt_email`, refuses while nothing answers port 80 for the meet name (start
    /// the agent first): the web container asks Let's Encrypt for its certificate when it has
    /// none or it is due, exits when that fails and is restarted, using up the CA's
    /// failed-validation limit in a loop.
    Up {
        /// Configuration file with a `[stack]` section.
        #[arg(long, default_value = "/etc/jitsi-agent/agent.toml")]
        config: PathBuf,
        /// Start even though nothing answers port 80 for the meet name.
        #[arg(long)]
        skip_port_80_check: bool,
    },
    /// `docker compose down` on the project (containers and network removed; the config
    /// directories and secrets stay), then `show`.
    Down {
        /// Configuration file with a `[stack]` section.
        #[arg(long, default_value = "/etc/jitsi-agent/agent.toml")]
        config: PathBuf,
    },
    /// The project's containers from the Docker Engine API: service, state, addresses, health.
    Show {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum Command {
    /// The daemon: mount bpffs if needed, attach (or adopt) the pinned datapath, fill it from
    /// the config, install the splitter's routing and listen, then tell systemd it is ready.
    ///
    /// SIGHUP, or a change to the file, reloads it: rules are added, changed and removed in the
    /// maps without touching the others, splitter routes and listeners are swapped; an invalid file
    /// is refused and the running configuration stays. SIGTERM/SIGINT: stop accepting, let open
    /// connections finish (`splitter.drain_timeout_secs`), exit. The datapath stays attached, so
    /// media keeps flowing while the agent is stopped or restarting. Listening sockets passed by
    /// systemd (jitsi-agent.socket) are used instead of binding, so a restart refuses nothing.
    Run {
        /// Configuration file.
        #[arg(long, default_value = "/etc/jitsi-agent/agent.toml")]
        config: PathBuf,
    },
    /// The Jitsi Meet container stack from `[stack]` (see `stack init --help`).
    #[command(subcommand)]
    Stack(StackCommand),
    /// Remove everything the agent put on the host: unpin (and so detach) the XDP and TC
    /// programs, remove the pinned maps and the splitter's policy rules and routes.
    /// Run it after stopping the agent; traffic then flows as if it had never run.
    Teardown {
        /// Configuration file (for `pin_dir` and the `[splitter]` policy routing settings).
        #[arg(long, default_value = "/etc/jitsi-agent/agent.toml")]
        config: PathBuf,
    },
    /// Print where the programs are attached and how, each rule with its backend, counters and
    /// rates, the splitter routes' connections and refusals, and the pass/drop reasons, read from
    /// the pinned maps (works whether or not the daemon runs).
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Pin directory to read (default: the config's `pin_dir`, else /sys/fs/bpf/jitsi-agent).
        #[arg(long)]
        pin_dir: Option<PathBuf>,
        /// Read `pin_dir` from this configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Seconds between the two counter readings rates are computed from (0: no rates).
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// Preflight: one line per check (kernel, BTF, bpffs, privileges, the uplink and its XDP
    /// mode, ports, Docker port publishing and firewall rules on the same ports), with a fix for
    /// each failure. Changes nothing. Exits non-zero when a check fails.
    Check {
        /// Configuration file.
        #[arg(long, default_value = "/etc/jitsi-agent/agent.toml")]
        config: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    init_tracing();
    // Before any thread exists: take the sockets systemd passed (and unset LISTEN_*).
    // SAFETY: single-threaded here; the tokio runtime starts below.
    let listeners = Arc::new(unsafe { Listeners::from_env() });
    match real_main(listeners) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line with the whole cause chain: readable on a terminal and under journald.
            eprintln!("error: {e:#}");
            exit_code(&e)
        }
    }
}

/// `EX_CONFIG` (78, sysexits.h) when the configuration file is what failed: the unit does not
/// restart the agent for that (`RestartPreventExitStatus=78`); 1 for everything else.
fn exit_code(e: &anyhow::Error) -> std::process::ExitCode {
    use jitsi_agent::error::Error;
    let config = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<Error>(),
            Some(Error::ConfigRead { .. } | Error::ConfigParse { .. } | Error::ConfigInvalid { .. })
        )
    });
    std::process::ExitCode::from(if config { 78 } else { 1 })
}

/// Human output on a terminal; under journald (which adds the time and the unit) one plain
/// line per event without colours or timestamps.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        fmt.without_time().init();
    } else {
        fmt.init();
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("starting the tokio runtime")
}

fn real_main(listeners: Arc<Listeners>) -> Result<()> {
    match Cli::parse().command {
        Command::Run { config } => {
            match jitsi_agent::rlimit::raise_nofile() {
                Ok((before, after)) if before < after => {
                    tracing::info!(before, after, "raised the open-file limit to the hard limit");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
            }
            runtime()?
                .block_on(async {
                    let (tx, rx) = tokio::sync::mpsc::channel(8);
                    tokio::spawn(forward_signals(tx));
                    run::run(&config, listeners, rx).await
                })
                .with_context(|| format!("jitsi-agent run --config {}", config.display()))?;
        }
        Command::Teardown { config } => {
            let config = Config::load(&config)?;
            runtime()?.block_on(jitsi_agent::teardown::teardown(&config))?;
        }
        Command::Status { json, pin_dir, config, interval } => {
            let config = config.map(|c| Config::load(&c)).transpose()?;
            let pin_dir = match (pin_dir, &config) {
                (Some(p), _) => p,
                (None, Some(c)) => c.pin_dir.clone(),
                (None, None) => PathBuf::from(jitsi_agent::config::DEFAULT_PIN_DIR),
            };
            let mut status =
                runtime()?.block_on(status::read(&pin_dir, Duration::from_secs_f64(interval))).with_context(|| {
                    format!("reading the datapath pinned at {} (is the agent installed?)", pin_dir.display())
                })?;
            if let Some(c) = &config
                && let Some(acme) = &c.acme
            {
                status.certificates = jitsi_agent::acme::read_states(acme, c.stack.as_ref());
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{status}");
            }
        }
        Command::Stack(StackCommand::Init { config, force }) => {
            let (full, stack) = stack_of(&config)?;
            let (lan, note) = runtime()?.block_on(jitsi_agent::stack::preflight::uplink_addresses(&full));
            let mut report = jitsi_agent::stack::init::init(&stack, &lan, force)?;
            report.notes.extend(note);
            print!("{report}");
        }
        Command::Stack(StackCommand::Up { config, skip_port_80_check }) => {
            let (full, stack) = stack_of(&config)?;
            if !skip_port_80_check && let Some(why) = jitsi_agent::stack::preflight::port_80_refusal(&full) {
                anyhow::bail!(
                    "not starting the stack: {why}. With letsencrypt_email the web container asks Let's Encrypt \
                     for {}'s certificate over port 80 when it starts without one (or with one due), exits when \
                     that fails and is restarted: each try counts against the CA's failed-validation limit. Start the agent first (`systemctl start jitsi-agent`), then run \
                     `stack up` again (or pass --skip-port-80-check if port 80 is served another way)",
                    stack.meet_domain
                );
            }
            compose_cli::compose(&stack, &["up", "-d", "--remove-orphans"])?;
            print!("{}", compose_cli::table(&runtime()?.block_on(compose_cli::show())?));
        }
        Command::Stack(StackCommand::Down { config }) => {
            compose_cli::compose(&stack_of(&config)?.1, &["down", "--remove-orphans"])?;
            print!("{}", compose_cli::table(&runtime()?.block_on(compose_cli::show())?));
        }
        Command::Stack(StackCommand::Show { json }) => {
            let rows = runtime()?.block_on(compose_cli::show())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", compose_cli::table(&rows));
            }
        }
        Command::Check { config } => {
            let report = runtime()?.block_on(check::check(&config));
            print!("{report}");
            if report.failed() > 0 {
                anyhow::bail!("{} check(s) failed", report.failed());
            }
        }
    }
    Ok(())
}

/// The file at `path` and its `[stack]` section.
fn stack_of(path: &std::path::Path) -> Result<(Config, jitsi_agent::config::Stack)> {
    let config = Config::load(path)?;
    let stack = config
        .stack
        .clone()
        .with_context(|| format!("{}: no [stack] section (see the README's deployment walkthrough)", path.display()))?;
    Ok((config, stack))
}

/// SIGHUP reloads; SIGTERM and SIGINT stop (a second one is left to the default handler's
/// absence: the agent keeps draining until its deadline).
async fn forward_signals(tx: tokio::sync::mpsc::Sender<Control>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("installing a SIGHUP handler");
    loop {
        let c = tokio::select! {
            _ = term.recv() => Control::Stop,
            _ = int.recv() => Control::Stop,
            _ = hup.recv() => Control::Reload,
        };
        if tx.send(c).await.is_err() {
            return;
        }
    }
}
