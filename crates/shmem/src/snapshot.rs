//! Snapshots: a single-writer cell that never shows a torn value (`SeqLock`), and a ring
//! of readings that many readers follow at their own pace (`Ring`).

use std::{
    fmt,
    sync::atomic::{AtomicU32, AtomicU64, Ordering, fence},
    time::Duration,
};

use bytemuck::Pod;
use ipckit_core::Deadline;

use crate::{
    Error, Placeable, Result,
    shared::constructors,
    sys::{RacyCell, futex_wake, sleep_counted, wake_sleepers},
};

/// A value that one writer publishes and any number of readers, in any process, read
/// whole: a reader never sees half of one update and half of another.
///
/// Readers do not block the writer (a sequence lock): a read that overlaps a write is
/// retried, so a writer that publishes back to back, faster than a reader can copy the
/// value, starves that reader. Writers are serialised among themselves.
///
/// ```
/// use ipckit_shmem::SeqLock;
///
/// let position = SeqLock::create([0.0f64; 3])?; // a Shared<SeqLock<[f64; 3]>>
/// position.publish(&[1.0, 2.0, 3.0]);
/// assert_eq!(position.load(), [1.0, 2.0, 3.0]);
/// # Ok::<(), ipckit_shmem::Error>(())
/// ```
///
/// - **Create** with [`SeqLock::create`], `create_named`, `create_at`; `open` by name.
/// - **Share with a child**: `Command::new(..).handle("position", position.try_clone()?)`;
///   the child takes it with `ctx.handle::<Shared<SeqLock<T>>>("position")?`.
/// - **A dead peer**: a reader that dies leaves nothing behind. A writer that dies between
///   publishes leaves the last value whole. One killed in the middle of a publish (a copy's
///   time) leaves the sequence odd: later `read`s and `publish`es spin, and
///   [`wait_newer`](SeqLock::wait_newer) times out. Where writers may be killed, use a
///   [`Ring`], which notices a dead writer.
#[repr(C)]
pub struct SeqLock<T> {
    seq: AtomicU32,
    /// Readers asleep in `wait_newer`: `publish` makes no system call when there are none.
    sleepers: AtomicU32,
    value: RacyCell<T>,
}

// SAFETY: atomics and a racy cell, each keeping the contract (the cell's copies are
// validated by the sequence); `init` writes the first value.
unsafe impl<T: Pod + Send> Placeable for SeqLock<T> {
    type Init = T;

    unsafe fn init(this: *mut Self, init: T) -> Result<()> {
        // SAFETY: the caller's promise, for the field within its memory.
        unsafe { RacyCell::init(&raw mut (*this).value, init) }
    }
}

constructors!(
    /// A sequence lock holding `value`, in an anonymous segment.
    [T: Pod + Send] SeqLock<T>, T, |value| value
);

impl<T: Pod> SeqLock<T> {
    /// Publishes a new value and wakes readers waiting for one.
    pub fn publish(&self, value: &T) {
        // Take the write side: an even sequence made odd by us alone.
        let mut seq = self.seq.load(Ordering::Relaxed);
        loop {
            if seq % 2 == 1 {
                std::hint::spin_loop();
                seq = self.seq.load(Ordering::Relaxed);
                continue;
            }
            match self.seq.compare_exchange_weak(
                seq,
                seq.wrapping_add(1),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(s) => seq = s,
            }
        }
        // Readers discard what they copy while the sequence is odd. `copy_in` starts with a
        // Release fence, ordering the odd sequence before the data.
        self.value.copy_in(value);
        // Pairs with the Acquire load of `read`: a reader that sees the new even sequence
        // sees the whole value.
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
        wake_sleepers(&self.seq, &self.sleepers);
    }

    /// The latest value and its version (which grows by 2 with each publish).
    pub fn read(&self) -> (T, u32) {
        loop {
            // Pairs with the Release store of `publish`.
            let before = self.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            // A concurrent write is detected below.
            let out = self.value.copy_out();
            // `copy_out` ends with an Acquire fence: the data loads happen before this load.
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == before {
                return (out, before);
            }
        }
    }

    /// The latest value.
    pub fn load(&self) -> T {
        self.read().0
    }

    /// Waits for a version newer than `seen`, at most `timeout`, sleeping in the kernel.
    ///
    /// # Errors
    /// [`Error::Timeout`] if nothing new was published in time.
    pub fn wait_newer(&self, seen: u32, timeout: Duration) -> Result<(T, u32)> {
        let deadline = Deadline::after(timeout);
        loop {
            let now = self.seq.load(Ordering::Acquire);
            if now != seen && now % 2 == 0 {
                return Ok(self.read());
            }
            match deadline.remaining() {
                Some(d) if d.is_zero() => return Err(Error::Timeout),
                left => {
                    sleep_counted(&self.seq, now, &self.sleepers, left);
                }
            }
        }
    }

    /// Waits for a version newer than `seen` by spinning, never sleeping: the lowest latency
    /// there is, at the cost of a busy core. At most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if nothing new was published in time.
    pub fn spin_newer(&self, seen: u32, timeout: Duration) -> Result<(T, u32)> {
        // The clock is read only once the wait is long, not on the fast path.
        let mut deadline = None;
        let mut spins = 0u32;
        loop {
            let now = self.seq.load(Ordering::Acquire);
            if now != seen && now % 2 == 0 {
                return Ok(self.read());
            }
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins % 1024 == 0
                && deadline
                    .get_or_insert_with(|| Deadline::after(timeout))
                    .has_passed()
            {
                return Err(Error::Timeout);
            }
        }
    }
}

impl<T> fmt::Debug for SeqLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeqLock")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

#[repr(C)]
struct Slot<T> {
    /// `2 * (index + 1)` once item `index` is complete here; odd while it is written.
    stamp: AtomicU64,
    value: RacyCell<T>,
}

/// A ring of the last `N` readings from one writer process, which any number of reader
/// processes follow, each at its own pace, with a [`RingReader`].
///
/// The writer never waits for readers: a reader that falls more than `N` items behind is
/// told how many it missed ([`Error::Lagged`]) and goes on from the oldest item still there.
/// The writer ends the stream with [`close`](Ring::close) (or by dying), and readers get
/// [`Error::Disconnected`] after the last item: no end marker, no "0.0 means empty" guess.
///
/// ```
/// use ipckit_shmem::{Ring, Shared};
/// use std::time::Duration;
///
/// let readings: Shared<Ring<f64, 64>> = Ring::create()?;
/// let mut monitor = readings.reader();
/// readings.push(&21.5);
/// readings.close();
/// assert_eq!(monitor.recv_timeout(Duration::from_secs(1))?, 21.5);
/// # Ok::<(), ipckit_shmem::Error>(())
/// ```
///
/// - **Create** with [`Ring::create`], `create_named`, `create_at`; `open` by name.
/// - **Share with a child**: `Command::new(..).handle("ring", ring.try_clone()?)`; the child
///   takes it with `ctx.handle::<Shared<Ring<T, N>>>("ring")?`.
/// - **A dead peer**: a writer that dies (SIGKILL included) ends the stream as `close`
///   does: readers drain what is there, then get `Disconnected` (within 100 ms). A reader
///   that dies leaves nothing behind.
#[repr(C)]
pub struct Ring<T, const N: usize> {
    /// Items published so far.
    head: AtomicU64,
    /// Bumped on every publish and on close: what readers sleep on.
    notify: AtomicU32,
    /// Readers asleep on `notify`: `push` makes no system call when there are none.
    sleepers: AtomicU32,
    closed: AtomicU32,
    writer_pid: AtomicU32,
    slots: [Slot<T>; N],
}

// SAFETY: atomics and racy cells (whose copies are validated by their stamps), each keeping
// the contract; all zeroes is the empty ring.
unsafe impl<T: Pod + Send, const N: usize> Placeable for Ring<T, N> {
    type Init = ();

    unsafe fn init(_: *mut Self, (): ()) -> Result<()> {
        const { assert!(N > 0, "a ring needs at least one slot") };
        Ok(())
    }
}

constructors!(
    /// An empty ring in an anonymous segment: `let ring: Shared<Ring<f64, 64>> =
    /// Ring::create()?`.
    [T: Pod + Send, const N: usize] Ring<T, N>
);

impl<T: Pod, const N: usize> Ring<T, N> {
    /// Publishes the next item (one writer at a time) and wakes waiting readers.
    pub fn push(&self, value: &T) {
        self.writer_pid.store(std::process::id(), Ordering::Relaxed);
        let index = self.head.load(Ordering::Relaxed);
        let slot = &self.slots[(index % N as u64) as usize];
        slot.stamp.store(2 * index + 1, Ordering::Relaxed);
        // Readers copy it atomically and check the stamp around their copy. `copy_in` begins
        // with a Release fence after the odd stamp.
        slot.value.copy_in(value);
        // Pairs with the Acquire load of the stamp in `RingReader::try_next`.
        slot.stamp.store(2 * (index + 1), Ordering::Release);
        // Pairs with the Acquire load of `head` by readers.
        self.head.store(index + 1, Ordering::Release);
        self.notify.fetch_add(1, Ordering::Release);
        wake_sleepers(&self.notify, &self.sleepers);
    }

    /// Ends the stream: readers get every item still in the ring, then `Disconnected`.
    pub fn close(&self) {
        self.closed.store(1, Ordering::Release);
        self.notify.fetch_add(1, Ordering::Release);
        futex_wake(&self.notify, i32::MAX);
    }

    /// Items published so far.
    pub fn published(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// A reader starting at the oldest item still in the ring.
    pub fn reader(&self) -> RingReader<'_, T, N> {
        let head = self.published();
        RingReader {
            ring: self,
            next: head.saturating_sub(N as u64),
        }
    }

    /// A reader that will see only items published from now on.
    pub fn reader_from_now(&self) -> RingReader<'_, T, N> {
        RingReader {
            ring: self,
            next: self.published(),
        }
    }

    fn writer_gone(&self) -> bool {
        if self.closed.load(Ordering::Acquire) != 0 {
            return true;
        }
        let pid = self.writer_pid.load(Ordering::Relaxed);
        pid != 0 && !ipckit_core::is_alive(pid as i32)
    }
}

impl<T, const N: usize> fmt::Debug for Ring<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("head", &self.head)
            .field("capacity", &N)
            .finish_non_exhaustive()
    }
}

/// One reader's position in a [`Ring`].
#[derive(Debug)]
pub struct RingReader<'a, T, const N: usize> {
    ring: &'a Ring<T, N>,
    next: u64,
}

impl<T: Pod, const N: usize> RingReader<'_, T, N> {
    /// The next item if it is there; `Ok(None)` if not yet.
    fn try_next(&mut self) -> Result<Option<T>> {
        let head = self.ring.head.load(Ordering::Acquire);
        if self.next >= head {
            return Ok(None);
        }
        if head - self.next > N as u64 {
            let missed = head - N as u64 - self.next;
            self.next = head - N as u64;
            return Err(Error::Lagged(missed));
        }
        let slot = &self.ring.slots[(self.next % N as u64) as usize];
        let want = 2 * (self.next + 1);
        // Pairs with the Release store of the stamp in `push`.
        let before = slot.stamp.load(Ordering::Acquire);
        // A concurrent overwrite is detected below.
        let out = slot.value.copy_out();
        fence(Ordering::Acquire);
        let after = slot.stamp.load(Ordering::Relaxed);
        if before == want && after == want {
            self.next += 1;
            return Ok(Some(out));
        }
        // Overwritten while we looked: the writer is at least a lap ahead.
        let head = self.ring.head.load(Ordering::Acquire);
        let missed = (head.saturating_sub(N as u64))
            .saturating_sub(self.next)
            .max(1);
        self.next += missed;
        Err(Error::Lagged(missed))
    }

    /// The next item, waiting at most `timeout`, sleeping in the kernel.
    ///
    /// # Errors
    /// [`Error::Timeout`] if none came, [`Error::Disconnected`] once the writer closed the
    /// ring (or died) and every item was read, [`Error::Lagged`] if items were overwritten
    /// before this reader got to them (the next call goes on from the oldest one left).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T> {
        let deadline = Deadline::after(timeout);
        loop {
            let seen = self.ring.notify.load(Ordering::Acquire);
            if let Some(v) = self.try_next()? {
                return Ok(v);
            }
            if self.ring.writer_gone() {
                // A last look: the writer may have pushed just before closing.
                return self.try_next()?.ok_or(Error::Disconnected);
            }
            let left = deadline.remaining();
            if left.is_some_and(|d| d.is_zero()) {
                return Err(Error::Timeout);
            }
            // Wake at least every 100 ms to notice a writer that died without closing.
            let slice = Duration::from_millis(100);
            let nap = Some(left.map_or(slice, |d| d.min(slice)));
            sleep_counted(&self.ring.notify, seen, &self.ring.sleepers, nap);
        }
    }

    /// The next item if there is one now.
    ///
    /// # Errors
    /// [`Error::Timeout`] if there is none, otherwise as
    /// [`recv_timeout`](RingReader::recv_timeout).
    pub fn try_recv(&mut self) -> Result<T> {
        self.recv_timeout(Duration::ZERO)
    }

    /// Items published but not yet read by this reader.
    pub fn pending(&self) -> u64 {
        self.ring.published().saturating_sub(self.next)
    }
}
