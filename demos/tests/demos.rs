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

/// The values printed after `prefix` on each line, in order.
fn values_after(text: &str, prefix: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.split_once(prefix))
        .map(|(_, v)| v.trim().parse().expect("a number"))
        .collect()
}

#[test]
fn counter_under_the_lock_reaches_15() {
    let out = demo(&["counter", "--fast"]);
    assert!(out.contains("Value<u64>"), "{out}");
    // Printed under the lock: every value once, in order.
    assert_eq!(
        values_after(&out, ": counter = "),
        (1..=15).collect::<Vec<_>>()
    );
    assert_in_order(
        &out,
        &[
            "🎯 Final counter value: 15",
            "Expected: 15 (3 processes × 5 increments)",
            "No update lost",
        ],
    );
}

#[test]
fn counter_atomic_reaches_15() {
    let out = demo(&["counter", "--atomic", "--fast"]);
    assert!(out.contains("Shared<AtomicU64>"), "{out}");
    // Printed after the add, so perhaps out of order, but every value exactly once.
    let mut seen = values_after(&out, ": counter = ");
    seen.sort_unstable();
    assert_eq!(seen, (1..=15).collect::<Vec<_>>());
    assert_in_order(&out, &["🎯 Final counter value: 15", "No update lost"]);
}

#[test]
fn counter_unsafe_reports_lost_updates() {
    let out = demo(&["counter", "--unsafe", "--fast"]);
    assert_eq!(out.matches(", wrote ").count(), 15, "{out}");
    let fin = values_after(&out, "Final counter value: ");
    assert_eq!(fin.len(), 1, "{out}");
    let lost = 15 - fin[0];
    if lost > 0 {
        assert!(
            out.contains(&format!("{lost} of 15 updates were lost"))
                && out.contains("the race the lock prevents"),
            "{out}"
        );
    } else {
        assert!(out.contains("No update was lost this time"), "{out}");
    }
}

#[test]
fn counter_variants_exclude_each_other() {
    let out = run(
        env!("CARGO_BIN_EXE_demo"),
        &["counter", "--atomic", "--unsafe", "--fast"],
    );
    assert!(!out.status.success());
    let help = demo(&["counter", "--help"]);
    assert!(
        help.contains("--atomic") && help.contains("--unsafe"),
        "{help}"
    );
}

#[test]
fn sensor_monitor_sees_every_reading() {
    let out = demo(&["sensor", "--fast"]);
    assert_in_order(
        &out,
        &[
            "📊 Monitor: reading 1 = 20.00°C, average of the last 1 = 20.00°C",
            "📊 Monitor: reading 5 = 22.10°C, average of the last 5 = 21.08°C",
            "📊 Monitor: reading 20 = 29.60°C, average of the last 5 = 28.58°C",
            "the sensor closed the ring",
            "📊 Final stats: 20 readings, in order",
            "🎉 The monitor saw all 20 readings, in order",
        ],
    );
    assert_eq!(out.matches("🌡️ Sensor: reading ").count(), 20, "{out}");
    assert_eq!(out.matches("📊 Monitor: reading ").count(), 20, "{out}");
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
    for scenario in ["pipe", "parent-child", "fifo", "counter", "sensor"] {
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
