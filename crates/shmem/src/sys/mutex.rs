//! A robust, process-shared pthread mutex (the kernel marks it when its holder dies), its
//! guard, and a mutex with the data it protects.

use std::{
    cell::UnsafeCell,
    io,
    marker::PhantomData,
    mem,
    ops::{Deref, DerefMut},
    time::Duration,
};

use bytemuck::Pod;
use ipckit_core::Deadline;

use crate::{Error, Placeable, Result};

/// What a thread that locks a mutex it already holds gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// [`Error::WouldDeadlock`]: for locks whose guard hands out `&mut` data.
    ErrorCheck,
    /// The lock again (counted; unlocked when every guard is dropped): Python's `RLock`.
    Recursive,
}

/// A process-shared, robust pthread mutex living in shared memory.
#[repr(C)]
pub(crate) struct RawMutex(UnsafeCell<libc::pthread_mutex_t>);

// SAFETY: a pthread mutex is made to be used from many threads; process-shared mode makes it
// valid from many processes too.
unsafe impl Sync for RawMutex {}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

// SAFETY: sound to share (Sync above), no pointers while unlocked; `init` makes it a
// process-shared robust mutex of the kind asked for.
unsafe impl Placeable for RawMutex {
    type Init = Kind;

    unsafe fn init(this: *mut Self, kind: Kind) -> Result<()> {
        // SAFETY: the caller's promise is ours.
        Ok(unsafe { Self::init_raw(this, kind) }?)
    }
}

impl RawMutex {
    /// Initialises a mutex in place: process-shared, robust, of the given kind.
    ///
    /// # Safety
    /// `this` points to writable memory for a `RawMutex` that no one else uses yet.
    unsafe fn init_raw(this: *mut RawMutex, kind: Kind) -> io::Result<()> {
        let mut attr = mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        // SAFETY: initialises the attribute object on our stack.
        check(unsafe { libc::pthread_mutexattr_init(attr.as_mut_ptr()) })?;
        let attr = attr.as_mut_ptr();
        let kind = match kind {
            // A thread locking twice gets EDEADLK instead of hanging for ever.
            Kind::ErrorCheck => libc::PTHREAD_MUTEX_ERRORCHECK,
            Kind::Recursive => libc::PTHREAD_MUTEX_RECURSIVE,
        };
        let configure = || -> io::Result<()> {
            // SAFETY: `attr` was initialised above.
            check(unsafe {
                libc::pthread_mutexattr_setpshared(attr, libc::PTHREAD_PROCESS_SHARED)
            })?;
            // SAFETY: `attr` was initialised above.
            check(unsafe { libc::pthread_mutexattr_setrobust(attr, libc::PTHREAD_MUTEX_ROBUST) })?;
            // SAFETY: `attr` was initialised above.
            check(unsafe { libc::pthread_mutexattr_settype(attr, kind) })?;
            // SAFETY: the caller gives exclusive, writable memory for the mutex; `attr` is
            // initialised.
            check(unsafe { libc::pthread_mutex_init(UnsafeCell::raw_get(this.cast()), attr) })
        };
        let r = configure();
        // SAFETY: `attr` was initialised above and is not used after this.
        unsafe { libc::pthread_mutexattr_destroy(attr) };
        r
    }

    /// Locks, waiting until `deadline`; a holder that died hands the lock over (the guard
    /// says so).
    #[inline]
    pub(crate) fn lock(&self, deadline: Deadline) -> Result<RawGuard<'_>> {
        let rc = match deadline {
            // SAFETY: the mutex was initialised by `init` before anyone could reach it.
            Deadline::Never => unsafe { libc::pthread_mutex_lock(self.0.get()) },
            // SAFETY: as above.
            Deadline::Now => unsafe { libc::pthread_mutex_trylock(self.0.get()) },
            Deadline::At(_) => {
                // SAFETY: as above. A free lock is taken without reading any clock.
                match unsafe { libc::pthread_mutex_trylock(self.0.get()) } {
                    libc::EBUSY => {
                        let abs = realtime_after(deadline.remaining().unwrap_or_default());
                        // SAFETY: as above; `abs` lives on this stack for the call.
                        unsafe { libc::pthread_mutex_timedlock(self.0.get(), &abs) }
                    }
                    rc => rc,
                }
            }
        };
        let died = match rc {
            0 => false,
            libc::EOWNERDEAD => {
                // Marking it consistent is what the protocol asks of the new holder. Should
                // that fail, the lock is ours all the same: the guard unlocks it.
                // SAFETY: we hold the lock (EOWNERDEAD hands it to us).
                let consistent = check(unsafe { libc::pthread_mutex_consistent(self.0.get()) });
                tracing::warn!(?consistent, "lock holder died; lock recovered");
                true
            }
            libc::EBUSY | libc::ETIMEDOUT => return Err(Error::Timeout),
            libc::ENOTRECOVERABLE => return Err(Error::Unrecoverable),
            libc::EDEADLK => return Err(Error::WouldDeadlock),
            rc => return Err(io::Error::from_raw_os_error(rc).into()),
        };
        Ok(RawGuard {
            mutex: self,
            died,
            _not_send: PhantomData,
        })
    }
}

/// A held [`RawMutex`]; unlocks when dropped.
pub(crate) struct RawGuard<'a> {
    mutex: &'a RawMutex,
    died: bool,
    // pthread requires the locking thread to unlock.
    _not_send: PhantomData<*const ()>,
}

impl RawGuard<'_> {
    /// Whether the previous holder died holding the lock.
    pub(crate) fn previous_holder_died(&self) -> bool {
        self.died
    }
}

impl Drop for RawGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: this guard exists only while this thread holds the lock (once per lock
        // taken, for a recursive mutex).
        unsafe { libc::pthread_mutex_unlock(self.mutex.0.get()) };
    }
}

/// `CLOCK_REALTIME` now plus `d`, as pthread's timed lock wants it.
fn realtime_after(d: Duration) -> libc::timespec {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let t = now + d;
    libc::timespec {
        tv_sec: t.as_secs() as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    }
}

/// An error-checking [`RawMutex`] and the plain-old-data `T` it protects: the data is
/// reached only through a [`LockedGuard`], which exists only while the lock is held.
#[repr(C)]
pub(crate) struct Locked<T> {
    raw: RawMutex,
    data: UnsafeCell<T>,
}

// SAFETY: the data is only reached through a guard, which exists only while the lock is
// held, and the lock refuses a second guard in the same thread (error-checking kind).
unsafe impl<T: Send> Sync for Locked<T> {}

// SAFETY: Sync (above), a pthread mutex and plain data (any bytes are a valid `T`); `init`
// initialises both.
unsafe impl<T: Pod + Send> Placeable for Locked<T> {
    type Init = T;

    unsafe fn init(this: *mut Self, init: T) -> Result<()> {
        // SAFETY: the caller gives aligned, writable, unshared memory for the whole value.
        unsafe { RawMutex::init(&raw mut (*this).raw, Kind::ErrorCheck)? };
        // SAFETY: as above; the data field lies within it, aligned for `T`.
        unsafe { UnsafeCell::raw_get(&raw const (*this).data).write(init) };
        Ok(())
    }
}

impl<T: Pod> Locked<T> {
    /// Locks, waiting until `deadline`.
    pub(crate) fn lock(&self, deadline: Deadline) -> Result<LockedGuard<'_, T>> {
        Ok(LockedGuard {
            lock: self,
            raw: self.raw.lock(deadline)?,
        })
    }
}

/// Access to a [`Locked`]'s data; unlocks when dropped.
pub(crate) struct LockedGuard<'a, T> {
    lock: &'a Locked<T>,
    raw: RawGuard<'a>,
}

impl<'a, T> LockedGuard<'a, T> {
    /// Whether the previous holder died holding the lock.
    pub(crate) fn previous_holder_died(&self) -> bool {
        self.raw.previous_holder_died()
    }

    /// Unlocks, handing back the lock to take it again later.
    pub(crate) fn unlock(self) -> &'a Locked<T> {
        self.lock
    }
}

impl<T> Deref for LockedGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the lock is held (by this guard, and an error-checking lock is held once),
        // so no other thread or process touches the data.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for LockedGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only access in this thread.
        unsafe { &mut *self.lock.data.get() }
    }
}
