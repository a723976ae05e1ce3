//! The authkey handshake of Python's `multiprocessing.connection` (3.12): HMAC-SHA256
//! challenge and response, in both directions, compared in constant time.
//!
//! The side that *delivers* a challenge sends `#CHALLENGE#{sha256}<40 random bytes>`; the
//! other answers `{sha256}<HMAC-SHA256(authkey, "{sha256}<bytes>")>`; the first replies
//! `#WELCOME#` or `#FAILURE#`. A listener delivers then answers; a client answers then
//! delivers, so each side proves it knows the key to the other.
//!
//! Handshake messages are read straight from the socket, exactly: a peer that stalls
//! half-way through one cannot hold the handshake past its deadline, and no byte after the
//! handshake is read ahead (the stream can still be handed to a child process).

use std::{
    io::Read,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

use hmac::{Hmac, Mac};
use ipckit_core::{Deadline, Error, Result, SendBytes};
use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::socket::{MsgFlags, recv},
};
use sha2::Sha256;

const CHALLENGE: &[u8] = b"#CHALLENGE#";
const WELCOME: &[u8] = b"#WELCOME#";
const FAILURE: &[u8] = b"#FAILURE#";
const PREFIX: &[u8] = b"{sha256}";
/// The random part of a challenge: Python's `MESSAGE_LENGTH`.
const NONCE: usize = 40;
/// Handshake messages are small: anything longer is refused unread (Python's 256).
const MAX: usize = 256;

fn mac(key: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length")
}

fn refused(why: impl Into<String>) -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!("authentication failed: {}", why.into()),
    ))
}

/// Reads exactly `buf.len()` bytes, waiting at most until `deadline` for all of them.
fn read_exact(fd: BorrowedFd<'_>, mut buf: &mut [u8], deadline: Deadline) -> Result<()> {
    while !buf.is_empty() {
        match recv(fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
            Ok(0) | Err(Errno::ECONNRESET) => return Err(Error::Disconnected),
            Ok(n) => buf = &mut buf[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let timeout = match deadline.remaining() {
                    None => PollTimeout::NONE,
                    Some(left) if left.is_zero() => return Err(Error::Timeout),
                    Some(left) => PollTimeout::try_from(
                        left.as_millis().saturating_add(1).min(i32::MAX as u128) as i32,
                    )
                    .unwrap_or(PollTimeout::MAX),
                };
                match poll(&mut [PollFd::new(fd, PollFlags::POLLIN)], timeout) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Receives one handshake message: its 4-byte big-endian length, then its bytes. Longer
/// than [`MAX`] (Python's 64-bit escape included) is refused unread.
fn recv_small(conn: &(impl AsFd + ?Sized), deadline: Deadline) -> Result<Vec<u8>> {
    let fd = conn.as_fd();
    let mut header = [0u8; 4];
    read_exact(fd, &mut header, deadline)?;
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX {
        return Err(refused(format!("handshake message of {len} bytes")));
    }
    let mut buf = vec![0u8; len];
    read_exact(fd, &mut buf, deadline)?;
    Ok(buf)
}

/// Sends a challenge and checks the peer's answer.
///
/// # Errors
/// An `Io` error of kind `PermissionDenied` when the peer does not know the key.
pub(crate) fn deliver_challenge(
    conn: &mut (impl SendBytes + AsFd + ?Sized),
    key: &[u8],
    deadline: Deadline,
) -> Result<()> {
    let mut nonce = [0u8; NONCE];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut nonce)?;
    let message = [PREFIX, &nonce].concat();
    conn.send_bytes_deadline(&[CHALLENGE, &message].concat(), deadline)?;
    let response = recv_small(conn, deadline)?;
    let Some(digest) = response.strip_prefix(PREFIX) else {
        conn.send_bytes_deadline(FAILURE, deadline)?;
        return Err(refused("the peer answered without {sha256}"));
    };
    let mut m = mac(key);
    m.update(&message);
    // Constant-time comparison.
    if m.verify_slice(digest).is_err() {
        conn.send_bytes_deadline(FAILURE, deadline)?;
        return Err(refused("the peer's digest is wrong"));
    }
    conn.send_bytes_deadline(WELCOME, deadline)
}

/// Answers the peer's challenge and waits to be welcomed.
///
/// # Errors
/// An `Io` error of kind `PermissionDenied` when the peer rejects the key, or speaks
/// another protocol.
pub(crate) fn answer_challenge(
    conn: &mut (impl SendBytes + AsFd + ?Sized),
    key: &[u8],
    deadline: Deadline,
) -> Result<()> {
    let challenge = recv_small(conn, deadline)?;
    let Some(message) = challenge.strip_prefix(CHALLENGE) else {
        return Err(refused("expected a challenge"));
    };
    if !message.starts_with(PREFIX) {
        return Err(refused("only {sha256} challenges are supported"));
    }
    let mut m = mac(key);
    m.update(message);
    conn.send_bytes_deadline(&[PREFIX, &m.finalize().into_bytes()].concat(), deadline)?;
    if recv_small(conn, deadline)? != WELCOME {
        return Err(refused("the peer rejected our key"));
    }
    Ok(())
}
