//! POSIX message queues (`mq_open(3)`), with the guarantees of the shared-memory queue:
//! whole messages in order, timeouts on every wait, and `Disconnected` instead of a hang
//! when every sender is gone, dropped or killed.
//!
//! A [`MessageQueue`] is a kernel queue under a name such as `/ipckit-mq-<pid>-<seq>-<salt>`
//! (mode 0600, close-on-exec), plus a small companion segment in `/dev/shm` with the same
//! suffix (`ipckit-shm-<pid>-<seq>-<salt>`) holding the table of processes that hold
//! senders. POSIX queues know nothing of their peers: the
//! table is what lets a waiting receiver notice that every sender is gone. The creator owns
//! both names and removes them when its last handle is dropped (the queue itself lives on
//! while another process has it open).
//!
//! Handles split as for the shared-memory queue: [`MessageQueue::sender`] gives an
//! [`MqSender`] (counted as a producer), [`MessageQueue::receiver`] an [`MqReceiver`].
//! All three pass to a child process by name (`ipckit_core::Command::handle`).
//!
//! Waits are made of slices of at most 50 ms (`poll(2)` on the queue descriptor, which is
//! a file descriptor on Linux): between slices a sender checks whether the queue was
//! closed, and a receiver whether anything more can come. Messages all have priority 0,
//! so they come out in the order they went in.
//!
//! # Kernel limits (Linux)
//!
//! The kernel bounds POSIX queues with these knobs; [`MqLimits::read`] reads them, and
//! [`MessageQueue::create`] turns a refusal into an error that names the limit, its value,
//! and what to do (for example `max_messages 64 exceeds /proc/sys/fs/mqueue/msg_max = 10
//! (raise it or ask for fewer)`).
//!
//! | Limit | Default | Bounds | Applies to | Refusal |
//! |---|---|---|---|---|
//! | `/proc/sys/fs/mqueue/msg_max` | 10 | [`MqOptions::max_messages`] | unprivileged processes; with `CAP_SYS_RESOURCE` (root) the bound is the kernel's hard limit of 65 536 ([`HARD_MSG_MAX`]) | `EINVAL` |
//! | `/proc/sys/fs/mqueue/msgsize_max` | 8192 | [`MqOptions::max_message`] | unprivileged processes; with `CAP_SYS_RESOURCE` the bound is 16 MiB ([`HARD_MSGSIZE_MAX`]) | `EINVAL` |
//! | `/proc/sys/fs/mqueue/queues_max` | 256 | queues in the IPC namespace | unprivileged processes | `ENOSPC` |
//! | `RLIMIT_MSGQUEUE` (`ulimit -q`) | 819 200 bytes | the sum, over every queue of the same user, of `max_messages × (max_message + 96)` | **everyone, root included**; checked against the creating process's soft limit, whose hard limit only `CAP_SYS_RESOURCE` raises | `EMFILE` |
//! | `RLIMIT_NOFILE` (`ulimit -n`) | 1024 | descriptors: one per process-local set of handles | everyone | `EMFILE` |
//!
//! `/proc/sys/fs/mqueue/msg_default` and `msgsize_default` (10 and 8192) apply only to
//! queues created without attributes; ipckit always gives them. The limits are those of the
//! caller's IPC namespace. So an unprivileged process gets at most 10 messages of 8 KiB per
//! queue and about 800 KB of queues in all, unless an administrator raises the sysctls
//! and `ulimit -q`. A 16 MiB message needs `msgsize_max` raised to 16 MiB (or
//! `CAP_SYS_RESOURCE`) *and* an `RLIMIT_MSGQUEUE` above 16 MiB, which only a process with
//! `CAP_SYS_RESOURCE` (or the login configuration, e.g. `limits.conf`) can grant: root in a
//! container that drops `CAP_SYS_RESOURCE` is as limited as anyone.
//!
//! Queues live in the kernel, not in a file system: `/dev/mqueue` (if mounted,
//! `mount -t mqueue none /dev/mqueue`) only lists them, and ipckit does not need it.
//! Message memory is allocated by the kernel when a message is sent and freed when it is
//! received.

use std::{fmt, io, os::fd::AsFd, sync::Arc, time::Duration};

use crate::senders::Senders;
use ipckit_core::{Deadline, Error, Handle, Handoff, NAME_PREFIX, RecvBytes, Result, SendBytes};
use ipckit_shmem::Shared;
use nix::{
    errno::Errno,
    mqueue::{MQ_OFlag, MqAttr, MqdT, mq_attr_member_t, mq_close, mq_getattr, mq_open},
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::stat::Mode,
};

/// The longest slice of a wait: how late a waiter learns that the queue was closed or
/// that every sender is gone.
const CHECK_EVERY: Duration = Duration::from_millis(50);
/// The kernel's bound on `max_messages` for a process with `CAP_SYS_RESOURCE` (Linux ≥ 3.5).
pub const HARD_MSG_MAX: usize = 65_536;
/// The kernel's bound on `max_message` for a process with `CAP_SYS_RESOURCE` (Linux ≥ 3.5).
pub const HARD_MSGSIZE_MAX: usize = 16 << 20;
/// Kernel bookkeeping counted against `RLIMIT_MSGQUEUE` on 64-bit Linux: a `struct msg_msg`
/// per message, and a priority-tree node per message up to `MQ_PRIO_MAX` of them.
const MSG_HEADER: u64 = 48;
const TREE_NODE: u64 = 48;
const MQ_PRIO_MAX: u64 = 32_768;
const MQ_KIND: &str = "mq-";
const PEERS_KIND: &str = "shm-";
const SYSCTL: &str = "/proc/sys/fs/mqueue";

/// The companion table: closed, and the processes holding senders.
type Peers = Senders;

/// How a message queue is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MqOptions {
    /// The most messages it holds (`mq_maxmsg`).
    pub max_messages: usize,
    /// The largest message, in bytes (`mq_msgsize`).
    pub max_message: usize,
}

impl Default for MqOptions {
    /// 10 messages of up to 8 KiB: the most an unprivileged process may ask for under
    /// Linux's default limits.
    fn default() -> Self {
        MqOptions {
            max_messages: 10,
            max_message: 8192,
        }
    }
}

impl MqOptions {
    /// Options for `max_messages` messages of up to the default 8 KiB.
    pub fn with_capacity(max_messages: usize) -> Self {
        MqOptions {
            max_messages,
            ..Self::default()
        }
    }

    /// Sets the largest message.
    #[must_use]
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// How many bytes of `RLIMIT_MSGQUEUE` a queue of this size takes (as Linux counts
    /// them on 64-bit machines): `max_messages × (max_message + 48) + min(max_messages,
    /// 32768) × 48`.
    pub fn accounted_bytes(&self) -> u64 {
        let n = self.max_messages as u64;
        n.saturating_mul((self.max_message as u64).saturating_add(MSG_HEADER))
            .saturating_add(n.min(MQ_PRIO_MAX).saturating_mul(TREE_NODE))
    }
}

/// The kernel's limits on POSIX message queues, as this process sees them. `None` where a
/// limit could not be read, or (for `rlimit_bytes`) is unlimited.
///
/// | Limit | Default | Bounds | Applies to | Refusal |
/// |---|---|---|---|---|
/// | `/proc/sys/fs/mqueue/msg_max` | 10 | [`MqOptions::max_messages`] | unprivileged processes; with `CAP_SYS_RESOURCE` the bound is [`HARD_MSG_MAX`] (65 536) | `EINVAL` |
/// | `/proc/sys/fs/mqueue/msgsize_max` | 8192 | [`MqOptions::max_message`] | unprivileged processes; with `CAP_SYS_RESOURCE` the bound is [`HARD_MSGSIZE_MAX`] (16 MiB) | `EINVAL` |
/// | `/proc/sys/fs/mqueue/queues_max` | 256 | queues in the IPC namespace | unprivileged processes | `ENOSPC` |
/// | `RLIMIT_MSGQUEUE` (`ulimit -q`) | 819 200 bytes | the sum, over every queue of the same user, of `max_messages × (max_message + 96)` ([`MqOptions::accounted_bytes`]) | **everyone, root included**; checked against the creating process's soft limit, whose hard limit only `CAP_SYS_RESOURCE` raises | `EMFILE` |
/// | `RLIMIT_NOFILE` (`ulimit -n`) | 1024 | descriptors: one per process-local set of handles | everyone | `EMFILE` |
///
/// [`MessageQueue::create`] turns each refusal into an error naming the limit and its value.
/// So without privileges a queue holds at most 10 messages of up to 8 KiB, and a user's
/// queues about 800 KB in all, unless an administrator raises the sysctls and
/// `ulimit -q`; 16 MiB messages need `CAP_SYS_RESOURCE` (or a raised `msgsize_max`) *and*
/// an `RLIMIT_MSGQUEUE` of more than 16 MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MqLimits {
    /// `/proc/sys/fs/mqueue/msg_max`: the most messages per queue, unprivileged.
    pub msg_max: Option<u64>,
    /// `/proc/sys/fs/mqueue/msgsize_max`: the largest message, unprivileged.
    pub msgsize_max: Option<u64>,
    /// `/proc/sys/fs/mqueue/queues_max`: the most queues in the IPC namespace, unprivileged.
    pub queues_max: Option<u64>,
    /// `RLIMIT_MSGQUEUE` (soft): bytes of queues this user may have; `None` if unlimited.
    pub rlimit_bytes: Option<u64>,
    /// Whether this process has `CAP_SYS_RESOURCE`, which lifts `msg_max`, `msgsize_max`
    /// and `queues_max` (up to [`HARD_MSG_MAX`] and [`HARD_MSGSIZE_MAX`]), but not
    /// `RLIMIT_MSGQUEUE`.
    pub privileged: bool,
}

impl MqLimits {
    /// Reads the limits from `/proc`.
    pub fn read() -> Self {
        let sysctl = |name: &str| {
            std::fs::read_to_string(format!("{SYSCTL}/{name}"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
        };
        let rlimit_bytes = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|limits| {
                let line = limits
                    .lines()
                    .find(|l| l.starts_with("Max msgqueue size"))?;
                line.split_whitespace().nth(3)?.parse().ok()
            });
        // CAP_SYS_RESOURCE is capability 24.
        let privileged = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                let caps = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
                u64::from_str_radix(caps.trim(), 16).ok()
            })
            .is_some_and(|caps| caps & (1 << 24) != 0);
        MqLimits {
            msg_max: sysctl("msg_max"),
            msgsize_max: sysctl("msgsize_max"),
            queues_max: sysctl("queues_max"),
            rlimit_bytes,
            privileged,
        }
    }
}

fn show(limit: Option<u64>) -> String {
    limit.map_or_else(|| "?".to_string(), |v| v.to_string())
}

/// Turns `mq_open`'s refusal of a queue sized by `opts` into an error that says which limit
/// was hit and what to do about it.
fn explain_open_error(errno: Errno, opts: &MqOptions, limits: &MqLimits) -> Error {
    let (n, size) = (opts.max_messages, opts.max_message);
    let why = match errno {
        Errno::EINVAL => {
            let mut why = Vec::new();
            if n == 0 || size == 0 {
                why.push(format!(
                    "max_messages ({n}) and max_message ({size}) must both be at least 1"
                ));
            }
            if n > HARD_MSG_MAX {
                why.push(format!(
                    "max_messages {n} exceeds the kernel's hard limit of {HARD_MSG_MAX} \
                     (even with CAP_SYS_RESOURCE; ask for fewer)"
                ));
            }
            if size > HARD_MSGSIZE_MAX {
                why.push(format!(
                    "max_message {size} exceeds the kernel's hard limit of {HARD_MSGSIZE_MAX} \
                     bytes (even with CAP_SYS_RESOURCE; send smaller messages)"
                ));
            }
            if why.is_empty() {
                if limits.msg_max.is_some_and(|m| n as u64 > m) {
                    why.push(format!(
                        "max_messages {n} exceeds {SYSCTL}/msg_max = {} (raise it or ask for \
                         fewer)",
                        show(limits.msg_max)
                    ));
                }
                if limits.msgsize_max.is_some_and(|m| size as u64 > m) {
                    why.push(format!(
                        "max_message {size} exceeds {SYSCTL}/msgsize_max = {} (raise it or \
                         send smaller messages)",
                        show(limits.msgsize_max)
                    ));
                }
            }
            if why.is_empty() {
                why.push(format!(
                    "the kernel refused max_messages {n}, max_message {size} \
                     ({SYSCTL}/msg_max = {}, msgsize_max = {})",
                    show(limits.msg_max),
                    show(limits.msgsize_max)
                ));
            }
            why.join("; ")
        }
        Errno::EMFILE => {
            let need = opts.accounted_bytes();
            match limits.rlimit_bytes {
                Some(limit) => format!(
                    "a queue of {n} messages of up to {size} bytes takes {need} bytes of \
                     RLIMIT_MSGQUEUE (`ulimit -q`) = {limit} bytes, which this user's other \
                     queues share (raise it, or ask for fewer or smaller messages); or the \
                     process has too many open descriptors (`ulimit -n`)"
                ),
                None => format!(
                    "too many open descriptors (`ulimit -n`), or this user's queues already \
                     take all of RLIMIT_MSGQUEUE (this one needs {need} bytes)"
                ),
            }
        }
        Errno::ENOSPC => format!(
            "the system already has {SYSCTL}/queues_max = {} message queues (remove unused \
             ones or raise it)",
            show(limits.queues_max)
        ),
        Errno::ENOMEM => {
            format!("not enough kernel memory for a queue of {n} messages of up to {size} bytes")
        }
        Errno::EOVERFLOW => format!("max_messages {n} × max_message {size} overflows"),
        Errno::ENOSYS => {
            return Error::Unsupported(
                "POSIX message queues (the kernel was built without CONFIG_POSIX_MQUEUE)",
            );
        }
        e => format!("mq_open: {}", e.desc()),
    };
    let kind = io::Error::from(errno).kind();
    Error::Io(io::Error::new(
        kind,
        format!("cannot create message queue: {why} ({errno})"),
    ))
}

/// The name of the companion table of message queue `name` (without the leading `/`).
fn peers_name(name: &str) -> Result<String> {
    let rest = name
        .strip_prefix(NAME_PREFIX)
        .and_then(|r| r.strip_prefix(MQ_KIND))
        .ok_or_else(|| {
            Error::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("/{name} is not the name of an ipckit message queue"),
            ))
        })?;
    Ok(format!("{NAME_PREFIX}{PEERS_KIND}{rest}"))
}

/// The queue name that goes with companion table `peers` (both share one unique suffix).
fn queue_name(peers: &str) -> Option<String> {
    let rest = peers.strip_prefix(NAME_PREFIX)?.strip_prefix(PEERS_KIND)?;
    Some(format!("{NAME_PREFIX}{MQ_KIND}{rest}"))
}

/// A queue descriptor, closed when dropped.
#[derive(Debug)]
struct Mqd(Option<MqdT>);

impl Mqd {
    fn get(&self) -> &MqdT {
        self.0.as_ref().expect("open until dropped")
    }
}

impl Drop for Mqd {
    fn drop(&mut self) {
        if let Some(mqd) = self.0.take() {
            let _ = mq_close(mqd);
        }
    }
}

/// One process's view of a queue, shared by every handle made from it in that process.
#[derive(Debug)]
struct Inner {
    /// With the leading `/`.
    name: String,
    mqd: Mqd,
    max_messages: usize,
    max_message: usize,
    peers: Shared<Peers>,
    /// Whether this process created the queue and removes its name.
    owner: bool,
    pid: u32,
}

fn shm(e: ipckit_shmem::Error) -> Error {
    e.into()
}

impl Inner {
    fn create(opts: MqOptions) -> Result<Self> {
        let member = |v: usize| {
            mq_attr_member_t::try_from(v)
                .map_err(|_| explain_open_error(Errno::EINVAL, &opts, &MqLimits::read()))
        };
        let attr = MqAttr::new(0, member(opts.max_messages)?, member(opts.max_message)?, 0);
        // The table first: the queue's name derives from its unique name.
        let peers: Shared<Peers> = Shared::create_named(()).map_err(shm)?;
        let bare = peers
            .name()
            .and_then(queue_name)
            .ok_or_else(|| Error::Io(io::Error::other("unexpected companion segment name")))?;
        let name = format!("/{bare}");
        let mqd = mq_open(
            name.as_str(),
            MQ_OFlag::O_CREAT
                | MQ_OFlag::O_EXCL
                | MQ_OFlag::O_RDWR
                | MQ_OFlag::O_NONBLOCK
                | MQ_OFlag::O_CLOEXEC,
            Mode::S_IRUSR | Mode::S_IWUSR,
            Some(&attr),
        )
        .map_err(|e| explain_open_error(e, &opts, &MqLimits::read()))?;
        let inner = Self::wrap(name, Mqd(Some(mqd)), peers, true)?;
        tracing::debug!(name = %inner.name, max_messages = inner.max_messages,
            max_message = inner.max_message, "message queue created");
        Ok(inner)
    }

    fn open(name: &str) -> Result<Self> {
        let bare = name.strip_prefix('/').unwrap_or(name);
        let peers_name = peers_name(bare)?;
        let name = format!("/{bare}");
        let mqd = mq_open(
            name.as_str(),
            MQ_OFlag::O_RDWR | MQ_OFlag::O_NONBLOCK | MQ_OFlag::O_CLOEXEC,
            Mode::empty(),
            None,
        )
        .map_err(|e| {
            let e = io::Error::from(e);
            Error::Io(io::Error::new(
                e.kind(),
                format!("cannot open message queue {name}: {e}"),
            ))
        })?;
        let mqd = Mqd(Some(mqd));
        let peers = Shared::open(&peers_name).map_err(shm)?;
        Self::wrap(name, mqd, peers, false)
    }

    fn wrap(name: String, mqd: Mqd, peers: Shared<Peers>, owner: bool) -> Result<Self> {
        // Built first, so that a failure below still closes and (for the owner) removes.
        let mut inner = Inner {
            name,
            mqd,
            max_messages: 0,
            max_message: 0,
            peers,
            owner,
            pid: std::process::id(),
        };
        let attr = mq_getattr(inner.mqd.get())?;
        inner.max_messages = usize::try_from(attr.maxmsg()).unwrap_or(0);
        inner.max_message = usize::try_from(attr.msgsize()).unwrap_or(0);
        Ok(inner)
    }

    /// Messages in the queue now.
    fn len(&self) -> Result<usize> {
        Ok(usize::try_from(mq_getattr(self.mqd.get())?.curmsgs()).unwrap_or(0))
    }

    fn register_sender(&self, pid: u32) -> Result<()> {
        self.peers.register(pid)
    }

    fn unregister_sender(&self, pid: u32) {
        self.peers.unregister(pid);
    }

    /// Whether a receiver that found the queue empty will never get more: it was closed, or
    /// senders came and every one is gone, and it is still empty.
    fn no_more_coming(&self) -> Result<bool> {
        // Recheck after deciding: a message sent just before its sender left must be got.
        Ok(self.peers.finished() && self.len()? == 0)
    }

    /// Sleeps until the queue may allow `events`, for one slice of `deadline`; `Timeout`
    /// once the deadline has passed.
    fn wait(&self, events: PollFlags, deadline: Deadline) -> Result<()> {
        let slice = match deadline.remaining() {
            None => CHECK_EVERY,
            Some(left) if left.is_zero() => return Err(Error::Timeout),
            Some(left) => left.min(CHECK_EVERY),
        };
        // Rounded up: never wake before the deadline only to find it not yet passed.
        let ms = u16::try_from(slice.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.mqd.get().as_fd(), events)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn send(&self, msg: &[u8], deadline: Deadline) -> Result<()> {
        if msg.len() > self.max_message {
            return Err(Error::TooLarge {
                len: msg.len() as u64,
                max: self.max_message,
            });
        }
        loop {
            if self.peers.is_closed() {
                return Err(Error::Disconnected);
            }
            match nix::mqueue::mq_send(self.mqd.get(), msg, 0) {
                Ok(()) => return Ok(()),
                Err(Errno::EAGAIN) => self.wait(PollFlags::POLLOUT, deadline)?,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn recv(&self, scratch: &mut Vec<u8>, out: &mut Vec<u8>, deadline: Deadline) -> Result<()> {
        // The kernel wants room for the largest message, whatever comes.
        if scratch.len() < self.max_message {
            *scratch = vec![0; self.max_message];
        }
        loop {
            let mut priority = 0;
            match nix::mqueue::mq_receive(self.mqd.get(), scratch, &mut priority) {
                Ok(len) => {
                    out.clear();
                    out.extend_from_slice(&scratch[..len]);
                    return Ok(());
                }
                Err(Errno::EAGAIN) => {
                    if self.no_more_coming()? {
                        return Err(Error::Disconnected);
                    }
                    self.wait(PollFlags::POLLIN, deadline)?;
                }
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn close(&self) {
        self.peers.close();
        tracing::debug!(name = %self.name, "message queue closed");
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.owner {
            match nix::mqueue::mq_unlink(self.name.as_str()) {
                Ok(()) => tracing::debug!(name = %self.name, "message queue removed"),
                Err(e) => {
                    tracing::warn!(name = %self.name, error = %e, "message queue not removed");
                }
            }
        }
        // The companion table's segment removes its own name (its owner is the creator's).
    }
}

/// Where a handle goes to a child: by name. The creator's last handle cannot go that way,
/// since dropping it removes the name before the child can open it.
fn handoff(inner: Arc<Inner>) -> Handoff {
    if inner.owner && Arc::strong_count(&inner) == 1 {
        tracing::warn!(
            name = %inner.name,
            "the creator's last handle on a message queue was handed off: its name is removed \
             now and the child cannot open it; keep the MessageQueue until children opened theirs"
        );
    }
    Handoff::Name(inner.name.clone())
}

fn open_handoff(h: Handoff) -> Result<Inner> {
    match h {
        Handoff::Name(name) => Inner::open(&name),
        Handoff::Fd(_) => Err(Error::RoleInput(
            "a message queue is handed over by name, not as a descriptor".into(),
        )),
    }
}

/// A POSIX message queue (`mq_open`) between processes, for byte messages of a bounded
/// size, with `Disconnected` once every sender is gone (see [`MqLimits`] for the kernel's
/// limits).
///
/// ```
/// use ipckit_queues::{MessageQueue, MqOptions, RecvBytes, SendBytes};
///
/// let q = MessageQueue::create(MqOptions::with_capacity(8).max_message(1024))?;
/// let mut tx = q.sender()?;
/// let mut rx = q.receiver()?;
/// tx.send_bytes(b"hello")?;
/// drop(tx);
/// assert_eq!(rx.recv_bytes()?, b"hello");
/// assert!(matches!(rx.recv_bytes(), Err(ipckit_queues::Error::Disconnected)));
/// # Ok::<(), ipckit_queues::Error>(())
/// ```
///
/// The creator's handles (this one, and the senders and receivers made from it) share one
/// descriptor; the queue's name and its companion table's are removed when the last of
/// them is dropped. Other processes [`open`](MessageQueue::open) it by
/// [`name`](MessageQueue::name), or receive a handle through `ipckit_core::Command::handle`,
/// which opens it by name when the child takes it: keep a handle in the creator until
/// then.
#[derive(Debug)]
pub struct MessageQueue {
    inner: Arc<Inner>,
}

impl MessageQueue {
    /// A new queue sized by `opts`, under a fresh unique name, mode 0600.
    ///
    /// # Errors
    /// [`Error::Io`] naming the limit and its value when the kernel refuses the size (see
    /// [`MqLimits`]); [`Error::Unsupported`] without kernel support.
    pub fn create(opts: MqOptions) -> Result<Self> {
        Ok(MessageQueue {
            inner: Arc::new(Inner::create(opts)?),
        })
    }

    /// Opens the queue called `name` (with or without its leading `/`) that another
    /// process created with [`create`](MessageQueue::create).
    ///
    /// # Errors
    /// [`Error::Io`] (kind `NotFound`) if there is no such queue, `InvalidInput` for a name
    /// ipckit did not make.
    pub fn open(name: &str) -> Result<Self> {
        Ok(MessageQueue {
            inner: Arc::new(Inner::open(name)?),
        })
    }

    /// The queue's name, with its leading `/`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The most messages it holds.
    pub fn capacity(&self) -> usize {
        self.inner.max_messages
    }

    /// The largest message, in bytes.
    pub fn max_message(&self) -> usize {
        self.inner.max_message
    }

    /// Messages in the queue now.
    ///
    /// # Errors
    /// [`Error::Io`] if `mq_getattr` fails.
    pub fn len(&self) -> Result<usize> {
        self.inner.len()
    }

    /// Whether the queue is empty now.
    ///
    /// # Errors
    /// As [`len`](MessageQueue::len).
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Whether this handle created the queue (and removes its name).
    pub fn is_owner(&self) -> bool {
        self.inner.owner
    }

    /// Ends the queue for everyone: sends fail with `Disconnected`; receives drain what was
    /// sent, then say `Disconnected` (within 50 ms for one already waiting).
    pub fn close(&self) {
        self.inner.close();
    }

    /// Whether the queue was closed.
    pub fn is_closed(&self) -> bool {
        self.inner.peers.is_closed()
    }

    /// A producer handle. Receivers learn `Disconnected` once every sender handle is gone
    /// (dropped, or its process dead) and the queue is drained.
    ///
    /// # Errors
    /// [`Error::Io`] if more than 64 processes hold senders.
    pub fn sender(&self) -> Result<MqSender> {
        MqSender::new(Arc::clone(&self.inner))
    }

    /// A consumer handle.
    ///
    /// # Errors
    /// None at present; kept for symmetry with [`sender`](MessageQueue::sender).
    pub fn receiver(&self) -> Result<MqReceiver> {
        Ok(MqReceiver::new(Arc::clone(&self.inner)))
    }
}

/// Passes by name; the child's handle does not own the name.
impl Handle for MessageQueue {
    fn into_handoff(self) -> Handoff {
        handoff(self.inner)
    }

    fn from_handoff(h: Handoff) -> Result<Self> {
        Ok(MessageQueue {
            inner: Arc::new(open_handoff(h)?),
        })
    }
}

/// The producer side of a [`MessageQueue`]: implements [`SendBytes`], so
/// `into_sender::<T>()` makes it typed.
///
/// Sends wait while the queue is full; only [`close`](MessageQueue::close) makes them fail
/// with `Disconnected` (the kernel does not say when receivers are gone). Every live
/// `MqSender`, in any process, keeps receivers waiting; when the last one is dropped or its
/// process dies, they drain the queue and get `Disconnected`.
pub struct MqSender {
    /// `None` only once handed to a child, whose registration replaces ours.
    inner: Option<Arc<Inner>>,
}

impl MqSender {
    fn new(inner: Arc<Inner>) -> Result<Self> {
        inner.register_sender(inner.pid)?;
        Ok(MqSender { inner: Some(inner) })
    }

    fn inner(&self) -> &Inner {
        self.inner
            .as_ref()
            .expect("a sender is used only until it is handed off")
    }

    /// The queue's name, with its leading `/`.
    pub fn name(&self) -> &str {
        &self.inner().name
    }

    /// The largest message, in bytes.
    pub fn max_message(&self) -> usize {
        self.inner().max_message
    }
}

impl SendBytes for MqSender {
    fn send_bytes_deadline(&mut self, msg: &[u8], deadline: Deadline) -> Result<()> {
        self.inner().send(msg, deadline)
    }
}

impl Drop for MqSender {
    fn drop(&mut self) {
        if let Some(inner) = &self.inner {
            inner.unregister_sender(inner.pid);
        }
    }
}

/// A sender passes to a child with its registration: the child counts itself as a sender
/// before it releases this process's count, so receivers never see a moment with no sender
/// in between.
impl Handle for MqSender {
    fn into_handoff(mut self) -> Handoff {
        handoff(self.inner.take().expect("a sender is handed off once"))
    }

    fn from_handoff(h: Handoff) -> Result<Self> {
        let sender = MqSender::new(Arc::new(open_handoff(h)?))?;
        sender
            .inner()
            .unregister_sender(nix::unistd::getppid().as_raw() as u32);
        Ok(sender)
    }
}

impl fmt::Debug for MqSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqSender")
            .field("name", &self.inner.as_ref().map(|i| &i.name))
            .finish_non_exhaustive()
    }
}

/// The consumer side of a [`MessageQueue`]: implements [`RecvBytes`], so
/// `into_receiver::<T>()` makes it typed.
///
/// It keeps a buffer of the queue's largest message size (the kernel requires one for
/// every receive); each message is copied out of it at its own length.
pub struct MqReceiver {
    inner: Arc<Inner>,
    scratch: Vec<u8>,
}

impl MqReceiver {
    fn new(inner: Arc<Inner>) -> Self {
        MqReceiver {
            inner,
            scratch: Vec::new(),
        }
    }

    /// The queue's name, with its leading `/`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }
}

impl RecvBytes for MqReceiver {
    fn recv_bytes_into_deadline(&mut self, buf: &mut Vec<u8>, deadline: Deadline) -> Result<()> {
        self.inner.recv(&mut self.scratch, buf, deadline)
    }
}

/// Passes by name.
impl Handle for MqReceiver {
    fn into_handoff(self) -> Handoff {
        handoff(self.inner)
    }

    fn from_handoff(h: Handoff) -> Result<Self> {
        Ok(MqReceiver::new(Arc::new(open_handoff(h)?)))
    }
}

impl fmt::Debug for MqReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqReceiver")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unprivileged() -> MqLimits {
        MqLimits {
            msg_max: Some(10),
            msgsize_max: Some(8192),
            queues_max: Some(256),
            rlimit_bytes: Some(819_200),
            privileged: false,
        }
    }

    fn message(e: Error) -> String {
        e.to_string()
    }

    #[test]
    fn too_many_messages_names_msg_max() {
        let m = message(explain_open_error(
            Errno::EINVAL,
            &MqOptions::with_capacity(64),
            &unprivileged(),
        ));
        assert!(
            m.contains(
                "max_messages 64 exceeds /proc/sys/fs/mqueue/msg_max = 10 (raise it or ask for fewer)"
            ),
            "{m}"
        );
        assert!(!m.contains("msgsize_max"), "{m}");
    }

    #[test]
    fn too_large_messages_name_msgsize_max() {
        let m = message(explain_open_error(
            Errno::EINVAL,
            &MqOptions::with_capacity(10).max_message(1 << 20),
            &unprivileged(),
        ));
        assert!(
            m.contains("max_message 1048576 exceeds /proc/sys/fs/mqueue/msgsize_max = 8192"),
            "{m}"
        );
    }

    #[test]
    fn beyond_the_hard_limits_even_root_is_refused() {
        let root = MqLimits {
            privileged: true,
            ..unprivileged()
        };
        let m = message(explain_open_error(
            Errno::EINVAL,
            &MqOptions::with_capacity(100_000).max_message(32 << 20),
            &root,
        ));
        assert!(m.contains("hard limit of 65536"), "{m}");
        assert!(m.contains("hard limit of 16777216 bytes"), "{m}");
    }

    #[test]
    fn zero_sizes_are_explained() {
        let m = message(explain_open_error(
            Errno::EINVAL,
            &MqOptions::with_capacity(0),
            &unprivileged(),
        ));
        assert!(m.contains("must both be at least 1"), "{m}");
    }

    #[test]
    fn the_byte_limit_is_named_with_its_value() {
        let opts = MqOptions::with_capacity(10).max_message(1 << 20);
        let m = message(explain_open_error(Errno::EMFILE, &opts, &unprivileged()));
        assert!(
            m.contains("RLIMIT_MSGQUEUE (`ulimit -q`) = 819200 bytes"),
            "{m}"
        );
        assert!(
            m.contains(&format!("takes {} bytes", opts.accounted_bytes())),
            "{m}"
        );
    }

    #[test]
    fn the_queue_count_limit_is_named() {
        let m = message(explain_open_error(
            Errno::ENOSPC,
            &MqOptions::default(),
            &unprivileged(),
        ));
        assert!(m.contains("/proc/sys/fs/mqueue/queues_max = 256"), "{m}");
    }

    #[test]
    fn names_pair_up() {
        let q = queue_name("ipckit-shm-12-3-0000abcd").unwrap();
        assert_eq!(q, "ipckit-mq-12-3-0000abcd");
        assert_eq!(peers_name(&q).unwrap(), "ipckit-shm-12-3-0000abcd");
        assert!(peers_name("someone-elses-queue").is_err());
        assert_eq!(ipckit_core::owner_pid(&q), Some(12));
    }

    #[test]
    fn limits_are_read() {
        let l = MqLimits::read();
        if std::path::Path::new(SYSCTL).exists() {
            assert!(l.msg_max.is_some() && l.msgsize_max.is_some() && l.queues_max.is_some());
        }
    }
}
