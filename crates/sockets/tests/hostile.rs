//! Clients a server must survive, across real processes: clients that connect and say
//! nothing in the authkey handshake (they hold up no join, no `accept_timeout`, no
//! shutdown), clients that announce huge messages and send a few bytes (memory follows the
//! bytes that came, and they are dropped at the stall limit), a client that sends faster
//! than the application takes events (the bytes waiting are bounded), and plain `socket`
//! programs (the Python tutorial's), which a line or raw server serves and a framed server
//! turns away.
//!
//! Every wait has a timeout; a server whose memory is measured runs in a process of its own.

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::unix::net::UnixStream,
    path::Path,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use ipckit_sockets::{
    Address, Child, ClientId, Command, ConnectOptions, Connection, Ctx, Event, Events, Framing,
    LeaveReason, Listener, RecvBytes, Role, RoleResult, SendBytes, Server, ServerOptions,
    connect_with, enter,
};
use ipckit_testkit::{Bounded, PATIENCE, join_ok, python, wait_until};

const ROLES: &[Role] = &[
    Role::new("silent-clients", silent_clients),
    Role::new("hoarded-server", hoarded_server),
    Role::new("flooding-client", flooding_client),
];

/// Clients the memory test sends in.
const HOARDERS: usize = 100;
/// What each of them announces: the largest message the server takes (64 MiB).
const ANNOUNCED: u32 = 64 << 20;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn tcp_any() -> Address {
    "tcp://127.0.0.1:0".parse().unwrap()
}

/// A control connection to a child process: this end, and the end to hand it.
fn control() -> (Connection, Connection) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    (
        Connection::from_fd(ours.into()).unwrap(),
        Connection::from_fd(theirs.into()).unwrap(),
    )
}

/// The next control message, as text.
fn report(ctl: &mut Connection) -> String {
    let m = ctl
        .recv_bytes_timeout(PATIENCE)
        .unwrap_or_else(|e| panic!("no report from the child in {PATIENCE:?}: {e}"));
    String::from_utf8(m).unwrap()
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

/// Starts `n` clients in a process of their own that connect to `addr` and say nothing;
/// returns once they are all connected. They go when the process is dropped (killed).
fn silent(addr: &Address, n: usize) -> (Child, Connection) {
    let (mut ctl, theirs) = control();
    let child = Command::new("silent-clients")
        .arg(&(addr.to_string(), n))
        .unwrap()
        .handle("ctl", theirs)
        .spawn()
        .unwrap();
    assert_eq!(report(&mut ctl), format!("{n} connected"));
    (child, ctl)
}

/// Runs `f` on another thread and gives its result; fails the test if it takes longer than
/// `limit` (a hang becomes a failure, not a stuck test).
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(_) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => panic!("{what}: still running after {limit:?}"),
        },
    }
}

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib << 10
}

/// Whether every thread of process `pid` sleeps (none is running, or about to).
fn all_asleep(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name, which is in parentheses.
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('S'))
        })
    })
}

/// Bytes received and not yet read by the process, on each established TCP connection
/// whose local port is `port` (from `/proc/PID/net/tcp`).
fn unread_on_port(pid: u32, port: u16) -> Vec<u64> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()?;
            // 01: established.
            (local_port == port && f[3] == "01").then(|| {
                let rx = f[4].split(':').nth(1).unwrap_or("0");
                u64::from_str_radix(rx, 16).unwrap_or(0)
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Roles run by child processes
// ---------------------------------------------------------------------------------------

/// Connects `n` clients to the address given and says nothing on any of them, until the
/// parent closes the control connection.
fn silent_clients(ctx: &mut Ctx) -> RoleResult {
    let (addr, n): (String, usize) = ctx.arg()?;
    let mut ctl: Connection = ctx.handle("ctl")?;
    let Address::Tcp(at) = addr.parse()? else {
        return Err(format!("no TCP address: {addr}").into());
    };
    let streams: Vec<TcpStream> = (0..n)
        .map(|_| TcpStream::connect(at))
        .collect::<Result<_, _>>()?;
    ctl.send_bytes(format!("{n} connected").as_bytes())?;
    let _ = ctl.recv_bytes_timeout(PATIENCE);
    drop(streams);
    Ok(())
}

/// A byte-level server with the stall limit given: tells the parent its address, then
/// when `HOARDERS` clients have joined, then every message and leave as it comes, until
/// `HOARDERS` clients have left.
fn hoarded_server(ctx: &mut Ctx) -> RoleResult {
    let stall_ms: u64 = ctx.arg()?;
    let mut ctl: Connection = ctx.handle("ctl")?;
    let opts = ServerOptions::new().stall_limit(Duration::from_millis(stall_ms));
    let (server, events) = Server::start_raw_with(Listener::bind(&tcp_any())?, &opts)?;
    ctl.send_bytes(server.address().to_string().as_bytes())?;
    let (mut joins, mut leaves) = (0, 0);
    while leaves < HOARDERS {
        match events.recv_timeout(PATIENCE)? {
            Event::Joined { .. } => {
                joins += 1;
                if joins == HOARDERS {
                    ctl.send_bytes(b"all joined")?;
                }
            }
            Event::Message { msg, .. } => {
                ctl.send_bytes(format!("message of {} bytes", msg.len()).as_bytes())?;
            }
            Event::Left { reason, .. } => {
                leaves += 1;
                if reason != LeaveReason::Stalled {
                    ctl.send_bytes(format!("left: {reason}").as_bytes())?;
                }
            }
        }
    }
    ctl.send_bytes(b"all left")?;
    Ok(())
}

/// Sends messages of 1 MiB, framed, over a plain Unix socket to the path given until one
/// cannot begin within a second (the server holds back) or 64 went; says how many went
/// whole.
fn flooding_client(ctx: &mut Ctx) -> RoleResult {
    let name: String = ctx.arg()?;
    let mut ctl: Connection = ctx.handle("ctl")?;
    use std::os::linux::net::SocketAddrExt;
    let at = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let mut s = UnixStream::connect_addr(&at)?;
    s.set_write_timeout(Some(Duration::from_secs(1)))?;
    let frame = [&(1u32 << 20).to_be_bytes()[..], &vec![7u8; 1 << 20]].concat();
    let mut sent = 0;
    while sent < 64 && s.write_all(&frame).is_ok() {
        sent += 1;
    }
    ctl.send_bytes(sent.to_string().as_bytes())?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Silent clients in the handshake
// ---------------------------------------------------------------------------------------

#[test]
fn twenty_silent_clients_in_the_handshake_hold_up_no_join() {
    enter(ROLES);
    let listener = Listener::bind(&tcp_any()).unwrap().authkey(b"k");
    let (server, events): (Server<String>, Events<String>) = Server::start(listener).unwrap();
    let (_silent, _ctl) = silent(server.address(), 20);
    // The default connect: 10 s, the time one silent client's handshake may take.
    let friend = connect_with(server.address(), &ConnectOptions::new().authkey(b"k"))
        .expect("a client that knows the key joins while others say nothing");
    let id = joined(&events);
    let mut say = friend.into_sender::<String>();
    say.send(&"hi".to_string()).unwrap();
    assert_eq!(
        next(&events),
        Event::Message {
            from: id,
            msg: "hi".into()
        }
    );
    assert_eq!(server.clients(), vec![id]);
}

#[test]
fn shutdown_keeps_its_linger_with_silent_clients_in_the_handshake() {
    enter(ROLES);
    let listener = Listener::bind(&tcp_any()).unwrap().authkey(b"k");
    let linger = Duration::from_millis(200);
    let (server, events): (Server<String>, Events<String>) =
        Server::start_with(listener, &ServerOptions::new().linger(linger)).unwrap();
    let (_silent, _ctl) = silent(server.address(), 20);
    // The accept thread has them in hand.
    let addr = server.address().clone();
    let Address::Tcp(at) = addr else {
        unreachable!()
    };
    wait_until("the silent clients are accepted", || {
        unread_on_port(std::process::id(), at.port()).len() >= 20
    });
    let started = Instant::now();
    server.shutdown();
    let took = started.elapsed();
    // The promise is about the linger (200 ms); 5 s is far above it, and below the 10 s a
    // handshake may take.
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert!(matches!(
        events.recv_timeout(PATIENCE),
        Err(ipckit_sockets::RecvTimeoutError::Disconnected)
    ));
}

#[test]
fn a_silent_client_holds_neither_accept_timeout_nor_the_next_client() {
    enter(ROLES);
    let listener = Listener::bind(&tcp_any()).unwrap().authkey(b"k");
    let addr = listener.address().clone();
    let (_silent, _ctl) = silent(&addr, 1);
    // Only the silent client: the timeout holds.
    let (r, listener) = within(Duration::from_secs(5), "accept_timeout", move || {
        (
            listener
                .accept_timeout(Duration::from_millis(300))
                .map(drop),
            listener,
        )
    });
    assert!(matches!(r, Err(ipckit_sockets::Error::Timeout)), "{r:?}");
    // A client that knows the key comes next, and is accepted first.
    let friend = thread::spawn(move || {
        let mut c = connect_with(
            &addr,
            &ConnectOptions::new().timeout(PATIENCE).authkey(b"k"),
        )?;
        c.send_bytes(b"first through")?;
        Ok::<_, ipckit_sockets::Error>(c)
    });
    let mut conn = listener.accept_timeout(PATIENCE).unwrap();
    assert_eq!(conn.recv_bytes_timeout(PATIENCE).unwrap(), b"first through");
    drop(friend.join().unwrap().unwrap());
}

// ---------------------------------------------------------------------------------------
// Memory: huge announcements, stalls, floods
// ---------------------------------------------------------------------------------------

#[test]
fn clients_announcing_huge_messages_cost_only_what_they_send_and_are_dropped_when_they_stall() {
    enter(ROLES);
    let (mut ctl, theirs) = control();
    let stall = Duration::from_secs(5);
    let mut server = Command::new("hoarded-server")
        .arg(&(stall.as_millis() as u64))
        .unwrap()
        .handle("ctl", theirs)
        .spawn()
        .unwrap();
    let pid = server.pid();
    let addr: Address = report(&mut ctl).parse().unwrap();
    let Address::Tcp(at) = addr else {
        unreachable!()
    };
    let mut hoarders: Vec<TcpStream> = (0..HOARDERS)
        .map(|_| TcpStream::connect(at).unwrap())
        .collect();
    assert_eq!(report(&mut ctl), "all joined");
    let before = rss(pid);
    // Each announces 64 MiB and sends one byte of it.
    for h in &mut hoarders {
        h.write_all(&ANNOUNCED.to_be_bytes()).unwrap();
        h.write_all(b"x").unwrap();
    }
    // Read, and every reader waiting again for more.
    wait_until("the server read every header", || {
        let unread = unread_on_port(pid, at.port());
        unread.len() == HOARDERS && unread.iter().all(|&n| n == 0) && all_asleep(pid)
    });
    let grown = rss(pid).saturating_sub(before);
    // Held whole, it would be 100 MiB (1 MiB each, as it was).
    assert!(
        grown < 8 << 20,
        "{HOARDERS} clients that sent 5 bytes each cost {} KiB",
        grown >> 10
    );
    // A well-behaved client is served meanwhile.
    let mut good = TcpStream::connect(at).unwrap();
    good.write_all(&[0, 0, 0, 5]).unwrap();
    good.write_all(b"hello").unwrap();
    assert_eq!(report(&mut ctl), "message of 5 bytes");
    // At the stall limit each hoarder is dropped (any other reason is reported).
    drop(good);
    let mut leaves = Vec::new();
    loop {
        match report(&mut ctl).as_str() {
            "all left" => break,
            other => leaves.push(other.to_string()),
        }
    }
    assert_eq!(leaves, vec!["left: closed the connection".to_string()]);
    for h in &mut hoarders {
        h.set_read_timeout(Some(PATIENCE)).unwrap();
        match h.read(&mut [0; 8]) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("expected the hoarder cut off, got {other:?}"),
        }
    }
    join_ok(&mut server);
}

#[test]
fn a_client_flooding_the_events_is_held_back_at_their_byte_bound() {
    enter(ROLES);
    let name = ipckit_core::unique_name("flood");
    let addr = Address::UnixAbstract(name.clone());
    // Room for 1024 messages, but only 2 MiB of them.
    let opts = ServerOptions::new().event_bytes(2 << 20);
    let (server, events) = Server::start_raw_with(Listener::bind(&addr).unwrap(), &opts).unwrap();
    let (mut ctl, theirs) = control();
    let mut flooder = Command::new("flooding-client")
        .arg(&name)
        .unwrap()
        .handle("ctl", theirs)
        .spawn()
        .unwrap();
    let id = joined(&events);
    // Nobody takes events until the client is held back.
    let sent: usize = report(&mut ctl).parse().unwrap();
    join_ok(&mut flooder);
    // 2 MiB waiting, one message in a reader's hands, and what the socket buffers hold.
    assert!(sent < 16, "{sent} messages of 1 MiB went in");
    let mut taken = 0;
    loop {
        match next(&events) {
            Event::Message { from, msg } => {
                assert_eq!((from, msg.len()), (id, 1 << 20));
                taken += 1;
            }
            Event::Left { client, .. } => {
                assert_eq!(client, id);
                break;
            }
            e => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(taken, sent);
    drop(server);
}

// ---------------------------------------------------------------------------------------
// Plain byte streams: the Python tutorial's socket programs
// ---------------------------------------------------------------------------------------

/// The Python tutorial's echo client, unchanged but for its port.
const TUTORIAL_CLIENT: &str = r#"import socket

HOST = '127.0.0.1'  # The server's hostname or IP address
PORT = 65432        # The port used by the server

with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.connect((HOST, PORT))
    s.sendall(b'Hello, world')
    data = s.recv(1024)

print(f"Received {data!r}")
"#;

fn tutorial_client(port: u16) -> String {
    TUTORIAL_CLIENT.replace("PORT = 65432", &format!("PORT = {port}"))
}

fn run_python(py: &Path, script: &str) -> String {
    let out = Bounded::python(py, script, &[])
        .expect("start python")
        .wait_ok("python");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_framed_server_turns_a_plain_socket_client_away_and_serves_on() {
    let Some(py) = python(6..=99) else {
        return;
    };
    let (server, events) = Server::start_raw(Listener::bind(&tcp_any()).unwrap()).unwrap();
    let Address::Tcp(at) = server.address().clone() else {
        unreachable!()
    };
    // "Hell" reads as a length of 1.2 GB: above the maximum, so refused unread.
    let out = run_python(&py, &tutorial_client(at.port()));
    assert_eq!(out.trim(), "Received b''");
    let id = joined(&events);
    match next(&events) {
        Event::Left {
            client,
            reason: LeaveReason::Protocol(why),
        } => {
            assert_eq!(client, id);
            assert!(why.contains("exceeds the maximum"), "{why}");
        }
        e => panic!("expected the plain client dropped, got {e:?}"),
    }
    // A client that speaks frames is served on.
    let mut framed = ipckit_sockets::connect(server.address()).unwrap();
    let id = joined(&events);
    framed.send_bytes(b"Hello, world").unwrap();
    assert_eq!(
        next(&events),
        Event::Message {
            from: id,
            msg: b"Hello, world".to_vec()
        }
    );
}

#[test]
fn a_raw_server_echoes_the_tutorials_client() {
    let Some(py) = python(6..=99) else {
        return;
    };
    let opts = ServerOptions::new().framing(Framing::Raw);
    let (server, events) =
        Server::start_raw_with(Listener::bind(&tcp_any()).unwrap(), &opts).unwrap();
    let Address::Tcp(at) = server.address().clone() else {
        unreachable!()
    };
    let client = Bounded::python(&py, &tutorial_client(at.port()), &[]).unwrap();
    let id = joined(&events);
    let mut got = Vec::new();
    while got.len() < 12 {
        match next(&events) {
            Event::Message { from, msg } => {
                assert_eq!(from, id);
                server.send_to(id, &msg).unwrap();
                got.extend(msg);
            }
            e => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(got, b"Hello, world");
    let out = client.wait_ok("the tutorial's client");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Received b'Hello, world'"
    );
}

#[test]
fn a_line_server_serves_plain_socket_clients_line_by_line() {
    let Some(py) = python(6..=99) else {
        return;
    };
    let opts = ServerOptions::new().framing(Framing::Lines);
    let (server, events) =
        Server::start_raw_with(Listener::bind(&tcp_any()).unwrap(), &opts).unwrap();
    let Address::Tcp(at) = server.address().clone() else {
        unreachable!()
    };
    // Two lines in one write and a third cut in two, with a Windows line end.
    let script = format!(
        r#"import socket
s = socket.create_connection(("127.0.0.1", {port}))
s.sendall(b"one\ntwo\nthr")
s.sendall(b"ee\r\n")
f = s.makefile("rb")
print(f.readline())
print(f.readline())
"#,
        port = at.port()
    );
    let client = Bounded::python(&py, &script, &[]).unwrap();
    let id = joined(&events);
    for want in ["one", "two", "three"] {
        assert_eq!(
            next(&events),
            Event::Message {
                from: id,
                msg: want.as_bytes().to_vec()
            }
        );
    }
    server.send_to(id, &b"got 3 lines".to_vec()).unwrap();
    server.send_to(id, &b"bye".to_vec()).unwrap();
    // A line cannot hold a newline: refused before it is queued.
    assert!(matches!(
        server.broadcast(&b"two\nlines".to_vec()),
        Err(ipckit_sockets::Error::Malformed(_))
    ));
    let out = client.wait_ok("the line client");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "b'got 3 lines\\n'\nb'bye\\n'\n"
    );
}
