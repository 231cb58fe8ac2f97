//! `cargo xtask`: builds the eBPF object and the agent, runs the tests and the lab demo.
//!
//! Everything a fresh Debian machine lacks (bpf-linker, LLVM 22, a rustc with library source,
//! iproute2, bpftool, ...) is installed here, so the README's two commands are all a newcomer runs.

mod bench;
mod bench_suite;
mod build;
mod dist;
mod modules;
mod prereq;
mod run;
mod toolchain;
mod upstream;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, test and demo orchestration for jitsi-agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the eBPF programs (bpfel-unknown-none, with BTF), installing the toolchain if needed.
    BuildEbpf {
        /// Build the upgrade test's variant instead (`target/ebpf-upgrade-test/`; never shipped).
        #[arg(long)]
        upgrade_test: bool,
    },
    /// Build the eBPF object and a release `jitsi-agent` binary that embeds it.
    Build,
    /// Build the Debian package (`target/dist/jitsi-agent_<version>_<arch>.deb`) and check it
    /// with lintian.
    Dist,
    /// Run formatting and lint checks, unit tests and the root-only integration tests.
    Test {
        /// Skip `cargo fmt --check` and `cargo clippy`.
        #[arg(long)]
        no_lint: bool,
        /// Only run integration tests whose name contains this string (skips fuzzing).
        filter: Option<String>,
        /// How long to fuzz the ClientHello reader after the tests (0: skip).
        #[arg(long, default_value_t = 60)]
        fuzz_seconds: u32,
    },
    /// Benchmarks. `sni-relay`: the splitter's relay, copy against splice.
    Bench {
        /// What to measure: every suite (`all`), or one of them; `sni-relay` compares the
        /// splitter's `copy` and `splice` relays.
        #[arg(default_value = "all", value_parser = ["all", "udp", "sni", "prog", "control", "handover", "sni-relay"])]
        what: String,
        /// Rounds (each runs every contender once, back to back).
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Seconds per timed UDP run (the splitter's connection runs take twice as long).
        #[arg(long, default_value_t = 1.5)]
        secs: f64,
        /// MiB echoed per round (`sni-relay` only).
        #[arg(long, default_value_t = 256)]
        mib: u32,
        /// Measure nothing: render the tables and plots of this results file again.
        #[arg(long)]
        from: Option<std::path::PathBuf>,
    },
    /// Fuzz the TLS front's ClientHello reader (cargo fuzz) for a bounded time.
    Fuzz {
        /// Seconds to run.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
    /// Build everything, create the lab, run the agent in it and show what the backends saw.
    Demo,
    /// Print the agent library's module graph and check its rules (no cycle, the fronts apart).
    Modules,
    /// Extract the facts the generated stack must match from a docker-jitsi-meet snapshot at
    /// a tag into `jitsi-agent/data/docker-jitsi-meet.json`.
    UpstreamFacts {
        /// A git directory of github:jitsi/docker-jitsi-meet (a bare clone or a snapshot).
        #[arg(long)]
        git_dir: std::path::PathBuf,
        /// The tag (the stack's `image_tag`).
        #[arg(long)]
        tag: String,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::BuildEbpf { upgrade_test: false } => build::ebpf().map(drop),
        Command::BuildEbpf { upgrade_test: true } => build::ebpf_upgrade_test().map(drop),
        Command::Build => build::agent().map(drop),
        Command::Dist => dist::deb().map(drop),
        Command::Test { no_lint, filter, fuzz_seconds } => run::test(!no_lint, filter.as_deref(), fuzz_seconds),
        Command::Fuzz { seconds } => run::fuzz(seconds),
        Command::Bench { what, rounds, secs, mib, from } => match (what.as_str(), from) {
            (_, Some(results)) => bench_suite::render(&results),
            ("sni-relay", None) => bench::sni_relay(rounds, mib),
            (_, None) => bench_suite::run(&what, rounds, secs),
        },
        Command::Demo => run::demo(),
        Command::Modules => modules::check(&build::workspace_root(), true),
        Command::UpstreamFacts { git_dir, tag } => upstream::facts(&git_dir, &tag),
    }
}
