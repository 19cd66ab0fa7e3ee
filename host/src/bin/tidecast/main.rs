//! The `tidecast` binary: parses the command line, then runs a node (`serve`) or one of the
//! commands that talk to a running node. Everything else is the library (`lib.rs`).

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing::info;

use tidecast::config::{ServeArgs, ServeConfig};

mod bench;
mod cli;
mod config_files;

#[derive(Parser)]
#[command(name = "tidecast", version, about = "Icecast-compatible streaming server", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once at start-up: the size of the flags does not matter"
)]
enum Command {
    /// Run a node (single node with an embedded store unless told otherwise).
    Serve(ServeArgs),
    /// Measure codec throughput on this machine (decode, encode, whole pipelines; one thread).
    Bench(bench::BenchArgs),
    /// Declare and manage mounts on a running node.
    Mount {
        #[command(flatten)]
        conn: cli::Connection,
        #[command(subcommand)]
        command: cli::MountCommand,
    },
    /// Upload and manage WebAssembly plugins (filters and listener policies) on a running node.
    Plugin {
        #[command(flatten)]
        conn: cli::Connection,
        #[command(subcommand)]
        command: cli::PluginCommand,
    },
    /// Group mounts into stations (radios) that share listener routing, on a running node.
    Station {
        #[command(flatten)]
        conn: cli::Connection,
        #[command(subcommand)]
        command: cli::StationCommand,
    },
    /// The media library playlist mounts play from: list, upload, remove and fetch files.
    Media {
        #[command(flatten)]
        conn: cli::Connection,
        #[command(subcommand)]
        command: cli::MediaCommand,
    },
    /// Show the cluster as a running node sees it: nodes and their load, mounts, where each is
    /// produced, and listeners everywhere.
    Status {
        #[command(flatten)]
        conn: cli::Connection,
    },
    /// Write the running configuration (mounts, stations, plugins) as TOML, to apply elsewhere
    /// or keep in Git. Secrets are written as hashes, never in clear.
    Export {
        #[command(flatten)]
        conn: cli::Connection,
        /// Write to this file instead of standard output.
        #[arg(short, long)]
        output: Option<std::path::PathBuf>,
    },
    /// Make the configuration what TOML files declare, in one transaction: a file, or a
    /// directory of .toml files. Applying again changes nothing.
    Apply {
        #[command(flatten)]
        conn: cli::Connection,
        /// The file, or directory of .toml files.
        #[arg(short = 'f', long = "file")]
        path: std::path::PathBuf,
        /// Print what would change, and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also remove the mounts and stations the files do not declare.
        #[arg(long)]
        prune: bool,
    },
    /// Save the whole store (configuration, credentials' hashes, plugins with their bytes,
    /// playlist positions, the media index) to a file.
    Backup {
        #[command(flatten)]
        conn: cli::Connection,
        /// Write to this file (mode 0600) instead of standard output.
        #[arg(short, long)]
        output: Option<std::path::PathBuf>,
    },
    /// Make the store what a backup holds (the embedded store or etcd alike).
    Restore {
        #[command(flatten)]
        conn: cli::Connection,
        /// The file `tidecast backup` wrote.
        file: std::path::PathBuf,
    },
    /// Drain a node before maintenance: it takes no new listeners or sources, hands its
    /// transcoders, playlists and relay mounts to other nodes, and stops once its listeners have
    /// left or its --drain-secs have passed (what SIGTERM does too).
    Drain {
        #[command(flatten)]
        conn: cli::Connection,
        /// The node of the cluster to drain [default: the node --server points at].
        node: Option<String>,
        /// Return once the drain has begun, instead of following it until the node stops.
        #[arg(long)]
        no_wait: bool,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Bench(args) => bench::run(args),
        Command::Mount { conn, command } => cli::mount(&conn, command),
        Command::Plugin { conn, command } => cli::plugin(&conn, command),
        Command::Status { conn } => cli::status(&conn),
        Command::Station { conn, command } => cli::station(&conn, command),
        Command::Media { conn, command } => cli::media(&conn, command),
        Command::Export { conn, output } => config_files::export(&conn, output),
        Command::Apply {
            conn,
            path,
            dry_run,
            prune,
        } => config_files::apply(&conn, &path, dry_run, prune),
        Command::Backup { conn, output } => config_files::backup(&conn, output),
        Command::Restore { conn, file } => config_files::restore(&conn, &file),
        Command::Drain {
            conn,
            node,
            no_wait,
        } => cli::drain(&conn, node, no_wait),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line. The library's errors name their cause in their own
/// message already, so a cause is added only where it says something new.
fn report(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = ServeConfig::load(args)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TIDECAST_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(
                    "info,symphonia=error,symphonia_format_ogg=error,symphonia_core=error",
                )
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async move {
        // Bound first: a cluster node advertises the address it really got (port 0 in tests).
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        tidecast::run(listener, config, shutdown_signal())
            .await
            .map_err(anyhow::Error::from)
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    info!("node stopped");
    result
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    info!("shutdown requested: draining (a second signal stops at once)");
    // The node drains now (`--drain-secs`); a second signal means: stop now.
    tokio::spawn(async {
        #[cfg(unix)]
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::warn!("second signal: stopping without finishing the drain");
        std::process::exit(1);
    });
}
