//! The operating system's side of a message queue: the kernel queue under its name, its
//! companion sender table in `/dev/shm`, and the waits, sends and receives on them.

use std::{os::fd::AsFd, sync::Arc, time::Duration};

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
use crate::senders::{SenderTable, Senders};

/// The longest slice of a wait: how late a waiter learns that the queue was closed or
/// that every sender is gone.
const CHECK_EVERY: Duration = Duration::from_millis(50);
const MQ_KIND: &str = "mq-";
const PEERS_KIND: &str = "shm-";

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

/// The queue name that goes with companion table `peers` (both share one unique suffix).
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
        // The table first: the queue's name derives from its unique name.
        let peers: Shared<Senders> = Shared::create_named(()).map_err(shm)?;
        let table = peers.name().unwrap_or_default();
        let Some(bare) = queue_name(table) else {
            return Err(Error::NotA {
                expected: "an ipckit shared-memory name",
                name: table.to_string(),
                reason: format!("a sender table's name begins with {NAME_PREFIX}{PEERS_KIND}"),
            });
        };
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
    match h {
        Handoff::Name(name) => Inner::open(&name),
        Handoff::Fd(_) => Err(Error::RoleInput(
            "a message queue is handed over by name, not as a descriptor".into(),
        )),
    }
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
        let q = queue_name("ipckit-shm-12-3-0000abcd").unwrap();
        assert_eq!(q, "ipckit-mq-12-3-0000abcd");
        assert_eq!(peers_name(&q).unwrap(), "ipckit-shm-12-3-0000abcd");
        assert!(peers_name("someone-elses-queue").is_err());
        assert_eq!(ipckit_core::owner_pid(&q), Some(12));
    }
}
