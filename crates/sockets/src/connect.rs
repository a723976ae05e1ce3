//! Connecting to a listener: [`connect`], [`connect_with`] and [`ConnectOptions`].

use std::{
    fmt, io,
    net::TcpStream,
    os::fd::{AsFd, OwnedFd},
    time::Duration,
};

use ipckit_core::{Connection, Deadline, Error, Result};
use nix::poll::PollFlags;

use crate::{
    Address,
    auth::{Handshake, Side},
    poll, unix,
};

/// How long a connect may take unless told otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How [`connect_with`] connects: how long it may take, whether to wait for a server that
/// is not there yet, and the authkey to prove.
///
/// Made with [`ConnectOptions::new`] (or `Default`) and chained setters:
///
/// ```
/// use std::time::Duration;
/// use ipckit_sockets::ConnectOptions;
///
/// let opts = ConnectOptions::new()
///     .timeout(Duration::from_secs(5))
///     .retry(true)
///     .authkey(b"secret");
/// ```
#[derive(Clone, Default)]
pub struct ConnectOptions {
    timeout: Option<Duration>,
    retry: bool,
    authkey: Option<Vec<u8>>,
    legacy_md5: bool,
}

impl ConnectOptions {
    /// The defaults: a 10 s timeout, no retry, no authkey.
    pub fn new() -> Self {
        ConnectOptions::default()
    }

    /// Gives up after `timeout` (default 10 s); the bound covers the whole connect, the
    /// authkey handshake included.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Keeps trying while nobody listens yet (connection refused, or no socket file yet),
    /// backing off up to 100 ms, until the timeout: a client may start before its server.
    /// Off by default: nobody there is an immediate error.
    #[must_use]
    pub fn retry(mut self, retry: bool) -> Self {
        self.retry = retry;
        self
    }

    /// Proves `key` to the listener and checks that it knows it too, with Python's
    /// `multiprocessing.connection` handshake (HMAC-SHA256).
    #[must_use]
    pub fn authkey(mut self, key: &[u8]) -> Self {
        self.authkey = Some(key.to_vec());
        self
    }

    /// Also speaks the legacy handshake of Python 3.11 and older (HMAC-MD5), both ways, as
    /// Python 3.12 does: a 3.11 listener admits this client. Off by default, and weaker:
    /// MD5 is broken as a hash, and an HMAC over it is the weakest link of the handshake.
    /// Without it, a 3.11 listener is refused cleanly
    /// ([`AuthError::UnsupportedDigest`](crate::AuthError::UnsupportedDigest) here, an
    /// `AuthenticationError` there).
    #[must_use]
    pub fn legacy_md5(mut self, allow: bool) -> Self {
        self.legacy_md5 = allow;
        self
    }
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("timeout", &self.timeout.unwrap_or(DEFAULT_TIMEOUT))
            .field("retry", &self.retry)
            // The key stays secret, even in logs.
            .field("authkey", &self.authkey.as_ref().map(|_| "<set>"))
            .field("legacy_md5", &self.legacy_md5)
            .finish()
    }
}

/// Nobody listens there yet: worth another try with [`ConnectOptions::retry`].
fn is_not_there_yet(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
    )
}

/// Connects to `addr` (TCP, a Unix socket file or an abstract name), waiting at most 10 s.
///
/// The [`Connection`] is a framed stream both ways, named after `addr`
/// ([`Connection::peer`]); on TCP it has `TCP_NODELAY`. Hand it to a child process with
/// [`Command::handle`](crate::Command::handle) (an inherited descriptor). When the server
/// closes or dies, receives give what it sent, then [`Error::Disconnected`].
///
/// ```
/// use ipckit_sockets::{Listener, RecvBytes, SendBytes};
///
/// let listener = Listener::bind(&"tcp://127.0.0.1:0".parse()?)?;
/// let mut client = ipckit_sockets::connect(listener.address())?;
/// let mut server = listener.accept()?;
/// client.send_bytes(b"ping")?;
/// assert_eq!(server.recv_bytes()?, b"ping");
/// # Ok::<(), ipckit_sockets::Error>(())
/// ```
///
/// # Errors
/// [`Error::Os`] with action `connect` naming the address if nobody listens there (its
/// [`io_error`](Error::io_error) is of kind `ConnectionRefused`, or `NotFound` for a
/// missing socket file); [`Error::Timeout`] if the connection does not complete in time;
/// [`Error::InvalidAddress`] for a Unix path the kernel cannot take;
/// [`Error::Unsupported`] for a `udp://` address.
pub fn connect(addr: &Address) -> Result<Connection> {
    connect_with(addr, &ConnectOptions::default())
}

/// Connects to `addr` as `opts` say: with a timeout, retrying while the server starts,
/// and with an authkey.
///
/// # Errors
/// As [`connect`]; a failed authkey handshake is [`Error::Auth`]:
/// [`AuthError::Refused`](crate::AuthError::Refused) when the listener holds another key,
/// [`AuthError::WrongKey`](crate::AuthError::WrongKey) if it answered our challenge
/// wrongly, [`AuthError::UnsupportedDigest`](crate::AuthError::UnsupportedDigest) for a
/// listener that speaks only the legacy HMAC-MD5 (Python 3.11 and older) unless
/// [`ConnectOptions::legacy_md5`] allows it.
pub fn connect_with(addr: &Address, opts: &ConnectOptions) -> Result<Connection> {
    let timeout = opts.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let deadline = Deadline::after(timeout);
    let unix = match addr {
        Address::Tcp(_) => None,
        Address::Unix(_) | Address::UnixAbstract(_) => Some(unix::unix_addr(addr)?),
        Address::Udp(_) => {
            return Err(Error::Unsupported(
                "a stream cannot connect to udp://; use Datagram",
            ));
        }
    };
    let mut pause = Duration::from_millis(5);
    let fd: OwnedFd = loop {
        let attempt = match (addr, &unix) {
            (_, Some(a)) => unix::connect_unix(a, deadline),
            (Address::Tcp(a), None) => {
                let left = deadline
                    .remaining()
                    .unwrap_or(timeout)
                    .max(Duration::from_millis(1));
                TcpStream::connect_timeout(a, left).and_then(|s| {
                    s.set_nodelay(true)?;
                    Ok(OwnedFd::from(s))
                })
            }
            _ => return Err(Error::Unsupported("not a stream socket address")),
        };
        match attempt {
            Ok(fd) => break fd,
            Err(e) if opts.retry && is_not_there_yet(&e) && !deadline.has_passed() => {
                std::thread::sleep(pause.min(deadline.remaining().unwrap_or(pause)));
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(Error::Timeout),
            Err(e) => return Err(Error::os("connect", "socket", addr, e)),
        }
    };
    tracing::debug!(peer = %addr, "connected");
    if let Some(key) = &opts.authkey {
        // The timeout covers the handshake too.
        let mut handshake = Handshake::start(fd.as_fd(), Side::Client, key, opts.legacy_md5)?;
        while !handshake.advance(fd.as_fd())? {
            poll::wait(fd.as_fd(), PollFlags::POLLIN, deadline)?;
        }
    }
    Ok(Connection::from_fd(fd)?.with_peer(addr.to_string()))
}
