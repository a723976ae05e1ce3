//! Processes SIGKILLed at the worst moment: a consumer between claiming a slot and freeing
//! it, a producer between claiming a slot and publishing it, a child handed a sender and
//! killed before it took it, producers that put through a `Queue` handle, and the creator
//! of a message queue. Every call, blocking or not, still returns within its deadline, and
//! repairs what the dead process left the moment it meets it.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use ipckit_queues::{
    Child, Command, Ctx, Deadline, MessageQueue, MqOptions, MqSender, Queue, QueueOptions,
    QueueReceiver, QueueSender, RecvBytes, RecvTimeoutError, Role, RoleResult, SendBytes,
    TryRecvError,
};
use ipckit_shmem::Shared;
use ipckit_testkit::{PATIENCE, wait_until};

/// The size of the message a victim is killed while copying: large enough that copying it
/// takes milliseconds, so that a kill aimed at the copy lands in it.
const BIG: usize = 32 << 20;

/// How many times a kill aimed at the middle of a copy is tried before the test gives up.
const AIMS: usize = 20;

/// Gets one message through a byte receiver, then says so and waits to be killed.
fn get_one(ctx: &mut Ctx) -> RoleResult {
    let mut rx: QueueReceiver = ctx.handle("rx")?;
    let done: Shared<AtomicU64> = ctx.handle("done")?;
    let mut buf = Vec::new();
    rx.recv_bytes_into_deadline(&mut buf, Deadline::after(PATIENCE))?;
    done.store(1, Ordering::Release);
    std::thread::sleep(PATIENCE);
    Ok(())
}

/// Puts one big message through a byte sender, then says so and waits to be killed.
fn put_one(ctx: &mut Ctx) -> RoleResult {
    let mut tx: QueueSender = ctx.handle("tx")?;
    let done: Shared<AtomicU64> = ctx.handle("done")?;
    tx.send_bytes_deadline(&vec![7; BIG], Deadline::after(PATIENCE))?;
    done.store(1, Ordering::Release);
    std::thread::sleep(PATIENCE);
    Ok(())
}

/// Is handed a sender and never takes it (it is killed first).
fn never_takes(_: &mut Ctx) -> RoleResult {
    std::thread::sleep(PATIENCE);
    Ok(())
}

/// Puts three numbers through a `Queue` handle (as Python's producers do), then waits to
/// be killed.
fn put_through_queue(ctx: &mut Ctx) -> RoleResult {
    let id: u32 = ctx.arg()?;
    let q: Queue<u32> = ctx.handle("q")?;
    for i in 0..3 {
        q.put(&(id * 10 + i))?;
    }
    std::thread::sleep(PATIENCE);
    Ok(())
}

/// Creates a message queue (under a lowered `RLIMIT_MSGQUEUE` if the argument says so),
/// reports its name or why it could not, then waits to be killed.
fn create_mq(ctx: &mut Ctx) -> RoleResult {
    let limit: Option<u64> = ctx.arg()?;
    let report: Queue<Result<String, String>> = ctx.handle("report")?;
    if let Some(bytes) = limit {
        ipckit_testkit::set_mq_byte_limit(bytes);
    }
    match MessageQueue::<u8>::create(MqOptions::default()) {
        Ok(q) => {
            report.put(&Ok(q.name().to_string()))?;
            std::thread::sleep(PATIENCE);
            drop(q);
        }
        Err(e) => report.put(&Err(e.to_string()))?,
    }
    Ok(())
}

const ROLES: &[Role] = &[
    Role::new("get-one", get_one),
    Role::new("put-one", put_one),
    Role::new("never-takes", never_takes),
    Role::new("put-through-queue", put_through_queue),
    Role::new("create-mq", create_mq),
];

/// Runs `f` on a thread and waits at most `limit` for it: a call that never returns fails
/// the test instead of hanging it.
fn within<R: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> R + Send + 'static,
) -> R {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} did not return within {limit:?}"))
}

fn kill(child: &mut Child) {
    child.kill().unwrap();
    let _ = child.join_timeout(PATIENCE);
}

/// A consumer killed while it copies the only message of a queue of one slot: the slot is
/// left claimed by a dead process, on a queue that is otherwise empty.
fn queue_with_a_dead_consumer() -> Queue<u32> {
    for _ in 0..AIMS {
        let q: Queue<u32> = Queue::create(QueueOptions::new(1).max_message(BIG)).unwrap();
        let mut tx = q.byte_sender().unwrap();
        tx.send_bytes(&vec![1; BIG]).unwrap();
        drop(tx);
        let done: Shared<AtomicU64> = Shared::create(0).unwrap();
        let mut child = Command::new("get-one")
            .handle("rx", q.byte_receiver().unwrap())
            .handle("done", done.try_clone().unwrap())
            .spawn()
            .unwrap();
        // The consumer has claimed the message (the head moved on): kill it mid-copy.
        wait_until("the consumer claims the message", || q.is_empty());
        kill(&mut child);
        if done.load(Ordering::Acquire) == 0 {
            return q;
        }
    }
    panic!("never killed the consumer mid-get in {AIMS} tries");
}

/// Waits at most 5 s for `get` to say `Disconnected`, failing on anything else; with
/// `soon`, it must say so within 2 s.
fn expect_disconnected<T: std::fmt::Debug>(
    soon: bool,
    get: impl FnOnce(Duration) -> Result<T, RecvTimeoutError>,
) {
    let start = Instant::now();
    match get(Duration::from_secs(5)) {
        Err(RecvTimeoutError::Disconnected) => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
    if soon {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }
}

#[test]
fn a_consumer_killed_mid_get_leaves_no_slot_that_spins_or_reads_full() {
    ipckit_core::enter(ROLES);
    let q = queue_with_a_dead_consumer();
    // A live sender: the queue is not finished, only empty.
    let _tx = q.byte_sender().unwrap();
    let q = within("try_get on an empty queue", PATIENCE, move || {
        match q.try_get() {
            Err(TryRecvError::Empty) => {}
            other => panic!("expected Empty, got {other:?}"),
        }
        q
    });
    let q = within("get_timeout(200 ms)", Duration::from_secs(2), move || {
        let start = Instant::now();
        match q.get_timeout(Duration::from_millis(200)) {
            Err(RecvTimeoutError::Timeout) => {}
            other => panic!("expected Timeout, got {other:?}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        q
    });
    // The queue is empty: there is room.
    q.try_put(5).expect("try_put on an empty queue");
    assert_eq!(q.try_get().unwrap(), 5);
    // And a second lap goes through the repaired slot.
    for n in 0..4 {
        q.try_put(n).unwrap();
        assert_eq!(q.try_get().unwrap(), n);
    }
}

#[test]
fn a_consumer_killed_mid_get_does_not_keep_polling_consumers_from_the_end() {
    ipckit_core::enter(ROLES);
    let q = queue_with_a_dead_consumer();
    // Every sender is gone (the parent's was dropped before the consumer started).
    within("get_timeout after every sender left", PATIENCE, move || {
        let start = Instant::now();
        match q.get_timeout(Duration::from_secs(5)) {
            Err(RecvTimeoutError::Disconnected) => {}
            other => panic!("expected Disconnected, got {other:?}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    });
}

/// A producer killed while it copies a big message into the first slot of a queue of
/// two: the slot is left claimed by a dead process.
fn queue_with_a_dead_producer() -> Queue<u32> {
    for _ in 0..AIMS {
        let q: Queue<u32> = Queue::create(QueueOptions::new(2).max_message(BIG)).unwrap();
        let done: Shared<AtomicU64> = Shared::create(0).unwrap();
        let mut child = Command::new("put-one")
            .handle("tx", q.byte_sender().unwrap())
            .handle("done", done.try_clone().unwrap())
            .spawn()
            .unwrap();
        // The producer has claimed its slot (the tail moved on): kill it mid-copy.
        wait_until("the producer claims a slot", || q.len() == 1);
        kill(&mut child);
        if done.load(Ordering::Acquire) == 0 {
            return q;
        }
    }
    panic!("never killed the producer mid-put in {AIMS} tries");
}

#[test]
fn a_producer_killed_mid_put_does_not_hide_what_follows_from_polling_consumers() {
    ipckit_core::enter(ROLES);
    let q = queue_with_a_dead_producer();
    q.try_put(7).expect("the second slot is free");
    // A consumer that only polls gets it: the first poll that meets the dead producer's
    // slot repairs it. No sleeping between polls: nothing else would repair it.
    let q = within(
        "polling for the message behind the dead slot",
        PATIENCE,
        move || {
            let got = (0..1000).find_map(|_| q.try_get().ok());
            assert_eq!(got, Some(7), "polling consumers never saw it");
            q
        },
    );
    // And the queue is whole: two free slots.
    q.try_put(8).unwrap();
    q.try_put(9).unwrap();
    assert_eq!(q.try_get().unwrap(), 8);
    assert_eq!(q.try_get().unwrap(), 9);
}

#[test]
fn a_producer_killed_mid_put_does_not_block_producers_behind_it() {
    ipckit_core::enter(ROLES);
    let q = queue_with_a_dead_producer();
    q.try_put(7).unwrap();
    // One dead claim and one message: the next put's slot is the dead claim's, which the
    // put repairs the moment it meets it, without any consumer's help.
    let q = within("try_put behind the dead slot", PATIENCE, move || {
        q.try_put(10).expect("room behind the dead producer's slot");
        q
    });
    assert_eq!(q.try_get().unwrap(), 7);
    assert_eq!(q.try_get().unwrap(), 10);
}

#[test]
fn a_sender_handed_to_a_child_killed_before_it_took_it_ends_the_stream() {
    ipckit_core::enter(ROLES);
    let q: Queue<u32> = Queue::create(4).unwrap();
    let mut rx = q.receiver().unwrap();
    let mut child = Command::new("never-takes")
        .handle("tx", q.byte_sender().unwrap())
        .spawn()
        .unwrap();
    kill(&mut child);
    expect_disconnected(true, |t| rx.recv_timeout(t));
}

#[test]
fn a_sender_dropped_unsent_with_its_command_ends_the_stream() {
    ipckit_core::enter(ROLES);
    let q: Queue<u32> = Queue::create(4).unwrap();
    let mut rx = q.receiver().unwrap();
    // Handed to a command that is never started.
    drop(Command::new("never-takes").handle("tx", q.byte_sender().unwrap()));
    expect_disconnected(false, |t| rx.recv_timeout(t));
}

#[test]
fn an_mq_sender_handed_to_a_child_killed_before_it_took_it_ends_the_stream() {
    ipckit_core::enter(ROLES);
    let q: MessageQueue<u32> = MessageQueue::create(MqOptions::new(4).max_message(64)).unwrap();
    let mut rx = q.receiver().unwrap();
    let tx: MqSender = q.byte_sender().unwrap();
    let mut child = Command::new("never-takes")
        .handle("tx", tx)
        .spawn()
        .unwrap();
    kill(&mut child);
    expect_disconnected(true, |t| rx.recv_timeout(t));
}

#[test]
fn producers_that_put_through_a_queue_handle_count_until_killed() {
    ipckit_core::enter(ROLES);
    let q: Queue<u32> = Queue::create(16).unwrap();
    let mut children: Vec<Child> = (1..=2u32)
        .map(|id| {
            Command::new("put-through-queue")
                .arg(&id)
                .unwrap()
                .handle("q", q.try_clone().unwrap())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut got: Vec<u32> = (0..6).map(|_| q.get_timeout(PATIENCE).unwrap()).collect();
    got.sort_unstable();
    assert_eq!(got, [10, 11, 12, 20, 21, 22]);
    // They live: the consumer waits.
    assert!(matches!(
        q.get_timeout(Duration::from_millis(100)),
        Err(RecvTimeoutError::Timeout)
    ));
    for c in &mut children {
        kill(c);
    }
    expect_disconnected(true, |t| q.get_timeout(t));
}

#[test]
fn message_queues_of_killed_creators_are_listed_removed_and_cleared_at_the_limit() {
    ipckit_core::enter(ROLES);
    // Room for three default queues, in each creator.
    let limit = 3 * MqOptions::default().accounted_bytes() + 1000;
    let spawn = |limit: Option<u64>| {
        let report: Queue<Result<String, String>> = Queue::create(4).unwrap();
        // The creator reports through a `Queue` handle: it counts as a producer.
        let mut child = Command::new("create-mq")
            .arg(&limit)
            .unwrap()
            .handle("report", report.try_clone().unwrap())
            .spawn()
            .unwrap();
        let got = report.get_timeout(PATIENCE).unwrap();
        kill(&mut child);
        // Killed, the producer no longer counts: the end, not a wait.
        match report.get_timeout(Duration::from_secs(5)) {
            Err(RecvTimeoutError::Disconnected) => {}
            other => panic!("expected Disconnected, got {other:?}"),
        }
        got
    };
    // A killed creator's queue is left behind: found, and removed.
    let name = spawn(None).unwrap();
    assert!(
        ipckit_queues::stale_message_queues()
            .unwrap()
            .contains(&name),
        "{name} not found stale"
    );
    let removed = ipckit_queues::remove_stale_message_queues().unwrap();
    assert!(removed.contains(&name), "{name} not removed: {removed:?}");
    assert!(
        MessageQueue::<u8>::open(&name).is_err(),
        "{name} still opens"
    );
    assert!(
        !ipckit_queues::stale_message_queues()
            .unwrap()
            .contains(&name)
    );
    // Killed creators leave their queues until the limit is reached; then `create` clears
    // them and succeeds. (A refusal would only be right once live queues of this user
    // filled the limit.)
    let mut stale = Vec::new();
    for _ in 0..4 {
        match spawn(Some(limit)) {
            Ok(name) => stale.push(name),
            Err(e) => panic!("creating with {} stale queues: {e}", stale.len()),
        }
    }
    // The fourth could only be made by clearing the first three.
    for name in &stale[..3] {
        assert!(
            MessageQueue::<u8>::open(name).is_err(),
            "{name} still opens"
        );
    }
    ipckit_queues::remove_stale_message_queues().unwrap();
    assert!(MessageQueue::<u8>::open(&stale[3]).is_err());
}
