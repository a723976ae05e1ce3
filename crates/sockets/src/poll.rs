//! Waiting for descriptors with a deadline: the `poll(2)` loops of this crate.

use std::os::fd::BorrowedFd;

use ipckit_core::{Deadline, Error, Result};
use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout, poll},
};

/// The `poll(2)` timeout for `deadline`: zero once it has passed (one look, no wait).
fn timeout(deadline: Deadline) -> PollTimeout {
    match deadline.remaining() {
        None => PollTimeout::NONE,
        Some(left) if left.is_zero() => PollTimeout::ZERO,
        // Rounded up: a short wait does not spin at zero milliseconds.
        Some(left) => {
            PollTimeout::try_from(left.as_millis().saturating_add(1).min(i32::MAX as u128) as i32)
                .unwrap_or(PollTimeout::MAX)
        }
    }
}

/// Waits until `fd` is ready for `events` (or has an error or hang-up to report), or
/// `deadline` passes: then [`Error::Timeout`].
pub(crate) fn wait(fd: BorrowedFd<'_>, events: PollFlags, deadline: Deadline) -> Result<()> {
    loop {
        match poll(&mut [PollFd::new(fd, events)], timeout(deadline)) {
            Ok(0) if deadline.has_passed() => return Err(Error::Timeout),
            Ok(0) | Err(Errno::EINTR) => {}
            Ok(_) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits until any of `fds` is readable (or has an error or hang-up to report), or
/// `deadline` passes: then [`Error::Timeout`]. Says which are.
pub(crate) fn wait_readable(fds: &[BorrowedFd<'_>], deadline: Deadline) -> Result<Vec<bool>> {
    let mut polled: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    loop {
        match poll(&mut polled, timeout(deadline)) {
            Ok(0) if deadline.has_passed() => return Err(Error::Timeout),
            Ok(0) | Err(Errno::EINTR) => {}
            Ok(_) => {
                return Ok(polled
                    .iter()
                    .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
                    .collect());
            }
            Err(e) => return Err(e.into()),
        }
    }
}
