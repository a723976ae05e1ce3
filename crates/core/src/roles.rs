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
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
    os::unix::process::ExitStatusExt,
    panic::{AssertUnwindSafe, catch_unwind},
    process::{ExitStatus, Stdio},
    sync::{OnceLock, mpsc},
    time::Duration,
};

use nix::{
    sched::{CpuSet, sched_getaffinity, sched_setaffinity},
    sys::socket::{AddressFamily, SockFlag, SockType, socketpair},
    unistd::{Pid, getpid, getppid},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    Connection, Deadline, Error, RecvBytes, Result, SendBytes,
    codec::{Codec, Postcard},
    sys,
};

const ENV: &str = "IPCKIT_ROLE";

/// Set by the first [`enter`]: `Some(test name)` when it ran on a test's thread, `None` on
/// `main`. Unset means `enter` was never called, and spawning would start a copy of the
/// program that spawns again.
static ENTRY: OnceLock<Option<String>> = OnceLock::new();

thread_local! {
    /// Whether [`enter`] ran on this thread: a test that spawns re-runs itself in the
    /// child, so that the child enters with that test's own roles.
    static ENTERED_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The test a child must run to reach [`enter`]: `None` outside a test harness.
fn entry_test(first: &Option<String>) -> Option<String> {
    let here = std::thread::current();
    match here.name() {
        Some(name) if name != "main" && ENTERED_HERE.get() => Some(name.to_string()),
        // Spawned from another thread (a worker of a test, a runtime's thread): the first
        // thread that entered is a test that calls `enter` too.
        _ => first.clone(),
    }
}

/// What a role (or a function started with [`Command::function`]) returns: `Err` is
/// reported to the parent's [`Child::join`] as [`Error::RoleFailed`].
pub type RoleResult<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

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
    /// For [`spawn`]: the function to run, as code offsets (see `sys::code_offset`).
    function: Option<Function>,
    /// Functions passed with [`Command::pass_fn`]: key, type tag, code offset.
    functions: Vec<(String, u64, usize)>,
}

/// A function of this executable, located by code offsets that survive address-space
/// randomisation: the child runs the same file, so the same offsets name the same code.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Function {
    /// `trampoline::<A, R>`, which knows the argument and result types.
    trampoline: usize,
    /// The user's `fn(A) -> R` or `fn(A, &mut Ctx) -> R`.
    target: usize,
}

#[derive(Debug, Serialize, Deserialize)]
enum Outcome {
    Ok,
    Returned(Vec<u8>),
    Failed(String),
    Panicked(String),
}

/// What a running role receives from its parent: its argument and its handles.
#[derive(Debug)]
pub struct Ctx {
    role: String,
    arg: Vec<u8>,
    handles: Vec<(String, Handoff)>,
    functions: Vec<(String, u64, usize)>,
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

    /// The function the parent passed as `key` with [`Command::pass_fn`], as a function
    /// pointer of type `F` (`fn(A) -> R`, `fn()`, …) that this process can call.
    ///
    /// # Errors
    /// [`Error::RoleInput`] if there is no such function, or it is not of type `F`.
    pub fn function<F: FnPtr>(&self, key: &str) -> Result<F> {
        let (_, tag, offset) = self
            .functions
            .iter()
            .find(|(k, _, _)| k == key)
            .ok_or_else(|| Error::RoleInput(format!("function `{key}`")))?;
        if *tag != type_tag::<F>() {
            return Err(Error::RoleInput(format!(
                "function `{key}` is not a {}",
                std::any::type_name::<F>()
            )));
        }
        Ok(sys::fn_at(*offset))
    }
}

/// A function-pointer type that can be passed to a child process with
/// [`Command::pass_fn`]: `fn() -> R`, `fn(A) -> R`, `fn(A, B) -> R`.
pub trait FnPtr: Copy + Send + Sync + 'static + sealed::Sealed {
    /// The function's address.
    #[doc(hidden)]
    fn addr(self) -> usize;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! fn_ptr {
    ($($arg:ident),*) => {
        impl<R: 'static, $($arg: 'static),*> sealed::Sealed for fn($($arg),*) -> R {}
        impl<R: 'static, $($arg: 'static),*> FnPtr for fn($($arg),*) -> R {
            fn addr(self) -> usize {
                self as usize
            }
        }
    };
}

fn_ptr!();
fn_ptr!(A);
fn_ptr!(A, B);

/// A tag of the type `F`, the same in every process running this executable (the type's
/// id, hashed with fixed keys), so that a child checks it asks for a function of the type
/// the parent passed.
fn type_tag<F: 'static>() -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    std::any::TypeId::of::<F>().hash(&mut h);
    h.finish()
}

/// If this process was started as a role by [`Command::spawn`], runs that role and exits;
/// otherwise returns at once.
///
/// Call it first thing in `main`, and first thing in a test that starts roles (the child
/// re-runs the test binary, filtered to that test). The exit code is 0 when the role
/// returned `Ok`, 1 when it returned `Err`, 101 when it panicked; the parent learns which,
/// with the message, from [`Child::join`].
pub fn enter(roles: &[Role]) {
    ENTERED_HERE.set(true);
    ENTRY.get_or_init(|| {
        // In a test binary the test that called `enter` runs on a thread named after it:
        // a child re-runs that test, which calls `enter` first and so runs its role.
        std::thread::current()
            .name()
            .filter(|n| *n != "main")
            .map(str::to_string)
    });
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
        functions: spec.functions,
    };
    let outcome = match (spec.function, roles.iter().find(|r| r.name == ctx.role)) {
        (Some(f), _) => {
            let trampoline = sys::trampoline_at(f.trampoline);
            match catch_unwind(AssertUnwindSafe(|| trampoline(&mut ctx, f.target))) {
                Ok(Ok(bytes)) => Outcome::Returned(bytes),
                Ok(Err(e)) => Outcome::Failed(e.to_string()),
                Err(payload) => Outcome::Panicked(panic_message(&*payload)),
            }
        }
        (None, None) => {
            Outcome::Failed(format!("no role called `{}` in this executable", ctx.role))
        }
        (None, Some(role)) => match catch_unwind(AssertUnwindSafe(|| (role.run)(&mut ctx))) {
            Ok(Ok(())) => Outcome::Ok,
            Ok(Err(e)) => Outcome::Failed(e.to_string()),
            Err(payload) => Outcome::Panicked(panic_message(&*payload)),
        },
    };
    drop(ctx);
    let code = match outcome {
        Outcome::Ok | Outcome::Returned(_) => 0,
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

/// Runs `f(args)` in a child process and gives back its result: Python's
/// `Process(target=f, args=...)` with a return value.
///
/// `f` is a function or a closure that captures nothing; `args` and the result cross as
/// serde values (postcard). The child is a fresh `exec` of this executable, so
/// [`enter`] must run first thing in `main` (and in a test that spawns). To hand ipckit
/// handles to the child too, use [`Command::function`].
///
/// ```no_run
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// fn main() -> Result<(), ipckit_core::Error> {
///     ipckit_core::enter(&[]);
///     let mut child = ipckit_core::spawn(7, square)?;
///     assert_eq!(child.join()?, 49);
///     Ok(())
/// }
/// ```
///
/// # Errors
/// [`Error::EnterMissing`] if [`enter`] was not called (the child would re-run `main`
/// and spawn again); [`Error::Codec`] if `args` cannot be encoded; [`Error::Io`] if the
/// process cannot start.
pub fn spawn<A, R>(args: A, f: fn(A) -> R) -> Result<Child<R>>
where
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    let mut cmd = Command::with_output(std::any::type_name::<fn(A) -> R>(), decode_result::<R>);
    cmd.function = Some(Function {
        trampoline: sys::code_offset(trampoline::<A, R> as Trampoline as usize),
        target: sys::code_offset(f as usize),
    });
    cmd.arg(&args)?.spawn()
}

/// What runs in the child for [`spawn`] and [`Command::function`]: decodes the argument,
/// calls the function found at `target`, encodes its result.
pub(crate) type Trampoline =
    fn(&mut Ctx, usize) -> std::result::Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>>;

fn trampoline<A: DeserializeOwned, R: Serialize>(
    ctx: &mut Ctx,
    target: usize,
) -> std::result::Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
    let f: fn(A) -> R = sys::fn_at(target);
    let result = f(ctx.arg()?);
    let mut out = Vec::new();
    Postcard.encode(&result, &mut out)?;
    Ok(out)
}

fn trampoline_ctx<A: DeserializeOwned, R: Serialize>(
    ctx: &mut Ctx,
    target: usize,
) -> std::result::Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
    let f: fn(A, &mut Ctx) -> RoleResult<R> = sys::fn_at(target);
    let args = ctx.arg()?;
    let result = f(args, ctx)?;
    let mut out = Vec::new();
    Postcard.encode(&result, &mut out)?;
    Ok(out)
}

fn decode_result<R: DeserializeOwned>(_: ExitStatus, returned: Option<Vec<u8>>) -> Result<R> {
    match returned {
        Some(bytes) => Postcard.decode(&bytes),
        None => Err(Error::RoleFailed {
            role: std::any::type_name::<R>().to_string(),
            message: "the child ended without returning a result".into(),
        }),
    }
}

fn exit_status(status: ExitStatus, _: Option<Vec<u8>>) -> Result<ExitStatus> {
    Ok(status)
}

/// Starts a role of the current executable in a child process (or, made with
/// [`Command::function`], a function with handles).
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
pub struct Command<R = ExitStatus> {
    role: String,
    arg: Vec<u8>,
    handles: Vec<(String, Handoff)>,
    functions: Vec<(String, u64, usize)>,
    stdout: Option<Stdio>,
    env: Vec<(String, String)>,
    function: Option<Function>,
    output: fn(ExitStatus, Option<Vec<u8>>) -> Result<R>,
}

impl Command {
    /// A command that will run role `role`; joining it gives the exit status.
    pub fn new(role: &str) -> Self {
        Command::with_output(role, exit_status)
    }
}

impl<R: Serialize + DeserializeOwned> Command<R> {
    /// A command that will run `f(args, ctx)` in the child, where `ctx` holds the handles
    /// given with [`handle`](Command::handle); joining it gives `f`'s `Ok` value, and its
    /// `Err` as [`Error::RoleFailed`] with the error's text (so `?` works inside `f` on
    /// any error).
    ///
    /// ```no_run
    /// use ipckit_core::{Command, Connection, Ctx, SendBytes};
    ///
    /// fn greet(name: String, ctx: &mut Ctx) -> ipckit_core::RoleResult<usize> {
    ///     let mut out = ctx.handle::<Connection>("out")?;
    ///     out.send_bytes(format!("hello, {name}").as_bytes())?;
    ///     Ok(name.len())
    /// }
    ///
    /// fn main() -> Result<(), ipckit_core::Error> {
    ///     ipckit_core::enter(&[]);
    ///     let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    ///     let theirs = Connection::from_fd(theirs.into())?;
    ///     let mut child = Command::function(&"world".to_string(), greet)?
    ///         .handle("out", theirs)
    ///         .spawn()?;
    ///     assert_eq!(child.join()?, 5);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    /// [`Error::Codec`] if `args` cannot be encoded.
    pub fn function<A>(args: &A, f: fn(A, &mut Ctx) -> RoleResult<R>) -> Result<Self>
    where
        A: Serialize + DeserializeOwned,
    {
        let mut cmd = Command::with_output(
            std::any::type_name::<fn(A, &mut Ctx) -> RoleResult<R>>(),
            decode_result::<R>,
        );
        cmd.function = Some(Function {
            trampoline: sys::code_offset(trampoline_ctx::<A, R> as Trampoline as usize),
            target: sys::code_offset(f as usize),
        });
        cmd.arg(args)
    }
}

impl<R> Command<R> {
    fn with_output(role: &str, output: fn(ExitStatus, Option<Vec<u8>>) -> Result<R>) -> Self {
        Command {
            role: role.to_string(),
            arg: Vec::new(),
            handles: Vec::new(),
            functions: Vec::new(),
            stdout: None,
            env: Vec::new(),
            function: None,
            output,
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

    /// Passes the function `f` to the child under `key`, read there with
    /// [`Ctx::function`]: a worker loop that runs a user's function per task, an
    /// initializer. The child gets a pointer to the same function of the same executable.
    #[must_use]
    pub fn pass_fn<F: FnPtr>(mut self, key: &str, f: F) -> Self {
        self.functions
            .push((key.to_string(), type_tag::<F>(), sys::code_offset(f.addr())));
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

    /// Starts the child. It is killed if this process dies (whichever thread spawned it),
    /// and when its [`Child`] is dropped without being joined.
    ///
    /// # Errors
    /// [`Error::EnterMissing`] if [`enter`] was never called in this process (the child
    /// would re-run `main` and spawn again, without end); [`Error::Io`] if the executable
    /// cannot be found or started.
    pub fn spawn(self) -> Result<Child<R>> {
        let Some(entry) = ENTRY.get() else {
            return Err(Error::EnterMissing);
        };
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
        // In a test binary, run only a test that calls `enter`: it runs the role.
        if let Some(test) = entry_test(entry) {
            cmd.args([
                test.as_str(),
                "--exact",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ]);
        }
        cmd.env(ENV, format!("{}:{}", getpid().as_raw(), theirs.as_raw_fd()));
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(out) = self.stdout {
            cmd.stdout(out);
        }
        sys::prepare_child(&mut cmd, keep, getpid());
        let child = spawn_from_lasting_thread(cmd)?;
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
                function: self.function,
                functions: self.functions,
            },
            &mut buf,
        )?;
        let mut child = Child {
            role: self.role,
            child,
            control: None,
            status: None,
            report: None,
            output: self.output,
        };
        match control.send_bytes(&buf) {
            Ok(()) | Err(Error::Disconnected) => {}
            Err(e) => return Err(e),
        }
        child.control = Some(control);
        Ok(child)
    }
}

/// A running child started by [`Command::spawn`] or [`spawn`]: joining it gives `R`, the
/// exit status of a role or the result of a function.
#[derive(Debug)]
pub struct Child<R = ExitStatus> {
    role: String,
    child: std::process::Child,
    control: Option<Connection>,
    status: Option<ExitStatus>,
    /// What the child reported: its outcome, once read from the control channel.
    report: Option<Outcome>,
    output: fn(ExitStatus, Option<Vec<u8>>) -> Result<R>,
}

impl<R> Child<R> {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The role this child runs (for a function, its signature).
    pub fn role(&self) -> &str {
        &self.role
    }

    /// A descriptor that becomes readable when the child ends (or is about to: it has
    /// reported its outcome), for `poll(2)` beside the descriptors of other channels, so
    /// that a parent waiting for messages learns at once that a child died. `None` once
    /// joined.
    pub fn exit_fd(&self) -> Option<BorrowedFd<'_>> {
        self.control.as_ref().map(|c| c.as_fd())
    }

    /// Waits for the child to end and gives what it produced: the exit status of a role,
    /// the result of a function.
    ///
    /// # Errors
    /// [`Error::RoleKilled`] with the signal if a signal ended the child (SIGKILL, abort),
    /// [`Error::RolePanicked`] with the panic message if it panicked,
    /// [`Error::RoleFailed`] with the error if a role returned one (or a function ended
    /// without a result).
    pub fn join(&mut self) -> Result<R> {
        self.join_deadline(Deadline::Never)
    }

    /// As [`join`](Child::join), waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if the child is still running (it keeps running; join again or
    /// [`kill`](Child::kill) it), otherwise as [`join`](Child::join).
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<R> {
        self.join_deadline(Deadline::after(timeout))
    }

    /// Joins the child if it has ended, without waiting: `Ok(None)` while it runs.
    ///
    /// # Errors
    /// As [`join`](Child::join).
    pub fn try_join(&mut self) -> Result<Option<R>> {
        if self.status.is_none() && self.child.try_wait()?.is_none() {
            return Ok(None);
        }
        self.join().map(Some)
    }

    fn join_deadline(&mut self, deadline: Deadline) -> Result<R> {
        if let Some(control) = self.control.as_mut() {
            let mut buf = Vec::new();
            match control.recv_bytes_into_deadline(&mut buf, deadline) {
                Ok(()) => self.report = Some(Postcard.decode(&buf)?),
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
        match &self.report {
            None | Some(Outcome::Ok) => match status.signal() {
                Some(signal) => Err(Error::RoleKilled {
                    role: self.role.clone(),
                    pid: self.child.id(),
                    signal,
                }),
                None => (self.output)(status, None),
            },
            Some(Outcome::Returned(bytes)) => (self.output)(status, Some(bytes.clone())),
            Some(Outcome::Failed(message)) => Err(Error::RoleFailed {
                role: self.role.clone(),
                message: message.clone(),
            }),
            Some(Outcome::Panicked(message)) => Err(Error::RolePanicked {
                role: self.role.clone(),
                message: message.clone(),
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

/// Starts `cmd` from a thread that lives as long as the process.
///
/// A child asks the kernel to kill it when its parent dies (`PR_SET_PDEATHSIG`), but the
/// kernel means the *thread* that forked it: a child spawned from a short-lived thread
/// would die with that thread. Forking from one lasting thread keeps the promise "a child
/// never outlives its parent process, and lives as long as it".
///
/// A forked child runs on the CPUs its forking thread may run on: the lasting thread
/// takes on the calling thread's CPUs before it forks, so the child gets what the caller
/// would have given it, not what the lasting thread was left with.
fn spawn_from_lasting_thread(cmd: std::process::Command) -> std::io::Result<std::process::Child> {
    type Job = (
        std::process::Command,
        Option<CpuSet>,
        mpsc::Sender<std::io::Result<std::process::Child>>,
    );
    static SPAWNER: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("ipckit-spawner".into())
            .spawn(move || {
                for (mut cmd, cpus, reply) in rx {
                    if let Some(cpus) = cpus {
                        let _ = sched_setaffinity(Pid::from_raw(0), &cpus);
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .ok()
            .map(|_| tx)
    });
    let Some(spawner) = spawner else {
        return Err(std::io::Error::other("the spawner thread could not start"));
    };
    let (reply, answer) = mpsc::channel();
    let cpus = sched_getaffinity(Pid::from_raw(0)).ok();
    spawner
        .send((cmd, cpus, reply))
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
}

impl<R> Drop for Child<R> {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
