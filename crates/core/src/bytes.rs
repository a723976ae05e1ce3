//! The byte layer: framed messages, each delivered whole or not at all.

use std::time::Duration;

use crate::{
    Deadline, RecvTimeoutError, Result, SendTimeoutError, TryRecvError, TrySendError,
    codec::{Codec, Postcard},
    typed::{Receiver, Sender},
};

/// The sending end of a framed message transport.
///
/// A mechanism implements [`send_bytes_deadline`](SendBytes::send_bytes_deadline); the
/// blocking, `try_` and `_timeout` forms are provided on top of it.
pub trait SendBytes {
    /// Sends one message, waiting for room no later than `deadline`.
    ///
    /// # Errors
    /// [`Error::Timeout`](crate::Error::Timeout) if no part of the message could be sent before the deadline,
    /// [`Error::Disconnected`](crate::Error::Disconnected) if the receiver is gone, [`Error::TooLarge`](crate::Error::TooLarge) if the
    /// message exceeds the transport's maximum, [`Error::Io`](crate::Error::Io) for other OS failures.
    fn send_bytes_deadline(&mut self, msg: &[u8], deadline: Deadline) -> Result<()>;

    /// Sends one message, waiting as long as the transport is full.
    ///
    /// # Errors
    /// As [`send_bytes_deadline`](SendBytes::send_bytes_deadline), never `Timeout`.
    fn send_bytes(&mut self, msg: &[u8]) -> Result<()> {
        self.send_bytes_deadline(msg, Deadline::Never)
    }

    /// Sends one message if there is room now.
    ///
    /// # Errors
    /// [`TrySendError::Full`] when it would block, [`TrySendError::Disconnected`] when the
    /// receiver is gone.
    fn try_send_bytes(&mut self, msg: &[u8]) -> Result<(), TrySendError<()>> {
        self.send_bytes_deadline(msg, Deadline::Now)
            .map_err(|e| TrySendError::from_error(e, ()))
    }

    /// Sends one message, waiting at most `timeout` for room.
    ///
    /// # Errors
    /// [`SendTimeoutError::Timeout`] when no room came in time.
    fn send_bytes_timeout(
        &mut self,
        msg: &[u8],
        timeout: Duration,
    ) -> Result<(), SendTimeoutError<()>> {
        self.send_bytes_deadline(msg, Deadline::after(timeout))
            .map_err(|e| SendTimeoutError::from_error(e, ()))
    }

    /// Turns this byte sender into a typed [`Sender`] using the default codec (postcard).
    fn into_sender<T>(self) -> Sender<T, Self, Postcard>
    where
        Self: Sized,
        T: serde::Serialize,
    {
        Sender::new(self)
    }

    /// Turns this byte sender into a typed [`Sender`] using `codec`.
    fn into_sender_with<T, C: Codec>(self, codec: C) -> Sender<T, Self, C>
    where
        Self: Sized,
        T: serde::Serialize,
    {
        Sender::with_codec(self, codec)
    }
}

/// The receiving end of a framed message transport.
///
/// A mechanism implements
/// [`recv_bytes_into_deadline`](RecvBytes::recv_bytes_into_deadline); the other forms are
/// provided on top of it.
///
/// # What a timeout bounds
///
/// The deadline of a `try_` or `_timeout` form bounds the wait for a message to *begin*.
/// On a byte stream (pipe, FIFO, socket), once the first byte of a frame has arrived, the
/// call finishes that frame — or reports [`Error::Disconnected`](crate::Error::Disconnected)
/// if the peer dies half-way — so a stream is never left holding half a message. A peer
/// that stalls mid-frame while staying alive therefore holds the call; mechanisms that
/// deliver whole messages (queues) have no such case.
///
/// # When the peer dies
///
/// Every message the peer finished sending is delivered; then each receive is
/// `Disconnected`, at once and for good.
pub trait RecvBytes {
    /// Receives one message into `buf` (its old contents are replaced), waiting no later
    /// than `deadline` for the message to begin.
    ///
    /// # Errors
    /// [`Error::Timeout`](crate::Error::Timeout) if no message began before the deadline, [`Error::Disconnected`](crate::Error::Disconnected)
    /// once the sender is gone and everything it sent was received, [`Error::TooLarge`](crate::Error::TooLarge) or
    /// [`Error::Malformed`](crate::Error::Malformed) for a frame that breaks the protocol, [`Error::Io`](crate::Error::Io) otherwise.
    fn recv_bytes_into_deadline(&mut self, buf: &mut Vec<u8>, deadline: Deadline) -> Result<()>;

    /// Receives one message, waiting as long as it takes.
    ///
    /// # Errors
    /// As [`recv_bytes_into_deadline`](RecvBytes::recv_bytes_into_deadline), never `Timeout`.
    fn recv_bytes(&mut self) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.recv_bytes_into_deadline(&mut buf, Deadline::Never)?;
        Ok(buf)
    }

    /// Receives one message into a caller's buffer, reusing its allocation.
    ///
    /// # Errors
    /// As [`recv_bytes`](RecvBytes::recv_bytes).
    fn recv_bytes_into(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        self.recv_bytes_into_deadline(buf, Deadline::Never)
    }

    /// Receives one message if one is ready now.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] if none is ready, [`TryRecvError::Disconnected`] if the
    /// sender is gone.
    fn try_recv_bytes(&mut self) -> Result<Vec<u8>, TryRecvError> {
        let mut buf = Vec::new();
        self.recv_bytes_into_deadline(&mut buf, Deadline::Now)?;
        Ok(buf)
    }

    /// Receives one message, waiting at most `timeout` for it to begin.
    ///
    /// # Errors
    /// [`RecvTimeoutError::Timeout`] if none began in time.
    fn recv_bytes_timeout(&mut self, timeout: Duration) -> Result<Vec<u8>, RecvTimeoutError> {
        let mut buf = Vec::new();
        self.recv_bytes_into_deadline(&mut buf, Deadline::after(timeout))?;
        Ok(buf)
    }

    /// Turns this byte receiver into a typed [`Receiver`] using the default codec (postcard).
    fn into_receiver<T>(self) -> Receiver<T, Self, Postcard>
    where
        Self: Sized,
        T: serde::de::DeserializeOwned,
    {
        Receiver::new(self)
    }

    /// Turns this byte receiver into a typed [`Receiver`] using `codec`.
    fn into_receiver_with<T, C: Codec>(self, codec: C) -> Receiver<T, Self, C>
    where
        Self: Sized,
        T: serde::de::DeserializeOwned,
    {
        Receiver::with_codec(self, codec)
    }
}

impl<S: SendBytes + ?Sized> SendBytes for &mut S {
    fn send_bytes_deadline(&mut self, msg: &[u8], deadline: Deadline) -> Result<()> {
        (**self).send_bytes_deadline(msg, deadline)
    }
}

impl<R: RecvBytes + ?Sized> RecvBytes for &mut R {
    fn recv_bytes_into_deadline(&mut self, buf: &mut Vec<u8>, deadline: Deadline) -> Result<()> {
        (**self).recv_bytes_into_deadline(buf, deadline)
    }
}

impl<S: SendBytes + ?Sized> SendBytes for Box<S> {
    fn send_bytes_deadline(&mut self, msg: &[u8], deadline: Deadline) -> Result<()> {
        (**self).send_bytes_deadline(msg, deadline)
    }
}

impl<R: RecvBytes + ?Sized> RecvBytes for Box<R> {
    fn recv_bytes_into_deadline(&mut self, buf: &mut Vec<u8>, deadline: Deadline) -> Result<()> {
        (**self).recv_bytes_into_deadline(buf, deadline)
    }
}
