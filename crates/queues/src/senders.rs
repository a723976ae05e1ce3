//! Which processes hold senders of a queue, kept in shared memory beside it, so that
//! consumers can tell "nothing yet" from "nothing ever again".

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use ipckit_core::{Error, Result};

/// How many processes may hold senders of one queue at once.
pub(crate) const SENDER_TABLE: usize = 64;

/// The sender table of one queue: whether it was closed, whether it ever had a sender, and
/// `pid << 32 | handles` for each process holding senders. All zeroes is a fresh table.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Senders {
    closed: AtomicU32,
    ever: AtomicU32,
    table: [AtomicU64; SENDER_TABLE],
}

fn pid_of(entry: u64) -> u32 {
    (entry >> 32) as u32
}

fn count_of(entry: u64) -> u32 {
    entry as u32
}

impl Senders {
    /// Counts one more sender handle in process `pid`.
    pub(crate) fn register(&self, pid: u32) -> Result<()> {
        loop {
            // This process's entry, or else a free one (or one whose process died).
            let mine = self.table.iter().find(|e| {
                let v = e.load(Ordering::Acquire);
                pid_of(v) == pid && count_of(v) > 0
            });
            let entry = mine.or_else(|| {
                self.table.iter().find(|e| {
                    let v = e.load(Ordering::Acquire);
                    count_of(v) == 0 || !ipckit_core::is_alive(pid_of(v) as i32)
                })
            });
            let Some(entry) = entry else {
                return Err(Error::Io(std::io::Error::other(format!(
                    "more than {SENDER_TABLE} processes hold senders of this queue"
                ))));
            };
            let v = entry.load(Ordering::Acquire);
            let next = if pid_of(v) == pid && count_of(v) > 0 {
                v + 1
            } else {
                u64::from(pid) << 32 | 1
            };
            // AcqRel pairs with the Acquire loads of `any_alive` in consumers.
            if entry
                .compare_exchange(v, next, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.ever.store(1, Ordering::Release);
                tracing::trace!(pid, "sender registered");
                return Ok(());
            }
        }
    }

    /// Counts one sender handle less in process `pid`.
    pub(crate) fn unregister(&self, pid: u32) {
        for e in &self.table {
            let r = e.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (pid_of(v) == pid && count_of(v) > 0).then_some(v - 1)
            });
            if r.is_ok() {
                return;
            }
        }
    }

    /// Ends the queue for everyone.
    pub(crate) fn close(&self) {
        self.closed.store(1, Ordering::Release);
    }

    /// Whether the queue was closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) != 0
    }

    /// Whether nothing more will be sent: closed, or senders existed and none is alive.
    pub(crate) fn finished(&self) -> bool {
        self.is_closed()
            || (self.ever.load(Ordering::Acquire) != 0
                && !self.table.iter().any(|e| {
                    let v = e.load(Ordering::Acquire);
                    count_of(v) > 0 && ipckit_core::is_alive(pid_of(v) as i32)
                }))
    }
}
