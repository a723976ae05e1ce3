//! The queue under fire: producers and consumers SIGKILLed at random moments, many times;
//! every message whose `put` returned is got exactly once, or was in flight in a process
//! that was killed. And its surface: typed ends across processes, the joinable queue's
//! every form, and errors that say what is wrong.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use ipckit_queues::{
    Child, Command, Ctx, Error, JoinableQueue, Queue, QueueOptions, QueueSender, RecvTimeoutError,
    Role, RoleResult, SendBytes, SendTimeoutError, TryRecvError, TrySendError,
};
use ipckit_shmem::{Array, Segment, Shared};
use ipckit_testkit::{PATIENCE, join_ok, wait_until};

/// A small random generator, seeded per run (the seed is printed on failure).
struct Rng(u64);
impl Rng {
    fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("random seed {seed}");
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Puts `(id, seq)` for ever, recording in `acked[id]` how many puts returned.
fn producer(ctx: &mut Ctx) -> RoleResult {
    let id: u64 = ctx.arg()?;
    let queue: Queue<(u64, u64)> = ctx.handle("queue")?;
    let acked: Shared<AtomicU64> = ctx.handle("acked")?;
    let mut tx = queue.sender()?;
    for seq in 0.. {
        tx.send(&(id, seq))?;
        // Pairs with the parent's Acquire load after the kill.
        acked.store(seq + 1, Ordering::Release);
    }
    Ok(())
}

/// Gets numbers and counts each one in `seen`, until the queue is closed and drained (the
/// parent joins it within `PATIENCE`).
fn consumer(ctx: &mut Ctx) -> RoleResult {
    let queue: Queue<u32> = ctx.handle("queue")?;
    let seen: Array<u8> = ctx.handle("seen")?;
    for n in queue.receiver()?.iter() {
        seen.lock()?[n? as usize] += 1;
    }
    Ok(())
}

fn worker(ctx: &mut Ctx) -> RoleResult {
    let tasks: JoinableQueue<u32> = ctx.handle("tasks")?;
    let results: Queue<u32> = ctx.handle("results")?;
    loop {
        match tasks.get_timeout(PATIENCE) {
            Ok(n) => {
                results.put(&(n * n))?;
                tasks.task_done()?;
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Takes a byte sender, types it, and sends its argument's greetings.
fn greeter(ctx: &mut Ctx) -> RoleResult {
    let who: String = ctx.arg()?;
    let mut tx = ctx.handle::<QueueSender>("tx")?.into_sender::<String>();
    for i in 0..3 {
        tx.send(&format!("{who} {i}"))?;
    }
    Ok(())
}

/// The consumer side of every form of a joinable queue.
fn joinable_forms(ctx: &mut Ctx) -> RoleResult {
    let tasks: JoinableQueue<u32> = ctx.handle("tasks")?;
    // Put before this process started: there now.
    let first = tasks.try_get().map_err(|e| format!("try_get: {e}"))?;
    let second = tasks.get_timeout(PATIENCE)?;
    if (first, second) != (1, 2) {
        return Err(format!("got {first}, {second}, not 1, 2").into());
    }
    tasks.task_done()?;
    tasks.task_done()?;
    // Put once the parent's join returned.
    let third = tasks.get_deadline(ipckit_queues::Deadline::after(PATIENCE))?;
    if third != 3 {
        return Err(format!("got {third}, not 3").into());
    }
    tasks.task_done()?;
    // The parent closes the queue: drained, then the end.
    match tasks.get() {
        Err(Error::Disconnected) => {}
        other => return Err(format!("expected Disconnected, got {other:?}").into()),
    }
    match tasks.try_get() {
        Err(TryRecvError::Disconnected) => Ok(()),
        other => Err(format!("expected Disconnected, got {other:?}").into()),
    }
}

fn put_by_name(ctx: &mut Ctx) -> RoleResult {
    let name: String = ctx.arg()?;
    let q: Queue<String> = Queue::open(&name)?;
    q.put(&"from an unrelated process".to_string())?;
    Ok(())
}

const ROLES: &[Role] = &[
    Role::new("producer", producer),
    Role::new("consumer", consumer),
    Role::new("worker", worker),
    Role::new("put-by-name", put_by_name),
    Role::new("greeter", greeter),
    Role::new("joinable-forms", joinable_forms),
];

fn start_producer(queue: &Queue<(u64, u64)>, id: u64) -> (Child, Shared<AtomicU64>) {
    let acked: Shared<AtomicU64> = Shared::create(0).unwrap();
    let child = Command::new("producer")
        .arg(&id)
        .unwrap()
        .handle("queue", queue.try_clone().unwrap())
        .handle("acked", acked.try_clone().unwrap())
        .spawn()
        .unwrap();
    (child, acked)
}

#[test]
fn producers_killed_at_random_lose_nothing_they_put() {
    ipckit_core::enter(ROLES);
    let mut rng = Rng::new();
    let queue: Queue<(u64, u64)> = Queue::create(QueueOptions::new(16).max_message(64)).unwrap();
    let mut running: Vec<(u64, Child, Shared<AtomicU64>)> = Vec::new();
    let mut finished: Vec<(u64, Shared<AtomicU64>)> = Vec::new();
    let mut next_id = 0;
    for _ in 0..3 {
        let (c, a) = start_producer(&queue, next_id);
        running.push((next_id, c, a));
        next_id += 1;
    }
    let mut got: Vec<Vec<u64>> = Vec::new();
    let record = |(id, seq): (u64, u64), got: &mut Vec<Vec<u64>>| {
        if got.len() <= id as usize {
            got.resize(id as usize + 1, Vec::new());
        }
        got[id as usize].push(seq);
    };
    let kills = 25;
    for _ in 0..kills {
        // Let them run for a random while (sometimes so long the queue is full and
        // producers are blocked in `put`), then kill one at random.
        let quiet = rng.below(3) == 0;
        for _ in 0..rng.below(3000) {
            record(queue.get_timeout(PATIENCE).unwrap(), &mut got);
        }
        if quiet {
            std::thread::sleep(Duration::from_millis(rng.below(20)));
        }
        let victim = rng.below(running.len() as u64) as usize;
        let (id, mut child, acked) = running.swap_remove(victim);
        child.kill().unwrap();
        let _ = child.join_timeout(PATIENCE);
        finished.push((id, acked));
        let (c, a) = start_producer(&queue, next_id);
        running.push((next_id, c, a));
        next_id += 1;
    }
    for (id, mut child, acked) in running.drain(..) {
        child.kill().unwrap();
        let _ = child.join_timeout(PATIENCE);
        finished.push((id, acked));
    }
    // Every producer is dead: the queue drains, then says so.
    let deadline = Instant::now() + PATIENCE;
    loop {
        match queue.get_timeout(Duration::from_secs(2)) {
            Ok(m) => record(m, &mut got),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("after every producer died: {e:?}"),
        }
        assert!(Instant::now() < deadline, "never drained");
    }
    for (id, acked) in finished {
        let acked = acked.load(Ordering::Acquire);
        let seqs = got.get(id as usize).cloned().unwrap_or_default();
        // In order, no duplicates, nothing missing below what `put` acknowledged; at most
        // one more (put, but killed before it could record it).
        let expected: Vec<u64> = (0..seqs.len() as u64).collect();
        assert_eq!(
            seqs, expected,
            "producer {id}: got out of order, twice, or with a hole"
        );
        assert!(
            seqs.len() as u64 == acked || seqs.len() as u64 == acked + 1,
            "producer {id}: {acked} puts returned, {} got",
            seqs.len()
        );
    }
}

#[test]
fn consumers_killed_at_random_get_each_message_at_most_once() {
    ipckit_core::enter(ROLES);
    let mut rng = Rng::new();
    const N: usize = 30_000;
    let queue: Queue<u32> = Queue::create(QueueOptions::new(64).max_message(16)).unwrap();
    let seen: Array<u8> = Array::create(N).unwrap();
    let start = |q: &Queue<u32>| {
        Command::new("consumer")
            .handle("queue", q.try_clone().unwrap())
            .handle("seen", seen.try_clone().unwrap())
            .spawn()
            .unwrap()
    };
    let mut consumers: Vec<Child> = (0..3).map(|_| start(&queue)).collect();
    let mut kills = 0;
    for n in 0..N as u32 {
        queue.put_timeout(n, PATIENCE).unwrap();
        if rng.below(1500) == 0 {
            let victim = rng.below(consumers.len() as u64) as usize;
            let mut child = consumers.swap_remove(victim);
            child.kill().unwrap();
            let _ = child.join_timeout(PATIENCE);
            kills += 1;
            consumers.push(start(&queue));
        }
    }
    queue.close();
    for c in &mut consumers {
        join_ok(c);
    }
    let seen = seen.to_vec().unwrap();
    assert!(seen.iter().all(|&c| c <= 1), "a message was got twice");
    let lost = seen.iter().filter(|&&c| c == 0).count();
    // A consumer killed between `get` and recording takes that one message with it (and a
    // consumer killed mid-get takes the one it was copying).
    assert!(lost <= kills, "{lost} messages missing after {kills} kills");
}

#[test]
fn a_consumer_waiting_on_killed_producers_is_told_within_2s() {
    ipckit_core::enter(ROLES);
    let queue: Queue<(u64, u64)> = Queue::create(QueueOptions::new(1024).max_message(64)).unwrap();
    let mut producers: Vec<(Child, Shared<AtomicU64>)> =
        (0..2).map(|id| start_producer(&queue, id)).collect();
    // They are producing (one may fill the queue before the other puts anything).
    wait_until("a producer puts", || {
        producers
            .iter()
            .any(|(_, acked)| acked.load(Ordering::Acquire) > 0)
    });
    for (child, _) in &mut producers {
        child.kill().unwrap();
        let _ = child.join_timeout(PATIENCE);
    }
    // Drain, then Disconnected: a get never waits past 2 s.
    loop {
        match queue.get_timeout(Duration::from_secs(2)) {
            Ok(_) => {}
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("expected Disconnected, got {e:?}"),
        }
    }
}

#[test]
fn try_put_gives_the_message_back_and_close_ends_puts() {
    let q: Queue<String> = Queue::create(QueueOptions::new(2).max_message(64)).unwrap();
    q.try_put("a".into()).unwrap();
    q.try_put("b".into()).unwrap();
    match q.try_put("c".into()) {
        Err(TrySendError::Full(m)) => assert_eq!(m, "c"),
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(q.len(), 2);
    assert!(matches!(
        q.put_timeout("d".into(), Duration::from_millis(30)),
        Err(SendTimeoutError::Timeout(_))
    ));
    assert!(matches!(
        q.put(&"x".repeat(100)),
        Err(Error::TooLarge { .. })
    ));
    q.close();
    assert!(matches!(
        q.try_put("e".into()),
        Err(TrySendError::Disconnected(_))
    ));
    assert_eq!(q.get().unwrap(), "a");
    assert_eq!(q.get().unwrap(), "b");
    assert!(matches!(q.get(), Err(Error::Disconnected)));
    assert!(matches!(q.try_get(), Err(TryRecvError::Disconnected)));
}

#[test]
fn joinable_queue_join_waits_for_every_task() {
    ipckit_core::enter(ROLES);
    let tasks: JoinableQueue<u32> = JoinableQueue::create(8).unwrap();
    let results: Queue<u32> = Queue::create(64).unwrap();
    let mut workers: Vec<Child> = (0..3)
        .map(|_| {
            Command::new("worker")
                .handle("tasks", tasks.try_clone().unwrap())
                .handle("results", results.try_clone().unwrap())
                .spawn()
                .unwrap()
        })
        .collect();
    for n in 0..10 {
        tasks.put(&n).unwrap();
    }
    tasks.join_timeout(PATIENCE).unwrap();
    assert_eq!(tasks.unfinished_tasks(), 0);
    let mut squares: Vec<u32> = (0..10)
        .map(|_| results.get_timeout(PATIENCE).unwrap())
        .collect();
    squares.sort_unstable();
    assert_eq!(squares, (0..10).map(|n| n * n).collect::<Vec<_>>());
    tasks.close();
    for w in &mut workers {
        join_ok(w);
    }
    assert!(matches!(tasks.task_done(), Err(Error::Malformed(_))));
    let idle: JoinableQueue<u32> = JoinableQueue::create(2).unwrap();
    idle.put(&1).unwrap();
    assert!(matches!(
        idle.join_timeout(Duration::from_millis(30)),
        Err(Error::Timeout)
    ));
}

#[test]
fn an_unrelated_process_opens_a_named_queue() {
    ipckit_core::enter(ROLES);
    let q: Queue<String> = Queue::create_named(QueueOptions::new(4).max_message(256)).unwrap();
    let name = q.name().unwrap().to_string();
    let mut child = Command::new("put-by-name")
        .arg(&name)
        .unwrap()
        .spawn()
        .unwrap();
    join_ok(&mut child);
    assert_eq!(
        q.get_timeout(PATIENCE).unwrap(),
        "from an unrelated process"
    );
    drop(q);
    assert!(!std::path::Path::new("/dev/shm").join(&name).exists());
}

#[test]
fn typed_ends_come_from_the_queue_and_travel_as_byte_ends() {
    ipckit_core::enter(ROLES);
    let q: Queue<String> = Queue::create(4).unwrap();
    let mut rx = q.receiver().unwrap();
    // Both senders exist before either child can finish; the parent's own ends with it.
    let mut children: Vec<Child> = ["Alice", "Bob"]
        .iter()
        .map(|who| {
            Command::new("greeter")
                .arg(*who)
                .unwrap()
                .handle("tx", q.byte_sender().unwrap())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut got = Vec::new();
    loop {
        match rx.recv_timeout(PATIENCE) {
            Ok(m) => got.push(m),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    for c in &mut children {
        join_ok(c);
    }
    for who in ["Alice", "Bob"] {
        let mine: Vec<&String> = got.iter().filter(|m| m.starts_with(who)).collect();
        assert_eq!(
            mine,
            [0, 1, 2]
                .map(|i| format!("{who} {i}"))
                .iter()
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(got.len(), 6);

    // The queue's own put and get use its codec, as its ends do.
    let mut tx = q.sender().unwrap();
    tx.send(&"through the end".to_string()).unwrap();
    q.put(&"through the queue".to_string()).unwrap();
    assert_eq!(q.get().unwrap(), "through the end");
    assert_eq!(rx.recv().unwrap(), "through the queue");
}

#[test]
fn joinable_queue_has_every_form_across_processes() {
    ipckit_core::enter(ROLES);
    let tasks: JoinableQueue<u32> =
        JoinableQueue::create(QueueOptions::new(2).max_message(16)).unwrap();
    tasks.try_put(1).unwrap();
    tasks.put_timeout(2, PATIENCE).unwrap();
    // Full: the task comes back and is not counted.
    match tasks.try_put(3) {
        Err(TrySendError::Full(3)) => {}
        other => panic!("expected Full(3), got {other:?}"),
    }
    match tasks.put_timeout(3, Duration::from_millis(30)) {
        Err(SendTimeoutError::Timeout(3)) => {}
        other => panic!("expected Timeout(3), got {other:?}"),
    }
    assert_eq!(tasks.unfinished_tasks(), 2);
    assert!(matches!(
        tasks.join_timeout(Duration::from_millis(30)),
        Err(Error::Timeout)
    ));
    let mut child = Command::new("joinable-forms")
        .handle("tasks", tasks.try_clone().unwrap())
        .spawn()
        .unwrap();
    tasks.join_timeout(PATIENCE).unwrap();
    tasks.put(&3).unwrap();
    tasks.join_timeout(PATIENCE).unwrap();
    tasks.close();
    join_ok(&mut child);
    assert_eq!(tasks.unfinished_tasks(), 0);
    assert!(matches!(
        tasks.try_put(4),
        Err(TrySendError::Disconnected(4))
    ));
    assert_eq!(tasks.unfinished_tasks(), 0);
}

#[test]
fn an_invalid_name_is_refused_as_such() {
    let e = Queue::<u8>::open("a/b").unwrap_err();
    let m = e.to_string();
    assert!(matches!(e, Error::SharedMemory(_)), "{e:?}");
    assert!(
        m.to_lowercase().contains("invalid") && m.contains("a/b"),
        "{m}"
    );
    assert!(!m.contains("role input"), "{m}");
    // Its source is ipckit-shmem's error.
    let source = std::error::Error::source(&e).expect("a source");
    assert!(
        source.downcast_ref::<ipckit_shmem::Error>().is_some(),
        "{source:?}"
    );
}

#[test]
fn a_segment_that_is_not_a_queue_is_refused_as_such() {
    for len in [64, 64 << 10] {
        let seg = Segment::create_named(len).unwrap();
        let name = seg.name().unwrap().to_string();
        match Queue::<u8>::open(&name) {
            Err(Error::NotA {
                expected,
                name: named,
                reason,
            }) => {
                assert_eq!(expected, "an ipckit queue");
                assert_eq!(named, name);
                assert!(!reason.is_empty());
            }
            other => panic!("expected NotA, got {other:?}"),
        }
    }
    // Nothing under the name at all: the shared memory underneath says so.
    let e = Queue::<u8>::open("ipckit-shm-no-such-queue").unwrap_err();
    assert!(matches!(e, Error::SharedMemory(_)), "{e:?}");
}

#[test]
fn options_that_cannot_be_met_are_invalid_options() {
    let e =
        Queue::<u8>::create(QueueOptions::new(4).max_message(1 << 20).max_bytes(4096)).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidOptions(m) if m.contains("max_bytes 4096")),
        "{e:?}"
    );
    let e = Queue::<u8>::create(QueueOptions::new(1).max_message(3 << 30)).unwrap_err();
    assert!(matches!(e, Error::InvalidOptions(_)), "{e:?}");
    // A capacity converts into options; the capacity is a power of two.
    let q: Queue<u8> = Queue::create(5).unwrap();
    assert_eq!(q.capacity(), 8);
    assert_eq!(q.max_message(), 64 << 10);
}
