//! Message framing on byte streams, identical to Python's `multiprocessing.connection`.
//!
//! A frame is a 4-byte big-endian signed length followed by the message. Messages of
//! 2 GiB and more announce `-1` (`FF FF FF FF`) followed by an 8-byte big-endian length.
//! A Python `Connection.recv_bytes()` reads what ipckit sends, and the other way round.

use crate::{Error, Result};

/// The default largest message a receiver accepts: 64 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 64 << 20;

/// The longest header: the `-1` marker and an 8-byte length.
pub const MAX_HEADER: usize = 12;

/// How messages are delimited on a byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// Length-prefixed frames, as Python's `multiprocessing.connection` (the default).
    #[default]
    Length,
    /// One message per line: `\n` ends a message and is not part of it; a `\r` before it is
    /// dropped too. This is what `echo hi > fifo` writes.
    Lines,
    /// No framing: plain bytes, as `socket.sendall` and `socket.recv` move them. A send
    /// writes its bytes as they are; a receive returns whatever has arrived (at least one
    /// byte, at most the maximum message size). Boundaries are not kept: two sends may
    /// arrive as one receive, or one as two.
    Raw,
}

/// Writes the header for a message of `len` bytes into `out`; returns the header's length.
pub fn encode_header(len: usize, out: &mut [u8; MAX_HEADER]) -> usize {
    match i32::try_from(len) {
        Ok(n) => {
            out[..4].copy_from_slice(&n.to_be_bytes());
            4
        }
        Err(_) => {
            out[..4].copy_from_slice(&(-1i32).to_be_bytes());
            out[4..12].copy_from_slice(&(len as u64).to_be_bytes());
            12
        }
    }
}

/// What the first bytes of a stream say about the next frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// More bytes are needed to read the header; at least this many in all.
    Need(usize),
    /// A complete header: its own length and the message's length.
    Frame {
        /// Bytes taken by the header.
        header_len: usize,
        /// Bytes of the message that follows.
        len: u64,
    },
}

/// Parses a header from the start of `buf`, checking the length against `max` before
/// anything of that size is allocated.
///
/// # Errors
/// [`Error::Malformed`] for a negative length other than the `-1` marker,
/// [`Error::TooLarge`] for a length above `max`.
pub fn decode_header(buf: &[u8], max: usize) -> Result<Header> {
    let Some(first) = buf.first_chunk::<4>() else {
        return Ok(Header::Need(4));
    };
    let n = i32::from_be_bytes(*first);
    let (header_len, len) = match n {
        0.. => (4, n as u64),
        -1 => match buf.get(4..12) {
            Some(b) => (12, u64::from_be_bytes(b.try_into().expect("8 bytes"))),
            None => return Ok(Header::Need(12)),
        },
        _ => return Err(Error::Malformed(format!("negative frame length {n}"))),
    };
    if len > max as u64 {
        return Err(Error::TooLarge { len, max });
    }
    Ok(Header::Frame { header_len, len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_lengths_use_four_bytes_like_python() {
        let mut h = [0; MAX_HEADER];
        assert_eq!(encode_header(5, &mut h), 4);
        assert_eq!(&h[..4], &[0, 0, 0, 5]);
        assert_eq!(encode_header(0x7fff_ffff, &mut h), 4);
    }

    #[test]
    fn large_lengths_use_the_marker() {
        let mut h = [0; MAX_HEADER];
        assert_eq!(encode_header(1 << 31, &mut h), 12);
        assert_eq!(&h, &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0x80, 0, 0, 0]);
        assert_eq!(
            decode_header(&h, usize::MAX).unwrap(),
            Header::Frame {
                header_len: 12,
                len: 1 << 31
            }
        );
    }

    #[test]
    fn giant_announcement_is_refused() {
        let mut h = [0; MAX_HEADER];
        let n = encode_header(1 << 40, &mut h);
        assert!(matches!(
            decode_header(&h[..n], DEFAULT_MAX_MESSAGE),
            Err(Error::TooLarge { len, .. }) if len == 1 << 40
        ));
    }

    #[test]
    fn negative_length_is_malformed() {
        assert!(matches!(
            decode_header(&[0xff, 0, 0, 1], 10),
            Err(Error::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn header_round_trips(len in 0usize..(1 << 40)) {
            let mut h = [0; MAX_HEADER];
            let n = encode_header(len, &mut h);
            prop_assert_eq!(decode_header(&h[..n], usize::MAX).unwrap(),
                Header::Frame { header_len: n, len: len as u64 });
            prop_assert_eq!(decode_header(&h[..n - 1], usize::MAX).unwrap(), Header::Need(if n == 4 { 4 } else { 12 }));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = decode_header(&bytes, DEFAULT_MAX_MESSAGE);
        }
    }
}
