//! The error type of ipckit-core and the per-operation enums that give a message back.

use std::{fmt, io};

/// Everything that can go wrong in ipckit-core and in the mechanisms built on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer closed its end or its process died; no more messages will come.
    #[error("the peer is gone (closed or its process died)")]
    Disconnected,
    /// The operation did not complete before its deadline (or at once, for a `try_` form).
    #[error("timed out")]
    Timeout,
    /// A message (announced or offered) is larger than the configured maximum.
    #[error("message of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The size that was announced or offered.
        len: u64,
        /// The configured maximum.
        max: usize,
    },
    /// The bytes on the wire do not follow the framing protocol.
    #[error("malformed stream: {0}")]
    Malformed(String),
    /// The codec could not encode or decode a value.
    #[error("codec error: {0}")]
    Codec(String),
    /// A child process started through [`Command`](crate::Command) panicked.
    #[error("role `{role}` panicked: {message}")]
    RolePanicked {
        /// The role's name.
        role: String,
        /// The panic message.
        message: String,
    },
    /// A child process's role returned an error.
    #[error("role `{role}` failed: {message}")]
    RoleFailed {
        /// The role's name.
        role: String,
        /// The error it returned, as text.
        message: String,
    },
    /// A child process ended by a signal (SIGKILL, an abort, a crash) before its role
    /// could report.
    #[error("role `{role}` (pid {pid}) was killed by signal {signal}")]
    RoleKilled {
        /// The role's name.
        role: String,
        /// The child's process id.
        pid: u32,
        /// The signal's number.
        signal: i32,
    },
    /// A child process was to be started, but [`enter`](crate::enter) was never called: the
    /// child would re-run `main` and start children of its own, without end.
    #[error(
        "call ipckit_core::enter(ROLES) first thing in main (and in each test that spawns) \
         before spawning a child process"
    )]
    EnterMissing,
    /// A handle or argument expected by a role was not handed to it.
    #[error("role input `{0}` is missing or invalid")]
    RoleInput(String),
    /// The operation is not supported on this platform or by this mechanism.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// Creating, opening or binding a named OS object failed; names the object and where.
    #[error("cannot {action} {object} `{name}`: {source}")]
    Os {
        /// What was being done: `open`, `create`, `bind`, `connect`, `remove`.
        action: &'static str,
        /// What kind of object: `shared-memory segment`, `FIFO`, `socket`, `message queue`.
        object: &'static str,
        /// Its name, path or address.
        name: String,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// An object exists under the name, but it is not what the caller asked for.
    #[error("`{name}` is not {expected}: {reason}")]
    NotA {
        /// What the caller expected (`an ipckit queue`, `a FIFO`).
        expected: &'static str,
        /// The name or path that was opened.
        name: String,
        /// What did not match.
        reason: String,
    },
    /// Options that cannot be met, before any OS object was made.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// An address that cannot be parsed or used.
    #[error("invalid address `{address}`: {reason}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// Why it is refused.
        reason: String,
    },
    /// The authkey handshake failed.
    #[error("authentication failed: {0}")]
    Auth(#[from] AuthError),
    /// A fixed-size table is full.
    #[error("{what}: the limit of {limit} is reached")]
    LimitReached {
        /// What ran out (`sender slots of the queue`).
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// A failure of shared memory underneath a mechanism (ipckit-shmem's error, kept as the
    /// source so that callers can downcast it).
    #[error("shared memory: {0}")]
    SharedMemory(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// An operating-system call failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<nix::Error> for Error {
    fn from(e: nix::Error) -> Self {
        Error::Io(io::Error::from(e))
    }
}

impl Error {
    /// An OS failure on a named object: `Error::os("open", "FIFO", path, e)`.
    pub fn os(
        action: &'static str,
        object: &'static str,
        name: impl fmt::Display,
        source: impl Into<io::Error>,
    ) -> Self {
        Error::Os {
            action,
            object,
            name: name.to_string(),
            source: source.into(),
        }
    }

    /// The OS error underneath, if this is one (`Io` or `Os`).
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Error::Io(e) | Error::Os { source: e, .. } => Some(e),
            _ => None,
        }
    }
}

/// Why an authkey handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The peer's digest did not match: the two sides hold different keys.
    #[error("the peer's key does not match ours")]
    WrongKey,
    /// The peer checked our answer and refused it.
    #[error("the peer refused our key")]
    Refused,
    /// The peer asked for a digest this side does not speak (or does not allow).
    #[error("unsupported digest `{0}`")]
    UnsupportedDigest(String),
    /// The peer's handshake messages do not follow the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// The result type of ipckit-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Error of a non-blocking receive.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TryRecvError {
    /// No message is ready now.
    #[error("no message is ready")]
    Empty,
    /// The peer is gone and every message it sent has been received.
    #[error("the peer is gone")]
    Disconnected,
    /// Anything else.
    #[error(transparent)]
    Failed(Error),
}

/// Error of a receive with a timeout.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvTimeoutError {
    /// No message arrived before the timeout.
    #[error("timed out waiting for a message")]
    Timeout,
    /// The peer is gone and every message it sent has been received.
    #[error("the peer is gone")]
    Disconnected,
    /// Anything else.
    #[error(transparent)]
    Failed(Error),
}

/// Error of a non-blocking send; gives the message back where it was not sent.
#[non_exhaustive]
pub enum TrySendError<T> {
    /// The channel is full now; here is the message.
    Full(T),
    /// The peer is gone; here is the message.
    Disconnected(T),
    /// Anything else (the message could not be encoded, an OS call failed).
    Failed(Error),
}

/// Error of a send with a timeout; gives the message back where it was not sent.
#[non_exhaustive]
pub enum SendTimeoutError<T> {
    /// The channel stayed full until the timeout; here is the message.
    Timeout(T),
    /// The peer is gone; here is the message.
    Disconnected(T),
    /// Anything else (the message could not be encoded, an OS call failed).
    Failed(Error),
}

impl From<Error> for TryRecvError {
    fn from(e: Error) -> Self {
        match e {
            Error::Timeout => TryRecvError::Empty,
            Error::Disconnected => TryRecvError::Disconnected,
            e => TryRecvError::Failed(e),
        }
    }
}

impl From<Error> for RecvTimeoutError {
    fn from(e: Error) -> Self {
        match e {
            Error::Timeout => RecvTimeoutError::Timeout,
            Error::Disconnected => RecvTimeoutError::Disconnected,
            e => RecvTimeoutError::Failed(e),
        }
    }
}

impl<T> TrySendError<T> {
    /// Builds the error for `msg` from the error of the underlying send.
    pub fn from_error(e: Error, msg: T) -> Self {
        match e {
            Error::Timeout => TrySendError::Full(msg),
            Error::Disconnected => TrySendError::Disconnected(msg),
            e => TrySendError::Failed(e),
        }
    }

    /// The message that was not sent, if this error carries it.
    pub fn into_inner(self) -> Option<T> {
        match self {
            TrySendError::Full(m) | TrySendError::Disconnected(m) => Some(m),
            TrySendError::Failed(_) => None,
        }
    }
}

impl<T> SendTimeoutError<T> {
    /// Builds the error for `msg` from the error of the underlying send.
    pub fn from_error(e: Error, msg: T) -> Self {
        match e {
            Error::Timeout => SendTimeoutError::Timeout(msg),
            Error::Disconnected => SendTimeoutError::Disconnected(msg),
            e => SendTimeoutError::Failed(e),
        }
    }

    /// The message that was not sent, if this error carries it.
    pub fn into_inner(self) -> Option<T> {
        match self {
            SendTimeoutError::Timeout(m) | SendTimeoutError::Disconnected(m) => Some(m),
            SendTimeoutError::Failed(_) => None,
        }
    }
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("Full(..)"),
            TrySendError::Disconnected(_) => f.write_str("Disconnected(..)"),
            TrySendError::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

impl<T> fmt::Display for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("the channel is full"),
            TrySendError::Disconnected(_) => f.write_str("the peer is gone"),
            TrySendError::Failed(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl<T> std::error::Error for TrySendError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TrySendError::Failed(e) => Some(e),
            _ => None,
        }
    }
}

impl<T> fmt::Debug for SendTimeoutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendTimeoutError::Timeout(_) => f.write_str("Timeout(..)"),
            SendTimeoutError::Disconnected(_) => f.write_str("Disconnected(..)"),
            SendTimeoutError::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

impl<T> fmt::Display for SendTimeoutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendTimeoutError::Timeout(_) => f.write_str("timed out waiting for room"),
            SendTimeoutError::Disconnected(_) => f.write_str("the peer is gone"),
            SendTimeoutError::Failed(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl<T> std::error::Error for SendTimeoutError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendTimeoutError::Failed(e) => Some(e),
            _ => None,
        }
    }
}
