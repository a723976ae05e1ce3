//! `Server`: many clients at once (real processes), broadcasts to all and to all but the
//! sender, join and leave events, a client that stops reading dropped for its outbox while
//! the others receive everything, garbage and giant headers dropped, no descriptor or
//! thread left after a thousand clients, and a shutdown that ends every thread in time.
//!
//! Every wait has a timeout, and every socket file a test makes is checked gone.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    os::{fd::OwnedFd, unix::net::UnixStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use ipckit_core::{
    Command, Connection, Ctx, RecvBytes, RecvTimeoutError, Role, RoleResult, SendBytes, enter,
    temp_path,
};
use ipckit_sockets::{
    Address, ClientId, ConnectOptions, Error, Event, Events, LeaveReason, Listener, Server,
    ServerOptions, Stream,
};

/// The longest any single wait in these tests may take.
const PATIENCE: Duration = Duration::from_secs(30);

const ROLES: &[Role] = &[
    Role::new("chatter", chatter),
    Role::new("lockstep-reader", lockstep_reader),
    Role::new("lagger", lagger),
    Role::new("thousand-cycles", thousand_cycles),
];

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A fresh Unix socket address in the temporary directory, and its path.
fn unix_address() -> (Address, PathBuf) {
    let path = temp_path("sock");
    (Address::Unix(path.clone()), path)
}

fn tcp_any() -> Address {
    "tcp://127.0.0.1:0".parse().unwrap()
}

fn patient() -> ConnectOptions {
    ConnectOptions {
        timeout: Some(PATIENCE),
        retry: true,
        authkey: None,
    }
}

/// The next event, failing the test if none comes in time.
fn next(events: &Events) -> Event {
    events
        .recv_timeout(PATIENCE)
        .unwrap_or_else(|e| panic!("no event in {PATIENCE:?}: {e}"))
}

fn joined(events: &Events) -> ClientId {
    match next(events) {
        Event::Joined(id, _) => id,
        e => panic!("expected a join, got {e:?}"),
    }
}

fn left(events: &Events) -> (ClientId, LeaveReason) {
    match next(events) {
        Event::Left(id, why) => (id, why),
        e => panic!("expected a leave, got {e:?}"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn recv_text(s: &mut Stream) -> String {
    text(&s.recv_bytes_timeout(PATIENCE).expect("a message in time"))
}

/// The stream ends (the server closed it) within `PATIENCE`.
fn expect_closed(s: &mut Stream) {
    match s.recv_bytes_timeout(PATIENCE) {
        Err(RecvTimeoutError::Disconnected) => {}
        other => panic!("expected the server to close, got {other:?}"),
    }
}

fn assert_gone(path: &Path) {
    assert!(!path.exists(), "{} was left behind", path.display());
}

/// A role's error from text.
fn fail(msg: String) -> RoleResult {
    Err(msg.into())
}

fn count_entries(dir: &str) -> usize {
    std::fs::read_dir(dir).expect("procfs").count()
}

// ---------------------------------------------------------------------------------------
// Roles
// ---------------------------------------------------------------------------------------

/// Says hello, expects "to all", then one "from j" from every other chatter, then "end";
/// answers "ok" and leaves.
fn chatter(ctx: &mut Ctx) -> RoleResult {
    let (addr, me, n): (String, u32, u32) = ctx.arg()?;
    let mut s = Stream::connect_with(&addr.parse()?, &patient())?;
    s.send_bytes(format!("hello from {me}").as_bytes())?;
    let mut got = Vec::new();
    loop {
        let m = text(&s.recv_bytes_timeout(PATIENCE)?);
        if m == "end" {
            break;
        }
        got.push(m);
    }
    let mut want = vec!["to all".to_string()];
    want.extend((0..n).filter(|&j| j != me).map(|j| format!("from {j}")));
    // "to all" first (sent before any other); the relays in any order.
    got[1..].sort();
    if got != want {
        return fail(format!("chatter {me}: expected {want:?}, got {got:?}"));
    }
    s.send_bytes(format!("ok {me}").as_bytes())?;
    Ok(())
}

/// Numbered message `i` of `len` bytes.
fn numbered(i: u32, len: usize) -> Vec<u8> {
    let mut m = vec![(i % 251) as u8; len];
    m[..4].copy_from_slice(&i.to_be_bytes());
    m
}

fn number(m: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(*m.first_chunk::<4>()?))
}

/// Reads `n` numbered messages in order, acknowledging each.
fn lockstep_reader(ctx: &mut Ctx) -> RoleResult {
    let (addr, n): (String, u32) = ctx.arg()?;
    let mut s = Stream::connect_with(&addr.parse()?, &patient())?;
    s.send_bytes(b"ready")?;
    for i in 0..n {
        let m = s.recv_bytes_timeout(PATIENCE)?;
        if number(&m) != Some(i) || m.len() != MESSAGE {
            return fail(format!("expected message {i}, got {:?}", number(&m)));
        }
        s.send_bytes(format!("ack {i}").as_bytes())?;
    }
    Ok(())
}

/// Stops reading once connected; when told "go", reads what reached it: messages 0, 1, …
/// in order, whole, then the end of the stream. Reports how many.
fn lagger(ctx: &mut Ctx) -> RoleResult {
    let addr: String = ctx.arg()?;
    let mut ctl: Connection = ctx.handle("ctl")?;
    let mut s = Stream::connect_with(&addr.parse()?, &patient())?;
    s.send_bytes(b"ready")?;
    if ctl.recv_bytes_timeout(PATIENCE)? != b"go" {
        return fail("expected go".into());
    }
    let mut count = 0u32;
    loop {
        match s.recv_bytes_timeout(PATIENCE) {
            Ok(m) if number(&m) == Some(count) && m.len() == MESSAGE => count += 1,
            Ok(m) => return fail(format!("message {count}: got {:?}", number(&m))),
            // The server shut the connection: the message it was writing is cut short.
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => return Err(e.into()),
        }
    }
    ctl.send_bytes(&count.to_be_bytes())?;
    Ok(())
}

/// A thousand clients connect and go, one after the other; no descriptor or thread stays.
fn thousand_cycles(_: &mut Ctx) -> RoleResult {
    let (addr, path) = unix_address();
    let (server, events) = Server::start(Listener::bind(&addr)?)?;
    let threads_before = count_entries("/proc/self/task");
    let fds_before = count_entries("/proc/self/fd");
    let (mut joins, mut messages, mut leaves) = (0, 0, 0);
    for i in 0..1000u32 {
        let mut s = Stream::connect_with(&addr, &patient())?;
        if i % 2 == 0 {
            s.send_bytes(&i.to_be_bytes())?;
        }
        drop(s);
        // Take events as they come, so the server never waits for room.
        while let Ok(e) = events.try_recv() {
            match e {
                Event::Joined(..) => joins += 1,
                Event::Message(..) => messages += 1,
                Event::Left(_, LeaveReason::Closed) => leaves += 1,
                e => return fail(format!("unexpected {e:?}")),
            }
        }
    }
    while leaves < 1000 {
        match events.recv_timeout(PATIENCE)? {
            Event::Joined(..) => joins += 1,
            Event::Message(..) => messages += 1,
            Event::Left(_, LeaveReason::Closed) => leaves += 1,
            e => return fail(format!("unexpected {e:?}")),
        }
    }
    if (joins, messages) != (1000, 500) || !server.clients().is_empty() {
        return fail(format!(
            "{joins} joins, {messages} messages, {leaves} leaves, {:?} still in",
            server.clients()
        ));
    }
    // Client threads end as their clients go; the accept thread tidies up after them.
    // A little slack for descriptors the runtime opens lazily.
    let settled = |threads: usize, fds: usize| threads <= threads_before && fds <= fds_before + 2;
    let deadline = Instant::now() + PATIENCE;
    let (mut threads, mut fds) = (usize::MAX, usize::MAX);
    while !settled(threads, fds) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        (threads, fds) = (
            count_entries("/proc/self/task"),
            count_entries("/proc/self/fd"),
        );
    }
    if !settled(threads, fds) {
        return fail(format!(
            "after 1000 clients: {threads} threads (were {threads_before}), \
             {fds} descriptors (were {fds_before})"
        ));
    }
    server.shutdown();
    let (threads_after, fds_after) = (
        count_entries("/proc/self/task"),
        count_entries("/proc/self/fd"),
    );
    // The accept thread and the listening socket are gone too.
    if threads_after >= threads || fds_after >= fds {
        return fail(format!(
            "after shutdown: {threads_after} threads (were {threads}), \
             {fds_after} descriptors (were {fds})"
        ));
    }
    if path.exists() {
        return fail(format!("{} left behind", path.display()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn many_client_processes_hear_broadcasts_to_all_and_to_all_but_the_sender() {
    enter(ROLES);
    const N: u32 = 6;
    let (addr, path) = unix_address();
    let (server, events) = Server::start(Listener::bind(&addr).unwrap()).unwrap();
    let mut children: Vec<_> = (0..N)
        .map(|i| {
            Command::new("chatter")
                .arg(&(addr.to_string(), i, N))
                .unwrap()
                .spawn()
                .unwrap()
        })
        .collect();
    let pids: BTreeSet<i32> = children.iter().map(|c| c.pid() as i32).collect();
    // Every client joins (with its process named by the kernel) and says who it is.
    let mut who = BTreeMap::new();
    let mut joined_pids = BTreeSet::new();
    while who.len() < N as usize {
        match next(&events) {
            Event::Joined(_, peer) => {
                joined_pids.insert(peer.credentials.expect("a Unix peer has credentials").pid);
            }
            Event::Message(id, m) => {
                let i: u32 = text(&m)
                    .strip_prefix("hello from ")
                    .unwrap()
                    .parse()
                    .unwrap();
                who.insert(id, i);
            }
            e => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(joined_pids, pids);
    assert_eq!(server.clients(), who.keys().copied().collect::<Vec<_>>());
    assert_eq!(server.broadcast(b"to all").unwrap(), N as usize);
    for (&id, i) in &who {
        let relayed = format!("from {i}");
        assert_eq!(
            server.broadcast_except(id, relayed.as_bytes()).unwrap(),
            N as usize - 1
        );
    }
    assert_eq!(server.broadcast(b"end").unwrap(), N as usize);
    // Each answers "ok" (it checked what it got) and leaves.
    let (mut oks, mut gone) = (BTreeSet::new(), BTreeSet::new());
    while gone.len() < N as usize {
        match next(&events) {
            Event::Message(id, m) => {
                assert_eq!(text(&m), format!("ok {}", who[&id]));
                oks.insert(id);
            }
            Event::Left(id, LeaveReason::Closed) => {
                assert!(oks.contains(&id), "{id} left before its ok");
                gone.insert(id);
            }
            e => panic!("unexpected {e:?}"),
        }
    }
    for child in &mut children {
        assert!(child.join_timeout(PATIENCE).unwrap().success());
    }
    assert!(server.clients().is_empty());
    drop(server);
    assert!(matches!(
        events.recv_timeout(PATIENCE),
        Err(RecvTimeoutError::Disconnected)
    ));
    assert_gone(&path);
}

#[test]
fn joins_leaves_and_disconnects_over_unix_and_tcp() {
    let (unix, path) = unix_address();
    for addr in [unix, tcp_any()] {
        let (server, events) = Server::start(Listener::bind(&addr).unwrap()).unwrap();
        let addr = server.address().clone();
        let mut a = Stream::connect(&addr).unwrap();
        let a_id = joined(&events);
        let mut b = Stream::connect(&addr).unwrap();
        let b_id = joined(&events);
        assert_eq!(server.clients(), vec![a_id, b_id]);
        assert!(a_id < b_id);
        match addr {
            Address::Tcp(_) => {
                let peer = server.peer(a_id).unwrap();
                assert!(peer.credentials.is_none() && peer.address.starts_with("tcp://127.0.0.1:"));
            }
            _ => {
                let creds = server.peer(a_id).unwrap().credentials.unwrap();
                assert_eq!(creds.pid, std::process::id() as i32);
            }
        }

        // What was queued for a client goes out before it is sent away.
        server.send_to(b_id, b"you are leaving").unwrap();
        assert!(server.disconnect(b_id, "kicked by the test"));
        assert_eq!(recv_text(&mut b), "you are leaving");
        expect_closed(&mut b);
        drop(b);
        assert_eq!(
            left(&events),
            (b_id, LeaveReason::Disconnected("kicked by the test".into()))
        );
        assert_eq!(server.clients(), vec![a_id]);
        assert!(matches!(
            server.send_to(b_id, b"too late"),
            Err(Error::Disconnected)
        ));
        assert!(!server.disconnect(b_id, "again"));

        // Messages come in order, tagged with their sender.
        for m in ["one", "two", "three"] {
            a.send_bytes(m.as_bytes()).unwrap();
        }
        for m in ["one", "two", "three"] {
            assert_eq!(next(&events), Event::Message(a_id, m.as_bytes().to_vec()));
        }
        assert_eq!(server.broadcast_except(a_id, b"nobody").unwrap(), 0);
        assert_eq!(server.broadcast(b"just a").unwrap(), 1);
        assert_eq!(recv_text(&mut a), "just a");
        // A message sent just before closing still arrives, before the leave.
        a.send_bytes(b"last words").unwrap();
        drop(a);
        assert_eq!(next(&events), Event::Message(a_id, b"last words".to_vec()));
        assert_eq!(left(&events), (a_id, LeaveReason::Closed));
        assert!(server.clients().is_empty());
        assert_eq!(LeaveReason::Closed.to_string(), "closed the connection");
        server.shutdown();
        assert!(matches!(
            events.try_recv(),
            Err(ipckit_core::TryRecvError::Disconnected)
        ));
    }
    assert_gone(&path);
}

#[test]
fn a_client_that_stops_reading_is_dropped_for_outbox_overflow_and_the_others_get_everything() {
    enter(ROLES);
    const N: u32 = 100;
    const READERS: usize = 3;
    let (addr, path) = unix_address();
    let opts = ServerOptions {
        outbox: 16,
        ..ServerOptions::default()
    };
    let (server, events) = Server::start_with(Listener::bind(&addr).unwrap(), opts).unwrap();
    let (ctl, theirs) = UnixStream::pair().unwrap();
    let mut ctl = Connection::from_fd(OwnedFd::from(ctl)).unwrap();
    let mut lagger = Command::new("lagger")
        .arg(&addr.to_string())
        .unwrap()
        .handle("ctl", Connection::from_fd(OwnedFd::from(theirs)).unwrap())
        .spawn()
        .unwrap();
    let mut readers: Vec<_> = (0..READERS)
        .map(|_| {
            Command::new("lockstep-reader")
                .arg(&(addr.to_string(), N))
                .unwrap()
                .spawn()
                .unwrap()
        })
        .collect();
    let lagger_pid = lagger.pid() as i32;
    let mut lagger_id = None;
    let mut ready = 0;
    while ready < READERS + 1 {
        match next(&events) {
            Event::Joined(id, peer) if peer.credentials.unwrap().pid == lagger_pid => {
                lagger_id = Some(id);
            }
            Event::Joined(..) => {}
            Event::Message(_, m) => {
                assert_eq!(m, b"ready");
                ready += 1;
            }
            e => panic!("unexpected {e:?}"),
        }
    }
    let lagger_id = lagger_id.unwrap();
    let mut dropped_at = None;
    let mut readers_gone = 0;
    for i in 0..N {
        let queued = server.broadcast(&numbered(i, MESSAGE)).unwrap();
        // The lagger is dropped by the broadcast its outbox has no room for.
        let lagger_in = queued == READERS + 1;
        assert!(lagger_in || queued == READERS, "message {i}: {queued}");
        assert!(
            !(lagger_in && dropped_at.is_some()),
            "message {i}: {queued}"
        );
        // Every reader takes message i before message i + 1 is sent.
        let mut acks = 0;
        while acks < READERS {
            match next(&events) {
                Event::Message(_, m) => {
                    assert_eq!(text(&m), format!("ack {i}"));
                    acks += 1;
                }
                // A reader that took everything goes.
                Event::Left(id, LeaveReason::Closed) if id != lagger_id && i == N - 1 => {
                    readers_gone += 1;
                }
                Event::Left(id, why) => {
                    assert!(!lagger_in && dropped_at.is_none(), "message {i}");
                    assert_eq!((id, &why), (lagger_id, &LeaveReason::OutboxOverflow));
                    assert_eq!(why.to_string(), "outbox overflow");
                    dropped_at = Some(i);
                }
                e => panic!("unexpected {e:?}"),
            }
        }
    }
    let dropped_at = dropped_at.expect("the lagger was never dropped");
    // Its socket buffer and its 16-message outbox, and not much more.
    assert!(dropped_at < 60, "dropped only at message {dropped_at}");
    assert!(!server.clients().contains(&lagger_id));
    // It received whole messages in order, then the end of the stream.
    ctl.send_bytes(b"go").unwrap();
    let got = ctl.recv_bytes_timeout(PATIENCE).unwrap();
    let got = u32::from_be_bytes(got.try_into().unwrap());
    assert!(
        got > 0 && got <= dropped_at,
        "it got {got}, dropped at {dropped_at}"
    );
    assert!(lagger.join_timeout(PATIENCE).unwrap().success());
    for r in &mut readers {
        assert!(r.join_timeout(PATIENCE).unwrap().success());
    }
    for _ in readers_gone..READERS {
        assert_eq!(left(&events).1, LeaveReason::Closed);
    }
    drop(server);
    assert_gone(&path);
}

/// The size of the numbered messages: a few fill a socket buffer.
const MESSAGE: usize = 64 << 10;

#[test]
fn garbage_and_giant_headers_get_a_client_dropped_and_nobody_else() {
    let (unix, path) = unix_address();
    for addr in [unix, tcp_any()] {
        let (server, events) = Server::start(Listener::bind(&addr).unwrap()).unwrap();
        let addr = server.address().clone();
        let mut good = Stream::connect(&addr).unwrap();
        let good_id = joined(&events);
        // Plain sockets, no framing; reads give up rather than hang.
        let raw = || -> Box<dyn ReadWrite> {
            match &addr {
                Address::Unix(p) => {
                    let s = UnixStream::connect(p).unwrap();
                    s.set_read_timeout(Some(PATIENCE)).unwrap();
                    Box::new(s)
                }
                Address::Tcp(a) => {
                    let s = std::net::TcpStream::connect(a).unwrap();
                    s.set_read_timeout(Some(PATIENCE)).unwrap();
                    Box::new(s)
                }
                _ => unreachable!(),
            }
        };
        let giant = {
            // The 2 GiB+ form: -1, then 2^40 as 8 bytes.
            let mut h = vec![0xff; 4];
            h.extend_from_slice(&(1u64 << 40).to_be_bytes());
            h
        };
        for (bytes, says) in [
            (
                &b"\xff\xff\xff\x80 not a frame"[..],
                "negative frame length",
            ),
            (&giant[..], "1099511627776 bytes exceeds"),
            (
                &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
                "exceeds the maximum",
            ),
        ] {
            let mut bad = raw();
            let bad_id = joined(&events);
            bad.write_all(bytes).unwrap();
            match left(&events) {
                (id, LeaveReason::Protocol(e)) if id == bad_id => {
                    assert!(e.contains(says), "{e}");
                }
                other => panic!("expected {bad_id} dropped for {says:?}, got {other:?}"),
            }
            // Its connection is closed.
            let mut buf = [0u8; 16];
            match bad.read(&mut buf) {
                Ok(0) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                other => panic!("expected the connection closed, got {other:?}"),
            }
            // The good client was not disturbed.
            good.send_bytes(b"still here").unwrap();
            assert_eq!(
                next(&events),
                Event::Message(good_id, b"still here".to_vec())
            );
            assert_eq!(server.broadcast(b"all good").unwrap(), 1);
            assert_eq!(recv_text(&mut good), "all good");
        }
        assert_eq!(server.clients(), vec![good_id]);
        drop(good);
        assert_eq!(left(&events), (good_id, LeaveReason::Closed));
    }
    assert_gone(&path);
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

#[test]
fn messages_above_the_maximum_are_refused_both_ways() {
    let opts = ServerOptions {
        max_message: 1024,
        ..ServerOptions::default()
    };
    let (server, events) = Server::start_with(Listener::bind(&tcp_any()).unwrap(), opts).unwrap();
    let mut c = Stream::connect(server.address()).unwrap();
    let id = joined(&events);
    assert!(matches!(
        server.broadcast(&[0; 1025]),
        Err(Error::TooLarge { len: 1025, .. })
    ));
    assert!(matches!(
        server.send_to(id, &[0; 1025]),
        Err(Error::TooLarge { .. })
    ));
    server.send_to(id, &[7; 1024]).unwrap();
    assert_eq!(c.recv_bytes_timeout(PATIENCE).unwrap(), vec![7; 1024]);
    c.send_bytes(&[0; 1025]).unwrap();
    assert!(matches!(left(&events), (i, LeaveReason::Protocol(_)) if i == id));
}

#[test]
fn a_thousand_clients_come_and_go_leaving_no_descriptor_or_thread() {
    enter(ROLES);
    // In a process of its own: the other tests' descriptors and threads stay out of the count.
    let mut child = Command::new("thousand-cycles").spawn().unwrap();
    child.join_timeout(Duration::from_secs(120)).unwrap();
}

#[test]
fn shutdown_delivers_what_was_queued_closes_everyone_and_ends_in_time() {
    let (addr, path) = unix_address();
    let opts = ServerOptions {
        linger: Duration::from_millis(300),
        ..ServerOptions::default()
    };
    let (server, events) = Server::start_with(Listener::bind(&addr).unwrap(), opts).unwrap();
    let mut clients: Vec<Stream> = (0..3).map(|_| Stream::connect(&addr).unwrap()).collect();
    let ids: Vec<ClientId> = (0..3).map(|_| joined(&events)).collect();
    // One client sends a message that is never taken in time; one never reads.
    clients[2].send_bytes(b"unheard").unwrap();
    assert_eq!(next(&events), Event::Message(ids[2], b"unheard".to_vec()));
    assert_eq!(server.broadcast(b"closing time").unwrap(), 3);
    let started = Instant::now();
    server.shutdown();
    // Nobody closed their end: the linger ran out and the server closed for them.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert_gone(&path);
    for c in &mut clients[..2] {
        assert_eq!(recv_text(c), "closing time");
        expect_closed(c);
    }
    let mut gone: Vec<_> = (0..3).map(|_| left(&events)).collect();
    gone.sort_by_key(|(id, _)| *id);
    assert_eq!(
        gone,
        ids.iter()
            .map(|&id| (id, LeaveReason::Shutdown))
            .collect::<Vec<_>>()
    );
    assert!(matches!(
        events.recv_timeout(PATIENCE),
        Err(RecvTimeoutError::Disconnected)
    ));
    assert!(events.recv().is_none());
    assert!(server.clients().is_empty());
    // Once is enough.
    server.shutdown();
    assert!(Stream::connect(&addr).is_err());
}

#[test]
fn an_application_slow_to_take_events_holds_clients_back_but_not_shutdown() {
    let opts = ServerOptions {
        events: 4,
        linger: Duration::from_millis(200),
        ..ServerOptions::default()
    };
    // Unix socket buffers are small: a few messages fill them.
    let addr: Address = format!("unix-abstract://{}", ipckit_core::unique_name("slow"))
        .parse()
        .unwrap();
    let (server, events) = Server::start_with(Listener::bind(&addr).unwrap(), opts).unwrap();
    let mut c = Stream::connect(server.address()).unwrap();
    let id = joined(&events);
    // More than fit in the events, and in the socket buffers too: the client waits.
    let sender = std::thread::spawn(move || {
        for i in 0..200u32 {
            if c.send_bytes(&numbered(i, MESSAGE)).is_err() {
                return (c, i);
            }
        }
        (c, 200)
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!sender.is_finished(), "the client was never held back");
    for i in 0..200u32 {
        match next(&events) {
            Event::Message(from, m) => assert_eq!((from, number(&m)), (id, Some(i))),
            e => panic!("unexpected {e:?}"),
        }
    }
    let (mut c, sent) = sender.join().unwrap();
    assert_eq!(sent, 200);
    // Now fill the events again and never take them: shutdown still ends.
    std::thread::spawn(move || {
        for i in 0..50u32 {
            if c.send_bytes(&numbered(i, 16)).is_err() {
                break;
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    });
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    drop(server);
    assert!(started.elapsed() < Duration::from_secs(5));
    // The messages already taken in stay; the leave comes last.
    let mut rest = 0;
    loop {
        match events.recv_timeout(PATIENCE) {
            Ok(Event::Message(..)) => rest += 1,
            Ok(Event::Left(i, why)) => {
                assert_eq!((i, why), (id, LeaveReason::Shutdown));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(rest <= 4, "{rest} messages for room for 4");
    assert!(events.recv().is_none());
}

#[test]
fn a_listener_with_an_authkey_admits_only_clients_that_know_it() {
    let (server, events) =
        Server::start(Listener::bind(&tcp_any()).unwrap().authkey(b"open sesame")).unwrap();
    let keyed = |key: &[u8]| ConnectOptions {
        timeout: Some(PATIENCE),
        retry: false,
        authkey: Some(key.to_vec()),
    };
    let intruder = Stream::connect_with(server.address(), &keyed(b"guess"));
    assert!(intruder.is_err());
    let mut friend = Stream::connect_with(server.address(), &keyed(b"open sesame")).unwrap();
    let id = joined(&events);
    friend.send_bytes(b"hi").unwrap();
    assert_eq!(next(&events), Event::Message(id, b"hi".to_vec()));
    assert_eq!(server.clients(), vec![id]);
}
