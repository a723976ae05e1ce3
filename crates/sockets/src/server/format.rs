//! How a [`Server`](super::Server) turns messages into bytes and back.

use ipckit_core::{Codec, Result};
use serde::{Serialize, de::DeserializeOwned};

/// How a [`Server`](crate::Server) and its [`Events`](crate::Events) turn messages of `T`
/// into the bytes of one frame and back.
///
/// Every [`Codec`] is a format for every serde type (postcard by default, JSON with
/// ipckit-core's `json` feature); [`Raw`] carries `Vec<u8>` as it is. Implement it for a
/// format of your own.
pub trait Format<T>: Send + Sync + 'static {
    /// Appends the encoding of `msg` to `out` (which the caller has cleared).
    ///
    /// # Errors
    /// [`Error::Codec`](crate::Error::Codec) when the value cannot be encoded.
    fn encode(&self, msg: &T, out: &mut Vec<u8>) -> Result<()>;

    /// Decodes one message from the bytes of one frame.
    ///
    /// # Errors
    /// [`Error::Codec`](crate::Error::Codec) when the bytes are not a `T`.
    fn decode(&self, bytes: Vec<u8>) -> Result<T>;
}

impl<T, C> Format<T> for C
where
    T: Serialize + DeserializeOwned,
    C: Codec + Send + Sync + 'static,
{
    fn encode(&self, msg: &T, out: &mut Vec<u8>) -> Result<()> {
        Codec::encode(self, msg, out)
    }

    fn decode(&self, bytes: Vec<u8>) -> Result<T> {
        Codec::decode(self, &bytes)
    }
}

/// Messages as bytes, untouched: the format of a byte-level server,
/// [`Server::start_raw`](crate::Server::start_raw). Every frame is a message; nothing fails
/// to decode.
#[derive(Debug, Clone, Copy, Default)]
pub struct Raw;

impl Format<Vec<u8>> for Raw {
    fn encode(&self, msg: &Vec<u8>, out: &mut Vec<u8>) -> Result<()> {
        out.extend_from_slice(msg);
        Ok(())
    }

    fn decode(&self, bytes: Vec<u8>) -> Result<Vec<u8>> {
        Ok(bytes)
    }
}
