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

/// The seeds' four orders: (id, item, table).
const ORDERS: [(u32, &str, u32); 4] = [
    (1, "Margherita Pizza 🍕", 5),
    (2, "Caesar Salad 🥗", 3),
    (3, "Pasta Carbonara 🍝", 7),
    (4, "Tiramisu 🍰", 5),
];

fn restaurant_serves_every_order(out: &str) {
    for (id, item, table) in ORDERS {
        // One order's way through the restaurant, in causal order across the processes.
        assert_in_order(
            out,
            &[
                &format!("📝 Order taker: New order #{id} - {item} for table {table}"),
                &format!("👨‍🍳 Kitchen: Preparing order #{id} - {item}..."),
                &format!("✅ Kitchen: Order #{id} ready - {item}"),
                &format!("🍽️ Server: Delivering order #{id} to table {table}"),
                &format!("😊 Table {table} received their {item}"),
            ],
        );
        let delivered = format!("Delivering order #{id} ");
        assert_eq!(out.matches(&delivered).count(), 1, "{out}");
    }
    assert_eq!(out.matches("Delivering order #").count(), 4, "{out}");
    assert_in_order(
        out,
        &[
            "🍽️ Server: the kitchen closed; 4 orders served",
            "🎉 Restaurant service complete! All customers happy!",
        ],
    );
    assert!(
        !out.contains("None") && !out.contains("sentinel"),
        "no sentinel in the restaurant: {out}"
    );
}

#[test]
fn restaurant_over_every_mechanism() {
    for (mechanism, over) in [
        ("queue", "over queues in shared memory"),
        ("pipe", "over one-way pipes"),
        ("duplex", "over duplex pipes"),
        ("mqueue", "over POSIX message queues"),
    ] {
        let out = demo(&["restaurant", "--mechanism", mechanism, "--fast"]);
        assert!(out.contains(over), "--mechanism {mechanism}: {out}");
        restaurant_serves_every_order(&out);
    }
}

#[test]
fn restaurant_uses_a_queue_by_default() {
    let out = demo(&["restaurant", "--fast"]);
    assert!(out.contains("over queues in shared memory"), "{out}");
    restaurant_serves_every_order(&out);
}

#[test]
fn restaurant_lists_its_mechanisms() {
    let help = demo(&["restaurant", "--help"]);
    for mechanism in ["queue", "pipe", "duplex", "mqueue", "[default: queue]"] {
        assert!(help.contains(mechanism), "{mechanism} missing: {help}");
    }
    let out = run(
        env!("CARGO_BIN_EXE_demo"),
        &["restaurant", "--mechanism", "carrier-pigeon", "--fast"],
    );
    assert!(!out.status.success());
}

#[test]
fn producer_consumer_consumes_every_item_once() {
    let out = demo(&["producer-consumer", "--fast"]);
    assert_eq!(out.matches(": made item ").count(), 15, "{out}");
    assert_eq!(
        out.matches("🛒 Consumer: consumed item ").count(),
        15,
        "{out}"
    );
    for p in 1..=3 {
        for n in 1..=5 {
            // Made before consumed, and consumed once.
            assert_in_order(
                &out,
                &[
                    &format!("🏭 Producer {p}: made item {p}-{n}\n"),
                    &format!("🛒 Consumer: consumed item {p}-{n}\n"),
                ],
            );
            let consumed = format!("consumed item {p}-{n}\n");
            assert_eq!(out.matches(&consumed).count(), 1, "{out}");
        }
        assert!(
            out.contains(&format!("🏭 Producer {p}: made all 5 items, going home")),
            "{out}"
        );
    }
    assert_in_order(
        &out,
        &[
            "🛒 Consumer: every producer went home and the queue is empty",
            "✅ Consumer: all 15 items, each exactly once, each producer's in order",
            "🎉 All 15 items made, consumed exactly once each",
        ],
    );
}

#[test]
fn workers_do_every_task_once_and_go_home() {
    let out = demo(&["workers", "--fast"]);
    assert_eq!(out.matches(": processing Task ").count(), 10, "{out}");
    for task in 1..=10u64 {
        let result = format!(
            "📬 Boss: result of task {task} = {} (from worker ",
            task * task
        );
        assert_eq!(out.matches(&result).count(), 1, "{out}");
        assert_in_order(
            &out,
            &[&format!("📋 Boss: Task {task} goes on the queue"), &result],
        );
    }
    for worker in 1..=3 {
        assert!(
            out.contains(&format!(
                "👷 Worker {worker}: the task queue is closed and empty; did "
            )),
            "worker {worker} did not go home: {out}"
        );
    }
    assert_in_order(
        &out,
        &[
            "📋 Boss: that is every task; closing the task queue",
            "🎉 All 10 tasks done exactly once, and every worker went home by itself",
        ],
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
    for scenario in [
        "pipe",
        "parent-child",
        "fifo",
        "counter",
        "sensor",
        "restaurant",
        "producer-consumer",
        "workers",
    ] {
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
