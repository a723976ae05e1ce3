//! Typed calls over ipckit transports: across processes, many in flight, deadlines, a dead
//! server, a panicking handler, notifications, authkeys; streams of results.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use ipckit_rpc::{
    Address, Client, Command, ConnectOptions, Ctx, Error, Fault, Listener, Method, Registry, Role,
    RoleResult, ServeOptions, Server, StreamMethod, Value, enter, serve_connection,
};
use ipckit_testkit::{PATIENCE, join_ok, wait_until};

const ADD: Method<(i64, i64), i64> = Method::new("add");
const SLOW: Method<(u64, String), u64> = Method::new("slow");
const FAIL: Method<String, ()> = Method::new("fail");

const COUNT: StreamMethod<u64, u64> = StreamMethod::new("count");
const COUNT_THEN_FAIL: StreamMethod<u64, u64> = StreamMethod::new("count_then_fail");
/// Counts for ever; writes how many items it gave to the marker file when dropped.
const FOREVER: StreamMethod<String, u64> = StreamMethod::new("forever");
/// `(items, ms)`: an item every `ms` milliseconds.
const TRICKLE: StreamMethod<(u64, u64), u64> = StreamMethod::new("trickle");

struct Forever {
    given: u64,
    marker: String,
}

impl Iterator for Forever {
    type Item = Result<u64, Fault>;

    fn next(&mut self) -> Option<Self::Item> {
        self.given += 1;
        Some(Ok(self.given - 1))
    }
}

impl Drop for Forever {
    fn drop(&mut self) {
        std::fs::write(&self.marker, self.given.to_string()).unwrap();
    }
}

static FLAG: AtomicU64 = AtomicU64::new(0);
static AWAITING: AtomicU64 = AtomicU64::new(0);
static NOTES: AtomicU64 = AtomicU64::new(0);
static LATE_RUNS: AtomicU64 = AtomicU64::new(0);

fn registry() -> Registry {
    Registry::new()
        .method(ADD, |(a, b)| Ok(a + b))
        .method(SLOW, |(ms, marker): (u64, String)| {
            if !marker.is_empty() {
                std::fs::write(&marker, b"started").map_err(|e| Fault::new(1, e.to_string()))?;
            }
            thread::sleep(Duration::from_millis(ms));
            Ok(ms)
        })
        .method(FAIL, |why: String| {
            Err(Fault::new(42, format!("failed: {why}")).with_data(&vec![1, 2, 3]))
        })
        .register("greet", |name: String| Ok(format!("hello, {name}")))
        .register("panic", |(): ()| -> Result<(), Fault> {
            panic!("the handler broke")
        })
        .register("note", |(): ()| {
            NOTES.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .register("late", |(): ()| {
            LATE_RUNS.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .register("values", |v: Vec<Value>| Ok(v.len()))
        // Returns once `raise` was called (by another call), or fails after PATIENCE.
        .register("await_flag", |(): ()| {
            let start = Instant::now();
            AWAITING.store(1, Ordering::SeqCst);
            while FLAG.load(Ordering::SeqCst) == 0 {
                if start.elapsed() > PATIENCE {
                    return Err(Fault::new(1, "the flag was never raised"));
                }
                thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        })
        .register("raise", |(): ()| {
            FLAG.store(1, Ordering::SeqCst);
            Ok(())
        })
        .stream(COUNT, |n| Ok((0..n).map(Ok)))
        .stream(COUNT_THEN_FAIL, |n| {
            Ok((0..n)
                .map(Ok)
                .chain(std::iter::once(Err(Fault::new(7, "ran dry")))))
        })
        .stream(FOREVER, |marker| Ok(Forever { given: 0, marker }))
        .stream(TRICKLE, |(n, ms)| {
            Ok((0..n).map(move |i| {
                thread::sleep(Duration::from_millis(ms));
                Ok(i)
            }))
        })
}

const ROLES: &[Role] = &[
    Role::new("pipe-server", pipe_server),
    Role::new("socket-server", socket_server),
];

fn pipe_server(ctx: &mut Ctx) -> RoleResult {
    let conn = ctx.handle("conn")?;
    serve_connection(conn, &registry())?;
    Ok(())
}

fn socket_server(ctx: &mut Ctx) -> RoleResult {
    let addr: String = ctx.arg()?;
    let _server = Server::start(Listener::bind(&addr.parse()?)?, &registry())?;
    // Serves until killed.
    loop {
        thread::park();
    }
}

fn unix_address(dir: &Path) -> (String, PathBuf) {
    let path = dir.join("rpc.sock");
    (format!("unix://{}", path.display()), path)
}

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ipckit-rpc-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn local_server(opts: &ServeOptions) -> (Server, Client) {
    let name = format!(
        "unix-abstract://ipckit-rpc-test-{}-{:?}",
        std::process::id(),
        Instant::now()
    );
    let addr: Address = name.parse().unwrap();
    let server = Server::start_with(Listener::bind(&addr).unwrap(), &registry(), opts).unwrap();
    let client = Client::connect(&server.address().to_string()).unwrap();
    (server, client)
}

#[test]
fn typed_calls_across_processes_over_a_duplex_pipe() {
    enter(ROLES);
    let (mine, theirs) = ipckit_pipes::duplex().unwrap();
    let mut child = Command::new("pipe-server")
        .handle("conn", theirs)
        .spawn()
        .unwrap();
    let client = Client::new(mine).unwrap();
    assert_eq!(client.call(ADD, &(5, 3)).unwrap(), 8);
    assert_eq!(
        client.call_as::<_, String>("greet", "Ada").unwrap(),
        "hello, Ada"
    );
    match client.call(FAIL, &"no reason".to_owned()) {
        Err(Error::Remote(f)) => {
            assert_eq!(f.code, 42);
            assert_eq!(f.message, "failed: no reason");
            assert_eq!(f.data::<Vec<i32>>(), Some(vec![1, 2, 3]));
        }
        other => panic!("expected the function's fault, got {other:?}"),
    }
    assert!(matches!(
        client.call_as::<_, i64>("nope", &()),
        Err(Error::UnknownMethod(m)) if m == "nope"
    ));
    assert!(matches!(
        client.call_as::<_, i64>("add", "five"),
        Err(Error::BadParams { method, .. }) if method == "add"
    ));
    match client.call_as::<_, ()>("panic", &()) {
        Err(Error::Panicked { method, message }) => {
            assert_eq!(method, "panic");
            assert!(message.contains("the handler broke"), "{message}");
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    // The server serves on after the panic.
    assert_eq!(client.call(ADD, &(-2, 2)).unwrap(), 0);
    // A raw-values function takes XML-RPC values on the typed transport too.
    let args = vec![Value::Int(1), Value::Bytes(vec![0, 255]), Value::Nil];
    assert_eq!(client.call_as::<_, usize>("values", &args).unwrap(), 3);
    drop(client);
    // The client gone, the child's serve_connection returns.
    join_ok(&mut child);
}

#[test]
fn a_server_killed_mid_call_is_disconnected_within_a_second() {
    enter(ROLES);
    let dir = tempdir("kill");
    let (addr, _) = unix_address(&dir);
    let marker = dir.join("started");
    let mut child = Command::new("socket-server")
        .arg(&addr)
        .unwrap()
        .spawn()
        .unwrap();
    let client =
        Client::connect_with(&addr, &ConnectOptions::new().retry(true).timeout(PATIENCE)).unwrap();
    assert_eq!(client.call(ADD, &(5, 3)).unwrap(), 8);
    thread::scope(|s| {
        let call = s.spawn(|| {
            let r = client.call_timeout(SLOW, &(60_000, marker.display().to_string()), PATIENCE);
            (r, Instant::now())
        });
        wait_until("the slow call started", || marker.exists());
        child.kill().unwrap();
        let killed = Instant::now();
        let (result, when) = call.join().unwrap();
        assert!(matches!(result, Err(Error::Disconnected)), "{result:?}");
        assert!(when.duration_since(killed) <= Duration::from_secs(1));
    });
    // Every later call too, at once.
    let t = Instant::now();
    assert!(matches!(
        client.call(ADD, &(1, 1)),
        Err(Error::Disconnected)
    ));
    assert!(t.elapsed() < Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_thousand_calls_from_eight_threads_on_one_connection_get_their_own_answers() {
    let (_server, client) = local_server(&ServeOptions::new());
    thread::scope(|s| {
        for t in 0..8i64 {
            let client = &client;
            s.spawn(move || {
                for i in 0..125i64 {
                    assert_eq!(client.call(ADD, &(t * 1000, i)).unwrap(), t * 1000 + i);
                }
            });
        }
    });
}

#[test]
fn calls_run_concurrently_on_the_server() {
    let (_server, client) = local_server(&ServeOptions::new().workers(8));
    let start = Instant::now();
    thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| assert_eq!(client.call(SLOW, &(400, String::new())).unwrap(), 400));
        }
    });
    // One after the other they would take 3.2 s.
    assert!(
        start.elapsed() < Duration::from_millis(2400),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_call_waiting_for_a_later_call_on_the_same_connection_gets_it() {
    // `await_flag` was never called, so the thread that reads it runs it without handing
    // the reading on first: the server must notice it runs long and read `raise` anyway.
    let (_server, client) = local_server(&ServeOptions::new());
    let client = client.timeout(PATIENCE);
    thread::scope(|s| {
        let waiting = s.spawn(|| client.call_as::<_, ()>("await_flag", &()));
        wait_until("await_flag runs", || AWAITING.load(Ordering::SeqCst) == 1);
        client.call_as::<_, ()>("raise", &()).unwrap();
        waiting.join().unwrap().unwrap();
    });
}

#[test]
fn deadlines_are_honoured_by_the_client_and_the_server() {
    let (_server, client) = local_server(&ServeOptions::new().workers(1));
    let dir = tempdir("deadline");
    let marker = dir.join("started");
    let before = LATE_RUNS.load(Ordering::SeqCst);
    thread::scope(|s| {
        // Occupies the only worker for 1.5 s.
        let m = marker.display().to_string();
        let slow = s.spawn(|| client.call_timeout(SLOW, &(1500, m), PATIENCE));
        wait_until("the slow call started", || marker.exists());
        // The client gives up at its deadline...
        let t = Instant::now();
        let r = client.call_as_timeout::<_, ()>("late", &(), Duration::from_millis(200));
        assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(slow.join().unwrap().unwrap(), 1500);
    });
    // ... and the server, finding the deadline passed, never started it.
    assert_eq!(client.call(ADD, &(1, 2)).unwrap(), 3);
    assert_eq!(LATE_RUNS.load(Ordering::SeqCst), before);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn notifications_run_without_an_answer() {
    let (_server, client) = local_server(&ServeOptions::new());
    let before = NOTES.load(Ordering::SeqCst);
    for _ in 0..3 {
        client.notify("note", &()).unwrap();
    }
    wait_until("three notifications ran", || {
        NOTES.load(Ordering::SeqCst) >= before + 3
    });
}

#[test]
fn over_tcp_with_an_authkey() {
    let listener = Listener::bind(&"tcp://127.0.0.1:0".parse().unwrap())
        .unwrap()
        .authkey(b"secret");
    let server = Server::start(listener, &registry()).unwrap();
    let addr = server.address().to_string();
    let client = Client::connect_with(&addr, &ConnectOptions::new().authkey(b"secret")).unwrap();
    assert_eq!(client.call(ADD, &(5, 3)).unwrap(), 8);
    let wrong = Client::connect_with(&addr, &ConnectOptions::new().authkey(b"wrong"));
    assert!(
        matches!(wrong, Err(Error::Core(ipckit_rpc::CoreError::Auth(_)))),
        "{wrong:?}"
    );
}

fn socket_child(tag: &str) -> (ipckit_rpc::Child, Client, PathBuf) {
    let dir = tempdir(tag);
    let (addr, _) = unix_address(&dir);
    let child = Command::new("socket-server")
        .arg(&addr)
        .unwrap()
        .spawn()
        .unwrap();
    let client =
        Client::connect_with(&addr, &ConnectOptions::new().retry(true).timeout(PATIENCE)).unwrap();
    (child, client, dir)
}

#[test]
fn streams_across_processes_over_a_duplex_pipe() {
    enter(ROLES);
    let (mine, theirs) = ipckit_pipes::duplex().unwrap();
    let mut child = Command::new("pipe-server")
        .handle("conn", theirs)
        .spawn()
        .unwrap();
    let client = Client::new(mine).unwrap().timeout(PATIENCE);
    // Far more items than the window the server may send ahead.
    let items: Vec<u64> = client
        .stream(COUNT, &1000)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(items, (0..1000).collect::<Vec<_>>());
    assert_eq!(client.stream(COUNT, &0).unwrap().count(), 0);
    // An error mid-stream is one error item, then the end.
    let mut failing = client.stream(COUNT_THEN_FAIL, &3).unwrap();
    for i in 0..3 {
        assert_eq!(failing.next().unwrap().unwrap(), i);
    }
    match failing.next() {
        Some(Err(Error::Remote(f))) => assert_eq!((f.code, f.message.as_str()), (7, "ran dry")),
        other => panic!("expected the function's fault, got {other:?}"),
    }
    assert!(failing.next().is_none());
    // Errors before the first item come the same way.
    let mut unknown = client
        .stream(StreamMethod::<(), u64>::new("nope"), &())
        .unwrap();
    assert!(matches!(unknown.next(), Some(Err(Error::UnknownMethod(m))) if m == "nope"));
    assert!(unknown.next().is_none());
    let mut bad = client
        .stream(
            StreamMethod::<String, u64>::new("count"),
            &"many".to_owned(),
        )
        .unwrap();
    assert!(matches!(bad.next(), Some(Err(Error::BadParams { .. }))));
    // A stream is not a call, nor the other way round.
    assert!(matches!(
        client.call_as::<_, u64>("count", &3u64),
        Err(Error::WrongKind { streams: true, .. })
    ));
    let mut not_a_stream = client
        .stream(StreamMethod::<(i64, i64), i64>::new("add"), &(5, 3))
        .unwrap();
    assert!(matches!(
        not_a_stream.next(),
        Some(Err(Error::WrongKind { streams: false, .. }))
    ));
    assert_eq!(client.call(ADD, &(5, 3)).unwrap(), 8);
    drop(client);
    join_ok(&mut child);
}

#[test]
fn dropping_a_stream_stops_it_on_the_server() {
    enter(ROLES);
    let (mut child, client, dir) = socket_child("cancel");
    let marker = dir.join("stopped");
    let mut stream = client
        .stream(FOREVER, &marker.display().to_string())
        .unwrap();
    for i in 0..5 {
        assert_eq!(stream.next().unwrap().unwrap(), i);
    }
    drop(stream);
    // The server drops the iterator, having taken no more than the client had room for.
    wait_until("the server stopped the stream", || marker.exists());
    let given: u64 = std::fs::read_to_string(&marker).unwrap().parse().unwrap();
    assert!(
        (5..=40).contains(&given),
        "the server produced {given} items"
    );
    // The connection serves on.
    assert_eq!(client.call(ADD, &(5, 3)).unwrap(), 8);
    drop(client);
    child.kill().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn streams_and_calls_in_flight_at_once_on_one_connection() {
    enter(ROLES);
    let (mut child, client, dir) = socket_child("mixed");
    let client = client.timeout(PATIENCE);
    thread::scope(|s| {
        for t in 0..3u64 {
            let client = &client;
            s.spawn(move || {
                let n = 200 + t;
                let items: Vec<u64> = client
                    .stream(COUNT, &n)
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                assert_eq!(items, (0..n).collect::<Vec<_>>());
            });
        }
        for t in 0..3i64 {
            let client = &client;
            s.spawn(move || {
                for i in 0..100i64 {
                    assert_eq!(client.call(ADD, &(t * 1000, i)).unwrap(), t * 1000 + i);
                }
            });
        }
        // Two streams read in turns by one thread.
        let mut a = client.stream(COUNT, &100).unwrap();
        let mut b = client.stream(COUNT_THEN_FAIL, &100).unwrap();
        for i in 0..100 {
            assert_eq!(a.next().unwrap().unwrap(), i);
            assert_eq!(b.next().unwrap().unwrap(), i);
        }
        assert!(a.next().is_none());
        assert!(matches!(b.next(), Some(Err(Error::Remote(_)))));
        assert!(b.next().is_none());
    });
    drop(client);
    child.kill().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_server_killed_mid_stream_is_disconnected_within_a_second() {
    enter(ROLES);
    let (mut child, client, dir) = socket_child("kill-stream");
    let marker = dir.join("unused");
    let mut stream = client
        .stream_timeout(FOREVER, &marker.display().to_string(), PATIENCE)
        .unwrap();
    assert_eq!(stream.next().unwrap().unwrap(), 0);
    child.kill().unwrap();
    let killed = Instant::now();
    // The items already sent come first, then the end.
    let mut last = None;
    for item in stream.by_ref() {
        match item {
            Ok(_) => {}
            Err(e) => {
                last = Some(e);
                break;
            }
        }
    }
    assert!(matches!(last, Some(Error::Disconnected)), "{last:?}");
    assert!(killed.elapsed() <= Duration::from_secs(1));
    assert!(stream.next().is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_streams_timeout_bounds_each_wait_not_the_whole_stream() {
    enter(ROLES);
    let (mut child, client, dir) = socket_child("stream-deadline");
    // 5 items 150 ms apart: the stream lasts longer than the timeout, no wait does.
    let items: Vec<u64> = client
        .stream_timeout(TRICKLE, &(5, 150), Duration::from_millis(600))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(items, [0, 1, 2, 3, 4]);
    // An item that does not come within the timeout ends the stream with Timeout.
    let t = Instant::now();
    let mut slow = client
        .stream_timeout(TRICKLE, &(2, 3000), Duration::from_millis(200))
        .unwrap();
    assert!(matches!(slow.next(), Some(Err(Error::Timeout))));
    assert!(t.elapsed() < Duration::from_millis(2500));
    assert!(slow.next().is_none());
    assert_eq!(client.call(ADD, &(5, 3)).unwrap(), 8);
    drop(client);
    child.kill().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
