//! The queue in shared memory: the public handles (`Queue`, `QueueSender`,
//! `QueueReceiver`, `QueueOptions`) over the slot protocol of `raw`, whose one unsafe step
//! (viewing the segment's atomics) is in `sys`.

#[cfg(loom)]
pub mod model;
mod raw;
mod slots;
#[expect(
    unsafe_code,
    reason = "views the queue's header and slots, made of atomics, in its shared segment"
)]
mod sys;

use std::{
    fmt,
    marker::PhantomData,
    os::fd::{AsFd, OwnedFd},
    sync::OnceLock,
};

use ipckit_core::{
    Codec, Deadline, Error, Handle, Handoff, Postcard, Receiver, RecvBytes, Result, SendBytes,
    Sender,
};
use ipckit_shmem::Segment;
use serde::{Serialize, de::DeserializeOwned};

pub(crate) use raw::RawQueue;

use crate::{
    scratch::{decode_with, encode_with},
    senders::{Registration, marked, token_for},
};

/// How a handle that counts as a sender travels to a child: as a description of its
/// segment of its own that carries the count (see [`Registration::hand_over`]).
fn handoff_counted(raw: RawQueue, registration: Registration<RawQueue>) -> Handoff {
    let h = Handle::into_handoff(raw.into_segment());
    match token_for(&h) {
        Some(token) => {
            registration.hand_over(&token);
            Handoff::Fd(token)
        }
        None => {
            registration.leave();
            h
        }
    }
}

/// The queue a handle was handed as, and the description it came through if it carries a
/// count (see [`handoff_counted`]).
fn take_handoff(h: Handoff) -> Result<(RawQueue, Option<OwnedFd>)> {
    let token = match &h {
        Handoff::Fd(fd) => fd.try_clone().ok(),
        Handoff::Name(_) => None,
    };
    let raw = RawQueue::from_segment(Segment::from_handoff(h)?)?;
    Ok((raw, token))
}

/// How a [`Queue`] is sized: `QueueOptions::new(capacity)`, then chained setters.
///
/// A `usize` converts into options for that capacity, so `Queue::create(16)` and
/// `Queue::create(QueueOptions::new(16).max_message(4096))` both work.
///
/// ```
/// use ipckit_queues::{Queue, QueueOptions};
///
/// let small: Queue<u32> = Queue::create(QueueOptions::new(4).max_message(16))?;
/// assert_eq!((small.capacity(), small.max_message()), (4, 16));
/// // The capacity is rounded up to a power of two, and lowered to fit `max_bytes`.
/// let fit: Queue<u32> = Queue::create(QueueOptions::new(100).max_message(960).max_bytes(32 << 10))?;
/// assert_eq!(fit.capacity(), 32);
/// # Ok::<(), ipckit_queues::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueOptions {
    capacity: usize,
    max_message: usize,
    max_bytes: usize,
}

impl Default for QueueOptions {
    /// 1024 messages of up to 64 KiB, in at most 256 MiB.
    fn default() -> Self {
        QueueOptions {
            capacity: 1024,
            max_message: 64 << 10,
            max_bytes: 256 << 20,
        }
    }
}

impl From<usize> for QueueOptions {
    fn from(capacity: usize) -> Self {
        QueueOptions::new(capacity)
    }
}

impl QueueOptions {
    /// Options for `capacity` messages (rounded up to a power of two) of up to the default
    /// 64 KiB each.
    pub fn new(capacity: usize) -> Self {
        QueueOptions {
            capacity,
            ..Self::default()
        }
    }

    /// Sets the most messages it holds (rounded up to a power of two).
    #[must_use]
    pub fn capacity(mut self, messages: usize) -> Self {
        self.capacity = messages;
        self
    }

    /// Sets the largest message, in encoded bytes (at most 2 GiB - 1).
    #[must_use]
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// Sets the most shared memory its slots may take (256 MiB by default): the capacity
    /// is lowered to the largest power of two that fits. Pages are only used once written.
    #[must_use]
    pub fn max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes;
        self
    }

    fn slot_size(&self) -> usize {
        (sys::SLOT_HEAD + self.max_message).next_multiple_of(64)
    }

    /// The capacity actually used: a power of two, within `max_bytes`.
    fn slots(&self) -> Result<usize> {
        let fit = self.max_bytes / self.slot_size();
        let want = self.capacity.max(1).next_power_of_two();
        let slots = if want <= fit {
            want
        } else {
            raw::prev_power_of_two(fit)
        };
        if self.max_message > u32::MAX as usize / 2 {
            return Err(Error::InvalidOptions(format!(
                "max_message {} exceeds the largest a queue slot holds ({})",
                self.max_message,
                u32::MAX / 2
            )));
        }
        if slots == 0 {
            return Err(Error::InvalidOptions(format!(
                "max_bytes {} cannot hold one message of {} bytes",
                self.max_bytes, self.max_message
            )));
        }
        Ok(slots)
    }
}

/// A bounded multi-producer multi-consumer queue of `T` in shared memory, used from any
/// number of processes and threads: Python's `multiprocessing.Queue`, without its hangs.
/// Messages are encoded with the codec `C` (postcard by default).
///
/// - **Create** it with [`create`](Queue::create) (anonymous memory, for children) or
///   [`create_named`](Queue::create_named) (a fresh name in `/dev/shm` that unrelated
///   processes [`open`](Queue::open); the creating handle removes it when dropped).
/// - **Share** it with a child process by handing a [`try_clone`](Queue::try_clone), a
///   [`byte_sender`](Queue::byte_sender) or a [`byte_receiver`](Queue::byte_receiver) to
///   `Command::handle`; the child takes `Queue<T>`, [`QueueSender`] or [`QueueReceiver`]
///   with `Ctx::handle` (and types a byte end with `into_sender::<T>()` /
///   `into_receiver::<T>()`). An anonymous queue passes as a descriptor, a named one by
///   name.
/// - `put` waits while the queue is full, `get` while it is empty; both have `try_` and
///   `_timeout` forms, and the non-blocking ones give the message back. Typed ends
///   ([`sender`](Queue::sender), [`receiver`](Queue::receiver)) have the same forms as
///   `send`/`recv`, and an iterator.
/// - **A dead peer**: [`close`](Queue::close) ends it (puts fail, gets drain what was
///   put, then say `Disconnected`: no `None` sentinel). Consumers also get `Disconnected`
///   once every sender is gone, dropped or its process killed, within 50 ms: every
///   [`QueueSender`], and every `Queue` handle that has put (a handle counts as a sender
///   from its first `put` until it is dropped; one that only gets never counts). A process
///   killed at any moment (mid-put, mid-get, waiting) never corrupts it, never loses a
///   message whose `put` returned, and never blocks the others: the slot it was working on
///   carries its pid, and the first call that finds it stuck repairs it (`try_get` and
///   `try_put` included). Producers are not told when consumers die (a queue has no
///   receiving end to lose): use `put_timeout`.
/// - An idle waiter sleeps in the kernel after a brief spin; [`spin`](Queue::spin) makes
///   this handle busy-wait instead, for the lowest latency.
///
/// ```
/// use ipckit_queues::Queue;
///
/// let orders: Queue<String> = Queue::create(16)?;
/// orders.put(&"Margherita Pizza".to_string())?;
/// orders.close();
/// assert_eq!(orders.get()?, "Margherita Pizza");
/// assert!(matches!(orders.get(), Err(ipckit_queues::Error::Disconnected)));
/// # Ok::<(), ipckit_queues::Error>(())
/// ```
///
/// Its ends are typed by the queue's own `T`: a `Queue<String>`'s sender sends strings
/// only.
///
/// ```compile_fail
/// use ipckit_queues::Queue;
///
/// let names: Queue<String> = Queue::create(4)?;
/// let mut tx = names.sender()?;
/// tx.send(&42u32)?; // expected `&String`, found `&u32`
/// # Ok::<(), ipckit_queues::Error>(())
/// ```
pub struct Queue<T, C = Postcard> {
    raw: RawQueue,
    spin: bool,
    codec: C,
    /// This handle's count as a sender, from its first put.
    counted: OnceLock<Registration<RawQueue>>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T, C: Codec + Default> Queue<T, C> {
    /// A queue sized by `opts` (a capacity, or [`QueueOptions`]) in anonymous shared
    /// memory: hand it to children with [`try_clone`](Queue::try_clone) and
    /// `Command::handle`.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] if the options cannot be met, [`Error::SharedMemory`] if
    /// the memory is refused.
    pub fn create(opts: impl Into<QueueOptions>) -> Result<Self> {
        Ok(Self::wrap(RawQueue::create(opts.into(), false)?))
    }

    /// A queue sized by `opts` in a named segment with a fresh unique name
    /// ([`name`](Queue::name)), which unrelated processes [`open`](Queue::open); this
    /// handle removes the name when dropped.
    ///
    /// # Errors
    /// As [`create`](Queue::create).
    pub fn create_named(opts: impl Into<QueueOptions>) -> Result<Self> {
        Ok(Self::wrap(RawQueue::create(opts.into(), true)?))
    }

    /// Opens the named queue another process made with
    /// [`create_named`](Queue::create_named).
    ///
    /// # Errors
    /// [`Error::SharedMemory`] if the name is invalid or there is no such segment (its
    /// source says which), [`Error::NotA`] if the segment is not an ipckit queue.
    pub fn open(name: &str) -> Result<Self> {
        Ok(Self::wrap(RawQueue::open(name)?))
    }

    fn wrap(raw: RawQueue) -> Self {
        Queue {
            raw,
            spin: false,
            codec: C::default(),
            counted: OnceLock::new(),
            _t: PhantomData,
        }
    }
}

impl<T, C: Codec + Clone> Queue<T, C> {
    /// Another handle on the same queue (not the owner of its name): the one to hand to a
    /// child process.
    ///
    /// # Errors
    /// [`Error::SharedMemory`] if the segment cannot be mapped again.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Queue {
            raw: self.raw.try_clone()?,
            spin: self.spin,
            codec: self.codec.clone(),
            counted: OnceLock::new(),
            _t: PhantomData,
        })
    }

    /// Busy-wait instead of sleeping when this handle, and the ends made from it, wait
    /// (lowest latency, a busy core). A handle handed to a child does not carry it.
    #[must_use]
    pub fn spin(mut self, on: bool) -> Self {
        self.spin = on;
        self
    }

    /// The name of a named queue.
    pub fn name(&self) -> Option<&str> {
        self.raw.segment().name()
    }

    /// Messages in the queue now (an estimate while others put and get).
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Whether the queue looks empty now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most messages it holds.
    pub fn capacity(&self) -> usize {
        self.raw.capacity()
    }

    /// The largest message, in encoded bytes.
    pub fn max_message(&self) -> usize {
        self.raw.max_message()
    }

    /// Ends the queue for everyone: puts fail with `Disconnected`; gets drain what was put,
    /// then say `Disconnected`.
    pub fn close(&self) {
        self.raw.close();
    }

    /// Whether the queue was closed.
    pub fn is_closed(&self) -> bool {
        self.raw.is_closed()
    }

    /// A producer at the byte level, counted as a sender: consumers learn `Disconnected`
    /// once every sender is gone (dropped, or its process dead) and the queue is drained.
    /// Hand it to a child with `Command::handle`: it keeps counting for this process until
    /// the child has counted itself.
    ///
    /// # Errors
    /// [`Error::LimitReached`] if 64 other live processes hold senders,
    /// [`Error::SharedMemory`] if the segment cannot be mapped again.
    pub fn byte_sender(&self) -> Result<QueueSender> {
        QueueSender::new(self.raw.try_clone()?, self.spin)
    }

    /// A consumer at the byte level.
    ///
    /// # Errors
    /// [`Error::SharedMemory`] if the segment cannot be mapped again.
    pub fn byte_receiver(&self) -> Result<QueueReceiver> {
        Ok(QueueReceiver {
            raw: self.raw.try_clone()?,
            spin: self.spin,
        })
    }

    /// Counts this handle as a sender, if its first put has not yet.
    fn count(&self) -> Result<()> {
        if self.counted.get().is_none() {
            let registration = Registration::new(self.raw.try_clone()?)?;
            // Another thread of this process may have counted it meanwhile: then this one
            // is released again.
            let _ = self.counted.set(registration);
        }
        Ok(())
    }

    /// The queue's own handle on its memory (for the joinable queue's counters).
    pub(crate) fn raw(&self) -> &RawQueue {
        &self.raw
    }
}

impl<T: Serialize, C: Codec + Clone> Queue<T, C> {
    /// A producer of `T`, encoding with this queue's codec, counted as a sender as
    /// [`byte_sender`](Queue::byte_sender) is.
    ///
    /// # Errors
    /// As [`byte_sender`](Queue::byte_sender).
    pub fn sender(&self) -> Result<Sender<T, QueueSender, C>> {
        Ok(Sender::with_codec(self.byte_sender()?, self.codec.clone()))
    }

    /// Puts `msg`, waiting for room no later than `deadline`; the form the others use. The
    /// first put counts this handle as a sender (see [`Queue`]).
    ///
    /// # Errors
    /// [`Error::Timeout`] if there was no room in time, [`Error::Disconnected`] if the
    /// queue was closed, [`Error::TooLarge`] if the encoded message exceeds
    /// [`max_message`](Queue::max_message), [`Error::Codec`] if it cannot be encoded,
    /// [`Error::LimitReached`] if this handle is not yet counted and 64 other live
    /// processes hold senders.
    pub fn put_deadline(&self, msg: &T, deadline: Deadline) -> Result<()> {
        self.count()?;
        encode_with(&self.codec, msg, |bytes| {
            self.raw.put(bytes, deadline, self.spin)
        })
    }

    ipckit_core::put_forms!();
}

impl<T: DeserializeOwned, C: Codec + Clone> Queue<T, C> {
    /// A consumer of `T`, decoding with this queue's codec.
    ///
    /// # Errors
    /// As [`byte_receiver`](Queue::byte_receiver).
    pub fn receiver(&self) -> Result<Receiver<T, QueueReceiver, C>> {
        Ok(Receiver::with_codec(
            self.byte_receiver()?,
            self.codec.clone(),
        ))
    }

    /// Gets the next message, waiting for one no later than `deadline`; the form the
    /// others use.
    ///
    /// # Errors
    /// [`Error::Timeout`] if none came in time, [`Error::Disconnected`] once the queue is
    /// closed (or every sender is gone) and drained, [`Error::Codec`] if the bytes are not
    /// a `T`.
    pub fn get_deadline(&self, deadline: Deadline) -> Result<T> {
        decode_with(&self.codec, |buf| self.raw.get(buf, deadline, self.spin))
    }

    ipckit_core::get_forms!();
}

impl<T, C> fmt::Debug for Queue<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.raw.segment().name())
            .field("capacity", &self.raw.capacity())
            .finish_non_exhaustive()
    }
}

/// A queue handle passes as its segment: by name if it has one and does not own it,
/// otherwise as a descriptor. A handle that counts as a sender (it has put) passes with
/// its count, as a [`QueueSender`] does.
impl<T, C: Codec + Default> Handle for Queue<T, C> {
    fn into_handoff(self) -> Handoff {
        match self.counted.into_inner() {
            Some(registration) => handoff_counted(self.raw, registration),
            None => Handle::into_handoff(self.raw.into_segment()),
        }
    }

    fn from_handoff(h: Handoff) -> Result<Self> {
        let (raw, token) = take_handoff(h)?;
        let queue = Self::wrap(raw);
        if let Some(token) = token.filter(|t| marked(t.as_fd()).is_some()) {
            let registration =
                Registration::take_over(queue.raw.try_clone()?, Some(token.as_fd()))?;
            let _ = queue.counted.set(registration);
        }
        Ok(queue)
    }
}

/// The producer side of a [`Queue`] at the byte level: implements [`SendBytes`].
///
/// Make one with [`Queue::byte_sender`] (or take the typed [`Queue::sender`], which wraps
/// one). Every live `QueueSender`, in any process, keeps the queue's consumers waiting; when
/// the last one is dropped or its process dies, they drain the queue and get
/// `Disconnected`. Handed to a child with `Command::handle` (the child takes it with
/// `Ctx::handle::<QueueSender>`), it passes with its count, as a descriptor of its own:
/// the count lasts while the `Command`, then the child, holds it, and the child counts
/// itself before it releases it, so consumers never see a moment with no sender; a child
/// killed before it took it (or a `Command` dropped unspawned) ends the count. A send
/// waits while the queue is full; it fails with `Disconnected` only once the queue is
/// closed.
pub struct QueueSender {
    raw: RawQueue,
    spin: bool,
    registration: Registration<RawQueue>,
}

impl QueueSender {
    fn new(raw: RawQueue, spin: bool) -> Result<Self> {
        let registration = Registration::new(raw.try_clone()?)?;
        Ok(QueueSender {
            raw,
            spin,
            registration,
        })
    }

    /// The largest message, in bytes.
    pub fn max_message(&self) -> usize {
        self.raw.max_message()
    }
}

impl SendBytes for QueueSender {
    fn send_bytes_deadline(&mut self, msg: &[u8], deadline: Deadline) -> Result<()> {
        self.raw.put(msg, deadline, self.spin)
    }
}

/// A sender passes to a child with its count (see [`QueueSender`]).
impl Handle for QueueSender {
    fn into_handoff(self) -> Handoff {
        let QueueSender {
            raw, registration, ..
        } = self;
        handoff_counted(raw, registration)
    }

    fn from_handoff(h: Handoff) -> Result<Self> {
        let (raw, token) = take_handoff(h)?;
        let registration =
            Registration::take_over(raw.try_clone()?, token.as_ref().map(AsFd::as_fd))?;
        Ok(QueueSender {
            raw,
            spin: false,
            registration,
        })
    }
}

impl fmt::Debug for QueueSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueSender")
            .field("name", &self.raw.segment().name())
            .finish_non_exhaustive()
    }
}

/// The consumer side of a [`Queue`] at the byte level: implements [`RecvBytes`].
///
/// Make one with [`Queue::byte_receiver`] (or take the typed [`Queue::receiver`]); hand it
/// to a child with `Command::handle`, which takes it with `Ctx::handle::<QueueReceiver>`.
/// A receive waits while the queue is empty, and says `Disconnected` once the queue was
/// closed, or every sender is gone (dropped or killed), and it is drained. A consumer that
/// starts before any sender exists waits for one.
pub struct QueueReceiver {
    raw: RawQueue,
    spin: bool,
}

impl RecvBytes for QueueReceiver {
    fn recv_bytes_into_deadline(&mut self, buf: &mut Vec<u8>, deadline: Deadline) -> Result<()> {
        self.raw.get(buf, deadline, self.spin)
    }
}

impl Handle for QueueReceiver {
    fn into_handoff(self) -> Handoff {
        Handle::into_handoff(self.raw.into_segment())
    }

    fn from_handoff(h: Handoff) -> Result<Self> {
        Ok(QueueReceiver {
            raw: RawQueue::from_segment(Segment::from_handoff(h)?)?,
            spin: false,
        })
    }
}

impl fmt::Debug for QueueReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueReceiver")
            .field("name", &self.raw.segment().name())
            .finish_non_exhaustive()
    }
}
