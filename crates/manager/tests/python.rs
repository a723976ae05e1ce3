//! Python's own `multiprocessing.managers` clients (real interpreters) against an ipckit
//! manager: `SyncManager` types, `BaseManager.register` names, values both ways, and a
//! Python client SIGKILLed while it holds a lock.

use std::path::Path;

use ipckit_manager::{Address, Manager, ServeOptions, Server};
use ipckit_testkit::{Bounded, PATIENCE, python, wait_until};

const KEY: &str = "secret";
const SYNC: &str = include_str!("python/sync.py");
const METHODS: &str = include_str!("python/methods.py");
const CROSS: &str = include_str!("python/cross.py");

fn server() -> (Server, String) {
    let path = ipckit_core::temp_path("pymgr");
    let addr = Address::Unix(path.clone());
    let opts = ServeOptions::new().authkey(KEY.as_bytes()).legacy_md5(true);
    let server = Manager::serve(&addr, opts).unwrap();
    (server, path.to_string_lossy().into_owned())
}

fn run(py: &Path, script: &str, args: &[&str]) -> String {
    let out = Bounded::python(py, script, args)
        .unwrap()
        .wait_ok("python client");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sync_types(py: &Path) {
    let (server, path) = server();
    assert_eq!(run(py, SYNC, &[&path, KEY, "sync"]).trim(), "ok");
    drop(server);
}

fn register_style(py: &Path) {
    let (server, path) = server();
    let m = Manager::connect(server.address(), Some(KEY.as_bytes())).unwrap();
    let scores = m.dict::<String, i64>("scores").unwrap();
    let items = m.list::<i64>("items").unwrap();
    let count = m.value::<i64>("count").unwrap();
    m.lock("guard").unwrap();
    let jobs = m.queue::<String>("jobs").unwrap();
    scores.insert(&"rust".to_string(), &7).unwrap();
    items.push(&1).unwrap();
    items.push(&2).unwrap();
    assert_eq!(run(py, SYNC, &[&path, KEY, "register"]).trim(), "ok");
    // Python's writes are what Rust reads.
    assert_eq!(scores.get(&"c".to_string()).unwrap(), Some(3));
    assert_eq!(scores.get(&"rust".to_string()).unwrap(), Some(7));
    assert_eq!(items.snapshot().unwrap(), vec![1, 2, 3, 4]);
    assert_eq!(count.get().unwrap(), Some(41));
    assert_eq!(jobs.try_get().unwrap(), None);
    drop(server);
}

/// The lines of `ours` that differ from `theirs`, or `None`.
fn differences(ours: &str, theirs: &str) -> Option<String> {
    let (a, b): (Vec<_>, Vec<_>) = (ours.lines().collect(), theirs.lines().collect());
    let mut out = String::new();
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (a.get(i).copied(), b.get(i).copied());
        if x != y {
            out += &format!(
                "ipckit: {}\npython: {}\n",
                x.unwrap_or("-"),
                y.unwrap_or("-")
            );
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Every proxy method, through `SyncManager` types and through registered names, gives
/// what Python's own manager gives (the same script run against both).
fn methods_as_pythons_own(py: &Path) {
    let own = run(py, METHODS, &["own"]);
    assert!(own.lines().count() > 150, "{own}");
    let (server, path) = server();
    let ours = run(py, METHODS, &["sync", &path, KEY]);
    if let Some(d) = differences(&ours, &own) {
        panic!("SyncManager types differ from Python's own manager:\n{d}");
    }
    // The same calls on a Rust process's objects, by registered name (AutoProxy).
    let m = Manager::connect(server.address(), Some(KEY.as_bytes())).unwrap();
    m.dict::<String, i64>("d").unwrap();
    m.list::<i64>("l").unwrap().extend(&[3, 1, 2]).unwrap();
    m.value::<i64>("v").unwrap().set(&5).unwrap();
    m.lock("lock").unwrap();
    m.rlock("rlock").unwrap();
    m.semaphore("sem", 2).unwrap();
    m.condition("cond").unwrap();
    m.event("ev").unwrap();
    m.barrier("bar", 1).unwrap();
    m.queue::<String>("jq").unwrap();
    let ours = run(py, METHODS, &["register", &path, KEY]);
    let theirs: String = own
        .lines()
        .filter(|l| !l.starts_with("sync "))
        .map(|l| format!("{l}\n"))
        .collect();
    if let Some(d) = differences(&ours, &theirs) {
        panic!("registered names differ from Python's own manager:\n{d}");
    }
    drop(server);
}

#[test]
fn python_3_11_methods() {
    if let Some(py) = python(11..=11) {
        methods_as_pythons_own(&py);
    }
}

#[test]
fn python_3_12_methods() {
    if let Some(py) = python(12..=12) {
        methods_as_pythons_own(&py);
    }
}

#[test]
fn python_3_13_methods() {
    if let Some(py) = python(13..=13) {
        methods_as_pythons_own(&py);
    }
}

#[test]
fn python_3_12_sync_manager() {
    if let Some(py) = python(12..=12) {
        sync_types(&py);
    }
}

#[test]
fn python_3_12_registered_names() {
    if let Some(py) = python(12..=12) {
        register_style(&py);
    }
}

#[test]
fn python_3_13_sync_manager() {
    if let Some(py) = python(13..=13) {
        sync_types(&py);
    }
}

#[test]
fn python_3_13_registered_names() {
    if let Some(py) = python(13..=13) {
        register_style(&py);
    }
}

#[test]
fn python_3_11_legacy_md5() {
    if let Some(py) = python(11..=11) {
        sync_types(&py);
        register_style(&py);
    }
}

const HOLDER: &str = r#"
import sys, time
from multiprocessing.managers import BaseManager
class M(BaseManager): pass
M.register("get_guard")
m = M(address=sys.argv[1], authkey=sys.argv[2].encode())
m.connect()
lock = m.get_guard()
lock.acquire()
print("held", flush=True)
time.sleep(60)
"#;

#[test]
fn a_killed_python_client_gives_its_lock_back() {
    let Some(py) = python(12..=13) else { return };
    let (server, path) = server();
    let m = Manager::connect(server.address(), Some(KEY.as_bytes())).unwrap();
    let lock = m.lock("guard").unwrap();
    let mut holder = Bounded::python(&py, HOLDER, &[&path, KEY]).unwrap();
    wait_until("the Python client holds the lock", || {
        lock.try_acquire().map(|g| g.is_none()).unwrap_or(false)
    });
    let pid = holder.child().id();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // The dead client's lock comes back.
    let _guard = lock.acquire_timeout(PATIENCE).unwrap();
    let _ = holder.child().wait();
}

#[test]
fn a_python_condition_waiter_is_woken_by_a_rust_notify() {
    for py in pythons() {
        let (server, path) = server();
        let m = Manager::connect(server.address(), Some(KEY.as_bytes())).unwrap();
        let cond = m.condition("cond").unwrap().with_timeout(PATIENCE);
        let ready = m.event("ready").unwrap();
        let waiter = Bounded::python(&py, CROSS, &[&path, KEY, "cond-wait"]).unwrap();
        ready.wait_timeout(PATIENCE).unwrap();
        // The lock is free once the Python process waits.
        let guard = cond.acquire().unwrap();
        assert_eq!(cond.notify(1).unwrap(), 1);
        drop(guard);
        let out = waiter.wait_ok("python waiter");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "True");
    }
}

#[test]
fn a_rust_condition_waiter_is_woken_by_a_python_notify() {
    for py in pythons() {
        let (server, path) = server();
        let m = Manager::connect(server.address(), Some(KEY.as_bytes())).unwrap();
        let cond = m.condition("cond").unwrap().with_timeout(PATIENCE);
        let ready = m.event("ready").unwrap();
        let guard = cond.acquire().unwrap();
        let notifier = Bounded::python(&py, CROSS, &[&path, KEY, "cond-notify"]).unwrap();
        ready.set().unwrap();
        assert!(cond.wait_timeout(PATIENCE).unwrap(), "not notified");
        drop(guard);
        let out = notifier.wait_ok("python notifier");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "notified");
    }
}

#[test]
fn a_python_join_waits_for_another_processs_task_done() {
    for py in pythons() {
        let (server, path) = server();
        let m = Manager::connect(server.address(), Some(KEY.as_bytes())).unwrap();
        let jobs = m.queue::<i64>("jobs").unwrap();
        let done = m.list::<i64>("done").unwrap();
        let producer = Bounded::python(&py, CROSS, &[&path, KEY, "produce"]).unwrap();
        wait_until("the producer put its jobs", || jobs.len().unwrap() == 5);
        let consumer = Bounded::python(&py, CROSS, &[&path, KEY, "consume"]).unwrap();
        let out = consumer.wait_ok("python consumer");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "consumed");
        let out = producer.wait_ok("python producer");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5");
        assert_eq!(done.snapshot().unwrap(), vec![0, 1, 2, 3, 4]);
    }
}

/// Python 3.11, 3.12 and 3.13 (those found, unless missing ones fail the run).
fn pythons() -> Vec<std::path::PathBuf> {
    (11..=13).filter_map(|v| python(v..=v)).collect()
}
