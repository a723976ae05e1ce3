//! The one path by which a queue handle's `put` and `get` encode and decode with its codec:
//! through a buffer kept per thread, so that they allocate nothing once it has grown.

use std::{cell::Cell, thread::LocalKey};

use ipckit_core::{Codec, Result};
use serde::{Serialize, de::DeserializeOwned};

thread_local! {
    /// The bytes of the message being put or got.
    static MESSAGE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    /// A second buffer, for a backend that receives through one of its own.
    pub(crate) static SPARE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` with the buffer kept in `key`, which is taken out meanwhile: a nested call (or
/// one during thread exit) gets an empty buffer instead of a panic.
pub(crate) fn with_buffer<R>(
    key: &'static LocalKey<Cell<Vec<u8>>>,
    f: impl FnOnce(&mut Vec<u8>) -> R,
) -> R {
    let mut buf = key.try_with(Cell::take).unwrap_or_default();
    let r = f(&mut buf);
    let _ = key.try_with(|cell| cell.set(buf));
    r
}

/// Encodes `msg` with `codec` and hands the bytes to `send`.
pub(crate) fn encode_with<T: Serialize, C: Codec>(
    codec: &C,
    msg: &T,
    send: impl FnOnce(&[u8]) -> Result<()>,
) -> Result<()> {
    with_buffer(&MESSAGE, |buf| {
        buf.clear();
        codec.encode(msg, buf)?;
        send(buf)
    })
}

/// Has `recv` fill a buffer with one message, and decodes it with `codec`.
pub(crate) fn decode_with<T: DeserializeOwned, C: Codec>(
    codec: &C,
    recv: impl FnOnce(&mut Vec<u8>) -> Result<()>,
) -> Result<T> {
    with_buffer(&MESSAGE, |buf| {
        recv(buf)?;
        codec.decode(buf)
    })
}
