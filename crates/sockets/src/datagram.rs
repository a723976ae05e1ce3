//! UDP: datagrams keep their boundaries; one larger than a datagram can be is refused.

use std::{net::UdpSocket, time::Duration};

use ipckit_core::{Error, Result};

use crate::Address;

/// The largest UDP payload over IPv4 (65 535 − 8 − 20).
pub const MAX_DATAGRAM: usize = 65_507;

/// Room for the largest datagram anyone can send us: over IPv6 a payload reaches
/// 65 535 − 8 bytes, more than [`MAX_DATAGRAM`], and `recv` must not cut it.
const RECV_BUFFER: usize = 1 << 16;

/// A UDP socket: each `send` is one datagram and each `recv` gets one, whole.
#[derive(Debug)]
pub struct Datagram {
    socket: UdpSocket,
}

fn udp(addr: &Address) -> Result<std::net::SocketAddr> {
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
    /// [`Error::Io`] if the address is taken; [`Error::Unsupported`] for a non-UDP address.
    pub fn bind(addr: &Address) -> Result<Datagram> {
        Ok(Datagram {
            socket: UdpSocket::bind(udp(addr)?)?,
        })
    }

    /// The bound address.
    ///
    /// # Errors
    /// [`Error::Io`] if the socket cannot say.
    pub fn address(&self) -> Result<Address> {
        Ok(Address::Udp(self.socket.local_addr()?))
    }

    /// Sends `msg` as one datagram to `to`.
    ///
    /// # Errors
    /// [`Error::TooLarge`] above [`MAX_DATAGRAM`] bytes (no fragmenting into several).
    pub fn send_to(&self, msg: &[u8], to: &Address) -> Result<()> {
        if msg.len() > MAX_DATAGRAM {
            return Err(Error::TooLarge {
                len: msg.len() as u64,
                max: MAX_DATAGRAM,
            });
        }
        self.socket.send_to(msg, udp(to)?)?;
        Ok(())
    }

    /// Receives one datagram, waiting at most `timeout`; gives its bytes and its sender.
    ///
    /// # Errors
    /// [`Error::Timeout`] if none came.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<(Vec<u8>, Address)> {
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut buf = vec![0u8; RECV_BUFFER];
        match self.socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                buf.truncate(n);
                buf.shrink_to_fit();
                Ok((buf, Address::Udp(from)))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(Error::Timeout)
            }
            Err(e) => Err(e.into()),
        }
    }
}
