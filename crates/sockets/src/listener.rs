//! [`Listener`]: a listening stream socket that accepts [`Connection`]s.

use std::{
    collections::VecDeque,
    fmt, io,
    net::TcpListener,
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr as UnixSocketAddr, UnixListener},
    },
    path::PathBuf,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use ipckit_core::{Connection, Deadline, Error, Result};
use nix::poll::PollFlags;

use crate::{
    Address,
    auth::{Handshake, Side},
    poll, unix,
};

/// How long the authkey handshake of an accepted client may take.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Authkey handshakes under way at once; past it, new clients wait in the kernel's queue
/// until one ends.
const MAX_HANDSHAKES: usize = 256;

/// A client in its authkey handshake.
#[derive(Debug)]
struct Shaking {
    fd: OwnedFd,
    peer: String,
    handshake: Handshake,
    deadline: Instant,
}

/// Handshakes under way, and their outcomes not yet handed out by `accept`.
#[derive(Debug, Default)]
struct Pending {
    shaking: Vec<Shaking>,
    done: VecDeque<Result<Connection>>,
}

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
/// With an [`authkey`](Listener::authkey), clients' handshakes run side by side (up to 256
/// at once): a client that connects and says nothing holds up no other client, nor an
/// [`accept_timeout`](Listener::accept_timeout) past its timeout; it is dropped after 10 s.
///
/// A listener stays in the process that bound it (it is not a [`Handle`](crate::Handle)):
/// children connect to its address, or get accepted connections handed to them. A client
/// that dies is the accepted connection's business (it sees `Disconnected`); the listener
/// goes on.
pub struct Listener {
    inner: Inner,
    addr: Address,
    owned_path: Option<PathBuf>,
    authkey: Option<Vec<u8>>,
    legacy_md5: bool,
    pending: Mutex<Pending>,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("addr", &self.addr)
            // The key stays secret, even in logs.
            .field("authkey", &self.authkey.as_ref().map(|_| "<set>"))
            .field("legacy_md5", &self.legacy_md5)
            .finish_non_exhaustive()
    }
}

/// Logs a client turned away in its handshake.
fn refused(peer: &str, e: &Error) {
    tracing::warn!(peer = %peer, error = %e, "client refused");
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
        // Accepting never blocks: `accept` waits in poll(2), beside the handshakes.
        let nonblocking = match &inner {
            Inner::Tcp(l) => l.set_nonblocking(true),
            Inner::Unix(l) => l.set_nonblocking(true),
        };
        nonblocking.map_err(bind_error)?;
        tracing::debug!(addr = %addr, "listening");
        Ok(Listener {
            inner,
            addr,
            owned_path,
            authkey: None,
            legacy_md5: false,
            pending: Mutex::new(Pending::default()),
        })
    }

    /// Requires every client to prove it knows `key` (Python's `authkey`), and proves it
    /// back, by HMAC-SHA256 (Python 3.12's handshake).
    #[must_use]
    pub fn authkey(mut self, key: &[u8]) -> Self {
        self.authkey = Some(key.to_vec());
        self
    }

    /// Also speaks the legacy handshake of Python 3.11 and older (HMAC-MD5), both ways, as
    /// Python 3.12 does: a 3.11 client is admitted. Off by default, and weaker: MD5 is
    /// broken as a hash, and an HMAC over it is the weakest link of the handshake. Without
    /// it, a 3.11 client is refused cleanly ([`AuthError::UnsupportedDigest`] here, an
    /// `AuthenticationError` there).
    ///
    /// [`AuthError::UnsupportedDigest`]: crate::AuthError::UnsupportedDigest
    #[must_use]
    pub fn legacy_md5(mut self, allow: bool) -> Self {
        self.legacy_md5 = allow;
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
    /// With an [`authkey`](Listener::authkey), the clients' handshakes run while this
    /// waits, side by side: the first client through is returned, however long others take.
    ///
    /// # Errors
    /// [`Error::Auth`] if a client failed the authkey handshake
    /// ([`AuthError::WrongKey`](crate::AuthError::WrongKey) when it holds another key),
    /// [`Error::Disconnected`] or [`Error::Timeout`] if it left, or said nothing for 10 s,
    /// during it: the listener goes on, accept again. [`Error::Os`] with action `accept`
    /// when the system refuses (out of descriptors).
    pub fn accept(&self) -> Result<Connection> {
        self.accept_deadline(Deadline::Never)
    }

    /// Accepts the next client, waiting at most `timeout` for one to come (and, with an
    /// authkey, to complete its handshake).
    ///
    /// # Errors
    /// [`Error::Timeout`] if none came; otherwise as [`accept`](Listener::accept).
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Connection> {
        self.accept_deadline(Deadline::after(timeout))
    }

    fn accept_deadline(&self, deadline: Deadline) -> Result<Connection> {
        let Some(key) = &self.authkey else {
            loop {
                if let Some((fd, peer)) = self.accept_now()? {
                    return self.accepted(fd, peer);
                }
                poll::wait(self.fd(), PollFlags::POLLIN, deadline)?;
            }
        };
        // This call drives the handshakes under way while it waits; a call on another
        // thread meanwhile drives those it takes in itself.
        let mut mine = std::mem::take(&mut *self.lock_pending());
        let r = self.accept_keyed(key, &mut mine, deadline);
        let mut pending = self.lock_pending();
        pending.shaking.append(&mut mine.shaking);
        pending.done.append(&mut mine.done);
        r
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Every update of the pending set is one step: it stays consistent across a panic.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a client from the kernel's queue if one is there: its socket, and its address
    /// as text.
    fn accept_now(&self) -> Result<Option<(OwnedFd, String)>> {
        let accepted = match &self.inner {
            Inner::Tcp(l) => l
                .accept()
                .map(|(s, a)| (s.set_nodelay(true), s, format!("tcp://{a}")))
                .map(|(nodelay, s, peer)| (nodelay, OwnedFd::from(s), peer)),
            Inner::Unix(l) => l
                .accept()
                .map(|(s, _)| (Ok(()), OwnedFd::from(s), self.addr.to_string())),
        };
        match accepted {
            Ok((nodelay, fd, peer)) => {
                nodelay?;
                Ok(Some((fd, peer)))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(Error::os("accept", "socket", &self.addr, e)),
        }
    }

    fn accepted(&self, fd: OwnedFd, peer: String) -> Result<Connection> {
        let conn = Connection::from_fd(fd)?.with_peer(peer);
        tracing::debug!(peer = %conn.peer(), "accepted");
        Ok(conn)
    }

    /// Accepts with an authkey: takes clients in while there is room, drives every
    /// handshake under way, and returns the first outcome (a client through, or one
    /// refused).
    fn accept_keyed(
        &self,
        key: &[u8],
        mine: &mut Pending,
        deadline: Deadline,
    ) -> Result<Connection> {
        loop {
            if let Some(outcome) = mine.done.pop_front() {
                return outcome;
            }
            let now = Instant::now();
            let mut i = 0;
            while i < mine.shaking.len() {
                if mine.shaking[i].deadline <= now {
                    let s = mine.shaking.swap_remove(i);
                    refused(&s.peer, &Error::Timeout);
                    mine.done.push_back(Err(Error::Timeout));
                } else {
                    i += 1;
                }
            }
            while mine.shaking.len() < MAX_HANDSHAKES {
                let Some((fd, peer)) = self.accept_now()? else {
                    break;
                };
                match Handshake::start(fd.as_fd(), Side::Listener, key, self.legacy_md5) {
                    Ok(handshake) => mine.shaking.push(Shaking {
                        fd,
                        peer,
                        handshake,
                        deadline: now + HANDSHAKE,
                    }),
                    Err(e) => {
                        refused(&peer, &e);
                        mine.done.push_back(Err(e));
                    }
                }
            }
            if !mine.done.is_empty() {
                continue;
            }
            let first_out = mine.shaking.iter().map(|s| s.deadline).min();
            let until = match (deadline, first_out) {
                (Deadline::At(d), Some(h)) => Deadline::At(d.min(h)),
                (Deadline::Never, Some(h)) => Deadline::At(h),
                (d, _) => d,
            };
            let ready = {
                let mut fds: Vec<BorrowedFd<'_>> =
                    mine.shaking.iter().map(|s| s.fd.as_fd()).collect();
                if mine.shaking.len() < MAX_HANDSHAKES {
                    fds.push(self.fd());
                }
                match poll::wait_readable(&fds, until) {
                    Ok(ready) => ready,
                    // A handshake ran out of time: it is taken out above.
                    Err(Error::Timeout) if !deadline.has_passed() => continue,
                    Err(e) => return Err(e),
                }
            };
            // From the back, so that taking one out moves only those already seen.
            for i in (0..mine.shaking.len()).rev() {
                if !ready[i] {
                    continue;
                }
                let s = &mut mine.shaking[i];
                match s.handshake.advance(s.fd.as_fd()) {
                    Ok(false) => {}
                    Ok(true) => {
                        let s = mine.shaking.swap_remove(i);
                        mine.done.push_back(self.accepted(s.fd, s.peer));
                    }
                    Err(e) => {
                        let s = mine.shaking.swap_remove(i);
                        refused(&s.peer, &e);
                        mine.done.push_back(Err(e));
                    }
                }
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(path) = &self.owned_path {
            let _ = std::fs::remove_file(path);
        }
    }
}
