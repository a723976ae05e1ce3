//! The queue against a real `redis-server`: a consumer SIGKILLed while holding messages,
//! the broker killed and restarted, `close`, the capacity, and the server's cleanup.

use std::{
    thread,
    time::{Duration, Instant},
};

use ipckit_core::{Command, Ctx, Role, RoleResult};
use ipckit_redis::{
    AckMode, Deadline, Error, RecvBytes, RecvTimeoutError, RedisOptions, RedisQueue, RedisReceiver,
    RedisServer, SendBytes, TryRecvError, TrySendError,
};
use ipckit_testkit::{PATIENCE, wait_until};

const ROLES: &[Role] = &[Role::new("hold", role_hold)];

/// Takes `n` messages without acknowledging them, then waits to be killed.
fn role_hold(ctx: &mut Ctx) -> RoleResult {
    let n: usize = ctx.arg()?;
    let mut rx: RedisReceiver = ctx.handle("rx")?;
    for _ in 0..n {
        rx.recv_bytes_timeout(PATIENCE)?;
    }
    loop {
        thread::sleep(Duration::from_secs(1));
    }
}

fn server() -> RedisServer {
    RedisServer::start().unwrap_or_else(|e| panic!("these tests need redis-server: {e}"))
}

#[test]
fn killed_consumer_messages_are_claimed_by_another() {
    ipckit_core::enter(ROLES);
    let server = server();
    let opts = RedisOptions::new(16)
        .claim_idle(Duration::from_millis(500))
        .ack(AckMode::Manual);
    let q: RedisQueue<String> = RedisQueue::create(&server.url(), opts).unwrap();
    let mut tx = q.sender().unwrap();
    for order in ["soup", "pizza", "salad"] {
        tx.send(&order.to_string()).unwrap();
    }
    let mut holder = Command::new("hold")
        .arg(&3usize)
        .unwrap()
        .handle("rx", q.byte_receiver().unwrap())
        .quiet()
        .spawn()
        .unwrap();
    wait_until("the holder took all three", || q.pending().unwrap() == 3);
    holder.kill().unwrap();
    assert!(matches!(
        holder.join_timeout(PATIENCE),
        Err(Error::RoleKilled { .. })
    ));

    let mut rx = q.byte_receiver().unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let bytes = rx.recv_bytes_timeout(PATIENCE).unwrap();
        let d = rx.last_delivery().unwrap();
        assert!(
            d.count >= 2,
            "a claimed message says it was delivered before"
        );
        got.push(String::from_utf8(bytes[1..].to_vec()).unwrap());
    }
    got.sort();
    assert_eq!(got, ["pizza", "salad", "soup"]);
    rx.ack().unwrap();
    assert_eq!(q.pending().unwrap(), 0);
    assert_eq!(q.len().unwrap(), 0);
    drop(tx);
    assert!(matches!(
        rx.recv_bytes_timeout(PATIENCE),
        Err(RecvTimeoutError::Disconnected)
    ));
}

#[test]
fn broker_restart_loses_nothing_and_calls_fail_within_deadline() {
    let mut server = server();
    let opts = RedisOptions::new(1000).io_timeout(Duration::from_secs(1));
    let q: RedisQueue<u32> = RedisQueue::create(&server.url(), opts).unwrap();
    let mut tx = q.sender().unwrap();
    let mut rx = q.receiver().unwrap();
    for i in 0..100 {
        tx.send(&i).unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..50 {
        seen.push(rx.recv_timeout(PATIENCE).unwrap());
    }

    server.kill().unwrap();
    let start = Instant::now();
    assert!(matches!(
        rx.recv_timeout(Duration::from_millis(300)),
        Err(RecvTimeoutError::Failed(Error::Os { .. }))
    ));
    assert!(matches!(
        tx.send_timeout(100, Duration::from_millis(300)),
        Err(ipckit_redis::SendTimeoutError::Failed(Error::Os { .. }))
    ));
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Failed(_))));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "calls took {:?} to fail",
        start.elapsed()
    );

    server.restart().unwrap();
    for i in 100..110 {
        tx.send(&i).unwrap();
    }
    drop(tx);
    loop {
        match rx.recv_timeout(PATIENCE) {
            Ok(v) => seen.push(v),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("after the restart: {e:?}"),
        }
    }
    // The 50th was delivered and not acknowledged when the broker died: it may come twice.
    seen.dedup();
    assert_eq!(seen, (0..110).collect::<Vec<_>>());
}

#[test]
fn close_ends_the_queue_for_every_consumer_after_draining() {
    let server = server();
    let q: RedisQueue<u8> = RedisQueue::create(&server.url(), 8).unwrap();
    let mut a = q.receiver().unwrap();
    let mut b = q.receiver().unwrap();
    q.put(&1).unwrap();
    q.put(&2).unwrap();
    q.close().unwrap();
    assert!(matches!(q.try_put(3), Err(TrySendError::Disconnected(3))));
    let mut got = vec![a.recv_timeout(PATIENCE).unwrap()];
    got.push(b.recv_timeout(PATIENCE).unwrap());
    got.sort();
    assert_eq!(got, [1, 2]);
    // Each consumer's next get acknowledges its message; the queue ends for both once
    // both did (a consumer still holding one keeps the other waiting: it might die).
    thread::scope(|s| {
        for rx in [&mut a, &mut b] {
            s.spawn(|| {
                assert!(matches!(
                    rx.recv_timeout(PATIENCE),
                    Err(RecvTimeoutError::Disconnected)
                ));
            });
        }
    });
}

#[test]
fn a_full_queue_refuses_and_a_get_makes_room() {
    let server = server();
    let q: RedisQueue<u8> = RedisQueue::create(&server.url(), 2).unwrap();
    let mut tx = q.byte_sender().unwrap();
    tx.try_send_bytes(&[1]).unwrap();
    tx.try_send_bytes(&[2]).unwrap();
    assert!(matches!(
        tx.try_send_bytes(&[3]),
        Err(TrySendError::Full(()))
    ));
    let start = Instant::now();
    assert!(
        tx.send_bytes_timeout(&[3], Duration::from_millis(200))
            .is_err()
    );
    assert!(start.elapsed() >= Duration::from_millis(200));
    let mut rx = q.byte_receiver().unwrap();
    assert_eq!(rx.recv_bytes_timeout(PATIENCE).unwrap(), [1]);
    // The first message stays until the next get acknowledges it.
    assert!(matches!(
        tx.try_send_bytes(&[3]),
        Err(TrySendError::Full(()))
    ));
    assert_eq!(rx.recv_bytes_timeout(PATIENCE).unwrap(), [2]);
    tx.try_send_bytes(&[3]).unwrap();
}

#[test]
fn a_consumer_slower_than_claim_idle_does_not_claim_back_what_it_finished() {
    let server = server();
    let opts = RedisOptions::new(16).claim_idle(Duration::from_millis(100));
    let q: RedisQueue<u8> = RedisQueue::create(&server.url(), opts).unwrap();
    q.put_all(&[1, 2, 3]).unwrap();
    let mut rx = q.byte_receiver().unwrap();
    for expected in 1..=3u8 {
        let got = rx.recv_bytes_timeout(PATIENCE).unwrap();
        // A u8 encodes as itself.
        assert_eq!(got, [expected], "each message once, in order");
        assert_eq!(rx.last_delivery().unwrap().count, 1);
        // Working on it for longer than claim_idle.
        thread::sleep(Duration::from_millis(250));
    }
    rx.ack().unwrap();
    assert_eq!(q.len().unwrap(), 0);
}

#[test]
fn put_all_puts_every_message_or_none() {
    let server = server();
    let q: RedisQueue<u8> = RedisQueue::create(&server.url(), 4).unwrap();
    q.put_all(&[1, 2, 3]).unwrap();
    // No room for two more: neither goes in.
    assert!(matches!(
        q.put_all_deadline(&[4, 5], Deadline::Now),
        Err(Error::Timeout)
    ));
    assert_eq!(q.len().unwrap(), 3);
    assert!(matches!(
        q.put_all(&[0; 5]),
        Err(Error::LimitReached { limit: 4, .. })
    ));
    q.put_all(&[4]).unwrap();
    let got: Vec<u8> = (0..4).map(|_| q.get_timeout(PATIENCE).unwrap()).collect();
    assert_eq!(got, [1, 2, 3, 4]);
}

#[test]
fn prefetched_messages_of_a_killed_consumer_are_claimed() {
    ipckit_core::enter(ROLES);
    let server = server();
    let opts = RedisOptions::new(16)
        .claim_idle(Duration::from_millis(500))
        .prefetch(4);
    let q: RedisQueue<u8> = RedisQueue::create(&server.url(), opts).unwrap();
    q.put_all(&[1, 2, 3, 4, 5]).unwrap();
    // The holder returns one message and holds three more it read with it.
    let mut holder = Command::new("hold")
        .arg(&1usize)
        .unwrap()
        .handle("rx", q.byte_receiver().unwrap())
        .quiet()
        .spawn()
        .unwrap();
    wait_until("the holder read four", || q.pending().unwrap() == 4);
    holder.kill().unwrap();
    assert!(matches!(
        holder.join_timeout(PATIENCE),
        Err(Error::RoleKilled { .. })
    ));
    let mut got: Vec<u8> = (0..5).map(|_| q.get_timeout(PATIENCE).unwrap()).collect();
    got.sort_unstable();
    assert_eq!(got, [1, 2, 3, 4, 5], "every message, the held ones claimed");
    q.close().unwrap();
    assert!(matches!(
        q.get_timeout(PATIENCE),
        Err(RecvTimeoutError::Disconnected)
    ));
    assert_eq!(q.pending().unwrap(), 0);
}

#[test]
fn open_by_name_and_a_name_that_is_no_queue() {
    let server = server();
    let q: RedisQueue<String> = RedisQueue::create(&server.url(), 4).unwrap();
    let other: RedisQueue<String> = RedisQueue::open(&server.url(), q.name()).unwrap();
    other.put(&"hello".to_string()).unwrap();
    assert_eq!(q.get_timeout(PATIENCE).unwrap(), "hello");
    assert!(matches!(
        RedisQueue::<String>::open(&server.url(), "no-such-queue"),
        Err(Error::NotA { .. })
    ));
    assert!(matches!(
        RedisQueue::<String>::create("http://nowhere", 4),
        Err(Error::InvalidAddress { .. })
    ));
}

#[test]
fn the_server_leaves_nothing_behind() {
    let server = server();
    let (dir, pid) = (server.dir().to_path_buf(), server.pid());
    assert!(dir.is_dir());
    drop(server);
    assert!(!dir.exists(), "{} is left", dir.display());
    wait_until("the server process is gone", || !ipckit_core::is_alive(pid));
}
