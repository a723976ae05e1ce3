//! POSIX message queues (`mq_open(3)`): the public handles (`MessageQueue`, `MqSender`,
//! `MqReceiver`, `MqOptions`) over the kernel queue and its companion sender table in
//! `os`, the kernel's limits and the errors that explain them in `limits`, and the unsafe
//! steps in `sys`.

mod limits;
mod os;
#[expect(
    unsafe_code,
    reason = "closes the queue descriptor once, and places the sender table in shared memory"
)]
mod sys;

use std::{
    fmt,
    marker::PhantomData,
    os::fd::AsFd,
    sync::{Arc, OnceLock},
};

use ipckit_core::{
    Codec, Deadline, Handle, Handoff, Postcard, Receiver, RecvBytes, Result, SendBytes, Sender,
};
use serde::{Serialize, de::DeserializeOwned};

pub use limits::{HARD_MSG_MAX, HARD_MSGSIZE_MAX, MqLimits};
pub use os::{remove_stale_message_queues, stale_message_queues};

use crate::{
    scratch::{SPARE, decode_with, encode_with, with_buffer},
    senders::{Registration, marked, token_for},
};
use os::Inner;

/// How a handle that counts as a sender travels to a child: as a description of the
/// queue's table of its own that carries the count (see [`Registration::hand_over`]).
fn handoff_counted(inner: Arc<Inner>, registration: Registration<Arc<Inner>>) -> Handoff {
    match token_for(&inner.table()) {
        Some(token) => {
            registration.hand_over(&token);
            // The child reaches the queue from its table's name (and is told, as for any
            // handle, if this was the creator's last handle, which removes the name).
            let _ = os::handoff(inner);
            Handoff::Fd(token)
        }
        None => {
            registration.leave();
            os::handoff(inner)
        }
    }
}

/// How a [`MessageQueue`] is sized: `MqOptions::new(capacity)`, then chained setters.
///
/// A `usize` converts into options for that capacity, so `MessageQueue::create(8)` and
/// `MessageQueue::create(MqOptions::new(8).max_message(1024))` both work. The kernel bounds
/// both numbers ([`MqLimits`]); the default, 10 messages of up to 8 KiB, is the most an
/// unprivileged process may ask for under Linux's default limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MqOptions {
    capacity: usize,
    max_message: usize,
}

impl Default for MqOptions {
    /// 10 messages of up to 8 KiB: the most an unprivileged process may ask for under
    /// Linux's default limits.
    fn default() -> Self {
        MqOptions {
            capacity: 10,
            max_message: 8192,
        }
    }
}

impl From<usize> for MqOptions {
    fn from(capacity: usize) -> Self {
        MqOptions::new(capacity)
    }
}

impl MqOptions {
    /// Options for `capacity` messages (`mq_maxmsg`) of up to the default 8 KiB.
    pub fn new(capacity: usize) -> Self {
        MqOptions {
            capacity,
            ..Self::default()
        }
    }

    /// Sets the most messages it holds (`mq_maxmsg`).
    #[must_use]
    pub fn capacity(mut self, messages: usize) -> Self {
        self.capacity = messages;
        self
    }

    /// Sets the largest message, in bytes (`mq_msgsize`).
    #[must_use]
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// How many bytes of `RLIMIT_MSGQUEUE` a queue of this size takes (as Linux counts
    /// them on 64-bit machines): `capacity × (max_message + 48) + min(capacity, 32768) ×
    /// 48`.
    pub fn accounted_bytes(&self) -> u64 {
        limits::accounted_bytes(self.capacity, self.max_message)
    }
}

/// A POSIX message queue (`mq_open`) of `T` between processes, encoded with the codec `C`
/// (postcard by default), with the guarantees of the shared-memory [`Queue`](crate::Queue):
/// whole messages in order, timeouts on every wait, and `Disconnected` instead of a hang
/// once every sender is gone.
///
/// ```
/// use ipckit_queues::{MessageQueue, MqOptions};
///
/// let q: MessageQueue<String> = MessageQueue::create(MqOptions::new(8).max_message(1024))?;
/// let mut tx = q.sender()?;
/// let mut rx = q.receiver()?;
/// tx.send(&"hello".to_string())?;
/// drop(tx); // the last sender: receivers drain, then hear the end
/// assert_eq!(rx.recv()?, "hello");
/// assert!(matches!(rx.recv(), Err(ipckit_queues::Error::Disconnected)));
/// # Ok::<(), ipckit_queues::Error>(())
/// ```
///
/// - **Create** it with [`create`](MessageQueue::create): a kernel queue under a fresh
///   unique name such as `/ipckit-mq-<pid>-<seq>-<salt>` (mode 0600, close-on-exec), plus
///   a small companion segment in `/dev/shm` with the same suffix
///   (`ipckit-shm-<pid>-<seq>-<salt>`) holding the table of processes that hold senders:
///   POSIX queues know nothing of their peers, and the table is what lets a waiting
///   receiver notice that every sender is gone. A message queue always has a name;
///   unrelated processes [`open`](MessageQueue::open) it by [`name`](MessageQueue::name).
/// - **Share** it with a child by handing the queue, a
///   [`byte_sender`](MessageQueue::byte_sender) or a
///   [`byte_receiver`](MessageQueue::byte_receiver) to `Command::handle`: each passes by
///   name, and the child opens the queue when it takes the handle. The creator's handles
///   (this one, and the ends made from it) share one descriptor; the queue's name and its
///   table's are removed when the last of them is dropped (the queue itself lives on while
///   another process has it open), so keep one in the creator until the children have
///   taken theirs.
/// - `put` and `send` wait while the queue is full, `get` and `recv` while it is empty,
///   each in slices of at most 50 ms (`poll(2)` on the queue's descriptor); every form has
///   `try_` and `_timeout` variants. Messages all have priority 0, so they come out in the
///   order they went in.
/// - **A dead peer**: receivers get `Disconnected` once the queue is
///   [`close`](MessageQueue::close)d, or every sender is gone (dropped, or its process
///   killed) and the queue is drained, within 50 ms. Senders are every [`MqSender`], and
///   every `MessageQueue` handle that has put (from its first `put` until it is dropped).
///   A queue whose creator was killed stays in the kernel:
///   [`stale_message_queues`](crate::stale_message_queues) lists such queues and
///   [`remove_stale_message_queues`](crate::remove_stale_message_queues) removes them. The kernel does not tell senders when
///   receivers are gone: a send to a queue nobody reads waits while it is full (use
///   `put_timeout` / `send_timeout`).
/// - **Limits**: the kernel bounds the capacity, the message size, the number of queues and
///   the bytes of queues per user; without privileges, 10 messages of up to 8 KiB per
///   queue and about 800 KB in all. [`create`](MessageQueue::create) turns a refusal into
///   an error that names the limit, its value and the fix; [`MqLimits`] has the table.
///   When the limit is met, it first removes the queues of this user whose creator was
///   killed, and tries once more. Queues live in the kernel, not in a file system:
///   `/dev/mqueue` (if mounted) only lists them, and ipckit does not need it. Message memory is allocated by the kernel when a
///   message is sent and freed when it is received.
pub struct MessageQueue<T, C = Postcard> {
    inner: Arc<Inner>,
    codec: C,
    /// This handle's count as a sender, from its first put.
    counted: OnceLock<Registration<Arc<Inner>>>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T, C: Codec + Default> MessageQueue<T, C> {
    /// A new queue sized by `opts` (a capacity, or [`MqOptions`]), under a fresh unique
    /// name, mode 0600.
    ///
    /// # Errors
    /// [`Error::Os`](crate::Error::Os) naming the queue, the limit and its value, and the
    /// fix, when the kernel refuses the size (see [`MqLimits`]);
    /// [`Error::InvalidOptions`](crate::Error::InvalidOptions) for sizes the kernel's types
    /// cannot hold; [`Error::SharedMemory`](crate::Error::SharedMemory) if the sender
    /// table cannot be made; [`Error::Unsupported`](crate::Error::Unsupported) without
    /// kernel support.
    pub fn create(opts: impl Into<MqOptions>) -> Result<Self> {
        Ok(Self::wrap(Arc::new(Inner::create(opts.into())?)))
    }

    /// Opens the queue called `name` (with or without its leading `/`) that another
    /// process created with [`create`](MessageQueue::create).
    ///
    /// # Errors
    /// [`Error::NotA`](crate::Error::NotA) for a name ipckit did not make (nothing is
    /// opened); [`Error::Os`](crate::Error::Os) naming the queue if it cannot be opened
    /// (its source's kind is `NotFound` if there is no such queue);
    /// [`Error::SharedMemory`](crate::Error::SharedMemory) if its sender table cannot be.
    pub fn open(name: &str) -> Result<Self> {
        Ok(Self::wrap(Arc::new(Inner::open(name)?)))
    }

    fn wrap(inner: Arc<Inner>) -> Self {
        MessageQueue {
            inner,
            codec: C::default(),
            counted: OnceLock::new(),
            _t: PhantomData,
        }
    }
}

impl<T, C: Codec + Clone> MessageQueue<T, C> {
    /// Another handle on the same queue, sharing this one's descriptor (and, for the
    /// creator's, keeping the name until the last is dropped).
    ///
    /// # Errors
    /// None at present; kept for symmetry with [`Queue::try_clone`](crate::Queue::try_clone).
    pub fn try_clone(&self) -> Result<Self> {
        Ok(MessageQueue {
            inner: Arc::clone(&self.inner),
            codec: self.codec.clone(),
            counted: OnceLock::new(),
            _t: PhantomData,
        })
    }

    /// The queue's name, with its leading `/`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The most messages it holds.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// The largest message, in encoded bytes.
    pub fn max_message(&self) -> usize {
        self.inner.max_message
    }

    /// Messages in the queue now.
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) if `mq_getattr` fails.
    pub fn len(&self) -> Result<usize> {
        self.inner.len()
    }

    /// Whether the queue is empty now.
    ///
    /// # Errors
    /// As [`len`](MessageQueue::len).
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Whether this handle created the queue (and removes its name).
    pub fn is_owner(&self) -> bool {
        self.inner.owner
    }

    /// Ends the queue for everyone: sends fail with `Disconnected`; receives drain what was
    /// sent, then say `Disconnected` (within 50 ms for one already waiting).
    pub fn close(&self) {
        self.inner.close();
    }

    /// Whether the queue was closed.
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// A producer at the byte level, counted as a sender: receivers learn `Disconnected`
    /// once every sender is gone (dropped, or its process dead) and the queue is drained.
    /// Hand it to a child with `Command::handle`: it keeps counting for this process until
    /// the child has counted itself.
    ///
    /// # Errors
    /// [`Error::LimitReached`](crate::Error::LimitReached) if 64 other live processes hold
    /// senders.
    pub fn byte_sender(&self) -> Result<MqSender> {
        MqSender::new(Arc::clone(&self.inner))
    }

    /// A consumer at the byte level.
    ///
    /// # Errors
    /// None at present; kept for symmetry with [`byte_sender`](MessageQueue::byte_sender).
    pub fn byte_receiver(&self) -> Result<MqReceiver> {
        Ok(MqReceiver::new(Arc::clone(&self.inner)))
    }
}

impl<T: Serialize, C: Codec + Clone> MessageQueue<T, C> {
    /// A producer of `T`, encoding with this queue's codec, counted as a sender as
    /// [`byte_sender`](MessageQueue::byte_sender) is.
    ///
    /// # Errors
    /// As [`byte_sender`](MessageQueue::byte_sender).
    pub fn sender(&self) -> Result<Sender<T, MqSender, C>> {
        Ok(Sender::with_codec(self.byte_sender()?, self.codec.clone()))
    }

    /// Puts `msg`, waiting for room no later than `deadline`; the form the others use. The
    /// first put counts this handle as a sender (see [`MessageQueue`]).
    ///
    /// # Errors
    /// [`Error::LimitReached`](crate::Error::LimitReached) if this handle is not yet
    /// counted and 64 other live processes hold senders;
    /// [`Error::Timeout`](crate::Error::Timeout) if there was no room in time,
    /// [`Error::Disconnected`](crate::Error::Disconnected) if the queue was closed,
    /// [`Error::TooLarge`](crate::Error::TooLarge) if the encoded message exceeds
    /// [`max_message`](MessageQueue::max_message), [`Error::Codec`](crate::Error::Codec)
    /// if it cannot be encoded.
    pub fn put_deadline(&self, msg: &T, deadline: Deadline) -> Result<()> {
        if self.counted.get().is_none() {
            // Another thread of this process may have counted it meanwhile: then this one
            // is released again.
            let _ = self
                .counted
                .set(Registration::new(Arc::clone(&self.inner))?);
        }
        encode_with(&self.codec, msg, |bytes| self.inner.send(bytes, deadline))
    }

    ipckit_core::put_forms!();
}

impl<T: DeserializeOwned, C: Codec + Clone> MessageQueue<T, C> {
    /// A consumer of `T`, decoding with this queue's codec.
    ///
    /// # Errors
    /// As [`byte_receiver`](MessageQueue::byte_receiver).
    pub fn receiver(&self) -> Result<Receiver<T, MqReceiver, C>> {
        Ok(Receiver::with_codec(
            self.byte_receiver()?,
            self.codec.clone(),
        ))
    }

    /// Gets the next message, waiting for one no later than `deadline`; the form the
    /// others use.
    ///
    /// # Errors
    /// [`Error::Timeout`](crate::Error::Timeout) if none came in time,
    /// [`Error::Disconnected`](crate::Error::Disconnected) once the queue is closed (or
    /// every sender is gone) and drained, [`Error::Codec`](crate::Error::Codec) if the
    /// bytes are not a `T`.
    pub fn get_deadline(&self, deadline: Deadline) -> Result<T> {
        decode_with(&self.codec, |buf| {
            // The kernel wants room for the largest message, whatever comes.
            with_buffer(&SPARE, |kernel| self.inner.recv(kernel, buf, deadline))
        })
    }

    ipckit_core::get_forms!();
}

impl<T, C> fmt::Debug for MessageQueue<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageQueue")
            .field("name", &self.inner.name)
            .field("capacity", &self.inner.capacity)
            .finish_non_exhaustive()
    }
}

/// Passes by name; the child's handle does not own the name. A handle that counts as a
/// sender (it has put) passes with its count, as an [`MqSender`] does.
impl<T, C: Codec + Default> Handle for MessageQueue<T, C> {
    fn into_handoff(self) -> Handoff {
        match self.counted.into_inner() {
            Some(registration) => handoff_counted(self.inner, registration),
            None => os::handoff(self.inner),
        }
    }

    fn from_handoff(h: Handoff) -> Result<Self> {
        let (inner, token) = os::open_counted(h)?;
        let queue = Self::wrap(Arc::new(inner));
        if let Some(token) = token.filter(|t| marked(t.as_fd()).is_some()) {
            let registration =
                Registration::take_over(Arc::clone(&queue.inner), Some(token.as_fd()))?;
            let _ = queue.counted.set(registration);
        }
        Ok(queue)
    }
}

/// The producer side of a [`MessageQueue`] at the byte level: implements [`SendBytes`].
///
/// Make one with [`MessageQueue::byte_sender`] (or take the typed
/// [`MessageQueue::sender`], which wraps one). Sends wait while the queue is full; only
/// [`close`](MessageQueue::close) makes them fail with `Disconnected` (the kernel does not
/// say when receivers are gone). Every live `MqSender`, in any process, keeps receivers
/// waiting; when the last one is dropped or its process dies, they drain the queue and get
/// `Disconnected`. Handed to a child with `Command::handle` (the child takes it with
/// `Ctx::handle::<MqSender>`), it passes with its count, as a descriptor of its own of the
/// queue's sender table: the count lasts while the `Command`, then the child, holds it, and
/// the child counts itself before it releases it, so receivers never see a moment with no
/// sender; a child killed before it took it ends the count.
pub struct MqSender {
    inner: Arc<Inner>,
    registration: Registration<Arc<Inner>>,
}

impl MqSender {
    fn new(inner: Arc<Inner>) -> Result<Self> {
        let registration = Registration::new(Arc::clone(&inner))?;
        Ok(MqSender {
            inner,
            registration,
        })
    }

    /// The queue's name, with its leading `/`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The largest message, in bytes.
    pub fn max_message(&self) -> usize {
        self.inner.max_message
    }
}

impl SendBytes for MqSender {
    fn send_bytes_deadline(&mut self, msg: &[u8], deadline: Deadline) -> Result<()> {
        self.inner.send(msg, deadline)
    }
}

/// A sender passes to a child by name, with its count (see [`MqSender`]).
impl Handle for MqSender {
    fn into_handoff(self) -> Handoff {
        let MqSender {
            inner,
            registration,
        } = self;
        handoff_counted(inner, registration)
    }

    fn from_handoff(h: Handoff) -> Result<Self> {
        let (inner, token) = os::open_counted(h)?;
        let inner = Arc::new(inner);
        let registration =
            Registration::take_over(Arc::clone(&inner), token.as_ref().map(AsFd::as_fd))?;
        Ok(MqSender {
            inner,
            registration,
        })
    }
}

impl fmt::Debug for MqSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqSender")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

/// The consumer side of a [`MessageQueue`] at the byte level: implements [`RecvBytes`].
///
/// Make one with [`MessageQueue::byte_receiver`] (or take the typed
/// [`MessageQueue::receiver`]); hand it to a child with `Command::handle` (by name), which
/// takes it with `Ctx::handle::<MqReceiver>`. A receive waits while the queue is empty, and
/// says `Disconnected` once the queue was closed, or every sender is gone (dropped or
/// killed) and it is drained. It keeps a buffer of the queue's largest message size (the
/// kernel requires one for every receive); each message is copied out of it at its own
/// length.
pub struct MqReceiver {
    inner: Arc<Inner>,
    scratch: Vec<u8>,
}

impl MqReceiver {
    fn new(inner: Arc<Inner>) -> Self {
        MqReceiver {
            inner,
            scratch: Vec::new(),
        }
    }

    /// The queue's name, with its leading `/`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }
}

impl RecvBytes for MqReceiver {
    fn recv_bytes_into_deadline(&mut self, buf: &mut Vec<u8>, deadline: Deadline) -> Result<()> {
        self.inner.recv(&mut self.scratch, buf, deadline)
    }
}

/// Passes by name.
impl Handle for MqReceiver {
    fn into_handoff(self) -> Handoff {
        os::handoff(self.inner)
    }

    fn from_handoff(h: Handoff) -> Result<Self> {
        Ok(MqReceiver::new(Arc::new(os::open_handoff(h)?)))
    }
}

impl fmt::Debug for MqReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqReceiver")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}
