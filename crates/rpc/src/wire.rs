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
    /// The answer to call `id`.
    Reply { id: u64, outcome: Outcome },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Outcome {
    Ok(Vec<u8>),
    Fault(Fault),
    UnknownMethod(String),
    BadParams { method: String, reason: String },
    Panicked { method: String, message: String },
    DeadlineExceeded,
    Internal(String),
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
        }
    }
}

pub(crate) fn encode(frame: &Frame) -> crate::Result<Vec<u8>> {
    postcard::to_stdvec(frame).map_err(|e| Error::Decode(e.to_string()))
}

pub(crate) fn decode(bytes: &[u8]) -> crate::Result<Frame> {
    postcard::from_bytes(bytes).map_err(|e| Error::Protocol(e.to_string()))
}
