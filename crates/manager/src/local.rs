//! The local fast path's queues: two ipckit-queues queues in anonymous shared memory (a
//! memfd each) per client, made by the server and handed to the client over the Unix
//! socket (`SCM_RIGHTS`). Requests go one way, answers the other; a frame larger than a
//! slot travels as several messages. See `Manager`'s documentation and docs/design.md.
//!
//! Each side sleeps on a wake-up word of its own (an ipckit-shmem `Notify`, handed over
//! with the queues) as soon as its queue is empty, rather than in the queue's own wait,
//! which spins first: a manager's server thread and its clients are usually more than the
//! machine's cores, and a spin there takes the core the other side needs to answer.

use std::{
    fmt,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    time::Duration,
};

use ipckit_core::{Deadline, Error, Handle, Handoff, RecvBytes, Result, SendBytes};
use ipckit_queues::{Queue, QueueOptions, QueueReceiver, QueueSender};
use ipckit_shmem::{Notify, Shared};

use crate::sys;

/// Slots per queue: as many calls may wait unread in each direction.
const SLOTS: usize = 64;
/// The largest message in one slot; a larger frame goes in several.
const SLOT_BYTES: usize = 4096;
/// A message's first byte: the frame ends here.
const LAST: u8 = 0;
/// A message's first byte: the frame goes on in the next message.
const MORE: u8 = 1;

/// The byte before the server's `Hello` to a client that asked for the fast path: the
/// queues come with it.
const OFFER: u8 = 1;
/// The same byte when the server serves this client over the socket only.
const DECLINE: u8 = 0;

/// The longest sleep between two looks at whether the queue ended or its sender died.
const NAP: Duration = Duration::from_millis(50);

/// A queue of the fast path (its messages are bytes: the type parameter is unused).
type Ring = Queue<()>;

/// A wake-up word of the fast path.
type Wake = Shared<Notify>;

/// One client's two queues, requests (client to server) and replies (server to client),
/// and the word each side sleeps on.
pub(crate) struct Pair {
    requests: Ring,
    replies: Ring,
    wake_server: Wake,
    wake_client: Wake,
}

impl fmt::Debug for Pair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pair").finish_non_exhaustive()
    }
}

fn shm(e: ipckit_shmem::Error) -> Error {
    Error::SharedMemory(Box::new(e))
}

fn descriptor(h: impl Handle) -> Result<OwnedFd> {
    match h.into_handoff() {
        Handoff::Fd(fd) => Ok(fd),
        Handoff::Name(name) => Err(Error::NotA {
            expected: "an anonymous queue",
            name,
            reason: "the fast path passes its queues as descriptors".to_string(),
        }),
    }
}

fn os(action: &'static str, e: nix::errno::Errno) -> Error {
    Error::os(action, "Unix socket", "the manager's connection", e)
}

impl Pair {
    /// Two fresh queues in anonymous shared memory (mode 0600, no name in `/dev/shm`).
    pub(crate) fn create() -> Result<Pair> {
        let opts = QueueOptions::new(SLOTS).max_message(SLOT_BYTES);
        Ok(Pair {
            requests: Ring::create(opts)?,
            replies: Ring::create(opts)?,
            wake_server: Notify::create().map_err(shm)?,
            wake_client: Notify::create().map_err(shm)?,
        })
    }

    /// Tells the client at `sock` that it is served through these queues, and hands them
    /// over: one byte with their descriptors, before any frame.
    pub(crate) fn offer(&self, sock: BorrowedFd<'_>) -> Result<()> {
        let fds = [
            descriptor(self.requests.try_clone()?)?,
            descriptor(self.replies.try_clone()?)?,
            descriptor(self.wake_server.try_clone().map_err(shm)?)?,
            descriptor(self.wake_client.try_clone().map_err(shm)?)?,
        ];
        let fds = fds.each_ref().map(AsFd::as_fd);
        sys::send_fds(sock, OFFER, &fds).map_err(|e| os("send", e))
    }

    /// Tells the client at `sock` that it is served over the socket.
    pub(crate) fn decline(sock: BorrowedFd<'_>) -> Result<()> {
        sys::send_fds(sock, DECLINE, &[]).map_err(|e| os("send", e))
    }

    /// Takes what the server answered a request for the fast path: its queues, or `None`
    /// if it serves this client over the socket.
    pub(crate) fn receive(sock: BorrowedFd<'_>, timeout: Duration) -> Result<Option<Pair>> {
        let (byte, mut fds) = sys::recv_fds(sock, timeout).map_err(|e| match e {
            nix::errno::Errno::ETIMEDOUT => Error::Timeout,
            nix::errno::Errno::ECONNRESET => Error::Disconnected,
            e => os("receive", e),
        })?;
        match (byte, fds.len()) {
            (DECLINE, 0) => Ok(None),
            (OFFER, 4) => {
                let mut take = || fds.pop().map(Handoff::Fd).ok_or(Error::Disconnected);
                let (wake_client, wake_server) = (take()?, take()?);
                let (replies, requests) = (take()?, take()?);
                Ok(Some(Pair {
                    requests: Ring::from_handoff(requests)?,
                    replies: Ring::from_handoff(replies)?,
                    wake_server: Wake::from_handoff(wake_server)?,
                    wake_client: Wake::from_handoff(wake_client)?,
                }))
            }
            (b, n) => Err(Error::NotA {
                expected: "a manager's fast-path offer",
                name: "the manager's connection".to_string(),
                reason: format!("byte {b} with {n} descriptors"),
            }),
        }
    }

    /// Another handle on the same two queues.
    pub(crate) fn try_clone(&self) -> Result<Pair> {
        Ok(Pair {
            requests: self.requests.try_clone()?,
            replies: self.replies.try_clone()?,
            wake_server: self.wake_server.try_clone().map_err(shm)?,
            wake_client: self.wake_client.try_clone().map_err(shm)?,
        })
    }

    /// Ends both queues: blocked puts and gets on either side return `Disconnected`.
    pub(crate) fn close(&self) {
        self.requests.close();
        self.replies.close();
        self.wake_server.notify();
        self.wake_client.notify();
    }

    /// The client's ends: it sends requests and receives replies.
    pub(crate) fn client_ends(&self) -> Result<(Outbound, Inbound)> {
        Ok((
            Outbound::new(self.requests.byte_sender()?, &self.wake_server)?,
            Inbound::new(&self.replies, &self.wake_client, usize::MAX)?,
        ))
    }

    /// The server's ends: it receives requests (of at most `limit` bytes) and sends
    /// replies.
    pub(crate) fn server_ends(&self, limit: usize) -> Result<(Outbound, Inbound)> {
        Ok((
            Outbound::new(self.replies.byte_sender()?, &self.wake_client)?,
            Inbound::new(&self.requests, &self.wake_server, limit)?,
        ))
    }
}

/// Puts whole frames into a queue, each as one message or, above a slot, as several.
pub(crate) struct Outbound {
    tx: QueueSender,
    /// The receiver's wake-up word.
    wake: Wake,
    scratch: Vec<u8>,
}

impl fmt::Debug for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbound").finish_non_exhaustive()
    }
}

impl Outbound {
    fn new(tx: QueueSender, wake: &Wake) -> Result<Self> {
        Ok(Outbound {
            tx,
            wake: wake.try_clone().map_err(shm)?,
            scratch: Vec::with_capacity(256),
        })
    }

    /// Puts one frame, waiting for room as long as it takes (`Disconnected` once the
    /// queue is closed).
    pub(crate) fn put(&mut self, frame: &[u8]) -> Result<()> {
        let room = self.tx.max_message().saturating_sub(1).max(1);
        let mut chunks = frame.chunks(room).peekable();
        loop {
            let chunk = chunks.next().unwrap_or_default();
            let more = chunks.peek().is_some();
            self.scratch.clear();
            self.scratch.push(if more { MORE } else { LAST });
            self.scratch.extend_from_slice(chunk);
            self.tx.send_bytes(&self.scratch)?;
            self.wake.notify();
            if !more {
                return Ok(());
            }
        }
    }
}

/// Takes whole frames out of a queue, putting together those that came in several
/// messages. A frame begun when a wait times out is kept for the next call.
pub(crate) struct Inbound {
    rx: QueueReceiver,
    /// The same queue, to see whether it is empty or closed before sleeping.
    ring: Ring,
    /// This side's wake-up word.
    wake: Wake,
    buf: Vec<u8>,
    frame: Vec<u8>,
    limit: usize,
}

impl fmt::Debug for Inbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbound").finish_non_exhaustive()
    }
}

impl Inbound {
    fn new(ring: &Ring, wake: &Wake, limit: usize) -> Result<Self> {
        Ok(Inbound {
            rx: ring.byte_receiver()?,
            ring: ring.try_clone()?,
            wake: wake.try_clone().map_err(shm)?,
            buf: Vec::with_capacity(SLOT_BYTES),
            frame: Vec::new(),
            limit,
        })
    }

    /// The next whole frame, waiting for it until `deadline`.
    ///
    /// `Timeout` at the deadline, `Disconnected` once the queue is closed or its sender
    /// gone, `TooLarge` for a frame above the limit, `Codec` for an empty message.
    pub(crate) fn recv(&mut self, deadline: Deadline) -> Result<&[u8]> {
        let start = loop {
            match self.try_frame() {
                Ok(start) => break start,
                Err(Error::Timeout) => {}
                Err(e) => return Err(e),
            }
            let nap = deadline.remaining().map_or(NAP, |left| left.min(NAP));
            if nap.is_zero() {
                return Err(Error::Timeout);
            }
            let ring = &self.ring;
            self.wake
                .sleep_while(Some(nap), || ring.is_empty() && !ring.is_closed());
        };
        Ok(&self.buf[start..])
    }

    /// Takes what the queue holds of the next frame without waiting; where the whole
    /// frame begins in `buf` once it is there, else `Timeout`.
    fn try_frame(&mut self) -> Result<usize> {
        loop {
            self.rx
                .recv_bytes_into_deadline(&mut self.buf, Deadline::Now)?;
            let Some((&flag, body)) = self.buf.split_first() else {
                return Err(Error::Codec("an empty message on a manager queue".into()));
            };
            let len = self.frame.len().saturating_add(body.len());
            if len > self.limit {
                self.frame.clear();
                return Err(Error::TooLarge {
                    len: len as u64,
                    max: self.limit,
                });
            }
            if flag == MORE {
                self.frame.extend_from_slice(body);
                continue;
            }
            if self.frame.is_empty() {
                return Ok(1);
            }
            self.frame.extend_from_slice(body);
            std::mem::swap(&mut self.buf, &mut self.frame);
            self.frame.clear();
            return Ok(0);
        }
    }
}
