//! The `jitsi-agent` command line.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use jitsi_agent::{config::Config, run, status};

#[derive(Parser)]
#[command(version, about = "Steers a self-hosted Jitsi Meet's public ports to its containers with XDP/TC")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach (or adopt) the datapath, fill it from the config and keep it current until
    /// SIGTERM/SIGINT. The datapath stays attached after the agent exits.
    Run {
        /// Configuration file.
        #[arg(long, default_value = "/etc/jitsi-agent/agent.toml")]
        config: PathBuf,
    },
    /// Remove everything the agent put on the host: unpin (and so detach) the XDP and TC
    /// programs, remove the pinned maps and the SNI splitter's policy rules and routes.
    /// Run it after stopping the agent; traffic then flows as if it had never run.
    Teardown {
        /// Configuration file (for `pin_dir` and the `[sni]` routing settings).
        #[arg(long, default_value = "/etc/jitsi-agent/agent.toml")]
        config: PathBuf,
    },
    /// Print the rules and counters read from the pinned maps (no running agent needed).
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
    },
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line with the whole cause chain: readable on a terminal and under journald.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run { config } => {
            let path = config;
            let config = Config::load(&path)?;
            let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            rt.block_on(run::run(config, shutdown_signal()))
                .with_context(|| format!("jitsi-agent run --config {}", path.display()))?;
        }
        Command::Teardown { config } => {
            let config = Config::load(&config)?;
            let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            rt.block_on(jitsi_agent::teardown::teardown(&config))?;
        }
        Command::Status { json, pin_dir, config } => {
            let pin_dir = match (pin_dir, config) {
                (Some(p), _) => p,
                (None, Some(c)) => Config::load(&c)?.pin_dir,
                (None, None) => PathBuf::from(jitsi_agent::config::DEFAULT_PIN_DIR),
            };
            let status = status::read(&pin_dir).with_context(|| {
                format!("reading the datapath pinned at {} (is the agent installed?)", pin_dir.display())
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{status}");
            }
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
