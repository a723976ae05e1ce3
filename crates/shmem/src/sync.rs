//! Process-shared synchronisation: `Mutex` and `RLock` (robust), `Condvar` and `Condition`,
//! `Semaphore`, `Event`, `Barrier`, `RwLock`, `Notify`.

use std::{
    fmt,
    ops::{Deref, DerefMut},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use bytemuck::Pod;
use ipckit_core::Deadline;

use crate::{
    Error, Placeable, Result,
    shared::constructors,
    sys::{
        Kind, Locked, LockedGuard, RawGuard, RawMutex, ReadGuard, RwCell, WriteGuard, futex_wait,
        futex_wake, wait_until,
    },
};

/// A mutual-exclusion lock shared between processes, protecting a plain-old-data `T`:
/// Python's `multiprocessing.Lock` with the data it guards.
///
/// ```
/// use ipckit_shmem::Mutex;
///
/// let total = Mutex::create([0u64; 2])?; // a Shared<Mutex<[u64; 2]>>
/// let mut pair = total.lock()?;
/// pair[0] += 1;
/// pair[1] += 1;
/// # Ok::<(), ipckit_shmem::Error>(())
/// ```
///
/// - **Create** with [`Mutex::create`] (share it with children), [`Mutex::create_named`] or
///   [`Mutex::create_at`] (unrelated processes [`Mutex::open`] it by name); or place one as a
///   field of a larger object (`Shared<(Mutex<u64>, Event)>`).
/// - **Share with a child**: `Command::new(..).handle("total", total.try_clone()?)`; the
///   child takes it with `ctx.handle::<Shared<Mutex<T>>>("total")?`.
/// - **A dead holder**: the lock is *robust*. When the process holding it dies (even by
///   SIGKILL), the kernel marks it; the next `lock` gets it and
///   [`MutexGuard::previous_holder_died`] says so, instead of waiting for ever as Python's
///   `Lock` does. The data may be half-updated (any bytes are a valid `T`, but check your
///   invariants).
/// - **Locking twice** in one thread is [`Error::WouldDeadlock`], not a hang; use an
///   [`RLock`] for a lock its holder takes again.
///
/// Built on a process-shared robust pthread mutex.
#[repr(transparent)]
pub struct Mutex<T> {
    inner: Locked<T>,
}

// SAFETY: a transparent wrapper of `Locked<T>`, which keeps the contract.
unsafe impl<T: Pod + Send> Placeable for Mutex<T> {
    type Init = T;

    unsafe fn init(this: *mut Self, init: T) -> Result<()> {
        // SAFETY: the caller's promise, for the one field at the same address.
        unsafe { Locked::init(this.cast(), init) }
    }
}

constructors!(
    /// A mutex holding `value`, in an anonymous segment.
    [T: Pod + Send] Mutex<T>, T, |value| value
);

impl<T: Pod> Mutex<T> {
    fn lock_deadline(&self, deadline: Deadline) -> Result<MutexGuard<'_, T>> {
        Ok(MutexGuard {
            inner: self.inner.lock(deadline)?,
        })
    }

    /// Locks, waiting as long as another holder keeps it.
    ///
    /// # Errors
    /// [`Error::WouldDeadlock`] if this thread holds it already; [`Error::Unrecoverable`]
    /// or [`Error::Io`] only if the lock's memory was damaged.
    pub fn lock(&self) -> Result<MutexGuard<'_, T>> {
        self.lock_deadline(Deadline::Never)
    }

    /// Locks if it is free now.
    ///
    /// # Errors
    /// [`Error::Timeout`] if another holder has it; otherwise as [`lock`](Mutex::lock).
    pub fn try_lock(&self) -> Result<MutexGuard<'_, T>> {
        self.lock_deadline(Deadline::Now)
    }

    /// Locks, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if it stayed held; otherwise as [`lock`](Mutex::lock).
    pub fn lock_timeout(&self, timeout: Duration) -> Result<MutexGuard<'_, T>> {
        self.lock_deadline(Deadline::after(timeout))
    }
}

impl<T> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mutex").finish_non_exhaustive()
    }
}

/// Access to a [`Mutex`]'s data (it dereferences to `T`); unlocks when dropped. Not
/// `Send`: the thread that locked unlocks.
pub struct MutexGuard<'a, T> {
    inner: LockedGuard<'a, T>,
}

impl<T> MutexGuard<'_, T> {
    /// Whether the previous holder died holding the lock (its update may be half done).
    pub fn previous_holder_died(&self) -> bool {
        self.inner.previous_holder_died()
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: fmt::Debug> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutexGuard")
            .field("data", &**self)
            .field("previous_holder_died", &self.previous_holder_died())
            .finish()
    }
}

/// A re-entrant lock shared between processes: Python's `multiprocessing.RLock`.
///
/// The thread that holds it may lock it again; it is free once every guard is dropped.
///
/// ```
/// use ipckit_shmem::RLock;
///
/// let lock = RLock::create()?; // a Shared<RLock>
/// let outer = lock.lock()?;
/// let inner = lock.lock()?; // the holder again: no deadlock
/// drop((inner, outer));
/// # Ok::<(), ipckit_shmem::Error>(())
/// ```
///
/// - **Create** with [`RLock::create`], [`RLock::create_named`] or [`RLock::create_at`];
///   [`RLock::open`] by name.
/// - **Share with a child**: `Command::new(..).handle("lock", lock.try_clone()?)`; the child
///   takes it with `ctx.handle::<Shared<RLock>>("lock")?`.
/// - **A dead holder**: robust, as [`Mutex`]: when the holder dies, however many times it
///   had locked it, the next `lock` gets it (once) and
///   [`RLockGuard::previous_holder_died`] is `true`.
///
/// It guards no data of its own (a holder with two guards must not hold two `&mut`): put
/// the data beside it, in atomics, or use a [`Mutex`].
#[repr(transparent)]
pub struct RLock {
    raw: RawMutex,
}

// SAFETY: a transparent wrapper of `RawMutex`, which keeps the contract.
unsafe impl Placeable for RLock {
    type Init = ();

    unsafe fn init(this: *mut Self, (): ()) -> Result<()> {
        // SAFETY: the caller's promise, for the one field at the same address.
        unsafe { RawMutex::init(this.cast(), Kind::Recursive) }
    }
}

constructors!(
    /// A re-entrant lock in an anonymous segment.
    [] RLock
);

impl RLock {
    fn lock_deadline(&self, deadline: Deadline) -> Result<RLockGuard<'_>> {
        Ok(RLockGuard {
            raw: self.raw.lock(deadline)?,
        })
    }

    /// Locks, waiting as long as another thread or process holds it; at once if this
    /// thread holds it.
    ///
    /// # Errors
    /// [`Error::Io`] if it was locked 2³¹ times over, or its memory was damaged.
    pub fn lock(&self) -> Result<RLockGuard<'_>> {
        self.lock_deadline(Deadline::Never)
    }

    /// Locks if it is free now (or this thread holds it).
    ///
    /// # Errors
    /// [`Error::Timeout`] if another holder has it.
    pub fn try_lock(&self) -> Result<RLockGuard<'_>> {
        self.lock_deadline(Deadline::Now)
    }

    /// Locks, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if another holder kept it.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<RLockGuard<'_>> {
        self.lock_deadline(Deadline::after(timeout))
    }
}

impl fmt::Debug for RLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLock").finish_non_exhaustive()
    }
}

/// One hold of an [`RLock`]; released when dropped. Not `Send`.
pub struct RLockGuard<'a> {
    raw: RawGuard<'a>,
}

impl RLockGuard<'_> {
    /// Whether the previous holder died holding the lock.
    pub fn previous_holder_died(&self) -> bool {
        self.raw.previous_holder_died()
    }
}

impl fmt::Debug for RLockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLockGuard")
            .field("previous_holder_died", &self.previous_holder_died())
            .finish()
    }
}

macro_rules! zeroed_placeable {
    ($($t:ty),*) => {$(
        // SAFETY: made of atomics only, so sound to share; all zeroes is its initial state.
        unsafe impl Placeable for $t {
            type Init = ();

            unsafe fn init(_: *mut Self, (): ()) -> Result<()> {
                Ok(())
            }
        }
    )*};
}

/// A condition variable shared between processes, used with a [`Mutex`]. Python's
/// `Condition` is this and its lock together: see [`Condition`].
///
/// - **Create** with [`Condvar::create`] (or `create_named`, `create_at`, `open`), or place it
///   beside its mutex: `Shared::<(Mutex<u32>, Condvar)>::create((0, ()))`.
/// - **Share with a child** as any [`Shared`](crate::Shared): `try_clone` and
///   `Command::handle`.
/// - **A dead peer**: a waiter that dies leaves no state behind (the condition is a futex
///   sequence number), so it never swallows a wake-up. A notifier that dies before
///   notifying leaves the waiters to their timeouts; one that dies holding the mutex hands it
///   over as [`Mutex`] says.
///
/// Spurious wake-ups happen: wait in a loop, or use [`wait_while`](Condvar::wait_while).
#[repr(C)]
#[derive(Debug)]
pub struct Condvar {
    seq: AtomicU32,
}

zeroed_placeable!(Condvar);

constructors!(
    /// A condition variable in an anonymous segment.
    [] Condvar
);

impl Condvar {
    fn wait_deadline<'a, T: Pod>(
        &self,
        guard: MutexGuard<'a, T>,
        deadline: Deadline,
    ) -> Result<(MutexGuard<'a, T>, bool)> {
        // Read before unlocking: a notify made after this (under or after the lock) changes
        // the word, and the futex does not sleep on a changed word.
        let seen = self.seq.load(Ordering::Relaxed);
        let mutex = guard.inner.unlock();
        let woken = futex_wait(&self.seq, seen, deadline.remaining());
        let inner = mutex.lock(Deadline::Never)?;
        Ok((MutexGuard { inner }, !woken))
    }

    /// Unlocks, sleeps until notified, locks again.
    ///
    /// # Errors
    /// As [`Mutex::lock`].
    pub fn wait<'a, T: Pod>(&self, guard: MutexGuard<'a, T>) -> Result<MutexGuard<'a, T>> {
        Ok(self.wait_deadline(guard, Deadline::Never)?.0)
    }

    /// As [`wait`](Condvar::wait), at most `timeout`; the flag is `true` if it timed out.
    ///
    /// # Errors
    /// As [`Mutex::lock`].
    pub fn wait_timeout<'a, T: Pod>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout: Duration,
    ) -> Result<(MutexGuard<'a, T>, bool)> {
        self.wait_deadline(guard, Deadline::after(timeout))
    }

    /// Waits while `condition` holds for the data, at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if the condition still held at the deadline.
    pub fn wait_while<'a, T: Pod>(
        &self,
        mut guard: MutexGuard<'a, T>,
        timeout: Duration,
        mut condition: impl FnMut(&mut T) -> bool,
    ) -> Result<MutexGuard<'a, T>> {
        let deadline = Deadline::after(timeout);
        while condition(&mut guard) {
            if deadline.has_passed() {
                return Err(Error::Timeout);
            }
            guard = self.wait_deadline(guard, deadline)?.0;
        }
        Ok(guard)
    }

    /// Wakes one waiter.
    pub fn notify_one(&self) {
        // Pairs with the waiter's load: a waiter that read the old value sleeps only while
        // the word still holds it, so it cannot miss this.
        self.seq.fetch_add(1, Ordering::Release);
        futex_wake(&self.seq, 1);
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        // Pairs with the waiter's load, as in `notify_one`.
        self.seq.fetch_add(1, Ordering::Release);
        futex_wake(&self.seq, i32::MAX);
    }
}

/// A condition with its lock, shared between processes: Python's
/// `multiprocessing.Condition`, holding the plain-old-data `T` the condition is about.
///
/// ```
/// use ipckit_shmem::Condition;
/// use std::time::Duration;
///
/// let ready = Condition::create(0u32)?; // a Shared<Condition<u32>>
/// *ready.lock()? = 1;
/// ready.notify_all();
/// let guard = ready.wait_while(ready.lock()?, Duration::from_secs(1), |ready| *ready == 0)?;
/// assert_eq!(*guard, 1);
/// # Ok::<(), ipckit_shmem::Error>(())
/// ```
///
/// - **Create** with [`Condition::create`], `create_named`, `create_at`; `open` by name.
/// - **Share with a child**: `Command::new(..).handle("ready", ready.try_clone()?)`; the
///   child takes it with `ctx.handle::<Shared<Condition<T>>>("ready")?`.
/// - **A dead peer**: the lock is a robust [`Mutex`] (a holder that dies hands it over,
///   [`MutexGuard::previous_holder_died`]); a waiter that dies leaves nothing behind; a
///   notifier that dies before notifying leaves the waiters to their timeouts.
#[repr(C)]
pub struct Condition<T> {
    lock: Mutex<T>,
    cond: Condvar,
}

// SAFETY: a mutex and a condition variable, each keeping the contract and initialised in
// its own place.
unsafe impl<T: Pod + Send> Placeable for Condition<T> {
    type Init = T;

    unsafe fn init(this: *mut Self, init: T) -> Result<()> {
        // SAFETY: the caller's promise, for the field within its memory; the condition
        // variable's zeroes are its initial state.
        unsafe { Mutex::init(&raw mut (*this).lock, init) }
    }
}

constructors!(
    /// A condition whose lock holds `value`, in an anonymous segment.
    [T: Pod + Send] Condition<T>, T, |value| value
);

impl<T: Pod> Condition<T> {
    /// Locks, waiting as long as another holder keeps it.
    ///
    /// # Errors
    /// As [`Mutex::lock`].
    pub fn lock(&self) -> Result<MutexGuard<'_, T>> {
        self.lock.lock()
    }

    /// Locks if it is free now.
    ///
    /// # Errors
    /// As [`Mutex::try_lock`].
    pub fn try_lock(&self) -> Result<MutexGuard<'_, T>> {
        self.lock.try_lock()
    }

    /// Locks, waiting at most `timeout`.
    ///
    /// # Errors
    /// As [`Mutex::lock_timeout`].
    pub fn lock_timeout(&self, timeout: Duration) -> Result<MutexGuard<'_, T>> {
        self.lock.lock_timeout(timeout)
    }

    /// Unlocks, sleeps until notified, locks again. `guard` comes from this condition's
    /// [`lock`](Condition::lock).
    ///
    /// # Errors
    /// As [`Mutex::lock`].
    pub fn wait<'a>(&'a self, guard: MutexGuard<'a, T>) -> Result<MutexGuard<'a, T>> {
        self.cond.wait(guard)
    }

    /// As [`wait`](Condition::wait), at most `timeout`; the flag is `true` if it timed out.
    ///
    /// # Errors
    /// As [`Mutex::lock`].
    pub fn wait_timeout<'a>(
        &'a self,
        guard: MutexGuard<'a, T>,
        timeout: Duration,
    ) -> Result<(MutexGuard<'a, T>, bool)> {
        self.cond.wait_timeout(guard, timeout)
    }

    /// Waits while `condition` holds for the data, at most `timeout` (Python's `wait_for`,
    /// with the test inverted as Rust's `Condvar::wait_while` has it).
    ///
    /// # Errors
    /// [`Error::Timeout`] if the condition still held at the deadline.
    pub fn wait_while<'a>(
        &'a self,
        guard: MutexGuard<'a, T>,
        timeout: Duration,
        condition: impl FnMut(&mut T) -> bool,
    ) -> Result<MutexGuard<'a, T>> {
        self.cond.wait_while(guard, timeout, condition)
    }

    /// Wakes one waiter. Call it after changing the data (under the lock or after).
    pub fn notify_one(&self) {
        self.cond.notify_one();
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.cond.notify_all();
    }
}

impl<T> fmt::Debug for Condition<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition").finish_non_exhaustive()
    }
}

/// A counting semaphore shared between processes: Python's `multiprocessing.Semaphore`, or
/// `BoundedSemaphore` with [`SemaphoreOptions::bounded`].
///
/// ```
/// use ipckit_shmem::{Semaphore, SemaphoreOptions};
///
/// let slots = Semaphore::create(2)?; // a Shared<Semaphore>: two at a time
/// slots.acquire()?;
/// slots.release()?;
/// let bounded = Semaphore::create(SemaphoreOptions::new(1).bounded(true))?;
/// assert!(bounded.release().is_err()); // above its bound
/// # Ok::<(), ipckit_shmem::Error>(())
/// ```
///
/// - **Create** with [`Semaphore::create`] (a count, or [`SemaphoreOptions`]),
///   `create_named`, `create_at`; `open` by name.
/// - **Share with a child**: `Command::new(..).handle("slots", slots.try_clone()?)`; the
///   child takes it with `ctx.handle::<Shared<Semaphore>>("slots")?`.
/// - **A dead peer**: a waiter that dies leaves nothing behind. A process that dies holding
///   a unit does not give it back (as in Python): the count stays one lower. Where that
///   matters, count holders in a robust [`Mutex`] instead.
#[repr(C)]
#[derive(Debug)]
pub struct Semaphore {
    count: AtomicU32,
    /// 0 for unbounded.
    bound: AtomicU32,
}

/// How to make a [`Semaphore`]: its initial count, and whether that is also its bound.
/// A plain `u32` converts into the unbounded form.
#[derive(Debug, Clone, Copy, Default)]
pub struct SemaphoreOptions {
    value: u32,
    bounded: bool,
}

impl SemaphoreOptions {
    /// A semaphore starting at `value`, unbounded.
    pub fn new(value: u32) -> Self {
        SemaphoreOptions {
            value,
            bounded: false,
        }
    }

    /// Refuse to `release` above the initial count (Python's `BoundedSemaphore`).
    #[must_use]
    pub fn bounded(mut self, bounded: bool) -> Self {
        self.bounded = bounded;
        self
    }
}

impl From<u32> for SemaphoreOptions {
    fn from(value: u32) -> Self {
        SemaphoreOptions::new(value)
    }
}

// SAFETY: made of atomics only; `init` stores the count and bound.
unsafe impl Placeable for Semaphore {
    type Init = SemaphoreOptions;

    unsafe fn init(this: *mut Self, init: SemaphoreOptions) -> Result<()> {
        let bound = if init.bounded { init.value } else { 0 };
        // SAFETY: the caller gives aligned, writable, unshared memory.
        unsafe {
            this.write(Semaphore {
                count: AtomicU32::new(init.value),
                bound: AtomicU32::new(bound),
            });
        }
        Ok(())
    }
}

constructors!(
    /// A semaphore in an anonymous segment: `Semaphore::create(2)`, or
    /// `Semaphore::create(SemaphoreOptions::new(2).bounded(true))`.
    [] Semaphore, impl Into<SemaphoreOptions>, |options| options.into()
);

impl Semaphore {
    fn acquire_deadline(&self, deadline: Deadline) -> Result<()> {
        wait_until(&self.count, deadline, || {
            let c = self.count.load(Ordering::Relaxed);
            // Acquire pairs with the Release of `release`.
            c > 0
                && self
                    .count
                    .compare_exchange(c, c - 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
        })
    }

    /// Takes one unit, waiting while there is none.
    ///
    /// # Errors
    /// Never in practice; the signature matches the timeout forms.
    pub fn acquire(&self) -> Result<()> {
        self.acquire_deadline(Deadline::Never)
    }

    /// Takes one unit if there is one now.
    ///
    /// # Errors
    /// [`Error::Timeout`] if there is none.
    pub fn try_acquire(&self) -> Result<()> {
        self.acquire_deadline(Deadline::Now)
    }

    /// Takes one unit, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if none came.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<()> {
        self.acquire_deadline(Deadline::after(timeout))
    }

    /// Gives one unit back and wakes a waiter.
    ///
    /// # Errors
    /// [`Error::SemaphoreOverflow`] for a bounded semaphore already at its bound.
    pub fn release(&self) -> Result<()> {
        let bound = self.bound.load(Ordering::Relaxed);
        let limit = if bound == 0 { u32::MAX } else { bound };
        // Release pairs with the Acquire of `acquire_deadline`.
        self.count
            .fetch_update(Ordering::Release, Ordering::Relaxed, |c| {
                (c < limit).then_some(c + 1)
            })
            .map_err(|_| Error::SemaphoreOverflow(limit))?;
        futex_wake(&self.count, 1);
        Ok(())
    }

    /// The units available now.
    pub fn value(&self) -> u32 {
        self.count.load(Ordering::Relaxed)
    }
}

/// A flag that processes wait for: Python's `multiprocessing.Event`.
///
/// ```
/// use ipckit_shmem::Event;
/// use std::time::Duration;
///
/// let go = Event::create()?; // a Shared<Event>
/// go.set();
/// go.wait_timeout(Duration::from_secs(1))?;
/// # Ok::<(), ipckit_shmem::Error>(())
/// ```
///
/// - **Create** with [`Event::create`], `create_named`, `create_at`; `open` by name.
/// - **Share with a child**: `Command::new(..).handle("go", go.try_clone()?)`; the child
///   takes it with `ctx.handle::<Shared<Event>>("go")?`.
/// - **A dead peer**: a waiter that dies leaves nothing behind; if the process meant to set
///   it dies first, the waiters wait: use [`wait_timeout`](Event::wait_timeout).
#[repr(C)]
#[derive(Debug)]
pub struct Event {
    flag: AtomicU32,
}

zeroed_placeable!(Event);

constructors!(
    /// A cleared event in an anonymous segment.
    [] Event
);

impl Event {
    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        // Pairs with the Acquire loads of the waiters.
        self.flag.store(1, Ordering::Release);
        futex_wake(&self.flag, i32::MAX);
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.flag.store(0, Ordering::Relaxed);
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        // Pairs with the Release store of `set`.
        self.flag.load(Ordering::Acquire) == 1
    }

    /// Waits until the flag is set.
    ///
    /// # Errors
    /// Never in practice; the signature matches [`wait_timeout`](Event::wait_timeout).
    pub fn wait(&self) -> Result<()> {
        wait_until(&self.flag, Deadline::Never, || self.is_set())
    }

    /// Waits at most `timeout` for the flag.
    ///
    /// # Errors
    /// [`Error::Timeout`] if it was not set in time.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<()> {
        wait_until(&self.flag, Deadline::after(timeout), || self.is_set())
    }
}

/// A barrier for a fixed number of processes: Python's `multiprocessing.Barrier`.
///
/// ```
/// use ipckit_shmem::Barrier;
///
/// let start = Barrier::create(1)?; // a Shared<Barrier> for one party
/// assert!(start.wait()?); // the last to arrive is told so
/// # Ok::<(), ipckit_shmem::Error>(())
/// ```
///
/// - **Create** with [`Barrier::create`] (the number of parties), `create_named`,
///   `create_at`; `open` by name.
/// - **Share with a child**: `Command::new(..).handle("start", start.try_clone()?)`; the
///   child takes it with `ctx.handle::<Shared<Barrier>>("start")?`.
/// - **A dead peer**: a participant that gives up (its wait timed out) breaks the barrier:
///   every waiter then gets [`Error::BrokenBarrier`] instead of waiting for ever for it. A
///   participant that dies never arrives: the others' [`wait_timeout`](Barrier::wait_timeout)
///   times out, which breaks it for the rest. Use the timeout form where a party may die.
#[repr(C)]
#[derive(Debug)]
pub struct Barrier {
    parties: AtomicU32,
    arrived: AtomicU32,
    generation: AtomicU32,
    broken: AtomicU32,
}

// SAFETY: made of atomics only; `init` stores the number of parties.
unsafe impl Placeable for Barrier {
    type Init = u32;

    unsafe fn init(this: *mut Self, parties: u32) -> Result<()> {
        if parties == 0 {
            return Err(Error::InvalidOptions(
                "a barrier needs at least one party".into(),
            ));
        }
        // SAFETY: the caller gives aligned, writable, unshared (zeroed) memory.
        unsafe { (*this).parties = AtomicU32::new(parties) };
        Ok(())
    }
}

constructors!(
    /// A barrier for `parties` processes (or threads), in an anonymous segment;
    /// [`Error::InvalidOptions`](crate::Error::InvalidOptions) for none.
    [] Barrier, u32, |parties| parties
);

impl Barrier {
    fn wait_deadline(&self, deadline: Deadline) -> Result<bool> {
        // Pairs with the Release stores that break it.
        if self.broken.load(Ordering::Acquire) != 0 {
            return Err(Error::BrokenBarrier);
        }
        // Pairs with the Release increment of the last arrival.
        let generation = self.generation.load(Ordering::Acquire);
        // AcqRel: the last arrival sees everything the others did before arriving.
        let arrived = self.arrived.fetch_add(1, Ordering::AcqRel) + 1;
        if arrived == self.parties.load(Ordering::Relaxed) {
            self.arrived.store(0, Ordering::Relaxed);
            // Pairs with the waiters' Acquire loads of the generation.
            self.generation.fetch_add(1, Ordering::Release);
            futex_wake(&self.generation, i32::MAX);
            return Ok(true);
        }
        let passed = wait_until(&self.generation, deadline, || {
            self.generation.load(Ordering::Acquire) != generation
        });
        if passed.is_err() {
            // Pairs with the Acquire loads of `broken` by the others.
            self.broken.store(1, Ordering::Release);
            self.generation.fetch_add(1, Ordering::Release);
            futex_wake(&self.generation, i32::MAX);
            return Err(Error::Timeout);
        }
        if self.broken.load(Ordering::Acquire) != 0 {
            return Err(Error::BrokenBarrier);
        }
        Ok(false)
    }

    /// Waits until every party has arrived; `true` for exactly one of them.
    ///
    /// # Errors
    /// [`Error::BrokenBarrier`] if a party gave up.
    pub fn wait(&self) -> Result<bool> {
        self.wait_deadline(Deadline::Never)
    }

    /// As [`wait`](Barrier::wait), at most `timeout`; on timeout the barrier breaks.
    ///
    /// # Errors
    /// [`Error::Timeout`] for this waiter, [`Error::BrokenBarrier`] for the others.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        self.wait_deadline(Deadline::after(timeout))
    }

    /// The number of parties.
    pub fn parties(&self) -> u32 {
        self.parties.load(Ordering::Relaxed)
    }
}

/// A readers-writer lock shared between processes, protecting a plain-old-data `T`.
///
/// - **Create** with [`RwLock::create`], `create_named`, `create_at`; `open` by name.
/// - **Share with a child** as any [`Shared`](crate::Shared): `try_clone` and
///   `Command::handle`.
/// - **A dead holder**: unlike [`Mutex`], it is *not* robust: a holder that dies leaves it
///   held, and the others' timed waits report [`Error::Timeout`]. Use it where readers
///   vastly outnumber writers and processes do not die holding it; otherwise prefer `Mutex`.
#[repr(transparent)]
pub struct RwLock<T> {
    cell: RwCell<T>,
}

// SAFETY: a transparent wrapper of `RwCell<T>`, which keeps the contract.
unsafe impl<T: Pod + Send + Sync> Placeable for RwLock<T> {
    type Init = T;

    unsafe fn init(this: *mut Self, init: T) -> Result<()> {
        // SAFETY: the caller's promise, for the one field at the same address.
        unsafe { RwCell::init(this.cast(), init) }
    }
}

constructors!(
    /// A readers-writer lock holding `value`, in an anonymous segment.
    [T: Pod + Send + Sync] RwLock<T>, T, |value| value
);

impl<T: Pod> RwLock<T> {
    /// Locks for reading, beside other readers.
    ///
    /// # Errors
    /// Never in practice; the signature matches the timeout form.
    pub fn read(&self) -> Result<RwLockReadGuard<'_, T>> {
        Ok(RwLockReadGuard(self.cell.read(Deadline::Never)?))
    }

    /// Locks for reading, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if a writer kept it.
    pub fn read_timeout(&self, timeout: Duration) -> Result<RwLockReadGuard<'_, T>> {
        Ok(RwLockReadGuard(self.cell.read(Deadline::after(timeout))?))
    }

    /// Locks for writing, alone.
    ///
    /// # Errors
    /// Never in practice; the signature matches the timeout form.
    pub fn write(&self) -> Result<RwLockWriteGuard<'_, T>> {
        Ok(RwLockWriteGuard(self.cell.write(Deadline::Never)?))
    }

    /// Locks for writing, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if others kept it.
    pub fn write_timeout(&self, timeout: Duration) -> Result<RwLockWriteGuard<'_, T>> {
        Ok(RwLockWriteGuard(self.cell.write(Deadline::after(timeout))?))
    }
}

impl<T> fmt::Debug for RwLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RwLock")
            .field("state", &self.cell.state())
            .finish_non_exhaustive()
    }
}

/// Shared access to an [`RwLock`]'s data; unlocks when dropped.
pub struct RwLockReadGuard<'a, T>(ReadGuard<'a, T>);

/// Exclusive access to an [`RwLock`]'s data; unlocks when dropped.
pub struct RwLockWriteGuard<'a, T>(WriteGuard<'a, T>);

impl<T> Deref for RwLockReadGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> Deref for RwLockWriteGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for RwLockWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: fmt::Debug> fmt::Debug for RwLockReadGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RwLockReadGuard").field(&**self).finish()
    }
}

impl<T: fmt::Debug> fmt::Debug for RwLockWriteGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RwLockWriteGuard").field(&**self).finish()
    }
}

/// A wake-up word for building blocking waits on other shared state: waiters sleep in
/// [`sleep_while`](Notify::sleep_while) while their condition says they are blocked;
/// whoever changes that state calls [`notify`](Notify::notify) afterwards.
///
/// `notify` makes no system call when nobody sleeps, so a busy producer pays only a fence
/// and a load per notification.
///
/// - **Create** with [`Notify::create`] (or `create_named`, `create_at`, `open`), or place
///   it in a larger object (it is what the queues of ipckit-queues sleep on).
/// - **Share with a child** as any [`Shared`](crate::Shared): `try_clone` and
///   `Command::handle`.
/// - **A dead peer**: a sleeper that dies leaves its count behind, which only costs the
///   notifier a system call per notification; a notifier that dies leaves the sleepers to
///   their timeouts.
#[repr(C)]
#[derive(Debug)]
pub struct Notify {
    epoch: AtomicU32,
    sleepers: AtomicU32,
}

zeroed_placeable!(Notify);

constructors!(
    /// A wake-up word in an anonymous segment.
    [] Notify
);

impl Notify {
    /// Sleeps (once, at most `timeout`; `None`: no limit) if `blocked()` still holds after
    /// this waiter announced itself. Returns `true` if it woke or was never blocked, `false`
    /// on timeout. Callers loop: wake-ups can be spurious.
    pub fn sleep_while(
        &self,
        timeout: Option<Duration>,
        mut blocked: impl FnMut() -> bool,
    ) -> bool {
        // Pairs with the Release increment in `notify`.
        let epoch = self.epoch.load(Ordering::Acquire);
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        // Pairs with the fence in `notify`: either the notifier sees this sleeper, or the
        // check below sees the notifier's change.
        std::sync::atomic::fence(Ordering::SeqCst);
        let woke = !blocked() || futex_wait(&self.epoch, epoch, timeout);
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        woke
    }

    /// Wakes one sleeper (no system call if there is none): for a state change that one
    /// waiter can use, such as one slot freed. Call it after changing the state.
    pub fn notify_one(&self) {
        // Pairs with the sleeper's fence: either it sees our state change, or we see it.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::Relaxed) > 0 {
            self.epoch.fetch_add(1, Ordering::Release);
            futex_wake(&self.epoch, 1);
        }
    }

    /// Wakes every sleeper (no system call if there is none). Call it after changing the
    /// state the sleepers wait for.
    pub fn notify(&self) {
        // Pairs with the sleeper's fence: either it sees our state change, or we see it.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::Relaxed) > 0 {
            self.epoch.fetch_add(1, Ordering::Release);
            futex_wake(&self.epoch, i32::MAX);
        }
    }
}
