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

use ipckit_core::temp_path;
use ipckit_sockets::{
    Address, ClientId, Command, ConnectOptions, Connection, Ctx, Error, Event, Events, LeaveReason,
    Listener, Reader, Receiver, RecvBytes, RecvTimeoutError, Role, RoleResult, SendBytes, Sender,
    Server, ServerOptions, TryRecvError, Writer, connect, connect_with, enter,
};
use ipckit_testkit::{PATIENCE, join_ok, wait_until};
use serde::{Deserialize, Serialize};

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
    ConnectOptions::new().timeout(PATIENCE).retry(true)
}

/// The next event, failing the test if none comes in time.
fn next<T, C>(events: &Events<T, C>) -> Event<T> {
    events
        .recv_timeout(PATIENCE)
        .unwrap_or_else(|e| panic!("no event in {PATIENCE:?}: {e}"))
}

fn joined<T: std::fmt::Debug, C>(events: &Events<T, C>) -> ClientId {
    match next(events) {
        Event::Joined { client, .. } => client,
        e => panic!("expected a join, got {e:?}"),
    }
}

fn left<T: std::fmt::Debug, C>(events: &Events<T, C>) -> (ClientId, LeaveReason) {
    match next(events) {
        Event::Left { client, reason } => (client, reason),
        e => panic!("expected a leave, got {e:?}"),
    }
}

/// A message of a text server.
fn said(from: ClientId, text: &str) -> Event<String> {
    Event::Message {
        from,
        msg: text.to_string(),
    }
}

/// A message of a byte server.
fn sent(from: ClientId, bytes: &[u8]) -> Event<Vec<u8>> {
    Event::Message {
        from,
        msg: bytes.to_vec(),
    }
}

/// A client of a text server (`Server<String>`): its connection split, each half typed.
struct Talker {
    tx: Sender<String, Writer>,
    rx: Receiver<String, Reader>,
}

impl Talker {
    fn new(conn: Connection) -> Talker {
        let (reader, writer) = conn.split().unwrap();
        Talker {
            tx: writer.into_sender(),
            rx: reader.into_receiver(),
        }
    }

    fn connect(addr: &Address) -> Talker {
        Talker::new(connect(addr).unwrap())
    }

    fn say(&mut self, text: &str) {
        self.tx.send(&text.to_string()).unwrap();
    }

    fn hear(&mut self) -> String {
        self.rx.recv_timeout(PATIENCE).expect("a message in time")
    }

    /// The stream ends (the server closed it) within `PATIENCE`.
    fn expect_closed(&mut self) {
        match self.rx.recv_timeout(PATIENCE) {
            Err(RecvTimeoutError::Disconnected) => {}
            other => panic!("expected the server to close, got {other:?}"),
        }
    }
}

/// The stream ends (the server closed it) within `PATIENCE`.
fn expect_closed(s: &mut Connection) {
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
/// answers "ok" and leaves. Every message is a `String`, postcard-encoded both ways.
fn chatter(ctx: &mut Ctx) -> RoleResult {
    let (addr, me, n): (String, u32, u32) = ctx.arg()?;
    let (reader, writer) = connect_with(&addr.parse()?, &patient())?.split()?;
    let (mut tx, mut rx) = (
        writer.into_sender::<String>(),
        reader.into_receiver::<String>(),
    );
    tx.send(&format!("hello from {me}"))?;
    let mut got = Vec::new();
    loop {
        let m = rx.recv_timeout(PATIENCE)?;
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
    tx.send(&format!("ok {me}"))?;
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
    let mut s = connect_with(&addr.parse()?, &patient())?;
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
    let mut s = connect_with(&addr.parse()?, &patient())?;
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

/// Counts a byte server's events; anything but a join, a message or a clean leave fails.
#[derive(Default)]
struct Tally {
    joins: u32,
    messages: u32,
    leaves: u32,
}

impl Tally {
    fn take(&mut self, e: Event<Vec<u8>>) -> RoleResult {
        match e {
            Event::Joined { .. } => self.joins += 1,
            Event::Message { .. } => self.messages += 1,
            Event::Left {
                reason: LeaveReason::Closed,
                ..
            } => self.leaves += 1,
            e => return fail(format!("unexpected {e:?}")),
        }
        Ok(())
    }
}

/// A thousand clients connect and go, one after the other; no descriptor or thread stays.
fn thousand_cycles(_: &mut Ctx) -> RoleResult {
    let (addr, path) = unix_address();
    let (server, events) = Server::start_raw(Listener::bind(&addr)?)?;
    let threads_before = count_entries("/proc/self/task");
    let fds_before = count_entries("/proc/self/fd");
    let mut tally = Tally::default();
    for i in 0..1000u32 {
        let mut s = connect_with(&addr, &patient())?;
        if i % 2 == 0 {
            s.send_bytes(&i.to_be_bytes())?;
        }
        drop(s);
        // Take events as they come, so the server never waits for room.
        while let Ok(e) = events.try_recv() {
            tally.take(e)?;
        }
    }
    while tally.leaves < 1000 {
        tally.take(events.recv_timeout(PATIENCE)?)?;
    }
    let Tally {
        joins,
        messages,
        leaves,
    } = tally;
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
fn many_client_processes_hear_typed_broadcasts_to_all_and_to_all_but_the_sender() {
    enter(ROLES);
    const N: u32 = 6;
    let (addr, path) = unix_address();
    let (server, events): (Server<String>, Events<String>) =
        Server::start(Listener::bind(&addr).unwrap()).unwrap();
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
            Event::Joined { peer, .. } => {
                joined_pids.insert(peer.credentials.expect("a Unix peer has credentials").pid);
            }
            Event::Message { from, msg } => {
                let i: u32 = msg.strip_prefix("hello from ").unwrap().parse().unwrap();
                who.insert(from, i);
            }
            e => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(joined_pids, pids);
    assert_eq!(server.clients(), who.keys().copied().collect::<Vec<_>>());
    assert_eq!(server.broadcast(&"to all".into()).unwrap(), N as usize);
    for (&id, i) in &who {
        assert_eq!(
            server.broadcast_except(id, &format!("from {i}")).unwrap(),
            N as usize - 1
        );
    }
    assert_eq!(server.broadcast(&"end".into()).unwrap(), N as usize);
    // Each answers "ok" (it checked what it got) and leaves.
    let (mut oks, mut gone) = (BTreeSet::new(), BTreeSet::new());
    while gone.len() < N as usize {
        match next(&events) {
            Event::Message { from, msg } => {
                assert_eq!(msg, format!("ok {}", who[&from]));
                oks.insert(from);
            }
            Event::Left {
                client,
                reason: LeaveReason::Closed,
            } => {
                assert!(oks.contains(&client), "{client} left before its ok");
                gone.insert(client);
            }
            e => panic!("unexpected {e:?}"),
        }
    }
    for child in &mut children {
        join_ok(child);
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
        let (server, events): (Server<String>, Events<String>) =
            Server::start(Listener::bind(&addr).unwrap()).unwrap();
        let addr = server.address().clone();
        let mut a = Talker::connect(&addr);
        let a_id = joined(&events);
        let mut b = Talker::connect(&addr);
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
        server.send_to(b_id, &"you are leaving".into()).unwrap();
        assert!(server.disconnect(b_id, "kicked by the test"));
        assert_eq!(b.hear(), "you are leaving");
        b.expect_closed();
        drop(b);
        assert_eq!(
            left(&events),
            (b_id, LeaveReason::Disconnected("kicked by the test".into()))
        );
        assert_eq!(server.clients(), vec![a_id]);
        assert!(matches!(
            server.send_to(b_id, &"too late".into()),
            Err(Error::Disconnected)
        ));
        assert!(!server.disconnect(b_id, "again"));

        // Messages come in order, tagged with their sender.
        for m in ["one", "two", "three"] {
            a.say(m);
        }
        for m in ["one", "two", "three"] {
            assert_eq!(next(&events), said(a_id, m));
        }
        assert_eq!(server.broadcast_except(a_id, &"nobody".into()).unwrap(), 0);
        assert_eq!(server.broadcast(&"just a".into()).unwrap(), 1);
        assert_eq!(a.hear(), "just a");
        // A message sent just before closing still arrives, before the leave.
        a.say("last words");
        drop(a);
        assert_eq!(next(&events), said(a_id, "last words"));
        assert_eq!(left(&events), (a_id, LeaveReason::Closed));
        assert!(server.clients().is_empty());
        assert_eq!(LeaveReason::Closed.to_string(), "closed the connection");
        server.shutdown();
        assert!(matches!(events.try_recv(), Err(TryRecvError::Disconnected)));
        assert!(matches!(events.recv(), Err(Error::Disconnected)));
    }
    assert_gone(&path);
}

/// What the clients of the undecodable test speak.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Msg {
    Ping(u32),
    Text(String),
}

#[test]
fn a_message_that_does_not_decode_gets_its_sender_dropped_and_nobody_else() {
    let (unix, path) = unix_address();
    for addr in [unix, tcp_any()] {
        let (server, events): (Server<Msg>, Events<Msg>) =
            Server::start(Listener::bind(&addr).unwrap()).unwrap();
        let addr = server.address().clone();
        let (reader, writer) = connect(&addr).unwrap().split().unwrap();
        let (mut good, mut good_rx) = (writer.into_sender::<Msg>(), reader.into_receiver::<Msg>());
        let good_id = joined(&events);
        // A client that frames correctly but does not speak `Msg`.
        let mut bad = connect(&addr).unwrap();
        let bad_id = joined(&events);
        let mut ok = Vec::new();
        ipckit_sockets::Codec::encode(&ipckit_sockets::Postcard, &Msg::Ping(7), &mut ok).unwrap();
        bad.send_bytes(&ok).unwrap();
        // Variant 9 of `Msg` does not exist; then more that must not arrive.
        bad.send_bytes(&[9, 1, 2]).unwrap();
        bad.send_bytes(&ok).unwrap();
        assert_eq!(
            next(&events),
            Event::Message {
                from: bad_id,
                msg: Msg::Ping(7)
            }
        );
        match left(&events) {
            (id, LeaveReason::Undecodable(e)) if id == bad_id => {
                assert!(!e.is_empty());
                assert!(
                    LeaveReason::Undecodable(e)
                        .to_string()
                        .contains("does not decode")
                );
            }
            other => panic!("expected {bad_id} dropped as undecodable, got {other:?}"),
        }
        expect_closed(&mut bad);
        // The server serves on.
        good.send(&Msg::Text("still here".into())).unwrap();
        assert_eq!(
            next(&events),
            Event::Message {
                from: good_id,
                msg: Msg::Text("still here".into())
            }
        );
        assert_eq!(server.broadcast(&Msg::Ping(1)).unwrap(), 1);
        assert_eq!(good_rx.recv_timeout(PATIENCE).unwrap(), Msg::Ping(1));
        assert_eq!(server.clients(), vec![good_id]);
        drop((good, good_rx));
        assert_eq!(left(&events), (good_id, LeaveReason::Closed));
    }
    assert_gone(&path);
}

#[test]
fn a_client_that_stops_reading_is_dropped_for_outbox_overflow_and_the_others_get_everything() {
    enter(ROLES);
    const N: u32 = 100;
    const READERS: usize = 3;
    let (addr, path) = unix_address();
    let opts = ServerOptions::new().outbox(16);
    let (server, events) = Server::start_raw_with(Listener::bind(&addr).unwrap(), &opts).unwrap();
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
            Event::Joined { client, peer } if peer.credentials.unwrap().pid == lagger_pid => {
                lagger_id = Some(client);
            }
            Event::Joined { .. } => {}
            Event::Message { msg, .. } => {
                assert_eq!(msg, b"ready");
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
                Event::Message { msg, .. } => {
                    assert_eq!(msg, format!("ack {i}").as_bytes());
                    acks += 1;
                }
                // A reader that took everything goes.
                Event::Left {
                    client,
                    reason: LeaveReason::Closed,
                } if client != lagger_id && i == N - 1 => {
                    readers_gone += 1;
                }
                Event::Left { client, reason } => {
                    assert!(!lagger_in && dropped_at.is_none(), "message {i}");
                    assert_eq!((client, &reason), (lagger_id, &LeaveReason::OutboxOverflow));
                    assert_eq!(reason.to_string(), "outbox overflow");
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
    join_ok(&mut lagger);
    for r in &mut readers {
        join_ok(r);
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
        let (server, events) = Server::start_raw(Listener::bind(&addr).unwrap()).unwrap();
        let addr = server.address().clone();
        let mut good = connect(&addr).unwrap();
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
            assert_eq!(next(&events), sent(good_id, b"still here"));
            assert_eq!(server.broadcast(&b"all good".to_vec()).unwrap(), 1);
            assert_eq!(good.recv_bytes_timeout(PATIENCE).unwrap(), b"all good");
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
    let opts = ServerOptions::new().max_message(1024);
    let (server, events) =
        Server::start_raw_with(Listener::bind(&tcp_any()).unwrap(), &opts).unwrap();
    let mut c = connect(server.address()).unwrap();
    let id = joined(&events);
    assert!(matches!(
        server.broadcast(&vec![0; 1025]),
        Err(Error::TooLarge { len: 1025, .. })
    ));
    assert!(matches!(
        server.send_to(id, &vec![0; 1025]),
        Err(Error::TooLarge { .. })
    ));
    server.send_to(id, &vec![7; 1024]).unwrap();
    assert_eq!(c.recv_bytes_timeout(PATIENCE).unwrap(), vec![7; 1024]);
    c.send_bytes(&[0; 1025]).unwrap();
    assert!(matches!(left(&events), (i, LeaveReason::Protocol(_)) if i == id));
}

#[test]
fn a_thousand_clients_come_and_go_leaving_no_descriptor_or_thread() {
    enter(ROLES);
    // In a process of its own: the other tests' descriptors and threads stay out of the count.
    let mut child = Command::new("thousand-cycles").spawn().unwrap();
    match child.join_timeout(Duration::from_secs(120)) {
        Ok(status) => assert!(status.success(), "{status}"),
        Err(e) => panic!("thousand-cycles: {e}"),
    }
}

#[test]
fn shutdown_delivers_what_was_queued_closes_everyone_and_ends_in_time() {
    let (addr, path) = unix_address();
    let opts = ServerOptions::new().linger(Duration::from_millis(300));
    let (server, events): (Server<String>, Events<String>) =
        Server::start_with(Listener::bind(&addr).unwrap(), &opts).unwrap();
    let mut clients: Vec<Talker> = (0..3).map(|_| Talker::connect(&addr)).collect();
    let ids: Vec<ClientId> = (0..3).map(|_| joined(&events)).collect();
    // One client sends a message that is never taken in time; one never reads.
    clients[2].say("unheard");
    assert_eq!(next(&events), said(ids[2], "unheard"));
    assert_eq!(server.broadcast(&"closing time".into()).unwrap(), 3);
    let started = Instant::now();
    server.shutdown();
    // Nobody closed their end: the linger ran out and the server closed for them.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert_gone(&path);
    for c in &mut clients[..2] {
        assert_eq!(c.hear(), "closing time");
        c.expect_closed();
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
    assert!(matches!(events.recv(), Err(Error::Disconnected)));
    assert!(events.iter().next().is_none());
    assert!(server.clients().is_empty());
    // Once is enough.
    server.shutdown();
    assert!(connect(&addr).is_err());
}

#[test]
fn the_events_iterator_yields_every_event_and_ends_when_the_server_stops() {
    let addr = Address::UnixAbstract(ipckit_core::unique_name("iter"));
    let (server, events): (Server<u32>, Events<u32>) =
        Server::start(Listener::bind(&addr).unwrap()).unwrap();
    let mut c = connect(&addr).unwrap().into_sender::<u32>();
    let id = joined(&events);
    for i in 0..5 {
        c.send(&i).unwrap();
    }
    drop(c);
    let reader = std::thread::spawn(move || events.into_iter().collect::<Result<Vec<_>, _>>());
    // Out of the server: its `Left` is on its way, and shutdown waits for it.
    wait_until("the client is gone", || server.clients().is_empty());
    server.shutdown();
    let all = reader.join().unwrap().unwrap();
    let mut want: Vec<Event<u32>> = (0..5).map(|msg| Event::Message { from: id, msg }).collect();
    want.push(Event::Left {
        client: id,
        reason: LeaveReason::Closed,
    });
    assert_eq!(all, want);
}

#[test]
fn an_application_slow_to_take_events_holds_clients_back_but_not_shutdown() {
    let opts = ServerOptions::new()
        .events(4)
        .linger(Duration::from_millis(200));
    // Unix socket buffers are small: a few messages fill them.
    let addr: Address = format!("unix-abstract://{}", ipckit_core::unique_name("slow"))
        .parse()
        .unwrap();
    let (server, events) = Server::start_raw_with(Listener::bind(&addr).unwrap(), &opts).unwrap();
    let mut c = connect(server.address()).unwrap();
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
            Event::Message { from, msg } => assert_eq!((from, number(&msg)), (id, Some(i))),
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
    for event in &events {
        match event.unwrap() {
            Event::Message { .. } => rest += 1,
            Event::Left { client, reason } => {
                assert_eq!((client, reason), (id, LeaveReason::Shutdown));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(rest <= 4, "{rest} messages for room for 4");
    assert!(matches!(events.recv(), Err(Error::Disconnected)));
}

#[test]
fn a_listener_with_an_authkey_admits_only_clients_that_know_it() {
    let (server, events): (Server<String>, Events<String>) =
        Server::start(Listener::bind(&tcp_any()).unwrap().authkey(b"open sesame")).unwrap();
    let keyed = |key: &[u8]| ConnectOptions::new().timeout(PATIENCE).authkey(key);
    let intruder = connect_with(server.address(), &keyed(b"guess"));
    assert!(
        matches!(
            intruder,
            Err(Error::Auth(ipckit_sockets::AuthError::Refused))
        ),
        "{intruder:?}"
    );
    let mut friend = Talker::new(connect_with(server.address(), &keyed(b"open sesame")).unwrap());
    let id = joined(&events);
    friend.say("hi");
    assert_eq!(next(&events), said(id, "hi"));
    assert_eq!(server.clients(), vec![id]);
}
