//! A descriptor as the framed transport uses it: what it is, its blocking mode, and the
//! read, write and poll calls with `EINTR`, `EAGAIN` and a dead peer handled once.

use std::{
    io::IoSlice,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use nix::{
    errno::Errno,
    fcntl::{FcntlArg, OFlag, fcntl},
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::{
        socket::{MsgFlags, recv, sendmsg, setsockopt, sockopt},
        stat::{SFlag, fstat},
        time::TimeVal,
    },
    unistd::read,
};

use crate::{Deadline, Error, Result, sys};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Socket,
    Other,
}

/// The largest pipe buffer ipckit asks for, the default `/proc/sys/fs/pipe-max-size`.
const MAX_PIPE_BUFFER: usize = 1 << 20;

/// A socket's receive timeout is at least this long: a read with less time left waits in
/// `poll`.
const MIN_SLICE: Duration = Duration::from_millis(1);
/// A receive timeout this long is kept for any longer deadline (a wait that long wakes up
/// once more per second at most); a shorter one is raised when a deadline allows twice it.
const LONG_SLICE: Duration = Duration::from_secs(1);

/// A descriptor, what it is, and whether `O_NONBLOCK` is set on it.
#[derive(Debug)]
pub(super) struct Fd {
    pub(super) fd: OwnedFd,
    pub(super) kind: Kind,
    nonblocking: bool,
    /// The kernel buffer of a pipe or FIFO, grown for large messages; `None` otherwise.
    pipe_buffer: Option<usize>,
    /// Whether a read with a deadline waits in `poll` before it tries: set when the last
    /// try found nothing (a request/reply peer: the try would fail again, a wasted system
    /// call), cleared when a read fills the buffer (a stream that keeps data waiting).
    poll_first: bool,
    /// The receive timeout (`SO_RCVTIMEO`) set on a socket, in ms (0: none), shared with
    /// this descriptor's clones, since the timeout belongs to the socket: a read with a
    /// deadline at least that far blocks in `recv` itself, bounded by it.
    recv_slice: Arc<AtomicU64>,
}

impl Fd {
    pub(super) fn new(fd: OwnedFd) -> Result<Self> {
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
            poll_first: false,
            recv_slice: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Whether a read with `deadline` on a socket may block in `recv`, bounded by the
    /// socket's receive timeout, instead of waiting in `poll` and then reading: one system
    /// call per message where a request/reply peer otherwise makes two, as a plain blocking
    /// read does. Sets the receive timeout to the time left when the one set is too long
    /// for the deadline (or much shorter than it).
    ///
    /// `SO_RCVTIMEO` belongs to the socket, shared by its clones, and so is what this
    /// descriptor knows of it: readers of clones that take turns always know the timeout
    /// set; two clones reading at the same moment with different deadlines may still see
    /// one's read overshoot its deadline by the other's timeout.
    fn sliced(&mut self, deadline: Deadline) -> bool {
        if self.kind != Kind::Socket {
            return false;
        }
        let Some(left) = deadline.remaining().filter(|&d| d >= MIN_SLICE) else {
            return false;
        };
        let set = self.recv_slice.load(Ordering::Relaxed);
        if let Some(slice) = (set > 0).then(|| Duration::from_millis(set))
            && slice <= left
            && (slice >= LONG_SLICE || left < slice * 2)
        {
            return true;
        }
        // Whole milliseconds, under the time left.
        let slice = Duration::from_millis(u64::try_from(left.as_millis()).unwrap_or(u64::MAX));
        let tv = TimeVal::new(
            i64::try_from(slice.as_secs()).unwrap_or(i64::MAX),
            i64::from(slice.subsec_micros()),
        );
        match setsockopt(&self.fd, sockopt::ReceiveTimeout, &tv) {
            Ok(()) => {
                let ms = u64::try_from(slice.as_millis()).unwrap_or(u64::MAX);
                self.recv_slice.store(ms, Ordering::Relaxed);
                true
            }
            Err(e) => {
                tracing::trace!(error = %e, "no receive timeout: reads with a deadline poll");
                false
            }
        }
    }

    /// Grows a pipe's kernel buffer towards `frame` bytes (at most 1 MiB), so that a large
    /// message crosses in few wake-ups. Best effort: the system's limits may refuse it.
    pub(super) fn fit(&mut self, frame: usize) {
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
    pub(super) fn wait(&self, events: PollFlags, deadline: Deadline) -> Result<PollFlags> {
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
    pub(super) fn read(&mut self, buf: &mut [u8], deadline: Deadline) -> Result<usize> {
        let blocking = deadline == Deadline::Never;
        self.set_mode(!blocking)?;
        // A socket read with a deadline blocks in `recv` for at most its receive timeout,
        // which is not past the deadline; when it passes, the wait goes on in `poll`.
        let sliced = !blocking && self.sliced(deadline);
        if self.poll_first && deadline.is_blocking() && !blocking && !sliced {
            // Out of time, the read below still takes what is there.
            match self.wait(PollFlags::POLLIN, deadline) {
                Ok(_) | Err(Error::Timeout) => {}
                Err(e) => return Err(e),
            }
        }
        loop {
            let r = match self.kind {
                Kind::Socket => {
                    let flags = if blocking || sliced {
                        MsgFlags::empty()
                    } else {
                        MsgFlags::MSG_DONTWAIT
                    };
                    recv(self.fd.as_raw_fd(), buf, flags)
                }
                Kind::Other => read(&self.fd, buf),
            };
            match r {
                Ok(n) => {
                    if n == buf.len() {
                        self.poll_first = false;
                    }
                    return Ok(n);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::ECONNRESET) => return Ok(0),
                Err(Errno::EAGAIN) => {
                    self.poll_first = true;
                    self.wait(PollFlags::POLLIN, deadline)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Writes some of `bufs` without blocking; `Ok(None)` when it would block.
    pub(super) fn write_now(
        &mut self,
        bufs: &[IoSlice<'_>],
        blocking: bool,
    ) -> Result<Option<usize>> {
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

    /// Another descriptor for the same open file (close-on-exec). Used for sockets only,
    /// whose blocking mode is chosen per call, so the two never disagree about it.
    pub(super) fn try_clone(&self) -> Result<Fd> {
        Ok(Fd {
            fd: self.fd.try_clone()?,
            kind: self.kind,
            nonblocking: self.nonblocking,
            pipe_buffer: self.pipe_buffer,
            poll_first: false,
            // The same socket, so the same receive timeout.
            recv_slice: Arc::clone(&self.recv_slice),
        })
    }
}
