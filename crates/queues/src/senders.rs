//! Which processes hold senders of a queue, kept in shared memory beside it, so that
//! consumers can tell "nothing yet" from "nothing ever again"; and the guard by which each
//! sender handle counts itself there. Both queues (shared-memory and POSIX) use these.

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
    ///
    /// # Errors
    /// [`Error::LimitReached`] when [`SENDER_TABLE`] other live processes hold senders.
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
                return Err(Error::LimitReached {
                    what: "processes holding senders of one queue",
                    limit: SENDER_TABLE,
                });
            };
            let v = entry.load(Ordering::Acquire);
            let next = if pid_of(v) == pid && count_of(v) > 0 {
                v + 1
            } else {
                u64::from(pid) << 32 | 1
            };
            // AcqRel pairs with the Acquire loads of `finished` in consumers.
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

/// A queue handle that reaches its queue's sender table.
pub(crate) trait SenderTable {
    /// The table.
    fn senders(&self) -> &Senders;

    /// Wakes consumers that sleep on an empty queue, after a sender left (they may be done).
    fn wake_receivers(&self);
}

/// One sender handle's count in its queue's table: counted when made, released when
/// dropped, or left for the child process the handle is handed to, which takes it over.
///
/// It holds a queue handle of its own, so that a sender can be taken apart (its queue
/// handle handed off, this guard disarmed) without a state in which it has no queue.
#[derive(Debug)]
pub(crate) struct Registration<Q: SenderTable> {
    queue: Q,
    pid: u32,
    /// False only while [`hand_over`](Registration::hand_over) drops it.
    armed: bool,
}

impl<Q: SenderTable> Registration<Q> {
    /// Counts one more sender of this process in `queue`'s table.
    ///
    /// # Errors
    /// [`Error::LimitReached`] when the table is full.
    pub(crate) fn new(queue: Q) -> Result<Self> {
        let pid = std::process::id();
        queue.senders().register(pid)?;
        Ok(Registration {
            queue,
            pid,
            armed: true,
        })
    }

    /// In a child process that was handed a sender: counts this process, then releases the
    /// count its parent left for it, so that consumers never see a moment with no sender.
    ///
    /// # Errors
    /// [`Error::LimitReached`] when the table is full (the parent's count is released all
    /// the same: the handed sender is gone).
    pub(crate) fn take_over(queue: Q) -> Result<Self> {
        let parent = nix::unistd::getppid().as_raw() as u32;
        let pid = std::process::id();
        let counted = queue.senders().register(pid);
        // After counting this process, so that the count never touches zero in between.
        queue.senders().unregister(parent);
        if counted.is_err() {
            queue.wake_receivers();
        }
        counted?;
        Ok(Registration {
            queue,
            pid,
            armed: true,
        })
    }

    /// Leaves this count in the table for the child process the sender goes to (see
    /// [`take_over`](Registration::take_over)).
    pub(crate) fn hand_over(mut self) {
        self.armed = false;
    }
}

impl<Q: SenderTable> Drop for Registration<Q> {
    fn drop(&mut self) {
        if self.armed {
            self.queue.senders().unregister(self.pid);
            self.queue.wake_receivers();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command, Stdio};

    use super::*;

    fn fresh() -> Senders {
        Senders {
            closed: AtomicU32::new(0),
            ever: AtomicU32::new(0),
            table: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Live processes to fill the table with, killed when dropped.
    struct Sleepers(Vec<Child>);

    impl Sleepers {
        fn start(n: usize) -> Sleepers {
            Sleepers(
                (0..n)
                    .map(|_| {
                        Command::new("sleep")
                            .arg("60")
                            .stdout(Stdio::null())
                            .spawn()
                            .expect("start sleep")
                    })
                    .collect(),
            )
        }
    }

    impl Drop for Sleepers {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    #[test]
    fn a_full_table_refuses_a_new_process_with_limit_reached() {
        let senders = fresh();
        let mut sleepers = Sleepers::start(SENDER_TABLE);
        for c in &sleepers.0 {
            senders.register(c.id()).unwrap();
        }
        let me = std::process::id();
        match senders.register(me) {
            Err(Error::LimitReached { what, limit }) => {
                assert_eq!(limit, SENDER_TABLE);
                assert!(what.contains("senders"), "{what}");
            }
            other => panic!("expected LimitReached, got {other:?}"),
        }
        // A process already in the table counts one more handle all the same.
        senders.register(sleepers.0[0].id()).unwrap();
        // A dead process's entry is taken over.
        let mut dead = sleepers.0.swap_remove(5);
        dead.kill().unwrap();
        dead.wait().unwrap();
        senders.register(me).unwrap();
        assert!(!senders.finished());
    }

    #[test]
    fn finished_once_every_sender_left() {
        let senders = fresh();
        // Nothing yet: a sender may still come.
        assert!(!senders.finished());
        let me = std::process::id();
        senders.register(me).unwrap();
        senders.register(me).unwrap();
        senders.unregister(me);
        assert!(!senders.finished());
        senders.unregister(me);
        assert!(senders.finished());
    }
}
