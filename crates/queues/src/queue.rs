//! The public handles: `Queue<T>`, `JoinableQueue<T>`, and the byte-level `QueueSender` and
//! `QueueReceiver` that count as producers and consumers.

use std::{cell::RefCell, fmt, marker::PhantomData, sync::atomic::Ordering, time::Duration};

use ipckit_core::{
    Codec, Deadline, Error, Handle, Handoff, Postcard, RecvBytes, RecvTimeoutError, Result,
    SendBytes, SendTimeoutError, TryRecvError, TrySendError,
};
use serde::{Serialize, de::DeserializeOwned};

use crate::raw::{QueueOptions, RawQueue};

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A bounded multi-producer multi-consumer queue of `T` in shared memory, used from any
/// number of processes and threads: Python's `multiprocessing.Queue`, without its hangs.
///
/// - `put` waits while the queue is full, `get` while it is empty; both have `try_` and
///   `_timeout` forms, and the non-blocking ones give the message back.
/// - [`close`](Queue::close) ends it: puts fail, gets drain what was put, then say
///   `Disconnected` — no `None` sentinel. Consumers also get `Disconnected` once every
///   [`QueueSender`] is gone, dropped or killed.
/// - A process killed at any moment (mid-put, mid-get, waiting) never corrupts it, never
///   loses a message whose `put` returned, and never blocks the others: the slot it was
///   working on carries its pid, and survivors repair it.
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
pub struct Queue<T> {
    raw: RawQueue,
    spin: bool,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Queue<T> {
    /// A queue for `capacity` messages of up to 64 KiB each, in anonymous shared memory
    /// (hand it to children with [`try_clone`](Queue::try_clone) and
    /// `ipckit_core::Command::handle`).
    ///
    /// # Errors
    /// [`Error::Io`] if the memory is refused.
    pub fn create(capacity: usize) -> Result<Self> {
        Self::with_options(QueueOptions::with_capacity(capacity))
    }

    /// A queue sized by `opts`, in anonymous shared memory.
    ///
    /// # Errors
    /// [`Error::Io`] if the memory is refused or the options cannot be met.
    pub fn with_options(opts: QueueOptions) -> Result<Self> {
        Ok(Self::wrap(RawQueue::create(opts, false)?))
    }

    /// A queue sized by `opts` in a named segment, which unrelated processes
    /// [`open`](Queue::open); this handle removes the name when dropped.
    ///
    /// # Errors
    /// As [`with_options`](Queue::with_options).
    pub fn create_named(opts: QueueOptions) -> Result<Self> {
        Ok(Self::wrap(RawQueue::create(opts, true)?))
    }

    /// Opens a named queue.
    ///
    /// # Errors
    /// [`Error::Io`] if there is no such queue, or the segment is not one.
    pub fn open(name: &str) -> Result<Self> {
        Ok(Self::wrap(RawQueue::open(name)?))
    }

    fn wrap(raw: RawQueue) -> Self {
        Queue {
            raw,
            spin: false,
            _t: PhantomData,
        }
    }

    /// Another handle on the same queue (not the owner of its name).
    ///
    /// # Errors
    /// [`Error::Io`] if the segment cannot be mapped again.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Queue {
            raw: self.raw.try_clone()?,
            spin: self.spin,
            _t: PhantomData,
        })
    }

    /// Busy-wait instead of sleeping when this handle waits (lowest latency, a busy core).
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

    /// A producer handle at the byte level. Consumers learn `Disconnected` once every
    /// sender handle is gone (dropped, or its process dead) and the queue is drained.
    ///
    /// # Errors
    /// [`Error::Io`] if more than 64 processes hold senders.
    pub fn sender(&self) -> Result<QueueSender> {
        QueueSender::new(self.raw.try_clone()?, self.spin)
    }

    /// A consumer handle at the byte level.
    ///
    /// # Errors
    /// [`Error::Io`] if the segment cannot be mapped again.
    pub fn receiver(&self) -> Result<QueueReceiver> {
        Ok(QueueReceiver {
            raw: self.raw.try_clone()?,
            spin: self.spin,
        })
    }
}

impl<T: Serialize> Queue<T> {
    fn put_deadline(&self, msg: &T, deadline: Deadline) -> Result<()> {
        SCRATCH.with_borrow_mut(|buf| {
            buf.clear();
            Postcard.encode(msg, buf)?;
            self.raw.put(buf, deadline, self.spin)
        })
    }

    /// Puts `msg`, waiting while the queue is full.
    ///
    /// # Errors
    /// [`Error::Disconnected`] if the queue was closed, [`Error::TooLarge`] if the encoded
    /// message exceeds the maximum.
    pub fn put(&self, msg: &T) -> Result<()> {
        self.put_deadline(msg, Deadline::Never)
    }

    /// Puts `msg` if there is room now; gives it back if not.
    ///
    /// # Errors
    /// [`TrySendError::Full`] or [`TrySendError::Disconnected`] with the message.
    pub fn try_put(&self, msg: T) -> Result<(), TrySendError<T>> {
        self.put_deadline(&msg, Deadline::Now)
            .map_err(|e| TrySendError::from_error(e, msg))
    }

    /// Puts `msg`, waiting at most `timeout` for room; gives it back if not.
    ///
    /// # Errors
    /// [`SendTimeoutError::Timeout`] or [`SendTimeoutError::Disconnected`] with the message.
    pub fn put_timeout(&self, msg: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        self.put_deadline(&msg, Deadline::after(timeout))
            .map_err(|e| SendTimeoutError::from_error(e, msg))
    }
}

impl<T: DeserializeOwned> Queue<T> {
    fn get_deadline(&self, deadline: Deadline) -> Result<T> {
        SCRATCH.with_borrow_mut(|buf| {
            self.raw.get(buf, deadline, self.spin)?;
            Postcard.decode(buf)
        })
    }

    /// Gets the next message, waiting while the queue is empty.
    ///
    /// # Errors
    /// [`Error::Disconnected`] once the queue is closed (or every sender is gone) and
    /// drained; [`Error::Codec`] if the bytes are not a `T`.
    pub fn get(&self) -> Result<T> {
        self.get_deadline(Deadline::Never)
    }

    /// Gets the next message if there is one now.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] if there is none.
    pub fn try_get(&self) -> Result<T, TryRecvError> {
        Ok(self.get_deadline(Deadline::Now)?)
    }

    /// Gets the next message, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`RecvTimeoutError::Timeout`] if none came.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        Ok(self.get_deadline(Deadline::after(timeout))?)
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.name())
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}

/// A queue handle passes as its segment: by name if it has one and does not own it,
/// otherwise as a descriptor.
impl<T> Handle for Queue<T> {
    fn into_handoff(self) -> Handoff {
        Handle::into_handoff(self.raw.into_segment())
    }

    fn from_handoff(h: Handoff) -> Result<Self> {
        Ok(Self::wrap(RawQueue::from_segment(
            ipckit_shmem::Segment::from_handoff(h)?,
        )?))
    }
}

/// The producer side of a [`Queue`] at the byte level: implements
/// [`SendBytes`](ipckit_core::SendBytes), so `into_sender::<T>()` makes it typed.
///
/// Every live `QueueSender`, in any process, keeps the queue's consumers waiting; when the
/// last one is dropped or its process dies, they drain the queue and get `Disconnected`.
pub struct QueueSender {
    /// `None` only once handed to a child, whose registration replaces ours.
    raw: Option<RawQueue>,
    spin: bool,
}

impl QueueSender {
    fn new(raw: RawQueue, spin: bool) -> Result<Self> {
        raw.register_sender(raw.pid())?;
        Ok(QueueSender {
            raw: Some(raw),
            spin,
        })
    }

    fn raw(&self) -> &RawQueue {
        self.raw
            .as_ref()
            .expect("a sender is used only until it is handed off")
    }
}

impl SendBytes for QueueSender {
    fn send_bytes_deadline(&mut self, msg: &[u8], deadline: Deadline) -> Result<()> {
        self.raw().put(msg, deadline, self.spin)
    }
}

impl Drop for QueueSender {
    fn drop(&mut self) {
        if let Some(raw) = &self.raw {
            raw.unregister_sender(raw.pid());
        }
    }
}

/// A sender passes to a child with its registration: the child counts itself as a sender
/// before it releases this process's count, so consumers never see a moment with no sender
/// in between.
impl Handle for QueueSender {
    fn into_handoff(mut self) -> Handoff {
        let raw = self.raw.take().expect("a sender is handed off once");
        Handle::into_handoff(raw.into_segment())
    }

    fn from_handoff(h: Handoff) -> Result<Self> {
        let raw = RawQueue::from_segment(ipckit_shmem::Segment::from_handoff(h)?)?;
        let sender = QueueSender::new(raw, false)?;
        sender
            .raw()
            .unregister_sender(nix::unistd::getppid().as_raw() as u32);
        Ok(sender)
    }
}

impl fmt::Debug for QueueSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueSender").finish_non_exhaustive()
    }
}

/// The consumer side of a [`Queue`] at the byte level: implements
/// [`RecvBytes`](ipckit_core::RecvBytes), so `into_receiver::<T>()` makes it typed.
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
            raw: RawQueue::from_segment(ipckit_shmem::Segment::from_handoff(h)?)?,
            spin: false,
        })
    }
}

impl fmt::Debug for QueueReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueReceiver").finish_non_exhaustive()
    }
}

/// A [`Queue`] whose consumers mark each task done, so that a producer can wait until every
/// task put has been processed: Python's `JoinableQueue`.
///
/// Unlike Python's, [`join_timeout`](JoinableQueue::join_timeout) gives up instead of
/// waiting for ever when a consumer died holding a task.
pub struct JoinableQueue<T> {
    queue: Queue<T>,
}

impl<T> JoinableQueue<T> {
    /// A joinable queue for `capacity` messages, in anonymous shared memory.
    ///
    /// # Errors
    /// As [`Queue::create`].
    pub fn create(capacity: usize) -> Result<Self> {
        Ok(JoinableQueue {
            queue: Queue::create(capacity)?,
        })
    }

    /// Another handle on the same queue.
    ///
    /// # Errors
    /// As [`Queue::try_clone`].
    pub fn try_clone(&self) -> Result<Self> {
        Ok(JoinableQueue {
            queue: self.queue.try_clone()?,
        })
    }

    /// The queue underneath (for `get`, `close`, `len`…).
    pub fn queue(&self) -> &Queue<T> {
        &self.queue
    }

    fn unfinished(&self) -> &std::sync::atomic::AtomicU64 {
        &self.queue.raw.header().unfinished.0
    }

    /// Marks one task got from the queue as done.
    ///
    /// # Errors
    /// [`Error::Malformed`] if more tasks were marked done than were put (Python's
    /// `ValueError`).
    pub fn task_done(&self) -> Result<()> {
        let left = self
            .unfinished()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .map_err(|_| {
                Error::Malformed("task_done() called more times than tasks were put".into())
            })?;
        if left == 1 {
            self.queue.raw.header().all_done.0.notify();
        }
        Ok(())
    }

    /// Tasks put and not yet marked done.
    pub fn unfinished_tasks(&self) -> u64 {
        self.unfinished().load(Ordering::Acquire)
    }

    fn join_deadline(&self, deadline: Deadline) -> Result<()> {
        let done = &self.queue.raw.header().all_done.0;
        while self.unfinished_tasks() > 0 {
            match deadline.remaining() {
                Some(d) if d.is_zero() => return Err(Error::Timeout),
                left => {
                    done.sleep_while(left, || self.unfinished_tasks() > 0);
                }
            }
        }
        Ok(())
    }

    /// Waits until every task put has been marked done.
    ///
    /// # Errors
    /// Never in practice; see [`join_timeout`](JoinableQueue::join_timeout).
    pub fn join(&self) -> Result<()> {
        self.join_deadline(Deadline::Never)
    }

    /// Waits at most `timeout` until every task put has been marked done.
    ///
    /// # Errors
    /// [`Error::Timeout`] if some are still unfinished.
    pub fn join_timeout(&self, timeout: Duration) -> Result<()> {
        self.join_deadline(Deadline::after(timeout))
    }
}

impl<T: Serialize> JoinableQueue<T> {
    /// Puts a task (counted as unfinished until a consumer calls `task_done`).
    ///
    /// # Errors
    /// As [`Queue::put`].
    pub fn put(&self, msg: &T) -> Result<()> {
        self.unfinished().fetch_add(1, Ordering::AcqRel);
        self.queue.put(msg).inspect_err(|_| {
            self.unfinished().fetch_sub(1, Ordering::AcqRel);
        })
    }
}

impl<T: DeserializeOwned> JoinableQueue<T> {
    /// Gets a task, waiting at most `timeout`.
    ///
    /// # Errors
    /// As [`Queue::get_timeout`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.queue.get_timeout(timeout)
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinableQueue")
            .field("queue", &self.queue)
            .finish()
    }
}

impl<T> Handle for JoinableQueue<T> {
    fn into_handoff(self) -> Handoff {
        self.queue.into_handoff()
    }

    fn from_handoff(h: Handoff) -> Result<Self> {
        Ok(JoinableQueue {
            queue: Queue::from_handoff(h)?,
        })
    }
}
