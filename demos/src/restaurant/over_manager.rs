//! A restaurant link over a queue held by a manager process (ipckit-manager's
//! `Manager::queue`, Python's `manager.Queue()`), behind the byte traits the stations use.
//!
//! A manager queue does not know who sends to it, so it has no end of its own: each item
//! is `Some(message)`, and the sending end puts `None` when it is dropped (the end mark a
//! Python station puts by hand). A receiving end that takes the end mark says
//! `Disconnected`, as the other mechanisms do when their sender is gone. A sender killed
//! before it is dropped puts no end mark: its receiver then waits for another sender's.
//! The manager itself gone is no end: both ends report it as an error naming the manager.

use std::time::Duration;

use ipckit_core::{Deadline, Error, Handle, Handoff, RecvBytes, Result, SendBytes};
use ipckit_manager::{Address, Manager, Queue};

/// What travels on the queue: a message, or `None`, the end.
type Item = Option<Vec<u8>>;

/// One end of a link, on its way to a station: the manager's address and the queue's name.
/// The station connects to the manager itself.
#[derive(Debug, Clone)]
pub(super) struct ManagerEnd {
    addr: String,
    queue: String,
}

impl ManagerEnd {
    /// A new queue in `manager`, and the description of its ends.
    pub(super) fn create(manager: &Manager) -> anyhow::Result<ManagerEnd> {
        let queue = ipckit_core::unique_name("restaurant");
        manager.queue::<Item>(&queue)?;
        Ok(ManagerEnd {
            addr: manager.address().to_string(),
            queue,
        })
    }

    fn open(&self) -> Result<Queue<Item>> {
        let addr: Address = self.addr.parse()?;
        Manager::connect(&addr, None)
            .and_then(|m| m.queue::<Item>(&self.queue))
            .map_err(|e| core_error(e, &self.addr))
    }

    /// In a station: the sending end, which puts the end mark when dropped.
    pub(super) fn sender(&self) -> Result<ManagerSender> {
        Ok(ManagerSender {
            queue: self.open()?,
            addr: self.addr.clone(),
        })
    }

    /// In a station: the receiving end.
    pub(super) fn receiver(&self) -> Result<ManagerReceiver> {
        Ok(ManagerReceiver {
            queue: self.open()?,
            addr: self.addr.clone(),
            ended: false,
        })
    }
}

impl Handle for ManagerEnd {
    fn into_handoff(self) -> Handoff {
        // Queue names made by `unique_name` have no space.
        Handoff::Name(format!("{} {}", self.queue, self.addr))
    }

    fn from_handoff(h: Handoff) -> Result<Self> {
        match h {
            Handoff::Name(spec) => match spec.split_once(' ') {
                Some((queue, addr)) => Ok(ManagerEnd {
                    addr: addr.to_string(),
                    queue: queue.to_string(),
                }),
                None => Err(Error::RoleInput(format!(
                    "not a manager queue's name and address: {spec:?}"
                ))),
            },
            Handoff::Fd(_) => Err(Error::RoleInput(
                "a manager queue travels by name, not as a descriptor".into(),
            )),
        }
    }
}

/// A manager's error, as the byte traits report it. The manager gone (at `addr`) is not
/// the link's end (`Disconnected`, which only the end mark says), but a failure.
fn core_error(e: ipckit_manager::Error, addr: &str) -> Error {
    match e {
        ipckit_manager::Error::Disconnected => {
            Error::os("reach", "manager", addr, std::io::Error::other(e))
        }
        ipckit_manager::Error::Timeout => Error::Timeout,
        ipckit_manager::Error::Core(e) => e,
        ipckit_manager::Error::Value(e) => Error::Codec(e.to_string()),
        other => Error::Malformed(other.to_string()),
    }
}

/// The sending end: puts each message; the end mark when dropped.
pub(super) struct ManagerSender {
    queue: Queue<Item>,
    addr: String,
}

impl SendBytes for ManagerSender {
    /// The queue is unbounded: a put never waits for room, only for the manager's answer.
    fn send_bytes_deadline(&mut self, msg: &[u8], deadline: Deadline) -> Result<()> {
        let queue = match deadline.remaining() {
            Some(left) => self.queue.with_timeout(left.max(Duration::from_millis(1))),
            None => self.queue.clone(),
        };
        queue
            .put(&Some(msg.to_vec()))
            .map_err(|e| core_error(e, &self.addr))
    }
}

impl Drop for ManagerSender {
    fn drop(&mut self) {
        if let Err(e) = self.queue.put(&None) {
            eprintln!("could not put the end mark on the manager queue: {e}");
        }
    }
}

/// The receiving end: `Disconnected` from the end mark on.
pub(super) struct ManagerReceiver {
    queue: Queue<Item>,
    addr: String,
    ended: bool,
}

impl RecvBytes for ManagerReceiver {
    fn recv_bytes_into_deadline(&mut self, buf: &mut Vec<u8>, deadline: Deadline) -> Result<()> {
        if self.ended {
            return Err(Error::Disconnected);
        }
        let item = match deadline {
            Deadline::Never => self.queue.get(),
            Deadline::Now => self
                .queue
                .try_get()
                .and_then(|item| item.ok_or(ipckit_manager::Error::Timeout)),
            Deadline::At(_) => self
                .queue
                .get_timeout(deadline.remaining().unwrap_or_default()),
        }
        .map_err(|e| core_error(e, &self.addr))?;
        match item {
            Some(msg) => {
                *buf = msg;
                Ok(())
            }
            None => {
                self.ended = true;
                Err(Error::Disconnected)
            }
        }
    }
}
