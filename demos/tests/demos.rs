//! Every demo, run as a user runs it (with `--fast`): it must succeed, narrate, and leave
//! nothing behind.

use std::{
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

/// Runs `program` with `args`, failing the test if it takes more than two minutes.
fn run(program: &str, args: &[&str]) -> Output {
    ipckit_testkit::Bounded::start(Command::new(program).args(args))
        .expect("start the demo")
        .wait_within(Duration::from_secs(120))
        .expect("output")
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
fn sync_primitives_each_do_their_job() {
    let out = demo(&["sync", "--fast"]);
    assert_in_order(
        &out,
        &[
            "✅ Lock: 3 entries, never more than 1 inside",
            "Process 1 has the lock again (inner)",
            "Parent: took the lock; it says its previous holder died",
            "✅ RLock",
            "✅ Semaphore: 5 processes served",
            "Parent: setting the event",
            "✅ Event: all 3 waiters went on",
            "✅ Barrier: nobody started before all 3 were ready",
            "✅ Condition: each item went to exactly one consumer",
            "🎉 Every primitive did its job",
        ],
    );
    assert_eq!(out.matches(" got a slot (").count(), 5, "{out}");
    let most = out
        .lines()
        .filter_map(|l| l.split_once(" got a slot ("))
        .map(|(_, rest)| rest.split(' ').next().unwrap().parse::<u32>().unwrap())
        .max();
    assert!(most.is_some_and(|m| m <= 2), "{out}");
    for line in out.lines().filter(|l| l.contains("passed the barrier")) {
        let at = out.find(line).unwrap();
        assert_eq!(
            out[..at].matches("waiting at the barrier").count(),
            3,
            "{line} before all arrived:\n{out}"
        );
    }
    assert_eq!(out.matches(" took an item").count(), 2, "{out}");
}

/// The Python tutorial's four orders: (id, item, table).
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
        ("socket", "over Unix sockets"),
    ] {
        let out = demo(&["restaurant", "--mechanism", mechanism, "--fast"]);
        assert!(out.contains(over), "--mechanism {mechanism}: {out}");
        restaurant_serves_every_order(&out);
    }
}

/// Over Redis: a private broker the demo starts and stops, and a broker given by URL,
/// which the demo leaves as it found it (its queues' keys removed).
#[test]
fn restaurant_over_redis() {
    let out = demo(&["restaurant", "--mechanism", "redis", "--fast"]);
    assert!(out.contains("over Redis streams"), "{out}");
    restaurant_serves_every_order(&out);

    let server = ipckit_redis::RedisServer::start()
        .unwrap_or_else(|e| panic!("this test needs redis-server: {e}"));
    let out = demo(&[
        "restaurant",
        "--mechanism",
        "redis",
        "--redis-url",
        &server.url(),
        "--fast",
    ]);
    restaurant_serves_every_order(&out);
    let mut keys = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    std::io::Write::write_all(&mut keys, b"DBSIZE\r\n").unwrap();
    let mut reply = [0u8; 4];
    std::io::Read::read_exact(&mut keys, &mut reply).unwrap();
    assert_eq!(&reply, b":0\r\n", "the demo left keys on the broker");
}

/// The kitchen SIGKILLed after sending order #2 on and before acknowledging it: a new
/// kitchen claims the order and cooks it again, and the server serves it once.
#[test]
fn restaurant_over_redis_survives_a_killed_kitchen() {
    let out = demo(&[
        "restaurant",
        "--mechanism",
        "redis",
        "--kill-kitchen",
        "--fast",
    ]);
    assert_in_order(
        &out,
        &[
            "✅ Kitchen: Order #2 ready",
            "💥 Kitchen: killed after sending order #2, before acknowledging it",
            "🔁 Restaurant: the kitchen died; a new kitchen takes over its orders",
            "🍽️ Server: order #2 again (cooked twice): already served, not served again",
        ],
    );
    assert_eq!(out.matches("Preparing order #2 ").count(), 2, "{out}");
    restaurant_serves_every_order(&out);
    let refused = run(
        env!("CARGO_BIN_EXE_demo"),
        &[
            "restaurant",
            "--mechanism",
            "pipe",
            "--kill-kitchen",
            "--fast",
        ],
    );
    assert!(!refused.status.success());
}

/// Over a manager's queues: the manager process the demo started is gone after, and its
/// socket file with it.
#[test]
fn restaurant_over_manager_queues() {
    let out = demo(&["restaurant", "--mechanism", "manager", "--fast"]);
    assert!(
        out.contains("over queues held by a manager process"),
        "{out}"
    );
    restaurant_serves_every_order(&out);
    let path = socket_file(&out);
    assert!(!path.exists(), "{} was left behind", path.display());
}

/// The kitchen SIGKILLed while cooking order #2, which it took from the manager's queue
/// (gone from it) and noted in the manager's dict: a new kitchen takes it over from the
/// dict, and the order is served once.
#[test]
fn restaurant_over_manager_queues_survives_a_killed_kitchen() {
    let out = demo(&[
        "restaurant",
        "--mechanism",
        "manager",
        "--kill-kitchen",
        "--fast",
    ]);
    assert_in_order(
        &out,
        &[
            "👨‍🍳 Kitchen: Preparing order #2 ",
            "💥 Kitchen: killed while cooking order #2, taken from the queue and not sent on",
            "🔁 Restaurant: the kitchen died holding order(s) [2]; a manager queue forgets",
            "👨‍🍳 Kitchen: taking over order #2 from kitchen ",
            "👨‍🍳 Kitchen: Preparing order #2 ",
            "✅ Kitchen: Order #2 ready",
            "through a kitchen crash",
        ],
    );
    assert_eq!(out.matches("Preparing order #2 ").count(), 2, "{out}");
    assert_eq!(
        out.matches("✅ Kitchen: Order #2 ready").count(),
        1,
        "{out}"
    );
    restaurant_serves_every_order(&out);
    let path = socket_file(&out);
    assert!(!path.exists(), "{} was left behind", path.display());
}

/// The three stations as three programs on one broker: the kitchen SIGKILLed mid-order,
/// another kitchen started, and serve-tables' final tally has every order once.
#[test]
fn restaurant_stations_across_processes_survive_a_killed_kitchen() {
    let server = ipckit_redis::RedisServer::start()
        .unwrap_or_else(|e| panic!("this test needs redis-server: {e}"));
    let url = server.url();
    let station = |args: &[&str]| {
        let mut all = vec!["restaurant"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--redis-url", &url, "--name", "test"]);
        Live::start(&all)
    };
    let mut tables = station(&["serve-tables", "--fast"]);
    // At the tutorial's pace: order #2 cooks for a second, long enough to be killed in.
    let mut kitchen = station(&["serve-kitchen"]);
    let mut taker = station(&["take-orders", "--orders", "6", "--fast"]);
    kitchen.wait_for("👨‍🍳 Kitchen: Preparing order #2 ");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(kitchen.child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the kitchen");
    let killed = kitchen.child.wait().expect("reap the kitchen");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&killed),
        Some(9),
        "{}",
        kitchen.seen
    );
    assert!(
        !kitchen.seen.contains("✅ Kitchen: Order #2 ready"),
        "{}",
        kitchen.seen
    );
    let mut second = station(&["serve-kitchen", "--fast"]);
    taker.expect_exit();
    tables.expect_exit();
    second.expect_exit();
    // The killed kitchen's order, claimed by the second one.
    assert_in_order(
        &second.seen,
        &[
            "order #2 claimed from a kitchen that held it too long",
            "👨‍🍳 Kitchen: Preparing order #2 ",
            "✅ Kitchen: Order #2 ready",
            "every order is cooked",
        ],
    );
    for id in 1..=6 {
        assert_eq!(
            tables
                .seen
                .matches(&format!("🍽️ Server: Delivering order #{id} "))
                .count(),
            1,
            "{}",
            tables.seen
        );
    }
    let dropped = tables.seen.matches("already served, dropped").count();
    assert_in_order(
        &tables.seen,
        &[
            "🍽️ Server: all 6 orders served; closing the restaurant",
            &format!(
                "🧾 Final tally: 6 orders, each served exactly once; {dropped} duplicate plate(s) dropped by order id"
            ),
            "🧹 Server: the restaurant's queues are removed from the broker",
        ],
    );
    let mut keys = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    std::io::Write::write_all(&mut keys, b"DBSIZE\r\n").unwrap();
    let mut reply = [0u8; 4];
    std::io::Read::read_exact(&mut keys, &mut reply).unwrap();
    assert_eq!(&reply, b":0\r\n", "the stations left keys on the broker");
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
    for mechanism in [
        "queue",
        "pipe",
        "duplex",
        "mqueue",
        "socket",
        "redis",
        "manager",
        "--redis-url",
        "[default: queue]",
        "serve-kitchen",
        "take-orders",
        "serve-tables",
    ] {
        assert!(help.contains(mechanism), "{mechanism} missing: {help}");
    }
    let out = run(
        env!("CARGO_BIN_EXE_demo"),
        &["restaurant", "--mechanism", "carrier-pigeon", "--fast"],
    );
    assert!(!out.status.success());
    // A station is one program: the scenario's flags are not its own.
    let out = run(
        env!("CARGO_BIN_EXE_demo"),
        &[
            "restaurant",
            "--mechanism",
            "pipe",
            "serve-kitchen",
            "--redis-url",
            "redis://127.0.0.1:1",
        ],
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

/// Checks the workers demo's tally: every task's result once, and the closing lines.
fn workers_did_every_task_once(out: &str) {
    for task in 1..=10u64 {
        let result = format!(
            "📬 Boss: result of task {task} = {} (from worker ",
            task * task
        );
        assert_eq!(out.matches(&result).count(), 1, "{out}");
        assert!(
            out.contains(&format!(": processing Task {task}\n")),
            "task {task} never started: {out}"
        );
    }
    assert_in_order(
        out,
        &[
            "👷 Pool: worker 1 is process ",
            "📋 Boss: tasks 1 to 10 go to the pool",
            "🎉 All 10 tasks done exactly once",
            "every worker went home",
        ],
    );
}

#[test]
fn workers_do_every_task_once_and_go_home() {
    let out = demo(&["workers", "--fast"]);
    workers_did_every_task_once(&out);
    assert_eq!(out.matches(": processing Task ").count(), 10, "{out}");
    assert_eq!(out.matches("👷 Pool: worker ").count(), 3, "{out}");
    assert_eq!(out.matches("👋 Pool: worker ").count(), 3, "{out}");
    assert!(!out.contains('💀'), "{out}");
    assert!(out.contains("0 worker(s) lost and replaced"), "{out}");
}

/// The worker number and process id in `line` after `prefix`: "worker N (process P)".
fn worker_and_pid(line: &str, prefix: &str) -> (u32, u32) {
    let rest = &line[line.find(prefix).expect(prefix) + prefix.len()..];
    let mut words = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty());
    let worker = words.next().unwrap().parse().unwrap();
    let pid = words.next().unwrap().parse().unwrap();
    (worker, pid)
}

#[test]
fn workers_kill_one_reruns_the_killed_task_once() {
    let out = demo(&["workers", "--kill-one", "--fast"]);
    workers_did_every_task_once(&out);
    let kill = out
        .lines()
        .find(|l| l.starts_with("🔪 Boss: SIGKILL to worker "))
        .unwrap_or_else(|| panic!("no kill: {out}"));
    let (worker, pid) = worker_and_pid(kill, "SIGKILL to worker ");
    assert!(kill.ends_with("in the middle of task 5"), "{kill}");
    let died = format!(
        "💀 Pool: worker {worker} (process {pid}) was killed (SIGKILL) in the middle of task 5; \
         task 5 goes back on the queue to run again"
    );
    assert_in_order(
        &out,
        &[
            &format!("⚙️ Process {pid}: processing Task 5\n"),
            kill,
            &died,
            &format!("starts in place of worker {worker}\n"),
            "📬 Boss: result of task 5 = 25",
            &format!(
                "✅ Task 5, whose worker {worker} (process {pid}) died, was re-run by worker "
            ),
            "🎉 All 10 tasks done exactly once, 1 worker(s) lost and replaced",
        ],
    );
    // Started twice (the second time on the replacement), done once.
    assert_eq!(out.matches(": processing Task 5\n").count(), 2, "{out}");
}

#[test]
fn workers_demo_recovers_from_a_worker_killed_from_outside_within_5_s() {
    let mut demo = Live::start(&["workers", "--fast"]);
    demo.wait_for(": processing Task ");
    let line = demo
        .seen
        .lines()
        .find(|l| l.contains(": processing Task "))
        .unwrap()
        .to_string();
    let pid: i32 = line
        .trim_start_matches("⚙️ Process ")
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the worker");
    demo.expect_exit();
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the demo took {took:?} after the kill"
    );
    let out = &demo.seen;
    workers_did_every_task_once(out);
    assert!(
        out.contains(&format!("(process {pid}) was killed (SIGKILL)")),
        "{out}"
    );
    assert!(out.contains("1 worker(s) lost and replaced"), "{out}");
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
    // Colour only on a terminal: a pipe gets plain text.
    assert!(
        !err.contains('\u{1b}'),
        "ANSI escapes in piped output: {err:?}"
    );
}

#[test]
fn every_scenario_has_help() {
    for scenario in [
        "pipe",
        "parent-child",
        "fifo",
        "counter",
        "sync",
        "sensor",
        "restaurant",
        "producer-consumer",
        "workers",
        "echo",
        "echo serve",
        "echo connect",
        "chat",
        "chat serve",
        "chat join",
        "scoreboard",
        "restaurant serve-kitchen",
        "restaurant take-orders",
        "restaurant serve-tables",
    ] {
        let args: Vec<&str> = scenario.split(' ').chain(["--help"]).collect();
        let out = demo(&args);
        assert!(out.contains("--fast"), "{scenario} --help: {out}");
    }
}

/// The socket file a demo names after "over unix://" in its first line.
fn socket_file(out: &str) -> std::path::PathBuf {
    let addr = out
        .split_whitespace()
        .find(|w| w.starts_with("unix://"))
        .expect("the demo names its socket");
    std::path::PathBuf::from(addr.trim_start_matches("unix://"))
}

fn echo_went_well(out: &str) {
    // Each process's own lines in order (the two interleave).
    assert_in_order(
        out,
        &[
            "💻 Client: Sending \"Hello, world\"",
            "💻 Client: Received \"Hello, world\" ✅",
            "💻 Client: Sending <120000 bytes>",
            "💻 Client: Received <120000 bytes> ✅",
            "💻 Client: Received \"Bye!\" ✅",
            "💻 Client: every echo matched",
        ],
    );
    assert_in_order(
        out,
        &[
            "🖥️ Server: listening at ",
            "🖥️ Server: Connected by ",
            "🖥️ Server: echoing \"Hello, world\"",
            "🖥️ Server: echoing <120000 bytes>",
            "🖥️ Server: the client closed the connection after 4 messages",
        ],
    );
    assert!(
        out.contains("🎉 Echo complete: all 4 messages came back as they were sent"),
        "{out}"
    );
}

#[test]
fn echo_over_a_unix_socket_leaves_no_file() {
    let out = demo(&["echo", "--fast"]);
    echo_went_well(&out);
    assert!(out.contains("Connected by process "), "{out}");
    let path = socket_file(&out);
    assert!(!path.exists(), "{} was left behind", path.display());
}

#[test]
fn echo_over_tcp_on_a_free_port() {
    let out = demo(&["echo", "--addr", "tcp://127.0.0.1:0", "--fast"]);
    echo_went_well(&out);
    assert!(out.contains("over tcp://127.0.0.1:"), "{out}");
    assert!(!out.contains("127.0.0.1:0 "), "the port was picked: {out}");
    assert!(out.contains("Connected by tcp://127.0.0.1:"), "{out}");
}

const CHAT_NAMES: [&str; 4] = ["Alice 👩", "Bob 👨", "Charlie 🧑", "Diana 👩‍💻"];

#[test]
fn chat_every_client_hears_every_line_meant_for_it() {
    let out = demo(&["chat", "--fast"]);
    chat_went_well(&out);
    let path = socket_file(&out);
    assert!(!path.exists(), "{} was left behind", path.display());
}

/// As the Python tutorial: a registry dict and a queue per client in a manager process,
/// whose socket file is gone after.
#[test]
fn chat_through_a_manager_every_client_hears_every_line_meant_for_it() {
    let out = demo(&["chat", "--mechanism", "manager", "--fast"]);
    assert!(
        out.contains("through a manager process at unix://")
            && out.contains("a registry dict `chat:clients`"),
        "{out}"
    );
    chat_went_well(&out);
    for me in &CHAT_NAMES[2..] {
        assert!(
            out.contains(&format!("👋 Client {me} left the chat! (at shutdown)")),
            "{out}"
        );
    }
    let path = socket_file(&out);
    assert!(!path.exists(), "{} was left behind", path.display());
    let refused = run(
        env!("CARGO_BIN_EXE_demo"),
        &[
            "chat",
            "--mechanism",
            "manager",
            "--addr",
            "tcp://127.0.0.1:0",
        ],
    );
    assert!(!refused.status.success());
}

/// Every client heard every line meant for it, once, in order; the leavers left, the
/// others heard them go and stayed until the shutdown.
fn chat_went_well(out: &str) {
    let out = out.to_string();
    let lines = [
        "How's everyone doing today? 😊",
        "Anyone up for some Rust coding? 🦀",
        "I love IPC! It's so cool! 🚀",
    ];
    for (i, me) in CHAT_NAMES.iter().enumerate() {
        assert!(
            out.contains(&format!("💬 {me} connected to chat!")),
            "{out}"
        );
        for (j, other) in CHAT_NAMES.iter().enumerate() {
            let heard = |line: &str| format!("📥 {me} received: [{other}] {line}\n");
            let first = heard(&format!("Hello everyone! I'm {other} 👋"));
            let second = heard(lines[j % 3]);
            if i == j {
                assert!(!out.contains(&first), "{me} heard itself: {out}");
            } else {
                // Heard once each, in the order said, before the check.
                assert_eq!(out.matches(&first).count(), 1, "{first}: {out}");
                assert_in_order(
                    &out,
                    &[&first, &second, &format!("✅ {me}: heard all 6 lines")],
                );
            }
        }
    }
    for me in &CHAT_NAMES[..2] {
        assert_in_order(
            &out,
            &[
                &format!("✅ {me}: heard all 6 lines of the other 3, in order"),
                &format!("👋 {me} disconnected from chat!"),
            ],
        );
        assert!(!out.contains(&format!("🛑 {me} received")), "{out}");
    }
    for me in &CHAT_NAMES[2..] {
        for gone in &CHAT_NAMES[..2] {
            assert_in_order(
                &out,
                &[
                    &format!("📥 {me} received: [Server] 👋 {gone} has left the chat!"),
                    &format!("🛑 {me} received shutdown signal"),
                ],
            );
        }
    }
    assert_eq!(
        out.matches("📨 Broadcasting message from ").count(),
        8,
        "{out}"
    );
    assert_eq!(out.matches(" left the chat! (").count(), 4, "{out}");
    assert_in_order(
        &out,
        &[
            "📡 Everyone is here: let the chat begin!",
            "📡 Every line relayed: telling everyone it is all done",
            "🛑 Server shutting down...",
            "📡 Chat server closed: 8 lines relayed",
            "🎉 Chat system demo complete!",
        ],
    );
}

/// A demo process whose output is read line by line as it comes.
struct Live {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: String,
}

impl Live {
    fn start(args: &[&str]) -> Live {
        Live::spawn(Command::new(env!("CARGO_BIN_EXE_demo")).args(args))
    }

    /// Any program, its output read as it comes.
    fn spawn(cmd: &mut Command) -> Live {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the demo");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Live {
            child,
            lines,
            seen: String::new(),
        }
    }

    /// Waits (at most 30 s) for a line containing `needle`.
    fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.seen.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                }
                Err(_) => panic!("no {needle:?} in:\n{}", self.seen),
            }
        }
    }

    fn type_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").expect("type a line");
    }

    /// Waits (at most 30 s) for the process to exit; it must succeed.
    fn expect_exit(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "{status}:\n{}", self.seen);
                break;
            }
            assert!(Instant::now() < deadline, "still running:\n{}", self.seen);
            std::thread::sleep(Duration::from_millis(20));
        }
        // What it printed last.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push_str(&line);
            self.seen.push('\n');
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn chat_by_hand_serve_and_two_joins_see_each_other() {
    let path = std::env::temp_dir().join(format!("ipckit-chat-test-{}.sock", std::process::id()));
    let addr = format!("unix://{}", path.display());
    let mut server = Live::start(&["chat", "serve", "--addr", &addr]);
    server.wait_for("📡 Chat server listening at");
    assert!(path.exists());
    let mut alice = Live::start(&["chat", "join", "Alice", "--addr", &addr]);
    alice.wait_for("👀 Nobody else here yet");
    let mut bob = Live::start(&["chat", "join", "Bob", "--addr", &addr]);
    bob.wait_for("👀 Here already: Alice");
    alice.wait_for("📥 [Server] 🎉 Bob has joined the chat!");
    for (alice_says, bob_says) in [("hi Bob", "hi Alice"), ("how are you?", "fine, thanks")] {
        alice.type_line(alice_says);
        bob.type_line(bob_says);
        bob.wait_for(&format!("📥 [Alice] {alice_says}"));
        alice.wait_for(&format!("📥 [Bob] {bob_says}"));
    }
    // Ctrl-D: Alice leaves, and Bob hears it.
    drop(alice.child.stdin.take());
    alice.expect_exit();
    assert_in_order(
        &alice.seen,
        &["👋 Alice disconnected from chat!", "🔌 Connection closed"],
    );
    bob.wait_for("📥 [Server] 👋 Alice has left the chat!");
    // Ctrl-C on the server: Bob is told, and the socket file goes.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("signal the server");
    server.expect_exit();
    bob.wait_for("🛑 The server is shutting down");
    bob.expect_exit();
    assert!(bob.seen.contains("🔌 Connection closed"), "{}", bob.seen);
    assert_in_order(
        &server.seen,
        &[
            "✅ Client Alice joined the chat!",
            "✅ Client Bob joined the chat!",
            "📨 Broadcasting message from Alice: how are you?",
            "👋 Client Alice left the chat! (closed the connection)",
            "🛑 SIGINT: server shutting down...",
            "👋 Client Bob left the chat!",
            "📡 Chat server closed",
        ],
    );
    assert!(!path.exists(), "{} was left behind", path.display());
}

#[test]
fn chat_server_drops_a_client_that_does_not_speak_chat_and_serves_on() {
    use std::io::{Read, Write};
    let path =
        std::env::temp_dir().join(format!("ipckit-chat-intruder-{}.sock", std::process::id()));
    let addr = format!("unix://{}", path.display());
    let mut server = Live::start(&["chat", "serve", "--addr", &addr]);
    server.wait_for("📡 Chat server listening at");
    // A client that frames its message as ipckit does, but whose bytes are no chat message
    // (variant 9 of the client's messages does not exist).
    let mut intruder = std::os::unix::net::UnixStream::connect(&path).expect("connect");
    intruder.write_all(&[0, 0, 0, 3, 9, 9, 9]).expect("send");
    server.wait_for("is not speaking chat: sent a message that does not decode");
    // The server closed its connection.
    intruder
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a read timeout");
    match intruder.read(&mut [0; 16]) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the intruder's connection closed, got {other:?}"),
    }
    // And it serves on.
    let mut alice = Live::start(&["chat", "join", "Alice", "--addr", &addr]);
    alice.wait_for("👀 Nobody else here yet");
    drop(alice.child.stdin.take());
    alice.expect_exit();
    server.wait_for("👋 Client Alice left the chat!");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("signal the server");
    server.expect_exit();
    assert!(!path.exists(), "{} was left behind", path.display());
}

/// The child processes of `pid` (of all its threads).
fn children_of(pid: u32) -> Vec<i32> {
    let mut all = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return all;
    };
    for task in tasks.flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        all.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    all
}

/// Starts `demo args` at its normal pace, SIGKILLs one of its child processes once it is
/// under way, and returns the demo's output and how long it took to end after the kill.
fn kill_a_child(args: &[&str], which: usize) -> (Output, Duration) {
    let mut demo = ipckit_testkit::Bounded::start(
        std::process::Command::new(env!("CARGO_BIN_EXE_demo")).args(args),
    )
    .expect("start the demo");
    let pid = demo.child().id();
    let mut victims = Vec::new();
    ipckit_testkit::wait_until("the demo starts its children", || {
        victims = children_of(pid);
        victims.len() > which
    });
    std::thread::sleep(Duration::from_millis(300));
    let victim = victims[which];
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    );
    let killed = Instant::now();
    let out = demo.wait().expect("the demo's output");
    (out, killed.elapsed())
}

/// Killing any child of a demo ends the demo within seconds: recovered, or failed with a
/// message naming what died — never a wait for a minute-long timeout.
#[test]
fn a_killed_child_ends_every_demo_at_once() {
    for (args, which) in [
        (&["pipe"][..], 0),
        (&["parent-child"][..], 0),
        (&["fifo"][..], 1),
        (&["counter"][..], 1),
        (&["sensor"][..], 0),
        (&["sensor"][..], 1),
        (&["sync"][..], 0),
        (&["restaurant"][..], 1),
        (&["restaurant", "--mechanism", "pipe"][..], 0),
        (&["restaurant", "--mechanism", "socket"][..], 1),
        // The manager process is the first child, then the stations.
        (&["restaurant", "--mechanism", "manager"][..], 0),
        (&["restaurant", "--mechanism", "manager"][..], 2),
        (&["producer-consumer"][..], 0),
        (&["producer-consumer"][..], 2),
        (&["chat"][..], 2),
        (&["chat", "--mechanism", "manager"][..], 0),
        (&["chat", "--mechanism", "manager"][..], 3),
        (&["echo"][..], 1),
    ] {
        let (out, took) = kill_a_child(args, which);
        let err = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            took < Duration::from_secs(5),
            "demo {args:?} took {took:?} to end after child {which} was killed\n{stdout}\n{err}"
        );
        if !out.status.success() {
            assert!(
                err.contains("killed by signal 9") || err.contains("gone"),
                "demo {args:?} failed without naming what died:\n{err}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Plain byte streams: the Python tutorial's socket programs, and people with `nc`
// ---------------------------------------------------------------------------------------

/// The Python tutorial's echo server, unchanged but for its port.
const TUTORIAL_SERVER: &str = r#"import socket

HOST = '127.0.0.1'  # Standard loopback interface address (localhost)
PORT = 65432        # Port to listen on (non-privileged ports are > 1023)

with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind((HOST, PORT))
    s.listen()
    conn, addr = s.accept()
    with conn:
        print(f"Connected by {addr}")
        while True:
            data = conn.recv(1024)
            if not data:
                break
            conn.sendall(data)
"#;

/// The Python tutorial's echo client, unchanged but for its port.
const TUTORIAL_CLIENT: &str = r#"import socket

HOST = '127.0.0.1'  # The server's hostname or IP address
PORT = 65432        # The port used by the server

with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.connect((HOST, PORT))
    s.sendall(b'Hello, world')
    data = s.recv(1024)

print(f"Received {data!r}")
"#;

/// A port nobody listens on (it was free a moment ago).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn on_port(script: &str, port: u16) -> String {
    script.replace("PORT = 65432", &format!("PORT = {port}"))
}

#[test]
fn echo_serve_raw_serves_the_tutorials_python_client() {
    let Some(py) = ipckit_testkit::python(6..=99) else {
        return;
    };
    let port = free_port();
    let addr = format!("tcp://127.0.0.1:{port}");
    let mut server = Live::start(&["echo", "serve", "--addr", &addr, "--framing", "raw"]);
    server.wait_for("🖥️ Server: listening at");
    let out = ipckit_testkit::Bounded::python(&py, &on_port(TUTORIAL_CLIENT, port), &[])
        .expect("start python")
        .wait_ok("the tutorial's client");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Received b'Hello, world'"
    );
    server.expect_exit();
    assert_in_order(
        &server.seen,
        &[
            "🖥️ Server: Connected by tcp://127.0.0.1:",
            "🖥️ Server: echoing \"Hello, world\"",
            "🖥️ Server: the client closed the connection after 1 receives, 12 bytes",
        ],
    );
}

#[test]
fn echo_connect_raw_talks_to_the_tutorials_python_server() {
    let Some(py) = ipckit_testkit::python(6..=99) else {
        return;
    };
    let port = free_port();
    let server = ipckit_testkit::Bounded::python(&py, &on_port(TUTORIAL_SERVER, port), &[])
        .expect("start python");
    // The server may not listen yet: `echo connect` waits for it.
    let out = demo(&[
        "echo",
        "connect",
        "--addr",
        &format!("tcp://127.0.0.1:{port}"),
        "--framing",
        "raw",
    ]);
    assert_in_order(
        &out,
        &[
            "💻 Client: Received \"Hello, world\" ✅",
            "💻 Client: Received <120000 bytes> ✅",
            "💻 Client: every echo matched",
        ],
    );
    let out = server.wait_ok("the tutorial's server");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("Connected by ('127.0.0.1', "),
        "{out:?}"
    );
}

#[test]
fn echo_serve_and_connect_speak_frames_by_default() {
    let path = std::env::temp_dir().join(format!("ipckit-echo-{}.sock", std::process::id()));
    let addr = format!("unix://{}", path.display());
    let mut server = Live::start(&["echo", "serve", "--addr", &addr]);
    server.wait_for("(Length framing)");
    let out = demo(&["echo", "connect", "--addr", &addr]);
    assert!(out.contains("💻 Client: every echo matched"), "{out}");
    server.expect_exit();
    // One frame, one receive: the long message came whole.
    assert!(
        server.seen.contains("after 4 receives, 120"),
        "{}",
        server.seen
    );
    assert!(!path.exists(), "{} was left behind", path.display());
}

/// `nc` on the `PATH`, if there is one.
fn find_nc() -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("nc"))
        .find(|p| p.is_file())
}

/// A person at a terminal, typing lines into a TCP connection: `nc` where there is one, a
/// Python socket that does what it does otherwise.
fn line_client(port: u16) -> Live {
    match find_nc() {
        Some(nc) => Live::spawn(Command::new(nc).args(["127.0.0.1", &port.to_string()])),
        None => {
            let py = ipckit_testkit::python(6..=99).expect("a Python for the line client");
            Live::spawn(Command::new(py).args(["-c", LINE_CLIENT, &port.to_string()]))
        }
    }
}

/// What `nc` does: each line typed goes out, each line that comes is printed; end of
/// input ends the sending direction.
const LINE_CLIENT: &str = r#"
import os, socket, sys, threading
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def pump():
    for line in sys.stdin.buffer:
        s.sendall(line)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=pump, daemon=True).start()
for line in s.makefile("rb"):
    sys.stdout.buffer.write(line)
    sys.stdout.flush()
# The connection closed: leave, whatever the input thread is doing.
os._exit(0)
"#;

#[test]
fn chat_serve_over_lines_lets_people_join_with_nc() {
    if std::env::var_os("IPCKIT_SKIP_PYTHON").is_some_and(|v| v == "1") && find_nc().is_none() {
        eprintln!("skipped: no nc, and IPCKIT_SKIP_PYTHON=1");
        return;
    }
    let port = free_port();
    let addr = format!("tcp://127.0.0.1:{port}");
    let mut server = Live::start(&["chat", "serve", "--addr", &addr, "--framing", "lines"]);
    server.wait_for(&format!("(join with `nc 127.0.0.1 {port}`)"));
    let mut alice = line_client(port);
    alice.wait_for("👋 Welcome to the chat! What is your name?");
    alice.type_line("Alice");
    alice.wait_for("👀 Nobody else here yet");
    let mut bob = line_client(port);
    bob.wait_for("What is your name?");
    // A blank line is no name.
    bob.type_line("");
    bob.type_line("Bob");
    bob.wait_for("👀 Here already: Alice");
    alice.wait_for("📥 [Server] 🎉 Bob has joined the chat!");
    alice.type_line("hi Bob");
    bob.wait_for("📥 [Alice] hi Bob");
    bob.type_line("hi Alice 👋");
    alice.wait_for("📥 [Bob] hi Alice 👋");
    // Ctrl-C on the server: everyone is told, and the connections close.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("signal the server");
    server.expect_exit();
    for person in [&mut alice, &mut bob] {
        person.wait_for("🛑 The server is shutting down");
        drop(person.child.stdin.take());
        person.expect_exit();
    }
    assert_in_order(
        &server.seen,
        &[
            "✅ Client Alice joined the chat! (tcp://127.0.0.1:",
            "✅ Client Bob joined the chat!",
            "📨 Broadcasting message from Alice: hi Bob",
            "📨 Broadcasting message from Bob: hi Alice 👋",
            "🛑 SIGINT: server shutting down...",
            "📡 Chat server closed",
        ],
    );
    assert_eq!(
        server
            .seen
            .matches(" left the chat! (server shutdown)")
            .count(),
        2
    );
}

#[test]
fn rpc_adds_5_and_3_then_bursts_times_out_and_meets_a_remote_error() {
    let out = demo(&["rpc", "--fast"]);
    assert_in_order(
        &out,
        &[
            "💻 Client: Result: 8",
            "💻 Client: all 400 answers matched their calls ✅",
            "💻 Client: timed out after",
            "💻 Client: the server's function failed: cannot divide 1 by zero (code 1) ✅",
            "🖥️ Server: the client said stop; closing",
            "🎉 RPC complete",
        ],
    );
}

#[test]
fn rpc_serve_answers_rpc_call_and_pythons_tutorial_client() {
    // A free port, let go for the server to take.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("http://127.0.0.1:{port}");
    let _server = ipckit_testkit::Bounded::start(
        Command::new(env!("CARGO_BIN_EXE_demo")).args(["rpc", "serve", "--addr", &addr]),
    )
    .unwrap();
    let call = |args: &[&str]| {
        let mut all = vec!["rpc", "call"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--addr", &addr]);
        run(env!("CARGO_BIN_EXE_demo"), &all)
    };
    ipckit_testkit::wait_until("the server answers", || {
        call(&["add", "5", "3"]).status.success()
    });
    let out = call(&["add", "5", "3"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Result: 8\n");
    let out = call(&["divide", "1", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot divide 1 by zero"));
    let Some(py) = ipckit_testkit::python(12..=99) else {
        return;
    };
    let script = format!(
        "import xmlrpc.client\nproxy = xmlrpc.client.ServerProxy(\"{addr}/\")\nprint(\"Result:\", proxy.add(5, 3))\n"
    );
    let out = ipckit_testkit::Bounded::python(&py, &script, &[])
        .unwrap()
        .wait_ok("the tutorial's client");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Result: 8\n");
}

#[test]
fn rpc_call_calls_the_tutorials_python_server() {
    let Some(py) = ipckit_testkit::python(12..=99) else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The tutorial's server, as written there but for the port.
    let script = format!(
        "from xmlrpc.server import SimpleXMLRPCServer\n\
         def add(x, y):\n    return x + y\n\
         server = SimpleXMLRPCServer((\"127.0.0.1\", {port}))\n\
         server.register_function(add, \"add\")\n\
         server.serve_forever()\n"
    );
    let _server = ipckit_testkit::Bounded::python(&py, &script, &[]).unwrap();
    let addr = format!("http://127.0.0.1:{port}/");
    let call = || {
        run(
            env!("CARGO_BIN_EXE_demo"),
            &["rpc", "call", "add", "5", "3", "--addr", &addr],
        )
    };
    ipckit_testkit::wait_until("Python's server answers", || call().status.success());
    assert_eq!(String::from_utf8_lossy(&call().stdout), "Result: 8\n");
}

/// The numbers after "Player_N: " in the final ranking, by player.
fn final_totals(out: &str) -> Vec<(String, u64)> {
    let results = &out[out.find("Final Game Results").expect("final results")..];
    results
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once(". Player_")?;
            let (id, points) = rest.split_once(": ")?;
            Some((
                id.to_string(),
                points.strip_suffix(" points")?.parse().ok()?,
            ))
        })
        .collect()
}

fn scoreboard_counts_every_point(out: &str) {
    assert_in_order(
        out,
        &[
            "📊 Current Scoreboard:",
            "The monitor saw",
            "its board matches the server's",
            "🏆 Final Game Results:",
            "🥇 1. Player_",
            "🥈 2. Player_",
            "🥉 3. Player_",
            "🏅 4. Player_",
            "✅ Every point counted once",
        ],
    );
    let totals = final_totals(out);
    assert_eq!(totals.len(), 4, "{out}");
    assert!(
        totals.windows(2).all(|w| w[0].1 >= w[1].1),
        "ranked: {totals:?}"
    );
    // Each player's last "Total" line is its final total.
    for (id, total) in &totals {
        let last = out
            .lines()
            .rfind(|l| l.starts_with(&format!("🎮 Player {id} scored")))
            .expect("the player's rounds");
        assert!(
            last.ends_with(&format!("Total: {total}")),
            "{last} vs {total}"
        );
    }
    assert_eq!(out.matches("🎮 Player").count(), 20, "4 players × 5 rounds");
}

#[test]
fn scoreboard_counts_every_point_with_incr() {
    scoreboard_counts_every_point(&demo(&["scoreboard", "--fast"]));
}

#[test]
fn scoreboard_counts_every_point_under_the_lock() {
    let out = demo(&["scoreboard", "--style", "lock", "--fast"]);
    assert!(out.contains("lock, get, set"), "{out}");
    scoreboard_counts_every_point(&out);
}

/// Two of the four players are Python processes running the tutorial's `game_player`
/// through `BaseManager.connect()` against the same ipckit manager.
#[test]
fn scoreboard_with_python_players_counts_every_point() {
    if ipckit_testkit::python(12..=99).is_none() {
        return;
    }
    let out = demo(&["scoreboard", "--python", "--fast"]);
    assert!(
        out.contains("Players 3 and 4 are Python processes"),
        "{out}"
    );
    for id in [3, 4] {
        assert_eq!(
            out.matches(&format!("🎮 Player {id} scored ")).count(),
            5,
            "Python player {id} played five rounds:\n{out}"
        );
    }
    scoreboard_counts_every_point(&out);
}
