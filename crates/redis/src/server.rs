//! A private `redis-server` for tests, demos and benchmarks.

use std::{
    fmt, fs,
    io::{self, BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use ipckit_core::{Error, Result};

/// How long a fresh server may take to answer.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// A shell that runs the server and cleans up after it. It prints the server's pid; each
/// line read from standard input restarts the server (SIGKILL, then start again on the
/// same port and directory); end of input — this process dropped the handle or died —
/// kills the server and removes its directory. So a test killed mid-way leaves nothing.
const KEEPER: &str = r#"
trap '' INT TERM HUP
dir=$1; shift
start() { redis-server "$@" </dev/null >>"$dir/server.log" 2>&1 & p=$!; echo "$p"; }
start "$@"
while read -r _; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; start "$@"; done
kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null
rm -rf "$dir"
"#;

/// A private `redis-server` on a free port of 127.0.0.1, with its data in a fresh
/// temporary directory; dropping it stops the server and removes the directory.
///
/// Create one with [`RedisServer::start`]; hand its [`url`](RedisServer::url) to
/// [`RedisQueue`](crate::RedisQueue) and to child processes. The server appends every
/// write to its append-only file before it answers (`appendonly yes`), so
/// [`restart`](RedisServer::restart) — a SIGKILL and a start on the same port and
/// directory — loses nothing a caller was told was written. The file is fsynced every
/// second (`appendfsync everysec`): a crash of the whole machine may lose that second
/// (`appendfsync always` on a production broker closes it, at a cost per write).
///
/// The server is watched by a small shell that holds a pipe from this process: if this
/// process dies (even by SIGKILL), the shell stops the server and removes the directory.
pub struct RedisServer {
    keeper: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pid: i32,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts `redis-server` (found on `PATH`) and waits until it answers.
    ///
    /// # Errors
    /// [`Error::Os`] naming `redis-server` when it is not installed or cannot start
    /// (install the Debian package `redis-server`), or when it does not answer within 20 s.
    pub fn start() -> Result<RedisServer> {
        let version = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match version {
            Ok(s) if s.success() => {}
            Ok(s) => {
                return Err(Error::os(
                    "run",
                    "Redis server",
                    "redis-server --version",
                    io::Error::other(format!("exited with {s}")),
                ));
            }
            Err(e) => {
                return Err(Error::os(
                    "run",
                    "Redis server (install the package redis-server)",
                    "redis-server",
                    e,
                ));
            }
        }
        let dir = ipckit_core::temp_path("redis");
        fs::create_dir(&dir).map_err(|e| Error::os("create", "directory", dir.display(), e))?;
        let mut last = None;
        for _ in 0..5 {
            match Self::start_in(&dir) {
                Ok(server) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        let _ = fs::remove_dir_all(&dir);
        Err(last.unwrap_or_else(|| {
            Error::os(
                "start",
                "Redis server",
                "redis-server",
                io::ErrorKind::Other,
            )
        }))
    }

    fn start_in(dir: &Path) -> Result<RedisServer> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| Error::os("bind", "TCP port", "127.0.0.1:0", e))?
            .port();
        let mut keeper = Command::new("sh")
            .arg("-c")
            .arg(KEEPER)
            .arg("ipckit-redis-keeper")
            .arg(dir)
            .args(server_args(port, dir))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Its own process group: a signal to this process's group (a terminal's ^C, a
            // timeout) leaves it to clean up when this process is gone.
            .process_group(0)
            .spawn()
            .map_err(|e| Error::os("run", "shell", "sh", e))?;
        let (Some(stdin), Some(stdout)) = (keeper.stdin.take(), keeper.stdout.take()) else {
            let _ = keeper.kill();
            let _ = keeper.wait();
            return Err(Error::os(
                "run",
                "shell",
                "sh",
                io::Error::other("no pipes to the shell"),
            ));
        };
        let mut server = RedisServer {
            keeper,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
            pid: 0,
            port,
            dir: dir.to_path_buf(),
        };
        server.pid = server.read_pid()?;
        server.wait_ready()?;
        Ok(server)
    }

    fn read_pid(&mut self) -> Result<i32> {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| Error::os("read", "Redis server pid", "sh", e))?;
        line.trim().parse().map_err(|_| {
            Error::os(
                "start",
                "Redis server",
                "redis-server",
                io::Error::other(format!("the shell said {line:?} instead of a pid")),
            )
        })
    }

    fn wait_ready(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut reply = [0u8; 7];
                if s.write_all(b"PING\r\n").is_ok()
                    && io::Read::read_exact(&mut s, &mut reply).is_ok()
                    && &reply == b"+PONG\r\n"
                {
                    return Ok(());
                }
            }
            if !ipckit_core::is_alive(self.pid) || start.elapsed() > READY_WITHIN {
                let log = fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                return Err(Error::os(
                    "start",
                    "Redis server",
                    format!("127.0.0.1:{}", self.port),
                    io::Error::other(format!(
                        "it does not answer; its log: {}",
                        log.lines().last().unwrap_or("(empty)")
                    )),
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's URL, `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The directory holding the server's files (removed when the server is dropped).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the server with SIGKILL and leaves it down until [`restart`](Self::restart):
    /// what a crash of the broker looks like to clients.
    ///
    /// # Errors
    /// [`Error::Io`] if the signal cannot be sent.
    pub fn kill(&mut self) -> Result<()> {
        match nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        ) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Kills the server (if it runs) and starts it again on the same port and directory:
    /// it reloads what it had written. Waits until it answers.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn restart(&mut self) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| Error::os("restart", "Redis server", "sh", io::ErrorKind::BrokenPipe))?;
        stdin
            .write_all(b"restart\n")
            .and_then(|()| stdin.flush())
            .map_err(|e| Error::os("restart", "Redis server", "sh", e))?;
        self.pid = self.read_pid()?;
        self.wait_ready()
    }
}

fn server_args(port: u16, dir: &Path) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--dir",
        &dir.display().to_string(),
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--daemonize",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // End of input: the shell kills the server and removes the directory.
        drop(self.stdin.take());
        let start = Instant::now();
        while start.elapsed() < READY_WITHIN {
            match self.keeper.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => thread::sleep(Duration::from_millis(5)),
            }
        }
        let _ = self.keeper.kill();
        let _ = self.keeper.wait();
        let _ = self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("url", &self.url())
            .field("pid", &self.pid)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}
