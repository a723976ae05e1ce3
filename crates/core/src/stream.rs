//! Framed messages over a file descriptor: a pipe end, a FIFO, or a stream socket.
//!
//! Blocking calls use blocking system calls, so a blocking round trip costs what the raw
//! calls cost. `try_` and `_timeout` forms wait in `poll(2)`. The timeout bounds the wait
//! for a message to *begin*: once the first byte of a frame has been read (or written),
//! the call finishes that frame, or reports [`Error::Disconnected`] if the peer dies
//! half-way, so a stream is never left holding half a message.

use std::{
    fmt,
    io::IoSlice,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
};

use nix::{
    errno::Errno,
    fcntl::{FcntlArg, OFlag, fcntl},
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::{
        socket::{MsgFlags, recv, sendmsg},
        stat::{SFlag, fstat},
    },
    unistd::read,
};

use crate::{
    Deadline, Error, Handle, Handoff, RecvBytes, Result, SendBytes,
    frame::{DEFAULT_MAX_MESSAGE, Framing, Header, MAX_HEADER, decode_header, encode_header},
    sys,
};

/// Read-ahead buffer size: one syscall takes every small message that is waiting.
const READ_CHUNK: usize = 64 << 10;

/// A message's buffer is first sized to at most this, then doubled as its bytes arrive.
const GROW_FROM: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Socket,
    Other,
}

/// The largest pipe buffer ipckit asks for, the default `/proc/sys/fs/pipe-max-size`.
const MAX_PIPE_BUFFER: usize = 1 << 20;

/// A descriptor, what it is, and whether `O_NONBLOCK` is set on it.
#[derive(Debug)]
struct Fd {
    fd: OwnedFd,
    kind: Kind,
    nonblocking: bool,
    /// The kernel buffer of a pipe or FIFO, grown for large messages; `None` otherwise.
    pipe_buffer: Option<usize>,
}

impl Fd {
    fn new(fd: OwnedFd) -> Result<Self> {
        let st = fstat(&fd)?;
        let file_type = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        let kind = if file_type == SFlag::S_IFSOCK {
            Kind::Socket
        } else {
            sys::ignore_sigpipe();
            Kind::Other
        };
        let pipe_buffer = match file_type {
            SFlag::S_IFIFO => fcntl(&fd, FcntlArg::F_GETPIPE_SZ).ok().map(|n| n as usize),
            _ => None,
        };
        let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
        Ok(Fd {
            fd,
            kind,
            nonblocking: flags.contains(OFlag::O_NONBLOCK),
            pipe_buffer,
        })
    }

    /// Grows a pipe's kernel buffer towards `frame` bytes (at most 1 MiB), so that a large
    /// message crosses in few wake-ups. Best effort: the system's limits may refuse it.
    fn fit(&mut self, frame: usize) {
        let Some(have) = self
            .pipe_buffer
            .filter(|&n| n < frame && n < MAX_PIPE_BUFFER)
        else {
            return;
        };
        let want = frame.next_power_of_two().min(MAX_PIPE_BUFFER);
        self.pipe_buffer = match fcntl(&self.fd, FcntlArg::F_SETPIPE_SZ(want as i32)) {
            Ok(n) => Some(n as usize),
            // Do not ask again.
            Err(_) => Some(MAX_PIPE_BUFFER),
        };
        tracing::trace!(from = have, to = ?self.pipe_buffer, "pipe buffer grown");
    }

    /// Puts a non-socket descriptor in the mode `deadline` needs (sockets use per-call flags).
    fn set_mode(&mut self, nonblocking: bool) -> Result<()> {
        if self.kind == Kind::Socket || self.nonblocking == nonblocking {
            return Ok(());
        }
        let mut flags = OFlag::from_bits_truncate(fcntl(&self.fd, FcntlArg::F_GETFL)?);
        flags.set(OFlag::O_NONBLOCK, nonblocking);
        fcntl(&self.fd, FcntlArg::F_SETFL(flags))?;
        self.nonblocking = nonblocking;
        Ok(())
    }

    /// Waits until the descriptor is ready for `events` or `deadline` passes.
    fn wait(&self, events: PollFlags, deadline: Deadline) -> Result<PollFlags> {
        loop {
            let timeout = match deadline.remaining() {
                None => PollTimeout::NONE,
                Some(d) if d.is_zero() => return Err(Error::Timeout),
                // Round up so a short wait does not spin at zero milliseconds.
                Some(d) => PollTimeout::try_from(
                    d.as_millis().saturating_add(1).min(i32::MAX as u128) as i32,
                )
                .unwrap_or(PollTimeout::MAX),
            };
            let mut fds = [PollFd::new(self.fd.as_fd(), events)];
            match poll(&mut fds, timeout) {
                Ok(0) => {
                    if deadline.has_passed() {
                        return Err(Error::Timeout);
                    }
                }
                Ok(_) => return Ok(fds[0].revents().unwrap_or(PollFlags::empty())),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads what is available, at least one byte (or 0 at end of stream), waiting until
    /// `deadline`.
    fn read(&mut self, buf: &mut [u8], deadline: Deadline) -> Result<usize> {
        let blocking = deadline == Deadline::Never;
        self.set_mode(!blocking)?;
        loop {
            let r = match self.kind {
                Kind::Socket => {
                    let flags = if blocking {
                        MsgFlags::empty()
                    } else {
                        MsgFlags::MSG_DONTWAIT
                    };
                    recv(self.fd.as_raw_fd(), buf, flags)
                }
                Kind::Other => read(&self.fd, buf),
            };
            match r {
                Ok(n) => return Ok(n),
                Err(Errno::EINTR) => {}
                Err(Errno::ECONNRESET) => return Ok(0),
                Err(Errno::EAGAIN) => {
                    self.wait(PollFlags::POLLIN, deadline)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Writes some of `bufs` without blocking; `Ok(None)` when it would block.
    fn write_now(&mut self, bufs: &[IoSlice<'_>], blocking: bool) -> Result<Option<usize>> {
        if self.kind == Kind::Other {
            self.set_mode(!blocking)?;
        }
        loop {
            let r = match self.kind {
                Kind::Socket => {
                    let mut flags = MsgFlags::MSG_NOSIGNAL;
                    if !blocking {
                        flags |= MsgFlags::MSG_DONTWAIT;
                    }
                    sendmsg::<()>(self.fd.as_raw_fd(), bufs, &[], flags, None)
                }
                Kind::Other => nix::sys::uio::writev(&self.fd, bufs),
            };
            match r {
                Ok(n) => return Ok(Some(n)),
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return Ok(None),
                Err(Errno::EPIPE | Errno::ECONNRESET) => return Err(Error::Disconnected),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Bytes read ahead of the message being delivered.
#[derive(Debug, Default)]
struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    fn available(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Makes room for at least `READ_CHUNK` more bytes.
    fn reserve(&mut self) {
        if self.start > 0 && self.buf.len() - self.end < READ_CHUNK {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < READ_CHUNK {
            let len = (self.end + READ_CHUNK).max(self.buf.len() * 2);
            self.buf.resize(len, 0);
        }
    }

    /// Reads more into the buffer; returns the count, 0 at end of stream.
    fn fill(&mut self, fd: &mut Fd, deadline: Deadline) -> Result<usize> {
        self.reserve();
        let n = fd.read(&mut self.buf[self.end..], deadline)?;
        self.end += n;
        Ok(n)
    }
}

/// Size limit and framing shared by the reading and the writing side.
#[derive(Debug, Clone, Copy)]
struct Options {
    framing: Framing,
    max: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            framing: Framing::Length,
            max: DEFAULT_MAX_MESSAGE,
        }
    }
}

/// The reading half's state: read-ahead bytes and whether the stream is still in step.
#[derive(Debug, Default)]
struct ReadHalf {
    rb: ReadBuf,
    opts: Options,
    broken: Option<String>,
    eof: bool,
}

impl ReadHalf {
    fn recv(&mut self, fd: &mut Fd, out: &mut Vec<u8>, deadline: Deadline) -> Result<()> {
        if let Some(why) = &self.broken {
            return Err(Error::Malformed(format!(
                "stream unusable after an earlier error: {why}"
            )));
        }
        let r = self.recv_frame(fd, out, deadline);
        if let Err(e @ (Error::TooLarge { .. } | Error::Malformed(_))) = &r {
            tracing::warn!(error = %e, "dropped frame: stream out of step, no further messages");
            self.broken = Some(e.to_string());
        }
        r
    }

    /// Reads more bytes; `Ok(false)` at end of stream.
    fn more(&mut self, fd: &mut Fd, deadline: Deadline) -> Result<bool> {
        if self.eof {
            return Ok(false);
        }
        let n = self.rb.fill(fd, deadline)?;
        if n == 0 {
            self.eof = true;
            tracing::debug!(fd = fd.fd.as_raw_fd(), "peer disconnected");
        }
        Ok(n > 0)
    }

    fn recv_frame(&mut self, fd: &mut Fd, out: &mut Vec<u8>, deadline: Deadline) -> Result<()> {
        let len = loop {
            let avail = self.rb.available();
            match self.opts.framing {
                Framing::Length => match decode_header(avail, self.opts.max)? {
                    Header::Frame { header_len, len } => {
                        self.rb.consume(header_len);
                        break len as usize;
                    }
                    Header::Need(_) => {}
                },
                Framing::Lines => {
                    if let Some(pos) = avail.iter().position(|&b| b == b'\n') {
                        let line = avail[..pos].strip_suffix(b"\r").unwrap_or(&avail[..pos]);
                        out.clear();
                        out.extend_from_slice(line);
                        self.rb.consume(pos + 1);
                        return Ok(());
                    }
                    if avail.len() > self.opts.max {
                        return Err(Error::TooLarge {
                            len: avail.len() as u64,
                            max: self.opts.max,
                        });
                    }
                }
            }
            if !self.more(fd, deadline)? {
                let left = self.rb.available().len();
                if left == 0 {
                    return Err(Error::Disconnected);
                }
                if self.opts.framing == Framing::Lines {
                    // The last line of a stream need not end in a newline.
                    out.clear();
                    out.extend_from_slice(self.rb.available());
                    self.rb.consume(left);
                    return Ok(());
                }
                tracing::warn!(bytes = left, "dropped frame: stream ended inside a header");
                self.rb.consume(left);
                return Err(Error::Disconnected);
            }
        };
        // The buffer grows as the bytes arrive (doubling from 1 MiB), so a header that
        // announces a large message costs memory only once the message is really sent; the
        // length was checked against the maximum already. A reused buffer is not zeroed.
        let grown = |filled: usize| len.min(filled.saturating_mul(2).max(GROW_FROM));
        let have = self.rb.available().len().min(len);
        if out.len() >= len {
            out.truncate(len);
        } else {
            out.resize(grown(have).max(out.len()), 0);
        }
        out[..have].copy_from_slice(&self.rb.available()[..have]);
        self.rb.consume(have);
        let mut filled = have;
        while filled < len {
            if filled == out.len() {
                out.resize(grown(filled), 0);
            }
            // Mid-frame: finish it whatever the deadline, or learn that the peer died.
            let n = fd.read(&mut out[filled..], Deadline::Never)?;
            if n == 0 {
                self.eof = true;
                tracing::warn!(
                    expected = len,
                    got = filled,
                    "dropped frame: peer gone mid-message"
                );
                return Err(Error::Disconnected);
            }
            filled += n;
        }
        Ok(())
    }
}

/// Writes one frame; while the stream is full, `drain` (if any) takes in what the peer
/// sends so that two peers sending large messages to each other never deadlock.
fn send_frame(
    fd: &mut Fd,
    opts: Options,
    msg: &[u8],
    deadline: Deadline,
    mut drain: Option<&mut ReadHalf>,
) -> Result<()> {
    if msg.len() > opts.max {
        return Err(Error::TooLarge {
            len: msg.len() as u64,
            max: opts.max,
        });
    }
    let mut header = [0u8; MAX_HEADER];
    let head: &[u8] = match opts.framing {
        Framing::Length => {
            let n = encode_header(msg.len(), &mut header);
            &header[..n]
        }
        Framing::Lines => {
            if msg.contains(&b'\n') {
                return Err(Error::Malformed(
                    "a line-framed message cannot contain a newline".into(),
                ));
            }
            &[]
        }
    };
    let tail: &[u8] = if opts.framing == Framing::Lines {
        b"\n"
    } else {
        &[]
    };
    let parts = [head, msg, tail];
    let total: usize = parts.iter().map(|p| p.len()).sum();
    fd.fit(total);
    let mut written = 0;
    // A duplex stream never blocks inside write(2): it waits in poll, reading meanwhile.
    let blocking_writes = drain.is_none() && deadline == Deadline::Never;
    while written < total {
        let slices = remaining_slices(&parts, written);
        match fd.write_now(&slices, blocking_writes)? {
            Some(n) => written += n,
            None => {
                let wait_until = if written == 0 {
                    deadline
                } else {
                    Deadline::Never
                };
                let can_drain = drain
                    .as_deref()
                    .is_some_and(|h| !h.eof && h.rb.available().len() <= opts.max + READ_CHUNK);
                let events = if can_drain {
                    PollFlags::POLLOUT | PollFlags::POLLIN
                } else {
                    PollFlags::POLLOUT
                };
                let ready = fd.wait(events, wait_until)?;
                if let Some(half) = drain.as_deref_mut().filter(|_| can_drain) {
                    if ready.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
                        match half.more(fd, Deadline::Now) {
                            Ok(_) | Err(Error::Timeout) => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// The parts of a frame still to be written after `skip` bytes.
fn remaining_slices<'a>(parts: &[&'a [u8]; 3], mut skip: usize) -> Vec<IoSlice<'a>> {
    let mut out = Vec::with_capacity(3);
    for p in parts {
        if skip >= p.len() {
            skip -= p.len();
        } else {
            out.push(IoSlice::new(&p[skip..]));
            skip = 0;
        }
    }
    out
}

/// The receiving end of a framed byte stream (a pipe's read end, a FIFO, a socket).
pub struct StreamReader {
    fd: Fd,
    half: ReadHalf,
}

/// The sending end of a framed byte stream (a pipe's write end, a FIFO, a socket).
pub struct StreamWriter {
    fd: Fd,
    opts: Options,
}

/// Both ends of a framed byte stream on one socket.
///
/// `send` never deadlocks against a peer that is sending too: while the socket is full it
/// reads ahead what the peer sends (up to the maximum message size and one chunk more).
pub struct StreamConnection {
    fd: Fd,
    half: ReadHalf,
}

impl StreamReader {
    /// Wraps a readable descriptor.
    ///
    /// # Errors
    /// [`Error::Io`] if the descriptor cannot be inspected.
    pub fn from_fd(fd: OwnedFd) -> Result<Self> {
        Ok(StreamReader {
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

impl StreamWriter {
    /// Wraps a writable descriptor.
    ///
    /// # Errors
    /// [`Error::Io`] if the descriptor cannot be inspected.
    pub fn from_fd(fd: OwnedFd) -> Result<Self> {
        Ok(StreamWriter {
            fd: Fd::new(fd)?,
            opts: Options::default(),
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

impl StreamConnection {
    /// Wraps a connected stream socket.
    ///
    /// # Errors
    /// [`Error::Io`] if the descriptor cannot be inspected.
    pub fn from_fd(fd: OwnedFd) -> Result<Self> {
        Ok(StreamConnection {
            fd: Fd::new(fd)?,
            half: ReadHalf::default(),
        })
    }

    /// Sets the largest message sent or accepted (64 MiB by default).
    #[must_use]
    pub fn max_message(mut self, max: usize) -> Self {
        self.half.opts.max = max;
        self
    }
}

impl RecvBytes for StreamReader {
    fn recv_bytes_into_deadline(&mut self, buf: &mut Vec<u8>, deadline: Deadline) -> Result<()> {
        self.half.recv(&mut self.fd, buf, deadline)
    }
}

impl SendBytes for StreamWriter {
    fn send_bytes_deadline(&mut self, msg: &[u8], deadline: Deadline) -> Result<()> {
        send_frame(&mut self.fd, self.opts, msg, deadline, None)
    }
}

impl RecvBytes for StreamConnection {
    fn recv_bytes_into_deadline(&mut self, buf: &mut Vec<u8>, deadline: Deadline) -> Result<()> {
        self.half.recv(&mut self.fd, buf, deadline)
    }
}

impl SendBytes for StreamConnection {
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

        /// Passed to a child process as an inherited descriptor. Hand it over before
        /// receiving on it: bytes already read ahead stay with this process.
        impl Handle for $t {
            fn into_handoff(self) -> Handoff {
                Handoff::Fd(self.fd.fd)
            }

            fn from_handoff(h: Handoff) -> Result<Self> {
                match h {
                    Handoff::Fd(fd) => Self::from_fd(fd),
                    Handoff::Name(n) => Err(Error::RoleInput(format!("expected a descriptor, got name {n}"))),
                }
            }
        }
    )*};
}

fd_traits!(StreamReader, StreamWriter, StreamConnection);
