//! The typed layer: values of `T` over any byte transport, through a codec.

use std::{fmt, marker::PhantomData, time::Duration};

use serde::{Serialize, de::DeserializeOwned};

use crate::{
    Deadline, Error, RecvBytes, RecvTimeoutError, Result, SendBytes, SendTimeoutError,
    TryRecvError, TrySendError,
    codec::{Codec, Postcard},
};

/// Sends values of `T` over the byte transport `S`, encoded with the codec `C`.
pub struct Sender<T, S, C = Postcard> {
    inner: S,
    codec: C,
    scratch: Vec<u8>,
    _t: PhantomData<fn(T)>,
}

/// Receives values of `T` from the byte transport `R`, decoded with the codec `C`.
pub struct Receiver<T, R, C = Postcard> {
    inner: R,
    codec: C,
    scratch: Vec<u8>,
    _t: PhantomData<fn() -> T>,
}

impl<T: Serialize, S: SendBytes> Sender<T, S, Postcard> {
    /// Wraps a byte sender, using postcard.
    pub fn new(inner: S) -> Self {
        Self::with_codec(inner, Postcard)
    }
}

impl<T: Serialize, S: SendBytes, C: Codec> Sender<T, S, C> {
    /// Wraps a byte sender, using `codec`.
    pub fn with_codec(inner: S, codec: C) -> Self {
        Sender {
            inner,
            codec,
            scratch: Vec::new(),
            _t: PhantomData,
        }
    }

    fn encode(&mut self, msg: &T) -> Result<()> {
        self.scratch.clear();
        self.codec.encode(msg, &mut self.scratch)
    }

    /// Sends `msg`, waiting as long as the transport is full.
    ///
    /// # Errors
    /// [`Error::Disconnected`] when the receiver is gone, [`Error::Codec`] or
    /// [`Error::TooLarge`] when the value cannot be sent.
    pub fn send(&mut self, msg: &T) -> Result<()> {
        self.encode(msg)?;
        self.inner
            .send_bytes_deadline(&self.scratch, Deadline::Never)
    }

    /// Sends `msg` if there is room now; gives it back if not.
    ///
    /// # Errors
    /// [`TrySendError::Full`] or [`TrySendError::Disconnected`] with the message.
    pub fn try_send(&mut self, msg: T) -> Result<(), TrySendError<T>> {
        if let Err(e) = self.encode(&msg) {
            return Err(TrySendError::Failed(e));
        }
        self.inner
            .send_bytes_deadline(&self.scratch, Deadline::Now)
            .map_err(|e| TrySendError::from_error(e, msg))
    }

    /// Sends `msg`, waiting at most `timeout` for room; gives it back if it was not sent.
    ///
    /// # Errors
    /// [`SendTimeoutError::Timeout`] or [`SendTimeoutError::Disconnected`] with the message.
    pub fn send_timeout(&mut self, msg: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        if let Err(e) = self.encode(&msg) {
            return Err(SendTimeoutError::Failed(e));
        }
        self.inner
            .send_bytes_deadline(&self.scratch, Deadline::after(timeout))
            .map_err(|e| SendTimeoutError::from_error(e, msg))
    }

    /// The byte transport underneath.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Gives back the byte transport.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<T: DeserializeOwned, R: RecvBytes> Receiver<T, R, Postcard> {
    /// Wraps a byte receiver, using postcard.
    pub fn new(inner: R) -> Self {
        Self::with_codec(inner, Postcard)
    }
}

impl<T: DeserializeOwned, R: RecvBytes, C: Codec> Receiver<T, R, C> {
    /// Wraps a byte receiver, using `codec`.
    pub fn with_codec(inner: R, codec: C) -> Self {
        Receiver {
            inner,
            codec,
            scratch: Vec::new(),
            _t: PhantomData,
        }
    }

    fn recv_deadline(&mut self, deadline: Deadline) -> Result<T> {
        self.inner
            .recv_bytes_into_deadline(&mut self.scratch, deadline)?;
        self.codec.decode(&self.scratch)
    }

    /// Receives the next value, waiting as long as it takes.
    ///
    /// # Errors
    /// [`Error::Disconnected`] once the sender is gone and everything it sent was
    /// received; [`Error::Codec`] for bytes that do not decode as `T`.
    pub fn recv(&mut self) -> Result<T> {
        self.recv_deadline(Deadline::Never)
    }

    /// Receives the next value if one is ready now.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] when none is ready.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        Ok(self.recv_deadline(Deadline::Now)?)
    }

    /// Receives the next value, waiting at most `timeout` for it.
    ///
    /// # Errors
    /// [`RecvTimeoutError::Timeout`] when none came in time.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        Ok(self.recv_deadline(Deadline::after(timeout))?)
    }

    /// An iterator over received values that ends when the sender is gone.
    ///
    /// It also ends at the first other error, which is logged (`tracing`, level warn).
    pub fn iter(&mut self) -> Iter<'_, T, R, C> {
        Iter { rx: self }
    }

    /// The byte transport underneath.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Gives back the byte transport.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Iterator over a [`Receiver`]; see [`Receiver::iter`].
pub struct Iter<'a, T, R, C> {
    rx: &'a mut Receiver<T, R, C>,
}

impl<T: DeserializeOwned, R: RecvBytes, C: Codec> Iterator for Iter<'_, T, R, C> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        match self.rx.recv() {
            Ok(v) => Some(v),
            Err(Error::Disconnected) => None,
            Err(e) => {
                tracing::warn!(error = %e, "receive failed; iteration ends");
                None
            }
        }
    }
}

impl<T: DeserializeOwned, R: RecvBytes, C: Codec> IntoIterator for Receiver<T, R, C> {
    type Item = T;
    type IntoIter = IntoIter<T, R, C>;

    fn into_iter(self) -> IntoIter<T, R, C> {
        IntoIter { rx: self }
    }
}

/// Owning iterator over a [`Receiver`]; ends when the sender is gone.
pub struct IntoIter<T, R, C> {
    rx: Receiver<T, R, C>,
}

impl<T: DeserializeOwned, R: RecvBytes, C: Codec> Iterator for IntoIter<T, R, C> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.rx.iter().next()
    }
}

impl<T, S: fmt::Debug, C> fmt::Debug for Sender<T, S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<T, R: fmt::Debug, C> fmt::Debug for Receiver<T, R, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<T, R: fmt::Debug, C> fmt::Debug for Iter<'_, T, R, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter").finish_non_exhaustive()
    }
}

impl<T, R: fmt::Debug, C> fmt::Debug for IntoIter<T, R, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntoIter").finish_non_exhaustive()
    }
}
