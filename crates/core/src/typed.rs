//! The typed layer: values of `T` over any byte transport, through a codec.

use std::{fmt, marker::PhantomData, time::Duration};

use serde::{Serialize, de::DeserializeOwned};

use crate::{
    Deadline, Error, Handle, Handoff, RecvBytes, RecvTimeoutError, Result, SendBytes,
    SendTimeoutError, TryRecvError, TrySendError,
    codec::{Codec, Postcard},
};

/// Sends values of `T` over the byte transport `S`, encoded with the codec `C`.
///
/// Made from any byte sender with `into_sender::<T>()` (or `into_sender_with(codec)`), or
/// handed out typed by a channel that knows its `T` (`Queue<T>::sender()`). It passes to a
/// child process as its byte end does ([`Command::handle`](crate::Command::handle)); the
/// child takes it back typed with `ctx.handle::<Sender<T, _>>(key)`. When the receiving
/// side is gone, sends are [`Error::Disconnected`] (the `try_` and `_timeout` forms give
/// the value back).
pub struct Sender<T, S, C = Postcard> {
    inner: S,
    codec: C,
    scratch: Vec<u8>,
    _t: PhantomData<fn(T)>,
}

/// Receives values of `T` from the byte transport `R`, decoded with the codec `C`.
///
/// Made and shared as [`Sender`] is. When every sender is gone (dropped, or its process
/// dead), it delivers what was sent, then [`Error::Disconnected`]; its iterators end
/// there, and yield any other error (garbage, a value that does not decode) once before
/// ending.
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

    /// Sends `msg`, waiting for room no later than `deadline`; the form the others use.
    ///
    /// # Errors
    /// As [`SendBytes::send_bytes_deadline`], and [`Error::Codec`] when the value cannot
    /// be encoded.
    pub fn send_deadline(&mut self, msg: &T, deadline: Deadline) -> Result<()> {
        self.scratch.clear();
        self.codec.encode(msg, &mut self.scratch)?;
        self.inner.send_bytes_deadline(&self.scratch, deadline)
    }

    /// Sends `msg`, waiting as long as the transport is full.
    ///
    /// # Errors
    /// [`Error::Disconnected`] when the receiver is gone, [`Error::Codec`] or
    /// [`Error::TooLarge`] when the value cannot be sent.
    pub fn send(&mut self, msg: &T) -> Result<()> {
        self.send_deadline(msg, Deadline::Never)
    }

    /// Sends `msg` if there is room now; gives it back if not.
    ///
    /// # Errors
    /// [`TrySendError::Full`] or [`TrySendError::Disconnected`] with the message.
    pub fn try_send(&mut self, msg: T) -> Result<(), TrySendError<T>> {
        self.send_deadline(&msg, Deadline::Now)
            .map_err(|e| TrySendError::from_error(e, msg))
    }

    /// Sends `msg`, waiting at most `timeout` for room; gives it back if it was not sent.
    ///
    /// # Errors
    /// [`SendTimeoutError::Timeout`] or [`SendTimeoutError::Disconnected`] with the message.
    pub fn send_timeout(&mut self, msg: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        self.send_deadline(&msg, Deadline::after(timeout))
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

    /// Receives the next value, waiting no later than `deadline`; the form the others use.
    ///
    /// # Errors
    /// As [`RecvBytes::recv_bytes_into_deadline`], and [`Error::Codec`] for bytes that do
    /// not decode as `T`.
    pub fn recv_deadline(&mut self, deadline: Deadline) -> Result<T> {
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

    /// An iterator over received values: `Ok` for each value, ending when the sender is
    /// gone ([`Error::Disconnected`]).
    ///
    /// Any other error (garbage on the stream, a value that does not decode) is yielded
    /// once as `Err`, and the iteration ends after it, so that a broken stream is never
    /// mistaken for a clean end. Collect into `Result<Vec<T>>` to get every value or the
    /// first error.
    pub fn iter(&mut self) -> Iter<'_, T, R, C> {
        Iter {
            rx: self,
            wait: None,
            done: false,
        }
    }

    /// As [`iter`](Receiver::iter), waiting at most `per_message` for each value: a peer
    /// that stays silent that long ends the iteration with one `Err(Error::Timeout)`.
    pub fn iter_timeout(&mut self, per_message: Duration) -> Iter<'_, T, R, C> {
        Iter {
            rx: self,
            wait: Some(per_message),
            done: false,
        }
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
    wait: Option<Duration>,
    done: bool,
}

/// The next item of an iteration: a value, the end, or one error and then the end.
fn step<T>(done: &mut bool, r: Result<T>) -> Option<Result<T>> {
    if *done {
        return None;
    }
    match r {
        Ok(v) => Some(Ok(v)),
        Err(Error::Disconnected) => {
            *done = true;
            None
        }
        Err(e) => {
            *done = true;
            Some(Err(e))
        }
    }
}

impl<T: DeserializeOwned, R: RecvBytes, C: Codec> Iterator for Iter<'_, T, R, C> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        if self.done {
            return None;
        }
        let deadline = self.wait.map_or(Deadline::Never, Deadline::after);
        step(&mut self.done, self.rx.recv_deadline(deadline))
    }
}

impl<T: DeserializeOwned, R: RecvBytes, C: Codec> std::iter::FusedIterator for Iter<'_, T, R, C> {}

impl<T: DeserializeOwned, R: RecvBytes, C: Codec> IntoIterator for Receiver<T, R, C> {
    type Item = Result<T>;
    type IntoIter = IntoIter<T, R, C>;

    fn into_iter(self) -> IntoIter<T, R, C> {
        IntoIter {
            rx: self,
            done: false,
        }
    }
}

impl<'a, T: DeserializeOwned, R: RecvBytes, C: Codec> IntoIterator for &'a mut Receiver<T, R, C> {
    type Item = Result<T>;
    type IntoIter = Iter<'a, T, R, C>;

    fn into_iter(self) -> Iter<'a, T, R, C> {
        self.iter()
    }
}

/// Owning iterator over a [`Receiver`]; as [`Receiver::iter`].
pub struct IntoIter<T, R, C> {
    rx: Receiver<T, R, C>,
    done: bool,
}

impl<T: DeserializeOwned, R: RecvBytes, C: Codec> Iterator for IntoIter<T, R, C> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        if self.done {
            return None;
        }
        step(&mut self.done, self.rx.recv())
    }
}

impl<T: DeserializeOwned, R: RecvBytes, C: Codec> std::iter::FusedIterator for IntoIter<T, R, C> {}

/// A typed end passes to a child process as its byte end does; the child gets it typed,
/// with a fresh codec of the same type: `ctx.handle::<Sender<Order, _>>("orders")`.
impl<T: Serialize, S: SendBytes + Handle, C: Codec + Default> Handle for Sender<T, S, C> {
    fn into_handoff(self) -> Handoff {
        self.inner.into_handoff()
    }

    fn from_handoff(h: Handoff) -> Result<Self> {
        Ok(Sender::with_codec(S::from_handoff(h)?, C::default()))
    }
}

/// A typed end passes to a child process as its byte end does; see [`Sender`]'s.
impl<T: DeserializeOwned, R: RecvBytes + Handle, C: Codec + Default> Handle for Receiver<T, R, C> {
    fn into_handoff(self) -> Handoff {
        self.inner.into_handoff()
    }

    fn from_handoff(h: Handoff) -> Result<Self> {
        Ok(Receiver::with_codec(R::from_handoff(h)?, C::default()))
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
