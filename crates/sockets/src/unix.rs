//! Unix stream sockets as ipckit makes them: close-on-exec, a connect that never blocks in
//! `connect(2)`, socket files that are 0600 from the moment they exist, and stale files
//! told apart from live servers' files.

use std::{
    io,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::{fs::FileTypeExt, net::UnixListener},
    },
    path::Path,
    time::Duration,
};

use ipckit_core::{Deadline, Error, Result};
use nix::{
    errno::Errno,
    fcntl::{FcntlArg, OFlag, fcntl},
    sys::{
        socket::{
            AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, connect, listen, socket,
        },
        stat::{Mode, fchmod},
    },
};

use crate::Address;

/// How often a connect to a Unix listener with a full queue tries again.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(5);

/// A new close-on-exec Unix stream socket, with `flags` besides.
fn unix_socket(flags: SockFlag) -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | flags,
        None,
    )
}

/// The kernel's form of a `unix://` or `unix-abstract://` address.
///
/// # Errors
/// [`Error::InvalidAddress`] for a path or name the kernel cannot take (too long, a NUL
/// byte); [`Error::Unsupported`] for another kind of address.
pub(crate) fn unix_addr(addr: &Address) -> Result<UnixAddr> {
    let made = match addr {
        Address::Unix(p) => UnixAddr::new(p.as_path()),
        Address::UnixAbstract(n) => UnixAddr::new_abstract(n.as_bytes()),
        _ => return Err(Error::Unsupported("not a Unix socket address")),
    };
    made.map_err(|e| Error::InvalidAddress {
        address: addr.to_string(),
        reason: format!("not a Unix socket address the kernel takes: {}", e.desc()),
    })
}

/// Connects a Unix stream socket without ever blocking in `connect(2)`: while the
/// listener's queue is full (`EAGAIN`), waits for room until `deadline`, then gives an
/// error of kind `TimedOut`.
pub(crate) fn connect_unix(addr: &UnixAddr, deadline: Deadline) -> io::Result<OwnedFd> {
    let fd = unix_socket(SockFlag::SOCK_NONBLOCK)?;
    loop {
        match connect(fd.as_raw_fd(), addr) {
            Ok(()) => break,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => match deadline.remaining() {
                Some(left) if left.is_zero() => return Err(io::ErrorKind::TimedOut.into()),
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

/// Binds a Unix socket file that is mode 0600 from the moment it exists: on Linux the file
/// takes the socket's own mode, so the mode is set before `bind`, not after it.
pub(crate) fn bind_private(path: &Path) -> io::Result<UnixListener> {
    let fd = unix_socket(SockFlag::empty())?;
    fchmod(&fd, Mode::S_IRUSR | Mode::S_IWUSR)?;
    bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    listen(&fd, Backlog::new(128).unwrap_or(Backlog::MAXCONN))?;
    Ok(UnixListener::from(fd))
}

/// Removes a socket file whose server is dead; refuses to touch a live server's, or a path
/// that is not a socket.
///
/// # Errors
/// [`Error::Os`] with `EADDRINUSE` for a live server's file, [`Error::NotA`] for a path
/// that is not a socket.
pub(crate) fn clear_stale(addr: &Address, path: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(Error::NotA {
            expected: "a socket",
            name: path.display().to_string(),
            reason: "another kind of file is there; it is left alone".into(),
        });
    }
    let in_use = || Error::os("bind", "socket", addr, io::Error::from(Errno::EADDRINUSE));
    // Never blocks: a live server with a full queue answers EAGAIN, which is as live.
    let probe = UnixAddr::new(path).and_then(|a| {
        let fd = unix_socket(SockFlag::SOCK_NONBLOCK)?;
        connect(fd.as_raw_fd(), &a)
    });
    match probe {
        Ok(()) | Err(Errno::EAGAIN) => Err(in_use()),
        Err(Errno::ECONNREFUSED) => {
            tracing::info!(path = %path.display(), "replacing the socket file of a dead server");
            std::fs::remove_file(path).map_err(|e| Error::os("remove", "socket file", addr, e))
        }
        Err(e) => Err(Error::os("bind", "socket", addr, e)),
    }
}
