//! `ipckit-manager serve --addr … [--authkey-file …] [--no-fast-path]`: a manager server on its own.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use ipckit_manager::{Address, Manager, ServeOptions};

/// A manager server that owns shared dicts, lists, values, locks and queues.
#[derive(Debug, Parser)]
#[command(name = "ipckit-manager", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serves until a client asks it to shut down.
    Serve {
        /// Where to listen: unix:///path, unix-abstract://name, tcp://host:port.
        #[arg(long)]
        addr: Address,
        /// A file holding the authkey (required for tcp://).
        #[arg(long)]
        authkey_file: Option<PathBuf>,
        /// The largest value taken, in bytes.
        #[arg(long, default_value_t = 16 << 20)]
        max_value: usize,
        /// Keep local clients on the socket instead of offering them the shared-memory
        /// fast path.
        #[arg(long)]
        no_fast_path: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let Cmd::Serve {
        addr,
        authkey_file,
        max_value,
        no_fast_path,
    } = Cli::parse().cmd;
    let mut opts = ServeOptions::new()
        .max_value(max_value)
        .fast_path(!no_fast_path);
    if let Some(path) = authkey_file {
        match std::fs::read(&path) {
            Ok(key) => opts = opts.authkey(key.trim_ascii()),
            Err(e) => {
                eprintln!("ipckit-manager: cannot read {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    match Manager::serve_forever(&addr, opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipckit-manager: {e}");
            ExitCode::FAILURE
        }
    }
}
