//! What every scenario shares: pacing, logging, starting roles, checking outcomes.

use std::{sync::OnceLock, time::Duration};

use anyhow::{Context, bail};
use ipckit_core::{Child, Command};
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

const LOG_ENV: &str = "IPCKIT_DEMO_LOG";
static LOG: OnceLock<String> = OnceLock::new();

/// In a role child: log as the parent asked.
pub(crate) fn init_tracing_from_env() {
    if let Ok(filter) = std::env::var(LOG_ENV) {
        init(&filter);
    }
}

/// In the parent: log at the level `-v` asked for, and have children do the same.
pub(crate) fn init_tracing(verbose: u8) {
    let filter = match verbose {
        0 => return,
        1 => {
            "ipckit_core=debug,ipckit_pipes=debug,ipckit_shmem=debug,ipckit_queues=debug,ipckit_sockets=debug,info"
        }
        _ => "trace",
    };
    let _ = LOG.set(filter.to_string());
    init(filter);
}

/// Colour only on a terminal: files and pipes get plain text.
fn init(filter: &str) {
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Whether to pause between steps, as the Python tutorial's `time.sleep` does.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Pace {
    fast: bool,
}

impl Pace {
    pub(crate) fn new(fast: bool) -> Self {
        Pace { fast }
    }

    /// Sleeps `secs` seconds, or not at all with `--fast`.
    pub(crate) fn pause(self, secs: f64) {
        if !self.fast {
            std::thread::sleep(Duration::from_secs_f64(secs));
        }
    }
}

/// A command for role `name`, logging as this process does.
pub(crate) fn role(name: &str) -> Command {
    let cmd = Command::new(name);
    match LOG.get() {
        Some(filter) => cmd.env(LOG_ENV, filter),
        None => cmd,
    }
}

/// Joins every child; fails with the first child that failed.
pub(crate) fn join_all(children: &mut [Child]) -> anyhow::Result<()> {
    let mut first_error = None;
    for child in children {
        let role = child.role().to_string();
        let outcome = child
            .join_timeout(Duration::from_secs(120))
            .with_context(|| format!("process `{role}`"))
            .and_then(|status| {
                if status.success() {
                    Ok(())
                } else {
                    bail!("process `{role}` ended with {status}")
                }
            });
        if let Err(e) = outcome {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Compares what arrived with what was sent.
pub(crate) fn expect_same<T: PartialEq + std::fmt::Debug>(
    what: &str,
    got: &[T],
    sent: &[T],
) -> anyhow::Result<()> {
    if got != sent {
        bail!("{what}: expected {sent:?}, got {got:?}");
    }
    Ok(())
}
