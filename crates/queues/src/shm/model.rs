//! A model of the slot protocol for loom (built only with `--cfg loom`): the ring on the
//! heap, made of loom's atomics, processes as threads with pids, and a process that is
//! killed for good at a chosen step, as SIGKILL would, leaving its pid marked dead.
//! `tests/loom.rs` explores every interleaving of a few of them.

use std::cell::Cell;

use ipckit_core::Result;
use loom::sync::{
    Condvar, Mutex,
    atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
};

use super::slots::{self, Ring, Slot, Step};

/// The most processes a model has (pids 1 to 7).
const PIDS: usize = 8;

/// One slot: its state, its length, and its message, a `u64` written and read with
/// `Relaxed` (so the protocol's own orderings must make it visible).
#[derive(Debug)]
pub struct ModelSlot {
    state: AtomicU64,
    len: AtomicU32,
    payload: AtomicU64,
}

/// A queue of `capacity` slots shared by the model's threads.
#[derive(Debug)]
pub struct Model {
    capacity: u64,
    tail: AtomicU64,
    head: AtomicU64,
    slots: Vec<ModelSlot>,
    dead: Vec<AtomicBool>,
    /// Counts the wake-ups the protocol gives (and deaths, which a real waiter learns of
    /// within its next timed check): a waiter sleeps until it changes.
    progress: Mutex<u64>,
    changed: Condvar,
}

impl Model {
    /// An empty queue of `capacity` slots (a power of two).
    pub fn new(capacity: u64) -> Self {
        Model {
            capacity,
            tail: AtomicU64::new(0),
            head: AtomicU64::new(0),
            slots: (0..capacity)
                .map(|_| ModelSlot {
                    state: AtomicU64::new(0),
                    len: AtomicU32::new(0),
                    payload: AtomicU64::new(0),
                })
                .collect(),
            dead: (0..PIDS).map(|_| AtomicBool::new(false)).collect(),
            progress: Mutex::new(0),
            changed: Condvar::new(),
        }
    }

    /// How many wake-ups there have been: read before a call, and hand to
    /// [`sleep`](Model::sleep) if it was blocked.
    pub fn progress(&self) -> u64 {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps until a wake-up after `seen` (see [`progress`](Model::progress)), as a
    /// blocked waiter does. If no one can wake it, loom reports the deadlock.
    pub fn sleep(&self, seen: u64) {
        let mut now = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        while *now == seen {
            now = self.changed.wait(now).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Wakes every sleeper: something they wait for may have happened.
    pub fn wake(&self) {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.changed.notify_all();
    }

    /// Where the cursors are: `(head, tail)`.
    pub fn cursors(&self) -> (u64, u64) {
        (
            self.head.load(Ordering::SeqCst),
            self.tail.load(Ordering::SeqCst),
        )
    }
}

/// What one call came to, for the model's threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Put, or got this message.
    Done(Option<u64>),
    /// Full (put) or empty (get) now.
    Blocked,
    /// Others kept winning: try again.
    Busy,
    /// This process was killed during the call.
    Killed,
}

/// One process of the model: a pid, and the step (counted over all its calls) at which it
/// is killed, if any.
#[derive(Debug)]
pub struct Process<'a> {
    model: &'a Model,
    pid: u32,
    kill_at: Option<usize>,
    steps: Cell<usize>,
}

impl<'a> Process<'a> {
    /// Process `pid` (1 to 7) of `model`, killed at its `kill_at`-th kill point if given.
    pub fn new(model: &'a Model, pid: u32, kill_at: Option<usize>) -> Self {
        Process {
            model,
            pid,
            kill_at,
            steps: Cell::new(0),
        }
    }

    /// Whether this process was killed.
    pub fn is_killed(&self) -> bool {
        self.model.dead[self.pid as usize].load(Ordering::SeqCst)
    }

    /// Puts message `id`. With `check`, slots held by dead processes are repaired.
    pub fn put(&self, id: u64, check: bool) -> Outcome {
        if self.is_killed() {
            return Outcome::Killed;
        }
        outcome(slots::put(self, self.pid, &id.to_le_bytes(), check), None)
    }

    /// Gets a message. With `check`, slots held by dead processes are repaired.
    pub fn get(&self, check: bool) -> Outcome {
        if self.is_killed() {
            return Outcome::Killed;
        }
        let mut out = Vec::new();
        let r = slots::get(self, self.pid, &mut out, check);
        let id = <[u8; 8]>::try_from(out.as_slice())
            .map(u64::from_le_bytes)
            .ok();
        outcome(r, id)
    }
}

fn outcome(r: Result<Step>, id: Option<u64>) -> Outcome {
    match r {
        Ok(Step::Done) => Outcome::Done(id),
        Ok(Step::Blocked { .. } | Step::Closed) => Outcome::Blocked,
        Ok(Step::Busy) | Err(_) => Outcome::Busy,
        Ok(Step::Stopped) => Outcome::Killed,
    }
}

impl Slot for &ModelSlot {
    fn state(&self) -> &AtomicU64 {
        &self.state
    }

    fn len(&self) -> &AtomicU32 {
        &self.len
    }

    fn write(&self, msg: &[u8]) -> Result<()> {
        let bytes = <[u8; 8]>::try_from(msg).unwrap_or_default();
        self.payload
            .store(u64::from_le_bytes(bytes), Ordering::Relaxed);
        Ok(())
    }

    fn read(&self, len: usize, out: &mut Vec<u8>) -> Result<()> {
        out.clear();
        out.extend_from_slice(&self.payload.load(Ordering::Relaxed).to_le_bytes()[..len.min(8)]);
        Ok(())
    }
}

impl Ring for Process<'_> {
    type Slot<'b>
        = &'b ModelSlot
    where
        Self: 'b;

    fn capacity(&self) -> u64 {
        self.model.capacity
    }

    fn tail(&self) -> &AtomicU64 {
        &self.model.tail
    }

    fn head(&self) -> &AtomicU64 {
        &self.model.head
    }

    fn slot(&self, pos: u64) -> &ModelSlot {
        &self.model.slots[(pos % self.model.capacity) as usize]
    }

    fn is_closed(&self) -> bool {
        false
    }

    fn is_alive(&self, pid: u32) -> bool {
        !self.model.dead[pid as usize].load(Ordering::SeqCst)
    }

    fn wake_getter(&self) {
        self.model.wake();
    }

    fn wake_putters(&self) {
        self.model.wake();
    }

    fn stop_here(&self) -> bool {
        let step = self.steps.get() + 1;
        self.steps.set(step);
        if self.kill_at == Some(step) {
            self.model.dead[self.pid as usize].store(true, Ordering::SeqCst);
            // Waiters check for dead processes before each sleep, and at least every 50 ms.
            self.model.wake();
            return true;
        }
        false
    }
}
