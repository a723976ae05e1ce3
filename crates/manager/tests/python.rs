//! Python's own `multiprocessing.managers` clients (real interpreters) against an ipckit
//! manager: `SyncManager` types, `BaseManager.register` names, values both ways, and a
//! Python client SIGKILLed while it holds a lock.

use std::path::Path;

use ipckit_manager::{Address, Manager, ServeOptions, Server};
use ipckit_testkit::{Bounded, PATIENCE, python, wait_until};

const KEY: &str = "secret";
const SYNC: &str = include_str!("python/sync.py");

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
