//! The manager's error type.

use crate::value::ValueError;

/// What went wrong with a manager call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server is gone (shut down, or its process died), or this client was dropped by
    /// it: every call, blocked ones included, ends with this.
    #[error("the manager is gone (shut down or its process died)")]
    Disconnected,
    /// A `_timeout` call ran out of time (a blocked lock or queue call is withdrawn first).
    #[error("timed out")]
    Timeout,
    /// A name is taken by an object of another kind or of other element types.
    #[error("object `{name}` is a {found}, not a {expected}")]
    WrongType {
        /// The object's name.
        name: String,
        /// What the proxy asked for (kind and element types).
        expected: String,
        /// What the object is.
        found: String,
    },
    /// A value above the server's maximum size.
    #[error("a value of {len} bytes exceeds the manager's maximum of {max} bytes")]
    TooLarge {
        /// Its encoded size.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// An index out of a list's range.
    #[error("index {index} is out of range for `{name}` of length {len}")]
    Index {
        /// The list's name.
        name: String,
        /// The index asked for.
        index: i64,
        /// The list's length.
        len: usize,
    },
    /// An operation that does not apply to the value there (adding to a string, popping
    /// an empty list, releasing a lock not held).
    #[error("`{name}`: {reason}")]
    Invalid {
        /// The object's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A typed value that does not convert to or from the server's form, or a value
    /// stored by another program in another shape.
    #[error("value conversion: {0}")]
    Value(#[from] ValueError),
    /// The server refused the request as malformed (an unknown object handle or
    /// operation): a client of another version.
    #[error("the manager refused the request: {0}")]
    Protocol(String),
    /// A transport failure: connect, authkey handshake ([`ipckit_core::Error::Auth`]),
    /// spawning the server process.
    #[error(transparent)]
    Core(#[from] ipckit_core::Error),
}

/// The result of a manager call.
pub type Result<T, E = Error> = std::result::Result<T, E>;
