//! Waiting for a descriptor with a deadline: the one `poll(2)` loop of this crate.

use std::os::fd::BorrowedFd;

use ipckit_core::{Deadline, Error, Result};
use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout, poll},
};

/// Waits until `fd` is ready for `events` (or has an error or hang-up to report), or
/// `deadline` passes: then [`Error::Timeout`].
pub(crate) fn wait(fd: BorrowedFd<'_>, events: PollFlags, deadline: Deadline) -> Result<()> {
    loop {
        let timeout = match deadline.remaining() {
            None => PollTimeout::NONE,
            Some(left) if left.is_zero() => return Err(Error::Timeout),
            // Rounded up: a short wait does not spin at zero milliseconds.
            Some(left) => PollTimeout::try_from(
                left.as_millis().saturating_add(1).min(i32::MAX as u128) as i32,
            )
            .unwrap_or(PollTimeout::MAX),
        };
        match poll(&mut [PollFd::new(fd, events)], timeout) {
            Ok(0) | Err(Errno::EINTR) => {}
            Ok(_) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}
