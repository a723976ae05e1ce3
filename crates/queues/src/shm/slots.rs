//! The slot protocol of the shared-memory queue, and how it survives a process killed at
//! any step of it.
//!
//! The queue is a ring of `capacity` slots (a power of two) and two cursors, `tail` (next
//! position to put at) and `head` (next position to get from), which only say where to
//! look first: anyone who finds the position under a cursor already taken moves it on.
//! Position `p` lives in slot `p % capacity`, on lap `turn = p / capacity`.
//!
//! A slot's state word is `turn << 34 | kind << 32 | pid`:
//!
//! | kind | meaning | who leaves it |
//! |---|---|---|
//! | FREE(t) | ready for the producer of lap `t` | a consumer that got lap `t - 1`, or a repair |
//! | WRITING(t, pid) | `pid` is copying the message of lap `t` in | a producer's claim |
//! | FULL(t) | the message of lap `t` is there | a producer's publish |
//! | READING(t, pid) | `pid` is copying the message of lap `t` out | a consumer's claim |
//!
//! A put turns FREE(t) into WRITING(t, me) by compare-and-swap, moves the tail on, copies,
//! and publishes FULL(t) (Release, so a consumer's Acquire sees the bytes). A get turns
//! FULL(t) into READING(t, me), moves the head on, copies, and frees the slot for the
//! next lap as FREE(t + 1).
//!
//! **A process killed mid-step** leaves its pid in the slot it worked on. Whoever meets
//! such a slot next and finds it stuck (a put that finds its slot still held by the lap
//! before, a get that finds its slot being written, or still being read from the lap
//! before) asks whether that pid lives, and if not repairs the slot with one
//! compare-and-swap from exactly the state it saw, so one survivor repairs it and a
//! survivor killed mid-repair leaves nothing new to repair:
//!
//! - WRITING(t, dead) becomes FREE(t + 1): the slot reads as got. The dead producer's
//!   `put` never returned, so nothing it promised is lost.
//! - READING(t, dead) becomes FREE(t + 1): the dead consumer's message is lost with it
//!   (its `get` never returned).
//!
//! Blocking calls ask about liveness only once they are about to sleep (never on the fast
//! path); non-blocking calls ask before they answer `Empty` or `Full`. Every loop here ends
//! in a bounded number of rounds: it retries only after another process moved a cursor or
//! won a slot (progress), and after [`RETRIES`] such rounds reports [`Step::Busy`], so its
//! caller checks its deadline.
//!
//! The protocol is written over [`Ring`], so that the same code runs on shared memory and,
//! under `--cfg loom`, on a model in which one thread stands for a process that is killed
//! at any step (`tests/loom.rs`).

use std::sync::atomic::Ordering;

use ipckit_core::Result;

use crate::sync::{AtomicU32, AtomicU64};

pub(crate) const FREE: u64 = 0;
pub(crate) const WRITING: u64 = 1;
pub(crate) const FULL: u64 = 2;
pub(crate) const READING: u64 = 3;
const TURN_MASK: u64 = (1 << 30) - 1;
/// How many times one call retries after losing a race before it reports [`Step::Busy`].
#[cfg(not(loom))]
pub(crate) const RETRIES: u32 = 1 << 12;
/// In the model, where every retry is a branch to explore, fewer.
#[cfg(loom)]
pub(crate) const RETRIES: u32 = 4;

pub(crate) fn state(turn: u64, kind: u64, pid: u32) -> u64 {
    (turn & TURN_MASK) << 34 | kind << 32 | u64::from(pid)
}

pub(crate) fn turn_of(s: u64) -> u64 {
    s >> 34
}

pub(crate) fn kind_of(s: u64) -> u64 {
    (s >> 32) & 3
}

pub(crate) fn pid_of(s: u64) -> u32 {
    s as u32
}

fn next(turn: u64) -> u64 {
    (turn + 1) & TURN_MASK
}

fn prev(turn: u64) -> u64 {
    turn.wrapping_sub(1) & TURN_MASK
}

/// One slot: its state word, the length of its message, and its bytes.
pub(crate) trait Slot {
    fn state(&self) -> &AtomicU64;
    fn len(&self) -> &AtomicU32;
    /// Copies `msg` in.
    fn write(&self, msg: &[u8]) -> Result<()>;
    /// Copies the `len` bytes of the message out into `out`.
    fn read(&self, len: usize, out: &mut Vec<u8>) -> Result<()>;
}

/// What the protocol needs of a queue: its cursors and slots, whether it was closed, how to
/// wake waiters, and whether a process lives.
pub(crate) trait Ring {
    type Slot<'a>: Slot
    where
        Self: 'a;
    /// The number of slots, a power of two.
    fn capacity(&self) -> u64;
    fn tail(&self) -> &AtomicU64;
    fn head(&self) -> &AtomicU64;
    fn slot(&self, pos: u64) -> Self::Slot<'_>;
    fn is_closed(&self) -> bool;
    /// Whether process `pid` is running (a zombie is not).
    fn is_alive(&self, pid: u32) -> bool;
    /// A message was published: wake a consumer.
    fn wake_getter(&self);
    /// A slot was freed: wake producers.
    fn wake_putters(&self);
    /// In the model only: whether the caller is killed here and stops for good.
    #[cfg(loom)]
    fn stop_here(&self) -> bool;
}

/// What one call of [`put`] or [`get`] came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// The message was put, or got.
    Done,
    /// Nothing to do at position `pos` now, whose slot was in state `seen`: the queue is
    /// full there (put) or empty (get). A waiter sleeps until that slot changes.
    Blocked { pos: u64, seen: u64 },
    /// The queue was closed (put only).
    Closed,
    /// Others kept winning the race for [`RETRIES`] rounds: check the deadline, try again.
    Busy,
    /// In the model: the caller was killed here.
    #[cfg(loom)]
    Stopped,
}

/// A point at which the model may kill the caller.
macro_rules! kill_point {
    ($ring:expr) => {
        #[cfg(loom)]
        if $ring.stop_here() {
            return Ok(Step::Stopped);
        }
    };
}

/// Moves `cursor` on from `pos` if nobody has yet.
#[inline]
fn advance(cursor: &AtomicU64, pos: u64) {
    let _ = cursor.compare_exchange(pos, pos + 1, Ordering::AcqRel, Ordering::Relaxed);
}

/// Repairs the slot at `pos`, seen in state `seen` and held by a dead process: frees it
/// for lap `free_for`. One compare-and-swap from exactly what was seen, so only one
/// survivor repairs it.
fn repair<R: Ring>(ring: &R, pos: u64, seen: u64, free_for: u64) -> bool {
    let fixed = ring
        .slot(pos)
        .state()
        .compare_exchange(
            seen,
            state(free_for, FREE, 0),
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .is_ok();
    if fixed {
        let what = if kind_of(seen) == WRITING {
            "producer died mid-put; its message was never put"
        } else {
            "consumer died mid-get; its message is lost with it"
        };
        tracing::warn!(pid = pid_of(seen), pos, "queue: {what}");
        ring.wake_putters();
    }
    fixed
}

/// Puts `msg` as process `me` if there is room now. With `check`, a slot held up by a dead
/// process is repaired on the way; without, it reads as full.
#[inline]
pub(crate) fn put<R: Ring>(ring: &R, me: u32, msg: &[u8], check: bool) -> Result<Step> {
    let cap = ring.capacity();
    for _ in 0..RETRIES {
        if ring.is_closed() {
            return Ok(Step::Closed);
        }
        let pos = ring.tail().load(Ordering::Acquire);
        let turn = (pos / cap) & TURN_MASK;
        let slot = ring.slot(pos);
        let s = slot.state().load(Ordering::Acquire);
        if turn_of(s) == turn {
            if kind_of(s) != FREE {
                // Claimed already: move the tail on and try the next position.
                advance(ring.tail(), pos);
                continue;
            }
            // Acquire pairs with the Release that freed the slot.
            if slot
                .state()
                .compare_exchange(
                    s,
                    state(turn, WRITING, me),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_err()
            {
                continue;
            }
            kill_point!(ring);
            advance(ring.tail(), pos);
            kill_point!(ring);
            slot.len().store(msg.len() as u32, Ordering::Relaxed);
            if let Err(e) = slot.write(msg) {
                // Give the claim up as a slot already got: consumers pass over it.
                slot.state()
                    .store(state(next(turn), FREE, 0), Ordering::Release);
                ring.wake_putters();
                return Err(e);
            }
            kill_point!(ring);
            // Pairs with the consumer's Acquire claim.
            slot.state().store(state(turn, FULL, 0), Ordering::Release);
            ring.wake_getter();
            return Ok(Step::Done);
        }
        if turn_of(s) == prev(turn) {
            // The slot still holds, or is being emptied of, the message of the lap before
            // (or a producer of that lap is still writing it): full here, unless whoever
            // holds it is dead.
            if check && matches!(kind_of(s), READING | WRITING) && !ring.is_alive(pid_of(s)) {
                repair(ring, pos, s, turn);
                kill_point!(ring);
                continue;
            }
            return Ok(Step::Blocked { pos, seen: s });
        }
        if turn_of(s) == next(turn) {
            // Passed over already (a dead producer's claim, repaired by a consumer that
            // may itself have died before moving the tail on): move it on.
            advance(ring.tail(), pos);
        }
        // Otherwise the tail we read is stale (others moved it on meanwhile).
    }
    Ok(Step::Busy)
}

/// Gets one message into `out` as process `me` if there is one now. With `check`, a slot
/// held up by a dead process is repaired on the way; without, it reads as empty.
#[inline]
pub(crate) fn get<R: Ring>(ring: &R, me: u32, out: &mut Vec<u8>, check: bool) -> Result<Step> {
    let cap = ring.capacity();
    for _ in 0..RETRIES {
        let pos = ring.head().load(Ordering::Acquire);
        let turn = (pos / cap) & TURN_MASK;
        let slot = ring.slot(pos);
        let s = slot.state().load(Ordering::Acquire);
        if turn_of(s) == turn {
            match kind_of(s) {
                FULL => {
                    // Acquire pairs with the producer's Release store of FULL.
                    if slot
                        .state()
                        .compare_exchange(
                            s,
                            state(turn, READING, me),
                            Ordering::Acquire,
                            Ordering::Relaxed,
                        )
                        .is_err()
                    {
                        continue;
                    }
                    kill_point!(ring);
                    advance(ring.head(), pos);
                    kill_point!(ring);
                    let len = slot.len().load(Ordering::Relaxed) as usize;
                    let read = slot.read(len, out);
                    kill_point!(ring);
                    // Pairs with the Acquire of the next lap's producer.
                    slot.state()
                        .store(state(next(turn), FREE, 0), Ordering::Release);
                    ring.wake_putters();
                    read?;
                    return Ok(Step::Done);
                }
                // Another consumer has this one: look at the next.
                READING => {
                    advance(ring.head(), pos);
                    continue;
                }
                WRITING if check && !ring.is_alive(pid_of(s)) => {
                    // Passed over as got; the tail had been moved past it (or is now).
                    if repair(ring, pos, s, next(turn)) {
                        advance(ring.tail(), pos);
                    }
                    kill_point!(ring);
                    continue;
                }
                // FREE: nothing yet; WRITING: a live producer is on it.
                _ => return Ok(Step::Blocked { pos, seen: s }),
            }
        }
        if turn_of(s) == next(turn) {
            // Got and freed already: the head we read is stale.
            advance(ring.head(), pos);
            continue;
        }
        if turn_of(s) == prev(turn) {
            // The message of the lap before is still being read out: empty here (no
            // producer can claim it yet), unless its consumer is dead.
            if check && kind_of(s) == READING && !ring.is_alive(pid_of(s)) {
                repair(ring, pos, s, turn);
                kill_point!(ring);
                continue;
            }
            if ring.head().load(Ordering::Acquire) == pos {
                return Ok(Step::Blocked { pos, seen: s });
            }
        }
        // Otherwise the head we read is stale (others moved it on meanwhile).
    }
    Ok(Step::Busy)
}
