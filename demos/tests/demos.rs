//! Every demo, run as a user runs it (with `--fast`): it must succeed, narrate, and leave
//! nothing behind.

use std::{
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

/// Runs `program` with `args`, failing the test if it takes more than two minutes.
fn run(program: &str, args: &[&str]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the demo");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{program} {args:?} did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn demo(args: &[&str]) -> String {
    let out = run(env!("CARGO_BIN_EXE_demo"), args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "demo {args:?} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn assert_in_order(text: &str, lines: &[&str]) {
    let mut rest = text;
    for line in lines {
        let at = rest
            .find(line)
            .unwrap_or_else(|| panic!("missing {line:?} (in order) in:\n{text}"));
        rest = &rest[at + line.len()..];
    }
}

#[test]
fn pipe() {
    let out = demo(&["pipe", "--fast"]);
    assert_in_order(
        &out,
        &[
            "Receiver: Got 'Hello!'",
            "Receiver: Got 'How are you?'",
            "Receiver: Got 'Pizza time! 🍕'",
            "Receiver: Got 'STOP'",
            "Communication complete!",
        ],
    );
}

#[test]
fn parent_child() {
    let out = demo(&["parent-child", "--fast"]);
    assert_in_order(
        &out,
        &[
            "Child received: Hello from the parent!",
            "Child: the parent closed the pipe",
        ],
    );
}

#[test]
fn fifo_leaves_no_file() {
    let out = demo(&["fifo", "--fast"]);
    assert_in_order(
        &out,
        &[
            "Reader: Received '🌟 First message through named pipe!'",
            "Reader: Received 'STOP'",
            "🧹 Removed",
        ],
    );
    let path = out
        .split_whitespace()
        .find(|w| w.contains("ipckit-fifo-"))
        .expect("the demo names its FIFO")
        .trim_end_matches(';');
    assert!(
        !std::path::Path::new(path).exists(),
        "{path} was left behind"
    );
}

#[test]
fn verbose_shows_ipckit_events() {
    let out = run(
        env!("CARGO_BIN_EXE_demo"),
        &["parent-child", "--fast", "-v"],
    );
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spawned role") && err.contains("peer disconnected"),
        "{err}"
    );
}

#[test]
fn every_scenario_has_help() {
    for scenario in ["pipe", "parent-child", "fifo"] {
        let out = demo(&[scenario, "--help"]);
        assert!(out.contains("--fast"), "{scenario} --help: {out}");
    }
}

#[test]
fn readme_example_runs() {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_demo"))
        .with_file_name("examples")
        .join("taste");
    if !exe.exists() {
        // `cargo test` builds examples; a filtered run may not have.
        eprintln!("skipped: {} not built", exe.display());
        return;
    }
    let out = run(exe.to_str().unwrap(), &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("got Pizza time! 🍕"));
}
