//! [`Listener`]: a listening stream socket that accepts [`Connection`]s.

use std::{
    net::TcpListener,
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr as UnixSocketAddr, UnixListener},
    },
    path::PathBuf,
    time::Duration,
};

use ipckit_core::{Connection, Deadline, Error, Result};
use nix::poll::PollFlags;

use crate::{Address, auth, poll, unix};

/// How long the authkey handshake of an accepted client may take.
const HANDSHAKE: Duration = Duration::from_secs(10);

#[derive(Debug)]
enum Inner {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A listening stream socket (Python's `multiprocessing.connection.Listener`): TCP, a Unix
/// socket file, or a Linux abstract name.
///
/// Made with [`Listener::bind`]; [`accept`](Listener::accept) gives one [`Connection`] per
/// client. A Unix socket file is created 0600 and removed when the listener is dropped; a
/// file left by a dead server is replaced, a live server's never. To serve many clients at
/// once, hand the listener to a [`Server`](crate::Server).
///
/// A listener stays in the process that bound it (it is not a [`Handle`](crate::Handle)):
/// children connect to its address, or get accepted connections handed to them. A client
/// that dies is the accepted connection's business (it sees `Disconnected`); the listener
/// goes on.
#[derive(Debug)]
pub struct Listener {
    inner: Inner,
    addr: Address,
    owned_path: Option<PathBuf>,
    authkey: Option<Vec<u8>>,
}

impl Listener {
    /// Listens at `addr` (`tcp://…:0` picks a free port; see [`address`](Listener::address)).
    ///
    /// # Errors
    /// [`Error::Os`] with action `bind` naming the address when it is taken (a live server
    /// there: its [`io_error`](Error::io_error) is of kind `AddrInUse`) or not allowed;
    /// [`Error::NotA`] when a Unix path exists and is not a socket (it is left alone);
    /// [`Error::InvalidAddress`] for a Unix path or name the kernel cannot take;
    /// [`Error::Unsupported`] for a `udp://` address.
    pub fn bind(addr: &Address) -> Result<Listener> {
        let bind_error = |e| Error::os("bind", "socket", addr, e);
        let (inner, addr, owned_path) = match addr {
            Address::Tcp(a) => {
                let l = TcpListener::bind(a).map_err(bind_error)?;
                let bound = Address::Tcp(l.local_addr().map_err(bind_error)?);
                (Inner::Tcp(l), bound, None)
            }
            Address::Unix(path) => {
                unix::unix_addr(addr)?;
                unix::clear_stale(addr, path)?;
                let l = unix::bind_private(path).map_err(bind_error)?;
                (Inner::Unix(l), addr.clone(), Some(path.clone()))
            }
            Address::UnixAbstract(n) => {
                let a = UnixSocketAddr::from_abstract_name(n.as_bytes()).map_err(|e| {
                    Error::InvalidAddress {
                        address: addr.to_string(),
                        reason: e.to_string(),
                    }
                })?;
                let l = UnixListener::bind_addr(&a).map_err(bind_error)?;
                (Inner::Unix(l), addr.clone(), None)
            }
            Address::Udp(_) => {
                return Err(Error::Unsupported(
                    "a listener cannot bind udp://; use Datagram",
                ));
            }
        };
        tracing::debug!(addr = %addr, "listening");
        Ok(Listener {
            inner,
            addr,
            owned_path,
            authkey: None,
        })
    }

    /// Requires every client to prove it knows `key` (Python's `authkey`), and proves it
    /// back.
    #[must_use]
    pub fn authkey(mut self, key: &[u8]) -> Self {
        self.authkey = Some(key.to_vec());
        self
    }

    /// The address listened at (with the real port for `tcp://…:0`).
    pub fn address(&self) -> &Address {
        &self.addr
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match &self.inner {
            Inner::Tcp(l) => l.as_fd(),
            Inner::Unix(l) => l.as_fd(),
        }
    }

    /// Accepts the next client, waiting as long as it takes.
    ///
    /// The connection is named after the client ([`Connection::peer`]): `tcp://ip:port`,
    /// or the listener's address for a Unix socket (whose clients have no address; ask
    /// [`Connection::peer_credentials`] who they are).
    ///
    /// # Errors
    /// [`Error::Auth`] if the client failed the authkey handshake
    /// ([`AuthError::WrongKey`](crate::AuthError::WrongKey) when it holds another key),
    /// [`Error::Disconnected`] or [`Error::Timeout`] if it left or stalled during it: the
    /// listener goes on, accept again. [`Error::Os`] with action `accept` when the system
    /// refuses (out of descriptors).
    pub fn accept(&self) -> Result<Connection> {
        self.accept_deadline(Deadline::Never)
    }

    /// Accepts the next client, waiting at most `timeout` for one to come.
    ///
    /// # Errors
    /// [`Error::Timeout`] if none came; otherwise as [`accept`](Listener::accept).
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Connection> {
        self.accept_deadline(Deadline::after(timeout))
    }

    fn accept_deadline(&self, deadline: Deadline) -> Result<Connection> {
        poll::wait(self.fd(), PollFlags::POLLIN, deadline)?;
        let accept_error = |e| Error::os("accept", "socket", &self.addr, e);
        let (fd, peer) = match &self.inner {
            Inner::Tcp(l) => {
                let (s, a) = l.accept().map_err(accept_error)?;
                s.set_nodelay(true)?;
                (OwnedFd::from(s), format!("tcp://{a}"))
            }
            Inner::Unix(l) => (
                OwnedFd::from(l.accept().map_err(accept_error)?.0),
                self.addr.to_string(),
            ),
        };
        let mut conn = Connection::from_fd(fd)?.with_peer(peer);
        if let Some(key) = &self.authkey {
            let deadline = Deadline::after(HANDSHAKE);
            let shake = auth::deliver_challenge(&mut conn, key, deadline)
                .and_then(|()| auth::answer_challenge(&mut conn, key, deadline));
            if let Err(e) = shake {
                tracing::warn!(peer = %conn.peer(), error = %e, "client refused");
                return Err(e);
            }
        }
        tracing::debug!(peer = %conn.peer(), "accepted");
        Ok(conn)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(path) = &self.owned_path {
            let _ = std::fs::remove_file(path);
        }
    }
}
