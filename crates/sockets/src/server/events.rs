//! The event queue between the server's client threads and the application.
//!
//! Client threads push joins, messages and leaves; [`Events`](super::Events) takes them.
//! The queue holds at most `capacity` messages and `byte_capacity` bytes of them, as they
//! came over the wire (joins and leaves always fit; a message alone always fits): a reader
//! thread with a message and no room waits, so it stops reading its socket and the kernel
//! pushes back on the client. It never waits for a client that is on its way out, nor once
//! nobody takes events (the [`Events`](super::Events) was dropped).

use std::{
    collections::VecDeque,
    sync::{Condvar, Mutex, PoisonError, atomic::Ordering},
};

use ipckit_core::{Deadline, Error, Result};

use super::{ClientId, Event, Format, LeaveReason, Peer, client::Client, lock};

/// What the client threads tell the application, whatever the type of its messages.
pub(super) trait Inbox: Send + Sync {
    fn joined(&self, client: ClientId, peer: Peer);
    /// Decodes and queues a client's message, waiting for room.
    ///
    /// # Errors
    /// The decoding error, for bytes that are not a message of the server's type.
    fn message(&self, client: &Client, bytes: Vec<u8>) -> Result<()>;
    fn left(&self, client: ClientId, reason: LeaveReason);
    /// A client is leaving: its reader, if waiting for room, waits no more.
    fn wake_waiters(&self);
    /// The server has shut down: nothing more comes.
    fn close(&self);
}

/// The queue of a server whose clients send `T`, decoded with `C`.
pub(super) struct Decoding<T, C> {
    pub(super) queue: EventQueue<T>,
    format: C,
}

impl<T, C> Decoding<T, C> {
    pub(super) fn new(capacity: usize, byte_capacity: usize, format: C) -> Self {
        Decoding {
            queue: EventQueue::new(capacity, byte_capacity),
            format,
        }
    }
}

impl<T: Send + 'static, C: Format<T>> Inbox for Decoding<T, C> {
    fn joined(&self, client: ClientId, peer: Peer) {
        self.queue.push(Event::Joined { client, peer });
    }

    fn message(&self, client: &Client, bytes: Vec<u8>) -> Result<()> {
        if client.discard.load(Ordering::Acquire) {
            return Ok(());
        }
        let size = bytes.len();
        let msg = self.format.decode(bytes)?;
        self.queue.push_message(client, msg, size);
        Ok(())
    }

    fn left(&self, client: ClientId, reason: LeaveReason) {
        self.queue.push(Event::Left { client, reason });
    }

    fn wake_waiters(&self) {
        self.queue.wake_waiters();
    }

    fn close(&self) {
        self.queue.close();
    }
}

/// The events, with room for `capacity` messages and `byte_capacity` bytes of them; joins
/// and leaves always fit.
pub(super) struct EventQueue<T> {
    inner: Mutex<Queue<T>>,
    /// An event came, or the queue closed.
    ready: Condvar,
    /// Room was made, or a waiting client left.
    room: Condvar,
    capacity: usize,
    byte_capacity: usize,
}

struct Queue<T> {
    /// Each event with the size of its message on the wire (0 for joins and leaves).
    events: VecDeque<(Event<T>, usize)>,
    messages: usize,
    bytes: usize,
    /// The server shut down: nothing more comes.
    closed: bool,
    /// Nobody takes events any more.
    abandoned: bool,
}

impl<T> EventQueue<T> {
    fn new(capacity: usize, byte_capacity: usize) -> Self {
        EventQueue {
            inner: Mutex::new(Queue {
                events: VecDeque::new(),
                messages: 0,
                bytes: 0,
                closed: false,
                abandoned: false,
            }),
            ready: Condvar::new(),
            room: Condvar::new(),
            capacity,
            byte_capacity,
        }
    }

    fn push(&self, event: Event<T>) {
        let mut q = lock(&self.inner);
        if q.abandoned {
            return;
        }
        q.events.push_back((event, 0));
        self.ready.notify_one();
    }

    /// Queues a client's message of `size` bytes on the wire, waiting for room; drops it
    /// if the client was sent away or nobody listens.
    fn push_message(&self, client: &Client, msg: T, size: usize) {
        let mut q = lock(&self.inner);
        loop {
            if q.abandoned || q.closed || client.discard.load(Ordering::Acquire) {
                return;
            }
            let fits = q.messages == 0 || q.bytes.saturating_add(size) <= self.byte_capacity;
            if q.messages < self.capacity && fits {
                break;
            }
            q = self.room.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
        q.events.push_back((
            Event::Message {
                from: client.id,
                msg,
            },
            size,
        ));
        q.messages += 1;
        q.bytes += size;
        self.ready.notify_one();
    }

    /// The next event, waiting no later than `deadline`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if none came in time, [`Error::Disconnected`] once the server has
    /// shut down and every event was taken.
    pub(super) fn pop(&self, deadline: Deadline) -> Result<Event<T>> {
        let mut q = lock(&self.inner);
        loop {
            if let Some((event, size)) = q.events.pop_front() {
                if matches!(event, Event::Message { .. }) {
                    q.messages -= 1;
                    q.bytes -= size;
                    self.room.notify_all();
                }
                return Ok(event);
            }
            if q.closed {
                return Err(Error::Disconnected);
            }
            q = match deadline.remaining() {
                None => self.ready.wait(q).unwrap_or_else(PoisonError::into_inner),
                Some(left) if left.is_zero() => return Err(Error::Timeout),
                Some(left) => {
                    self.ready
                        .wait_timeout(q, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    fn wake_waiters(&self) {
        let _q = lock(&self.inner);
        self.room.notify_all();
    }

    fn close(&self) {
        lock(&self.inner).closed = true;
        self.ready.notify_all();
        self.room.notify_all();
    }

    /// Nobody takes events any more: what is queued is dropped, and so is what comes.
    pub(super) fn abandon(&self) {
        let mut q = lock(&self.inner);
        q.abandoned = true;
        q.events.clear();
        q.messages = 0;
        q.bytes = 0;
        self.room.notify_all();
    }
}
