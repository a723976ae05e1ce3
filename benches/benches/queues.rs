//! Queue workloads of `docs/benchmarks.md`: `queue_1p1c_64B`, `queue_4p1c_64B`,
//! `queue_rtt_64B`, and the larger messages `queue_1p1c_4KiB` and `queue_1p1c_1MiB`.
//!
//! Every row runs across processes: it starts its producers and its consumer (or its echo
//! server), roles of this executable, once, on its first batch, each with its end of the
//! queue and a control connection (`ipckit_pipes::duplex`). For every batch the parent
//! orders the work over the control connections (how many messages each producer puts and
//! the consumer takes, or how many requests the echo server answers) and waits for the
//! reports; at the end it closes the control connections, upon which the children return.
//!
//! The ipckit rows use the byte level (`Queue::byte_sender` and `Queue::byte_receiver`), so
//! no codec is measured:
//!
//! - throughput (`queue_1p1c_*` and `queue_4p1c_64B`; messages or bytes per second, from
//!   the first order of a batch to the consumer's report): ipckit's `Queue` against
//!   ipc-channel used as a queue (the consumer holds the `IpcBytesReceiver`, each producer a
//!   clone of the `IpcBytesSender`), and, for 64-byte messages from one producer, an ipckit
//!   pipe (`ipckit_pipes::pipe`) as a second reference. Each message carries its number in
//!   the batch; the consumer reports their sum, which the parent checks, so a lost or
//!   doubled message fails the row. Python's `multiprocessing.Queue` runs in the same
//!   rounds (`python_mp_queue`: `benches/python/compare.py`, producers and consumer in
//!   processes of their own) when a Python is found.
//! - `queue_rtt_64B` (µs per RTT): a request queue and a reply queue between the parent
//!   and an echo server, with blocking waits (`ipckit`) and busy-waiting ones
//!   (`ipckit_spin`: every handle `spin(true)`), against their floors on a raw shared
//!   mapping of an anonymous memfd (`memfd_create`, `ftruncate`, `mmap`): `raw_futex`, two
//!   `AtomicU32`s ping-ponged with `FUTEX_WAIT` and `FUTEX_WAKE` (always woken: the plain
//!   futex round trip), and `raw_spin`, two `AtomicU64`s spun on (as `shm_spin_rtt`). The
//!   busy-wait rows run their two processes pinned to two different CPUs.
//!   Per batch, one untimed round trip first wakes the echo server from its order.
//!
//! A row's children report ready (an order of no work: their ends are made, a queue's
//! senders registered) before its first batch, so the batches never time their start.
//! Every wait has a deadline, except ipc-channel's receive, which has none: the consumer's
//! fails once every producer is gone, and the parent, which waits for each report at most
//! `PATIENCE`, kills any child still running when it gives up. The queues and the floors'
//! memory are anonymous memfds: nothing is left in `/dev/shm`.
//!
//! ```text
//! cargo bench -p ipckit-benches --bench queues -- --warm-up-time 1 --measurement-time 3
//! ```

use std::{
    io,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use criterion::Criterion;
use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcSender};
use ipckit_benches::{
    BIG, EchoRig, Figure, Group, PATIENCE, PingPong, Raw, RawSpin, Rig, SMALL, Words, Worker,
    echoes, serve,
};
use ipckit_core::{Ctx, Deadline, Handle, RecvBytes, Role, RoleResult, SendBytes};
use ipckit_pipes::{Reader, Writer};
use ipckit_queues::{Queue, QueueOptions, QueueReceiver, QueueSender};
use serde::{Deserialize, Serialize};

// The message of the 64-byte workloads is `SMALL`, that of `queue_1p1c_1MiB` is `BIG`.

/// The message of `queue_1p1c_4KiB`.
const MID: usize = 4 << 10;
/// The producers of `queue_4p1c_64B`.
const PRODUCERS: u64 = 4;
/// The queue of every ipckit row, used at the byte level.
type ByteQueue = Queue<Vec<u8>>;

/// The queue of the throughput rows for messages of `len` bytes: exactly that large, and
/// about 1 MiB of slots (1024 for 64 bytes, 256 for 4 KiB), at least 8 (8 MiB for 1 MiB).
fn options(len: usize) -> QueueOptions {
    QueueOptions::new(((1 << 20) / len).clamp(8, 1024)).max_message(len)
}

/// The number a producer stamped on a message (its first 8 bytes).
fn stamp(msg: &[u8]) -> anyhow::Result<u64> {
    let head = msg.get(..8).context("a message shorter than its stamp")?;
    Ok(u64::from_le_bytes(head.try_into()?))
}

// The children's side: the ends of what carries the messages.

/// A producer's end.
trait Put {
    /// Puts one message, waiting for room.
    fn put(&mut self, msg: &[u8]) -> anyhow::Result<()>;
}

/// A consumer's end.
trait Take {
    /// Takes the next message into `buf`, waiting for it until `deadline` (for ever on
    /// ipc-channel, whose byte receiver has no timeout).
    fn take(&mut self, buf: &mut Vec<u8>, deadline: Deadline) -> anyhow::Result<()>;
}

impl Put for QueueSender {
    fn put(&mut self, msg: &[u8]) -> anyhow::Result<()> {
        Ok(self.send_bytes(msg)?)
    }
}

impl Take for QueueReceiver {
    fn take(&mut self, buf: &mut Vec<u8>, deadline: Deadline) -> anyhow::Result<()> {
        Ok(self.recv_bytes_into_deadline(buf, deadline)?)
    }
}

impl Put for Writer {
    fn put(&mut self, msg: &[u8]) -> anyhow::Result<()> {
        Ok(self.send_bytes(msg)?)
    }
}

impl Take for Reader {
    fn take(&mut self, buf: &mut Vec<u8>, deadline: Deadline) -> anyhow::Result<()> {
        Ok(self.recv_bytes_into_deadline(buf, deadline)?)
    }
}

impl Put for IpcBytesSender {
    fn put(&mut self, msg: &[u8]) -> anyhow::Result<()> {
        Ok(self.send(msg)?)
    }
}

impl Take for IpcBytesReceiver {
    fn take(&mut self, buf: &mut Vec<u8>, _: Deadline) -> anyhow::Result<()> {
        *buf = self.recv()?;
        Ok(())
    }
}

/// A producer: on order `n`, puts `n` messages of `len` bytes stamped 0 to `n - 1`.
fn produce(ctx: &mut Ctx, len: usize, mut tx: impl Put) -> RoleResult {
    let mut msg = vec![0xa5; len];
    serve(ctx, |n| {
        for i in 0..n {
            msg[..8].copy_from_slice(&i.to_le_bytes());
            tx.put(&msg)?;
        }
        Ok(n)
    })
}

/// A consumer: on order `n`, takes `n` messages of `len` bytes and reports the sum of
/// their stamps.
fn consume(ctx: &mut Ctx, len: usize, mut rx: impl Take) -> RoleResult {
    let mut buf = Vec::with_capacity(len);
    serve(ctx, |n| {
        let deadline = Deadline::after(PATIENCE);
        let mut sum = 0u64;
        for _ in 0..n {
            rx.take(&mut buf, deadline)?;
            ensure!(
                buf.len() == len,
                "a message of {} bytes, not {len}",
                buf.len()
            );
            sum = sum.wrapping_add(stamp(&buf)?);
        }
        Ok(sum)
    })
}

/// A producer's or consumer's argument: the message size and, for ipc-channel, the name
/// of the bootstrap server through which the parent sends the child its end.
#[derive(Debug, Serialize, Deserialize)]
struct Job {
    len: usize,
    server: Option<String>,
}

/// An ipc-channel row's end for a child.
#[derive(Serialize, Deserialize)]
enum End {
    Tx(IpcBytesSender),
    Rx(IpcBytesReceiver),
}

/// The child's side of the bootstrap: connects to the parent's server, sends it a channel,
/// and receives its end on that.
fn ipc_end(job: &Job) -> anyhow::Result<End> {
    let server = job.server.clone().context("no bootstrap server")?;
    let (tx, rx) = ipc::channel::<End>()?;
    IpcSender::<IpcSender<End>>::connect(server)?.send(tx)?;
    Ok(rx.recv()?)
}

// The echo side of the round trips.

/// ipckit's ping-pong: the parent puts on the request queue and gets from the reply queue,
/// the echo server the other way round.
struct QueuePair {
    tx: QueueSender,
    rx: QueueReceiver,
    msg: Vec<u8>,
    buf: Vec<u8>,
}

impl QueuePair {
    /// The ends on `put_to` and `get_from`, busy-waiting if `spin`.
    fn new(put_to: ByteQueue, get_from: ByteQueue, spin: bool) -> anyhow::Result<Self> {
        Ok(QueuePair {
            tx: put_to.spin(spin).byte_sender()?,
            rx: get_from.spin(spin).byte_receiver()?,
            msg: vec![0xa5; SMALL],
            buf: Vec::with_capacity(SMALL),
        })
    }
}

impl PingPong for QueuePair {
    fn round(&mut self, v: u64, deadline: Instant) -> anyhow::Result<()> {
        self.msg[..8].copy_from_slice(&v.to_le_bytes());
        self.tx.send_bytes(&self.msg)?;
        self.rx
            .recv_bytes_into_deadline(&mut self.buf, Deadline::At(deadline))?;
        ensure!(
            self.buf.len() == SMALL && stamp(&self.buf)? == v,
            "a wrong echo of {v}"
        );
        Ok(())
    }

    fn echo(&mut self, deadline: Instant) -> anyhow::Result<()> {
        self.rx
            .recv_bytes_into_deadline(&mut self.buf, Deadline::At(deadline))?;
        Ok(self.tx.send_bytes(&self.buf)?)
    }
}

/// `FUTEX_WAIT`: sleeps while `word` holds `seen`, at most `PATIENCE`. Returns at once if
/// it holds something else already, or on a signal; fails if the time runs out.
fn futex_wait(word: &AtomicU32, seen: u32) -> anyhow::Result<()> {
    let timeout = libc::timespec {
        tv_sec: PATIENCE.as_secs() as libc::time_t,
        tv_nsec: 0,
    };
    // SAFETY: `word` is a live, aligned 32-bit atomic (in memory shared with the other
    // process, so not FUTEX_PRIVATE); FUTEX_WAIT only reads it, and the relative timeout
    // lives on this stack for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            seen,
            &raw const timeout,
        )
    };
    if r == -1 {
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EINTR) => {}
            Some(libc::ETIMEDOUT) => bail!("no word from the other side in {PATIENCE:?}"),
            _ => return Err(e).context("FUTEX_WAIT"),
        }
    }
    Ok(())
}

/// `FUTEX_WAKE`: wakes the other side if it sleeps on `word`.
fn futex_wake(word: &AtomicU32) -> anyhow::Result<()> {
    // SAFETY: `word` is a live, aligned 32-bit atomic; FUTEX_WAKE does not access memory.
    let r = unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1) };
    if r == -1 {
        return Err(io::Error::last_os_error()).context("FUTEX_WAKE");
    }
    Ok(())
}

/// The raw futex ping-pong: each side stores its word, wakes the other, and sleeps until
/// the other's word changes. The words count round trips modulo 2³².
struct FutexPair {
    words: Raw<Words<AtomicU32>>,
    /// The value last echoed (in the echo server).
    last: u32,
}

impl PingPong for FutexPair {
    fn round(&mut self, v: u64, _: Instant) -> anyhow::Result<()> {
        let v = v as u32;
        // Pairs with the echo server's Acquire load.
        self.words.ping.0.store(v, Ordering::Release);
        futex_wake(&self.words.ping.0)?;
        loop {
            // Pairs with the echo server's Release store.
            let pong = self.words.pong.0.load(Ordering::Acquire);
            if pong == v {
                return Ok(());
            }
            futex_wait(&self.words.pong.0, pong)?;
        }
    }

    fn echo(&mut self, _: Instant) -> anyhow::Result<()> {
        let v = loop {
            // Pairs with the parent's Release store.
            let ping = self.words.ping.0.load(Ordering::Acquire);
            if ping != self.last {
                break ping;
            }
            futex_wait(&self.words.ping.0, ping)?;
        };
        self.last = v;
        // Pairs with the parent's Acquire load.
        self.words.pong.0.store(v, Ordering::Release);
        futex_wake(&self.words.pong.0)
    }
}

// The child roles.

const QUEUE_PRODUCER: &str = "queue_producer";
const QUEUE_CONSUMER: &str = "queue_consumer";
const PIPE_PRODUCER: &str = "pipe_producer";
const PIPE_CONSUMER: &str = "pipe_consumer";
const IPC_PRODUCER: &str = "ipc_producer";
const IPC_CONSUMER: &str = "ipc_consumer";
const QUEUE_ECHO: &str = "queue_echo";
const FUTEX_ECHO: &str = "futex_echo";
const SPIN_ECHO: &str = "spin_echo";

const ROLES: &[Role] = &[
    Role::new(QUEUE_PRODUCER, queue_producer),
    Role::new(QUEUE_CONSUMER, queue_consumer),
    Role::new(PIPE_PRODUCER, pipe_producer),
    Role::new(PIPE_CONSUMER, pipe_consumer),
    Role::new(IPC_PRODUCER, ipc_producer),
    Role::new(IPC_CONSUMER, ipc_consumer),
    Role::new(QUEUE_ECHO, queue_echo),
    Role::new(FUTEX_ECHO, futex_echo),
    Role::new(SPIN_ECHO, spin_echo),
];

fn queue_producer(ctx: &mut Ctx) -> RoleResult {
    let job: Job = ctx.arg()?;
    let queue: ByteQueue = ctx.handle("q")?;
    produce(ctx, job.len, queue.byte_sender()?)
}

fn queue_consumer(ctx: &mut Ctx) -> RoleResult {
    let job: Job = ctx.arg()?;
    let queue: ByteQueue = ctx.handle("q")?;
    consume(ctx, job.len, queue.byte_receiver()?)
}

fn pipe_producer(ctx: &mut Ctx) -> RoleResult {
    let job: Job = ctx.arg()?;
    let tx: Writer = ctx.handle("tx")?;
    produce(ctx, job.len, tx)
}

fn pipe_consumer(ctx: &mut Ctx) -> RoleResult {
    let job: Job = ctx.arg()?;
    let rx: Reader = ctx.handle("rx")?;
    consume(ctx, job.len, rx)
}

fn ipc_producer(ctx: &mut Ctx) -> RoleResult {
    let job: Job = ctx.arg()?;
    match ipc_end(&job)? {
        End::Tx(tx) => produce(ctx, job.len, tx),
        End::Rx(_) => Err("a producer given a receiver".into()),
    }
}

fn ipc_consumer(ctx: &mut Ctx) -> RoleResult {
    let job: Job = ctx.arg()?;
    match ipc_end(&job)? {
        End::Rx(rx) => consume(ctx, job.len, rx),
        End::Tx(_) => Err("a consumer given a sender".into()),
    }
}

/// Gets from `req` and puts on `rep`; busy-waits if its argument says so (a queue handle
/// does not carry `spin` through a handoff).
fn queue_echo(ctx: &mut Ctx) -> RoleResult {
    let spin: bool = ctx.arg()?;
    let pair = QueuePair::new(ctx.handle("rep")?, ctx.handle("req")?, spin)?;
    echoes(ctx, pair)
}

fn futex_echo(ctx: &mut Ctx) -> RoleResult {
    let pair = FutexPair {
        words: Raw::open(ctx, "mem")?,
        last: 0,
    };
    echoes(ctx, pair)
}

fn spin_echo(ctx: &mut Ctx) -> RoleResult {
    let pair = RawSpin {
        words: Raw::open(ctx, "mem")?,
        last: 0,
    };
    echoes(ctx, pair)
}

// The parent's side.

/// Starts role `role` of an ipc-channel row, sends it `end` through a bootstrap server
/// (waiting at most `PATIENCE` for it to connect), and waits until it is ready.
fn start_ipc(role: &'static str, len: usize, end: End) -> anyhow::Result<Worker> {
    let (server, name) = IpcOneShotServer::<IpcSender<End>>::new()?;
    let job = Job {
        len,
        server: Some(name),
    };
    let worker = Worker::launch(role, &job, [])?;
    // `accept` has no timeout: wait for it on another thread.
    let (done, accepted) = mpsc::channel();
    std::thread::spawn(move || done.send(server.accept()));
    let (_, to_child) = accepted
        .recv_timeout(PATIENCE)
        .with_context(|| format!("{role} never connected"))??;
    to_child.send(end)?;
    worker.ready()
}

/// A throughput row: producers share the messages of a batch, one consumer takes them
/// all.
struct Flow {
    producers: Vec<Worker>,
    consumer: Worker,
}

impl Flow {
    /// ipckit's queue from `producers` producers to one consumer, for messages of `len`
    /// bytes.
    fn queue(len: usize, producers: u64) -> anyhow::Result<Self> {
        let queue = ByteQueue::create(options(len))?;
        let job = Job { len, server: None };
        let handoff = || anyhow::Ok([("q", queue.try_clone()?.into_handoff())]);
        Ok(Flow {
            consumer: Worker::start(QUEUE_CONSUMER, &job, handoff()?)?,
            producers: (0..producers)
                .map(|_| Worker::start(QUEUE_PRODUCER, &job, handoff()?))
                .collect::<anyhow::Result<_>>()?,
        })
    }

    /// An ipckit pipe from one producer to one consumer.
    fn pipe(len: usize) -> anyhow::Result<Self> {
        let (rx, tx) = ipckit_pipes::pipe()?;
        let job = Job { len, server: None };
        Ok(Flow {
            consumer: Worker::start(PIPE_CONSUMER, &job, [("rx", rx.into_handoff())])?,
            producers: vec![Worker::start(
                PIPE_PRODUCER,
                &job,
                [("tx", tx.into_handoff())],
            )?],
        })
    }

    /// An ipc-channel byte channel from `producers` producers (a clone of the sender each)
    /// to one consumer.
    fn ipc_channel(len: usize, producers: u64) -> anyhow::Result<Self> {
        let (tx, rx) = ipc::bytes_channel()?;
        // Our own sender goes at the end: the consumer's receive fails once the producers'
        // are gone.
        Ok(Flow {
            consumer: start_ipc(IPC_CONSUMER, len, End::Rx(rx))?,
            producers: (0..producers)
                .map(|_| start_ipc(IPC_PRODUCER, len, End::Tx(tx.clone())))
                .collect::<anyhow::Result<_>>()?,
        })
    }
}

impl Rig for Flow {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
        let began = Instant::now();
        self.consumer.order(iters)?;
        let (k, mut expected) = (self.producers.len() as u64, 0u64);
        for (i, p) in (0..).zip(&mut self.producers) {
            let n = iters / k + u64::from(i < iters % k);
            // The sum of the stamps 0 to n - 1.
            expected = expected.wrapping_add(n * n.saturating_sub(1) / 2);
            p.order(n)?;
        }
        for p in &mut self.producers {
            p.report()?;
        }
        let sum = self.consumer.report()?;
        let took = began.elapsed();
        ensure!(sum == expected, "stamps summing to {sum}, not {expected}");
        Ok(took)
    }

    fn finish(self) -> anyhow::Result<()> {
        self.producers
            .into_iter()
            .chain([self.consumer])
            .try_for_each(Worker::finish)
    }
}

/// ipckit's request and reply queues, busy-waiting on both sides if `spin`, the echoing
/// worker pinned to CPU `theirs` if given.
fn queue_rig(spin: bool, theirs: Option<usize>) -> anyhow::Result<EchoRig<QueuePair>> {
    let opts = QueueOptions::new(16).max_message(SMALL);
    let (req, rep) = (ByteQueue::create(opts)?, ByteQueue::create(opts)?);
    let handles = [
        ("req", req.try_clone()?.into_handoff()),
        ("rep", rep.try_clone()?.into_handoff()),
    ];
    let worker = Worker::launch(QUEUE_ECHO, &spin, handles)?;
    if let Some(cpu) = theirs {
        worker.pin(cpu)?;
    }
    Ok(EchoRig::new(
        QueuePair::new(req, rep, spin)?,
        worker.ready()?,
    ))
}

/// The futex floor: two raw words ping-ponged with `FUTEX_WAIT` / `FUTEX_WAKE`.
fn futex_rig() -> anyhow::Result<EchoRig<FutexPair>> {
    let words = Raw::<Words<AtomicU32>>::create()?;
    let worker = Worker::start(FUTEX_ECHO, &(), [("mem", words.handoff()?)])?;
    Ok(EchoRig::new(FutexPair { words, last: 0 }, worker))
}

/// The spin floor: two raw atomics, the worker pinned to CPU `theirs`.
fn spin_rig((_, theirs): (usize, usize)) -> anyhow::Result<EchoRig<RawSpin>> {
    let words = Raw::<Words<AtomicU64>>::create()?;
    let worker = Worker::launch(SPIN_ECHO, &(), [("mem", words.handoff()?)])?;
    worker.pin(theirs)?;
    Ok(EchoRig::new(RawSpin { words, last: 0 }, worker.ready()?))
}

/// Prints whether `got` (row `ours`'s figure, or its ratio to `floor`, from the paired
/// rounds of `group`) meets `target`.
fn print_target(group: &str, what: &str, got: Option<f64>, target: &str, met: bool) {
    if let Some(got) = got {
        let verdict = if met { "met" } else { "missed" };
        println!("{group}: target {what} {target}: {got:.2} {verdict}");
    }
}

fn queue_1p1c(c: &mut Criterion) -> anyhow::Result<()> {
    let name = "queue_1p1c_64B";
    let mut g = Group::new(c, name, Figure::Rate);
    g.row("ipckit", || Flow::queue(SMALL, 1))?;
    g.row("ipc-channel", || Flow::ipc_channel(SMALL, 1))?;
    g.row("ipckit_pipe", || Flow::pipe(SMALL))?;
    g.python_row("python_mp_queue", "1to1", "queue")?;
    let peers = ["ipc-channel", "ipckit_pipe", "python_mp_queue"];
    if let Some(r) = g.finish(&[("ipckit", &[])], &peers) {
        let v = r.value("ipckit");
        print_target(name, "ipckit M/s", v, "≥ 10", v >= Some(10.0));
    }
    Ok(())
}

fn queue_4p1c(c: &mut Criterion) -> anyhow::Result<()> {
    let name = "queue_4p1c_64B";
    let mut g = Group::new(c, name, Figure::Rate);
    g.row("ipckit", || Flow::queue(SMALL, PRODUCERS))?;
    g.row("ipc-channel", || Flow::ipc_channel(SMALL, PRODUCERS))?;
    g.python_row("python_mp_queue", "4to1", "queue")?;
    if let Some(r) = g.finish(&[("ipckit", &[])], &["ipc-channel", "python_mp_queue"]) {
        let v = r.value("ipckit");
        print_target(name, "ipckit M/s", v, "≥ 5", v >= Some(5.0));
    }
    Ok(())
}

fn queue_rtt(c: &mut Criterion) -> anyhow::Result<()> {
    let name = "queue_rtt_64B";
    let mut g = Group::new(c, name, Figure::RoundTrip);
    g.row("ipckit", || queue_rig(false, None))?;
    g.pinned_row("ipckit_spin", |(_, theirs)| queue_rig(true, Some(theirs)))?;
    g.row("raw_futex", futex_rig)?;
    g.pinned_row("raw_spin", spin_rig)?;
    if let Some(r) = g.finish(
        &[("ipckit", &["raw_futex"]), ("ipckit_spin", &["raw_spin"])],
        &[],
    ) {
        for (ours, floor, max) in [
            ("ipckit", "raw_futex", 1.15),
            ("ipckit_spin", "raw_spin", 1.5),
        ] {
            let ratio = r.between(ours, floor).map(|s| s.median);
            let what = format!("{ours}/{floor}");
            print_target(
                name,
                &what,
                ratio,
                &format!("≤ {max}×"),
                ratio.is_some_and(|x| x <= max),
            );
        }
    }
    Ok(())
}

fn queue_sizes(c: &mut Criterion) -> anyhow::Result<()> {
    for (name, len) in [("queue_1p1c_4KiB", MID), ("queue_1p1c_1MiB", BIG)] {
        let mut g = Group::new(c, name, Figure::Bandwidth(len as u64));
        g.row("ipckit", || Flow::queue(len, 1))?;
        g.row("ipc-channel", || Flow::ipc_channel(len, 1))?;
        g.finish(&[("ipckit", &[])], &["ipc-channel"]);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    ipckit_core::enter(ROLES);
    let mut c = Criterion::default().configure_from_args();
    queue_1p1c(&mut c)?;
    queue_4p1c(&mut c)?;
    queue_rtt(&mut c)?;
    queue_sizes(&mut c)?;
    c.final_summary();
    Ok(())
}
