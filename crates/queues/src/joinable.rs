//! `JoinableQueue`: a shared-memory queue whose consumers mark tasks done.

use std::{fmt, sync::atomic::Ordering, time::Duration};

use ipckit_core::{Codec, Deadline, Error, Handle, Handoff, Postcard, Result};
use serde::{Serialize, de::DeserializeOwned};

use crate::shm::{Queue, QueueOptions};

/// A [`Queue`] whose consumers mark each task done, so that a producer can wait until every
/// task put has been processed: Python's `JoinableQueue`.
///
/// - **Create** it as a [`Queue`]: [`create`](JoinableQueue::create) (anonymous, for
///   children), [`create_named`](JoinableQueue::create_named) and
///   [`open`](JoinableQueue::open).
/// - **Share** it with a child by handing a [`try_clone`](JoinableQueue::try_clone) to
///   `Command::handle`; the child takes `JoinableQueue<T>` with `Ctx::handle`.
/// - Every task is put with `put` (or `try_put`, `put_timeout`), which counts it as
///   unfinished; consumers `get` it and call [`task_done`](JoinableQueue::task_done).
///   [`join`](JoinableQueue::join) waits until the count is zero.
/// - **A dead peer**: a consumer that dies holding a task never marks it done, so Python's
///   `join` would wait for ever; [`join_timeout`](JoinableQueue::join_timeout) gives up
///   instead. A handle counts as a sender from its first `put`, as a [`Queue`]'s does: once
///   every handle that put is dropped or its process dead (or the queue is
///   [`close`](JoinableQueue::close)d), consumers drain it, then get `Disconnected`. Crash
///   safety is the [`Queue`]'s: a process killed mid-put or mid-get never corrupts it.
///
/// ```
/// use ipckit_queues::JoinableQueue;
///
/// let tasks: JoinableQueue<u32> = JoinableQueue::create(8)?;
/// tasks.put(&7)?;
/// assert_eq!(tasks.unfinished_tasks(), 1);
/// let task = tasks.get()?;
/// tasks.task_done()?;
/// tasks.join()?;
/// # assert_eq!(task, 7);
/// # Ok::<(), ipckit_queues::Error>(())
/// ```
pub struct JoinableQueue<T, C = Postcard> {
    queue: Queue<T, C>,
}

impl<T, C: Codec + Default> JoinableQueue<T, C> {
    /// A joinable queue sized by `opts` (a capacity, or [`QueueOptions`]), in anonymous
    /// shared memory.
    ///
    /// # Errors
    /// As [`Queue::create`].
    pub fn create(opts: impl Into<QueueOptions>) -> Result<Self> {
        Ok(JoinableQueue {
            queue: Queue::create(opts)?,
        })
    }

    /// A joinable queue in a named segment with a fresh unique name, which unrelated
    /// processes [`open`](JoinableQueue::open).
    ///
    /// # Errors
    /// As [`Queue::create_named`].
    pub fn create_named(opts: impl Into<QueueOptions>) -> Result<Self> {
        Ok(JoinableQueue {
            queue: Queue::create_named(opts)?,
        })
    }

    /// Opens the named joinable queue another process made with
    /// [`create_named`](JoinableQueue::create_named).
    ///
    /// # Errors
    /// As [`Queue::open`].
    pub fn open(name: &str) -> Result<Self> {
        Ok(JoinableQueue {
            queue: Queue::open(name)?,
        })
    }
}

impl<T, C: Codec + Clone> JoinableQueue<T, C> {
    /// Another handle on the same queue: the one to hand to a child process.
    ///
    /// # Errors
    /// As [`Queue::try_clone`].
    pub fn try_clone(&self) -> Result<Self> {
        Ok(JoinableQueue {
            queue: self.queue.try_clone()?,
        })
    }

    /// Busy-wait instead of sleeping when this handle waits; see [`Queue::spin`].
    #[must_use]
    pub fn spin(self, on: bool) -> Self {
        JoinableQueue {
            queue: self.queue.spin(on),
        }
    }

    /// The name of a named queue.
    pub fn name(&self) -> Option<&str> {
        self.queue.name()
    }

    /// Messages in the queue now (an estimate while others put and get).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether the queue looks empty now.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The most messages it holds.
    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// The largest message, in encoded bytes.
    pub fn max_message(&self) -> usize {
        self.queue.max_message()
    }

    /// Ends the queue for everyone: puts fail with `Disconnected`; gets drain what was put,
    /// then say `Disconnected`.
    pub fn close(&self) {
        self.queue.close();
    }

    /// Whether the queue was closed.
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    fn unfinished(&self) -> &std::sync::atomic::AtomicU64 {
        &self.queue.raw().header().unfinished.0
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
            self.queue.raw().header().all_done.0.notify();
        }
        Ok(())
    }

    /// Tasks put and not yet marked done.
    pub fn unfinished_tasks(&self) -> u64 {
        self.unfinished().load(Ordering::Acquire)
    }

    fn join_deadline(&self, deadline: Deadline) -> Result<()> {
        let done = &self.queue.raw().header().all_done.0;
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
    /// None in practice; a consumer that died holding a task makes it wait for ever, so
    /// prefer [`join_timeout`](JoinableQueue::join_timeout).
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

impl<T: Serialize, C: Codec + Clone> JoinableQueue<T, C> {
    /// Puts a task, counted as unfinished until a consumer calls
    /// [`task_done`](JoinableQueue::task_done), waiting for room no later than `deadline`;
    /// the form the others use.
    ///
    /// # Errors
    /// As [`Queue::put_deadline`]; a task that was not put is not counted.
    pub fn put_deadline(&self, msg: &T, deadline: Deadline) -> Result<()> {
        self.unfinished().fetch_add(1, Ordering::AcqRel);
        self.queue.put_deadline(msg, deadline).inspect_err(|_| {
            self.unfinished().fetch_sub(1, Ordering::AcqRel);
        })
    }

    ipckit_core::put_forms!();
}

impl<T: DeserializeOwned, C: Codec + Clone> JoinableQueue<T, C> {
    /// Gets a task, waiting for one no later than `deadline`; the form the others use.
    ///
    /// # Errors
    /// As [`Queue::get_deadline`].
    pub fn get_deadline(&self, deadline: Deadline) -> Result<T> {
        self.queue.get_deadline(deadline)
    }

    ipckit_core::get_forms!();
}

impl<T, C> fmt::Debug for JoinableQueue<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinableQueue")
            .field("queue", &self.queue)
            .finish()
    }
}

/// Passes as its [`Queue`] does.
impl<T, C: Codec + Default> Handle for JoinableQueue<T, C> {
    fn into_handoff(self) -> Handoff {
        self.queue.into_handoff()
    }

    fn from_handoff(h: Handoff) -> Result<Self> {
        Ok(JoinableQueue {
            queue: Queue::from_handoff(h)?,
        })
    }
}
