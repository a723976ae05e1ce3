//! Frames on a descriptor: the reading half with its read-ahead buffer, and the writer
//! that never deadlocks a duplex stream. The header format is in `crate::frame`.
//!
//! The timeout of a receive bounds the wait for a message to *begin*: once the first byte
//! of a frame has been read (or written), the call finishes that frame, or reports
//! [`Error::Disconnected`] if the peer dies half-way, so a stream is never left holding
//! half a message. The one exception is the stall limit (`Options::stall`): a peer that
//! sends nothing for that long in the middle of a message gets [`Error::Timeout`], and the
//! stream is unusable from then on (the rest of the message never came).
//!
//! Memory follows the bytes that arrived, never the length a header announces: the
//! read-ahead buffer starts at one page and doubles while reads fill it, and a message's
//! buffer starts small and doubles as its bytes come in.

use std::{io::IoSlice, os::fd::AsRawFd, time::Duration};

use nix::poll::PollFlags;

use super::fd::Fd;
use crate::{
    Deadline, Error, Result,
    frame::{DEFAULT_MAX_MESSAGE, Framing, Header, MAX_HEADER, decode_header, encode_header},
};

/// Read-ahead room at most: one syscall takes every small message that is waiting.
const READ_CHUNK: usize = 64 << 10;

/// Read-ahead room at first: it doubles (up to [`READ_CHUNK`]) while reads fill it, so an
/// idle or silent peer costs one page.
const FIRST_CHUNK: usize = 4 << 10;

/// The smallest buffer of a message whose bytes have not all arrived; it then doubles as
/// they come, so a header announcing a large message costs what was really sent.
const GROW_FROM: usize = 4 << 10;

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

    /// Makes room for more bytes: as much as the buffer holds, from [`FIRST_CHUNK`] up to
    /// [`READ_CHUNK`], so that it grows only while reads fill it.
    fn reserve(&mut self) {
        let want = self.buf.len().clamp(FIRST_CHUNK, READ_CHUNK);
        if self.start > 0 && self.buf.len() - self.end < want {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < want {
            let len = (self.end + want).max(self.buf.len() * 2);
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

/// Size limit and framing shared by the reading and the writing side, and the reading
/// side's stall limit.
#[derive(Debug, Clone, Copy)]
pub(super) struct Options {
    pub(super) framing: Framing,
    pub(super) max: usize,
    /// How long a receive waits for more of a message it has begun; `None`: as long as it
    /// takes.
    pub(super) stall: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            framing: Framing::Length,
            max: DEFAULT_MAX_MESSAGE,
            stall: None,
        }
    }
}

/// The earlier of two deadlines.
fn earliest(a: Deadline, b: Deadline) -> Deadline {
    match (a, b) {
        (Deadline::Never, d) | (d, Deadline::Never) => d,
        (Deadline::Now, _) | (_, Deadline::Now) => Deadline::Now,
        (Deadline::At(x), Deadline::At(y)) => Deadline::At(x.min(y)),
    }
}

/// The reading half's state: read-ahead bytes and whether the stream is still in step.
#[derive(Debug, Default)]
pub(super) struct ReadHalf {
    rb: ReadBuf,
    pub(super) opts: Options,
    broken: Option<String>,
    eof: bool,
}

impl ReadHalf {
    pub(super) fn with_options(opts: Options) -> Self {
        ReadHalf {
            opts,
            ..ReadHalf::default()
        }
    }

    pub(super) fn recv(
        &mut self,
        fd: &mut Fd,
        out: &mut Vec<u8>,
        deadline: Deadline,
    ) -> Result<()> {
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

    /// Reads plain bytes whatever the framing (`io::Read`): what was read ahead first, then
    /// what arrives, at least one byte; 0 at end of stream.
    pub(super) fn read_plain(
        &mut self,
        fd: &mut Fd,
        buf: &mut [u8],
        deadline: Deadline,
    ) -> Result<usize> {
        let avail = self.rb.available();
        if !avail.is_empty() || buf.is_empty() {
            let n = avail.len().min(buf.len());
            buf[..n].copy_from_slice(&avail[..n]);
            self.rb.consume(n);
            return Ok(n);
        }
        if self.eof {
            return Ok(0);
        }
        let n = fd.read(buf, deadline)?;
        if n == 0 {
            self.eof = true;
        }
        Ok(n)
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

    /// The deadline of the next read of a message that has begun.
    fn stall_deadline(&self) -> Deadline {
        self.opts.stall.map_or(Deadline::Never, Deadline::after)
    }

    /// The peer stalled mid-message past the stall limit: the stream is out of step.
    fn stalled(&mut self, got: usize, expected: Option<usize>) -> Error {
        let limit = self.opts.stall.unwrap_or_default();
        let why = match expected {
            Some(len) => format!(
                "the peer sent nothing for {limit:?} in the middle of a message \
                 ({got} of {len} bytes)"
            ),
            None => format!(
                "the peer sent nothing for {limit:?} in the middle of a message \
                 ({got} bytes of its start)"
            ),
        };
        tracing::warn!(reason = %why, "dropped frame: stream out of step, no further messages");
        self.broken = Some(why);
        Error::Timeout
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
                Framing::Raw if !avail.is_empty() => {
                    // Whatever has arrived, up to the maximum: `recv(1024)` in Python.
                    let n = avail.len().min(self.opts.max);
                    out.clear();
                    out.extend_from_slice(&avail[..n]);
                    self.rb.consume(n);
                    return Ok(());
                }
                Framing::Raw => {}
            }
            // Part of a message is here (a header, a line): the rest must come within the
            // stall limit, whatever the caller's deadline.
            let begun = self.opts.framing != Framing::Raw && !self.rb.available().is_empty();
            let wait = if begun {
                earliest(deadline, self.stall_deadline())
            } else {
                deadline
            };
            let more = match self.more(fd, wait) {
                Err(Error::Timeout) if begun && !deadline.has_passed() => {
                    let got = self.rb.available().len();
                    return Err(self.stalled(got, None));
                }
                r => r?,
            };
            if !more {
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
        // The buffer grows as the bytes arrive (doubling from 4 KiB, or from what the
        // caller's buffer already holds), so a header that announces a large message costs
        // memory only once the message is really sent; the length was checked against the
        // maximum already.
        let grown = |filled: usize, capacity: usize| {
            len.min(filled.saturating_mul(2).max(GROW_FROM).max(capacity))
        };
        let have = self.rb.available().len().min(len);
        if out.len() >= len {
            out.truncate(len);
        } else {
            out.resize(grown(have, out.capacity()).max(out.len()), 0);
        }
        out[..have].copy_from_slice(&self.rb.available()[..have]);
        self.rb.consume(have);
        let mut filled = have;
        while filled < len {
            if filled == out.len() {
                out.resize(grown(filled, out.capacity()), 0);
            }
            // Mid-frame: finish it whatever the caller's deadline, or learn that the peer
            // died or stalled past the stall limit.
            let n = match fd.read(&mut out[filled..], self.stall_deadline()) {
                Ok(n) => n,
                Err(Error::Timeout) => return Err(self.stalled(filled, Some(len))),
                Err(e) => return Err(e),
            };
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
pub(super) fn send_frame(
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
        Framing::Raw => &[],
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
