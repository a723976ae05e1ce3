//! The POSIX message queue: opened by unrelated processes, refused with clear errors beyond
//! the kernel's limits, removed with its creator's last handle, and never waiting past a
//! timeout or on a dead sender.
//!
//! Every queue here fits Linux's defaults for unprivileged processes (10 messages of up to
//! 8 KiB), so the tests pass without raised limits.

use std::time::{Duration, Instant};

use ipckit_queues::{
    Command, Ctx, Error, HARD_MSG_MAX, HARD_MSGSIZE_MAX, MessageQueue, MqLimits, MqOptions,
    MqReceiver, MqSender, RecvBytes, RecvTimeoutError, Role, RoleResult, SendBytes,
    SendTimeoutError, TryRecvError, TrySendError,
};
use ipckit_testkit::{PATIENCE, join_ok};

/// A queue of raw bytes, for the tests that use its byte ends.
type Bytes = MessageQueue<Vec<u8>>;

/// Opens the queue named by the argument and sends it three greetings.
fn send_by_name(ctx: &mut Ctx) -> RoleResult {
    let name: String = ctx.arg()?;
    let q: MessageQueue<String> = MessageQueue::open(&name)?;
    if q.is_owner() {
        return Err("an opened queue is not its owner".into());
    }
    let mut tx = q.sender()?;
    for i in 0..3 {
        tx.send(&format!("hello {i} from an unrelated process"))?;
    }
    Ok(())
}

/// Opens the queue named by the argument and checks what the parent sends, up to
/// `Disconnected`.
fn recv_by_name(ctx: &mut Ctx) -> RoleResult {
    let (name, count): (String, u32) = ctx.arg()?;
    let q: MessageQueue<u32> = MessageQueue::open(&name)?;
    // Until the parent's sender is gone (the parent joins this process within PATIENCE).
    let got = q
        .receiver()?
        .iter()
        .collect::<ipckit_queues::Result<Vec<u32>>>()?;
    if got != (0..count).collect::<Vec<_>>() {
        return Err(format!("expected 0..{count}, got {got:?}").into());
    }
    Ok(())
}

/// The receiving side of every form of a message queue's handle.
fn get_forms(ctx: &mut Ctx) -> RoleResult {
    let q: MessageQueue<String> = ctx.handle("q")?;
    let first = q.try_get().map_err(|e| format!("try_get: {e}"))?;
    let second = q.get_timeout(PATIENCE)?;
    let third = q.get()?;
    let fourth = q.get_deadline(ipckit_queues::Deadline::after(PATIENCE))?;
    if [first, second, third, fourth] != ["one", "two", "three", "four"] {
        return Err("out of order".into());
    }
    // The parent closes it once it has put those: drained, then the end.
    match q.get_timeout(PATIENCE) {
        Err(RecvTimeoutError::Disconnected) => {}
        other => return Err(format!("expected Disconnected, got {other:?}").into()),
    }
    match q.try_get() {
        Err(TryRecvError::Disconnected) => Ok(()),
        other => Err(format!("expected Disconnected, got {other:?}").into()),
    }
}

/// Takes a sender, waits a while, sends one message.
fn late_sender(ctx: &mut Ctx) -> RoleResult {
    let mut tx: MqSender = ctx.handle("tx")?;
    std::thread::sleep(Duration::from_millis(300));
    tx.send_bytes(b"late but alive")?;
    Ok(())
}

/// Sends numbered messages until killed.
fn send_forever(ctx: &mut Ctx) -> RoleResult {
    let mut tx: MqSender = ctx.handle("tx")?;
    for seq in 0u64.. {
        tx.send_bytes(&seq.to_le_bytes())?;
    }
    Ok(())
}

/// Drops root (and with it `CAP_SYS_RESOURCE`) if this process has it.
fn become_unprivileged() {
    use nix::libc;
    // SAFETY: geteuid reads the process's credentials and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        // SAFETY: plain system calls on integers; this role process does nothing else
        // meanwhile.
        unsafe {
            assert_eq!(libc::setgid(65534), 0, "setgid");
            assert_eq!(libc::setuid(65534), 0, "setuid");
        }
    }
    assert!(!MqLimits::read().privileged);
}

/// Without `CAP_SYS_RESOURCE`, asks for more than the sysctls allow.
fn beyond_sysctls(_: &mut Ctx) -> RoleResult {
    become_unprivileged();
    let limits = MqLimits::read();
    let msg_max = limits.msg_max.ok_or("msg_max unreadable")? as usize;
    let msgsize_max = limits.msgsize_max.ok_or("msgsize_max unreadable")? as usize;
    let e = Bytes::create(MqOptions::new(msg_max + 1).max_message(16))
        .expect_err("more messages than msg_max");
    let want = format!(
        "capacity {} exceeds /proc/sys/fs/mqueue/msg_max = {msg_max} (raise it or ask for fewer)",
        msg_max + 1
    );
    if !e.to_string().contains(&want) {
        return Err(format!("got `{e}`, wanted `{want}`").into());
    }
    let e = Bytes::create(MqOptions::new(1).max_message(msgsize_max + 1))
        .expect_err("larger messages than msgsize_max");
    let want = format!(
        "max_message {} exceeds /proc/sys/fs/mqueue/msgsize_max = {msgsize_max}",
        msgsize_max + 1
    );
    if !e.to_string().contains(&want) {
        return Err(format!("got `{e}`, wanted `{want}`").into());
    }
    Ok(())
}

/// With a small `RLIMIT_MSGQUEUE`, asks for a queue that needs more.
fn beyond_byte_limit(_: &mut Ctx) -> RoleResult {
    ipckit_testkit::set_mq_byte_limit(50_000);
    let opts = MqOptions::new(10).max_message(8192);
    let e = Bytes::create(opts).expect_err("more bytes than RLIMIT_MSGQUEUE");
    let m = e.to_string();
    if !m.contains("RLIMIT_MSGQUEUE (`ulimit -q`) = 50000 bytes")
        || !m.contains(&format!("takes {} bytes", opts.accounted_bytes()))
    {
        return Err(format!("unclear error: {m}").into());
    }
    // Within the limit it works.
    Bytes::create(MqOptions::new(4).max_message(1024))?;
    Ok(())
}

const ROLES: &[Role] = &[
    Role::new("send-by-name", send_by_name),
    Role::new("recv-by-name", recv_by_name),
    Role::new("late-sender", late_sender),
    Role::new("send-forever", send_forever),
    Role::new("beyond-sysctls", beyond_sysctls),
    Role::new("beyond-byte-limit", beyond_byte_limit),
    Role::new("get-forms", get_forms),
];

fn small() -> MqOptions {
    MqOptions::new(8).max_message(256)
}

/// Whether a queue called `name` exists (without depending on `/dev/mqueue`).
fn exists(name: &str) -> bool {
    match Bytes::open(name) {
        Ok(_) => true,
        Err(Error::Os {
            action: "open",
            object: "message queue",
            source,
            ..
        }) if source.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => panic!("opening {name}: {e}"),
    }
}

/// The companion segment of queue `name` in `/dev/shm`.
fn peers_path(name: &str) -> std::path::PathBuf {
    let suffix = name.strip_prefix("/ipckit-mq-").expect("an ipckit name");
    std::path::Path::new("/dev/shm").join(format!("ipckit-mqtable.{suffix}"))
}

#[test]
fn an_unrelated_process_opens_it_by_name() {
    ipckit_core::enter(ROLES);
    let q: MessageQueue<String> = MessageQueue::create(small()).unwrap();
    assert!(
        q.name()
            .starts_with(&format!("/ipckit-mq-{}-", std::process::id()))
    );
    assert!(q.is_owner());
    assert_eq!((q.capacity(), q.max_message()), (8, 256));

    // The child sends.
    let mut rx = q.receiver().unwrap();
    let mut child = Command::new("send-by-name")
        .arg(q.name())
        .unwrap()
        .spawn()
        .unwrap();
    for i in 0..3 {
        assert_eq!(
            rx.recv_timeout(PATIENCE).unwrap(),
            format!("hello {i} from an unrelated process")
        );
    }
    join_ok(&mut child);
    // Its sender is gone with it.
    assert!(matches!(
        rx.recv_timeout(PATIENCE),
        Err(RecvTimeoutError::Disconnected)
    ));

    // The child receives (without the leading slash, too).
    let q: MessageQueue<u32> = MessageQueue::create(small()).unwrap();
    let mut tx = q.sender().unwrap();
    let mut child = Command::new("recv-by-name")
        .arg(&(q.name().trim_start_matches('/').to_string(), 50u32))
        .unwrap()
        .spawn()
        .unwrap();
    for i in 0..50u32 {
        tx.send(&i).unwrap();
    }
    drop(tx);
    join_ok(&mut child);
}

#[test]
fn limits_are_refused_with_clear_errors() {
    ipckit_core::enter(ROLES);
    // Beyond the kernel's hard limits: refused even with CAP_SYS_RESOURCE.
    let e = Bytes::create(MqOptions::new(HARD_MSG_MAX + 1).max_message(1)).unwrap_err();
    assert!(
        matches!(&e, Error::Os { action: "create", object: "message queue", name, .. }
            if name.starts_with("/ipckit-mq-")),
        "{e:?}"
    );
    let e = e.to_string();
    assert!(
        e.contains("capacity 65537 exceeds the kernel's hard limit of 65536")
            || e.contains("capacity 65537 exceeds /proc/sys/fs/mqueue/msg_max"),
        "{e}"
    );
    let e = Bytes::create(MqOptions::new(1).max_message(HARD_MSGSIZE_MAX + 1))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("max_message 16777217 exceeds the kernel's hard limit")
            || e.contains("max_message 16777217 exceeds /proc/sys/fs/mqueue/msgsize_max"),
        "{e}"
    );
    let e = Bytes::create(0).unwrap_err().to_string();
    assert!(e.contains("must both be at least 1"), "{e}");

    // Beyond the sysctls, as an unprivileged process.
    join_ok(&mut Command::new("beyond-sysctls").spawn().unwrap());
    // Beyond RLIMIT_MSGQUEUE.
    join_ok(&mut Command::new("beyond-byte-limit").spawn().unwrap());
}

#[test]
fn the_creators_last_handle_removes_the_names() {
    ipckit_core::enter(ROLES);
    let q = Bytes::create(small()).unwrap();
    let name = q.name().to_string();
    assert!(exists(&name));
    assert!(peers_path(&name).exists());
    // Another process's (here: a non-owner's) handle does not remove it.
    drop(Bytes::open(&name).unwrap());
    assert!(exists(&name));
    // A handle made from the creator keeps it.
    let tx = q.byte_sender().unwrap();
    drop(q);
    assert!(exists(&name));
    drop(tx);
    assert!(!exists(&name));
    assert!(!peers_path(&name).exists());
    match Bytes::open(&name) {
        Err(e @ Error::Os { .. }) => assert!(e.to_string().contains(&name), "{e}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // A name ipckit did not make is refused without touching anything.
    match Bytes::open("/not-ipckit") {
        Err(Error::NotA { expected, name, .. }) => {
            assert_eq!(
                (expected, name.as_str()),
                ("an ipckit message queue", "/not-ipckit")
            );
        }
        other => panic!("expected NotA, got {other:?}"),
    }
}

#[test]
fn waits_honour_their_timeouts() {
    ipckit_core::enter(ROLES);
    let q = Bytes::create(MqOptions::new(2).max_message(16)).unwrap();
    let mut tx = q.byte_sender().unwrap();
    let mut rx = q.byte_receiver().unwrap();
    let timeout = Duration::from_millis(200);

    assert!(matches!(rx.try_recv_bytes(), Err(TryRecvError::Empty)));
    let start = Instant::now();
    assert!(matches!(
        rx.recv_bytes_timeout(timeout),
        Err(RecvTimeoutError::Timeout)
    ));
    assert!(start.elapsed() >= timeout, "{:?}", start.elapsed());

    tx.send_bytes(b"one").unwrap();
    tx.send_bytes(b"").unwrap();
    assert_eq!(q.len().unwrap(), 2);
    assert!(matches!(
        tx.try_send_bytes(b"three"),
        Err(TrySendError::Full(()))
    ));
    let start = Instant::now();
    assert!(matches!(
        tx.send_bytes_timeout(b"three", timeout),
        Err(SendTimeoutError::Timeout(()))
    ));
    assert!(start.elapsed() >= timeout, "{:?}", start.elapsed());

    match tx.send_bytes(&[0; 17]) {
        Err(Error::TooLarge { len: 17, max: 16 }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(rx.recv_bytes().unwrap(), b"one");
    assert_eq!(rx.recv_bytes().unwrap(), b"");
    assert!(q.is_empty().unwrap());
}

#[test]
fn close_drains_then_disconnects() {
    ipckit_core::enter(ROLES);
    let q = Bytes::create(small()).unwrap();
    let mut rx = q.byte_receiver().unwrap();
    // No sender yet and not closed: a receiver waits (a sender may still come).
    assert!(matches!(rx.try_recv_bytes(), Err(TryRecvError::Empty)));
    let mut tx = q.byte_sender().unwrap();
    for m in [&b"a"[..], b"b", b"c"] {
        tx.send_bytes(m).unwrap();
    }
    q.close();
    assert!(q.is_closed());
    assert!(matches!(tx.send_bytes(b"d"), Err(Error::Disconnected)));
    for m in [&b"a"[..], b"b", b"c"] {
        assert_eq!(rx.recv_bytes_timeout(PATIENCE).unwrap(), m);
    }
    assert!(matches!(rx.recv_bytes(), Err(Error::Disconnected)));

    // A receiver already waiting learns of the close within a slice.
    let q = Bytes::create(small()).unwrap();
    let _tx = q.byte_sender().unwrap();
    let mut rx = q.byte_receiver().unwrap();
    let waiter = std::thread::spawn(move || {
        let start = Instant::now();
        (rx.recv_bytes_timeout(PATIENCE), start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(100));
    q.close();
    let (got, waited) = waiter.join().unwrap();
    assert!(
        matches!(got, Err(RecvTimeoutError::Disconnected)),
        "{got:?}"
    );
    assert!(waited < Duration::from_secs(2), "{waited:?}");
}

#[test]
fn a_sender_handed_to_a_child_keeps_receivers_waiting() {
    ipckit_core::enter(ROLES);
    let q = Bytes::create(small()).unwrap();
    let mut rx: MqReceiver = q.byte_receiver().unwrap();
    // The parent's registration lasts until the child has registered: no gap in which the
    // receiver could see no sender at all.
    let mut child = Command::new("late-sender")
        .handle("tx", q.byte_sender().unwrap())
        .spawn()
        .unwrap();
    assert_eq!(rx.recv_bytes_timeout(PATIENCE).unwrap(), b"late but alive");
    join_ok(&mut child);
    assert!(matches!(
        rx.recv_bytes_timeout(PATIENCE),
        Err(RecvTimeoutError::Disconnected)
    ));
}

#[test]
fn a_killed_sender_disconnects_within_2s() {
    ipckit_core::enter(ROLES);
    let q = Bytes::create(small()).unwrap();
    let mut rx = q.byte_receiver().unwrap();
    let mut child = Command::new("send-forever")
        .handle("tx", q.byte_sender().unwrap())
        .spawn()
        .unwrap();
    for seq in 0u64..100 {
        assert_eq!(rx.recv_bytes_timeout(PATIENCE).unwrap(), seq.to_le_bytes());
    }
    child.kill().unwrap();
    let _ = child.join_timeout(PATIENCE);
    let killed = Instant::now();
    for seq in 100u64.. {
        match rx.recv_bytes_timeout(Duration::from_secs(2)) {
            Ok(m) => assert_eq!(m, seq.to_le_bytes()),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("after the kill: {e:?}"),
        }
    }
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "{:?}",
        killed.elapsed()
    );
}

#[test]
fn the_queue_handle_has_every_form_across_processes() {
    ipckit_core::enter(ROLES);
    let q: MessageQueue<String> = MessageQueue::create(MqOptions::new(2).max_message(64)).unwrap();
    q.try_put("one".into()).unwrap();
    q.put_timeout("two".into(), PATIENCE).unwrap();
    match q.try_put("three".into()) {
        Err(TrySendError::Full(m)) => assert_eq!(m, "three"),
        other => panic!("expected Full, got {other:?}"),
    }
    match q.put_timeout("three".into(), Duration::from_millis(30)) {
        Err(SendTimeoutError::Timeout(m)) => assert_eq!(m, "three"),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(matches!(
        q.put(&"x".repeat(100)),
        Err(Error::TooLarge { .. })
    ));
    let mut child = Command::new("get-forms")
        .handle("q", q.try_clone().unwrap())
        .spawn()
        .unwrap();
    q.put(&"three".into()).unwrap();
    q.put_deadline(&"four".into(), ipckit_queues::Deadline::after(PATIENCE))
        .unwrap();
    // Once the child took all four (the queue holds two): the end.
    ipckit_testkit::wait_until("the child takes every message", || q.is_empty().unwrap());
    q.close();
    join_ok(&mut child);
    assert!(matches!(
        q.try_put("five".into()),
        Err(TrySendError::Disconnected(_))
    ));
}
