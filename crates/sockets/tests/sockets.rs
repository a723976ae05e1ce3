//! Sockets as servers and clients meet them: addresses, stale socket files, permissions,
//! peer credentials, connecting early and late, timeouts, half-close, the authkey handshake
//! (with Python 3.12+ at the other end too, and Python 3.11: refused in words by default,
//! a peer with `legacy_md5`), and UDP.
//!
//! Every blocking wait has a timeout, and every socket file a test makes is checked gone.

use std::{
    io::{self, ErrorKind},
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use ipckit_sockets::{
    Address, AuthError, Command, ConnectOptions, Connection, Ctx, Datagram, Error, Listener,
    MAX_DATAGRAM, RecvBytes, RecvTimeoutError, Role, RoleResult, SendBytes, TryRecvError, connect,
    connect_with, enter,
};
use ipckit_testkit::{Bounded, PATIENCE, python, wait_until};

const ROLES: &[Role] = &[
    Role::new("listen-and-wait", listen_and_wait),
    Role::new("connect-and-wait", connect_and_wait),
    Role::new("late-server", late_server),
];

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The `io::ErrorKind` of the OS error under `e`, if there is one.
fn kind(e: &Error) -> Option<ErrorKind> {
    e.io_error().map(io::Error::kind)
}

/// The options of a patient client: it waits for a server still starting.
fn patient() -> ConnectOptions {
    ConnectOptions::new().timeout(PATIENCE).retry(true)
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
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: still running after {limit:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the worker sends before it ends"),
        },
    }
}

/// A fresh socket path in the temporary directory; removed (if still there) when dropped,
/// so that a failing test leaves nothing behind either.
struct TempSock(PathBuf);

impl TempSock {
    fn new() -> Self {
        TempSock(ipckit_core::temp_path("sock"))
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn address(&self) -> Address {
        Address::Unix(self.0.clone())
    }

    fn text(&self) -> String {
        self.0.to_str().expect("a UTF-8 temporary path").to_string()
    }

    fn is_socket(&self) -> bool {
        std::fs::symlink_metadata(&self.0).is_ok_and(|m| m.file_type().is_socket())
    }

    fn mode(&self) -> u32 {
        std::fs::symlink_metadata(&self.0)
            .expect("the socket file")
            .permissions()
            .mode()
            & 0o777
    }

    fn assert_gone(&self) {
        assert!(
            std::fs::symlink_metadata(&self.0).is_err(),
            "{} was left behind",
            self.0.display()
        );
    }
}

impl Drop for TempSock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn recv(s: &mut impl RecvBytes) -> Vec<u8> {
    s.recv_bytes_timeout(PATIENCE).expect("a message in time")
}

fn expect_disconnected(s: &mut impl RecvBytes) {
    match s.recv_bytes_timeout(PATIENCE) {
        Err(RecvTimeoutError::Disconnected) => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
}

/// This process's user and group ids.
fn my_ids() -> (u32, u32) {
    let me = std::fs::metadata("/proc/self").expect("/proc/self");
    (me.uid(), me.gid())
}

/// A port nobody listens on (it was free a moment ago).
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

// ---------------------------------------------------------------------------------------
// Roles run by child processes
// ---------------------------------------------------------------------------------------

/// Listens at the path given, then waits to be killed (at most [`PATIENCE`]).
fn listen_and_wait(ctx: &mut Ctx) -> RoleResult {
    let path: String = ctx.arg()?;
    let _listener = Listener::bind(&Address::Unix(path.into()))?;
    thread::sleep(PATIENCE);
    Ok(())
}

/// Connects to the path given, checks that the kernel names the parent as the peer, then
/// waits for the parent to close.
fn connect_and_wait(ctx: &mut Ctx) -> RoleResult {
    let path: String = ctx.arg()?;
    let mut s = connect(&Address::Unix(path.into()))?;
    let peer = s.peer_credentials()?;
    let parent = std::os::unix::process::parent_id();
    if peer.pid != parent as i32 {
        return Err(format!("peer pid {} is not the parent's {parent}", peer.pid).into());
    }
    match s.recv_bytes_timeout(PATIENCE) {
        Err(RecvTimeoutError::Disconnected) => Ok(()),
        other => Err(format!("expected the parent to close, got {other:?}").into()),
    }
}

/// Sleeps, then listens at the path given, greets one client and waits for it to close.
fn late_server(ctx: &mut Ctx) -> RoleResult {
    let (path, delay_ms): (String, u64) = ctx.arg()?;
    thread::sleep(Duration::from_millis(delay_ms));
    let listener = Listener::bind(&Address::Unix(path.into()))?;
    let mut s = listener.accept_timeout(PATIENCE)?;
    s.send_bytes(b"sorry I'm late")?;
    match s.recv_bytes_timeout(PATIENCE) {
        Err(RecvTimeoutError::Disconnected) => Ok(()),
        other => Err(format!("expected the client to close, got {other:?}").into()),
    }
}

// ---------------------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------------------

#[test]
fn bad_addresses_are_invalid_address_and_say_why() {
    for s in [
        "",
        "localhost:7000",
        "tcp://",
        "unix://",
        "tcp://127.0.0.1",
        "tcp://127.0.0.1:99999",
        "udp://:7",
        "ftp://127.0.0.1:21",
        "tcp://no-such-host.invalid:1",
        &format!("unix-abstract://{}", "x".repeat(108)),
    ] {
        let e = s.parse::<Address>().unwrap_err();
        match &e {
            Error::InvalidAddress { address, reason } => {
                assert_eq!(address, s);
                assert!(!reason.is_empty(), "{s}: says why");
            }
            other => panic!("{s}: expected InvalidAddress, got {other:?}"),
        }
        assert!(e.to_string().contains(s), "{s}: the message names it: {e}");
    }
}

#[test]
fn addresses_parse_and_print() {
    let a: Address = "tcp://127.0.0.1:7000".parse().unwrap();
    assert_eq!(a, Address::Tcp("127.0.0.1:7000".parse().unwrap()));
    let a: Address = "tcp://localhost:7000".parse().unwrap();
    assert!(matches!(a, Address::Tcp(s) if s.ip().is_loopback() && s.port() == 7000));
    let a: Address = "unix:///run/x.sock".parse().unwrap();
    assert_eq!(a, Address::Unix("/run/x.sock".into()));
    assert_eq!(a.to_string(), "unix:///run/x.sock");
    let a: Address = "unix://relative.sock".parse().unwrap();
    assert_eq!(a, Address::Unix("relative.sock".into()));
    let a: Address = "unix-abstract://chat".parse().unwrap();
    assert_eq!(a, Address::UnixAbstract("chat".into()));
    let a: Address = "udp://[::1]:9".parse().unwrap();
    assert_eq!(a.to_string(), "udp://[::1]:9");
}

#[test]
fn each_kind_of_socket_refuses_the_others_addresses() {
    let udp: Address = "udp://127.0.0.1:0".parse().unwrap();
    let tcp: Address = "tcp://127.0.0.1:0".parse().unwrap();
    assert!(matches!(Listener::bind(&udp), Err(Error::Unsupported(_))));
    assert!(matches!(connect(&udp), Err(Error::Unsupported(_))));
    assert!(matches!(Datagram::bind(&tcp), Err(Error::Unsupported(_))));
    let d = Datagram::bind(&udp).unwrap();
    assert!(matches!(d.send_to(b"x", &tcp), Err(Error::Unsupported(_))));
}

// ---------------------------------------------------------------------------------------
// Socket files
// ---------------------------------------------------------------------------------------

#[test]
fn socket_files_are_0600_and_removed_on_drop() {
    let sock = TempSock::new();
    let listener = Listener::bind(&sock.address()).unwrap();
    assert_eq!(listener.address(), &sock.address());
    assert!(sock.is_socket());
    assert_eq!(sock.mode(), 0o600, "{}", sock.path().display());
    // It works, and a connection outliving the listener does not keep the file.
    let mut client = connect(&sock.address()).unwrap();
    let mut server = listener.accept_timeout(PATIENCE).unwrap();
    drop(listener);
    sock.assert_gone();
    client.send_bytes(b"still here").unwrap();
    assert_eq!(recv(&mut server), b"still here");
}

#[test]
fn a_path_that_is_not_a_socket_is_never_touched() {
    let sock = TempSock::new();
    std::fs::write(sock.path(), b"precious").unwrap();
    let e = Listener::bind(&sock.address()).unwrap_err();
    assert!(
        matches!(&e, Error::NotA { expected: "a socket", name, .. } if *name == sock.text()),
        "{e}"
    );
    assert_eq!(std::fs::read(sock.path()).unwrap(), b"precious");
    std::fs::remove_file(sock.path()).unwrap();
}

#[test]
fn stale_socket_file_is_replaced_live_one_is_refused() {
    enter(ROLES);
    let sock = TempSock::new();
    let mut server = Command::new("listen-and-wait")
        .arg(&sock.text())
        .unwrap()
        .quiet()
        .spawn()
        .unwrap();
    // Bound, listening and chmod-ed.
    wait_until("the child listens", || {
        sock.is_socket() && sock.mode() == 0o600
    });

    // A live server in another process: refused, and its file left alone.
    let e = Listener::bind(&sock.address()).unwrap_err();
    assert!(matches!(e, Error::Os { action: "bind", .. }), "{e}");
    assert_eq!(kind(&e), Some(ErrorKind::AddrInUse), "{e}");
    assert!(e.to_string().contains(&sock.text()), "names the path: {e}");
    assert!(sock.is_socket(), "the live server's file was removed");
    assert!(
        connect(&sock.address()).is_ok(),
        "the live server no longer answers"
    );

    // Killed: it cannot remove its file.
    server.kill().unwrap();
    assert!(matches!(
        server.join_timeout(PATIENCE),
        Err(Error::RoleKilled { .. })
    ));
    assert!(sock.is_socket(), "SIGKILL leaves the file behind");
    let dead = connect(&sock.address()).unwrap_err();
    assert_eq!(kind(&dead), Some(ErrorKind::ConnectionRefused), "{dead}");

    // A new server replaces the stale file, and works.
    let listener = Listener::bind(&sock.address()).unwrap();
    assert_eq!(sock.mode(), 0o600);
    let mut client = connect(&sock.address()).unwrap();
    let mut accepted = listener.accept_timeout(PATIENCE).unwrap();
    client.send_bytes(b"new server").unwrap();
    assert_eq!(recv(&mut accepted), b"new server");
    drop(listener);
    sock.assert_gone();
}

#[test]
fn a_busy_live_server_is_refused_without_waiting() {
    use nix::sys::socket::{Backlog, listen};
    // A live server that accepts nobody, its queue full.
    let sock = TempSock::new();
    let busy = std::os::unix::net::UnixListener::bind(sock.path()).unwrap();
    listen(&busy, Backlog::new(0).unwrap()).unwrap();
    let opts = ConnectOptions::new().timeout(Duration::from_millis(100));
    let mut queued = Vec::new();
    loop {
        match connect_with(&sock.address(), &opts) {
            Ok(s) => queued.push(s),
            Err(Error::Timeout) => break,
            Err(e) => panic!("filling the queue: {e}"),
        }
        assert!(queued.len() < 16, "the queue never filled");
    }
    let addr = sock.address();
    let e = within(
        Duration::from_secs(5),
        "bind next to a busy server",
        move || Listener::bind(&addr).unwrap_err(),
    );
    assert_eq!(kind(&e), Some(ErrorKind::AddrInUse), "{e}");
    assert!(sock.is_socket());
    drop(busy);
    std::fs::remove_file(sock.path()).unwrap();
}

#[test]
fn abstract_names_need_no_file_and_are_taken_while_live() {
    let name = ipckit_core::unique_name("sock");
    let addr = Address::UnixAbstract(name.clone());
    let listener = Listener::bind(&addr).unwrap();
    let e = Listener::bind(&addr).unwrap_err();
    assert_eq!(kind(&e), Some(ErrorKind::AddrInUse), "{e}");
    let mut client = connect(&addr).unwrap();
    let mut server = listener.accept_timeout(PATIENCE).unwrap();
    client.send_bytes(b"abstract").unwrap();
    assert_eq!(recv(&mut server), b"abstract");
    assert!(!std::env::temp_dir().join(&name).exists());
    // Free again once the listener is gone.
    drop(listener);
    drop(Listener::bind(&addr).unwrap());
}

// ---------------------------------------------------------------------------------------
// Peer credentials
// ---------------------------------------------------------------------------------------

#[test]
fn peer_credentials_name_the_connecting_process() {
    enter(ROLES);
    let sock = TempSock::new();
    let listener = Listener::bind(&sock.address()).unwrap();
    let mut child = Command::new("connect-and-wait")
        .arg(&sock.text())
        .unwrap()
        .quiet()
        .spawn()
        .unwrap();
    let accepted = listener.accept_timeout(PATIENCE).unwrap();
    let peer = accepted.peer_credentials().unwrap();
    assert_eq!(peer.pid, child.pid() as i32);
    let (uid, gid) = my_ids();
    assert_eq!((peer.uid, peer.gid), (uid, gid));
    // The child checks the other direction; closing lets it finish.
    drop(accepted);
    assert!(child.join_timeout(PATIENCE).unwrap().success());
    drop(listener);
    sock.assert_gone();
}

#[test]
fn abstract_sockets_have_peer_credentials_tcp_has_none() {
    let addr = Address::UnixAbstract(ipckit_core::unique_name("sock"));
    let listener = Listener::bind(&addr).unwrap();
    let client = connect(&addr).unwrap();
    let server = listener.accept_timeout(PATIENCE).unwrap();
    let me = std::process::id() as i32;
    assert_eq!(server.peer_credentials().unwrap().pid, me);
    assert_eq!(client.peer_credentials().unwrap().pid, me);

    let listener = Listener::bind(&"tcp://127.0.0.1:0".parse().unwrap()).unwrap();
    let client = connect(listener.address()).unwrap();
    let server = listener.accept_timeout(PATIENCE).unwrap();
    for s in [&client, &server] {
        let r = s.peer_credentials();
        assert!(
            matches!(r, Err(Error::Unsupported(_))),
            "TCP has no peer credentials, got {r:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Connecting
// ---------------------------------------------------------------------------------------

#[test]
fn connect_with_retry_waits_for_a_late_server() {
    enter(ROLES);
    let sock = TempSock::new();
    // Without retry, nobody there yet is an immediate error.
    let addr = sock.address();
    let e = within(Duration::from_secs(5), "connect without retry", move || {
        connect(&addr).unwrap_err()
    });
    assert!(
        matches!(&e, Error::Os { action: "connect", object: "socket", name, .. }
            if name.contains(&sock.text())),
        "names the path: {e}"
    );
    assert_eq!(kind(&e), Some(ErrorKind::NotFound), "{e}");
    assert!(e.to_string().contains(&sock.text()), "says the path: {e}");

    let mut server = Command::new("late-server")
        .arg(&(sock.text(), 300u64))
        .unwrap()
        .quiet()
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut client = connect_with(&sock.address(), &patient()).unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "connected before the server bound"
    );
    assert_eq!(recv(&mut client), b"sorry I'm late");
    drop(client);
    assert!(server.join_timeout(PATIENCE).unwrap().success());
    sock.assert_gone();
}

#[test]
fn a_unix_path_the_kernel_cannot_take_is_an_invalid_address() {
    let long = Address::Unix(std::env::temp_dir().join("x".repeat(200)));
    for e in [
        connect(&long).unwrap_err(),
        Listener::bind(&long).unwrap_err(),
    ] {
        assert!(
            matches!(&e, Error::InvalidAddress { address, .. } if *address == long.to_string()),
            "{e}"
        );
    }
}

#[test]
fn connect_without_retry_fails_fast() {
    let port = free_tcp_port();
    let tcp: Address = format!("tcp://127.0.0.1:{port}").parse().unwrap();
    let e = within(
        Duration::from_secs(5),
        "connect to a closed port",
        move || connect(&tcp).unwrap_err(),
    );
    assert_eq!(kind(&e), Some(ErrorKind::ConnectionRefused), "{e}");

    let name = Address::UnixAbstract(ipckit_core::unique_name("sock"));
    let e = within(
        Duration::from_secs(5),
        "connect to a free name",
        move || connect(&name).unwrap_err(),
    );
    assert_eq!(kind(&e), Some(ErrorKind::ConnectionRefused), "{e}");
}

#[test]
fn connect_with_retry_gives_up_at_its_timeout() {
    let sock = TempSock::new();
    let addr = sock.address();
    let (e, took) = within(Duration::from_secs(10), "retrying connect", move || {
        let start = Instant::now();
        let e = connect_with(
            &addr,
            &ConnectOptions::new()
                .timeout(Duration::from_millis(300))
                .retry(true),
        )
        .unwrap_err();
        (e, start.elapsed())
    });
    assert_eq!(kind(&e), Some(ErrorKind::NotFound), "{e}");
    assert!(took >= Duration::from_millis(250), "gave up after {took:?}");
}

/// A TCP listener whose accept queue is full: the kernel drops further SYNs, so a connect
/// to it hangs until its timeout. Gives the connections that fill it and the listener (keep
/// both), and its address.
fn blackholed_listener() -> (Vec<std::net::TcpStream>, std::net::TcpListener, Address) {
    use nix::sys::socket::{Backlog, listen};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // Listening again changes the backlog: the queue now holds a single connection.
    listen(&listener, Backlog::new(0).unwrap()).unwrap();
    let sa = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&sa, Duration::from_millis(200)) {
            Ok(s) => fillers.push(s),
            Err(e) if e.kind() == ErrorKind::TimedOut => {
                return (fillers, listener, Address::Tcp(sa));
            }
            Err(e) => panic!("filling the accept queue: {e}"),
        }
    }
    panic!("the accept queue of {sa} never filled");
}

#[test]
fn connect_timeout_gives_timed_out() {
    let (_fillers, _listener, addr) = blackholed_listener();
    let (e, took) = within(
        Duration::from_secs(10),
        "connect to a full queue",
        move || {
            let start = Instant::now();
            let e = connect_with(
                &addr,
                &// Retrying does not stretch a timeout.
                ConnectOptions::new()
                    .timeout(Duration::from_millis(200))
                    .retry(true),
            )
            .unwrap_err();
            (e, start.elapsed())
        },
    );
    assert!(matches!(e, Error::Timeout), "{e}");
    assert!(took >= Duration::from_millis(150), "gave up after {took:?}");
}

#[test]
fn connect_timeout_to_an_unroutable_address() {
    let addr: Address = "tcp://10.255.255.1:9".parse().unwrap();
    let r = within(
        Duration::from_secs(10),
        "connect to 10.255.255.1",
        move || {
            connect_with(
                &addr,
                &ConnectOptions::new().timeout(Duration::from_millis(200)),
            )
        },
    );
    match r {
        Err(Error::Timeout) => {}
        Err(e)
            if matches!(
                kind(&e),
                Some(ErrorKind::NetworkUnreachable | ErrorKind::HostUnreachable)
            ) => {}
        // Some sandboxes answer every outgoing connection themselves.
        Ok(_) => eprintln!("skipped: this network accepts connections to 10.255.255.1"),
        Err(e) => panic!("expected TimedOut or unreachable, got {e}"),
    }
}

#[test]
fn connect_timeout_holds_when_a_unix_listener_queue_is_full() {
    use nix::sys::socket::{Backlog, listen};
    use std::os::{linux::net::SocketAddrExt, unix::net};
    // A listener that never accepts, with room for one waiting connection.
    let name = ipckit_core::unique_name("sock");
    let at = net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let listener = net::UnixListener::bind_addr(&at).unwrap();
    listen(&listener, Backlog::new(0).unwrap()).unwrap();
    let addr = Address::UnixAbstract(name);
    let opts = ConnectOptions::new().timeout(Duration::from_millis(200));
    let mut waiting = Vec::new();
    let timed_out = (0..8).any(|_| {
        let (addr, opts) = (addr.clone(), opts.clone());
        match within(
            Duration::from_secs(10),
            "connect to a full queue",
            move || connect_with(&addr, &opts),
        ) {
            Ok(s) => {
                waiting.push(s);
                false
            }
            Err(e) => {
                assert!(matches!(e, Error::Timeout), "{e}");
                true
            }
        }
    });
    assert!(timed_out, "the queue never filled");
    drop(listener);
}

// ---------------------------------------------------------------------------------------
// Half-close
// ---------------------------------------------------------------------------------------

#[test]
fn shutdown_lets_the_peer_drain_then_disconnects_it() {
    for addr in [
        "tcp://127.0.0.1:0".parse().unwrap(),
        Address::UnixAbstract(ipckit_core::unique_name("sock")),
    ] {
        let listener = Listener::bind(&addr).unwrap();
        let mut client = connect(listener.address()).unwrap();
        let mut server = listener.accept_timeout(PATIENCE).unwrap();
        for m in [&b"one"[..], b"two", &[7u8; 100_000]] {
            client.send_bytes(m).unwrap();
        }
        client.shutdown().unwrap();
        assert_eq!(recv(&mut server), b"one");
        assert_eq!(recv(&mut server), b"two");
        assert_eq!(recv(&mut server), vec![7u8; 100_000]);
        expect_disconnected(&mut server);
        // Only one direction is closed: the server can still answer.
        server.send_bytes(b"bye").unwrap();
        assert_eq!(recv(&mut client), b"bye");
        drop(server);
        expect_disconnected(&mut client);
        // Sending after shutdown is an error, not a hang.
        assert!(client.send_bytes_timeout(b"late", PATIENCE).is_err());
    }
}

#[test]
fn split_halves_receive_and_send_from_two_threads() {
    let listener =
        Listener::bind(&Address::UnixAbstract(ipckit_core::unique_name("sock"))).unwrap();
    let client = connect(listener.address()).unwrap();
    let mut server = listener.accept_timeout(PATIENCE).unwrap();
    let (mut reader, mut writer) = client.split().unwrap();
    const N: u32 = 1000;
    // One thread sends while the other receives, on the same socket: large messages, so
    // that both directions fill at once.
    let sending = thread::spawn(move || {
        for i in 0..N {
            writer.send_bytes(&[&i.to_be_bytes()[..], &[1; 8192]].concat())?;
        }
        // Dropping the writer ends this direction; the reader goes on.
        Ok::<_, Error>(())
    });
    let receiving = thread::spawn(move || {
        let mut got = 0u32;
        loop {
            match reader.recv_bytes_timeout(PATIENCE) {
                Ok(m) => {
                    assert_eq!(m[..4], got.to_be_bytes());
                    got += 1;
                }
                Err(RecvTimeoutError::Disconnected) => return got,
                Err(e) => panic!("reader: {e}"),
            }
        }
    });
    let mut echoed = 0u32;
    loop {
        match server.recv_bytes_timeout(PATIENCE) {
            Ok(m) => {
                server.send_bytes(&m).unwrap();
                echoed += 1;
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("server: {e}"),
        }
    }
    within(PATIENCE, "the sender", move || sending.join())
        .expect("the sending thread")
        .unwrap();
    assert_eq!(echoed, N);
    // The server closes: the reader has had everything, then the end.
    drop(server);
    let got = within(PATIENCE, "the reader", move || receiving.join()).expect("the reader");
    assert_eq!(got, N);
}

// ---------------------------------------------------------------------------------------
// Authkey
// ---------------------------------------------------------------------------------------

fn keyed(key: &[u8]) -> ConnectOptions {
    ConnectOptions::new().timeout(PATIENCE).authkey(key)
}

#[test]
fn authkey_admits_the_right_key_and_refuses_a_wrong_one() {
    for addr in [
        "tcp://127.0.0.1:0".parse().unwrap(),
        Address::UnixAbstract(ipckit_core::unique_name("sock")),
    ] {
        let listener = Listener::bind(&addr).unwrap().authkey(b"open sesame");
        let addr = listener.address().clone();
        let server = thread::spawn(move || {
            let wrong = listener.accept_timeout(PATIENCE);
            let mut right = listener.accept_timeout(PATIENCE)?;
            let m = right
                .recv_bytes_timeout(PATIENCE)
                .map_err(|e| format!("{e}"));
            right.send_bytes(b"welcome")?;
            Ok::<_, Error>((wrong.map(drop), m))
        });

        let e = connect_with(&addr, &keyed(b"open barley")).unwrap_err();
        assert!(matches!(e, Error::Auth(AuthError::Refused)), "{e}");

        let mut c = connect_with(&addr, &keyed(b"open sesame")).unwrap();
        c.send_bytes(b"hello").unwrap();
        assert_eq!(recv(&mut c), b"welcome");

        let (wrong, m) = within(PATIENCE, "the server", move || server.join())
            .expect("the server thread")
            .unwrap();
        let e = wrong.unwrap_err();
        assert!(matches!(e, Error::Auth(AuthError::WrongKey)), "{e}");
        assert_eq!(m.unwrap(), b"hello");
    }
}

#[test]
fn a_client_stalling_in_the_handshake_cannot_hold_accept() {
    use std::io::Write;
    let listener = Listener::bind(&"tcp://127.0.0.1:0".parse().unwrap())
        .unwrap()
        .authkey(b"k");
    let Address::Tcp(at) = listener.address().clone() else {
        unreachable!()
    };
    // Announces a 200-byte answer, sends 10 bytes of it, then nothing.
    let mut staller = std::net::TcpStream::connect(at).unwrap();
    staller.write_all(&200u32.to_be_bytes()).unwrap();
    staller.write_all(&[0; 10]).unwrap();
    let (r, listener) = within(Duration::from_secs(25), "accept", move || {
        (listener.accept_timeout(PATIENCE).map(drop), listener)
    });
    assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
    // A client with a giant answer is refused without waiting for it.
    let mut giant = std::net::TcpStream::connect(at).unwrap();
    giant.write_all(&(60u32 << 20).to_be_bytes()).unwrap();
    let r = within(Duration::from_secs(5), "accept", move || {
        listener.accept_timeout(PATIENCE).map(drop)
    });
    let e = r.unwrap_err();
    assert!(matches!(e, Error::Auth(AuthError::Protocol(_))), "{e}");
    drop((staller, giant));
}

#[test]
fn a_server_stalling_in_the_handshake_is_bounded_by_the_connect_timeout() {
    use std::io::Write;
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = Address::Tcp(server.local_addr().unwrap());
    let feeder = thread::spawn(move || {
        let (mut s, _) = server.accept()?;
        // Half a challenge, then silence until the client gives up.
        s.write_all(&60u32.to_be_bytes())?;
        s.write_all(b"#CHALLENGE#")?;
        s.set_read_timeout(Some(PATIENCE))?;
        io::Read::read(&mut s, &mut [0; 1])
    });
    let opts = keyed(b"k").timeout(Duration::from_millis(500));
    let r = within(Duration::from_secs(10), "connect_with", move || {
        connect_with(&addr, &opts).map(drop)
    });
    assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
    assert_eq!(feeder.join().unwrap().unwrap(), 0, "the client closed");
}

/// Reads one length-prefixed frame from a plain socket.
fn read_frame(s: &mut impl io::Read) -> Vec<u8> {
    let mut header = [0u8; 4];
    s.read_exact(&mut header).unwrap();
    let mut m = vec![0u8; u32::from_be_bytes(header) as usize];
    s.read_exact(&mut m).unwrap();
    m
}

fn frame(m: &[u8]) -> Vec<u8> {
    [&(m.len() as u32).to_be_bytes()[..], m].concat()
}

fn hmac_sha256(key: &[u8], m: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(m);
    mac.finalize().into_bytes().to_vec()
}

#[test]
fn an_authenticated_stream_has_read_nothing_ahead() {
    use std::{
        io::Write,
        os::{linux::net::SocketAddrExt, unix::net},
    };
    let name = ipckit_core::unique_name("sock");
    let listener = Listener::bind(&Address::UnixAbstract(name.clone()))
        .unwrap()
        .authkey(b"k");
    // A client doing the handshake by hand, which sends its last `#WELCOME#` and its first
    // messages in one write: they arrive together.
    let client = thread::spawn(move || {
        let at = net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let mut c = net::UnixStream::connect_addr(&at).unwrap();
        c.set_read_timeout(Some(PATIENCE)).unwrap();
        let challenge = read_frame(&mut c);
        let message = challenge.strip_prefix(b"#CHALLENGE#").unwrap();
        c.write_all(&frame(
            &[&b"{sha256}"[..], &hmac_sha256(b"k", message)].concat(),
        ))
        .unwrap();
        assert_eq!(read_frame(&mut c), b"#WELCOME#");
        let mine = [&b"{sha256}"[..], &[42; 40]].concat();
        c.write_all(&frame(&[&b"#CHALLENGE#"[..], &mine].concat()))
            .unwrap();
        let answer = read_frame(&mut c);
        assert_eq!(
            answer,
            [&b"{sha256}"[..], &hmac_sha256(b"k", &mine)].concat()
        );
        c.write_all(&[frame(b"#WELCOME#"), frame(b"first"), frame(b"second")].concat())
            .unwrap();
        c
    });
    let accepted = listener.accept_timeout(PATIENCE).unwrap();
    let _c = within(PATIENCE, "the client", move || client.join()).expect("the client thread");
    // The accepted stream goes to another owner, as to a child process: nothing of what
    // followed the handshake may stay behind in this one.
    let handoff = ipckit_core::Handle::into_handoff(accepted);
    let mut handed = <Connection as ipckit_core::Handle>::from_handoff(handoff).unwrap();
    assert_eq!(recv(&mut handed), b"first");
    assert_eq!(recv(&mut handed), b"second");
}

// ---------------------------------------------------------------------------------------
// Python interoperability
// ---------------------------------------------------------------------------------------

/// Starts `python -c script args…`; it is killed if the test ends first.
fn start_python(py: &Path, script: &str, args: &[&str]) -> Bounded {
    Bounded::python(py, script, args).expect("start python")
}

/// What Python printed, once it exited successfully.
fn python_output(p: Bounded) -> String {
    String::from_utf8_lossy(&p.wait_ok("python").stdout).into_owned()
}

const PY_CLIENT: &str = r#"
import ast, sys
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
address, key = ast.literal_eval(sys.argv[1]), sys.argv[2].encode()
try:
    c = Client(address, authkey=key)
except AuthenticationError as e:
    print("refused:", e)
    sys.exit(0)
c.send_bytes(b"hi")
print(c.recv_bytes())
c.close()
"#;

const PY_LISTENER: &str = r#"
import ast, sys
from multiprocessing import AuthenticationError
from multiprocessing.connection import Listener
address, key = ast.literal_eval(sys.argv[1]), sys.argv[2].encode()
with Listener(address, authkey=key) as listener:
    try:
        listener.accept()
        print("accepted a wrong key!")
    except AuthenticationError as e:
        print("refused:", e, flush=True)
    with listener.accept() as c:
        m = c.recv_bytes()
        c.send_bytes(b"python got " + m)
        print("served", m, flush=True)
"#;

/// The address as Python writes it: a path string, or a `(host, port)` tuple.
fn python_address(a: &Address) -> String {
    match a {
        Address::Unix(p) => format!("{:?}", p.to_str().unwrap()),
        Address::Tcp(s) => format!("({:?}, {})", s.ip().to_string(), s.port()),
        other => panic!("Python's Listener takes no {other}"),
    }
}

#[test]
fn python_client_authenticates_with_an_ipckit_listener() {
    let Some(py) = python(12..=99) else {
        return;
    };
    let sock = TempSock::new();
    for addr in [sock.address(), "tcp://127.0.0.1:0".parse().unwrap()] {
        let listener = Listener::bind(&addr).unwrap().authkey(b"py-secret");
        let pyaddr = python_address(listener.address());

        // The right key: the handshake both ways, then framed messages both ways.
        let client = start_python(&py, PY_CLIENT, &[&pyaddr, "py-secret"]);
        let mut s = listener.accept_timeout(PATIENCE).unwrap();
        assert_eq!(recv(&mut s), b"hi");
        s.send_bytes(b"hello from ipckit").unwrap();
        assert_eq!(python_output(client).trim(), "b'hello from ipckit'");
        drop(s);

        // A wrong key: refused on both sides; the listener goes on.
        let client = start_python(&py, PY_CLIENT, &[&pyaddr, "not-the-secret"]);
        let e = listener.accept_timeout(PATIENCE).unwrap_err();
        assert!(matches!(e, Error::Auth(AuthError::WrongKey)), "{e}");
        let out = python_output(client);
        assert!(out.starts_with("refused:"), "{out}");

        let client = start_python(&py, PY_CLIENT, &[&pyaddr, "py-secret"]);
        let mut s = listener.accept_timeout(PATIENCE).unwrap();
        assert_eq!(recv(&mut s), b"hi");
        s.send_bytes(b"again").unwrap();
        assert_eq!(python_output(client).trim(), "b'again'");
    }
    sock.assert_gone();
}

#[test]
fn ipckit_client_authenticates_with_a_python_listener() {
    let Some(py) = python(12..=99) else {
        return;
    };
    let sock = TempSock::new();
    let tcp: Address = format!("tcp://127.0.0.1:{}", free_tcp_port())
        .parse()
        .unwrap();
    for addr in [sock.address(), tcp] {
        let server = start_python(&py, PY_LISTENER, &[&python_address(&addr), "py-secret"]);
        // Python may not be listening yet.
        let e = connect_with(&addr, &keyed(b"wrong").retry(true)).unwrap_err();
        assert!(matches!(e, Error::Auth(AuthError::Refused)), "{e}");

        let mut s = connect_with(&addr, &keyed(b"py-secret").retry(true)).unwrap();
        s.send_bytes(b"from rust").unwrap();
        assert_eq!(recv(&mut s), b"python got from rust");
        let out = python_output(server);
        assert!(out.starts_with("refused:"), "{out}");
        assert!(out.contains("served b'from rust'"), "{out}");
    }
    // Python's listener removed its file.
    sock.assert_gone();
}

/// A listener that serves one client, or says why it refused it.
const PY_ONE_LISTENER: &str = r#"
import ast, sys
from multiprocessing import AuthenticationError
from multiprocessing.connection import Listener
address, key = ast.literal_eval(sys.argv[1]), sys.argv[2].encode()
with Listener(address, authkey=key) as listener:
    try:
        with listener.accept() as c:
            m = c.recv_bytes()
            c.send_bytes(b"python got " + m)
            print("served", m, flush=True)
    except AuthenticationError as e:
        print("refused:", e, flush=True)
"#;

fn free_tcp_address() -> Address {
    format!("tcp://127.0.0.1:{}", free_tcp_port())
        .parse()
        .unwrap()
}

#[test]
fn python_311_is_refused_cleanly_on_both_sides() {
    // Python 3.11 and older answer with a bare HMAC-MD5, which ipckit does not speak unless
    // told to: each side refuses the other in words, neither just hangs up.
    let Some(py) = python(11..=11) else {
        return;
    };
    let listener = Listener::bind(&"tcp://127.0.0.1:0".parse().unwrap())
        .unwrap()
        .authkey(b"py-secret");
    let client = start_python(
        &py,
        PY_CLIENT,
        &[&python_address(listener.address()), "py-secret"],
    );
    let e = listener.accept_timeout(PATIENCE).unwrap_err();
    assert!(
        matches!(&e, Error::Auth(AuthError::UnsupportedDigest(d)) if d.starts_with("md5")),
        "{e}"
    );
    let out = python_output(client);
    assert!(out.starts_with("refused:"), "{out}");

    // The other way: ipckit answers the legacy challenge (with SHA-256), which Python
    // refuses as an AuthenticationError, not as a peer that vanished (EOFError).
    let tcp = free_tcp_address();
    let server = start_python(&py, PY_ONE_LISTENER, &[&python_address(&tcp), "py-secret"]);
    let e = connect_with(&tcp, &keyed(b"py-secret").retry(true)).unwrap_err();
    assert!(
        matches!(&e, Error::Auth(AuthError::UnsupportedDigest(d)) if d.starts_with("md5")),
        "{e}"
    );
    let out = python_output(server);
    assert_eq!(out.trim(), "refused: digest received was wrong");
}

#[test]
fn python_311_is_a_peer_both_ways_with_legacy_md5() {
    let Some(py) = python(11..=11) else {
        return;
    };
    // A 3.11 client and an ipckit listener that allows HMAC-MD5.
    let listener = Listener::bind(&"tcp://127.0.0.1:0".parse().unwrap())
        .unwrap()
        .authkey(b"py-secret")
        .legacy_md5(true);
    let pyaddr = python_address(listener.address());
    let client = start_python(&py, PY_CLIENT, &[&pyaddr, "py-secret"]);
    let mut s = listener.accept_timeout(PATIENCE).unwrap();
    assert_eq!(recv(&mut s), b"hi");
    s.send_bytes(b"hello, 3.11").unwrap();
    assert_eq!(python_output(client).trim(), "b'hello, 3.11'");
    // A wrong key is still refused, on both sides.
    let client = start_python(&py, PY_CLIENT, &[&pyaddr, "not-the-secret"]);
    let e = listener.accept_timeout(PATIENCE).unwrap_err();
    assert!(matches!(e, Error::Auth(AuthError::WrongKey)), "{e}");
    assert!(python_output(client).starts_with("refused:"));

    // An ipckit client that allows HMAC-MD5 and a 3.11 listener.
    let legacy = |key: &[u8]| keyed(key).retry(true).legacy_md5(true);
    let tcp = free_tcp_address();
    let server = start_python(&py, PY_ONE_LISTENER, &[&python_address(&tcp), "py-secret"]);
    let mut c = connect_with(&tcp, &legacy(b"py-secret")).unwrap();
    c.send_bytes(b"from rust").unwrap();
    assert_eq!(recv(&mut c), b"python got from rust");
    assert_eq!(python_output(server).trim(), "served b'from rust'");
    let tcp = free_tcp_address();
    let server = start_python(&py, PY_ONE_LISTENER, &[&python_address(&tcp), "py-secret"]);
    let e = connect_with(&tcp, &legacy(b"wrong")).unwrap_err();
    assert!(matches!(e, Error::Auth(AuthError::Refused)), "{e}");
    assert!(python_output(server).starts_with("refused:"));
}

// ---------------------------------------------------------------------------------------
// UDP
// ---------------------------------------------------------------------------------------

#[test]
fn udp_keeps_datagram_boundaries() {
    let a = Datagram::bind(&"udp://127.0.0.1:0".parse().unwrap()).unwrap();
    let b = Datagram::bind(&"udp://127.0.0.1:0".parse().unwrap()).unwrap();
    let to = b.address().unwrap();
    let sizes = [1usize, 0, 1400, MAX_DATAGRAM];
    for (i, &n) in sizes.iter().enumerate() {
        a.send_to(&vec![i as u8 + 1; n], &to).unwrap();
    }
    for (i, &n) in sizes.iter().enumerate() {
        let (m, from) = b.recv_from_timeout(PATIENCE).unwrap();
        assert_eq!(m.len(), n, "datagram {i}");
        assert!(m.iter().all(|&x| x == i as u8 + 1));
        assert_eq!(from, a.address().unwrap());
    }
    assert!(matches!(b.try_recv_from(), Err(TryRecvError::Empty)));
}

#[test]
fn udp_blocking_recv_from_waits_for_a_datagram() {
    let a = Datagram::bind(&"udp://127.0.0.1:0".parse().unwrap()).unwrap();
    let to = a.address().unwrap();
    let waiting = thread::spawn(move || a.recv_from());
    let b = Datagram::bind(&"udp://127.0.0.1:0".parse().unwrap()).unwrap();
    b.send_to(b"wake up", &to).unwrap();
    let (m, from) = within(PATIENCE, "recv_from", move || waiting.join())
        .expect("the receiving thread")
        .unwrap();
    assert_eq!((m, from), (b"wake up".to_vec(), b.address().unwrap()));
}

#[test]
fn udp_refuses_a_datagram_too_large() {
    let a = Datagram::bind(&"udp://127.0.0.1:0".parse().unwrap()).unwrap();
    let to = a.address().unwrap();
    match a.send_to(&vec![0; MAX_DATAGRAM + 1], &to) {
        Err(Error::TooLarge { len, max }) => {
            assert_eq!((len, max), (MAX_DATAGRAM as u64 + 1, MAX_DATAGRAM));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // Nothing was sent.
    assert!(matches!(
        a.recv_from_timeout(Duration::from_millis(50)),
        Err(RecvTimeoutError::Timeout)
    ));
}

#[test]
fn udp_recv_from_timeout_waits_then_says_timeout() {
    let a = Datagram::bind(&"udp://127.0.0.1:0".parse().unwrap()).unwrap();
    let start = Instant::now();
    let r = within(Duration::from_secs(10), "recv_from_timeout", move || {
        a.recv_from_timeout(Duration::from_millis(200))
    });
    assert!(matches!(r, Err(RecvTimeoutError::Timeout)), "{r:?}");
    assert!(start.elapsed() >= Duration::from_millis(190));
}

#[test]
fn udp_receives_whole_what_ipv6_can_carry() {
    // Over IPv6 a UDP payload may reach 65 527 bytes (no IPv4 header to make room for):
    // another program may send one, and it must not arrive cut.
    let Ok(b) = Datagram::bind(&"udp://[::1]:0".parse().unwrap()) else {
        eprintln!("skipped: no IPv6 loopback");
        return;
    };
    let Address::Udp(to) = b.address().unwrap() else {
        unreachable!()
    };
    let other = std::net::UdpSocket::bind("[::1]:0").unwrap();
    let big = vec![9u8; 65_527];
    if let Err(e) = other.send_to(&big, to) {
        eprintln!("skipped: this IPv6 loopback does not carry 65 527 bytes: {e}");
        return;
    }
    let (m, _) = b.recv_from_timeout(PATIENCE).unwrap();
    assert_eq!(m.len(), big.len());
}
