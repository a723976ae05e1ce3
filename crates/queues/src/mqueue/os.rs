//! The operating system's side of a message queue: the kernel queue under its name, its
//! companion sender table in `/dev/shm`, and the waits, sends and receives on them; and
//! the queues that killed creators left behind.
//!
//! The table's name is the queue's with `mq-` turned into `mqtable.`, so that the tables
//! in `/dev/shm` list the queues ipckit made even where `/dev/mqueue` is not mounted (it
//! usually is not, and only a privileged process may mount it). The `.` keeps the table's
//! name from reading as an ipckit object of its own: ipckit-shmem's sweep of stale segments
//! leaves it, and this module's sweep removes it with its queue.

use std::{
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::Duration,
};

use ipckit_core::{Deadline, Error, Handoff, NAME_PREFIX, Result};
use ipckit_shmem::Shared;
use nix::{
    errno::Errno,
    mqueue::{MQ_OFlag, MqAttr, mq_attr_member_t, mq_getattr, mq_open},
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::stat::Mode,
};

use super::{
    MqOptions,
    limits::{MqLimits, explain_open_error},
    sys::Mqd,
};
use crate::senders::{SenderTable, Senders, path_of, reopen};

/// The longest slice of a wait: how late a waiter learns that the queue was closed or
/// that every sender is gone.
const CHECK_EVERY: Duration = Duration::from_millis(50);
const MQ_KIND: &str = "mq-";
const PEERS_KIND: &str = "mqtable.";
/// What tables were called before they had names of their own.
const LEGACY_PEERS: &str = "ipckit-shm-";
const SHM_DIR: &str = "/dev/shm";
const MQUEUE_DIR: &str = "/dev/mqueue";

/// The name of the companion table of message queue `name` (without the leading `/`).
fn peers_name(name: &str) -> Result<String> {
    let rest = name
        .strip_prefix(NAME_PREFIX)
        .and_then(|r| r.strip_prefix(MQ_KIND))
        .ok_or_else(|| Error::NotA {
            expected: "an ipckit message queue",
            name: format!("/{name}"),
            reason: format!("ipckit's message queues are called /{NAME_PREFIX}{MQ_KIND}…"),
        })?;
    Ok(format!("{NAME_PREFIX}{PEERS_KIND}{rest}"))
}

/// The queue name (without the leading `/`) that goes with companion table `peers` (both
/// share one unique suffix).
fn queue_name(peers: &str) -> Option<String> {
    let rest = peers.strip_prefix(NAME_PREFIX)?.strip_prefix(PEERS_KIND)?;
    Some(format!("{NAME_PREFIX}{MQ_KIND}{rest}"))
}

/// A failure of the companion table's shared memory, with ipckit-shmem's error as source.
fn shm(e: ipckit_shmem::Error) -> Error {
    Error::SharedMemory(Box::new(e))
}

/// One process's view of a queue, shared by every handle made from it in that process.
#[derive(Debug)]
pub(super) struct Inner {
    /// With the leading `/`.
    pub(super) name: String,
    mqd: Mqd,
    pub(super) capacity: usize,
    pub(super) max_message: usize,
    peers: Shared<Senders>,
    /// Whether this process created the queue and removes its name.
    pub(super) owner: bool,
    /// A descriptor of the table through which the locks of senders on their way to a
    /// child are seen; opened the first time one is.
    probe: OnceLock<Option<OwnedFd>>,
}

impl Inner {
    pub(super) fn create(opts: MqOptions) -> Result<Self> {
        let member = |what: &str, v: usize| {
            mq_attr_member_t::try_from(v).map_err(|_| {
                Error::InvalidOptions(format!("{what} {v} is out of the kernel's range"))
            })
        };
        let attr = MqAttr::new(
            0,
            member("capacity", opts.capacity)?,
            member("max_message", opts.max_message)?,
            0,
        );
        let bare = ipckit_core::unique_name("mq");
        let name = format!("/{bare}");
        // The table first: it is what lists the queue should its creator be killed.
        let peers: Shared<Senders> = Shared::create_at(&peers_name(&bare)?, ()).map_err(shm)?;
        let open = || {
            mq_open(
                name.as_str(),
                MQ_OFlag::O_CREAT
                    | MQ_OFlag::O_EXCL
                    | MQ_OFlag::O_RDWR
                    | MQ_OFlag::O_NONBLOCK
                    | MQ_OFlag::O_CLOEXEC,
                Mode::S_IRUSR | Mode::S_IWUSR,
                Some(&attr),
            )
        };
        let mqd = match open() {
            // This user's queues fill RLIMIT_MSGQUEUE (or the system's, queues_max): those
            // of killed creators may be what fills it. Remove them and try once more.
            Err(Errno::EMFILE | Errno::ENOSPC) if remove_stale().is_ok_and(|r| !r.is_empty()) => {
                open()
            }
            r => r,
        }
        .map_err(|e| explain_open_error(e, &name, &opts, &MqLimits::read()))?;
        let inner = Self::wrap(name, Mqd::new(mqd), peers, true)?;
        tracing::debug!(name = %inner.name, capacity = inner.capacity,
            max_message = inner.max_message, "message queue created");
        Ok(inner)
    }

    pub(super) fn open(name: &str) -> Result<Self> {
        let bare = name.strip_prefix('/').unwrap_or(name);
        let peers_name = peers_name(bare)?;
        let name = format!("/{bare}");
        let mqd = mq_open(
            name.as_str(),
            MQ_OFlag::O_RDWR | MQ_OFlag::O_NONBLOCK | MQ_OFlag::O_CLOEXEC,
            Mode::empty(),
            None,
        )
        .map_err(|e| Error::os("open", "message queue", &name, e))?;
        let mqd = Mqd::new(mqd);
        let peers = Shared::open(&peers_name).map_err(shm)?;
        Self::wrap(name, mqd, peers, false)
    }

    fn wrap(name: String, mqd: Mqd, peers: Shared<Senders>, owner: bool) -> Result<Self> {
        // Built first, so that a failure below still closes and (for the owner) removes.
        let mut inner = Inner {
            name,
            mqd,
            capacity: 0,
            max_message: 0,
            peers,
            owner,
            probe: OnceLock::new(),
        };
        let attr = mq_getattr(inner.mqd.get())
            .map_err(|e| Error::os("inspect", "message queue", &inner.name, e))?;
        inner.capacity = usize::try_from(attr.maxmsg()).unwrap_or(0);
        inner.max_message = usize::try_from(attr.msgsize()).unwrap_or(0);
        Ok(inner)
    }

    /// Messages in the queue now.
    pub(super) fn len(&self) -> Result<usize> {
        Ok(usize::try_from(mq_getattr(self.mqd.get())?.curmsgs()).unwrap_or(0))
    }

    /// Whether a receiver that found the queue empty will never get more: it was closed, or
    /// senders came and every one is gone, and it is still empty.
    fn no_more_coming(&self) -> Result<bool> {
        // Recheck after deciding: a message sent just before its sender left must be got.
        Ok(self.peers.finished(|| self.probe()) && self.len()? == 0)
    }

    /// A descriptor of the table, for seeing hand-over locks (see `senders`).
    fn probe(&self) -> Option<BorrowedFd<'_>> {
        self.probe
            .get_or_init(|| reopen(&self.table()).ok())
            .as_ref()
            .map(AsFd::as_fd)
    }

    /// The table, as a handoff by name.
    pub(super) fn table(&self) -> Handoff {
        Handoff::Name(self.peers.name().unwrap_or_default().to_string())
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

    pub(super) fn send(&self, msg: &[u8], deadline: Deadline) -> Result<()> {
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

    pub(super) fn recv(
        &self,
        scratch: &mut Vec<u8>,
        out: &mut Vec<u8>,
        deadline: Deadline,
    ) -> Result<()> {
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

    pub(super) fn close(&self) {
        self.peers.close();
        tracing::debug!(name = %self.name, "message queue closed");
    }

    /// Whether the queue was closed.
    pub(super) fn is_closed(&self) -> bool {
        self.peers.is_closed()
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
pub(super) fn handoff(inner: Arc<Inner>) -> Handoff {
    if inner.owner && Arc::strong_count(&inner) == 1 {
        tracing::warn!(
            name = %inner.name,
            "the creator's last handle on a message queue was handed off: its name is removed \
             now and the child cannot open it; keep the MessageQueue until children opened theirs"
        );
    }
    Handoff::Name(inner.name.clone())
}

pub(super) fn open_handoff(h: Handoff) -> Result<Inner> {
    Ok(open_counted(h)?.0)
}

/// Opens the queue a handle was handed as: by name, or (for a handle that counts as a
/// sender) as a description of the queue's table, which is returned with it.
pub(super) fn open_counted(h: Handoff) -> Result<(Inner, Option<OwnedFd>)> {
    match h {
        Handoff::Name(name) => Ok((Inner::open(&name)?, None)),
        Handoff::Fd(fd) => {
            let not_a_table = |reason: String| Error::NotA {
                expected: "the sender table of an ipckit message queue",
                name: format!("descriptor {fd:?}"),
                reason,
            };
            let path = path_of(fd.as_fd()).map_err(|e| not_a_table(e.to_string()))?;
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(queue_name)
                .ok_or_else(|| not_a_table(format!("it is {}", path.display())))?;
            Ok((Inner::open(&name)?, Some(fd)))
        }
    }
}

/// A message queue that a killed creator left, and its table.
struct Stale {
    /// With the leading `/`.
    queue: String,
    table: Option<PathBuf>,
}

/// Whether this process's user owns the file at `path` (`/proc/self` is owned by this
/// process's effective user).
fn mine(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let uid = |p: &Path| std::fs::metadata(p).map(|m| m.uid());
    matches!((uid(path), uid(Path::new("/proc/self"))), (Ok(a), Ok(b)) if a == b)
}

/// The queues of this user whose creator is dead: from their tables in `/dev/shm`, and
/// from `/dev/mqueue` where it is mounted.
fn find_stale() -> Result<Vec<Stale>> {
    let mut found: Vec<Stale> = Vec::new();
    let entries = std::fs::read_dir(SHM_DIR)
        .map_err(|e| Error::os("list", "shared-memory directory", SHM_DIR, e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(file) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        // Tables; and, from ipckit before tables had names of their own, segments called
        // as a table was, whose queue exists.
        let (queue, legacy) = match queue_name(&file) {
            Some(queue) => (queue, false),
            None => match file.strip_prefix(LEGACY_PEERS) {
                Some(rest) => (format!("{NAME_PREFIX}{MQ_KIND}{rest}"), true),
                None => continue,
            },
        };
        let queue = format!("/{queue}");
        if ipckit_core::is_stale(&queue[1..]) && mine(&path) && (!legacy || exists(&queue)) {
            found.push(Stale {
                queue,
                table: Some(path),
            });
        }
    }
    if let Ok(entries) = std::fs::read_dir(MQUEUE_DIR) {
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let queue = format!("/{name}");
            if name.starts_with(&format!("{NAME_PREFIX}{MQ_KIND}"))
                && ipckit_core::is_stale(&name)
                && mine(&entry.path())
                && !found.iter().any(|s| s.queue == queue)
            {
                found.push(Stale { queue, table: None });
            }
        }
    }
    Ok(found)
}

/// Whether message queue `name` exists (and this user may open it).
fn exists(name: &str) -> bool {
    match mq_open(
        name,
        MQ_OFlag::O_RDONLY | MQ_OFlag::O_NONBLOCK | MQ_OFlag::O_CLOEXEC,
        Mode::empty(),
        None,
    ) {
        Ok(mqd) => {
            drop(Mqd::new(mqd));
            true
        }
        Err(_) => false,
    }
}

/// Message queues that ipckit made and whose creating process is gone (it was killed
/// before it could remove them), of this process's user, by name (with the leading `/`).
///
/// They are found through their sender tables in `/dev/shm`, so `/dev/mqueue` need not be
/// mounted (where it is, its ipckit queues are listed too). Each holds its share of the
/// user's `RLIMIT_MSGQUEUE` until removed: [`remove_stale_message_queues`] removes them,
/// and [`MessageQueue::create`](super::MessageQueue::create) does when it meets the limit.
///
/// # Errors
/// [`Error::Os`] if `/dev/shm` cannot be read.
pub fn stale_message_queues() -> Result<Vec<String>> {
    Ok(find_stale()?
        .into_iter()
        .filter(|s| exists(&s.queue))
        .map(|s| s.queue)
        .collect())
}

/// Removes what [`stale_message_queues`] finds, with their sender tables (and the tables
/// of queues already gone); returns the names of the queues removed.
///
/// A queue is removed by name: processes that still have it open keep using it, and the
/// kernel frees its memory when the last closes it.
///
/// # Errors
/// [`Error::Os`] if `/dev/shm` cannot be read.
pub fn remove_stale_message_queues() -> Result<Vec<String>> {
    remove_stale()
}

fn remove_stale() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for stale in find_stale()? {
        if nix::mqueue::mq_unlink(stale.queue.as_str()).is_ok() {
            tracing::info!(name = %stale.queue, "removed the message queue of a dead process");
            removed.push(stale.queue);
        }
        if let Some(table) = stale.table {
            let _ = std::fs::remove_file(table);
        }
    }
    Ok(removed)
}

impl SenderTable for Arc<Inner> {
    fn senders(&self) -> &Senders {
        &self.peers
    }

    /// Receivers wait in slices and look again after each: nothing to wake.
    fn wake_receivers(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_pair_up() {
        let q = queue_name("ipckit-mqtable.12-3-0000abcd").unwrap();
        assert_eq!(q, "ipckit-mq-12-3-0000abcd");
        assert_eq!(peers_name(&q).unwrap(), "ipckit-mqtable.12-3-0000abcd");
        assert!(peers_name("someone-elses-queue").is_err());
        assert_eq!(ipckit_core::owner_pid(&q), Some(12));
        // A table does not read as an object of its own (the segment sweep leaves it).
        assert_eq!(ipckit_core::owner_pid("ipckit-mqtable.12-3-0000abcd"), None);
    }
}
