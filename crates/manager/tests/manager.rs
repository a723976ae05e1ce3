//! The manager across real processes: every object, atomic updates under concurrency,
//! watches, death of a client and of the server, bad input, TCP with an authkey.

use std::{
    collections::BTreeMap,
    io::Write as _,
    os::unix::net::UnixStream,
    thread,
    time::{Duration, Instant},
};

use ipckit_manager::{
    Address, Change, Child, ConnectOptions, CoreError, Error, Event, Manager, ServeOptions, Update,
    Value, enter, spawn,
};
use ipckit_testkit::{PATIENCE, wait_until};
use serde::{Deserialize, Serialize};

fn fresh_addr() -> Address {
    Address::Unix(ipckit_core::temp_path("mgrtest"))
}

/// A client, in a child process, of the server at `addr`; its error as text.
fn client(addr: &str) -> Result<Manager, String> {
    let addr: Address = addr.parse().map_err(|e| format!("{e}"))?;
    Manager::connect(&addr, None).map_err(|e| e.to_string())
}

/// A worker process's function: its server's address and a count; whether it came
/// through the fast path.
type Work = fn((String, u32)) -> Result<bool, String>;

/// Four worker processes of each `(work, count)` against `m`'s server, run together;
/// each must have come `via`.
fn run_workers(m: &Manager, via: Via, works: &[(Work, u32)]) {
    let addr = m.address().to_string();
    let kids: Vec<_> = works
        .iter()
        .flat_map(|&(work, n)| (0..4).map(move |_| (work, n)))
        .map(|(work, n)| spawn((addr.clone(), n), work).unwrap())
        .collect();
    for mut k in kids {
        let came = k.join_timeout(PATIENCE).unwrap();
        assert_eq!(came, Ok(via.fast()), "each worker came {via:?}");
    }
}

/// How local clients reach the server: every behaviour of the proxies runs both ways
/// ([`both_ways!`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Calls and answers over the Unix socket.
    Socket,
    /// Through the shared-memory queues of the fast path.
    Queues,
}

impl Via {
    fn fast(self) -> bool {
        self == Via::Queues
    }
}

/// A server's options for clients that come `via`.
fn opts(via: Via) -> ServeOptions {
    ServeOptions::new().fast_path(via.fast())
}

/// A server process whose clients come `via`, and a client of it.
fn start(via: Via) -> Manager {
    let m = Manager::start_with(opts(via)).unwrap();
    assert_eq!(m.is_fast_path(), via.fast());
    m
}

/// A client of the server at `addr`, which must have come `via`.
fn connect(addr: &Address, via: Via) -> Manager {
    let m = Manager::connect(addr, None).unwrap();
    assert_eq!(m.is_fast_path(), via.fast());
    m
}

/// Runs each test `name(via)` once over the socket and once over the fast path, as
/// `name::socket` and `name::queues`.
macro_rules! both_ways {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn socket() {
                super::$name(super::Via::Socket);
            }
            #[test]
            fn queues() {
                super::$name(super::Via::Queues);
            }
        }
    )*};
}

both_ways!(
    every_object_type,
    calls_sent_without_waiting,
    server_killed_with_calls_unanswered,
    wrong_type_names_object_and_both_types,
    four_processes_lose_no_update,
    watch_sees_every_change_in_order,
    slow_watcher_lags_without_stalling_others,
    lock_of_a_killed_holder_is_released_at_once,
    server_killed_disconnects_every_client_and_blocked_call,
    bad_input_drops_only_that_client,
    nothing_left_behind,
    a_stopped_watcher_process_never_blocks_the_others,
    many_threads_share_one_connection,
    rlock_barrier_and_namespace,
    rlock_and_permits_of_a_killed_holder_come_back,
    condition_across_processes,
    answers_may_exceed_the_largest_value,
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Player {
    name: String,
    level: u8,
}

fn every_object_type(via: Via) {
    enter(&[]);
    let m = start(via);

    let d = m.dict::<String, Player>("players").unwrap();
    let ana = Player {
        name: "Ana".into(),
        level: 3,
    };
    assert_eq!(d.insert("ana", &ana).unwrap(), None);
    assert_eq!(d.get("ana").unwrap(), Some(ana.clone()));
    assert!(d.contains("ana").unwrap());
    assert_eq!(d.get("bo").unwrap(), None);
    let bo = Player {
        name: "Bo".into(),
        level: 1,
    };
    assert_eq!(d.get_or_insert("bo", &bo).unwrap(), bo);
    assert_eq!(d.get_or_insert("bo", &ana).unwrap(), bo);
    assert_eq!(d.len().unwrap(), 2);
    assert_eq!(d.keys().unwrap(), ["ana", "bo"]);
    assert_eq!(d.values().unwrap(), [ana.clone(), bo.clone()]);
    assert_eq!(d.items().unwrap().len(), 2);
    assert_eq!(d.remove("bo").unwrap(), Some(bo.clone()));
    d.extend([(&"cy".to_string(), &bo)]).unwrap();
    assert_eq!(d.len().unwrap(), 2);
    d.clear().unwrap();
    assert!(d.is_empty().unwrap());

    let n = m.dict::<String, i64>("n").unwrap();
    assert_eq!(n.incr("a", 5).unwrap(), 5);
    assert_eq!(
        n.update("a", Update::Max(Value::Int(3))).unwrap(),
        Value::Int(5)
    );
    assert_eq!(
        n.update("a", Update::Min(Value::Int(3))).unwrap(),
        Value::Int(3)
    );
    assert_eq!(
        n.update("b", Update::SetIfAbsent(Value::Int(9))).unwrap(),
        Value::Int(9)
    );
    assert_eq!(n.compare_and_swap("b", Some(&9), &10).unwrap(), Ok(10));
    assert_eq!(
        n.compare_and_swap("b", Some(&9), &11).unwrap(),
        Err(Some(10))
    );
    assert_eq!(n.compare_and_swap("z", None, &1).unwrap(), Ok(1));
    let hist = m.dict::<String, Vec<i64>>("hist").unwrap();
    assert_eq!(
        hist.update("a", Update::Push(Value::Int(1))).unwrap(),
        Value::Int(1)
    );
    assert_eq!(
        hist.update("a", Update::Push(Value::Int(2))).unwrap(),
        Value::Int(2)
    );
    assert_eq!(hist.get("a").unwrap(), Some(vec![1, 2]));
    let bad = m.dict::<String, String>("s").unwrap();
    bad.insert("x", &"text".into()).unwrap();
    assert!(matches!(
        bad.update("x", Update::Add(Value::Int(1))),
        Err(Error::Invalid { .. })
    ));

    let l = m.list::<i32>("l").unwrap();
    assert_eq!(l.push(&1).unwrap(), 1);
    assert_eq!(l.extend(&[2, 3, 4]).unwrap(), 4);
    assert_eq!(l.get(-1).unwrap(), 4);
    l.set(0, &10).unwrap();
    l.insert(1, &11).unwrap();
    assert_eq!(l.snapshot().unwrap(), [10, 11, 2, 3, 4]);
    assert_eq!(l.remove(1).unwrap(), 11);
    assert_eq!(l.pop().unwrap(), Some(4));
    assert_eq!(l.slice(1, 10).unwrap(), [2, 3]);
    assert_eq!(l.len().unwrap(), 3);
    assert!(matches!(
        l.get(7),
        Err(Error::Index {
            index: 7,
            len: 3,
            ..
        })
    ));
    l.clear().unwrap();
    assert_eq!(l.pop().unwrap(), None);

    let v = m.value::<f64>("v").unwrap();
    assert_eq!(v.get().unwrap(), None);
    v.set(&1.5).unwrap();
    assert_eq!(v.incr(1.0).unwrap(), 2.5);
    assert_eq!(v.get().unwrap(), Some(2.5));

    let lock = m.lock("lock").unwrap();
    let g = lock.acquire().unwrap();
    assert!(lock.try_acquire().unwrap().is_none());
    g.release().unwrap();
    assert!(lock.try_acquire().unwrap().is_some());

    let sem = m.semaphore("sem", 2).unwrap();
    let a = sem.acquire().unwrap();
    let _b = sem.acquire().unwrap();
    assert!(sem.try_acquire().unwrap().is_none());
    assert!(matches!(
        sem.acquire_timeout(Duration::from_millis(50)),
        Err(Error::Timeout)
    ));
    drop(a);
    assert!(sem.try_acquire().unwrap().is_some());

    let ev = m.event("ev").unwrap();
    assert!(!ev.is_set().unwrap());
    assert!(matches!(
        ev.wait_timeout(Duration::from_millis(50)),
        Err(Error::Timeout)
    ));
    let ev2 = ev.clone();
    let waiter = thread::spawn(move || ev2.wait());
    thread::sleep(Duration::from_millis(20));
    ev.set().unwrap();
    waiter.join().unwrap().unwrap();
    ev.clear().unwrap();
    assert!(!ev.is_set().unwrap());

    let q = m.queue::<String>("q").unwrap();
    q.put(&"a".into()).unwrap();
    assert_eq!(q.len().unwrap(), 1);
    assert_eq!(q.get().unwrap(), "a");
    assert_eq!(q.try_get().unwrap(), None);
    assert!(matches!(
        q.get_timeout(Duration::from_millis(50)),
        Err(Error::Timeout)
    ));
    let q2 = q.clone();
    let getter = thread::spawn(move || q2.get());
    thread::sleep(Duration::from_millis(20));
    q.put(&"b".into()).unwrap();
    assert_eq!(getter.join().unwrap().unwrap(), "b");

    // A transaction is all or nothing.
    let scores = m.dict::<String, i64>("scores").unwrap();
    let log = m.list::<String>("log").unwrap();
    let total = m.value::<i64>("total").unwrap();
    let out = m
        .transaction([
            scores.tx_update("ana", Update::Add(Value::Int(2))).unwrap(),
            log.tx_push(&"ana+2".into()).unwrap(),
            total.tx_set(&2).unwrap(),
        ])
        .unwrap();
    assert_eq!(out[0], Value::Int(2));
    let failing = m.transaction([
        scores.tx_update("ana", Update::Add(Value::Int(1))).unwrap(),
        bad.tx_update("x", Update::Add(Value::Int(1))).unwrap(),
    ]);
    assert!(matches!(failing, Err(Error::Invalid { .. })));
    assert_eq!(scores.get("ana").unwrap(), Some(2));
    assert_eq!(log.snapshot().unwrap(), ["ana+2"]);
}

fn wrong_type_names_object_and_both_types(via: Via) {
    enter(&[]);
    let m = start(via);
    let _d = m.dict::<String, i64>("scores").unwrap();
    match m.dict::<String, String>("scores") {
        Err(Error::WrongType {
            name,
            expected,
            found,
        }) => {
            assert_eq!(name, "scores");
            assert!(
                expected.contains("String, alloc::string::String"),
                "{expected}"
            );
            assert!(found.contains("i64"), "{found}");
        }
        other => panic!("expected WrongType, got {other:?}"),
    }
    assert!(matches!(
        m.list::<i64>("scores"),
        Err(Error::WrongType { .. })
    ));
    assert!(matches!(m.lock("scores"), Err(Error::WrongType { .. })));
}

fn incr_worker((addr, n): (String, u32)) -> Result<bool, String> {
    let m = client(&addr)?;
    let d = m.dict::<String, i64>("scores").map_err(|e| e.to_string())?;
    let hits = m
        .dict::<String, Vec<u32>>("hits")
        .map_err(|e| e.to_string())?;
    for i in 0..n {
        d.incr("x", 1).map_err(|e| e.to_string())?;
        if i % 100 == 0 {
            hits.update("who", Update::Push(Value::Int(i.into())))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(m.is_fast_path())
}

/// Adds 1 to "x" `n` times without waiting for each answer, then takes every answer: the
/// values it saw, which must rise (its calls are applied in the order it sent them).
fn incr_later_worker((addr, n): (String, u32)) -> Result<bool, String> {
    let m = client(&addr)?;
    let d = m.dict::<String, i64>("scores").map_err(|e| e.to_string())?;
    let sent = (0..n)
        .map(|_| d.incr_later("x", 1))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let mut last = 0;
    for p in sent {
        let v = p.wait().map_err(|e| e.to_string())?;
        if v <= last {
            return Err(format!("{v} after {last}"));
        }
        last = v;
    }
    Ok(m.is_fast_path())
}

fn lock_worker((addr, n): (String, u32)) -> Result<bool, String> {
    let m = client(&addr)?;
    let d = m.dict::<String, i64>("scores").map_err(|e| e.to_string())?;
    let lock = m.lock("scores-lock").map_err(|e| e.to_string())?;
    for _ in 0..n {
        let _g = lock.acquire().map_err(|e| e.to_string())?;
        let v = d.get("y").map_err(|e| e.to_string())?.unwrap_or(0);
        d.insert("y", &(v + 1)).map_err(|e| e.to_string())?;
    }
    Ok(m.is_fast_path())
}

fn four_processes_lose_no_update(via: Via) {
    enter(&[]);
    let m = start(via);
    run_workers(&m, via, &[(incr_worker, 2000), (lock_worker, 300)]);
    let d = m.dict::<String, i64>("scores").unwrap();
    assert_eq!(d.get("x").unwrap(), Some(8000));
    assert_eq!(d.get("y").unwrap(), Some(1200));
    let hits = m.dict::<String, Vec<u32>>("hits").unwrap();
    assert_eq!(hits.get("who").unwrap().unwrap().len(), 80);
}

fn calls_sent_without_waiting(via: Via) {
    enter(&[]);
    let m = start(via);
    // Four processes, each with far more calls unanswered than the queues hold.
    run_workers(&m, via, &[(incr_later_worker, 3000)]);
    let d = m.dict::<String, i64>("scores").unwrap();
    assert_eq!(d.get("x").unwrap(), Some(12_000));

    // A call waited for sees what an earlier one not yet waited for did.
    let first = d.insert_later("a", &1).unwrap();
    assert_eq!(d.get("a").unwrap(), Some(1));
    assert_eq!(first.wait().unwrap(), None);
    // A dropped answer leaves its call made.
    drop(d.incr_later("dropped", 5).unwrap());
    assert_eq!(d.get("dropped").unwrap(), Some(5));
    // Each kind of answer, and an error, come through `wait`.
    let l = m.list::<String>("l").unwrap();
    let pushed: Vec<_> = (0..100)
        .map(|i| l.push_later(&i.to_string()).unwrap())
        .collect();
    let lens: Vec<usize> = pushed.into_iter().map(|p| p.wait().unwrap()).collect();
    assert_eq!(lens, (1..=100).collect::<Vec<_>>());
    let v = m.value::<i64>("v").unwrap();
    let added = v.incr_later(7).unwrap().wait_timeout(PATIENCE).unwrap();
    assert_eq!(added, 7);
    let mixed = m.dict::<String, Value>("mixed").unwrap();
    mixed.insert("s", &Value::Str("seven".into())).unwrap();
    let bad = mixed.incr_later("s", Value::Int(1)).unwrap();
    let max = mixed.update_later("n", Update::Max(Value::Int(3))).unwrap();
    assert!(matches!(bad.wait(), Err(Error::Invalid { .. })));
    assert_eq!(max.wait().unwrap(), Value::Int(3));
    // The connection is as good as before.
    assert_eq!(d.incr("x", 1).unwrap(), 12_001);
}

/// Sends calls without waiting, for as long as it can: until the server is gone.
fn send_until_gone(addr: String) -> Result<String, String> {
    let m = client(&addr)?;
    let d = m.dict::<String, i64>("d").map_err(|e| e.to_string())?;
    m.event("sending")
        .and_then(|e| e.set())
        .map_err(|e| e.to_string())?;
    let mut sent = Vec::new();
    loop {
        match d.incr_later("x", 1) {
            Ok(p) => sent.push(p),
            Err(Error::Disconnected) => break,
            Err(e) => return Err(format!("sending: {e}")),
        }
    }
    let gone = Instant::now();
    // Every answer not taken yet is `Disconnected` (or came before the end).
    for p in sent {
        match p.wait() {
            Ok(_) | Err(Error::Disconnected) => {}
            Err(e) => return Err(format!("waiting: {e}")),
        }
    }
    Ok(format!("{}", gone.elapsed().as_millis()))
}

fn server_killed_with_calls_unanswered(via: Via) {
    enter(&[]);
    let ServerAndClient {
        addr,
        mut server,
        m: _m,
        mut client,
    } = server_and_client(via, send_until_gone, "sending");
    thread::sleep(Duration::from_millis(50));
    let killed = Instant::now();
    server.kill().unwrap();
    let ms = millis(&mut client);
    assert!(ms < 1000, "the unanswered calls took {ms} ms to end");
    assert!(killed.elapsed() < Duration::from_secs(2));
    let _ = server.join_timeout(PATIENCE);
    if let Address::Unix(path) = &addr {
        let _ = std::fs::remove_file(path);
    }
}

fn many_changes((addr, n): (String, i64)) -> Result<(), String> {
    let m = client(&addr)?;
    let d = m.dict::<String, i64>("w").map_err(|e| e.to_string())?;
    for i in 0..n {
        d.insert("k", &i).map_err(|e| e.to_string())?;
    }
    d.remove("k").map_err(|e| e.to_string())?;
    Ok(())
}

fn watch_sees_every_change_in_order(via: Via) {
    enter(&[]);
    let m = start(via);
    let d = m.dict::<String, i64>("w").unwrap();
    d.insert("before", &1).unwrap();
    let mut w = d.watch().unwrap();
    assert_eq!(w.seq(), 1);
    assert_eq!(
        w.snapshot(),
        &Value::Map(vec![(Value::Str("before".into()), Value::Int(1))])
    );
    let mut child = spawn((m.address().to_string(), 500), many_changes).unwrap();
    for i in 0..500 {
        match w.recv_timeout(PATIENCE).unwrap() {
            Event::Changed { seq, change } => {
                assert_eq!(seq, i as u64 + 2);
                assert_eq!(
                    change,
                    Change::Set {
                        key: Value::Str("k".into()),
                        value: Value::Int(i)
                    }
                );
            }
            e => panic!("unexpected {e:?}"),
        }
    }
    assert!(matches!(
        w.recv_timeout(PATIENCE).unwrap(),
        Event::Changed {
            change: Change::Removed { .. },
            ..
        }
    ));
    child.join_timeout(PATIENCE).unwrap().unwrap();
}

fn slow_watcher_lags_without_stalling_others(via: Via) {
    enter(&[]);
    let addr = fresh_addr();
    let server = Manager::serve(&addr, opts(via).watch_backlog(16)).unwrap();
    let watcher = connect(server.address(), via);
    let mut w = watcher.value::<i64>("v").unwrap().watch().unwrap();
    let m = connect(server.address(), via);
    let v = m.value::<i64>("v").unwrap();
    let start = Instant::now();
    for i in 0..20_000 {
        v.set(&i).unwrap();
    }
    assert!(start.elapsed() < PATIENCE);
    // The watcher read nothing meanwhile: it lagged, and catches up with a snapshot.
    let mut lagged = false;
    loop {
        match w.recv_timeout(PATIENCE).unwrap() {
            Event::Lagged { snapshot, .. } => {
                lagged = true;
                if snapshot == Value::Int(19_999) {
                    break;
                }
            }
            Event::Changed { change, .. } => {
                if change
                    == (Change::Set {
                        key: Value::None,
                        value: Value::Int(19_999),
                    })
                {
                    break;
                }
            }
        }
    }
    assert!(lagged, "20 000 changes unread should have lagged");
    drop(server);
    assert!(!std::path::Path::new(&addr.to_string()[7..]).exists());
}

fn hold_lock(addr: String) -> Result<(), String> {
    let m = client(&addr)?;
    let _g = m
        .lock("l")
        .and_then(|l| l.acquire())
        .map_err(|e| e.to_string())?;
    m.event("held")
        .and_then(|e| e.set())
        .map_err(|e| e.to_string())?;
    thread::sleep(PATIENCE * 2);
    Ok(())
}

fn lock_of_a_killed_holder_is_released_at_once(via: Via) {
    enter(&[]);
    let m = start(via);
    let mut holder = spawn(m.address().to_string(), hold_lock).unwrap();
    m.event("held")
        .unwrap()
        .with_timeout(PATIENCE)
        .wait()
        .unwrap();
    let lock = m.lock("l").unwrap();
    assert!(matches!(
        lock.acquire_timeout(Duration::from_millis(100)),
        Err(Error::Timeout)
    ));
    let l2 = lock.clone();
    let waiter = thread::spawn(move || {
        let g = l2.acquire_timeout(PATIENCE);
        (g.map(|_| ()), Instant::now())
    });
    thread::sleep(Duration::from_millis(50));
    let killed = Instant::now();
    holder.kill().unwrap();
    let (got, at) = waiter.join().unwrap();
    got.unwrap();
    let took = at.duration_since(killed);
    assert!(took < Duration::from_secs(1), "released after {took:?}");
    // The timed-out acquire was withdrawn: the lock is free again now.
    assert!(lock.try_acquire().unwrap().is_some());
}

fn serve_at((addr, fast): (String, bool)) -> Result<(), String> {
    let addr: Address = addr.parse().map_err(|e| format!("{e}"))?;
    Manager::serve_forever(&addr, ServeOptions::new().fast_path(fast)).map_err(|e| e.to_string())
}

fn blocked_client(addr: String) -> Result<String, String> {
    let m = client(&addr)?;
    let q = m.queue::<i32>("never").map_err(|e| e.to_string())?;
    m.event("client-ready")
        .and_then(|e| e.set())
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    match q.get() {
        Err(Error::Disconnected) => Ok(format!("{}", start.elapsed().as_millis())),
        other => Err(format!("expected Disconnected, got {other:?}")),
    }
}

/// The milliseconds a client process reports.
fn millis(client: &mut Child<Result<String, String>>) -> u128 {
    let said = client.join_timeout(PATIENCE).unwrap().unwrap();
    said.parse().unwrap()
}

/// A server process, a client of it here, and a client process.
struct ServerAndClient {
    addr: Address,
    server: Child<Result<(), String>>,
    m: Manager,
    client: Child<Result<String, String>>,
}

/// A server process at a fresh address whose clients come `via`, a client of it here,
/// and a client process running `role`, once that process has set the event `ready`.
fn server_and_client(
    via: Via,
    role: fn(String) -> Result<String, String>,
    ready: &str,
) -> ServerAndClient {
    let addr = fresh_addr();
    let server = spawn((addr.to_string(), via.fast()), serve_at).unwrap();
    let m =
        Manager::connect_with(&addr, &ConnectOptions::new().retry(true).timeout(PATIENCE)).unwrap();
    assert_eq!(m.is_fast_path(), via.fast());
    let client = spawn(addr.to_string(), role).unwrap();
    m.event(ready)
        .unwrap()
        .with_timeout(PATIENCE)
        .wait()
        .unwrap();
    ServerAndClient {
        addr,
        server,
        m,
        client,
    }
}

fn server_killed_disconnects_every_client_and_blocked_call(via: Via) {
    enter(&[]);
    let ServerAndClient {
        addr,
        mut server,
        m,
        mut client,
    } = server_and_client(via, blocked_client, "client-ready");
    let lock = m.lock("l").unwrap();
    let _g = lock.acquire().unwrap();
    let other = connect(&addr, via);
    let l2 = other.lock("l").unwrap();
    let blocked = thread::spawn(move || l2.acquire().map(|_| ()));
    let q = other.queue::<i32>("q").unwrap();
    let blocked_get = thread::spawn(move || q.get());
    let mut w = other.dict::<String, i64>("w").unwrap().watch().unwrap();
    let blocked_watch = thread::spawn(move || w.recv());
    thread::sleep(Duration::from_millis(100));
    let killed = Instant::now();
    server.kill().unwrap();
    assert!(matches!(blocked.join().unwrap(), Err(Error::Disconnected)));
    assert!(matches!(
        blocked_get.join().unwrap(),
        Err(Error::Disconnected)
    ));
    assert!(matches!(
        blocked_watch.join().unwrap(),
        Err(Error::Disconnected)
    ));
    assert!(killed.elapsed() < Duration::from_secs(1));
    let ms = millis(&mut client);
    assert!(ms < 30_000);
    assert!(killed.elapsed() < Duration::from_secs(2));
    assert!(matches!(
        m.dict::<String, i64>("d"),
        Err(Error::Disconnected)
    ));
    assert!(matches!(lock.try_acquire(), Err(Error::Disconnected)));
    // A SIGKILLed server leaves its socket file: stale, replaced by the next bind there
    // (once the process is gone for good: its listening socket dies with it).
    assert!(matches!(
        server.join_timeout(PATIENCE),
        Err(ipckit_manager::CoreError::RoleKilled { .. })
    ));
    let Address::Unix(path) = &addr else {
        panic!("a Unix socket")
    };
    assert!(path.exists());
    let again =
        Manager::serve(&addr, opts(via)).expect("a new server binds where the killed one was");
    drop(again);
    assert!(!path.exists());
}

fn bad_input_drops_only_that_client(via: Via) {
    enter(&[]);
    let addr = fresh_addr();
    let server = Manager::serve(&addr, opts(via).max_value(1024)).unwrap();
    let good = connect(&addr, via);
    let d = good.dict::<String, String>("d").unwrap();
    d.insert("a", &"b".into()).unwrap();

    let path = addr.to_string()[7..].to_string();
    // Garbage in a frame.
    let mut s = UnixStream::connect(&path).unwrap();
    s.write_all(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]).unwrap();
    // A frame announcing 2^40 bytes.
    let mut big = UnixStream::connect(&path).unwrap();
    big.write_all(&(-1i32).to_be_bytes()).unwrap();
    big.write_all(&(1u64 << 40).to_be_bytes()).unwrap();
    for sock in [&mut s, &mut big] {
        sock.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut buf = Vec::new();
        // The server greets, then closes: read to the end.
        std::io::Read::read_to_end(sock, &mut buf).unwrap();
    }
    // A value above the maximum is TooLarge, and the client goes on.
    assert!(matches!(
        d.insert("big", &"x".repeat(2000)),
        Err(Error::TooLarge { max: 1024, .. })
    ));
    assert_eq!(d.get("a").unwrap(), Some("b".into()));
    drop(server);
}

#[test]
fn tcp_needs_and_checks_the_authkey() {
    enter(&[]);
    let tcp: Address = "tcp://127.0.0.1:0".parse().unwrap();
    assert!(matches!(
        Manager::serve(&tcp, ServeOptions::new()),
        Err(Error::Core(CoreError::InvalidOptions(_)))
    ));
    let server = Manager::serve(&tcp, ServeOptions::new().authkey(b"sesame")).unwrap();
    let m = Manager::connect(server.address(), Some(b"sesame")).unwrap();
    assert!(!m.is_fast_path(), "TCP clients use the socket");
    m.dict::<String, i64>("d").unwrap().incr("a", 1).unwrap();
    assert!(matches!(
        Manager::connect(server.address(), Some(b"wrong")),
        Err(Error::Core(CoreError::Auth(_)))
    ));
    assert!(Manager::connect(server.address(), None).is_err());
    assert_eq!(
        m.dict::<String, i64>("d").unwrap().get("a").unwrap(),
        Some(1)
    );
}

#[test]
fn a_started_server_takes_options() {
    enter(&[]);
    let m = Manager::start_with(ServeOptions::new().max_value(512).authkey(b"k")).unwrap();
    let d = m.dict::<String, String>("d").unwrap();
    assert!(matches!(
        d.insert("a", &"x".repeat(600)),
        Err(Error::TooLarge { max: 512, .. })
    ));
    assert!(Manager::connect(m.address(), None).is_err());
    let other = Manager::connect(m.address(), Some(b"k")).unwrap();
    other
        .dict::<String, String>("d")
        .unwrap()
        .insert("a", &"b".into())
        .unwrap();
    assert_eq!(d.get("a").unwrap().as_deref(), Some("b"));
}

fn nothing_left_behind(via: Via) {
    enter(&[]);
    let m = start(via);
    let pid = m.server_pid().unwrap();
    let Address::Unix(path) = m.address().clone() else {
        panic!("a Unix socket by default")
    };
    assert!(path.exists());
    let clone = m.clone();
    drop(m);
    assert!(path.exists(), "a clone keeps the server");
    drop(clone);
    assert!(!path.exists());
    wait_until("the server process exits", || {
        !ipckit_core::is_alive(pid as i32)
    });
}

fn stopped_watcher(addr: String) -> Result<u64, String> {
    let m = client(&addr)?;
    let mut w = m
        .value::<String>("big")
        .and_then(|v| v.watch())
        .map_err(|e| e.to_string())?;
    m.event("watching")
        .and_then(|e| e.set())
        .map_err(|e| e.to_string())?;
    let mut lagged = 0;
    loop {
        match w.recv_timeout(PATIENCE).map_err(|e| e.to_string())? {
            Event::Lagged { snapshot, .. } => {
                lagged += 1;
                if snapshot == Value::Str("last".into()) {
                    return Ok(lagged);
                }
            }
            Event::Changed { change, .. } => {
                if let Change::Set { value, .. } = change
                    && value == Value::Str("last".into())
                {
                    return Ok(lagged);
                }
            }
        }
    }
}

fn a_stopped_watcher_process_never_blocks_the_others(via: Via) {
    use nix::{
        sys::signal::{Signal, kill},
        unistd::Pid,
    };
    enter(&[]);
    let addr = fresh_addr();
    let server = Manager::serve(&addr, opts(via).watch_backlog(64)).unwrap();
    let m = connect(server.address(), via);
    let mut watcher = spawn(addr.to_string(), stopped_watcher).unwrap();
    m.event("watching")
        .unwrap()
        .with_timeout(PATIENCE)
        .wait()
        .unwrap();
    let pid = Pid::from_raw(watcher.pid() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    // 40 MB of changes: far more than the socket buffers and the backlog hold.
    let v = m.value::<String>("big").unwrap();
    let chunk = "x".repeat(4096);
    let start = Instant::now();
    for _ in 0..10_000 {
        v.set(&chunk).unwrap();
    }
    v.set(&"last".to_string()).unwrap();
    let took = start.elapsed();
    kill(pid, Signal::SIGCONT).unwrap();
    assert!(
        took < Duration::from_secs(10),
        "the writer was held up: {took:?}"
    );
    let lagged = watcher.join_timeout(PATIENCE).unwrap().unwrap();
    assert!(lagged >= 1, "the stopped watcher must have lagged");
}

fn many_threads_share_one_connection(via: Via) {
    enter(&[]);
    let m = start(via);
    let q = m.queue::<i64>("q").unwrap();
    let blocked = {
        let q = q.clone();
        thread::spawn(move || q.get())
    };
    let mut w = m.value::<i64>("v").unwrap().watch().unwrap();
    let d = m.dict::<String, i64>("d").unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let d = d.clone();
            let v = m.value::<i64>("v").unwrap();
            thread::spawn(move || {
                for i in 0..500 {
                    d.incr("n", 1).unwrap();
                    if t == 0 && i % 50 == 0 {
                        v.incr(1).unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(d.get("n").unwrap(), Some(4000));
    for seq in 1..=10 {
        match w.recv_timeout(PATIENCE).unwrap() {
            Event::Changed { seq: s, .. } => assert_eq!(s, seq),
            e => panic!("unexpected {e:?}"),
        }
    }
    q.put(&7).unwrap();
    assert_eq!(blocked.join().unwrap().unwrap(), 7);
}

fn barrier_party(addr: String) -> Result<usize, String> {
    let m = client(&addr)?;
    let b = m.barrier("b", 4).map_err(|e| e.to_string())?;
    m.dict::<String, i64>("arrived")
        .and_then(|d| d.incr("n", 1))
        .map_err(|e| e.to_string())?;
    b.with_timeout(PATIENCE).wait().map_err(|e| e.to_string())
}

fn rlock_barrier_and_namespace(via: Via) {
    enter(&[]);
    let m = start(via);

    // A barrier of four: three processes and this one.
    let addr = m.address().to_string();
    let mut parties: Vec<_> = (0..3)
        .map(|_| spawn(addr.clone(), barrier_party).unwrap())
        .collect();
    let arrived = m.dict::<String, i64>("arrived").unwrap();
    wait_until("three parties at the barrier", || {
        arrived.get("n").unwrap() == Some(3)
    });
    let b = m.barrier("b", 4).unwrap();
    assert!(matches!(m.barrier("b", 5), Err(Error::WrongType { .. })));
    let mut places = vec![b.with_timeout(PATIENCE).wait().unwrap()];
    for p in &mut parties {
        places.push(p.join_timeout(PATIENCE).unwrap().unwrap());
    }
    places.sort_unstable();
    assert_eq!(places, [0, 1, 2, 3]);

    // A re-entrant lock: the holding thread enters again; another thread waits.
    let r = m.rlock("r").unwrap();
    let g1 = r.acquire().unwrap();
    let g2 = r.try_acquire().unwrap().expect("re-entered");
    let r2 = r.clone();
    let other = thread::spawn(move || {
        let t = r2.try_acquire().unwrap().is_none();
        (t, r2.acquire_timeout(PATIENCE).map(|g| g.release()))
    });
    thread::sleep(Duration::from_millis(50));
    drop(g2);
    g1.release().unwrap();
    let (was_held, got) = other.join().unwrap();
    assert!(was_held);
    got.unwrap().unwrap();

    // A namespace: attributes of any type.
    let ns = m.namespace("ns").unwrap();
    ns.set("title", "scoreboard").unwrap();
    ns.set("round", &3u32).unwrap();
    assert_eq!(
        ns.get::<String>("title").unwrap().as_deref(),
        Some("scoreboard")
    );
    assert_eq!(
        ns.update("round", Update::Add(Value::Int(1))).unwrap(),
        Value::Int(4)
    );
    assert!(matches!(ns.get::<String>("round"), Err(Error::Value(_))));
    assert!(ns.remove("title").unwrap());
    assert_eq!(ns.get::<String>("title").unwrap(), None);
}

fn hold_rlock(addr: String) -> Result<(), String> {
    let m = client(&addr)?;
    let r = m.rlock("r").map_err(|e| e.to_string())?;
    let _a = r.acquire().map_err(|e| e.to_string())?;
    let _b = r.acquire().map_err(|e| e.to_string())?;
    let _permit = m
        .semaphore("s", 1)
        .and_then(|s| s.acquire())
        .map_err(|e| e.to_string())?;
    m.event("held")
        .and_then(|e| e.set())
        .map_err(|e| e.to_string())?;
    thread::sleep(PATIENCE * 2);
    Ok(())
}

fn rlock_and_permits_of_a_killed_holder_come_back(via: Via) {
    enter(&[]);
    let m = start(via);
    let mut holder = spawn(m.address().to_string(), hold_rlock).unwrap();
    m.event("held")
        .unwrap()
        .with_timeout(PATIENCE)
        .wait()
        .unwrap();
    let r = m.rlock("r").unwrap();
    let s = m.semaphore("s", 1).unwrap();
    assert!(r.try_acquire().unwrap().is_none());
    assert!(s.try_acquire().unwrap().is_none());
    holder.kill().unwrap();
    let start = Instant::now();
    let _g = r.acquire_timeout(Duration::from_secs(1)).unwrap();
    let _p = s.acquire_timeout(Duration::from_secs(1)).unwrap();
    assert!(start.elapsed() < Duration::from_secs(1));
}

fn wait_for_ready(addr: String) -> Result<i64, String> {
    let run = || -> ipckit_manager::Result<i64> {
        let m = Manager::connect(&addr.parse()?, None)?;
        let c = m.condition("c")?;
        let v = m.value::<i64>("ready")?;
        let _g = c.acquire()?;
        m.event("waiting")?.set()?;
        while v.get()?.is_none() {
            c.with_timeout(PATIENCE).wait()?;
        }
        Ok(v.get()?.unwrap_or(0))
    };
    run().map_err(|e| e.to_string())
}

fn condition_across_processes(via: Via) {
    enter(&[]);
    let m = start(via);
    let c = m.condition("c").unwrap();
    assert!(matches!(c.notify(1), Err(Error::Invalid { .. })));
    {
        let _g = c.acquire().unwrap();
        assert!(!c.wait_timeout(Duration::from_millis(50)).unwrap());
        // The lock is ours again after the timeout.
        assert_eq!(c.notify_all().unwrap(), 0);
    }
    let mut waiter = spawn(m.address().to_string(), wait_for_ready).unwrap();
    m.event("waiting")
        .unwrap()
        .with_timeout(PATIENCE)
        .wait()
        .unwrap();
    {
        // Taken only once the waiter gave it up to wait.
        let _g = c.with_timeout(PATIENCE).acquire().unwrap();
        m.value::<i64>("ready").unwrap().set(&7).unwrap();
        assert_eq!(c.notify(1).unwrap(), 1);
    }
    assert_eq!(waiter.join_timeout(PATIENCE).unwrap().unwrap(), 7);
}

fn answers_may_exceed_the_largest_value(via: Via) {
    enter(&[]);
    let addr = fresh_addr();
    let _server = Manager::serve(&addr, opts(via).max_value(8192)).unwrap();
    let m = connect(&addr, via);
    let d = m.dict::<u32, String>("d").unwrap();
    let v = "x".repeat(4000);
    for k in 0..100 {
        d.insert(&k, &v).unwrap();
    }
    // 400 kB in one answer, 50 times the largest value.
    assert_eq!(d.items().unwrap().len(), 100);
    assert_eq!(
        d.watch()
            .unwrap()
            .snapshot()
            .to_typed::<BTreeMap<u32, String>>()
            .unwrap()
            .len(),
        100
    );
}

#[test]
fn a_started_server_killed_leaves_no_socket_file_once_its_handle_is_dropped() {
    enter(&[]);
    let m = Manager::start().unwrap();
    let Address::Unix(path) = m.address().clone() else {
        panic!("Manager::start listens on a Unix socket file")
    };
    let pid = m.server_pid().expect("a started server's pid");
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_until("the server is gone", || {
        matches!(m.dict::<String, i64>("d"), Err(Error::Disconnected))
    });
    assert!(
        path.exists(),
        "a killed server cannot remove its socket file"
    );
    drop(m);
    assert!(!path.exists(), "the handle that started it removes it");
}
