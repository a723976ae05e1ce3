//! UDP: datagrams keep their boundaries; one larger than a datagram can be is refused.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::AsFd,
    time::Duration,
};

use ipckit_core::{Deadline, Error, RecvTimeoutError, Result, TryRecvError};
use nix::poll::PollFlags;

use crate::{Address, poll};

/// The largest UDP payload over IPv4 (65 535 − 8 − 20).
pub const MAX_DATAGRAM: usize = 65_507;

/// Room for the largest datagram anyone can send us: over IPv6 a payload reaches
/// 65 535 − 8 bytes, more than [`MAX_DATAGRAM`], and a receive must not cut it.
const RECV_BUFFER: usize = 1 << 16;

/// A UDP socket: each send is one datagram and each receive gets one, whole, with its
/// sender.
///
/// Made with [`Datagram::bind`]. It is connectionless: there is no peer to lose, so a
/// receive never says `Disconnected`; a peer that died simply sends nothing more, and a
/// receive waits (use [`recv_from_timeout`](Datagram::recv_from_timeout)). A child process
/// binds its own socket and is told the parent's [`address`](Datagram::address) (as
/// text). UDP may lose, duplicate or reorder datagrams between hosts; nothing here fixes
/// that.
///
/// The receives have the three forms of every ipckit receiver: blocking
/// ([`recv_from`](Datagram::recv_from)), [`try_recv_from`](Datagram::try_recv_from) and
/// [`recv_from_timeout`](Datagram::recv_from_timeout), with the same error enums.
#[derive(Debug)]
pub struct Datagram {
    /// Non-blocking: every wait is a `poll(2)` with its deadline, so that threads sharing
    /// the socket never block in a receive another one has taken the datagram of.
    socket: UdpSocket,
}

fn udp(addr: &Address) -> Result<SocketAddr> {
    match addr {
        Address::Udp(a) => Ok(*a),
        _ => Err(Error::Unsupported(
            "a datagram socket needs a udp:// address",
        )),
    }
}

impl Datagram {
    /// Binds to `addr` (`udp://127.0.0.1:0` picks a free port).
    ///
    /// # Errors
    /// [`Error::Os`] with action `bind` naming the address if it is taken or not allowed;
    /// [`Error::Unsupported`] for a non-UDP address.
    pub fn bind(addr: &Address) -> Result<Datagram> {
        let socket = UdpSocket::bind(udp(addr)?)
            .and_then(|s| {
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .map_err(|e| Error::os("bind", "socket", addr, e))?;
        Ok(Datagram { socket })
    }

    /// The bound address.
    ///
    /// # Errors
    /// [`Error::Io`] if the socket cannot say.
    pub fn address(&self) -> Result<Address> {
        Ok(Address::Udp(self.socket.local_addr()?))
    }

    /// Sends `msg` as one datagram to `to`, waiting while the socket's buffer is full.
    ///
    /// # Errors
    /// [`Error::TooLarge`] above [`MAX_DATAGRAM`] bytes (no fragmenting into several);
    /// [`Error::Unsupported`] for a non-UDP address; [`Error::Io`] if the system refuses
    /// (no route to the host).
    pub fn send_to(&self, msg: &[u8], to: &Address) -> Result<()> {
        if msg.len() > MAX_DATAGRAM {
            return Err(Error::TooLarge {
                len: msg.len() as u64,
                max: MAX_DATAGRAM,
            });
        }
        let to = udp(to)?;
        loop {
            match self.socket.send_to(msg, to) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    poll::wait(self.socket.as_fd(), PollFlags::POLLOUT, Deadline::Never)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receives one datagram, waiting no later than `deadline`; the form the others use.
    ///
    /// # Errors
    /// [`Error::Timeout`] if none came in time; [`Error::Io`] if the socket fails.
    pub fn recv_from_deadline(&self, deadline: Deadline) -> Result<(Vec<u8>, Address)> {
        let mut buf = vec![0u8; RECV_BUFFER];
        loop {
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    buf.truncate(n);
                    buf.shrink_to_fit();
                    return Ok((buf, Address::Udp(from)));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    poll::wait(self.socket.as_fd(), PollFlags::POLLIN, deadline)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receives one datagram, whole, and its sender; waits as long as it takes.
    ///
    /// # Errors
    /// [`Error::Io`] if the socket fails.
    pub fn recv_from(&self) -> Result<(Vec<u8>, Address)> {
        self.recv_from_deadline(Deadline::Never)
    }

    /// Receives one datagram if one is waiting now.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] if none is; [`TryRecvError::Failed`] if the socket fails.
    pub fn try_recv_from(&self) -> Result<(Vec<u8>, Address), TryRecvError> {
        Ok(self.recv_from_deadline(Deadline::Now)?)
    }

    /// Receives one datagram, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`RecvTimeoutError::Timeout`] if none came; [`RecvTimeoutError::Failed`] if the
    /// socket fails.
    pub fn recv_from_timeout(
        &self,
        timeout: Duration,
    ) -> Result<(Vec<u8>, Address), RecvTimeoutError> {
        Ok(self.recv_from_deadline(Deadline::after(timeout))?)
    }
}
