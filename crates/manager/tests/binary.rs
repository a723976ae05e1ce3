//! The `ipckit-manager serve` command: a stand-alone server.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use ipckit_manager::{Address, ConnectOptions, Manager};
use ipckit_testkit::{Bounded, PATIENCE};

const BIN: &str = env!("CARGO_BIN_EXE_ipckit-manager");

#[test]
fn tcp_without_an_authkey_is_refused() {
    let out = ipckit_testkit::run_bounded(Command::new(BIN).args([
        "serve",
        "--addr",
        "tcp://127.0.0.1:0",
    ]))
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("authkey"), "{err}");
}

#[test]
fn serves_until_shut_down_and_leaves_nothing() {
    let path = ipckit_core::temp_path("mgrbin");
    let key = ipckit_core::temp_path("mgrkey");
    std::fs::write(&key, "sesame\n").unwrap();
    let addr = Address::Unix(path.clone());
    let server = Bounded::start(
        Command::new(BIN)
            .args(["serve", "--addr", &addr.to_string(), "--authkey-file"])
            .arg(&key)
            .stderr(Stdio::piped()),
    )
    .unwrap();
    let m = Manager::connect_with(
        &addr,
        &ConnectOptions::new()
            .retry(true)
            .timeout(PATIENCE)
            .authkey(b"sesame"),
    )
    .unwrap();
    let q = m.queue::<String>("jobs").unwrap();
    q.put(&"one".into()).unwrap();
    assert_eq!(q.get_timeout(Duration::from_secs(5)).unwrap(), "one");
    m.shutdown().unwrap();
    let out = server.wait_within(PATIENCE).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!path.exists());
    std::fs::remove_file(key).unwrap();
}
