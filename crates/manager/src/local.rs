//! The local fast path's queues: two ipckit-queues queues in anonymous shared memory (a
//! memfd each) per client, made by the server and handed to the client over the Unix
//! socket (`SCM_RIGHTS`). Requests go one way, answers the other; a frame larger than a
//! slot travels as several messages. See `Manager`'s documentation and docs/design.md.

use std::{
    fmt,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    time::Duration,
};

use ipckit_core::{Deadline, Error, Handle, Handoff, RecvBytes, Result, SendBytes};
use ipckit_queues::{Queue, QueueOptions, QueueReceiver, QueueSender};

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

/// A queue of the fast path (its messages are bytes: the type parameter is unused).
type Ring = Queue<()>;

/// One client's two queues: requests (client to server) and replies (server to client).
pub(crate) struct Pair {
    requests: Ring,
    replies: Ring,
}

impl fmt::Debug for Pair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pair").finish_non_exhaustive()
    }
}

fn descriptor(q: &Ring) -> Result<OwnedFd> {
    match q.try_clone()?.into_handoff() {
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
        })
    }

    /// Tells the client at `sock` that it is served through these queues, and hands them
    /// over: one byte with their descriptors, before any frame.
    pub(crate) fn offer(&self, sock: BorrowedFd<'_>) -> Result<()> {
        let (req, rep) = (descriptor(&self.requests)?, descriptor(&self.replies)?);
        sys::send_fds(sock, OFFER, &[req.as_fd(), rep.as_fd()]).map_err(|e| os("send", e))
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
            (OFFER, 2) => {
                let replies = fds.pop().map(Handoff::Fd);
                let requests = fds.pop().map(Handoff::Fd);
                match (requests, replies) {
                    (Some(req), Some(rep)) => Ok(Some(Pair {
                        requests: Ring::from_handoff(req)?,
                        replies: Ring::from_handoff(rep)?,
                    })),
                    _ => Err(Error::Disconnected),
                }
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
        })
    }

    /// Ends both queues: blocked puts and gets on either side return `Disconnected`.
    pub(crate) fn close(&self) {
        self.requests.close();
        self.replies.close();
    }

    /// The client's ends: it sends requests and receives replies.
    pub(crate) fn client_ends(&self) -> Result<(Outbound, Inbound)> {
        Ok((
            Outbound::new(self.requests.byte_sender()?),
            Inbound::new(self.replies.byte_receiver()?, usize::MAX),
        ))
    }

    /// The server's ends: it receives requests (of at most `limit` bytes) and sends
    /// replies.
    pub(crate) fn server_ends(&self, limit: usize) -> Result<(Outbound, Inbound)> {
        Ok((
            Outbound::new(self.replies.byte_sender()?),
            Inbound::new(self.requests.byte_receiver()?, limit),
        ))
    }
}

/// Puts whole frames into a queue, each as one message or, above a slot, as several.
pub(crate) struct Outbound {
    tx: QueueSender,
    scratch: Vec<u8>,
}

impl fmt::Debug for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbound").finish_non_exhaustive()
    }
}

impl Outbound {
    fn new(tx: QueueSender) -> Self {
        Outbound {
            tx,
            scratch: Vec::with_capacity(256),
        }
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
    fn new(rx: QueueReceiver, limit: usize) -> Self {
        Inbound {
            rx,
            buf: Vec::with_capacity(SLOT_BYTES),
            frame: Vec::new(),
            limit,
        }
    }

    /// The next whole frame, waiting for it until `deadline`.
    ///
    /// `Timeout` at the deadline, `Disconnected` once the queue is closed or its sender
    /// gone, `TooLarge` for a frame above the limit, `Codec` for an empty message.
    pub(crate) fn recv(&mut self, deadline: Deadline) -> Result<&[u8]> {
        loop {
            self.rx.recv_bytes_into_deadline(&mut self.buf, deadline)?;
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
                return Ok(&self.buf[1..]);
            }
            self.frame.extend_from_slice(body);
            std::mem::swap(&mut self.buf, &mut self.frame);
            self.frame.clear();
            return Ok(&self.buf);
        }
    }
}
