//! Stream sockets: `Listener` and `Stream`, over TCP, Unix files and Linux abstract names.

use std::{
    io,
    net::{TcpListener, TcpStream},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
        linux::net::SocketAddrExt,
        unix::{
            fs::FileTypeExt,
            net::{SocketAddr as UnixSocketAddr, UnixListener},
        },
    },
    path::PathBuf,
    time::Duration,
};

use ipckit_core::{Connection, Deadline, Error, Handle, Handoff, RecvBytes, Result, SendBytes};
use nix::{
    errno::Errno,
    fcntl::{FcntlArg, OFlag, fcntl},
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::socket::{
        AddressFamily, Shutdown, SockFlag, SockType, UnixAddr, connect, getsockname, getsockopt,
        shutdown, socket, sockopt,
    },
};

use crate::{Address, auth};

/// How long the authkey handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(10);

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

/// A connected stream socket carrying framed messages (Python's
/// `multiprocessing.connection` framing; ipckit-core's byte layer).
///
/// TCP streams have `TCP_NODELAY` set: a small message goes out at once.
#[derive(Debug)]
pub struct Stream {
    conn: Connection,
    peer: String,
}

/// How [`Stream::connect_with`] connects.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Give up after this long (default: 10 s).
    pub timeout: Option<Duration>,
    /// Keep retrying while the server is not there yet (connection refused, no such
    /// socket file), until the timeout.
    pub retry: bool,
    /// Prove and check a shared key with Python's `multiprocessing.connection` handshake.
    pub authkey: Option<Vec<u8>>,
}

/// A new close-on-exec Unix stream socket, with `flags` besides.
fn unix_socket(flags: SockFlag) -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | flags,
        None,
    )
}

/// Connects a Unix stream socket without ever blocking in `connect(2)`: while the listener's
/// queue is full (`EAGAIN`), waits for room until `deadline`, then gives `TimedOut`.
fn connect_unix(addr: &UnixAddr, deadline: Deadline) -> io::Result<OwnedFd> {
    let fd = unix_socket(SockFlag::SOCK_NONBLOCK)?;
    loop {
        match connect(fd.as_raw_fd(), addr) {
            Ok(()) => break,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => match deadline.remaining() {
                Some(left) if left.is_zero() => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the listener's queue stayed full",
                    ));
                }
                left => std::thread::sleep(left.unwrap_or(Duration::MAX).min(QUEUE_FULL_PAUSE)),
            },
            Err(e) => return Err(e.into()),
        }
    }
    // Connected: back to blocking, as every other ipckit descriptor starts.
    let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    Ok(fd)
}

/// How often a connect to a Unix listener with a full queue tries again.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(5);

fn unix_addr(addr: &Address) -> io::Result<UnixAddr> {
    match addr {
        Address::Unix(p) => Ok(UnixAddr::new(p.as_path())?),
        Address::UnixAbstract(n) => Ok(UnixAddr::new_abstract(n.as_bytes())?),
        _ => unreachable!("only called with a Unix address"),
    }
}

fn is_not_there_yet(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
    )
}

impl Stream {
    /// Connects to `addr` (waiting at most 10 s).
    ///
    /// # Errors
    /// [`Error::Io`] if nobody listens there (kind `ConnectionRefused` or `NotFound`) or
    /// the connection does not complete in time (kind `TimedOut`).
    pub fn connect(addr: &Address) -> Result<Stream> {
        Self::connect_with(addr, &ConnectOptions::default())
    }

    /// Connects to `addr` as `opts` say: with a timeout, retrying while the server starts,
    /// and with an authkey.
    ///
    /// # Errors
    /// As [`connect`](Stream::connect); an authentication failure is an [`Error::Io`] of
    /// kind `PermissionDenied`.
    pub fn connect_with(addr: &Address, opts: &ConnectOptions) -> Result<Stream> {
        let timeout = opts.timeout.unwrap_or(Duration::from_secs(10));
        let deadline = Deadline::after(timeout);
        let mut pause = Duration::from_millis(5);
        let fd: OwnedFd = loop {
            let left = deadline
                .remaining()
                .unwrap_or(timeout)
                .max(Duration::from_millis(1));
            let attempt = match addr {
                Address::Tcp(a) => TcpStream::connect_timeout(a, left).and_then(|s| {
                    s.set_nodelay(true)?;
                    Ok(OwnedFd::from(s))
                }),
                Address::Unix(_) | Address::UnixAbstract(_) => {
                    unix_addr(addr).and_then(|a| connect_unix(&a, deadline))
                }
                Address::Udp(_) => {
                    return Err(Error::Unsupported(
                        "a stream cannot connect to udp://; use Datagram",
                    ));
                }
            };
            match attempt {
                Ok(fd) => break fd,
                Err(e) if opts.retry && is_not_there_yet(&e) && !deadline.has_passed() => {
                    std::thread::sleep(pause.min(deadline.remaining().unwrap_or(pause)));
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Err(e) => {
                    return Err(Error::Io(io::Error::new(
                        e.kind(),
                        format!("connect to {addr}: {e}"),
                    )));
                }
            }
        };
        let mut stream = Stream {
            conn: Connection::from_fd(fd)?,
            peer: addr.to_string(),
        };
        tracing::debug!(peer = %addr, "connected");
        if let Some(key) = &opts.authkey {
            // The timeout covers the handshake too.
            auth::answer_challenge(&mut stream.conn, key, deadline)?;
            auth::deliver_challenge(&mut stream.conn, key, deadline)?;
        }
        Ok(stream)
    }

    /// The credentials of the peer process of a Unix socket.
    ///
    /// # Errors
    /// [`Error::Io`] of kind `Unsupported` for a TCP stream (the kernel knows no
    /// credentials there).
    pub fn peer_credentials(&self) -> Result<PeerCredentials> {
        // Linux answers SO_PEERCRED on any socket: on TCP with pid 0 and uid/gid -1.
        if getsockname::<UnixAddr>(self.conn.as_fd().as_raw_fd()).is_err() {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{}: peer credentials exist only on Unix sockets", self.peer),
            )));
        }
        let c = getsockopt(&self.conn, sockopt::PeerCredentials)?;
        Ok(PeerCredentials {
            pid: c.pid(),
            uid: c.uid(),
            gid: c.gid(),
        })
    }

    /// Where the peer is, as text (for logs).
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Closes the sending direction: the peer receives what was sent, then `Disconnected`;
    /// this side can still receive.
    ///
    /// # Errors
    /// [`Error::Io`] if the socket is already gone.
    pub fn shutdown(&self) -> Result<()> {
        shutdown(self.conn.as_fd().as_raw_fd(), Shutdown::Write)?;
        Ok(())
    }

    /// Sets the largest message sent or accepted (64 MiB by default).
    #[must_use]
    pub fn max_message(mut self, max: usize) -> Self {
        self.conn = self.conn.max_message(max);
        self
    }
}

impl SendBytes for Stream {
    fn send_bytes_deadline(&mut self, msg: &[u8], deadline: Deadline) -> Result<()> {
        self.conn.send_bytes_deadline(msg, deadline)
    }
}

impl RecvBytes for Stream {
    fn recv_bytes_into_deadline(&mut self, buf: &mut Vec<u8>, deadline: Deadline) -> Result<()> {
        self.conn.recv_bytes_into_deadline(buf, deadline)
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.conn.as_fd()
    }
}

/// A connected stream passes to a child process as an inherited descriptor.
impl Handle for Stream {
    fn into_handoff(self) -> Handoff {
        self.conn.into_handoff()
    }

    fn from_handoff(h: Handoff) -> Result<Self> {
        Ok(Stream {
            conn: Connection::from_handoff(h)?,
            peer: "inherited".into(),
        })
    }
}

#[derive(Debug)]
enum Inner {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A listening stream socket. A Unix socket file is created 0600 and removed when the
/// listener is dropped; a file left by a dead server is replaced, a live server's never.
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
    /// [`Error::Io`] with kind `AddrInUse` if a live server is there, or the path exists and
    /// is not a socket.
    pub fn bind(addr: &Address) -> Result<Listener> {
        let (inner, addr, owned_path) = match addr {
            Address::Tcp(a) => {
                let l = TcpListener::bind(a).map_err(|e| {
                    Error::Io(io::Error::new(e.kind(), format!("bind {addr}: {e}")))
                })?;
                let bound = Address::Tcp(l.local_addr()?);
                (Inner::Tcp(l), bound, None)
            }
            Address::Unix(path) => {
                clear_stale(path)?;
                let l = bind_private(path).map_err(|e| {
                    Error::Io(io::Error::new(e.kind(), format!("bind {addr}: {e}")))
                })?;
                (Inner::Unix(l), addr.clone(), Some(path.clone()))
            }
            Address::UnixAbstract(n) => {
                let a = UnixSocketAddr::from_abstract_name(n.as_bytes())?;
                let l = UnixListener::bind_addr(&a).map_err(|e| {
                    Error::Io(io::Error::new(e.kind(), format!("bind {addr}: {e}")))
                })?;
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
    /// # Errors
    /// [`Error::Io`] on failure, or of kind `PermissionDenied` if the client failed the
    /// authkey handshake (the listener goes on; accept again).
    pub fn accept(&self) -> Result<Stream> {
        self.accept_deadline(Deadline::Never)
    }

    /// Accepts the next client, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if none came; otherwise as [`accept`](Listener::accept).
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Stream> {
        self.accept_deadline(Deadline::after(timeout))
    }

    fn accept_deadline(&self, deadline: Deadline) -> Result<Stream> {
        while let Some(left) = deadline.remaining() {
            // Rounded up: a short wait does not spin at zero milliseconds.
            let ms = left.as_millis().saturating_add(1).min(i32::MAX as u128) as i32;
            let mut fds = [PollFd::new(self.fd(), PollFlags::POLLIN)];
            match poll(
                &mut fds,
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(0) | Err(Errno::EINTR) if deadline.has_passed() => return Err(Error::Timeout),
                Ok(0) | Err(Errno::EINTR) => {}
                Ok(_) => break,
                Err(e) => return Err(e.into()),
            }
        }
        let (fd, peer) = match &self.inner {
            Inner::Tcp(l) => {
                let (s, a) = l.accept()?;
                s.set_nodelay(true)?;
                (OwnedFd::from(s), format!("tcp://{a}"))
            }
            Inner::Unix(l) => (OwnedFd::from(l.accept()?.0), self.addr.to_string()),
        };
        let mut stream = Stream {
            conn: Connection::from_fd(fd)?,
            peer,
        };
        if let Some(key) = &self.authkey {
            let deadline = Deadline::after(HANDSHAKE);
            let shake = auth::deliver_challenge(&mut stream.conn, key, deadline)
                .and_then(|()| auth::answer_challenge(&mut stream.conn, key, deadline));
            if let Err(e) = shake {
                tracing::warn!(peer = %stream.peer, error = %e, "client refused");
                return Err(e);
            }
        }
        tracing::debug!(peer = %stream.peer, "accepted");
        Ok(stream)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(path) = &self.owned_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Binds a Unix socket file that is mode 0600 from the moment it exists: on Linux the file
/// takes the socket's own mode, so the mode is set before `bind`, not after it.
fn bind_private(path: &std::path::Path) -> io::Result<UnixListener> {
    let fd = unix_socket(SockFlag::empty())?;
    nix::sys::stat::fchmod(
        &fd,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )?;
    nix::sys::socket::bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    nix::sys::socket::listen(
        &fd,
        nix::sys::socket::Backlog::new(128).unwrap_or(nix::sys::socket::Backlog::MAXCONN),
    )?;
    Ok(UnixListener::from(fd))
}

/// Removes a socket file whose server is dead; refuses to touch a live server's, or a path
/// that is not a socket.
fn clear_stale(path: &std::path::Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    let in_use = |why: &str| {
        Error::Io(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{}: {why}", path.display()),
        ))
    };
    if !meta.file_type().is_socket() {
        return Err(in_use("exists and is not a socket"));
    }
    // Never blocks: a live server with a full queue answers EAGAIN, which is as live.
    let probe = UnixAddr::new(path).and_then(|a| {
        let fd = unix_socket(SockFlag::SOCK_NONBLOCK)?;
        connect(fd.as_raw_fd(), &a)
    });
    match probe.map_err(io::Error::from) {
        Ok(()) => Err(in_use("a live server listens there")),
        Err(e) if e.raw_os_error() == Some(Errno::EAGAIN as i32) => {
            Err(in_use("a live server listens there"))
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "replacing the socket file of a dead server");
            std::fs::remove_file(path)?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
