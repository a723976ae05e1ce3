//! The local fast path across real processes: its queues are in anonymous shared memory
//! only (nothing in /dev/shm), freed when either side dies; large frames cross it in
//! pieces. The proxies' behaviours over it run in tests/manager.rs (`both_ways!`).

use std::{
    collections::BTreeSet,
    fs,
    time::{Duration, Instant},
};

use ipckit_manager::{Address, ConnectOptions, Error, Manager, ServeOptions, enter, spawn};
use ipckit_testkit::{PATIENCE, wait_until};

/// How many of `pid`'s descriptors and mappings are ipckit memfd segments (the queues and
/// wake-up words of the fast path are).
fn memfds(pid: &str) -> usize {
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                .filter(|l| l.to_string_lossy().contains("memfd:ipckit"))
                .count()
        })
        .unwrap_or(0);
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|m| m.lines().filter(|l| l.contains("memfd:ipckit")).count())
        .unwrap_or(0);
    fds + maps
}

/// The names in /dev/shm that carry one of `pids`.
fn shm_names_of(pids: &[u32]) -> BTreeSet<String> {
    fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| pids.iter().any(|p| n.contains(&format!("-{p}-"))))
                .collect()
        })
        .unwrap_or_default()
}

fn fast_client(addr: String) -> Result<(), String> {
    let m = Manager::connect(&addr.parse().map_err(|e| format!("{e}"))?, None)
        .map_err(|e| e.to_string())?;
    if !m.is_fast_path() {
        return Err("not on the fast path".into());
    }
    let _g = m
        .lock("l")
        .and_then(|l| l.acquire())
        .map_err(|e| e.to_string())?;
    m.event("joined")
        .and_then(|e| e.set())
        .map_err(|e| e.to_string())?;
    std::thread::sleep(PATIENCE * 2);
    Ok(())
}

#[test]
fn a_killed_clients_queues_and_lock_are_freed_at_once() {
    enter(&[]);
    let m = Manager::start().unwrap();
    assert!(m.is_fast_path(), "the fast path is on by default");
    let server = m.server_pid().unwrap().to_string();
    // Once a call is answered, the server has set up everything it keeps for a client.
    let lock = m.lock("l").unwrap();
    let before = memfds(&server);
    assert!(before > 0, "this client's own queues are in the server");
    let mut child = spawn(m.address().to_string(), fast_client).unwrap();
    m.event("joined")
        .unwrap()
        .with_timeout(PATIENCE)
        .wait()
        .unwrap();
    assert!(memfds(&server) > before, "the child's queues");
    assert!(shm_names_of(&[child.pid(), m.server_pid().unwrap()]).is_empty());
    assert!(lock.try_acquire().unwrap().is_none());

    let killed = Instant::now();
    child.kill().unwrap();
    let _g = lock.acquire_timeout(Duration::from_secs(1)).unwrap();
    assert!(killed.elapsed() < Duration::from_secs(1));
    wait_until("the killed client's queues are unmapped", || {
        memfds(&server) == before
    });
    assert!(killed.elapsed() < Duration::from_secs(2));
}

fn serve_at(addr: String) -> Result<(), String> {
    let addr: Address = addr.parse().map_err(|e| format!("{e}"))?;
    Manager::serve_forever(&addr, ServeOptions::new()).map_err(|e| e.to_string())
}

/// Blocks in a queue get until the server is killed; then drops its connection and
/// reports how long the get took to fail and whether any queue stays mapped.
fn blocked_then_clean(addr: String) -> Result<(u128, usize, usize), String> {
    let me = std::process::id().to_string();
    let alone = memfds(&me);
    let m = Manager::connect_with(
        &addr.parse().map_err(|e| format!("{e}"))?,
        &ConnectOptions::new().retry(true).timeout(PATIENCE),
    )
    .map_err(|e| e.to_string())?;
    if !m.is_fast_path() {
        return Err("not on the fast path".into());
    }
    let q = m.queue::<i32>("never").map_err(|e| e.to_string())?;
    m.event("blocking")
        .and_then(|e| e.set())
        .map_err(|e| e.to_string())?;
    let got = q.get();
    let failed_at = Instant::now();
    if !matches!(got, Err(Error::Disconnected)) {
        return Err(format!("expected Disconnected, got {got:?}"));
    }
    let connected = memfds(&me);
    drop(q);
    drop(m);
    let since = failed_at.elapsed().as_millis();
    Ok((
        since,
        connected.saturating_sub(alone),
        memfds(&me).saturating_sub(alone),
    ))
}

#[test]
fn a_killed_server_fails_blocked_calls_and_leaves_nothing() {
    enter(&[]);
    let addr = Address::Unix(ipckit_core::temp_path("mgrfast"));
    let mut server = spawn(addr.to_string(), serve_at).unwrap();
    let m =
        Manager::connect_with(&addr, &ConnectOptions::new().retry(true).timeout(PATIENCE)).unwrap();
    assert!(m.is_fast_path());
    let mut client = spawn(addr.to_string(), blocked_then_clean).unwrap();
    m.event("blocking")
        .unwrap()
        .with_timeout(PATIENCE)
        .wait()
        .unwrap();
    let lock = m.lock("held").unwrap();
    let _g = lock.acquire().unwrap();
    let l2 = lock.clone();
    let blocked = std::thread::spawn(move || (l2.acquire().map(|_| ()), Instant::now()));
    // Let both calls reach the server and block there.
    std::thread::sleep(Duration::from_millis(100));
    let pids = [server.pid(), client.pid(), std::process::id()];
    let killed = Instant::now();
    server.kill().unwrap();
    let (got, at) = blocked.join().unwrap();
    assert!(matches!(got, Err(Error::Disconnected)), "{got:?}");
    assert!(at.duration_since(killed) < Duration::from_secs(1));
    let (_, mapped, left) = client.join_timeout(PATIENCE).unwrap().unwrap();
    assert!(
        mapped > 0,
        "the client's queues were mapped while it was connected"
    );
    assert_eq!(
        left, 0,
        "the client's queues are unmapped once it drops them"
    );
    assert!(killed.elapsed() < Duration::from_secs(2));
    assert!(shm_names_of(&pids).is_empty());
    assert!(matches!(lock.try_acquire(), Err(Error::Disconnected)));
    // A SIGKILLed server cannot remove its socket file: whoever started it does.
    assert!(server.join_timeout(PATIENCE).is_err(), "killed, not ended");
    let Address::Unix(path) = &addr else {
        unreachable!("a Unix socket address")
    };
    std::fs::remove_file(path).expect("the killed server's socket file");
}

#[test]
fn large_values_and_answers_cross_in_pieces() {
    enter(&[]);
    let m = Manager::start().unwrap();
    assert!(m.is_fast_path());
    let d = m.dict::<u32, Vec<u8>>("blobs").unwrap();
    // A slot holds 4 KiB: these take hundreds of messages each way (a byte is a list
    // item on the wire).
    let big: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    d.insert(&0, &big).unwrap();
    assert_eq!(d.get(&0).unwrap().as_deref(), Some(&big[..]));
    for k in 1..4 {
        d.insert(&k, &big[..1 << 18].to_vec()).unwrap();
    }
    assert_eq!(d.items().unwrap().len(), 4);
    // Small calls from other threads interleave with large ones, each whole.
    let small = m.dict::<String, i64>("n").unwrap();
    let t = std::thread::spawn(move || {
        for _ in 0..2000 {
            small.incr("x", 1).unwrap();
        }
        small.get("x").unwrap()
    });
    for _ in 0..5 {
        assert_eq!(d.get(&0).unwrap().map(|v| v.len()), Some(big.len()));
    }
    assert_eq!(t.join().unwrap(), Some(2000));
}

/// A server of the protocol before the fast path: it drops a connection whose first frame
/// it does not know, and greets one that says `ipckit-manager`.
fn old_server(listener: std::os::unix::net::UnixListener) -> Vec<Vec<u8>> {
    use std::io::{Read, Write};
    let mut firsts = Vec::new();
    for _ in 0..2 {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut first = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut first).unwrap();
        if first == b"ipckit-manager" {
            // Hello { version: 2, max_value: 1024 } in postcard, framed.
            s.write_all(&[0, 0, 0, 3, 2, 0x80, 0x08]).unwrap();
            firsts.push(first);
            return firsts;
        }
        firsts.push(first);
    }
    firsts
}

#[test]
fn a_server_without_the_fast_path_is_reached_on_its_socket() {
    enter(&[]);
    let addr = Address::Unix(ipckit_core::temp_path("mgrold"));
    let Address::Unix(path) = &addr else {
        unreachable!()
    };
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    let server = std::thread::spawn(move || old_server(listener));
    let m = Manager::connect(&addr, None).unwrap();
    assert!(!m.is_fast_path());
    let firsts = server.join().unwrap();
    assert_eq!(
        firsts,
        [&b"ipckit-manager/local"[..], &b"ipckit-manager"[..]]
    );
    drop(m);
    let _ = fs::remove_file(path);
}

#[test]
fn a_server_may_keep_local_clients_on_the_socket() {
    enter(&[]);
    let m = Manager::start_with(ServeOptions::new().fast_path(false)).unwrap();
    assert!(!m.is_fast_path());
    let other = Manager::connect(m.address(), None).unwrap();
    assert!(!other.is_fast_path());
    other
        .dict::<String, i64>("d")
        .unwrap()
        .incr("a", 2)
        .unwrap();
    assert_eq!(
        m.dict::<String, i64>("d").unwrap().get("a").unwrap(),
        Some(2)
    );
}
