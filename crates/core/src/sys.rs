//! The few system calls that need `unsafe`, each fenced with the reason it is sound.
//!
//! Everything else goes through nix's safe wrappers.

use std::{
    os::{
        fd::{FromRawFd, OwnedFd, RawFd},
        unix::process::CommandExt,
    },
    sync::Once,
};

use nix::{
    fcntl::{FcntlArg, FdFlag, fcntl},
    sys::{
        prctl,
        signal::{SigHandler, Signal, signal},
    },
    unistd::{Pid, getppid},
};

/// Makes a write to a closed pipe an `EPIPE` error instead of a fatal signal.
///
/// Rust programs already ignore SIGPIPE; this covers ipckit inside programs whose `main`
/// is not Rust's. A handler someone installed is put back.
pub(crate) fn ignore_sigpipe() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: SIG_IGN runs no code in signal context; the previous disposition is
        // restored at once below if it was a handler of the program's own.
        let previous = unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) };
        if let Ok(h @ (SigHandler::Handler(_) | SigHandler::SigAction(_))) = previous {
            // SAFETY: re-installs exactly the handler the program had installed itself.
            let _ = unsafe { signal(Signal::SIGPIPE, h) };
        }
    });
}

/// Takes ownership of a descriptor number handed down by the parent process.
///
/// Only [`enter`](crate::enter) calls this, once per number the parent listed, before the
/// role's own code runs, so nothing else in the process owns these numbers. The descriptor
/// is made close-on-exec again, so it is not passed on further.
pub(crate) fn inherited_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: the parent opened `fd` for this child and cleared close-on-exec on it alone;
    // `enter` adopts each listed number exactly once, before any other code can own it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let _ = fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    owned
}

/// Arranges for the child of `cmd` to die with its parent and to inherit exactly `keep`.
pub(crate) fn prepare_child(cmd: &mut std::process::Command, keep: Vec<RawFd>, parent: Pid) {
    let hook = move || -> std::io::Result<()> {
        prctl::set_pdeathsig(Signal::SIGKILL)?;
        // The parent may have died before the line above took effect.
        if getppid() != parent {
            return Err(std::io::Error::other("parent exited"));
        }
        for &fd in &keep {
            // SAFETY: `fd` is open in the parent at spawn time and so in this forked child;
            // the borrow does not outlive this call.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
        }
        Ok(())
    };
    // SAFETY: between fork and exec the hook only makes async-signal-safe system calls
    // (prctl, getppid, fcntl) and does not allocate.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// An address in this executable's code, as an offset from a fixed function of ipckit-core.
///
/// A child started with `Command::spawn` runs the same executable file, so an offset taken
/// here names the same function there, wherever address-space randomisation loaded it.
pub(crate) fn code_offset(addr: usize) -> usize {
    addr.wrapping_sub(anchor as fn() as usize)
}

/// The code address at `offset` from the anchor, in this process.
fn code_at(offset: usize) -> usize {
    (anchor as fn() as usize).wrapping_add(offset)
}

/// The fixed point that code offsets are measured from.
#[inline(never)]
fn anchor() {}

/// The role trampoline at `offset`, as the parent found it with [`code_offset`].
pub(crate) fn trampoline_at(offset: usize) -> crate::roles::Trampoline {
    fn_at(offset)
}

/// The function pointer of type `F` at `offset`, as the parent found it with
/// [`code_offset`] on a value of type `F`.
pub(crate) fn fn_at<F: Copy>(offset: usize) -> F {
    const { assert!(std::mem::size_of::<F>() == std::mem::size_of::<usize>()) };
    let addr = code_at(offset);
    // SAFETY: `F` is a function-pointer type of the size of an address (checked above).
    // The parent took `offset` from a function of exactly this type in the same executable
    // file (the spawn protocol sends the type's trampoline with it, and only
    // `enter` of a child that the parent started with this executable reads it), so
    // `addr` is that function's address in this process.
    unsafe { std::mem::transmute_copy::<usize, F>(&addr) }
}
