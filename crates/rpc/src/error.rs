//! The errors of a call, and the error a function returns.

use std::fmt;

use serde::{Deserialize, Serialize};

/// JSON-RPC's and ipckit's code for a method nobody registered.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC's and ipckit's code for parameters the function does not take.
pub const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC's and ipckit's code for a function that panicked (or another server failure).
pub const INTERNAL_ERROR: i64 = -32603;
/// JSON-RPC's code for a body that is not JSON (XML-RPC: not XML).
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC's code for a body that is JSON but not a request.
pub const INVALID_REQUEST: i64 = -32600;
/// ipckit's code for a call whose deadline passed before the server started it.
pub const DEADLINE_EXCEEDED: i64 = -32000;

/// The error a registered function returns: a code, a message and optional data, as
/// XML-RPC's fault (`faultCode`, `faultString`) and JSON-RPC's error object carry it.
///
/// Create one with [`Fault::new`]; add data with [`Fault::with_data`]. The caller receives
/// it as [`Error::Remote`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// The error's code (choose codes outside JSON-RPC's reserved -32768..=-32000).
    pub code: i64,
    /// What went wrong.
    pub message: String,
    /// Anything more, as JSON (`None` if there is none).
    pub data: Option<String>,
}

impl Fault {
    /// A fault with `code` and `message`, and no data.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Fault {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// Attaches `data` (any serialisable value) to the fault.
    pub fn with_data(mut self, data: &impl Serialize) -> Self {
        self.data = serde_json::to_string(data).ok();
        self
    }

    /// The data attached to the fault, decoded as `T`, if there is any and it decodes.
    pub fn data<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        self.data
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok())
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl std::error::Error for Fault {}

/// Everything that can go wrong with a call: each failure is its own variant, so a caller
/// tells a function's error from a missing method, bad parameters, a timeout and a server
/// that is gone without reading messages.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The remote function ran and returned this error (an XML-RPC fault, a JSON-RPC error
    /// object).
    #[error("the remote function failed: {0}")]
    Remote(Fault),
    /// No function of that name is registered on the server.
    #[error("no method `{0}` on the server")]
    UnknownMethod(String),
    /// The server could not decode the parameters as what the function takes.
    #[error("bad parameters for `{method}`: {reason}")]
    BadParams {
        /// The method called.
        method: String,
        /// Why the parameters were refused.
        reason: String,
    },
    /// The function panicked on the server (the server serves on).
    #[error("the remote function `{method}` panicked: {message}")]
    Panicked {
        /// The method called.
        method: String,
        /// The panic's message.
        message: String,
    },
    /// The method was called for one result but streams its results, or the other way
    /// round (call a stream with [`Client::stream`](crate::Client::stream)).
    #[error("{}", wrong_kind(method, *streams))]
    WrongKind {
        /// The method called.
        method: String,
        /// Whether the method streams its results.
        streams: bool,
    },
    /// No answer came before the call's deadline (or the server found the deadline passed
    /// before it could start the call); for a stream, no item came within the timeout of
    /// one wait.
    #[error("the call timed out")]
    Timeout,
    /// The server is gone (closed the connection, or its process died) before it answered.
    #[error("the server is gone")]
    Disconnected,
    /// The answer could not be decoded as the type asked for.
    #[error("cannot decode: {0}")]
    Decode(String),
    /// The peer broke the protocol (malformed XML, JSON, frame or HTTP).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The HTTP server answered with a status other than 200.
    #[error("HTTP status {status}: {reason}")]
    Http {
        /// The status code.
        status: u16,
        /// The reason phrase.
        reason: String,
    },
    /// A failure of the transport underneath (connect, bind, authkey).
    #[error(transparent)]
    Core(#[from] ipckit_core::Error),
}

impl Error {
    /// The XML-RPC / JSON-RPC code that stands for this error, as a server reports it.
    pub fn code(&self) -> i64 {
        match self {
            Error::Remote(f) => f.code,
            Error::UnknownMethod(_) => METHOD_NOT_FOUND,
            Error::BadParams { .. } => INVALID_PARAMS,
            Error::WrongKind { .. } => INVALID_REQUEST,
            Error::Timeout => DEADLINE_EXCEEDED,
            Error::Protocol(_) | Error::Decode(_) => PARSE_ERROR,
            _ => INTERNAL_ERROR,
        }
    }

    pub(crate) fn io(e: std::io::Error) -> Self {
        Error::Core(ipckit_core::Error::Io(e))
    }
}

fn wrong_kind(method: &str, streams: bool) -> String {
    if streams {
        format!(
            "`{method}` streams its results: call it with `Client::stream` (XML-RPC and JSON-RPC have no streams)"
        )
    } else {
        format!("`{method}` returns one result, not a stream")
    }
}

/// The result of a call.
pub type Result<T, E = Error> = std::result::Result<T, E>;
