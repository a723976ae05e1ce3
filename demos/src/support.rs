//! What every scenario shares: pacing, logging, starting roles, checking outcomes.

use std::{
    ops::Deref,
    path::PathBuf,
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use ipckit_core::{Child, Command};
use ipckit_manager::{Address, Manager};
use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout, poll},
};
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// How long a demo waits for any one step of another process before it gives up.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

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

/// Joins every child, watching all of them at once: the moment one fails — killed by a
/// signal, panicked, returned an error — the others are stopped and the demo fails naming
/// it, instead of waiting for a child that waits for the dead one.
pub(crate) fn join_all(children: &mut [Child]) -> anyhow::Result<()> {
    let mut left: Vec<usize> = (0..children.len()).collect();
    let mut progress = Instant::now();
    while !left.is_empty() {
        let ended = ended(children, &left)?;
        if ended.is_empty() {
            if progress.elapsed() > PATIENCE * 4 {
                let running: Vec<String> = left
                    .iter()
                    .map(|&i| children[i].role().to_string())
                    .collect();
                stop(children, &left);
                bail!(
                    "no process ended in {:?}; still running: {running:?}",
                    PATIENCE * 4
                );
            }
            continue;
        }
        progress = Instant::now();
        for i in ended {
            left.retain(|&j| j != i);
            let (role, pid) = (children[i].role().to_string(), children[i].pid());
            let outcome = children[i]
                .join_timeout(PATIENCE)
                .with_context(|| format!("process `{role}` (pid {pid})"))
                .and_then(|status| {
                    if status.success() {
                        Ok(())
                    } else {
                        bail!("process `{role}` (pid {pid}) ended with {status}")
                    }
                });
            if let Err(e) = outcome {
                // A process that fails because its peer died (the end came too early)
                // may be seen before the peer: name the dead one if there is one.
                let e = match killed_meanwhile(children, &left) {
                    Some(killed) => e.context(format!("{killed}, and then")),
                    None => e,
                };
                stop(children, &left);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Which of the children at `left` have ended (or reported), waiting up to a second.
fn ended(children: &[Child], left: &[usize]) -> anyhow::Result<Vec<usize>> {
    let mut fds = Vec::with_capacity(left.len());
    for &i in left {
        match children[i].exit_fd() {
            Some(fd) => fds.push(PollFd::new(fd, PollFlags::POLLIN)),
            // Joined already: nothing to wait for.
            None => return Ok(vec![i]),
        }
    }
    match poll(&mut fds, PollTimeout::from(1000u16)) {
        Ok(_) | Err(Errno::EINTR) => {}
        Err(e) => bail!("watching the children: {e}"),
    }
    Ok(left
        .iter()
        .zip(&fds)
        .filter(|(_, fd)| fd.revents().is_some_and(|r| !r.is_empty()))
        .map(|(&i, _)| i)
        .collect())
}

/// Whether one of the children at `left` was killed by a signal, within a moment: the
/// error that says so.
fn killed_meanwhile(children: &mut [Child], left: &[usize]) -> Option<String> {
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        for &i in left {
            if let Err(e @ ipckit_core::Error::RoleKilled { .. }) = children[i].try_join() {
                return Some(e.to_string());
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills and reaps the children at `left`, after one of them failed.
fn stop(children: &mut [Child], left: &[usize]) {
    for &i in left {
        let _ = children[i].kill();
        let _ = children[i].join_timeout(PATIENCE);
    }
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

/// A manager process the demo started (`Manager::start`): shut down when dropped, and its
/// socket file removed even when the manager process was killed (it removes the file
/// itself only when it shuts down).
pub(crate) struct OwnManager {
    manager: Option<Manager>,
    path: Option<PathBuf>,
}

impl OwnManager {
    /// Starts a manager process.
    pub(crate) fn start() -> anyhow::Result<OwnManager> {
        let manager = Manager::start()?;
        let path = match manager.address() {
            Address::Unix(path) => Some(path.clone()),
            _ => None,
        };
        Ok(OwnManager {
            manager: Some(manager),
            path,
        })
    }

    /// Shuts the manager down, and checks that it removed its socket file.
    pub(crate) fn shut_down(mut self) -> anyhow::Result<()> {
        self.manager.take();
        match self.path.take() {
            Some(path) if path.exists() => {
                let _ = std::fs::remove_file(&path);
                bail!(
                    "the manager left its socket file {} behind (removed now)",
                    path.display()
                )
            }
            _ => Ok(()),
        }
    }
}

impl Deref for OwnManager {
    type Target = Manager;

    fn deref(&self) -> &Manager {
        // Present until `shut_down` or `drop`, which consume it.
        self.manager.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for OwnManager {
    fn drop(&mut self) {
        self.manager.take();
        if let Some(path) = self.path.take()
            && path.exists()
        {
            let _ = std::fs::remove_file(path);
        }
    }
}
