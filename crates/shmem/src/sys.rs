//! The system calls and raw memory accesses that need `unsafe`, each fenced with the reason
//! it is sound.
//!
//! - futex wait and wake on a word in shared memory (not `FUTEX_PRIVATE`: the word is shared
//!   between processes, the kernel keys it by physical page);
//! - a robust, process-shared pthread mutex (the kernel marks it when its holder dies);
//! - copies in and out of shared memory made of atomic accesses, so a concurrent writer in
//!   another process is never a data race in this one.

use std::{
    cell::UnsafeCell,
    io, mem,
    sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering, fence},
    time::Duration,
};

use bytemuck::Pod;
use ipckit_core::Deadline;

use crate::{Error, Result};

/// Sleeps while `word` holds `expected`, at most `timeout`. Returns `false` on timeout;
/// `true` when woken, interrupted or when the word had already changed.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> bool {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, aligned 32-bit atomic; FUTEX_WAIT only reads it and takes
    // a relative timeout that lives on this stack for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
        )
    };
    !(r == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT))
}

/// Wakes up to `n` processes or threads sleeping on `word`.
pub(crate) fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: `word` is a live, aligned 32-bit atomic; FUTEX_WAKE does not access memory.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, n);
    }
}

/// Sleeps while `word` holds `expected` (at most `timeout`), counted in `sleepers` so that
/// [`wake_sleepers`] can skip the system call when nobody sleeps. Returns `false` on timeout.
pub(crate) fn sleep_counted(
    word: &AtomicU32,
    expected: u32,
    sleepers: &AtomicU32,
    timeout: Option<Duration>,
) -> bool {
    sleepers.fetch_add(1, Ordering::SeqCst);
    // Pairs with the fence in `wake_sleepers` (and in `Notify::notify`): either the waker
    // sees this sleeper, or this load sees the waker's new value (and the kernel's compare
    // does not sleep).
    fence(Ordering::SeqCst);
    let woken = word.load(Ordering::Relaxed) != expected || futex_wait(word, expected, timeout);
    sleepers.fetch_sub(1, Ordering::SeqCst);
    woken
}

/// Wakes every sleeper of [`sleep_counted`] on `word`, with no system call if there is none.
/// Call it after changing `word`.
pub(crate) fn wake_sleepers(word: &AtomicU32, sleepers: &AtomicU32) {
    // Pairs with the fence in `sleep_counted`.
    fence(Ordering::SeqCst);
    if sleepers.load(Ordering::Relaxed) > 0 {
        futex_wake(word, i32::MAX);
    }
}

/// Waits until `ready()` or the deadline: brief spinning, then futex sleeps on `word`.
pub(crate) fn wait_until(
    word: &AtomicU32,
    deadline: Deadline,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    for _ in 0..64 {
        if ready() {
            return Ok(());
        }
        std::hint::spin_loop();
    }
    loop {
        let seen = word.load(Ordering::Acquire);
        if ready() {
            return Ok(());
        }
        match deadline.remaining() {
            Some(d) if d.is_zero() => return Err(Error::Timeout),
            left => {
                futex_wait(word, seen, left);
            }
        }
    }
}

/// A process-shared, robust pthread mutex living in shared memory.
#[repr(C)]
pub(crate) struct RawMutex(UnsafeCell<libc::pthread_mutex_t>);

// SAFETY: a pthread mutex is made to be used from many threads; process-shared mode makes it
// valid from many processes too.
unsafe impl Sync for RawMutex {}

/// Whether a lock was taken normally or from a holder that died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taken {
    Normally,
    FromDeadHolder,
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

impl RawMutex {
    /// Initialises a mutex in place: process-shared and robust.
    ///
    /// # Safety
    /// `this` points to writable memory for a `RawMutex` that no one else uses yet.
    pub(crate) unsafe fn init(this: *mut RawMutex) -> io::Result<()> {
        let mut attr = mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        // SAFETY: initialises the attribute object on our stack.
        check(unsafe { libc::pthread_mutexattr_init(attr.as_mut_ptr()) })?;
        let attr = attr.as_mut_ptr();
        let configure = || -> io::Result<()> {
            // SAFETY: `attr` was initialised above.
            check(unsafe {
                libc::pthread_mutexattr_setpshared(attr, libc::PTHREAD_PROCESS_SHARED)
            })?;
            // SAFETY: `attr` was initialised above.
            check(unsafe { libc::pthread_mutexattr_setrobust(attr, libc::PTHREAD_MUTEX_ROBUST) })?;
            // A thread locking twice gets EDEADLK instead of hanging for ever.
            // SAFETY: `attr` was initialised above.
            check(unsafe {
                libc::pthread_mutexattr_settype(attr, libc::PTHREAD_MUTEX_ERRORCHECK)
            })?;
            // SAFETY: the caller gives exclusive, writable memory for the mutex; `attr` is
            // initialised.
            check(unsafe { libc::pthread_mutex_init((*this).0.get(), attr) })
        };
        let r = configure();
        // SAFETY: `attr` was initialised above and is not used after this.
        unsafe { libc::pthread_mutexattr_destroy(attr) };
        r
    }

    /// Locks, waiting until `deadline`; a holder that died hands the lock over.
    pub(crate) fn lock(&self, deadline: Deadline) -> Result<Taken> {
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
        match rc {
            0 => Ok(Taken::Normally),
            libc::EOWNERDEAD => {
                // SAFETY: we hold the lock (EOWNERDEAD hands it to us); marking it consistent
                // is what the protocol asks of the new holder.
                check(unsafe { libc::pthread_mutex_consistent(self.0.get()) })?;
                tracing::warn!("lock holder died; lock recovered");
                Ok(Taken::FromDeadHolder)
            }
            libc::EBUSY | libc::ETIMEDOUT => Err(Error::Timeout),
            libc::ENOTRECOVERABLE => Err(Error::Unrecoverable),
            libc::EDEADLK => Err(Error::WouldDeadlock),
            rc => Err(io::Error::from_raw_os_error(rc).into()),
        }
    }

    /// Unlocks.
    ///
    /// # Safety
    /// The calling thread holds the lock.
    pub(crate) unsafe fn unlock(&self) {
        // SAFETY: the caller holds the lock.
        unsafe { libc::pthread_mutex_unlock(self.0.get()) };
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

/// Reads a `T` from shared memory another process may be writing.
///
/// Types of 1, 2, 4 or 8 bytes, aligned, are read with one atomic load (never torn);
/// larger ones with a sequence of atomic loads (may tear if written meanwhile).
///
/// # Safety
/// `src` is valid for reads of `size_of::<T>()` bytes and aligned for `T`.
pub(crate) unsafe fn read_pod<T: Pod>(src: *const T) -> T {
    let p = src.cast::<u8>().cast_mut();
    let size = mem::size_of::<T>();
    let one_word = matches!(size, 1 | 2 | 4 | 8) && (p as usize) % size == 0;
    if !one_word {
        let mut out = T::zeroed();
        // SAFETY: the caller guarantees `src` is valid for `size` bytes.
        unsafe { copy_in(bytemuck::bytes_of_mut(&mut out), p) };
        return out;
    }
    // In each arm: `p` is valid for `size` bytes (the caller) and aligned to `size`
    // (checked above), so it is a valid atomic of that size.
    let bytes: [u8; 8] = match size {
        // SAFETY: see above.
        1 => u64::from(unsafe { AtomicU8::from_ptr(p) }.load(Ordering::Acquire)),
        // SAFETY: see above.
        2 => u64::from(unsafe { AtomicU16::from_ptr(p.cast()) }.load(Ordering::Acquire)),
        // SAFETY: see above.
        4 => u64::from(unsafe { AtomicU32::from_ptr(p.cast()) }.load(Ordering::Acquire)),
        // SAFETY: see above.
        _ => unsafe { AtomicU64::from_ptr(p.cast()) }.load(Ordering::Acquire),
    }
    .to_le_bytes();
    from_le_word(&bytes[..size])
}

/// A `T` from the low `size_of::<T>()` bytes of a little-endian word.
fn from_le_word<T: Pod>(le: &[u8]) -> T {
    let mut native = [0u8; 8];
    native[..le.len()].copy_from_slice(le);
    if cfg!(target_endian = "big") {
        native[..le.len()].reverse();
    }
    bytemuck::pod_read_unaligned(&native[..le.len()])
}

/// The native bytes of `b` as a little-endian word, the inverse of [`from_le_word`].
fn to_le_word(b: &[u8]) -> u64 {
    let mut native = [0u8; 8];
    native[..b.len()].copy_from_slice(b);
    if cfg!(target_endian = "big") {
        native[..b.len()].reverse();
    }
    u64::from_le_bytes(native)
}

/// Writes a `T` into shared memory other processes may be reading; see [`read_pod`].
///
/// # Safety
/// `dst` is valid for writes of `size_of::<T>()` bytes and aligned for `T`.
pub(crate) unsafe fn write_pod<T: Pod>(dst: *mut T, value: &T) {
    let b = bytemuck::bytes_of(value);
    let p = dst.cast::<u8>();
    let one_word = matches!(b.len(), 1 | 2 | 4 | 8) && (p as usize) % b.len() == 0;
    if !one_word {
        // SAFETY: the caller guarantees `dst` is valid for `b.len()` bytes.
        unsafe { copy_out(p, b) };
        return;
    }
    let w = to_le_word(b);
    // In each arm: `p` is valid for `b.len()` bytes (the caller) and aligned to it
    // (checked above), so it is a valid atomic of that size.
    match b.len() {
        // SAFETY: see above.
        1 => unsafe { AtomicU8::from_ptr(p) }.store(w as u8, Ordering::Release),
        // SAFETY: see above.
        2 => unsafe { AtomicU16::from_ptr(p.cast()) }.store(w as u16, Ordering::Release),
        // SAFETY: see above.
        4 => unsafe { AtomicU32::from_ptr(p.cast()) }.store(w as u32, Ordering::Release),
        // SAFETY: see above.
        _ => unsafe { AtomicU64::from_ptr(p.cast()) }.store(w, Ordering::Release),
    }
}

/// Copies `dst.len()` bytes from shared memory at `src` with relaxed atomic loads, then an
/// acquire fence.
///
/// # Safety
/// `src` is valid for reads of `dst.len()` bytes.
pub(crate) unsafe fn copy_in(dst: &mut [u8], src: *const u8) {
    let head = src.align_offset(8).min(dst.len());
    let words = (dst.len() - head) / 8;
    for (i, d) in dst[..head].iter_mut().enumerate() {
        // SAFETY: within the caller's range; any address is aligned for a byte.
        *d = unsafe { AtomicU8::from_ptr(src.add(i).cast_mut()) }.load(Ordering::Relaxed);
    }
    for w in 0..words {
        let off = head + w * 8;
        // SAFETY: within the caller's range, and `src + head` is 8-aligned.
        let v =
            unsafe { AtomicU64::from_ptr(src.add(off).cast_mut().cast()) }.load(Ordering::Relaxed);
        dst[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
    for (i, d) in dst.iter_mut().enumerate().skip(head + words * 8) {
        // SAFETY: within the caller's range.
        *d = unsafe { AtomicU8::from_ptr(src.add(i).cast_mut()) }.load(Ordering::Relaxed);
    }
    // Pairs with the release fence of `copy_out` in the writer.
    fence(Ordering::Acquire);
}

/// Copies `src` into shared memory at `dst`: a release fence, then relaxed atomic stores.
///
/// # Safety
/// `dst` is valid for writes of `src.len()` bytes.
pub(crate) unsafe fn copy_out(dst: *mut u8, src: &[u8]) {
    // Pairs with the acquire fence of `copy_in` in the reader.
    fence(Ordering::Release);
    let head = dst.align_offset(8).min(src.len());
    let words = (src.len() - head) / 8;
    for (i, &s) in src[..head].iter().enumerate() {
        // SAFETY: within the caller's range; any address is aligned for a byte.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(s, Ordering::Relaxed);
    }
    for w in 0..words {
        let off = head + w * 8;
        let v = u64::from_ne_bytes(src[off..off + 8].try_into().expect("8 bytes"));
        // SAFETY: within the caller's range, and `dst + head` is 8-aligned.
        unsafe { AtomicU64::from_ptr(dst.add(off).cast()) }.store(v, Ordering::Relaxed);
    }
    for (i, &s) in src.iter().enumerate().skip(head + words * 8) {
        // SAFETY: within the caller's range.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(s, Ordering::Relaxed);
    }
}
