//! The descriptor transport from outside: plain bytes with `Framing::Raw`, split halves
//! in two threads, and the end of a split writer.

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    thread,
    time::{Duration, Instant},
};

use ipckit_core::{Connection, Error, Framing, RecvBytes, RecvTimeoutError, SendBytes};
use ipckit_testkit::PATIENCE;

fn pair() -> (Connection, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    theirs.set_read_timeout(Some(PATIENCE)).unwrap();
    (Connection::from_fd(ours.into()).unwrap(), theirs)
}

#[test]
fn raw_framing_moves_plain_bytes_both_ways() {
    let (conn, mut plain) = pair();
    let mut conn = conn.framing(Framing::Raw);
    conn.send_bytes(b"Hello, world").unwrap();
    let mut buf = [0u8; 1024];
    let n = plain.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"Hello, world", "no header on the wire");
    plain.write_all(b"abc").unwrap();
    plain.write_all(b"def").unwrap();
    let mut got = Vec::new();
    while got.len() < 6 {
        got.extend(conn.recv_bytes_timeout(PATIENCE).unwrap());
    }
    assert_eq!(got, b"abcdef");
    assert!(matches!(
        conn.recv_bytes_timeout(Duration::from_millis(50)),
        Err(RecvTimeoutError::Timeout)
    ));
    drop(plain);
    assert!(matches!(conn.recv_bytes(), Err(Error::Disconnected)));
}

#[test]
fn raw_receives_are_capped_at_the_maximum() {
    let (conn, mut plain) = pair();
    let mut conn = conn.framing(Framing::Raw).max_message(4);
    plain.write_all(b"0123456789").unwrap();
    let mut got = Vec::new();
    while got.len() < 10 {
        let part = conn.recv_bytes_timeout(PATIENCE).unwrap();
        assert!(!part.is_empty() && part.len() <= 4, "{part:?}");
        got.extend(part);
    }
    assert_eq!(got, b"0123456789");
}

#[test]
fn split_halves_work_from_two_threads_and_the_writer_ends_the_direction() {
    let (a, b) = UnixStream::pair().unwrap();
    let (mut reader, mut writer) = Connection::from_fd(a.into()).unwrap().split().unwrap();
    let mut peer = Connection::from_fd(b.into()).unwrap();
    let sending = std::thread::spawn(move || {
        for i in 0..100u32 {
            writer.send_bytes(&i.to_le_bytes()).unwrap();
        }
        // Dropping the writer ends the sending direction although the reader lives on.
    });
    for i in 0..100u32 {
        assert_eq!(peer.recv_bytes_timeout(PATIENCE).unwrap(), i.to_le_bytes());
        peer.send_bytes(&i.to_be_bytes()).unwrap();
    }
    sending.join().unwrap();
    assert!(matches!(
        peer.recv_bytes_timeout(PATIENCE),
        Err(RecvTimeoutError::Disconnected)
    ));
    for i in 0..100u32 {
        assert_eq!(
            reader.recv_bytes_timeout(PATIENCE).unwrap(),
            i.to_be_bytes()
        );
    }
}

#[test]
fn peer_credentials_name_this_process_on_a_socket_pair() {
    let (conn, _plain) = pair();
    let creds = conn.peer_credentials().unwrap();
    assert_eq!(creds.pid, std::process::id() as i32);
}

/// A socket read with a deadline blocks in `recv` bounded by the socket's receive timeout:
/// it still times out no earlier than its deadline, and later reads (a longer deadline, or
/// none) wait past that timeout for what comes.
#[test]
fn socket_reads_with_a_deadline_leave_later_reads_waiting_as_long_as_theirs() {
    let (a, b) = UnixStream::pair().unwrap();
    let mut conn = Connection::from_fd(a.into()).unwrap();
    let mut peer = Connection::from_fd(b.into()).unwrap();
    let short = Duration::from_millis(50);
    for _ in 0..2 {
        let start = Instant::now();
        assert!(matches!(
            conn.recv_bytes_timeout(short),
            Err(RecvTimeoutError::Timeout)
        ));
        let took = start.elapsed();
        assert!(took >= short, "timed out early, after {took:?}");
    }
    // The data comes after three times the short timeout: a read with no deadline gets it.
    let sending = thread::spawn(move || {
        thread::sleep(short * 3);
        peer.send_bytes(b"late").unwrap();
        thread::sleep(short * 3);
        peer.send_bytes(b"later").unwrap();
        peer
    });
    assert_eq!(conn.recv_bytes().unwrap(), b"late");
    // A short deadline again, then a long one that the later data comes within.
    assert!(matches!(
        conn.recv_bytes_timeout(Duration::from_millis(5)),
        Err(RecvTimeoutError::Timeout)
    ));
    assert_eq!(conn.recv_bytes_timeout(PATIENCE).unwrap(), b"later");
    let peer = sending.join().unwrap();
    drop(peer);
    assert!(matches!(
        conn.recv_bytes_timeout(PATIENCE),
        Err(RecvTimeoutError::Disconnected)
    ));
}

/// The receive timeout belongs to the socket: after a clone's read with a long deadline set
/// it, a read of the original with a short deadline still times out at its own deadline.
#[test]
fn a_clones_long_read_timeout_does_not_stretch_a_short_deadline() {
    let (a, b) = UnixStream::pair().unwrap();
    let mut conn = Connection::from_fd(a.into()).unwrap();
    let mut clone = conn.try_clone().unwrap();
    let mut peer = Connection::from_fd(b.into()).unwrap();
    // A short read first, so that the original knows a 60 ms timeout is set, one that a
    // 100 ms deadline keeps...
    assert!(matches!(
        conn.recv_bytes_timeout(Duration::from_millis(60)),
        Err(RecvTimeoutError::Timeout)
    ));
    // ...then the clone sets a long one while it waits for a message that comes.
    let sending = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        peer.send_bytes(b"for the clone").unwrap();
        peer
    });
    assert_eq!(
        clone.recv_bytes_timeout(Duration::from_secs(30)).unwrap(),
        b"for the clone"
    );
    let start = Instant::now();
    assert!(matches!(
        conn.recv_bytes_timeout(Duration::from_millis(100)),
        Err(RecvTimeoutError::Timeout)
    ));
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "a 100 ms read waited {took:?}: the clone's timeout stretched it"
    );
    drop(sending.join().unwrap());
}
