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
//! calls cost; `try_` and `_timeout` forms wait in `poll(2)`, and so do the reads of a
//! message that has begun when a stall limit is set.
//!
//! Beside frames, `Connection`, `Reader` and `Writer` are plain byte streams (`io::Read`,
//! `io::Write`) with timeouts of their own.

mod fd;
mod framed;

use std::{
    fmt, io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
    time::Duration,
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
/// [`Error::Disconnected`]; a writer that stops in the middle of a message holds the
/// receive until it goes on or dies, unless a [`stall_limit`](Reader::stall_limit) is set.
///
/// It is also a plain byte stream: [`io::Read`] gives the bytes as they arrive, whatever
/// the framing, within [`set_read_timeout`](Reader::set_read_timeout).
pub struct Reader {
    fd: Fd,
    half: ReadHalf,
    read_timeout: Option<Duration>,
}

/// The sending end of a framed byte stream: a pipe's write end, a FIFO opened for
/// writing, or the writing half of a split [`Connection`].
///
/// Made as [`Reader`] is. When the reader is gone, a send is [`Error::Disconnected`]
/// (never SIGPIPE). A send blocks while the kernel's buffer is full (64 KiB for a pipe,
/// grown towards 1 MiB for large messages).
///
/// It is also a plain byte stream: [`io::Write`] writes bytes as they are, whatever the
/// framing, within [`set_write_timeout`](Writer::set_write_timeout).
pub struct Writer {
    /// Declared first, so dropped while `fd` is still open.
    end: Option<EndOnDrop>,
    fd: Fd,
    opts: Options,
    write_timeout: Option<Duration>,
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
/// [`Error::Disconnected`]; sends are `Disconnected` at once. A peer that stops in the
/// middle of a message holds the receive until it goes on or dies, unless a
/// [`stall_limit`](Connection::stall_limit) is set. A header announcing a large message
/// costs memory only as the message's bytes arrive.
///
/// To send from one thread while another receives, [`split`](Connection::split) it.
///
/// A receive with a deadline on a socket blocks in `recv` itself, bounded by the socket's
/// receive timeout (`SO_RCVTIMEO`, set to the time left and kept while later deadlines
/// allow it): one system call per message, as a plain blocking read makes. The timeout
/// belongs to the socket, so code that reads the same socket through another descriptor
/// (a clone, or the raw descriptor) sees it too: its blocking reads may end with
/// `EAGAIN` after that long. Receives of this `Connection` and its clones handle that, but
/// two clones receiving with different deadlines at the same time share the timeout: one may
/// then wait past its deadline, up to the other's.
///
/// It is also a plain byte stream, as `TcpStream` is: [`io::Read`] gives the bytes as
/// they arrive (what a receive had read ahead first) and [`io::Write`] writes bytes as
/// they are, whatever the framing, within [`set_read_timeout`](Connection::set_read_timeout)
/// and [`set_write_timeout`](Connection::set_write_timeout). With [`Framing::Raw`] the
/// byte layer does the same (`send_bytes` is `sendall`, `recv_bytes` is `recv`).
pub struct Connection {
    fd: Fd,
    half: ReadHalf,
    peer: String,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
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
            read_timeout: None,
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

    /// Sets how long a receive waits for more of a message once it has begun (its first
    /// byte, or part of a line, has arrived); by default as long as it takes. A writer that
    /// sends nothing for longer makes the receive fail with [`Error::Timeout`], and the
    /// stream is unusable from then on: later receives are [`Error::Malformed`].
    #[must_use]
    pub fn stall_limit(mut self, limit: Duration) -> Self {
        self.half.opts.stall = Some(limit);
        self
    }

    /// Bounds each [`io::Read`] call (`None`, the default: it waits as long as it takes);
    /// past it the read fails with [`io::ErrorKind::TimedOut`]. Receives of messages have
    /// their own `_timeout` forms.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
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
            write_timeout: None,
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

    /// Bounds the wait of each [`io::Write`] call for room to begin writing (`None`, the
    /// default: as long as it takes); past it the write fails with
    /// [`io::ErrorKind::TimedOut`], having written nothing. A write that has begun finishes.
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.write_timeout = timeout;
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
            read_timeout: None,
            write_timeout: None,
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

    /// Sets how long a receive waits for more of a message once it has begun (its first
    /// byte, or part of a line, has arrived); by default as long as it takes. A peer that
    /// sends nothing for longer makes the receive fail with [`Error::Timeout`], and the
    /// stream is unusable from then on: later receives are [`Error::Malformed`]. A server
    /// sets it so that a client cannot hold a reader with half a message.
    #[must_use]
    pub fn stall_limit(mut self, limit: Duration) -> Self {
        self.half.opts.stall = Some(limit);
        self
    }

    /// Bounds each [`io::Read`] call (`None`, the default: it waits as long as it takes);
    /// past it the read fails with [`io::ErrorKind::TimedOut`]. Receives of messages have
    /// their own `_timeout` forms.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    /// Bounds the wait of each [`io::Write`] call for room to begin writing (`None`, the
    /// default: as long as it takes); past it the write fails with
    /// [`io::ErrorKind::TimedOut`], having written nothing. A write that has begun finishes.
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.write_timeout = timeout;
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
            write_timeout: self.write_timeout,
        };
        let reader = Reader {
            fd: self.fd,
            half: self.half,
            read_timeout: self.read_timeout,
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
            read_timeout: self.read_timeout,
            write_timeout: self.write_timeout,
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

/// A deadline `timeout` from now, or none.
fn deadline_of(timeout: Option<Duration>) -> Deadline {
    timeout.map_or(Deadline::Never, Deadline::after)
}

/// An ipckit error as `io::Read`/`io::Write` report it: the OS error itself, a timeout as
/// `TimedOut`, anything else wrapped whole.
fn into_io(e: Error) -> io::Error {
    match e {
        Error::Io(e) => e,
        Error::Timeout => io::ErrorKind::TimedOut.into(),
        Error::Disconnected => io::ErrorKind::BrokenPipe.into(),
        e => io::Error::other(e),
    }
}

/// Writes `buf` as it is (at most the maximum message size of it), whatever the framing.
fn write_plain(
    fd: &mut Fd,
    opts: Options,
    buf: &[u8],
    timeout: Option<Duration>,
    drain: Option<&mut ReadHalf>,
) -> io::Result<usize> {
    let opts = Options {
        framing: Framing::Raw,
        ..opts
    };
    let part = &buf[..buf.len().min(opts.max.max(1))];
    send_frame(fd, opts, part, deadline_of(timeout), drain).map_err(into_io)?;
    Ok(part.len())
}

/// The bytes as they arrive, whatever the framing; 0 at end of stream.
impl io::Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.half
            .read_plain(&mut self.fd, buf, deadline_of(self.read_timeout))
            .map_err(into_io)
    }
}

/// The bytes as they arrive (what a receive had read ahead first), whatever the framing;
/// 0 at end of stream.
impl io::Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.half
            .read_plain(&mut self.fd, buf, deadline_of(self.read_timeout))
            .map_err(into_io)
    }
}

/// Writes bytes as they are, whatever the framing; each call writes all it was given (up
/// to the maximum message size) or fails.
impl io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_plain(&mut self.fd, self.opts, buf, self.write_timeout, None)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes bytes as they are, whatever the framing; each call writes all it was given (up
/// to the maximum message size) or fails. While the socket is full it reads ahead what the
/// peer sends, as a send does, so two peers writing to each other never deadlock.
impl io::Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let opts = self.half.opts;
        write_plain(
            &mut self.fd,
            opts,
            buf,
            self.write_timeout,
            Some(&mut self.half),
        )
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        os::unix::net::UnixStream,
        time::Duration,
    };

    use ipckit_testkit::PATIENCE;

    use super::*;
    use crate::RecvTimeoutError;

    fn pair() -> (Connection, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        theirs.set_read_timeout(Some(PATIENCE)).unwrap();
        (Connection::from_fd(ours.into()).unwrap(), theirs)
    }

    #[test]
    fn a_large_announced_message_costs_only_what_arrived() {
        let (conn, mut plain) = pair();
        let mut conn = conn.stall_limit(Duration::from_millis(100));
        plain.write_all(&(60u32 << 20).to_be_bytes()).unwrap();
        plain.write_all(b"x").unwrap();
        let mut buf = Vec::new();
        let r = conn.recv_bytes_into_deadline(&mut buf, Deadline::after(PATIENCE));
        assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
        assert!(buf.capacity() <= 8 << 10, "{} bytes held", buf.capacity());
        // The stream is out of step from then on, and says why.
        let r = conn.recv_bytes_into_deadline(&mut buf, Deadline::after(PATIENCE));
        assert!(
            matches!(&r, Err(Error::Malformed(why)) if why.contains("in the middle of a message")),
            "{r:?}"
        );
    }

    #[test]
    fn a_message_that_keeps_coming_is_not_cut_by_the_stall_limit() {
        let (conn, mut plain) = pair();
        let mut conn = conn.stall_limit(Duration::from_millis(200));
        let writer = std::thread::spawn(move || {
            plain.write_all(&(3000u32).to_be_bytes()).unwrap();
            for chunk in [[1u8; 1000], [2; 1000], [3; 1000]] {
                std::thread::sleep(Duration::from_millis(50));
                plain.write_all(&chunk).unwrap();
            }
            plain
        });
        let m = conn.recv_bytes_timeout(PATIENCE).unwrap();
        assert_eq!(m.len(), 3000);
        assert_eq!((m[0], m[1500], m[2999]), (1, 2, 3));
        drop(writer.join().unwrap());
    }

    #[test]
    fn a_header_cut_short_is_a_stall_and_a_timeout_before_it_is_not() {
        let (conn, mut plain) = pair();
        let mut conn = conn.stall_limit(Duration::from_millis(100));
        // Nothing sent: a plain timeout, and the stream is fine.
        assert!(matches!(
            conn.recv_bytes_timeout(Duration::from_millis(20)),
            Err(RecvTimeoutError::Timeout)
        ));
        plain.write_all(&[0, 0]).unwrap();
        let mut buf = Vec::new();
        let r = conn.recv_bytes_into_deadline(&mut buf, Deadline::Never);
        assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
        assert!(matches!(
            conn.recv_bytes_into_deadline(&mut buf, Deadline::Never),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn io_read_and_write_move_plain_bytes_with_timeouts() {
        let (mut conn, mut plain) = pair();
        conn.write_all(b"Hello, world").unwrap();
        let mut buf = [0u8; 1024];
        let n = plain.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"Hello, world");
        // Bytes read ahead by a framed receive come first.
        plain
            .write_all(&[0, 0, 0, 2, b'h', b'i', b'!', b'?'])
            .unwrap();
        assert_eq!(conn.recv_bytes_timeout(PATIENCE).unwrap(), b"hi");
        conn.set_read_timeout(Some(PATIENCE));
        let mut got = Vec::new();
        while got.len() < 2 {
            let n = conn.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"!?");
        conn.set_read_timeout(Some(Duration::from_millis(20)));
        let e = conn.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        // Split halves are streams too; the end of stream is 0.
        let (mut r, mut w) = conn.split().unwrap();
        w.write_all(b"bye").unwrap();
        drop(w);
        let mut rest = Vec::new();
        plain.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"bye");
        drop(plain);
        assert_eq!(r.read(&mut buf).unwrap(), 0);
    }
}
