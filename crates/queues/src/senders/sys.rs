//! The descriptors a sender travels with: a fresh open file description of the queue's
//! shared memory, which carries an open-file-description lock (`F_OFD_SETLK`) on the byte
//! of its hand-over entry and, as its file offset, which entry that is. The lock lasts as
//! long as some process holds the description open, so it says whether the child it went
//! to (or the parent, before the child started) still lives.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
};

use ipckit_core::Handoff;
use nix::{
    fcntl::{FcntlArg, OFlag, fcntl, open},
    libc,
    sys::stat::Mode,
    unistd::{Whence, lseek},
};

/// Where the lock bytes and marks start: far beyond any queue's bytes, which no one locks.
const BASE: i64 = 1 << 40;

/// A lock request of `kind` on the byte of hand-over entry `index`.
fn request(kind: libc::c_int, index: usize) -> libc::flock {
    // SAFETY: `flock` is a C struct of integers, for which all zeroes is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = BASE + index as i64;
    fl.l_len = 1;
    fl
}

/// Takes the lock of entry `index` through `fd`'s open file description; false if another
/// description holds it.
pub(crate) fn lock(fd: BorrowedFd<'_>, index: usize) -> bool {
    fcntl(fd, FcntlArg::F_OFD_SETLK(&request(libc::F_WRLCK, index))).is_ok()
}

/// Releases the lock of entry `index` held through `fd`'s open file description.
pub(crate) fn unlock(fd: BorrowedFd<'_>, index: usize) {
    let _ = fcntl(fd, FcntlArg::F_OFD_SETLK(&request(libc::F_UNLCK, index)));
}

/// Whether an open file description other than `fd`'s holds the lock of entry `index`.
/// If the system cannot say, it is taken as held (the sender is taken as alive).
pub(crate) fn is_locked(fd: BorrowedFd<'_>, index: usize) -> bool {
    let mut probe = request(libc::F_WRLCK, index);
    match fcntl(fd, FcntlArg::F_OFD_GETLK(&mut probe)) {
        Ok(_) => probe.l_type != libc::F_UNLCK as libc::c_short,
        Err(_) => true,
    }
}

/// Records in `fd`'s open file description that it carries entry `index`.
pub(crate) fn mark(fd: BorrowedFd<'_>, index: usize) -> io::Result<()> {
    lseek(fd, BASE + index as i64, Whence::SeekSet)?;
    Ok(())
}

/// Records that `fd`'s open file description carries no entry.
pub(crate) fn unmark(fd: BorrowedFd<'_>) {
    let _ = lseek(fd, 0, Whence::SeekSet);
}

/// The entry `fd`'s open file description carries, if any.
pub(crate) fn marked(fd: BorrowedFd<'_>) -> Option<usize> {
    let at = lseek(fd, 0, Whence::SeekCur).ok()?;
    usize::try_from(at.checked_sub(BASE)?).ok()
}

/// A new open file description of the shared memory that `h` names or holds, so that its
/// locks and offset are its own.
pub(crate) fn reopen(h: &Handoff) -> io::Result<OwnedFd> {
    let path = match h {
        Handoff::Fd(fd) => format!("/proc/self/fd/{}", fd.as_raw_fd()),
        Handoff::Name(name) => format!("/dev/shm/{}", name.trim_start_matches('/')),
    };
    Ok(open(
        path.as_str(),
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// The path `fd` was opened at (for a named segment, `/dev/shm/<name>`).
pub(crate) fn path_of(fd: BorrowedFd<'_>) -> io::Result<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()))
}
