//! The descriptor transport: framed messages over a pipe end, a FIFO or a stream socket.
//!
//! It lives in core because three users carry it: ipckit-pipes (pipes, FIFOs, socket
//! pairs), ipckit-sockets (TCP, Unix and abstract sockets) and the process roles' control
//! channel. The mechanism crates make descriptors; this module moves messages over them.
//!
//! - `fd`: one descriptor, its blocking mode, and its read/write/poll calls.
//! - `framed`: the reading half with its read-ahead buffer, and the frame writer.
//!
//! Blocking calls use blocking system calls, so a blocking round trip costs what the raw
//! calls cost; `try_` and `_timeout` forms wait in `poll(2)`.

mod fd;
mod framed;

use std::{
    fmt,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
};

use nix::sys::socket::{Shutdown, UnixAddr, getsockname, getsockopt, shutdown, sockopt};

use self::{
    fd::Fd,
    framed::{Options, ReadHalf, send_frame},
};
use crate::{Deadline, Error, Framing, Handle, Handoff, RecvBytes, Result, SendBytes};

/// The receiving end of a framed byte stream: a pipe's read end, a FIFO opened for
/// reading, or the reading half of a split [`Connection`].
///
/// Made by `ipckit_pipes::pipe`, `ipckit_pipes::Fifo::open_read`, [`Connection::split`],
/// or [`Reader::from_fd`] on any readable descriptor. Passed to a child process as an
/// inherited descriptor ([`Command::handle`](crate::Command::handle)). When every writer
/// is gone (closed, or its process dead), it delivers what was sent, then
/// [`Error::Disconnected`].
pub struct Reader {
    fd: Fd,
    half: ReadHalf,
}

/// The sending end of a framed byte stream: a pipe's write end, a FIFO opened for
/// writing, or the writing half of a split [`Connection`].
///
/// Made as [`Reader`] is. When the reader is gone, a send is [`Error::Disconnected`]
/// (never SIGPIPE). A send blocks while the kernel's buffer is full (64 KiB for a pipe,
/// grown towards 1 MiB for large messages).
pub struct Writer {
    /// Declared first, so dropped while `fd` is still open.
    end: Option<EndOnDrop>,
    fd: Fd,
    opts: Options,
}

/// Ends the sending direction of a socket when dropped: a writing half split from a
/// connection does this, because the reading half keeps the socket open.
#[derive(Debug)]
struct EndOnDrop(RawFd);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        // The peer may be gone already; then there is nothing to end.
        let _ = shutdown(self.0, Shutdown::Write);
    }
}

/// Both directions of a framed byte stream on one socket: Python's `Connection`.
///
/// Made by `ipckit_pipes::duplex` (a socket pair), `ipckit_sockets::connect` and
/// `ipckit_sockets::Listener::accept`, or [`Connection::from_fd`] on a connected stream
/// socket. Passed to a child as an inherited descriptor.
///
/// `send` never deadlocks against a peer that is sending too: while the socket is full it
/// reads ahead what the peer sends (up to the maximum message size and one chunk more).
/// When the peer closes or dies, receives deliver what it sent, then
/// [`Error::Disconnected`]; sends are `Disconnected` at once.
///
/// To send from one thread while another receives, [`split`](Connection::split) it.
pub struct Connection {
    fd: Fd,
    half: ReadHalf,
    peer: String,
}

/// Who is at the other end of a Unix socket, as the kernel vouches for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// The peer's process id (when it connected).
    pub pid: i32,
    /// Its user id.
    pub uid: u32,
    /// Its group id.
    pub gid: u32,
}

impl Reader {
    /// Wraps a readable descriptor.
    ///
    /// # Errors
    /// [`Error::Io`] if the descriptor cannot be inspected.
    pub fn from_fd(fd: OwnedFd) -> Result<Self> {
        Ok(Reader {
            fd: Fd::new(fd)?,
            half: ReadHalf::default(),
        })
    }

    /// Sets how messages are delimited (length-prefixed by default).
    #[must_use]
    pub fn framing(mut self, framing: Framing) -> Self {
        self.half.opts.framing = framing;
        self
    }

    /// Sets the largest message accepted (64 MiB by default).
    #[must_use]
    pub fn max_message(mut self, max: usize) -> Self {
        self.half.opts.max = max;
        self
    }
}

impl Writer {
    /// Wraps a writable descriptor.
    ///
    /// # Errors
    /// [`Error::Io`] if the descriptor cannot be inspected.
    pub fn from_fd(fd: OwnedFd) -> Result<Self> {
        Ok(Writer {
            fd: Fd::new(fd)?,
            opts: Options::default(),
            end: None,
        })
    }

    /// Sets how messages are delimited (length-prefixed by default).
    #[must_use]
    pub fn framing(mut self, framing: Framing) -> Self {
        self.opts.framing = framing;
        self
    }

    /// Sets the largest message sent (64 MiB by default).
    #[must_use]
    pub fn max_message(mut self, max: usize) -> Self {
        self.opts.max = max;
        self
    }
}

impl Connection {
    /// Wraps a connected stream socket.
    ///
    /// # Errors
    /// [`Error::Io`] if the descriptor cannot be inspected.
    pub fn from_fd(fd: OwnedFd) -> Result<Self> {
        Ok(Connection {
            fd: Fd::new(fd)?,
            half: ReadHalf::default(),
            peer: "socket".into(),
        })
    }

    /// Sets how messages are delimited (length-prefixed by default), both ways.
    #[must_use]
    pub fn framing(mut self, framing: Framing) -> Self {
        self.half.opts.framing = framing;
        self
    }

    /// Sets the largest message sent or accepted (64 MiB by default).
    #[must_use]
    pub fn max_message(mut self, max: usize) -> Self {
        self.half.opts.max = max;
        self
    }

    /// Names the peer, for logs and errors (the address it was connected to).
    #[must_use]
    pub fn with_peer(mut self, peer: impl Into<String>) -> Self {
        self.peer = peer.into();
        self
    }

    /// Where the peer is, as text: the address connected to or accepted from.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Splits the connection into a reading and a writing half, for two threads.
    ///
    /// Bytes already read ahead go with the reader. Dropping the writer ends the sending
    /// direction (the peer drains, then sees `Disconnected`), as dropping the connection
    /// would.
    ///
    /// # Errors
    /// [`Error::Io`] if the process is out of descriptors.
    pub fn split(self) -> Result<(Reader, Writer)> {
        let fd = self.fd.try_clone()?;
        let writer = Writer {
            end: Some(EndOnDrop(fd.fd.as_raw_fd())),
            fd,
            opts: self.half.opts,
        };
        let reader = Reader {
            fd: self.fd,
            half: self.half,
        };
        Ok((reader, writer))
    }

    /// Another handle on the same socket, as `TcpStream::try_clone`: for one thread to
    /// send while another receives. Receive on one of them only: bytes read ahead by one
    /// are not seen by the other. [`split`](Connection::split) makes that rule a type.
    ///
    /// # Errors
    /// [`Error::Io`] if the process is out of descriptors.
    pub fn try_clone(&self) -> Result<Connection> {
        Ok(Connection {
            fd: self.fd.try_clone()?,
            half: ReadHalf::with_options(self.half.opts),
            peer: self.peer.clone(),
        })
    }

    /// Closes the sending direction: the peer receives what was sent, then
    /// `Disconnected`; this side can still receive.
    ///
    /// # Errors
    /// [`Error::Io`] if the socket is already gone.
    pub fn shutdown(&self) -> Result<()> {
        shutdown(self.fd.fd.as_raw_fd(), Shutdown::Write)?;
        Ok(())
    }

    /// The credentials of the peer process of a Unix socket (a socket pair included).
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a TCP connection (the kernel knows no credentials
    /// there), [`Error::Io`] if the socket is gone.
    pub fn peer_credentials(&self) -> Result<PeerCredentials> {
        // Linux answers SO_PEERCRED on any socket: on TCP with pid 0 and uid/gid -1.
        if getsockname::<UnixAddr>(self.fd.fd.as_raw_fd()).is_err() {
            return Err(Error::Unsupported(
                "peer credentials exist only on Unix sockets",
            ));
        }
        let c = getsockopt(&self.fd.fd, sockopt::PeerCredentials)?;
        Ok(PeerCredentials {
            pid: c.pid(),
            uid: c.uid(),
            gid: c.gid(),
        })
    }
}

impl RecvBytes for Reader {
    fn recv_bytes_into_deadline(&mut self, buf: &mut Vec<u8>, deadline: Deadline) -> Result<()> {
        self.half.recv(&mut self.fd, buf, deadline)
    }
}

impl SendBytes for Writer {
    fn send_bytes_deadline(&mut self, msg: &[u8], deadline: Deadline) -> Result<()> {
        send_frame(&mut self.fd, self.opts, msg, deadline, None)
    }
}

impl RecvBytes for Connection {
    fn recv_bytes_into_deadline(&mut self, buf: &mut Vec<u8>, deadline: Deadline) -> Result<()> {
        self.half.recv(&mut self.fd, buf, deadline)
    }
}

impl SendBytes for Connection {
    fn send_bytes_deadline(&mut self, msg: &[u8], deadline: Deadline) -> Result<()> {
        let opts = self.half.opts;
        send_frame(&mut self.fd, opts, msg, deadline, Some(&mut self.half))
    }
}

macro_rules! fd_traits {
    ($($t:ident),*) => {$(
        impl AsFd for $t {
            fn as_fd(&self) -> BorrowedFd<'_> {
                self.fd.fd.as_fd()
            }
        }

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($t)).field("fd", &self.fd.fd.as_raw_fd()).finish_non_exhaustive()
            }
        }
    )*};
}

fd_traits!(Reader, Writer, Connection);

/// Hands a descriptor end to a child process. Hand it over before receiving on it: bytes
/// already read ahead stay with this process.
fn handoff_fd(fd: Fd) -> Handoff {
    Handoff::Fd(fd.fd)
}

fn expect_fd(h: Handoff) -> Result<OwnedFd> {
    match h {
        Handoff::Fd(fd) => Ok(fd),
        Handoff::Name(n) => Err(Error::RoleInput(format!(
            "expected a descriptor, got the name `{n}`"
        ))),
    }
}

/// Passed to a child process as an inherited descriptor.
impl Handle for Reader {
    fn into_handoff(self) -> Handoff {
        handoff_fd(self.fd)
    }

    fn from_handoff(h: Handoff) -> Result<Self> {
        Self::from_fd(expect_fd(h)?)
    }
}

/// Passed to a child process as an inherited descriptor.
impl Handle for Writer {
    fn into_handoff(self) -> Handoff {
        let Writer { end, fd, .. } = self;
        // The child sends on it now: this process must not end the direction.
        std::mem::forget(end);
        handoff_fd(fd)
    }

    fn from_handoff(h: Handoff) -> Result<Self> {
        Self::from_fd(expect_fd(h)?)
    }
}

/// Passed to a child process as an inherited descriptor.
impl Handle for Connection {
    fn into_handoff(self) -> Handoff {
        handoff_fd(self.fd)
    }

    fn from_handoff(h: Handoff) -> Result<Self> {
        Ok(Self::from_fd(expect_fd(h)?)?.with_peer("inherited"))
    }
}
