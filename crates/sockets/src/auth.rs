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
use ipckit_core::{AuthError, Deadline, Error, Result, SendBytes};
use nix::{
    errno::Errno,
    poll::PollFlags,
    sys::socket::{MsgFlags, recv},
};
use sha2::Sha256;

use crate::poll;

const CHALLENGE: &[u8] = b"#CHALLENGE#";
const WELCOME: &[u8] = b"#WELCOME#";
const FAILURE: &[u8] = b"#FAILURE#";
const PREFIX: &[u8] = b"{sha256}";
/// The random part of a challenge: Python's `MESSAGE_LENGTH`.
const NONCE: usize = 40;
/// Handshake messages are small: anything longer is refused unread (Python's 256).
const MAX: usize = 256;

/// HMAC-SHA256 keyed with `key`.
fn mac(key: &[u8]) -> Result<Hmac<Sha256>> {
    // HMAC takes keys of any length: this never fails, but is not assumed not to.
    Hmac::<Sha256>::new_from_slice(key)
        .map_err(|e| Error::Auth(AuthError::Protocol(format!("HMAC key: {e}"))))
}

fn protocol(why: impl Into<String>) -> Error {
    Error::Auth(AuthError::Protocol(why.into()))
}

/// The digest a peer names at the front of a challenge or an answer: `{name}…`. Python
/// 3.11 and older send none (their legacy HMAC-MD5).
fn digest_name(message: &[u8]) -> String {
    match message.strip_prefix(b"{").and_then(|rest| {
        let end = rest.iter().position(|&b| b == b'}')?;
        std::str::from_utf8(&rest[..end]).ok()
    }) {
        Some(name)
            if (1..=20).contains(&name.len())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
        {
            name.to_string()
        }
        _ => "md5 (unprefixed, Python 3.11 and older)".to_string(),
    }
}

/// Fills `buf` with random bytes from the kernel.
fn random(buf: &mut [u8]) -> Result<()> {
    const SOURCE: &str = "/dev/urandom";
    std::fs::File::open(SOURCE)
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| Error::os("read", "random source", SOURCE, e))
}

/// Reads exactly `buf.len()` bytes, waiting at most until `deadline` for all of them.
fn read_exact(fd: BorrowedFd<'_>, mut buf: &mut [u8], deadline: Deadline) -> Result<()> {
    while !buf.is_empty() {
        match recv(fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
            Ok(0) | Err(Errno::ECONNRESET) => return Err(Error::Disconnected),
            Ok(n) => buf = &mut buf[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => poll::wait(fd, PollFlags::POLLIN, deadline)?,
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
        return Err(protocol(format!(
            "a handshake message of {len} bytes (at most {MAX})"
        )));
    }
    let mut buf = vec![0u8; len];
    read_exact(fd, &mut buf, deadline)?;
    Ok(buf)
}

/// Tells the peer it failed, then gives `e`. The peer may be gone already: `e` is what
/// matters.
fn fail(
    conn: &mut (impl SendBytes + AsFd + ?Sized),
    deadline: Deadline,
    e: AuthError,
) -> Result<()> {
    let _ = conn.send_bytes_deadline(FAILURE, deadline);
    Err(Error::Auth(e))
}

/// Sends a challenge and checks the peer's answer.
///
/// # Errors
/// [`AuthError::WrongKey`] when the peer's digest does not match (it holds another key),
/// [`AuthError::UnsupportedDigest`] when it answers with another digest than SHA-256,
/// [`AuthError::Protocol`] for a malformed answer; `Disconnected` or `Timeout` if the peer
/// leaves or stalls.
pub(crate) fn deliver_challenge(
    conn: &mut (impl SendBytes + AsFd + ?Sized),
    key: &[u8],
    deadline: Deadline,
) -> Result<()> {
    let mut nonce = [0u8; NONCE];
    random(&mut nonce)?;
    let message = [PREFIX, &nonce].concat();
    conn.send_bytes_deadline(&[CHALLENGE, &message].concat(), deadline)?;
    let response = recv_small(conn, deadline)?;
    let Some(digest) = response.strip_prefix(PREFIX) else {
        return fail(
            conn,
            deadline,
            AuthError::UnsupportedDigest(digest_name(&response)),
        );
    };
    let mut m = mac(key)?;
    m.update(&message);
    // Constant-time comparison.
    if m.verify_slice(digest).is_err() {
        return fail(conn, deadline, AuthError::WrongKey);
    }
    conn.send_bytes_deadline(WELCOME, deadline)
}

/// Answers the peer's challenge and waits to be welcomed.
///
/// # Errors
/// [`AuthError::Refused`] when the peer rejects our answer (it holds another key),
/// [`AuthError::UnsupportedDigest`] for a challenge in another digest than SHA-256,
/// [`AuthError::Protocol`] when the peer speaks another protocol; `Disconnected` or
/// `Timeout` if it leaves or stalls.
pub(crate) fn answer_challenge(
    conn: &mut (impl SendBytes + AsFd + ?Sized),
    key: &[u8],
    deadline: Deadline,
) -> Result<()> {
    let challenge = recv_small(conn, deadline)?;
    let Some(message) = challenge.strip_prefix(CHALLENGE) else {
        return Err(protocol("expected a #CHALLENGE#"));
    };
    if !message.starts_with(PREFIX) {
        return Err(Error::Auth(AuthError::UnsupportedDigest(digest_name(
            message,
        ))));
    }
    let mut m = mac(key)?;
    m.update(message);
    conn.send_bytes_deadline(&[PREFIX, &m.finalize().into_bytes()].concat(), deadline)?;
    match recv_small(conn, deadline)? {
        reply if reply == WELCOME => Ok(()),
        reply if reply == FAILURE => Err(Error::Auth(AuthError::Refused)),
        reply => Err(protocol(format!(
            "expected #WELCOME# or #FAILURE#, got {} bytes",
            reply.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_names_are_read_from_the_prefix() {
        assert_eq!(digest_name(b"{sha256}abc"), "sha256");
        assert_eq!(digest_name(b"{md5}abc"), "md5");
        assert!(digest_name(&[7; 16]).starts_with("md5"));
        assert!(digest_name(b"{never closed").starts_with("md5"));
    }
}
