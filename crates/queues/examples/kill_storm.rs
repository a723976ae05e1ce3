//! A kill storm on one shared-memory queue: producers and consumers SIGKILLed at random
//! moments for a while, and then a check that nothing was lost (but the one message each
//! killed consumer may have held), nothing was got twice, nothing stuck, and no waiter
//! outlived its deadline.
//!
//! ```text
//! cargo run --release -p ipckit-queues --example kill_storm -- 600
//! ```
//!
//! The argument is the storm's length in seconds (10 by default). Four producers put
//! through byte senders with deadlines of 1 to 50 ms (retrying a put that timed out);
//! four consumers get, two blocking (deadlines of 1 to 50 ms) and two polling (`try_`). A quarter of the messages are
//! empty (0 bytes); the others are 16 bytes or 64 KiB, and carry their producer and
//! sequence number. Each consumer reports what it got through a second queue to this
//! process, which keeps a bitmap per producer. Every 0–40 ms one process is killed and
//! replaced. Then the producers are told to stop, the consumers drain the queue until
//! `Disconnected`, and the books are checked. It exits 1 if a check fails. Beside the
//! storm, a thread of this process sleeps 10 ms at a time and notes how late it wakes: a
//! call that returns later than its deadline by more than the machine's own lateness (plus
//! 100 ms) fails the run.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use ipckit_queues::{
    Child, Command, Ctx, Deadline, Error, Queue, QueueOptions, QueueReceiver, QueueSender,
    RecvBytes, Role, RoleResult, SendBytes,
};
use ipckit_shmem::Shared;

const PRODUCERS: usize = 4;
const CONSUMERS: usize = 4;
const BIG: usize = 64 << 10;
/// The longest deadline of a call in the storm.
const WAIT: Duration = Duration::from_millis(50);
/// How late past its deadline a call may return on a loaded machine before it counts as
/// an overrun.
const SLACK: Duration = Duration::from_millis(100);
/// Seq numbers `s` with `s % 4 == EMPTY` are empty messages, counted in bulk.
const EMPTY: u64 = 3;
/// What a consumer reports for an empty message.
const EMPTY_ID: u32 = u32::MAX;

/// Figures every process adds to.
struct Books {
    stop: Shared<AtomicU64>,
    /// The largest overrun of a deadline, in microseconds.
    worst_us: Shared<AtomicU64>,
    /// Calls that returned more than `SLACK` past their deadline.
    overruns: Shared<AtomicU64>,
    /// Calls that reached their deadline.
    timeouts: Shared<AtomicU64>,
}

impl Books {
    fn create() -> Books {
        Books {
            stop: Shared::create(0).expect("shared memory"),
            worst_us: Shared::create(0).expect("shared memory"),
            overruns: Shared::create(0).expect("shared memory"),
            timeouts: Shared::create(0).expect("shared memory"),
        }
    }

    fn hand(&self, cmd: Command) -> Command {
        cmd.handle("stop", self.stop.try_clone().expect("clone"))
            .handle("worst", self.worst_us.try_clone().expect("clone"))
            .handle("overruns", self.overruns.try_clone().expect("clone"))
            .handle("timeouts", self.timeouts.try_clone().expect("clone"))
    }

    fn take(ctx: &mut Ctx) -> ipckit_queues::Result<Books> {
        Ok(Books {
            stop: ctx.handle("stop")?,
            worst_us: ctx.handle("worst")?,
            overruns: ctx.handle("overruns")?,
            timeouts: ctx.handle("timeouts")?,
        })
    }

    /// A deadline of 1 to 50 ms from now, and its length.
    fn deadline(rng: &mut Rng) -> (Deadline, Duration) {
        let wait = Duration::from_millis(1 + rng.below(WAIT.as_millis() as u64));
        (Deadline::after(wait), wait)
    }

    /// Notes a call that began at `start` with a deadline `wait` later, and whether it
    /// reached it.
    fn timed(&self, start: Instant, wait: Duration, timed_out: bool) {
        if timed_out {
            self.timeouts.fetch_add(1, Ordering::Relaxed);
        }
        let late = start.elapsed().saturating_sub(wait);
        self.worst_us
            .fetch_max(late.as_micros() as u64, Ordering::Relaxed);
        if late > SLACK {
            // Which call: a deadline missed by this much is a bug, or a machine too loaded
            // to run the process in time.
            eprintln!(
                "  late: pid {} waited {:?} for a deadline of {wait:?} (timed out: {timed_out})",
                std::process::id(),
                start.elapsed()
            );
        }
        if late > SLACK {
            self.overruns.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire) != 0
    }
}

/// A small random generator.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Puts `id`'s numbered messages until told to stop, recording in `acked` how many puts
/// returned.
fn producer(ctx: &mut Ctx) -> RoleResult {
    let id: u32 = ctx.arg()?;
    let mut tx: QueueSender = ctx.handle("q")?;
    let acked: Shared<AtomicU64> = ctx.handle("acked")?;
    let books = Books::take(ctx)?;
    let mut rng = Rng(u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut big = vec![0xA5; BIG];
    let mut seq = 0u64;
    while !books.stopping() {
        let msg: &[u8] = if seq % 4 == EMPTY {
            &[]
        } else {
            big[..4].copy_from_slice(&id.to_le_bytes());
            big[4..12].copy_from_slice(&seq.to_le_bytes());
            if rng.below(2) == 0 { &big[..16] } else { &big }
        };
        let start = Instant::now();
        let (deadline, wait) = Books::deadline(&mut rng);
        match tx.send_bytes_deadline(msg, deadline) {
            Ok(()) => {
                // Pairs with the Acquire load of the parent after the kill.
                acked.store(seq + 1, Ordering::Release);
                seq += 1;
                books.timed(start, wait, false);
            }
            Err(Error::Timeout) => books.timed(start, wait, true),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Gets until the queue says `Disconnected`, blocking or polling, and reports each message
/// to the parent.
fn consumer(ctx: &mut Ctx) -> RoleResult {
    let blocking: bool = ctx.arg()?;
    let mut rx: QueueReceiver = ctx.handle("q")?;
    let mut report = ctx
        .handle::<QueueSender>("report")?
        .into_sender::<(u32, u64)>();
    let books = Books::take(ctx)?;
    let mut rng = Rng(u64::from(std::process::id()) | 1);
    let mut buf = Vec::new();
    loop {
        let start = Instant::now();
        let (deadline, wait) = if blocking {
            Books::deadline(&mut rng)
        } else {
            (Deadline::Now, Duration::ZERO)
        };
        match rx.recv_bytes_into_deadline(&mut buf, deadline) {
            Ok(()) => {
                if blocking {
                    books.timed(start, wait, false);
                }
                let got = if buf.is_empty() {
                    (EMPTY_ID, 0)
                } else {
                    let id = u32::from_le_bytes(buf[..4].try_into()?);
                    (id, u64::from_le_bytes(buf[4..12].try_into()?))
                };
                loop {
                    let start = Instant::now();
                    let (deadline, wait) = Books::deadline(&mut rng);
                    match report.send_deadline(&got, deadline) {
                        Ok(()) => break,
                        Err(Error::Timeout) => books.timed(start, wait, true),
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Err(Error::Timeout) => {
                if blocking {
                    books.timed(start, wait, true);
                } else {
                    std::thread::yield_now();
                }
            }
            Err(Error::Disconnected) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

const ROLES: &[Role] = &[
    Role::new("producer", producer),
    Role::new("consumer", consumer),
];

enum Kind {
    Producer { id: u32, acked: Shared<AtomicU64> },
    Consumer,
}

struct Storm {
    queue: Queue<()>,
    reports: Queue<(u32, u64)>,
    books: Books,
    next_id: u32,
    consumers_started: usize,
    /// `acked` of every producer that is gone.
    finished: HashMap<u32, u64>,
}

impl Storm {
    fn producer(&mut self) -> (Child, Kind) {
        let id = self.next_id;
        self.next_id += 1;
        let acked: Shared<AtomicU64> = Shared::create(0).expect("shared memory");
        let cmd = Command::new("producer")
            .arg(&id)
            .expect("arg")
            .handle("q", self.queue.byte_sender().expect("sender"))
            .handle("acked", acked.try_clone().expect("clone"));
        let child = self.books.hand(cmd).spawn().expect("spawn");
        (child, Kind::Producer { id, acked })
    }

    fn consumer(&mut self) -> (Child, Kind) {
        let blocking = self.consumers_started % 2 == 0;
        self.consumers_started += 1;
        let cmd = Command::new("consumer")
            .arg(&blocking)
            .expect("arg")
            .handle("q", self.queue.byte_receiver().expect("receiver"))
            .handle("report", self.reports.byte_sender().expect("sender"));
        let child = self.books.hand(cmd).quiet().spawn().expect("spawn");
        (child, Kind::Consumer)
    }

    fn gone(&mut self, kind: Kind) {
        if let Kind::Producer { id, acked } = kind {
            self.finished.insert(id, acked.load(Ordering::Acquire));
        }
    }
}

fn main() {
    ipckit_core::enter(ROLES);
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let mut storm = Storm {
        queue: Queue::create(QueueOptions::new(64).max_message(BIG)).expect("queue"),
        reports: Queue::create(QueueOptions::new(4096).max_message(32)).expect("queue"),
        books: Books::create(),
        next_id: 0,
        consumers_started: 0,
        finished: HashMap::new(),
    };
    // What the consumers report, gathered on a thread of this process.
    let mut reports = storm.reports.receiver().expect("receiver");
    let gatherer = std::thread::spawn(move || {
        let mut got: HashMap<u32, Vec<u64>> = HashMap::new();
        let mut empties = 0u64;
        let mut twice = 0u64;
        for r in reports.iter() {
            let (id, seq) = r.expect("a report");
            if id == EMPTY_ID {
                empties += 1;
                continue;
            }
            let bits = got.entry(id).or_default();
            let (word, bit) = ((seq / 64) as usize, seq % 64);
            if bits.len() <= word {
                bits.resize(word + 1, 0);
            }
            if bits[word] & (1 << bit) != 0 {
                twice += 1;
            }
            bits[word] |= 1 << bit;
        }
        (got, empties, twice)
    });

    // The machine's own lateness: a thread that sleeps 10 ms at a time, and notes by how
    // much it oversleeps. A waiter of the queue cannot be expected to be on time when this
    // one is not.
    let canary_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let canary = {
        let stop = canary_stop.clone();
        std::thread::spawn(move || {
            let (mut worst, mut late) = (Duration::ZERO, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                std::thread::sleep(Duration::from_millis(10));
                let over = start.elapsed().saturating_sub(Duration::from_millis(10));
                worst = worst.max(over);
                late += u64::from(over > SLACK);
            }
            (worst, late)
        })
    };

    let mut running: Vec<(Child, Kind)> = Vec::new();
    for _ in 0..PRODUCERS {
        running.push(storm.producer());
    }
    for _ in 0..CONSUMERS {
        running.push(storm.consumer());
    }
    let mut rng = Rng(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1);
    let (mut producer_kills, mut consumer_kills) = (0u64, 0u64);
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(rng.below(41)));
        let victim = rng.below(running.len() as u64) as usize;
        let (mut child, kind) = running.swap_remove(victim);
        child.kill().expect("kill");
        let _ = child.join_timeout(Duration::from_secs(30));
        let replacement = match kind {
            Kind::Producer { .. } => {
                producer_kills += 1;
                storm.gone(kind);
                storm.producer()
            }
            Kind::Consumer => {
                consumer_kills += 1;
                storm.consumer()
            }
        };
        running.push(replacement);
    }
    let stormed = start.elapsed();
    canary_stop.store(true, Ordering::Relaxed);
    let (canary_worst, canary_late) = canary.join().expect("canary");

    // The end: producers stop and leave, consumers drain until `Disconnected`.
    storm.books.stop.store(1, Ordering::Release);
    let drain = Instant::now();
    let mut stuck = Vec::new();
    for (mut child, kind) in running {
        match child.join_timeout(Duration::from_secs(30)) {
            Ok(status) if status.success() => {}
            other => {
                stuck.push(format!("{} {}: {other:?}", child.role(), child.pid()));
                let _ = child.kill();
            }
        }
        storm.gone(kind);
    }
    let drained = drain.elapsed();
    let left_in_queue = storm.queue.len();
    drop(storm.reports);
    let (got, empties, twice) = gatherer.join().expect("gatherer");

    // The books.
    let mut missing = 0u64;
    let mut beyond = 0u64;
    let mut put = 0u64;
    let mut empties_put = 0u64;
    for (&id, &acked) in &storm.finished {
        put += acked;
        let bits = got.get(&id).map(Vec::as_slice).unwrap_or_default();
        let has = |seq: u64| {
            bits.get((seq / 64) as usize)
                .is_some_and(|w| w & (1 << (seq % 64)) != 0)
        };
        for seq in 0..acked {
            if seq % 4 == EMPTY {
                empties_put += 1;
            } else if !has(seq) {
                missing += 1;
            }
        }
        // Got beyond what was acknowledged: only the one put when its producer was killed.
        let total: u64 = bits.iter().map(|w| u64::from(w.count_ones())).sum();
        let acked_tracked = (0..acked).filter(|s| s % 4 != EMPTY && has(*s)).count() as u64;
        beyond += total - acked_tracked;
    }
    let got_total: u64 = got
        .values()
        .map(|b| b.iter().map(|w| u64::from(w.count_ones())).sum::<u64>())
        .sum::<u64>()
        + empties;
    let empties_missing = empties_put.saturating_sub(empties);
    let lost = missing + empties_missing;
    let lost_unexplained = lost.saturating_sub(consumer_kills);
    let worst_ms = storm.books.worst_us.load(Ordering::Relaxed) as f64 / 1000.0;
    let overruns = storm.books.overruns.load(Ordering::Relaxed);
    let timeouts = storm.books.timeouts.load(Ordering::Relaxed);

    println!(
        "kill storm: {secs} s, {PRODUCERS} producers and {CONSUMERS} consumers (2 blocking, 2 polling)"
    );
    println!("  killed: {producer_kills} producers, {consumer_kills} consumers");
    println!(
        "  messages: {put} acknowledged puts, {got_total} got ({:.0} per second), {empties} empty",
        got_total as f64 / stormed.as_secs_f64()
    );
    println!(
        "  lost: {lost} ({missing} numbered, {empties_missing} empty); at most one per killed consumer may be: {lost_unexplained} beyond that"
    );
    println!(
        "  got twice: {twice}; got beyond an acknowledged put: {beyond} (at most one per killed producer may be)"
    );
    println!(
        "  stuck: {} processes, {left_in_queue} messages left; drained in {drained:.2?}",
        stuck.len()
    );
    println!(
        "  deadlines: {timeouts} calls reached theirs; worst overrun {worst_ms:.1} ms; {overruns} calls more than {SLACK:?} late"
    );
    println!(
        "  the machine: a thread sleeping 10 ms overslept by up to {:.1} ms; {canary_late} times more than {SLACK:?}",
        canary_worst.as_secs_f64() * 1000.0
    );
    for s in &stuck {
        println!("  stuck: {s}");
    }
    let ok = lost_unexplained == 0
        && twice == 0
        && beyond <= producer_kills
        && stuck.is_empty()
        && left_in_queue == 0
        // Late calls are the queue's fault only if they were later than the machine was.
        && (overruns == 0 || worst_ms <= (canary_worst + SLACK).as_secs_f64() * 1000.0);
    println!("  {}", if ok { "OK" } else { "FAILED" });
    if !ok {
        std::process::exit(1);
    }
}
