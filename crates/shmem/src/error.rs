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
    /// An operating-system call on a named object failed: "cannot open shared-memory
    /// segment `x`: No such file or directory".
    #[error("cannot {action} {object} `{name}`: {source}")]
    Os {
        /// What was attempted: `create`, `open`, `resize`, `map`.
        action: &'static str,
        /// What it was attempted on: `shared-memory segment`, `memfd segment`, `mapped file`.
        object: &'static str,
        /// The object's name or path.
        name: String,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// Options or an initial value that make no valid object (a barrier for no party).
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// A value whose bytes are not a valid value of its type (a `bool` that another process
    /// set to 2).
    #[error("the shared bytes are not a valid `{0}`")]
    InvalidValue(&'static str),
    /// An object placed in a segment that others may already use (a segment opened, or
    /// already holding a published object).
    #[error("objects are placed only in a segment this process just created")]
    AlreadyPublished,
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

impl Error {
    /// An OS failure on a named object: `Error::os("open", "shared-memory segment", name, e)`.
    pub fn os(
        action: &'static str,
        object: &'static str,
        name: impl std::fmt::Display,
        source: impl Into<io::Error>,
    ) -> Self {
        Error::Os {
            action,
            object,
            name: name.to_string(),
            source: source.into(),
        }
    }

    /// The system's error, under [`Io`](Error::Io) or [`Os`](Error::Os).
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Error::Io(e) | Error::Os { source: e, .. } => Some(e),
            _ => None,
        }
    }
}

impl From<Error> for ipckit_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(e) => ipckit_core::Error::Io(e),
            Error::Timeout => ipckit_core::Error::Timeout,
            Error::Disconnected => ipckit_core::Error::Disconnected,
            e => ipckit_core::Error::SharedMemory(Box::new(e)),
        }
    }
}

/// The result type of ipckit-shmem.
pub type Result<T, E = Error> = std::result::Result<T, E>;
