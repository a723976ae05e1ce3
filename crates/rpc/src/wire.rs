//! The typed transport's messages (postcard-encoded, one per frame).

use serde::{Deserialize, Serialize};

use crate::{Error, Fault};

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Frame {
    /// A call: the reply carries the same id. `timeout_us` is what was left of the caller's
    /// deadline when it was sent (0: none).
    Call {
        id: u64,
        method: String,
        timeout_us: u64,
        params: Vec<u8>,
    },
    /// A call without a reply.
    Notify { method: String, params: Vec<u8> },
    /// The answer to call `id`; for a stream, its end (`Outcome::Ok` with no bytes, or the
    /// error that ended it).
    Reply { id: u64, outcome: Outcome },
    /// A call whose function returns a stream of items, each sent as an `Item`, then a
    /// `Reply` ends it.
    Stream {
        id: u64,
        method: String,
        timeout_us: u64,
        params: Vec<u8>,
    },
    /// One item of stream `id`.
    Item { id: u64, item: Vec<u8> },
    /// The client consumed `n` more items of stream `id`: the server may send `n` more.
    Ack { id: u64, n: u32 },
    /// The client wants no more of stream `id`: the server stops it and answers nothing.
    Cancel { id: u64 },
}

/// Items of a stream the server sends before the client acknowledges any.
pub(crate) const WINDOW: u32 = 32;

/// The client acknowledges items in batches of this many.
pub(crate) const ACK_EVERY: u32 = WINDOW / 2;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Outcome {
    Ok(Vec<u8>),
    Fault(Fault),
    UnknownMethod(String),
    BadParams { method: String, reason: String },
    Panicked { method: String, message: String },
    DeadlineExceeded,
    Internal(String),
    WrongKind { method: String, streams: bool },
}

impl From<crate::Result<Vec<u8>>> for Outcome {
    fn from(r: crate::Result<Vec<u8>>) -> Outcome {
        match r {
            Ok(b) => Outcome::Ok(b),
            Err(Error::Remote(f)) => Outcome::Fault(f),
            Err(Error::UnknownMethod(m)) => Outcome::UnknownMethod(m),
            Err(Error::BadParams { method, reason }) => Outcome::BadParams { method, reason },
            Err(Error::Panicked { method, message }) => Outcome::Panicked { method, message },
            Err(Error::Timeout) => Outcome::DeadlineExceeded,
            Err(Error::WrongKind { method, streams }) => Outcome::WrongKind { method, streams },
            Err(e) => Outcome::Internal(e.to_string()),
        }
    }
}

impl From<Outcome> for crate::Result<Vec<u8>> {
    fn from(o: Outcome) -> crate::Result<Vec<u8>> {
        match o {
            Outcome::Ok(b) => Ok(b),
            Outcome::Fault(f) => Err(Error::Remote(f)),
            Outcome::UnknownMethod(m) => Err(Error::UnknownMethod(m)),
            Outcome::BadParams { method, reason } => Err(Error::BadParams { method, reason }),
            Outcome::Panicked { method, message } => Err(Error::Panicked { method, message }),
            Outcome::DeadlineExceeded => Err(Error::Timeout),
            Outcome::Internal(m) => Err(Error::Protocol(m)),
            Outcome::WrongKind { method, streams } => Err(Error::WrongKind { method, streams }),
        }
    }
}

pub(crate) fn encode(frame: &Frame) -> crate::Result<Vec<u8>> {
    postcard::to_stdvec(frame).map_err(|e| Error::Decode(e.to_string()))
}

pub(crate) fn decode(bytes: &[u8]) -> crate::Result<Frame> {
    postcard::from_bytes(bytes).map_err(|e| Error::Protocol(e.to_string()))
}
