//! Anonymous pipes and duplex connections.

use nix::{
    fcntl::OFlag,
    sys::socket::{AddressFamily, SockFlag, SockType, socketpair},
    unistd::pipe2,
};

use crate::{Connection, Reader, Result, Writer};

/// A one-way anonymous pipe, as `os.pipe()` or `multiprocessing.Pipe(duplex=False)`.
///
/// Both ends are close-on-exec; hand one to a child with
/// [`Command::handle`](ipckit_core::Command::handle). Up to 64 KiB (the kernel's pipe
/// buffer) can be in flight; beyond that `send` waits for the reader. Sending a larger
/// message grows the buffer towards 1 MiB where the system allows, so that large messages
/// cross in few wake-ups.
///
/// # Errors
/// [`Error::Io`](crate::Error::Io) if the process is out of descriptors.
pub fn pipe() -> Result<(Reader, Writer)> {
    let (r, w) = pipe2(OFlag::O_CLOEXEC)?;
    tracing::debug!("pipe created");
    Ok((Reader::from_fd(r)?, Writer::from_fd(w)?))
}

/// A connected pair of duplex connections over a Unix socket pair, as
/// `multiprocessing.Pipe()`.
///
/// Each end sends and receives. `send` never deadlocks against a peer that is sending to it
/// at the same time: while the socket is full it reads ahead what the peer sends.
///
/// # Errors
/// [`Error::Io`](crate::Error::Io) if the process is out of descriptors.
pub fn duplex() -> Result<(Connection, Connection)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    tracing::debug!("duplex connection created");
    Ok((Connection::from_fd(a)?, Connection::from_fd(b)?))
}
