//! A handle on a queue segment: its layout in this process, the waits around the slot
//! protocol of `slots` (which says how a killed process's slot is repaired), and whether
//! anything more can come.

use std::{
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::{
        OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use ipckit_core::{Deadline, Error, Handle, Result};
use ipckit_shmem::Segment;

use super::{
    QueueOptions,
    slots::{self, Ring, Step},
    sys::{self, Header, SLOT_HEAD, SLOTS, SlotHead},
};
use crate::senders::{SenderTable, Senders};

const MAGIC: u64 = u64::from_le_bytes(*b"IPCKQUE2");
/// How often a waiter looks for dead processes that block it.
const CHECK_EVERY: Duration = Duration::from_millis(50);
/// Spins before a blocking waiter starts giving its CPU away: a peer on another CPU
/// answers within them, a peer on this CPU cannot run while they last, so they are few.
const SPINS: u32 = 20;
/// After its spins, how many times a blocking waiter gives its CPU away (`sched_yield`)
/// before it sleeps: a peer on this CPU runs at once, and a producer behind a full queue
/// lets the consumer run instead of sleeping, which would make every get that frees a
/// slot pay a wake-up system call.
const YIELDS: u32 = 40;
/// How stale a consumer's knowledge of whether sender processes live may be, in ms.
const LIVENESS_EVERY: u64 = 10;
/// Spinning, the clock is read (for the deadline, for the senders' liveness) once in this
/// many rounds: a round is tens of nanoseconds, a clock read about as much.
const CLOCK_EVERY: u32 = 64;

/// Whether a waiter that has waited `waited` rounds should look for dead processes that
/// block it (a system call and a `/proc` read): only once it is about to sleep, or every
/// few thousand spins in spin mode.
fn due(waited: u32, spin: bool) -> bool {
    if spin {
        waited % 4096 == 4095
    } else {
        waited >= SPINS
    }
}

/// Milliseconds since this process first asked.
fn epoch_millis() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

pub(super) fn prev_power_of_two(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        1 << (usize::BITS - 1 - n.leading_zeros())
    }
}

/// A failure of the segment underneath, with ipckit-shmem's error as its source.
pub(super) fn shm(e: ipckit_shmem::Error) -> Error {
    Error::SharedMemory(Box::new(e))
}

/// A handle on a queue segment: the shared state plus this process's view of its layout.
#[derive(Debug)]
pub(crate) struct RawQueue {
    seg: Segment,
    capacity: u64,
    slot_size: usize,
    max_message: usize,
    pid: u32,
    /// When this handle last asked whether sender processes live (`epoch_millis`; 0: never).
    checked_at: AtomicU64,
    /// What it learnt.
    finished: AtomicBool,
    /// A descriptor of the segment through which the locks of senders on their way to a
    /// child are seen; opened the first time one is.
    probe: OnceLock<Option<OwnedFd>>,
}

impl RawQueue {
    pub(crate) fn create(opts: QueueOptions, named: bool) -> Result<Self> {
        let slots = opts.slots()?;
        let len = SLOTS + slots * opts.slot_size();
        let seg = if named {
            Segment::create_named(len)
        } else {
            Segment::create(len)
        }
        .map_err(shm)?;
        let h = sys::header(&seg);
        h.capacity.store(slots as u64, Ordering::Relaxed);
        h.slot_size
            .store(opts.slot_size() as u64, Ordering::Relaxed);
        h.max_message
            .store(opts.max_message as u64, Ordering::Relaxed);
        // Pairs with the Acquire load in `from_segment`: an opener that sees the magic sees
        // the layout.
        h.magic.store(MAGIC, Ordering::Release);
        Self::from_segment(seg)
    }

    pub(crate) fn from_segment(seg: Segment) -> Result<Self> {
        let bad = |why: &str| Error::NotA {
            expected: "an ipckit queue",
            name: seg.name().unwrap_or("an anonymous segment").to_string(),
            reason: why.to_string(),
        };
        if seg.len() < SLOTS {
            return Err(bad("too short"));
        }
        let h = sys::header(&seg);
        if h.magic.load(Ordering::Acquire) != MAGIC {
            return Err(bad("no queue header"));
        }
        let capacity = h.capacity.load(Ordering::Relaxed);
        let slot_size = h.slot_size.load(Ordering::Relaxed) as usize;
        let max_message = h.max_message.load(Ordering::Relaxed) as usize;
        if !capacity.is_power_of_two()
            || slot_size % 64 != 0
            || SLOTS + capacity as usize * slot_size > seg.len()
        {
            return Err(bad("inconsistent layout"));
        }
        Ok(RawQueue {
            seg,
            capacity,
            slot_size,
            max_message,
            pid: std::process::id(),
            checked_at: AtomicU64::new(0),
            finished: AtomicBool::new(false),
            probe: OnceLock::new(),
        })
    }

    pub(crate) fn open(name: &str) -> Result<Self> {
        Self::from_segment(Segment::open(name).map_err(shm)?)
    }

    pub(crate) fn try_clone(&self) -> Result<Self> {
        Self::from_segment(self.seg.try_clone().map_err(shm)?)
    }

    pub(crate) fn segment(&self) -> &Segment {
        &self.seg
    }

    pub(crate) fn into_segment(self) -> Segment {
        self.seg
    }

    pub(crate) fn header(&self) -> &Header {
        sys::header(&self.seg)
    }

    fn index(&self, pos: u64) -> usize {
        (pos & (self.capacity - 1)) as usize
    }

    pub(crate) fn max_message(&self) -> usize {
        self.max_message
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Messages in the queue now (an estimate while others put and get).
    pub(crate) fn len(&self) -> usize {
        let h = self.header();
        let tail = h.tail.0.load(Ordering::Acquire);
        let head = h.head.0.load(Ordering::Acquire);
        tail.saturating_sub(head).min(self.capacity) as usize
    }

    /// Puts one message; waits for room until `deadline`.
    pub(crate) fn put(&self, msg: &[u8], deadline: Deadline, spin: bool) -> Result<()> {
        if msg.len() > self.max_message {
            return Err(Error::TooLarge {
                len: msg.len() as u64,
                max: self.max_message,
            });
        }
        let h = self.header();
        let mut waited = 0u32;
        loop {
            // Whether a slot held up by a dead process is looked into: before answering
            // `Full`, or before sleeping; never on the fast path.
            let check = !deadline.is_blocking() || due(waited, spin);
            match slots::put(self, self.pid, msg, check)? {
                Step::Done => return Ok(()),
                Step::Closed => return Err(Error::Disconnected),
                Step::Blocked { pos, seen } => {
                    if !deadline.is_blocking() {
                        return Err(Error::Timeout);
                    }
                    let slot = sys::slot(&self.seg, self.slot_size, self.index(pos));
                    self.wait(&h.not_full.0, &mut waited, deadline, spin, || {
                        !h.senders.is_closed() && slot.state.load(Ordering::Acquire) == seen
                    })?;
                }
                Step::Busy => self.wait(&h.not_full.0, &mut waited, deadline, spin, || false)?,
                // Only the model's processes are stopped.
                #[cfg(loom)]
                Step::Stopped => return Err(Error::Timeout),
            }
        }
    }

    /// Gets one message into `out`; waits for one until `deadline`.
    pub(crate) fn get(&self, out: &mut Vec<u8>, deadline: Deadline, spin: bool) -> Result<()> {
        let h = self.header();
        let mut waited = 0u32;
        loop {
            let check = !deadline.is_blocking() || due(waited, spin);
            match slots::get(self, self.pid, out, check)? {
                Step::Done => return Ok(()),
                Step::Blocked { pos, seen } => {
                    // Nothing at the head. Is anything coming? (Asked at once, then while
                    // spinning only now and then: the answer reads the clock.)
                    let ask = !deadline.is_blocking() || waited % CLOCK_EVERY == 0;
                    if ask && self.no_more_coming(pos, seen) {
                        return Err(Error::Disconnected);
                    }
                    if !deadline.is_blocking() {
                        return Err(Error::Timeout);
                    }
                    let slot = sys::slot(&self.seg, self.slot_size, self.index(pos));
                    self.wait(&h.not_empty.0, &mut waited, deadline, spin, || {
                        slot.state.load(Ordering::Acquire) == seen
                    })?;
                }
                Step::Closed | Step::Busy => {
                    self.wait(&h.not_empty.0, &mut waited, deadline, spin, || false)?;
                }
                // Only the model's processes are stopped.
                #[cfg(loom)]
                Step::Stopped => return Err(Error::Timeout),
            }
        }
    }

    /// Whether a consumer that found position `pos` empty (its slot in state `seen`) will
    /// never get more: the queue is closed, or every sender is gone, and nothing was put
    /// meanwhile.
    fn no_more_coming(&self, pos: u64, seen: u64) -> bool {
        let h = self.header();
        // Recheck after deciding: a put that raced with the check must not be missed.
        self.senders_finished()
            && h.tail.0.load(Ordering::Acquire) <= pos
            && sys::slot(&self.seg, self.slot_size, self.index(pos))
                .state
                .load(Ordering::Acquire)
                == seen
    }

    /// Whether every sender is gone (or the queue closed), asking the system whether sender
    /// processes live at most every `LIVENESS_EVERY`: that takes microseconds, and an
    /// empty queue is polled far more often than that.
    fn senders_finished(&self) -> bool {
        let h = self.header();
        if h.senders.is_closed() {
            return true;
        }
        let now = epoch_millis();
        let last = self.checked_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) < LIVENESS_EVERY && last != 0 {
            return self.finished.load(Ordering::Relaxed);
        }
        let finished = h.senders.finished(|| self.probe());
        self.finished.store(finished, Ordering::Relaxed);
        self.checked_at.store(now.max(1), Ordering::Relaxed);
        finished
    }

    /// A descriptor of the segment, for seeing hand-over locks (see `senders`).
    fn probe(&self) -> Option<BorrowedFd<'_>> {
        self.probe
            .get_or_init(|| {
                let h = self.seg.try_clone().ok()?.into_handoff();
                crate::senders::reopen(&h).ok()
            })
            .as_ref()
            .map(AsFd::as_fd)
    }

    /// Waits once: a few spins, then a sleep of at most `CHECK_EVERY` while `blocked()`.
    fn wait(
        &self,
        notify: &ipckit_shmem::Notify,
        waited: &mut u32,
        deadline: Deadline,
        spin: bool,
        blocked: impl FnMut() -> bool,
    ) -> Result<()> {
        *waited = waited.saturating_add(1);
        if spin || *waited < SPINS {
            if *waited % CLOCK_EVERY == 0 && deadline.has_passed() {
                return Err(Error::Timeout);
            }
            std::hint::spin_loop();
            if spin && *waited % 1024 == 0 {
                std::thread::yield_now();
            }
            return Ok(());
        }
        if deadline.has_passed() {
            return Err(Error::Timeout);
        }
        if *waited < SPINS + YIELDS {
            std::thread::yield_now();
            return Ok(());
        }
        let nap = deadline
            .remaining()
            .map_or(CHECK_EVERY, |d| d.min(CHECK_EVERY));
        notify.sleep_while(Some(nap), blocked);
        Ok(())
    }

    /// Ends the queue: puts fail, gets drain what is there, then say `Disconnected`.
    pub(crate) fn close(&self) {
        let h = self.header();
        h.senders.close();
        h.not_empty.0.notify();
        h.not_full.0.notify();
        tracing::debug!("queue closed");
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.header().senders.is_closed()
    }
}

impl SenderTable for RawQueue {
    fn senders(&self) -> &Senders {
        &self.header().senders
    }

    fn wake_receivers(&self) {
        self.header().not_empty.0.notify();
    }
}

/// One slot of the segment: its fixed part and where its bytes start.
pub(crate) struct ShmSlot<'a> {
    head: &'a SlotHead,
    seg: &'a Segment,
    data: usize,
}

impl slots::Slot for ShmSlot<'_> {
    #[inline]
    fn state(&self) -> &crate::sync::AtomicU64 {
        &self.head.state
    }

    #[inline]
    fn len(&self) -> &crate::sync::AtomicU32 {
        &self.head.len
    }

    #[inline]
    fn write(&self, msg: &[u8]) -> Result<()> {
        self.seg.write(self.data, msg).map_err(shm)
    }

    #[inline]
    fn read(&self, len: usize, out: &mut Vec<u8>) -> Result<()> {
        out.resize(len, 0);
        self.seg.read(self.data, out).map_err(shm)
    }
}

impl Ring for RawQueue {
    type Slot<'a> = ShmSlot<'a>;

    #[inline]
    fn capacity(&self) -> u64 {
        self.capacity
    }

    #[inline]
    fn tail(&self) -> &crate::sync::AtomicU64 {
        &self.header().tail.0
    }

    #[inline]
    fn head(&self) -> &crate::sync::AtomicU64 {
        &self.header().head.0
    }

    #[inline]
    fn slot(&self, pos: u64) -> ShmSlot<'_> {
        let index = self.index(pos);
        ShmSlot {
            head: sys::slot(&self.seg, self.slot_size, index),
            seg: &self.seg,
            data: SLOTS + index * self.slot_size + SLOT_HEAD,
        }
    }

    #[inline]
    fn is_closed(&self) -> bool {
        self.header().senders.is_closed()
    }

    fn is_alive(&self, pid: u32) -> bool {
        ipckit_core::is_alive(pid as i32)
    }

    #[inline]
    fn wake_getter(&self) {
        self.header().not_empty.0.notify_one();
    }

    #[inline]
    fn wake_putters(&self) {
        self.header().not_full.0.notify();
    }

    #[cfg(loom)]
    fn stop_here(&self) -> bool {
        false
    }
}
