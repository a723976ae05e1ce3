//! Process-shared synchronisation: `Mutex` (robust), `Condvar`, `Semaphore`, `Event`,
//! `Barrier`, `RwLock`. Each lives in shared memory (in a [`Shared`](crate::Shared) of its
//! own, or as a field of a larger placeable type) and every wait has a timeout form.

use std::{
    cell::UnsafeCell,
    fmt,
    marker::PhantomData,
    ops::{Deref, DerefMut},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use bytemuck::Pod;
use ipckit_core::Deadline;

use crate::{
    Error, Placeable, Result,
    sys::{RawMutex, Taken, futex_wait, futex_wake, wait_until},
};

/// A mutual-exclusion lock shared between processes, protecting a plain-old-data `T`.
///
/// It is *robust*: when the process holding it dies (even by SIGKILL), the next `lock`
/// gets it, and [`MutexGuard::previous_holder_died`] says so, instead of waiting for ever as
/// Python's `multiprocessing.Lock` does. The data may then be half-updated; `T` is
/// plain-old-data, so any bytes are a valid `T`, but check your invariants.
///
/// Built on a process-shared robust pthread mutex: the kernel itself marks the lock when
/// its holder dies.
#[repr(C)]
pub struct Mutex<T> {
    raw: RawMutex,
    data: UnsafeCell<T>,
}

// SAFETY: the data is only reached through a guard, which exists only while the lock is held.
unsafe impl<T: Pod + Send> Sync for Mutex<T> {}

// SAFETY: `Mutex` is Sync (above), holds a pthread mutex and plain data, and `init`
// initialises both.
unsafe impl<T: Pod + Send> Placeable for Mutex<T> {
    type Init = T;

    unsafe fn init(this: *mut Self, init: T) -> std::io::Result<()> {
        // SAFETY: the caller gives aligned, writable, unshared memory for the whole Mutex.
        unsafe {
            RawMutex::init(&raw mut (*this).raw)?;
            (&raw mut (*this).data).cast::<T>().write(init);
        }
        Ok(())
    }
}

impl<T: Pod> Mutex<T> {
    fn lock_deadline(&self, deadline: Deadline) -> Result<MutexGuard<'_, T>> {
        let taken = self.raw.lock(deadline)?;
        Ok(MutexGuard {
            mutex: self,
            holder_died: taken == Taken::FromDeadHolder,
            _not_send: PhantomData,
        })
    }

    /// Locks, waiting as long as another holder keeps it.
    ///
    /// # Errors
    /// [`Error::Unrecoverable`] if a dead holder's lock was left unrepaired (cannot happen
    /// through this API), [`Error::Io`] for other failures.
    pub fn lock(&self) -> Result<MutexGuard<'_, T>> {
        self.lock_deadline(Deadline::Never)
    }

    /// Locks if it is free now.
    ///
    /// # Errors
    /// [`Error::Timeout`] if another holder has it.
    pub fn try_lock(&self) -> Result<MutexGuard<'_, T>> {
        self.lock_deadline(Deadline::Now)
    }

    /// Locks, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if it stayed held.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<MutexGuard<'_, T>> {
        self.lock_deadline(Deadline::after(timeout))
    }
}

impl<T> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mutex").finish_non_exhaustive()
    }
}

/// Access to a [`Mutex`]'s data; unlocks when dropped.
pub struct MutexGuard<'a, T: Pod> {
    mutex: &'a Mutex<T>,
    holder_died: bool,
    // pthread requires the locking thread to unlock.
    _not_send: PhantomData<*const ()>,
}

impl<T: Pod> MutexGuard<'_, T> {
    /// Whether the previous holder died holding the lock (its update may be half done).
    pub fn previous_holder_died(&self) -> bool {
        self.holder_died
    }
}

impl<T: Pod> Deref for MutexGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the lock is held, so no other thread or process touches the data.
        unsafe { &*self.mutex.data.get() }
    }
}

impl<T: Pod> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the lock is held, so no other thread or process touches the data.
        unsafe { &mut *self.mutex.data.get() }
    }
}

impl<T: Pod> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: this guard exists only while this thread holds the lock.
        unsafe { self.mutex.raw.unlock() }
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutexGuard")
            .field("data", &**self)
            .field("previous_holder_died", &self.holder_died)
            .finish()
    }
}

macro_rules! zeroed_placeable {
    ($($t:ty),*) => {$(
        // SAFETY: made of atomics only, so sound to share; all zeroes is its initial state.
        unsafe impl Placeable for $t {
            type Init = ();

            unsafe fn init(_: *mut Self, (): ()) -> std::io::Result<()> {
                Ok(())
            }
        }
    )*};
}

/// A condition variable shared between processes, used with a [`Mutex`].
///
/// A waiter that dies leaves no state behind (it is a futex sequence number), so a dead
/// process never swallows a wake-up. Spurious wake-ups happen: wait in a loop, or use
/// [`wait_while`](Condvar::wait_while).
#[repr(C)]
#[derive(Debug)]
pub struct Condvar {
    seq: AtomicU32,
}

zeroed_placeable!(Condvar);

impl Condvar {
    fn wait_deadline<'a, T: Pod>(
        &self,
        guard: MutexGuard<'a, T>,
        deadline: Deadline,
    ) -> Result<(MutexGuard<'a, T>, bool)> {
        let seen = self.seq.load(Ordering::Relaxed);
        let mutex = guard.mutex;
        drop(guard);
        let woken = futex_wait(&self.seq, seen, deadline.remaining());
        Ok((mutex.lock()?, !woken))
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
        self.seq.fetch_add(1, Ordering::Release);
        futex_wake(&self.seq, i32::MAX);
    }
}

/// A counting semaphore shared between processes, optionally bounded.
#[repr(C)]
#[derive(Debug)]
pub struct Semaphore {
    count: AtomicU32,
    /// 0 for unbounded.
    bound: AtomicU32,
}

/// How to make a [`Semaphore`]: its initial count, and whether that is also its bound.
#[derive(Debug, Clone, Copy)]
pub struct SemaphoreInit {
    /// The initial count.
    pub value: u32,
    /// Refuse to `release` above the initial count (Python's `BoundedSemaphore`).
    pub bounded: bool,
}

impl From<u32> for SemaphoreInit {
    fn from(value: u32) -> Self {
        SemaphoreInit {
            value,
            bounded: false,
        }
    }
}

// SAFETY: made of atomics only; `init` stores the count and bound.
unsafe impl Placeable for Semaphore {
    type Init = SemaphoreInit;

    unsafe fn init(this: *mut Self, init: SemaphoreInit) -> std::io::Result<()> {
        let bound = if init.bounded { init.value } else { 0 };
        // SAFETY: the caller gives aligned, writable, unshared memory.
        unsafe {
            this.write(Semaphore {
                count: AtomicU32::new(init.value),
                bound: AtomicU32::new(bound),
            })
        };
        Ok(())
    }
}

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

/// A flag that processes wait for, as Python's `multiprocessing.Event`.
#[repr(C)]
#[derive(Debug)]
pub struct Event {
    flag: AtomicU32,
}

zeroed_placeable!(Event);

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

/// A barrier for a fixed number of processes, as Python's `multiprocessing.Barrier`.
///
/// A participant that gives up (its wait timed out) breaks the barrier: every waiter then
/// gets [`Error::BrokenBarrier`] instead of waiting for ever for it. A participant that dies
/// makes the others time out, then break it.
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

    unsafe fn init(this: *mut Self, parties: u32) -> std::io::Result<()> {
        if parties == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a barrier needs at least one party",
            ));
        }
        // SAFETY: the caller gives aligned, writable, unshared (zeroed) memory.
        unsafe { (*this).parties = AtomicU32::new(parties) };
        Ok(())
    }
}

impl Barrier {
    fn wait_deadline(&self, deadline: Deadline) -> Result<bool> {
        if self.broken.load(Ordering::Acquire) != 0 {
            return Err(Error::BrokenBarrier);
        }
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
}

const WRITER: u32 = 1 << 31;

/// A readers-writer lock shared between processes, protecting a plain-old-data `T`.
///
/// Unlike [`Mutex`], it is not robust: a holder that dies leaves it held, and the others'
/// timed waits report [`Error::Timeout`]. Use it where readers vastly outnumber writers
/// and processes do not die holding it; otherwise prefer `Mutex`.
#[repr(C)]
pub struct RwLock<T> {
    state: AtomicU32,
    data: UnsafeCell<T>,
}

// SAFETY: the data is only reached through guards, which exist only while the lock is held
// in the matching mode.
unsafe impl<T: Pod + Send> Sync for RwLock<T> {}

// SAFETY: Sync (above), atomics and plain data; `init` writes the data, the state starts
// unlocked (zero).
unsafe impl<T: Pod + Send> Placeable for RwLock<T> {
    type Init = T;

    unsafe fn init(this: *mut Self, init: T) -> std::io::Result<()> {
        // SAFETY: the caller gives aligned, writable, unshared memory.
        unsafe { (&raw mut (*this).data).cast::<T>().write(init) };
        Ok(())
    }
}

impl<T: Pod> RwLock<T> {
    fn read_deadline(&self, deadline: Deadline) -> Result<RwLockReadGuard<'_, T>> {
        wait_until(&self.state, deadline, || {
            let s = self.state.load(Ordering::Relaxed);
            // Acquire pairs with the Release of the last writer's unlock.
            s & WRITER == 0
                && s + 1 < WRITER
                && self
                    .state
                    .compare_exchange(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
        })?;
        Ok(RwLockReadGuard { lock: self })
    }

    fn write_deadline(&self, deadline: Deadline) -> Result<RwLockWriteGuard<'_, T>> {
        wait_until(&self.state, deadline, || {
            // Acquire pairs with the Release of the last unlock.
            self.state
                .compare_exchange(0, WRITER, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        })?;
        Ok(RwLockWriteGuard { lock: self })
    }

    /// Locks for reading, beside other readers.
    ///
    /// # Errors
    /// Never in practice; the signature matches the timeout form.
    pub fn read(&self) -> Result<RwLockReadGuard<'_, T>> {
        self.read_deadline(Deadline::Never)
    }

    /// Locks for reading, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if a writer kept it.
    pub fn read_timeout(&self, timeout: Duration) -> Result<RwLockReadGuard<'_, T>> {
        self.read_deadline(Deadline::after(timeout))
    }

    /// Locks for writing, alone.
    ///
    /// # Errors
    /// Never in practice; the signature matches the timeout form.
    pub fn write(&self) -> Result<RwLockWriteGuard<'_, T>> {
        self.write_deadline(Deadline::Never)
    }

    /// Locks for writing, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if others kept it.
    pub fn write_timeout(&self, timeout: Duration) -> Result<RwLockWriteGuard<'_, T>> {
        self.write_deadline(Deadline::after(timeout))
    }
}

impl<T> fmt::Debug for RwLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RwLock")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// Shared access to an [`RwLock`]'s data.
#[derive(Debug)]
pub struct RwLockReadGuard<'a, T: Pod> {
    lock: &'a RwLock<T>,
}

/// Exclusive access to an [`RwLock`]'s data.
#[derive(Debug)]
pub struct RwLockWriteGuard<'a, T: Pod> {
    lock: &'a RwLock<T>,
}

impl<T: Pod> Deref for RwLockReadGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: read-locked: no writer exists until this guard drops.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: Pod> Drop for RwLockReadGuard<'_, T> {
    fn drop(&mut self) {
        // Release pairs with the next writer's Acquire.
        if self.lock.state.fetch_sub(1, Ordering::Release) == 1 {
            futex_wake(&self.lock.state, i32::MAX);
        }
    }
}

impl<T: Pod> Deref for RwLockWriteGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: write-locked: nobody else reaches the data until this guard drops.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: Pod> DerefMut for RwLockWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: write-locked: nobody else reaches the data until this guard drops.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T: Pod> Drop for RwLockWriteGuard<'_, T> {
    fn drop(&mut self) {
        // Release pairs with the next locker's Acquire.
        self.lock.state.store(0, Ordering::Release);
        futex_wake(&self.lock.state, i32::MAX);
    }
}

/// A wake-up word for building blocking waits on other shared state: waiters sleep in
/// [`sleep_while`](Notify::sleep_while) while their condition says they are blocked;
/// whoever changes that state calls [`notify`](Notify::notify) afterwards.
///
/// `notify` makes no system call when nobody sleeps, so a busy producer pays only a fence
/// and a load per notification.
#[repr(C)]
#[derive(Debug)]
pub struct Notify {
    epoch: AtomicU32,
    sleepers: AtomicU32,
}

zeroed_placeable!(Notify);

impl Notify {
    /// Sleeps (once, at most `timeout`; `None`: no limit) if `blocked()` still holds after
    /// this waiter announced itself. Returns `true` if it woke or was never blocked, `false`
    /// on timeout. Callers loop: wake-ups can be spurious.
    pub fn sleep_while(
        &self,
        timeout: Option<Duration>,
        mut blocked: impl FnMut() -> bool,
    ) -> bool {
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
