//! Futex wait and wake on a word in shared memory (not `FUTEX_PRIVATE`: the word is shared
//! between processes, the kernel keys it by physical page), and the waits built on them.

use std::{
    io,
    sync::atomic::{AtomicU32, Ordering, fence},
    time::Duration,
};

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
