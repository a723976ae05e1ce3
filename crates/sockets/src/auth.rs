//! The authkey handshake of Python's `multiprocessing.connection`: HMAC-SHA256 challenge and
//! response (Python 3.12), in both directions, compared in constant time; and, when asked
//! for, the legacy HMAC-MD5 of Python 3.11 and older.
//!
//! The side that *delivers* a challenge sends `#CHALLENGE#{sha256}<40 random bytes>`; the
//! other answers `{sha256}<HMAC-SHA256(authkey, "{sha256}<bytes>")>`; the first replies
//! `#WELCOME#` or `#FAILURE#`. A listener delivers then answers; a client answers then
//! delivers, so each side proves it knows the key to the other.
//!
//! Python 3.11 and older challenge with 20 bare random bytes and answer any challenge with a
//! bare 16-byte HMAC-MD5 of it. With the legacy exchange allowed, such an answer is checked
//! and such a challenge answered in kind (as Python 3.12 does by default). Without it, a
//! legacy answer is refused with `#FAILURE#`, and a legacy challenge is answered with
//! HMAC-SHA256, which the old peer refuses: either way both sides learn of the refusal
//! (Python as an `AuthenticationError`), and nobody hangs up without a word.
//!
//! [`Handshake`] is a state machine that never blocks: [`Handshake::advance`] reads what
//! has arrived and answers it, so one thread drives many handshakes at once (a listener's
//! pending clients) or one until a deadline (a client). Handshake messages are read
//! exactly, straight from the socket: no byte after the handshake is read ahead, so the
//! stream can still be handed to a child process. Everything the handshake sends fits in
//! any socket buffer (a few hundred bytes), so sends never wait.

use std::os::fd::{AsRawFd, BorrowedFd};

use hmac::{Hmac, Mac};
use ipckit_core::{AuthError, Error, Result};
use md5::Md5;
use nix::{
    errno::Errno,
    sys::socket::{MsgFlags, recv, send},
};
use sha2::Sha256;

const CHALLENGE: &[u8] = b"#CHALLENGE#";
const WELCOME: &[u8] = b"#WELCOME#";
const FAILURE: &[u8] = b"#FAILURE#";
const PREFIX: &[u8] = b"{sha256}";
/// The random part of a challenge: Python's `MESSAGE_LENGTH`.
const NONCE: usize = 40;
/// The length of a legacy answer: a bare HMAC-MD5.
const MD5_LEN: usize = 16;
/// Handshake messages are small: anything longer is refused unread (Python's 256).
const MAX: usize = 256;

fn protocol(why: impl Into<String>) -> Error {
    Error::Auth(AuthError::Protocol(why.into()))
}

/// The digest a peer names at the front of a challenge or an answer: `{name}…`; `None`
/// for a bare one (Python 3.11 and older: their legacy HMAC-MD5).
fn prefixed_digest(message: &[u8]) -> Option<&str> {
    let rest = message.strip_prefix(b"{")?;
    let end = rest.iter().position(|&b| b == b'}')?;
    let name = std::str::from_utf8(&rest[..end]).ok()?;
    ((1..=20).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then_some(name)
}

/// The digest a peer speaks, for errors.
fn digest_name(message: &[u8]) -> String {
    prefixed_digest(message).map_or_else(
        || "md5 (unprefixed, Python 3.11 and older)".to_string(),
        str::to_string,
    )
}

fn hmac_sha256(key: &[u8]) -> Result<Hmac<Sha256>> {
    // HMAC takes keys of any length: this never fails, but is not assumed not to.
    Hmac::<Sha256>::new_from_slice(key)
        .map_err(|e| Error::Auth(AuthError::Protocol(format!("HMAC key: {e}"))))
}

fn hmac_md5(key: &[u8]) -> Result<Hmac<Md5>> {
    Hmac::<Md5>::new_from_slice(key)
        .map_err(|e| Error::Auth(AuthError::Protocol(format!("HMAC key: {e}"))))
}

/// Fills `buf` with random bytes from the kernel.
fn random(buf: &mut [u8]) -> Result<()> {
    use std::io::Read;
    const SOURCE: &str = "/dev/urandom";
    std::fs::File::open(SOURCE)
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| Error::os("read", "random source", SOURCE, e))
}

/// Sends one handshake message (its 4-byte big-endian length, then its bytes) without
/// waiting: it fits in the socket's buffer, or the peer is not reading its handshake.
fn send_message(fd: BorrowedFd<'_>, msg: &[u8]) -> Result<()> {
    let frame = [&(msg.len() as u32).to_be_bytes()[..], msg].concat();
    loop {
        match send(
            fd.as_raw_fd(),
            &frame,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(n) if n == frame.len() => return Ok(()),
            Ok(_) | Err(Errno::EAGAIN) => {
                return Err(protocol("the peer does not read its handshake"));
            }
            Err(Errno::EINTR) => {}
            Err(Errno::EPIPE | Errno::ECONNRESET) => return Err(Error::Disconnected),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Which end of the connection this is: who challenges first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// Delivers a challenge, then answers one.
    Listener,
    /// Answers a challenge, then delivers one.
    Client,
}

/// What the handshake waits for next.
#[derive(Debug)]
enum Await {
    /// The peer's answer to our challenge, `message` (what follows `#CHALLENGE#`).
    Answer { message: Vec<u8> },
    /// The peer's challenge.
    Challenge,
    /// The peer's verdict on our answer. `legacy`: the challenge was legacy and we
    /// answered with SHA-256, so a refusal means that the peer speaks only HMAC-MD5.
    Verdict { legacy: Option<String> },
    /// Nothing: both sides proved the key.
    Done,
}

/// One message being read: its header, then its body, exactly.
#[derive(Debug, Default)]
struct Incoming {
    header: [u8; 4],
    got: usize,
    body: Vec<u8>,
}

/// One side of an authkey handshake on one socket; see the module's documentation.
pub(crate) struct Handshake {
    side: Side,
    key: Vec<u8>,
    legacy: bool,
    wait: Await,
    incoming: Incoming,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays secret, even in logs.
        f.debug_struct("Handshake")
            .field("side", &self.side)
            .field("legacy", &self.legacy)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

impl Handshake {
    /// Begins the handshake of `side` with `key` on the socket `fd` (a listener sends its
    /// challenge at once); `legacy` allows Python 3.11's HMAC-MD5.
    ///
    /// # Errors
    /// As [`advance`](Handshake::advance).
    pub(crate) fn start(fd: BorrowedFd<'_>, side: Side, key: &[u8], legacy: bool) -> Result<Self> {
        let mut hs = Handshake {
            side,
            key: key.to_vec(),
            legacy,
            wait: Await::Challenge,
            incoming: Incoming::default(),
        };
        if side == Side::Listener {
            hs.wait = hs.deliver(fd)?;
        }
        Ok(hs)
    }

    /// Reads what has arrived, answers it, and says whether the handshake is over; never
    /// waits. Call it again when the socket is readable.
    ///
    /// # Errors
    /// [`AuthError::WrongKey`] when the peer's answer does not match (it holds another
    /// key), [`AuthError::Refused`] when the peer rejects ours,
    /// [`AuthError::UnsupportedDigest`] when the peer speaks only a digest not allowed here
    /// (Python 3.11's HMAC-MD5 without [`legacy`](Handshake::start)),
    /// [`AuthError::Protocol`] for a malformed message; [`Error::Disconnected`] if the peer
    /// left.
    pub(crate) fn advance(&mut self, fd: BorrowedFd<'_>) -> Result<bool> {
        loop {
            if matches!(self.wait, Await::Done) {
                return Ok(true);
            }
            let Some(msg) = self.read_message(fd)? else {
                return Ok(false);
            };
            self.wait = match std::mem::replace(&mut self.wait, Await::Done) {
                Await::Answer { message } => {
                    self.check_answer(fd, &message, &msg)?;
                    send_message(fd, WELCOME)?;
                    match self.side {
                        Side::Listener => Await::Challenge,
                        Side::Client => Await::Done,
                    }
                }
                Await::Challenge => self.answer(fd, &msg)?,
                Await::Verdict { legacy } => match msg.as_slice() {
                    WELCOME => match self.side {
                        Side::Listener => Await::Done,
                        Side::Client => self.deliver(fd)?,
                    },
                    FAILURE => {
                        return Err(Error::Auth(match legacy {
                            Some(digest) => AuthError::UnsupportedDigest(digest),
                            None => AuthError::Refused,
                        }));
                    }
                    other => {
                        return Err(protocol(format!(
                            "expected #WELCOME# or #FAILURE#, got {} bytes",
                            other.len()
                        )));
                    }
                },
                Await::Done => Await::Done,
            };
        }
    }

    /// Sends a challenge; the answer is awaited.
    fn deliver(&self, fd: BorrowedFd<'_>) -> Result<Await> {
        let mut nonce = [0u8; NONCE];
        random(&mut nonce)?;
        let message = [PREFIX, &nonce].concat();
        send_message(fd, &[CHALLENGE, &message].concat())?;
        Ok(Await::Answer { message })
    }

    /// Checks the peer's `response` to our challenge `message`; tells the peer if it failed.
    fn check_answer(&self, fd: BorrowedFd<'_>, message: &[u8], response: &[u8]) -> Result<()> {
        let verdict = if let Some(digest) = response.strip_prefix(PREFIX) {
            let mut m = hmac_sha256(&self.key)?;
            m.update(message);
            // Constant-time comparison.
            m.verify_slice(digest).map_err(|_| AuthError::WrongKey)
        } else if self.legacy && response.len() == MD5_LEN {
            let mut m = hmac_md5(&self.key)?;
            m.update(message);
            m.verify_slice(response).map_err(|_| AuthError::WrongKey)
        } else {
            Err(AuthError::UnsupportedDigest(digest_name(response)))
        };
        verdict.map_err(|e| {
            // The peer may be gone already: the refusal is what matters.
            let _ = send_message(fd, FAILURE);
            Error::Auth(e)
        })
    }

    /// Answers the peer's challenge; its verdict is awaited.
    fn answer(&self, fd: BorrowedFd<'_>, challenge: &[u8]) -> Result<Await> {
        let Some(message) = challenge.strip_prefix(CHALLENGE) else {
            return Err(protocol("expected a #CHALLENGE#"));
        };
        if prefixed_digest(message).is_none() && self.legacy {
            // Python 3.11 and older: a bare HMAC-MD5.
            let mut m = hmac_md5(&self.key)?;
            m.update(message);
            send_message(fd, &m.finalize().into_bytes())?;
            return Ok(Await::Verdict { legacy: None });
        }
        // SHA-256 whatever the challenge names: Python 3.12 checks an answer by the digest
        // the answer names. A legacy peer refuses it, and says so.
        let mut m = hmac_sha256(&self.key)?;
        m.update(message);
        send_message(fd, &[PREFIX, &m.finalize().into_bytes()].concat())?;
        let legacy = prefixed_digest(message)
            .is_none()
            .then(|| digest_name(message));
        Ok(Await::Verdict { legacy })
    }

    /// Reads what has arrived of the next message, exactly; the message once it is whole.
    /// Longer than [`MAX`] (Python's 64-bit escape included) is refused unread.
    fn read_message(&mut self, fd: BorrowedFd<'_>) -> Result<Option<Vec<u8>>> {
        let inc = &mut self.incoming;
        loop {
            let buf: &mut [u8] = if inc.got < 4 {
                &mut inc.header[inc.got..]
            } else {
                &mut inc.body[inc.got - 4..]
            };
            if buf.is_empty() {
                let msg = std::mem::take(&mut inc.body);
                *inc = Incoming::default();
                return Ok(Some(msg));
            }
            match recv(fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) | Err(Errno::ECONNRESET) => return Err(Error::Disconnected),
                Ok(n) => {
                    inc.got += n;
                    if inc.got == 4 {
                        let len = u32::from_be_bytes(inc.header) as usize;
                        if len > MAX {
                            return Err(protocol(format!(
                                "a handshake message of {len} bytes (at most {MAX})"
                            )));
                        }
                        inc.body = vec![0; len];
                    }
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
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
