//! The tests and the child roles they start.

use std::{
    io::{self, Write},
    os::fd::AsFd,
    time::{Duration, Instant},
};

use ipckit_core::{
    Command, Ctx, Error, Handle, RecvBytes, RecvTimeoutError, Result, Role, RoleResult, SendBytes,
    TryRecvError,
};
use serde::{Deserialize, Serialize};

use ipckit_testkit::PATIENCE;

/// One channel flavour of a mechanism, as the suite needs to see it.
pub trait Flavour: 'static {
    /// The sending end.
    type Tx: SendBytes + Handle + Send + 'static;
    /// The receiving end.
    type Rx: RecvBytes + Handle + Send + 'static;

    /// A connected pair of ends, in this process.
    ///
    /// # Errors
    /// Whatever creating the channel fails with.
    fn pair() -> Result<(Self::Tx, Self::Rx)>;

    /// The largest message the flavour carries, where the operating system caps it below the
    /// suite's 16 MiB (POSIX message queues: `/proc/sys/fs/mqueue/msgsize_max`). Every
    /// size the suite sends is capped to it.
    fn max_message() -> usize {
        16 << 20
    }
}

/// Writes `bytes` into a byte-stream flavour's sending end without framing, for the
/// malformed-input tests (which only byte streams run: a message queue delivers whole
/// messages, so no torn frame can be sent there, and those tests are marked not run).
fn send_raw(tx: &impl AsFd, bytes: &[u8]) -> io::Result<()> {
    std::fs::File::from(tx.as_fd().try_clone_to_owned()?).write_all(bytes)
}

/// The child roles of the suite for flavour `F`.
pub fn roles<F: Flavour>() -> Vec<Role> {
    vec![
        Role::new("conformance-send", role_send::<F>),
        Role::new("conformance-send-forever", role_send_forever::<F>),
        Role::new("conformance-recv", role_recv::<F>),
        Role::new("conformance-send-typed", role_send_typed::<F>),
    ]
}

/// Runs one test of the suite: first lets a role child take over, then runs `test`.
pub fn run<F: Flavour>(test: fn() -> Result<()>) {
    ipckit_core::enter(&roles::<F>());
    if let Err(e) = test() {
        panic!("conformance test failed: {e}");
    }
}

#[derive(Serialize, Deserialize)]
struct Plan {
    sizes: Vec<usize>,
    repeat: usize,
}

impl Plan {
    /// `repeat` rounds of messages of `sizes`, each capped to what flavour `F` carries.
    fn new<F: Flavour>(sizes: &[usize], repeat: usize) -> Plan {
        Plan {
            sizes: sizes.iter().map(|&s| s.min(F::max_message())).collect(),
            repeat,
        }
    }
}

/// Message `seq` of `size` bytes: the sequence number, then a pattern derived from it.
fn message(seq: usize, size: usize) -> Vec<u8> {
    let mut m: Vec<u8> = (0..size)
        .map(|i| (i.wrapping_mul(31) ^ seq) as u8)
        .collect();
    let tag = (seq as u64).to_le_bytes();
    let n = size.min(8);
    m[..n].copy_from_slice(&tag[..n]);
    m
}

fn check(seq: usize, size: usize, got: &[u8]) -> Result<()> {
    if got.len() != size || got != message(seq, size) {
        return Err(Error::Malformed(format!(
            "message {seq}: expected {size} bytes of its pattern, got {} bytes",
            got.len()
        )));
    }
    Ok(())
}

fn plan_messages(plan: &Plan) -> impl Iterator<Item = (usize, usize)> + '_ {
    (0..plan.repeat).flat_map(move |r| {
        plan.sizes
            .iter()
            .enumerate()
            .map(move |(i, &s)| (r * plan.sizes.len() + i, s))
    })
}

fn role_send<F: Flavour>(ctx: &mut Ctx) -> RoleResult {
    let plan: Plan = ctx.arg()?;
    let mut tx: F::Tx = ctx.handle("tx")?;
    for (seq, size) in plan_messages(&plan) {
        tx.send_bytes(&message(seq, size))?;
    }
    Ok(())
}

fn role_send_forever<F: Flavour>(ctx: &mut Ctx) -> RoleResult {
    let mut tx: F::Tx = ctx.handle("tx")?;
    for seq in 0.. {
        tx.send_bytes(&message(seq, 1000))?;
    }
    Ok(())
}

fn role_recv<F: Flavour>(ctx: &mut Ctx) -> RoleResult {
    let plan: Plan = ctx.arg()?;
    let mut rx: F::Rx = ctx.handle("rx")?;
    for (seq, size) in plan_messages(&plan) {
        check(seq, size, &recv(&mut rx)?)?;
    }
    expect_disconnected(&mut rx)?;
    Ok(())
}

/// Receives with the suite's patience: a hang fails the test instead of blocking it.
fn recv(rx: &mut impl RecvBytes) -> Result<Vec<u8>> {
    rx.recv_bytes_timeout(PATIENCE).map_err(|e| match e {
        RecvTimeoutError::Timeout => {
            Error::Malformed("no message within the test's patience".into())
        }
        RecvTimeoutError::Disconnected => Error::Disconnected,
        RecvTimeoutError::Failed(e) => e,
        _ => Error::Malformed(format!("unexpected {e:?}")),
    })
}

fn expect_disconnected(rx: &mut impl RecvBytes) -> Result<()> {
    match rx.recv_bytes_timeout(PATIENCE) {
        Err(RecvTimeoutError::Disconnected) => Ok(()),
        other => Err(Error::Malformed(format!(
            "expected Disconnected, got {other:?}"
        ))),
    }
}

fn join(child: &mut ipckit_core::Child) -> Result<()> {
    let status = child.join_timeout(PATIENCE)?;
    if !status.success() {
        return Err(Error::Malformed(format!(
            "child {} ended with {status}",
            child.role()
        )));
    }
    Ok(())
}

fn start_sender<F: Flavour>(tx: F::Tx, plan: &Plan) -> Result<ipckit_core::Child> {
    Command::new("conformance-send")
        .arg(plan)?
        .handle("tx", tx)
        .quiet()
        .spawn()
}

/// A child process sends 1000 messages of varied sizes; they arrive whole and in order,
/// then the receiver sees `Disconnected`.
pub fn order_kept_across_processes<F: Flavour>() -> Result<()> {
    let (tx, mut rx) = F::pair()?;
    let plan = Plan::new::<F>(&[1, 100, 5000, 70_000, 8], 200);
    let mut child = start_sender::<F>(tx, &plan)?;
    for (seq, size) in plan_messages(&plan) {
        check(seq, size, &recv(&mut rx)?)?;
    }
    expect_disconnected(&mut rx)?;
    join(&mut child)
}

/// 100 000 small messages from another process, none lost, none reordered.
pub fn hundred_thousand_messages<F: Flavour>() -> Result<()> {
    let (tx, mut rx) = F::pair()?;
    let plan = Plan::new::<F>(&[16], 100_000);
    let mut child = start_sender::<F>(tx, &plan)?;
    let mut buf = Vec::new();
    for (seq, size) in plan_messages(&plan) {
        rx.recv_bytes_into_deadline(&mut buf, ipckit_core::Deadline::after(PATIENCE))?;
        check(seq, size, &buf)?;
    }
    expect_disconnected(&mut rx)?;
    join(&mut child)
}

/// Empty messages and 16 MiB messages (or the flavour's largest) cross intact.
pub fn empty_and_16mib_messages<F: Flavour>() -> Result<()> {
    let (tx, mut rx) = F::pair()?;
    let plan = Plan::new::<F>(&[0, 16 << 20, 0, 1, 16 << 20], 1);
    let mut child = start_sender::<F>(tx, &plan)?;
    for (seq, size) in plan_messages(&plan) {
        check(seq, size, &recv(&mut rx)?)?;
    }
    expect_disconnected(&mut rx)?;
    join(&mut child)
}

/// `try_recv` on an empty channel says `Empty` at once; after a send it gives the message.
pub fn try_recv_on_empty<F: Flavour>() -> Result<()> {
    let (mut tx, mut rx) = F::pair()?;
    match rx.try_recv_bytes() {
        Err(TryRecvError::Empty) => {}
        other => return Err(Error::Malformed(format!("expected Empty, got {other:?}"))),
    }
    tx.send_bytes_timeout(b"x", PATIENCE)
        .map_err(|e| Error::Malformed(format!("send: {e}")))?;
    let deadline = Instant::now() + PATIENCE;
    loop {
        match rx.try_recv_bytes() {
            Ok(m) if m == b"x" => return Ok(()),
            Err(TryRecvError::Empty) if Instant::now() < deadline => std::thread::yield_now(),
            other => {
                return Err(Error::Malformed(format!(
                    "expected the message, got {other:?}"
                )));
            }
        }
    }
}

/// `recv_timeout` on an empty channel waits at least its timeout, then says `Timeout`.
pub fn recv_timeout_honours_timeout<F: Flavour>() -> Result<()> {
    let (_tx, mut rx) = F::pair()?;
    let timeout = Duration::from_millis(200);
    let start = Instant::now();
    match rx.recv_bytes_timeout(timeout) {
        Err(RecvTimeoutError::Timeout) => {}
        other => return Err(Error::Malformed(format!("expected Timeout, got {other:?}"))),
    }
    if start.elapsed() < timeout {
        return Err(Error::Malformed(format!(
            "returned after {:?} < {timeout:?}",
            start.elapsed()
        )));
    }
    Ok(())
}

/// A sender that sent and exited: the receiver first drains everything, then gets
/// `Disconnected`.
pub fn drop_drains_then_disconnects<F: Flavour>() -> Result<()> {
    let (tx, mut rx) = F::pair()?;
    // Few enough to fit in any flavour's buffer, so the sender can exit before any is read.
    let plan = Plan::new::<F>(&[10], 8);
    let mut child = start_sender::<F>(tx, &plan)?;
    join(&mut child)?;
    for (seq, size) in plan_messages(&plan) {
        check(seq, size, &recv(&mut rx)?)?;
    }
    expect_disconnected(&mut rx)?;
    // It stays disconnected.
    expect_disconnected(&mut rx)
}

/// The sending process is SIGKILLed mid-stream: the receiver gets every whole message it
/// can, then `Disconnected` within 2 s, never a hang.
pub fn peer_killed_mid_stream<F: Flavour>() -> Result<()> {
    let (tx, mut rx) = F::pair()?;
    let mut child = Command::new("conformance-send-forever")
        .handle("tx", tx)
        .quiet()
        .spawn()?;
    for seq in 0..100 {
        check(seq, 1000, &recv(&mut rx)?)?;
    }
    child.kill()?;
    match child.join_timeout(PATIENCE) {
        Err(Error::RoleKilled { .. }) => {}
        other => {
            return Err(Error::Malformed(format!(
                "the killed sender joined as {other:?}"
            )));
        }
    }
    for seq in 100.. {
        match rx.recv_bytes_timeout(Duration::from_secs(2)) {
            Ok(m) => check(seq, 1000, &m)?,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
            Err(e) => return Err(Error::Malformed(format!("after the kill: {e:?}"))),
        }
    }
    unreachable!()
}

/// A header announcing 2^40 bytes is an error, without an allocation of that size or a panic.
pub fn giant_header_is_refused<F: Flavour>() -> Result<()>
where
    F::Tx: AsFd,
{
    let (tx, mut rx) = F::pair()?;
    let mut header = vec![0xff; 4];
    header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    send_raw(&tx, &header)?;
    match rx.recv_bytes_timeout(PATIENCE) {
        Err(RecvTimeoutError::Failed(Error::TooLarge { len, .. })) if len == 1 << 40 => Ok(()),
        other => Err(Error::Malformed(format!(
            "expected TooLarge, got {other:?}"
        ))),
    }
}

/// Random bytes in the channel give errors or (garbage) messages, then `Disconnected` or an
/// error; never a panic or a hang.
pub fn garbage_is_an_error<F: Flavour>() -> Result<()>
where
    F::Tx: AsFd,
{
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _round in 0..20 {
        let (tx, mut rx) = F::pair()?;
        let garbage: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        send_raw(&tx, &garbage)?;
        drop(tx);
        let mut rx = ipckit_core::Receiver::<Vec<String>, _>::new(&mut rx);
        let mut ended = false;
        for _ in 0..10_000 {
            match rx.recv_timeout(PATIENCE) {
                Ok(_) | Err(RecvTimeoutError::Failed(Error::Codec(_))) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(Error::Malformed("garbage made the receiver hang".into()));
                }
                Err(_) => {
                    ended = true;
                    break;
                }
            }
        }
        if !ended {
            return Err(Error::Malformed("garbage never ended the stream".into()));
        }
    }
    Ok(())
}

/// The parent sends, a child process receives and checks.
pub fn parent_to_child<F: Flavour>() -> Result<()> {
    let (mut tx, rx) = F::pair()?;
    let plan = Plan::new::<F>(&[3, 300, 30_000], 100);
    let mut child = Command::new("conformance-recv")
        .arg(&plan)?
        .handle("rx", rx)
        .quiet()
        .spawn()?;
    for (seq, size) in plan_messages(&plan) {
        tx.send_bytes(&message(seq, size))?;
    }
    drop(tx);
    join(&mut child)
}

/// The typed receiver's iterator yields every value sent by another process, then ends when
/// that process is gone.
pub fn iterator_ends_with_peer<F: Flavour>() -> Result<()> {
    let (tx, rx) = F::pair()?;
    let mut child = Command::new("conformance-send-typed")
        .handle("tx", tx)
        .quiet()
        .spawn()?;
    let got: Vec<(u32, String)> = ipckit_core::Receiver::new(rx)
        .into_iter()
        .collect::<Result<_>>()?;
    if got.len() != 50
        || got
            .iter()
            .enumerate()
            .any(|(i, (n, s))| *n as usize != i || *s != format!("message {i}"))
    {
        return Err(Error::Malformed(format!(
            "iterator gave {} values",
            got.len()
        )));
    }
    join(&mut child)
}

fn role_send_typed<F: Flavour>(ctx: &mut Ctx) -> RoleResult {
    let mut tx = ipckit_core::Sender::<(u32, String), _>::new(ctx.handle::<F::Tx>("tx")?);
    for i in 0..50 {
        tx.send(&(i, format!("message {i}")))?;
    }
    Ok(())
}

/// A typed receiver's iterator meets bytes that are not a frame: it yields the error (not
/// a clean end), then ends.
pub fn iterator_reports_garbage<F: Flavour>() -> Result<()>
where
    F::Tx: AsFd,
{
    let (tx, rx) = F::pair()?;
    let mut header = vec![0xff; 4];
    header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    send_raw(&tx, &header)?;
    drop(tx);
    let items: Vec<Result<u32>> = ipckit_core::Receiver::new(rx).into_iter().collect();
    match items.as_slice() {
        [Err(Error::TooLarge { .. })] => Ok(()),
        other => Err(Error::Malformed(format!(
            "expected one TooLarge error and the end, got {other:?}"
        ))),
    }
}
