//! Which processes hold senders of a queue, kept in shared memory beside it, so that
//! consumers can tell "nothing yet" from "nothing ever again"; and the guard by which each
//! sender handle counts itself there. Both queues (shared-memory and POSIX) use these.
//!
//! A process counts in the table while it holds senders. A sender handed to a child
//! process leaves a *hand-over entry* instead of its process's count: the sender travels
//! as a fresh open file description of the table's shared memory that holds a lock on the
//! entry's byte (see `sys`), so the entry counts exactly as long as some process has that
//! description open — the parent until the child starts, then the child until it takes the
//! sender (and counts itself), or dies. A child killed before it took its sender, or a
//! command dropped without being spawned, so ends the count, as a dropped sender does.

#[expect(
    unsafe_code,
    reason = "builds the lock request the kernel reads: a C struct of integers, zeroed"
)]
mod sys;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use ipckit_core::{Error, Handoff, Result};

pub(crate) use sys::{marked, path_of, reopen};

/// How many processes may hold senders of one queue at once.
pub(crate) const SENDER_TABLE: usize = 64;
/// How many senders may be on their way to child processes at once (more are counted for
/// their parent until the child takes them).
pub(crate) const HANDED: usize = 32;

/// A hand-over entry being set up by process `pid`: counts while `pid` lives.
const RESERVED: u64 = 1;
/// A hand-over entry in place: counts while its lock is held.
const ARMED: u64 = 2;

/// The sender table of one queue: whether it was closed, whether it ever had a sender,
/// `pid << 32 | handles` for each process holding senders, and `pid << 32 | state` for
/// each sender on its way to a child. All zeroes is a fresh table.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Senders {
    closed: AtomicU32,
    ever: AtomicU32,
    table: [AtomicU64; SENDER_TABLE],
    handed: [AtomicU64; HANDED],
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

    /// Sets up a hand-over entry for a sender of process `pid` that travels as `token`:
    /// the entry counts while `token`'s open file description lives. `None` if every entry
    /// is in use.
    fn hand_out(&self, pid: u32, token: BorrowedFd<'_>) -> Option<usize> {
        for (i, e) in self.handed.iter().enumerate() {
            let v = e.load(Ordering::Acquire);
            // Free, or armed for a description that no process holds any more.
            let reusable = v == 0 || (v & 3 == ARMED && !sys::is_locked(token, i));
            if !reusable
                || e.compare_exchange(
                    v,
                    u64::from(pid) << 32 | RESERVED,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_err()
            {
                continue;
            }
            if sys::lock(token, i) && sys::mark(token, i).is_ok() {
                // AcqRel pairs with the Acquire loads of `finished` in consumers.
                e.store(u64::from(pid) << 32 | ARMED, Ordering::Release);
                self.ever.store(1, Ordering::Release);
                return Some(i);
            }
            sys::unlock(token, i);
            e.store(0, Ordering::Release);
        }
        None
    }

    /// Clears hand-over entry `index`, which `token` carried to this process.
    fn take_back(&self, index: usize, token: BorrowedFd<'_>) {
        if let Some(e) = self.handed.get(index) {
            let v = e.load(Ordering::Acquire);
            // Only the holder of the lock can find it armed for its description.
            if v & 3 == ARMED {
                let _ = e.compare_exchange(v, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
        sys::unlock(token, index);
        // The description now serves this process's handle: handed on as it is, it must
        // not read as carrying the entry.
        sys::unmark(token);
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
    /// `probe` is a descriptor of the table's shared memory through which hand-over locks
    /// are seen; without one, senders on their way to a child are taken as alive.
    pub(crate) fn finished<'a>(&self, probe: impl Fn() -> Option<BorrowedFd<'a>>) -> bool {
        if self.is_closed() {
            return true;
        }
        if self.ever.load(Ordering::Acquire) == 0 {
            return false;
        }
        let counted = self.table.iter().any(|e| {
            let v = e.load(Ordering::Acquire);
            count_of(v) > 0 && ipckit_core::is_alive(pid_of(v) as i32)
        });
        let handed = || {
            self.handed.iter().enumerate().any(|(i, e)| {
                let v = e.load(Ordering::Acquire);
                match v & 3 {
                    RESERVED => ipckit_core::is_alive(pid_of(v) as i32),
                    ARMED => probe().is_none_or(|fd| sys::is_locked(fd, i)),
                    _ => false,
                }
            })
        };
        !counted && !handed()
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
/// dropped, or handed to the child process the handle goes to, which takes it over.
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

    /// Hands this count to whatever process ends up holding `token`, a fresh open file
    /// description of the table's shared memory made for this sender alone (see the
    /// module's notes), and releases this process's. If every hand-over entry is in use,
    /// the count stays with this process until the child takes it over, as it would for
    /// an older ipckit.
    pub(crate) fn hand_over(mut self, token: &OwnedFd) {
        self.armed = false;
        let senders = self.queue.senders();
        if senders.hand_out(self.pid, token.as_fd()).is_some() {
            senders.unregister(self.pid);
        } else {
            tracing::warn!(
                limit = HANDED,
                "queue: too many senders on their way to children; this one counts for its \
                 parent until its child takes it"
            );
        }
    }

    /// Leaves this count in the table, for the child process the sender goes to without a
    /// hand-over entry: it counts for this process until the child takes it over.
    pub(crate) fn leave(mut self) {
        self.armed = false;
    }

    /// In a child process that was handed a sender with `token` (what
    /// [`hand_over`](Registration::hand_over) made; `None` if it came without one):
    /// counts this process, then releases the count left for it, so that consumers never
    /// see a moment with no sender.
    ///
    /// # Errors
    /// [`Error::LimitReached`] when the table is full (the count left for it is released
    /// all the same: the handed sender is gone).
    pub(crate) fn take_over(queue: Q, token: Option<BorrowedFd<'_>>) -> Result<Self> {
        let pid = std::process::id();
        let counted = queue.senders().register(pid);
        // After counting this process, so that the count never touches zero in between.
        match token.and_then(|t| marked(t).map(|i| (t, i))) {
            Some((t, i)) => queue.senders().take_back(i, t),
            None => queue
                .senders()
                .unregister(nix::unistd::getppid().as_raw() as u32),
        }
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
}

impl<Q: SenderTable> Drop for Registration<Q> {
    fn drop(&mut self) {
        if self.armed {
            self.queue.senders().unregister(self.pid);
            self.queue.wake_receivers();
        }
    }
}

/// What a sender travels to a child as: a fresh open file description of the shared memory
/// `h` names or holds, for [`Registration::hand_over`]. `None` (with a warning) if it
/// cannot be opened; the sender then travels as `h` and counts for its parent until the
/// child takes it.
pub(crate) fn token_for(h: &Handoff) -> Option<OwnedFd> {
    match reopen(h) {
        Ok(fd) => Some(fd),
        Err(e) => {
            tracing::warn!(error = %e, "queue: cannot reopen the shared memory of a sender \
                handed to a child; it counts for its parent until the child takes it");
            None
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
            handed: std::array::from_fn(|_| AtomicU64::new(0)),
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
        assert!(!senders.finished(|| None));
    }

    #[test]
    fn finished_once_every_sender_left() {
        let senders = fresh();
        // Nothing yet: a sender may still come.
        assert!(!senders.finished(|| None));
        let me = std::process::id();
        senders.register(me).unwrap();
        senders.register(me).unwrap();
        senders.unregister(me);
        assert!(!senders.finished(|| None));
        senders.unregister(me);
        assert!(senders.finished(|| None));
    }
}
