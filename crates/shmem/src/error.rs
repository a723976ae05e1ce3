//! The error type of ipckit-shmem.

use std::io;

/// Everything that can go wrong with shared memory and process-shared locks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The wait ended at its deadline (or at once, for a `try_` form).
    #[error("timed out")]
    Timeout,
    /// The segment does not hold what the caller expects (another type, size or layout).
    #[error("segment `{name}` does not hold a {expected}: {reason}")]
    Mismatch {
        /// The segment's name, or `anonymous`.
        name: String,
        /// The type the caller expected.
        expected: &'static str,
        /// What did not match.
        reason: String,
    },
    /// Its creator has not finished initialising the segment (or died doing so).
    #[error("segment `{0}` was never initialised")]
    NotReady(String),
    /// An offset or index outside the segment, array or file.
    #[error("range {offset}..{end} is outside 0..{len}")]
    OutOfBounds {
        /// Start of the requested range.
        offset: usize,
        /// End of the requested range.
        end: usize,
        /// Length available.
        len: usize,
    },
    /// An offset that is not aligned for the type read or written there.
    #[error("offset {offset} is not aligned to {align}")]
    Misaligned {
        /// The offset asked for.
        offset: usize,
        /// The alignment the type needs.
        align: usize,
    },
    /// A name that POSIX shared memory cannot take.
    #[error("invalid shared-memory name `{0}`: 1 to 250 characters, no `/` but a leading one")]
    InvalidName(String),
    /// A lock whose state was made unrecoverable (its holder died and nobody repaired it).
    #[error("the lock is unrecoverable")]
    Unrecoverable,
    /// The calling thread already holds this lock: locking it again would wait for ever.
    #[error("this thread already holds the lock")]
    WouldDeadlock,
    /// A barrier whose wait was abandoned by a participant (timeout or death).
    #[error("the barrier is broken: a participant gave up waiting")]
    BrokenBarrier,
    /// A bounded semaphore released more often than acquired.
    #[error("semaphore released above its bound of {0}")]
    SemaphoreOverflow(u32),
    /// The writer closed the ring (or died) and every item was read.
    #[error("the writer is gone")]
    Disconnected,
    /// A reader fell so far behind that the writer overwrote items it had not read.
    #[error("fell behind: {0} items were overwritten before they were read")]
    Lagged(u64),
    /// An operating-system call failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<nix::Error> for Error {
    fn from(e: nix::Error) -> Self {
        Error::Io(io::Error::from(e))
    }
}

impl From<Error> for ipckit_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(e) => ipckit_core::Error::Io(e),
            Error::Timeout => ipckit_core::Error::Timeout,
            Error::Disconnected => ipckit_core::Error::Disconnected,
            e => ipckit_core::Error::RoleInput(e.to_string()),
        }
    }
}

/// The result type of ipckit-shmem.
pub type Result<T, E = Error> = std::result::Result<T, E>;
