//! Process roles: start a child process that runs a named role of the same executable.
//!
//! This is Python's "spawn" start method done the Rust way: the child is a fresh `exec` of
//! the current executable (no `fork` of a running, multi-threaded program), told through
//! its environment which role to run. [`enter`] at the start of `main` (and of any test that
//! starts roles) runs the role and exits when the process is such a child, and returns at
//! once otherwise.

use std::{
    any::Any,
    fmt,
    os::fd::{AsRawFd, OwnedFd, RawFd},
    os::unix::process::ExitStatusExt,
    panic::{AssertUnwindSafe, catch_unwind},
    process::{ExitStatus, Stdio},
    time::Duration,
};

use nix::{
    sys::socket::{AddressFamily, SockFlag, SockType, socketpair},
    unistd::{getpid, getppid},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    Connection, Deadline, Error, RecvBytes, Result, SendBytes,
    codec::{Codec, Postcard},
    sys,
};

const ENV: &str = "IPCKIT_ROLE";

/// What a role returns: `Err` is reported to the parent's [`Child::join`].
pub type RoleResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A named entry point that a child process can run. See [`enter`].
#[derive(Clone, Copy)]
pub struct Role {
    name: &'static str,
    run: fn(&mut Ctx) -> RoleResult,
}

impl Role {
    /// A role called `name` that runs `run`.
    pub const fn new(name: &'static str, run: fn(&mut Ctx) -> RoleResult) -> Self {
        Role { name, run }
    }

    /// The role's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl fmt::Debug for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Role").field(&self.name).finish()
    }
}

/// How a handle travels to a child process.
#[derive(Debug)]
pub enum Handoff {
    /// As an inherited descriptor (anonymous pipes, memfd segments, sockets).
    Fd(OwnedFd),
    /// By name (named segments, FIFOs, named queues): the child opens it.
    Name(String),
}

/// An ipckit handle that can be handed to a child process through [`Command::handle`].
pub trait Handle: Sized {
    /// Turns the handle into what travels to the child.
    fn into_handoff(self) -> Handoff;

    /// Rebuilds the handle in the child.
    ///
    /// # Errors
    /// [`Error::RoleInput`] if the handoff is of the wrong kind, or whatever reopening fails with.
    fn from_handoff(h: Handoff) -> Result<Self>;
}

#[derive(Serialize, Deserialize)]
enum Wire {
    Fd(RawFd),
    Name(String),
}

#[derive(Serialize, Deserialize)]
struct Spec {
    role: String,
    arg: Vec<u8>,
    handles: Vec<(String, Wire)>,
}

#[derive(Serialize, Deserialize)]
enum Outcome {
    Ok,
    Failed(String),
    Panicked(String),
}

/// What a running role receives from its parent: its argument and its handles.
#[derive(Debug)]
pub struct Ctx {
    role: String,
    arg: Vec<u8>,
    handles: Vec<(String, Handoff)>,
}

impl Ctx {
    /// The name of the role being run.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// The argument the parent gave with [`Command::arg`].
    ///
    /// # Errors
    /// [`Error::RoleInput`] if there is none or it does not decode as `T`.
    pub fn arg<T: DeserializeOwned>(&self) -> Result<T> {
        Postcard
            .decode(&self.arg)
            .map_err(|e| Error::RoleInput(format!("argument: {e}")))
    }

    /// Takes the handle the parent passed as `key` with [`Command::handle`].
    ///
    /// # Errors
    /// [`Error::RoleInput`] if there is no such handle (or it was taken already).
    pub fn handle<H: Handle>(&mut self, key: &str) -> Result<H> {
        let i = self
            .handles
            .iter()
            .position(|(k, _)| k == key)
            .ok_or_else(|| Error::RoleInput(format!("handle `{key}`")))?;
        H::from_handoff(self.handles.swap_remove(i).1)
    }
}

/// If this process was started as a role by [`Command::spawn`], runs that role and exits;
/// otherwise returns at once.
///
/// Call it first thing in `main`, and first thing in a test that starts roles (the child
/// re-runs the test binary, filtered to that test). The exit code is 0 when the role
/// returned `Ok`, 1 when it returned `Err`, 101 when it panicked; the parent learns which,
/// with the message, from [`Child::join`].
pub fn enter(roles: &[Role]) {
    let Some(fd) = control_fd() else { return };
    let mut control = match Connection::from_fd(fd) {
        Ok(c) => c,
        Err(e) => exit_with(2, &format!("ipckit role: bad control descriptor: {e}")),
    };
    let spec: Spec = match control.recv_bytes().and_then(|b| Postcard.decode(&b)) {
        Ok(s) => s,
        Err(e) => exit_with(2, &format!("ipckit role: no role from the parent: {e}")),
    };
    let handles = spec
        .handles
        .into_iter()
        .map(|(k, w)| {
            let h = match w {
                Wire::Fd(raw) => Handoff::Fd(sys::inherited_fd(raw)),
                Wire::Name(n) => Handoff::Name(n),
            };
            (k, h)
        })
        .collect();
    let mut ctx = Ctx {
        role: spec.role,
        arg: spec.arg,
        handles,
    };
    let outcome = match roles.iter().find(|r| r.name == ctx.role) {
        None => Outcome::Failed(format!("no role called `{}` in this executable", ctx.role)),
        Some(role) => match catch_unwind(AssertUnwindSafe(|| (role.run)(&mut ctx))) {
            Ok(Ok(())) => Outcome::Ok,
            Ok(Err(e)) => Outcome::Failed(e.to_string()),
            Err(payload) => Outcome::Panicked(panic_message(&*payload)),
        },
    };
    drop(ctx);
    let code = match outcome {
        Outcome::Ok => 0,
        Outcome::Failed(_) => 1,
        Outcome::Panicked(_) => 101,
    };
    let mut buf = Vec::new();
    if Postcard.encode(&outcome, &mut buf).is_ok() {
        // The parent may be gone; then there is nobody to tell.
        let _ = control.send_bytes(&buf);
    }
    std::process::exit(code);
}

/// The control descriptor, if this process is a role child of its parent.
fn control_fd() -> Option<OwnedFd> {
    let value = std::env::var(ENV).ok()?;
    let (ppid, fd) = value.split_once(':')?;
    // A grandchild inherits the variable; only the direct child of the spawner obeys it.
    if ppid.parse::<i32>().ok()? != getppid().as_raw() {
        return None;
    }
    let fd: RawFd = fd.parse().ok()?;
    Some(sys::inherited_fd(fd))
}

fn exit_with(code: i32, msg: &str) -> ! {
    eprintln!("{msg}");
    std::process::exit(code)
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

/// Starts a role of the current executable in a child process.
///
/// ```no_run
/// use ipckit_core::{enter, Command, Ctx, Role, RoleResult};
///
/// fn greeter(ctx: &mut Ctx) -> RoleResult {
///     let name: String = ctx.arg()?;
///     println!("hello, {name}");
///     Ok(())
/// }
///
/// const ROLES: &[Role] = &[Role::new("greeter", greeter)];
///
/// fn main() -> Result<(), ipckit_core::Error> {
///     enter(ROLES);
///     let mut child = Command::new("greeter").arg(&"world")?.spawn()?;
///     assert!(child.join()?.success());
///     Ok(())
/// }
/// ```
#[derive(Debug)]
pub struct Command {
    role: String,
    arg: Vec<u8>,
    handles: Vec<(String, Handoff)>,
    stdout: Option<Stdio>,
    env: Vec<(String, String)>,
}

impl Command {
    /// A command that will run role `role`.
    pub fn new(role: &str) -> Self {
        Command {
            role: role.to_string(),
            arg: Vec::new(),
            handles: Vec::new(),
            stdout: None,
            env: Vec::new(),
        }
    }

    /// Gives the role an argument, read with [`Ctx::arg`].
    ///
    /// # Errors
    /// [`Error::Codec`] if `value` cannot be encoded.
    pub fn arg<T: Serialize + ?Sized>(mut self, value: &T) -> Result<Self> {
        self.arg.clear();
        Postcard.encode(value, &mut self.arg)?;
        Ok(self)
    }

    /// Hands `handle` to the child under `key`, read with [`Ctx::handle`]. A descriptor
    /// handle is closed in this process once the child has started.
    #[must_use]
    pub fn handle(mut self, key: &str, handle: impl Handle) -> Self {
        self.handles.push((key.to_string(), handle.into_handoff()));
        self
    }

    /// Discards the child's standard output.
    #[must_use]
    pub fn quiet(mut self) -> Self {
        self.stdout = Some(Stdio::null());
        self
    }

    /// Sets an environment variable for the child.
    #[must_use]
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Starts the child. It is killed if this process dies, and when its [`Child`] is
    /// dropped without being joined.
    ///
    /// # Errors
    /// [`Error::Io`] if the executable cannot be found or started.
    pub fn spawn(self) -> Result<Child> {
        let (mine, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let mut keep: Vec<RawFd> = vec![theirs.as_raw_fd()];
        let mut wire = Vec::with_capacity(self.handles.len());
        for (key, h) in &self.handles {
            match h {
                Handoff::Fd(fd) => {
                    keep.push(fd.as_raw_fd());
                    wire.push((key.clone(), Wire::Fd(fd.as_raw_fd())));
                }
                Handoff::Name(n) => wire.push((key.clone(), Wire::Name(n.clone()))),
            }
        }
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        // In a test binary, run only the test that is starting this role.
        if let Some(test) = std::thread::current().name().filter(|n| *n != "main") {
            cmd.args([test, "--exact", "--nocapture", "--test-threads=1", "-q"]);
        }
        cmd.env(ENV, format!("{}:{}", getpid().as_raw(), theirs.as_raw_fd()));
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(out) = self.stdout {
            cmd.stdout(out);
        }
        sys::prepare_child(&mut cmd, keep, getpid());
        let child = cmd.spawn()?;
        // The child holds its own copies now.
        drop(theirs);
        drop(self.handles);
        tracing::debug!(role = %self.role, pid = child.id(), "spawned role");
        let mut control = Connection::from_fd(mine)?;
        let mut buf = Vec::new();
        Postcard.encode(
            &Spec {
                role: self.role.clone(),
                arg: self.arg,
                handles: wire,
            },
            &mut buf,
        )?;
        let mut child = Child {
            role: self.role,
            child,
            control: None,
            status: None,
        };
        match control.send_bytes(&buf) {
            Ok(()) | Err(Error::Disconnected) => {}
            Err(e) => return Err(e),
        }
        child.control = Some(control);
        Ok(child)
    }
}

/// A running role started by [`Command::spawn`].
#[derive(Debug)]
pub struct Child {
    role: String,
    child: std::process::Child,
    control: Option<Connection>,
    status: Option<ExitStatus>,
}

impl Child {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The role this child runs.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// Waits for the child to end and gives its exit status.
    ///
    /// # Errors
    /// [`Error::RoleKilled`] with the signal if a signal ended the child (SIGKILL, abort),
    /// [`Error::RolePanicked`] with the panic message if the role panicked,
    /// [`Error::RoleFailed`] with the error if it returned one.
    pub fn join(&mut self) -> Result<ExitStatus> {
        self.join_deadline(Deadline::Never)
    }

    /// As [`join`](Child::join), waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if the child is still running (it keeps running; join again or
    /// [`kill`](Child::kill) it), otherwise as [`join`](Child::join).
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.join_deadline(Deadline::after(timeout))
    }

    fn join_deadline(&mut self, deadline: Deadline) -> Result<ExitStatus> {
        let mut outcome = Outcome::Ok;
        if let Some(control) = self.control.as_mut() {
            let mut buf = Vec::new();
            match control.recv_bytes_into_deadline(&mut buf, deadline) {
                Ok(()) => outcome = Postcard.decode(&buf)?,
                // Ended without a report: killed, or exited from inside the role.
                Err(Error::Disconnected) => {}
                Err(e) => return Err(e),
            }
            self.control = None;
        }
        let status = match self.status {
            Some(s) => s,
            None => {
                let s = self.child.wait()?;
                tracing::debug!(role = %self.role, pid = self.child.id(), %s, "role ended");
                self.status = Some(s);
                s
            }
        };
        match outcome {
            Outcome::Ok => match status.signal() {
                Some(signal) => Err(Error::RoleKilled {
                    role: self.role.clone(),
                    pid: self.child.id(),
                    signal,
                }),
                None => Ok(status),
            },
            Outcome::Failed(message) => Err(Error::RoleFailed {
                role: self.role.clone(),
                message,
            }),
            Outcome::Panicked(message) => Err(Error::RolePanicked {
                role: self.role.clone(),
                message,
            }),
        }
    }

    /// Kills the child with SIGKILL (it cannot clean up; that is what crash tests want).
    ///
    /// # Errors
    /// [`Error::Io`] if the signal cannot be sent.
    pub fn kill(&mut self) -> Result<()> {
        if self.status.is_none() {
            self.child.kill()?;
        }
        Ok(())
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
