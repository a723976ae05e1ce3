//! Helpers shared by ipckit's tests, written once.
//!
//! - [`PATIENCE`]: the bound on every wait in a test, so a bug fails the test instead of
//!   hanging CI. It is never a performance target.
//! - [`wait_until`]: polls a condition until it holds, failing after [`PATIENCE`].
//! - [`join_ok`]: joins a child process and fails the test unless it succeeded; a child
//!   killed by a signal fails it too.
//! - [`python`]: the Python interpreter an interop test needs. A missing one fails the test
//!   (it never passes vacuously); set `IPCKIT_SKIP_PYTHON=1` to skip on purpose, which the
//!   test then reports on stderr.
//! - [`set_mq_byte_limit`]: a lower `RLIMIT_MSGQUEUE` for the process.
//! - [`Bounded`]: a non-ipckit process (Python) that is killed if the test ends first.
#![forbid(unsafe_code)]

use std::{
    io,
    ops::RangeInclusive,
    path::{Path, PathBuf},
    process::{Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use ipckit_core::Child;

/// How long any wait in a test may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `cond` every few milliseconds until it holds; panics naming `what` after
/// [`PATIENCE`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Joins `child` within [`PATIENCE`]; panics unless it exited successfully. A panic, an
/// error, a signal (SIGKILL, abort) or a non-zero exit all fail the test, with the reason.
pub fn join_ok(child: &mut Child) {
    match child.join_timeout(PATIENCE) {
        Ok(status) => assert!(status.success(), "{} ended with {status}", child.role()),
        Err(e) => panic!("{} failed: {e}", child.role()),
    }
}

/// Sets this process's `RLIMIT_MSGQUEUE` to `bytes` (lowering is always allowed), so a
/// test meets the message-queue limit without filling the user's real one.
///
/// # Panics
/// If the kernel refuses.
pub fn set_mq_byte_limit(bytes: u64) {
    use nix::sys::resource::{Resource, setrlimit};
    if let Err(e) = setrlimit(Resource::RLIMIT_MSGQUEUE, bytes, bytes) {
        panic!("setrlimit(RLIMIT_MSGQUEUE, {bytes}): {e}");
    }
}

/// Whether the interop tests were told to skip Python (`IPCKIT_SKIP_PYTHON=1`).
fn skipping() -> bool {
    std::env::var_os("IPCKIT_SKIP_PYTHON").is_some_and(|v| v == "1")
}

/// A Python 3 whose minor version is in `minors`: `python3.N` or `python3` on the `PATH`,
/// or one of pyenv's versions. `None` only when `IPCKIT_SKIP_PYTHON=1` (a message says the
/// test is skipped); otherwise a missing Python fails the test.
///
/// # Panics
/// When no such Python is found and skipping was not asked for.
pub fn python(minors: RangeInclusive<u32>) -> Option<PathBuf> {
    if skipping() {
        eprintln!("skipped: IPCKIT_SKIP_PYTHON=1");
        return None;
    }
    match find_python(minors.clone()) {
        Some(py) => Some(py),
        None => panic!(
            "this test needs Python 3.{}..=3.{} (on the PATH or under pyenv) and found none; \
             install it, or set IPCKIT_SKIP_PYTHON=1 to skip the interop tests",
            minors.start(),
            minors.end()
        ),
    }
}

/// A Python 3 whose minor version is in `minors`, if there is one. Each candidate is run
/// to check it: a pyenv shim may exist and just fail.
pub fn find_python(minors: RangeInclusive<u32>) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    let mut names: Vec<String> = minors
        .clone()
        .rev()
        .take(8)
        .map(|m| format!("python3.{m}"))
        .collect();
    names.push("python3".into());
    let mut candidates = Vec::new();
    for name in &names {
        candidates.extend(dirs.iter().map(|d| d.join(name)).filter(|p| p.is_file()));
    }
    let pyenv_root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| {
            dirs.iter()
                .map(|d| d.join("pyenv"))
                .find(|p| p.is_file())
                .and_then(|pyenv| run_bounded(std::process::Command::new(pyenv).arg("root")).ok())
                .filter(|out| out.status.success())
                .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        });
    if let Some(root) = pyenv_root {
        let mut versions: Vec<PathBuf> = std::fs::read_dir(root.join("versions"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                let mut parts = name.split('.');
                parts.next() == Some("3")
                    && parts
                        .next()
                        .and_then(|m| m.parse::<u32>().ok())
                        .is_some_and(|m| minors.contains(&m))
            })
            .map(|e| e.path().join("bin").join("python3"))
            .collect();
        versions.sort();
        candidates.extend(versions);
    }
    let check = format!(
        "import sys; sys.exit(0 if sys.version_info[0] == 3 and {} <= sys.version_info[1] <= {} else 1)",
        minors.start(),
        minors.end()
    );
    candidates.into_iter().find(|py| {
        run_bounded(std::process::Command::new(py).args(["-c", &check]))
            .is_ok_and(|out| out.status.success())
    })
}

/// Runs `cmd` to completion with piped output, killing it after [`PATIENCE`].
///
/// # Errors
/// If the program cannot be started.
pub fn run_bounded(cmd: &mut std::process::Command) -> io::Result<Output> {
    Bounded::start(cmd)?.wait()
}

/// A child process that is not an ipckit role (Python, a shell tool), killed if the test
/// ends before it does.
#[derive(Debug)]
pub struct Bounded(Option<std::process::Child>);

impl Bounded {
    /// Starts `cmd` with stdin closed and stdout/stderr piped.
    ///
    /// # Errors
    /// If the program cannot be started.
    pub fn start(cmd: &mut std::process::Command) -> io::Result<Bounded> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(Bounded(Some(child)))
    }

    /// Starts `python -c script args…`.
    ///
    /// # Errors
    /// If the interpreter cannot be started.
    pub fn python(py: &Path, script: &str, args: &[&str]) -> io::Result<Bounded> {
        Bounded::start(
            std::process::Command::new(py)
                .arg("-c")
                .arg(script)
                .args(args),
        )
    }

    /// The process, for its pid or its pipes.
    pub fn child(&mut self) -> &mut std::process::Child {
        self.0
            .as_mut()
            .expect("a Bounded holds its child until waited")
    }

    /// Waits for the output, killing the process (and failing the test) after
    /// [`PATIENCE`]. The output is read while the process runs, so a chatty process never
    /// blocks on a full pipe.
    ///
    /// # Errors
    /// If waiting fails.
    pub fn wait(self) -> io::Result<Output> {
        self.wait_within(PATIENCE)
    }

    /// As [`wait`](Bounded::wait), with a bound of `limit` instead of [`PATIENCE`] (for
    /// whole programs that run many steps).
    ///
    /// # Errors
    /// If waiting fails.
    pub fn wait_within(mut self, limit: Duration) -> io::Result<Output> {
        let mut child = self.0.take().expect("a Bounded is waited once");
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "a child process did not finish within {limit:?}: {}{}",
                    String::from_utf8_lossy(&stdout.join().unwrap_or_default()),
                    String::from_utf8_lossy(&stderr.join().unwrap_or_default())
                );
            }
            thread::sleep(Duration::from_millis(10));
        };
        Ok(Output {
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        })
    }

    /// Waits as [`wait`](Bounded::wait) and panics unless the process exited with 0,
    /// showing what it printed.
    pub fn wait_ok(self, what: &str) -> Output {
        let out = self.wait().expect("waited");
        assert!(
            out.status.success(),
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

/// Reads a child's pipe to its end in a thread.
fn drain(pipe: Option<impl io::Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut out);
        }
        out
    })
}

impl Drop for Bounded {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
