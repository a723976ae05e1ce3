//! The byte queue in shared memory: slots claimed by compare-and-swap, each carrying the
//! pid of the process working on it, so that survivors can repair what a killed process
//! left half done.
//!
//! A slot's state word is `turn << 34 | kind << 32 | pid`, where `turn` counts the laps of
//! the ring (position / capacity) and `kind` is FREE (ready for the producer of `turn`),
//! WRITING, FULL or READING (by `pid`). A producer claims position `p` by turning
//! FREE(turn p) into WRITING, writes, then publishes FULL; a consumer turns FULL into
//! READING, copies, then frees the slot for the next lap. `tail` and `head` only say where
//! to look first: anyone who finds a position already claimed moves them on.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use ipckit_core::{Deadline, Error, Result};
use ipckit_shmem::Segment;

use super::{
    QueueOptions,
    sys::{self, Header, SLOT_HEAD, SLOTS, SlotHead},
};
use crate::senders::{SenderTable, Senders};

const MAGIC: u64 = u64::from_le_bytes(*b"IPCKQUE1");
const FREE: u64 = 0;
const WRITING: u64 = 1;
const FULL: u64 = 2;
const READING: u64 = 3;
const TURN_MASK: u64 = (1 << 30) - 1;
/// The length of a slot whose producer died before finishing it: consumers skip it.
const ABANDONED: u32 = u32::MAX;
/// How often a waiter looks for dead processes that block it.
const CHECK_EVERY: Duration = Duration::from_millis(50);
/// Spins before a waiter sleeps in the kernel.
const SPINS: u32 = 100;
/// How stale a consumer's knowledge of whether sender processes live may be, in ms.
const LIVENESS_EVERY: u64 = 10;

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

fn state(turn: u64, kind: u64, pid: u32) -> u64 {
    (turn & TURN_MASK) << 34 | kind << 32 | u64::from(pid)
}

fn turn_of(s: u64) -> u64 {
    s >> 34
}

fn kind_of(s: u64) -> u64 {
    (s >> 32) & 3
}

fn pid_of(s: u64) -> u32 {
    s as u32
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

    fn slot(&self, pos: u64) -> (&SlotHead, usize) {
        let index = (pos & (self.capacity - 1)) as usize;
        (
            sys::slot(&self.seg, self.slot_size, index),
            SLOTS + index * self.slot_size + SLOT_HEAD,
        )
    }

    fn turn(&self, pos: u64) -> u64 {
        (pos / self.capacity) & TURN_MASK
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

    /// Moves `cursor` on from `pos` if nobody has yet.
    fn advance(cursor: &AtomicU64, pos: u64) {
        let _ = cursor.compare_exchange(pos, pos + 1, Ordering::AcqRel, Ordering::Relaxed);
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
            if h.senders.is_closed() {
                return Err(Error::Disconnected);
            }
            let pos = h.tail.0.load(Ordering::Acquire);
            let turn = self.turn(pos);
            let (slot, data) = self.slot(pos);
            let s = slot.state.load(Ordering::Acquire);
            if turn_of(s) == turn {
                if kind_of(s) == FREE {
                    // Acquire pairs with the consumer's Release that freed the slot.
                    if slot
                        .state
                        .compare_exchange(
                            s,
                            state(turn, WRITING, self.pid),
                            Ordering::Acquire,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                    {
                        Self::advance(&h.tail.0, pos);
                        slot.len.store(msg.len() as u32, Ordering::Relaxed);
                        self.seg.write(data, msg).map_err(shm)?;
                        // Pairs with the consumer's Acquire load of the state.
                        slot.state.store(state(turn, FULL, 0), Ordering::Release);
                        h.not_empty.0.notify_one();
                        return Ok(());
                    }
                } else {
                    // Claimed already: move the tail on and try the next position.
                    Self::advance(&h.tail.0, pos);
                }
                continue;
            }
            if turn_of(s) != turn.wrapping_sub(1) & TURN_MASK {
                // The tail we read is stale.
                continue;
            }
            // The slot still holds (or is being emptied of) the message of the lap before:
            // the queue is full here. A consumer that died mid-get holds it up: free it.
            if kind_of(s) == READING
                && due(waited, spin)
                && !ipckit_core::is_alive(pid_of(s) as i32)
            {
                if slot
                    .state
                    .compare_exchange(s, state(turn, FREE, 0), Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    tracing::warn!(
                        pid = pid_of(s),
                        "queue: consumer died mid-get; its message is lost with it"
                    );
                    Self::advance(&h.head.0, pos - self.capacity);
                    h.not_full.0.notify();
                }
                continue;
            }
            if !deadline.is_blocking() {
                return Err(Error::Timeout);
            }
            self.wait(&h.not_full.0, &mut waited, deadline, spin, || {
                !h.senders.is_closed() && slot.state.load(Ordering::Acquire) == s
            })?;
        }
    }

    /// Gets one message into `out`; waits for one until `deadline`.
    pub(crate) fn get(&self, out: &mut Vec<u8>, deadline: Deadline, spin: bool) -> Result<()> {
        let h = self.header();
        let mut waited = 0u32;
        loop {
            let pos = h.head.0.load(Ordering::Acquire);
            let turn = self.turn(pos);
            let (slot, data) = self.slot(pos);
            let s = slot.state.load(Ordering::Acquire);
            if turn_of(s) == turn {
                match kind_of(s) {
                    FULL => {
                        // Acquire pairs with the producer's Release store of FULL.
                        if slot
                            .state
                            .compare_exchange(
                                s,
                                state(turn, READING, self.pid),
                                Ordering::Acquire,
                                Ordering::Relaxed,
                            )
                            .is_err()
                        {
                            continue;
                        }
                        Self::advance(&h.head.0, pos);
                        let len = slot.len.load(Ordering::Relaxed);
                        if len != ABANDONED {
                            out.resize(len as usize, 0);
                            self.seg.read(data, out).map_err(shm)?;
                        }
                        // Pairs with the producer's Acquire of the next lap's claim.
                        slot.state
                            .store(state(turn + 1, FREE, 0), Ordering::Release);
                        h.not_full.0.notify();
                        if len != ABANDONED {
                            return Ok(());
                        }
                        continue;
                    }
                    WRITING if due(waited, spin) && !ipckit_core::is_alive(pid_of(s) as i32) => {
                        self.abandon(slot, s, pos);
                        continue;
                    }
                    // Nothing at the head. Is anything coming?
                    FREE if self.no_more_coming(pos) => return Err(Error::Disconnected),
                    // READING: another consumer has this one; WRITING: a live producer is on it.
                    READING => {
                        Self::advance(&h.head.0, pos);
                        continue;
                    }
                    _ => {}
                }
            } else if turn_of(s) == (turn + 1) & TURN_MASK {
                // Already got and freed: the head we read is stale.
                Self::advance(&h.head.0, pos);
                continue;
            } else {
                continue;
            }
            if !deadline.is_blocking() {
                return Err(Error::Timeout);
            }
            self.wait(&h.not_empty.0, &mut waited, deadline, spin, || {
                slot.state.load(Ordering::Acquire) == s
            })?;
        }
    }

    /// A producer died between claiming position `pos` and publishing it: mark the slot
    /// abandoned so consumers skip it (its `put` never returned: nothing it promised is lost).
    fn abandon(&self, slot: &SlotHead, seen: u64, pos: u64) {
        let turn = self.turn(pos);
        // Take the claim over first, so only one survivor repairs it.
        if slot
            .state
            .compare_exchange(
                seen,
                state(turn, WRITING, self.pid),
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            tracing::warn!(
                pid = pid_of(seen),
                "queue: producer died mid-put; its message is lost with it"
            );
            slot.len.store(ABANDONED, Ordering::Relaxed);
            slot.state.store(state(turn, FULL, 0), Ordering::Release);
            Self::advance(&self.header().tail.0, pos);
        }
    }

    /// Whether a consumer that found position `pos` empty will never get more: the queue is
    /// closed, or every sender is gone, and nothing was put meanwhile.
    fn no_more_coming(&self, pos: u64) -> bool {
        let h = self.header();
        // Recheck after deciding: a put that raced with the check must not be missed.
        self.senders_finished() && h.tail.0.load(Ordering::Acquire) <= pos && {
            let (slot, _) = self.slot(pos);
            kind_of(slot.state.load(Ordering::Acquire)) == FREE
        }
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
        let finished = h.senders.finished();
        self.finished.store(finished, Ordering::Relaxed);
        self.checked_at.store(now.max(1), Ordering::Relaxed);
        finished
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
        if deadline.has_passed() {
            return Err(Error::Timeout);
        }
        *waited = waited.saturating_add(1);
        if spin || *waited < SPINS {
            std::hint::spin_loop();
            if spin && *waited % 1024 == 0 {
                std::thread::yield_now();
            }
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
