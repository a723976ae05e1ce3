//! One comparison of every mechanism: the same five workloads over everything that can
//! carry them, measured in paired rounds ([`ipckit_benches::Paired`]), written to
//! `docs/comparison.md` with one SVG chart per workload beside it.
//!
//! The workloads (64-byte messages unless said):
//!
//! - `rtt_64B`: round trips, the parent sends, a child echoes (µs per round trip);
//! - `bw_1MiB`: 1 MiB messages from the parent to a child (GB/s);
//! - `tput_1to1_64B`: messages from the parent to a child (M msg/s);
//! - `tput_4to1_64B`: four producer processes, the parent takes every message (M msg/s);
//! - `fanout_8_64B`: the parent sends every message to each of 8 consumer processes, over
//!   a link to each, or with one `Server::broadcast` (M messages sent per second, each to
//!   all 8).
//!
//! Each consumer checks the length of every message and reports the sum of their numbers,
//! which the parent checks, so a lost or doubled message fails the row (and the report
//! says so). The rows: ipckit's pipe, duplex, FIFO, Unix socket, TCP, shared-memory queue
//! (blocking, and busy-waiting with its two processes pinned to two CPUs, except in the
//! many-process workloads), POSIX message queue (not for 1 MiB, over Linux's default
//! `msgsize_max`), manager queue, rpc (round trip), Redis queue (when a `redis-server` is found: a
//! private one is started), ipc-channel, the raw system calls (pipe, socketpair, Unix
//! socket, two atomics spun on), and Python's `multiprocessing` equivalents
//! (`benches/python/compare.py`: `Pipe`, `Queue`, `Manager().Queue`,
//! `multiprocessing.connection` over a Unix socket, `xmlrpc` for the round trip), each in
//! processes that the bench starts and that answer the same batch orders, so they take
//! their turns in the same rounds.
//!
//! ```text
//! cargo bench -p ipckit-benches --bench compare              # docs/comparison.md, docs/*.svg
//! cargo bench -p ipckit-benches --bench compare -- --smoke   # a quick check, to a temp dir
//! cargo bench -p ipckit-benches --bench compare -- --out DIR rtt_64B   # some workloads
//! ```
//!
//! The full run takes a few minutes (100 rounds of ~10 ms batches per workload); `--smoke`
//! (or `IPCKIT_COMPARE_SMOKE=1`, or a run by `cargo test --benches`) runs 3 rounds of
//! ~1 ms and writes to a fresh temporary directory, so a check leaves the tree clean.
//! Every wait has a deadline (`PATIENCE`), except ipc-channel's receive, which has none;
//! a row whose processes fail is stopped and reported as not run, with the error, and the
//! other rows go on.

use std::{
    any::Any,
    fmt::Write as _,
    fs::File,
    io::{ErrorKind, Read, Write},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    sync::{atomic::AtomicU64, mpsc},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail, ensure};
use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcSender};
use ipckit_benches::{
    BIG, Broadcast, EchoRig, Fd, Figure, OneCpu, Outcome, PATIENCE, Paired, PythonRow, Raw,
    RawSpin, Report, Rig, Rounds, SMALL, Words, Worker, broadcast_client, echoes, pin, serve,
    two_cores,
};
use ipckit_core::{Ctx, Deadline, Handle, Handoff, RecvBytes, Role, RoleResult, SendBytes};
use ipckit_pipes::{Connection, Fifo, Reader, Writer};
use ipckit_queues::{MessageQueue, MqOptions, Queue, QueueOptions};
use ipckit_redis::{RedisQueue, RedisServer};
use ipckit_rpc::{Client, ConnectOptions, Listener, Method, Registry, serve_connection};
use nix::{
    fcntl::OFlag,
    sys::socket::{AddressFamily, SockFlag, SockType, socketpair},
    unistd::pipe2,
};
use serde::{Deserialize, Serialize};

/// The producers of `tput_4to1_64B`.
const PRODUCERS: usize = 4;
/// The consumers of `fanout_8_64B`.
const CONSUMERS: usize = 8;

// What carries the messages.

/// A mechanism that the parent and its child processes share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Mech {
    Pipe,
    Duplex,
    Fifo,
    Uds,
    Tcp,
    Shm,
    ShmSpin,
    Mqueue,
    Manager,
    Redis,
    IpcChannel,
    RawPipe,
    RawSocketpair,
    RawUds,
}

impl Mech {
    fn label(self) -> &'static str {
        match self {
            Mech::Pipe => "ipckit pipe",
            Mech::Duplex => "ipckit duplex",
            Mech::Fifo => "ipckit FIFO",
            Mech::Uds => "ipckit Unix socket",
            Mech::Tcp => "ipckit TCP",
            Mech::Shm => "ipckit shm queue",
            Mech::ShmSpin => "ipckit shm queue (spin)",
            Mech::Mqueue => "ipckit POSIX mqueue",
            Mech::Manager => "ipckit manager queue",
            Mech::Redis => "ipckit Redis queue",
            Mech::IpcChannel => "ipc-channel",
            Mech::RawPipe => "raw pipe",
            Mech::RawSocketpair => "raw socketpair",
            Mech::RawUds => "raw Unix socket",
        }
    }
}

/// What a child does with its ends on each order `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Part {
    /// Takes a message and sends it back, `n` times.
    Echo,
    /// Takes `n` messages and reports the sum of their numbers.
    Consume,
    /// Sends `n` messages numbered 0 to `n - 1`.
    Produce,
}

impl Part {
    /// Whether the child takes messages (the parent sends).
    fn takes(self) -> bool {
        matches!(self, Part::Echo | Part::Consume)
    }

    /// Whether the child sends messages (the parent takes).
    fn sends(self) -> bool {
        matches!(self, Part::Echo | Part::Produce)
    }
}

/// How a child opens its ends.
#[derive(Debug, Serialize, Deserialize)]
enum Open {
    /// ipckit pipes, handles `rx` and `tx`.
    Pipes,
    /// An ipckit duplex connection, handle `conn`.
    Duplex,
    /// FIFOs by path: the one it reads, the one it writes.
    Fifo(Option<PathBuf>, Option<PathBuf>),
    /// An ipckit socket address to connect to.
    Connect(String),
    /// Shared-memory queues, handles `rx` and `tx`; busy-waiting if `true`.
    Shm(bool),
    /// POSIX message queues, handles `rx` and `tx`.
    Mqueue,
    /// A manager's address and the names of the queues it reads and writes.
    Manager(String, Option<String>, Option<String>),
    /// A Redis URL and the names of the queues it reads and writes.
    Redis(String, Option<String>, Option<String>),
    /// The name of the parent's ipc-channel bootstrap server.
    IpcChannel(String),
    /// Raw descriptors, handles `rx` and `tx` (pipes, or a socket twice).
    RawFds,
    /// A Unix socket file to connect to with std.
    RawUds(PathBuf),
}

/// A child's argument.
#[derive(Debug, Serialize, Deserialize)]
struct Job {
    part: Part,
    len: usize,
    open: Open,
    /// The CPU a busy-waiting child pins itself to.
    cpu: Option<usize>,
}

/// A sending end.
trait Put {
    fn put(&mut self, msg: &[u8]) -> anyhow::Result<()>;
}

/// A receiving end: takes the next message (of `len` bytes on a raw stream) into `buf`.
trait Take {
    fn take(&mut self, buf: &mut Vec<u8>, len: usize) -> anyhow::Result<()>;
}

/// An ipckit end (or anything with its byte traits).
struct Ip<T>(T);

impl<T: SendBytes> Put for Ip<T> {
    fn put(&mut self, msg: &[u8]) -> anyhow::Result<()> {
        Ok(self.0.send_bytes(msg)?)
    }
}

impl<T: RecvBytes> Take for Ip<T> {
    fn take(&mut self, buf: &mut Vec<u8>, _: usize) -> anyhow::Result<()> {
        Ok(self
            .0
            .recv_bytes_into_deadline(buf, Deadline::after(PATIENCE))?)
    }
}

/// A message as a byte buffer to serde (`serialize_bytes`, as `serde_bytes` does): a plain
/// `Vec<u8>` would go to a manager as a list of integers, one value per byte.
struct ByteBuf(Vec<u8>);

impl Serialize for ByteBuf {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;

        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = ByteBuf;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }

            fn visit_bytes<E>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }

            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
        }

        d.deserialize_byte_buf(Visit)
    }
}

/// A manager's queue proxy, carrying each message as bytes ([`ByteBuf`]).
struct Proxy(ipckit_manager::Queue<ByteBuf>);

impl Put for Proxy {
    fn put(&mut self, msg: &[u8]) -> anyhow::Result<()> {
        Ok(self.0.put(&ByteBuf(msg.to_vec()))?)
    }
}

impl Take for Proxy {
    fn take(&mut self, buf: &mut Vec<u8>, _: usize) -> anyhow::Result<()> {
        *buf = self.0.get_timeout(PATIENCE)?.0;
        Ok(())
    }
}

impl Put for IpcBytesSender {
    fn put(&mut self, msg: &[u8]) -> anyhow::Result<()> {
        Ok(self.send(msg)?)
    }
}

impl Take for IpcBytesReceiver {
    fn take(&mut self, buf: &mut Vec<u8>, _: usize) -> anyhow::Result<()> {
        *buf = self.recv()?;
        Ok(())
    }
}

/// A raw stream: `write(2)` and `read(2)` of the bare bytes.
struct RawIo<S>(S);

impl<S: Write> Put for RawIo<S> {
    fn put(&mut self, msg: &[u8]) -> anyhow::Result<()> {
        Ok(self.0.write_all(msg)?)
    }
}

impl<S: Read> Take for RawIo<S> {
    fn take(&mut self, buf: &mut Vec<u8>, len: usize) -> anyhow::Result<()> {
        buf.resize(len, 0);
        Ok(self.0.read_exact(buf)?)
    }
}

/// One side's ends of a link, and what must live as long as they do.
#[derive(Default)]
struct Ends {
    tx: Option<Box<dyn Put>>,
    rx: Option<Box<dyn Take>>,
    keep: Vec<Box<dyn Any>>,
}

impl Ends {
    fn tx(&mut self) -> anyhow::Result<&mut Box<dyn Put>> {
        self.tx.as_mut().context("no sending end")
    }

    fn rx(&mut self) -> anyhow::Result<&mut Box<dyn Take>> {
        self.rx.as_mut().context("no receiving end")
    }
}

fn boxed_tx(t: impl Put + 'static) -> Option<Box<dyn Put>> {
    Some(Box::new(t))
}

fn boxed_rx(t: impl Take + 'static) -> Option<Box<dyn Take>> {
    Some(Box::new(t))
}

/// The message numbered `i`, `len` bytes.
fn stamp(msg: &mut [u8], i: u64) {
    msg[..8].copy_from_slice(&i.to_le_bytes());
}

fn number(msg: &[u8]) -> anyhow::Result<u64> {
    Ok(u64::from_le_bytes(
        msg.get(..8)
            .context("a message shorter than its number")?
            .try_into()?,
    ))
}

/// The sum of the numbers 0 to `n - 1`.
fn sum_below(n: u64) -> u64 {
    n * n.saturating_sub(1) / 2
}

// The children.

const CHILD: &str = "compare-child";
const SPIN_ECHO: &str = "compare-spin-echo";
const RPC_SERVE: &str = "compare-rpc-serve";

const BROADCAST_CLIENT: &str = "compare-broadcast-client";

const ROLES: &[Role] = &[
    Role::new(CHILD, child),
    Role::new(SPIN_ECHO, spin_echo),
    Role::new(RPC_SERVE, rpc_serve),
    Role::new(BROADCAST_CLIENT, broadcast_client),
];

/// The ends of what the parent handed over or named.
fn open(ctx: &mut Ctx, job: &Job) -> anyhow::Result<Ends> {
    let (takes, sends) = (job.part.takes(), job.part.sends());
    let mut e = Ends::default();
    match &job.open {
        Open::Pipes => {
            if takes {
                e.rx = boxed_rx(Ip(ctx.handle::<Reader>("rx")?));
            }
            if sends {
                e.tx = boxed_tx(Ip(ctx.handle::<Writer>("tx")?));
            }
        }
        Open::Duplex => {
            let (r, w) = ctx.handle::<Connection>("conn")?.split()?;
            (e.rx, e.tx) = (boxed_rx(Ip(r)), boxed_tx(Ip(w)));
        }
        Open::Fifo(rx, tx) => {
            // The parent opens its ends in the same order.
            if let Some(p) = rx {
                e.rx = boxed_rx(Ip(ipckit_pipes::open_read_timeout(p, PATIENCE)?));
            }
            if let Some(p) = tx {
                e.tx = boxed_tx(Ip(ipckit_pipes::open_write_timeout(p, PATIENCE)?));
            }
        }
        Open::Connect(addr) => {
            let opts = ipckit_sockets::ConnectOptions::new()
                .timeout(PATIENCE)
                .retry(true);
            let (r, w) = ipckit_sockets::connect_with(&addr.parse()?, &opts)?.split()?;
            (e.rx, e.tx) = (boxed_rx(Ip(r)), boxed_tx(Ip(w)));
        }
        Open::Shm(spin) => {
            if takes {
                let q: Queue<Vec<u8>> = ctx.handle("rx")?;
                e.rx = boxed_rx(Ip(q.spin(*spin).byte_receiver()?));
            }
            if sends {
                let q: Queue<Vec<u8>> = ctx.handle("tx")?;
                e.tx = boxed_tx(Ip(q.spin(*spin).byte_sender()?));
            }
        }
        Open::Mqueue => {
            if takes {
                let q: MessageQueue<Vec<u8>> = ctx.handle("rx")?;
                e.rx = boxed_rx(Ip(q.byte_receiver()?));
            }
            if sends {
                let q: MessageQueue<Vec<u8>> = ctx.handle("tx")?;
                e.tx = boxed_tx(Ip(q.byte_sender()?));
            }
        }
        Open::Manager(addr, rx, tx) => {
            let m = ipckit_manager::Manager::connect(&addr.parse()?, None)?;
            if let Some(name) = rx {
                e.rx = boxed_rx(Proxy(m.queue(name)?));
            }
            if let Some(name) = tx {
                e.tx = boxed_tx(Proxy(m.queue(name)?));
            }
            e.keep.push(Box::new(m));
        }
        Open::Redis(url, rx, tx) => {
            if let Some(name) = rx {
                let q: RedisQueue<Vec<u8>> = RedisQueue::open(url, name)?;
                e.rx = boxed_rx(Ip(q.byte_receiver()?));
                e.keep.push(Box::new(q));
            }
            if let Some(name) = tx {
                let q: RedisQueue<Vec<u8>> = RedisQueue::open(url, name)?;
                e.tx = boxed_tx(Ip(q.byte_sender()?));
                e.keep.push(Box::new(q));
            }
        }
        Open::IpcChannel(server) => {
            let (tx, rx) = ipc::channel::<IpcEnds>()?;
            IpcSender::<IpcSender<IpcEnds>>::connect(server.clone())?.send(tx)?;
            let (to, from) = rx.recv()?;
            e.tx = to.map(|t| Box::new(t) as Box<dyn Put>);
            e.rx = from.map(|r| Box::new(r) as Box<dyn Take>);
        }
        Open::RawFds => {
            if takes {
                e.rx = boxed_rx(RawIo(File::from(ctx.handle::<Fd>("rx")?.0)));
            }
            if sends {
                e.tx = boxed_tx(RawIo(File::from(ctx.handle::<Fd>("tx")?.0)));
            }
        }
        Open::RawUds(path) => {
            let s = UnixStream::connect(path)?;
            (e.rx, e.tx) = (boxed_rx(RawIo(s.try_clone()?)), boxed_tx(RawIo(s)));
        }
    }
    Ok(e)
}

/// The generic child: opens its ends, then serves its part on every order.
fn child(ctx: &mut Ctx) -> RoleResult {
    let job: Job = ctx.arg()?;
    if let Some(cpu) = job.cpu {
        pin(cpu)?;
    }
    let mut ends = open(ctx, &job)?;
    let mut msg = vec![0xa5; job.len];
    let mut buf = Vec::with_capacity(job.len);
    serve(ctx, |n| match job.part {
        Part::Echo => {
            for _ in 0..n {
                ends.rx()?.take(&mut buf, job.len)?;
                ends.tx()?.put(&buf)?;
            }
            Ok(n)
        }
        Part::Consume => {
            let mut sum = 0u64;
            for _ in 0..n {
                ends.rx()?.take(&mut buf, job.len)?;
                ensure!(buf.len() == job.len, "a message of {} bytes", buf.len());
                sum = sum.wrapping_add(number(&buf)?);
            }
            Ok(sum)
        }
        Part::Produce => {
            for i in 0..n {
                stamp(&mut msg, i);
                ends.tx()?.put(&msg)?;
            }
            Ok(n)
        }
    })
}

/// The raw spinning echo, pinned to the CPU in its argument.
fn spin_echo(ctx: &mut Ctx) -> RoleResult {
    let cpu: usize = ctx.arg()?;
    pin(cpu)?;
    let pair = RawSpin {
        words: Raw::open(ctx, "mem")?,
        last: 0,
    };
    echoes(ctx, pair)
}

const ECHO: Method<Vec<u8>, Vec<u8>> = Method::new("echo");

/// Serves `echo` on the one connection it accepts on the socket file in its argument.
fn rpc_serve(ctx: &mut Ctx) -> RoleResult {
    let path: PathBuf = ctx.arg()?;
    let listener = Listener::bind(&format!("unix://{}", path.display()).parse()?)?;
    let conn = listener.accept_timeout(PATIENCE)?;
    serve_connection(conn, &Registry::new().method(ECHO, Ok))?;
    Ok(())
}

/// A client of the parent's `Server`: for every window (its size `k` in 8 bytes, then `k`
/// messages numbered from 0), checks the numbers and acknowledges with one byte.
/// What an ipc-channel child gets from the parent: its sending and its receiving end.
type IpcEnds = (Option<IpcBytesSender>, Option<IpcBytesReceiver>);

// The parent's side of a link.

/// A socket file under a fresh temporary name, removed (if still there) on drop.
struct SockPath(PathBuf);

impl SockPath {
    fn new(what: &str) -> Self {
        SockPath(ipckit_core::temp_path(what))
    }
}

impl Drop for SockPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Accepts one client on `listener` within `PATIENCE`.
fn accept_raw(listener: &UnixListener) -> anyhow::Result<UnixStream> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + PATIENCE;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(s);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) => return Err(e).context("no client came"),
        }
    }
}

/// What the whole run shares: the Redis broker, and the CPUs of the busy-wait rows.
struct Env {
    redis: Result<RedisServer, String>,
    cpus: anyhow::Result<(usize, usize)>,
    python: Option<PathBuf>,
}

impl Env {
    /// What `python --version` says, or that there is none.
    fn python_version(&self) -> String {
        let Some(py) = &self.python else {
            return "not found (its rows were not run)".to_owned();
        };
        std::process::Command::new(py)
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| py.display().to_string())
    }

    /// What `redis-server --version` says, or why its rows were not run.
    fn redis_version(&self) -> String {
        if let Err(why) = &self.redis {
            return format!("{why} (its rows were not run)");
        }
        std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    }
}

/// A fresh queue name.
fn fresh(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{what}-{}-{n}", std::process::id())
}

/// Starts a child doing `part` over `mech` for messages of `len` bytes (pinned to CPU
/// `cpu`, if any), and makes the parent's ends of the link to it.
fn link(
    env: &Env,
    mech: Mech,
    part: Part,
    len: usize,
    cpu: Option<usize>,
) -> anyhow::Result<(Ends, Worker)> {
    let (to_child, from_child) = (part.takes(), part.sends());
    let mut e = Ends::default();
    let mut handles: Vec<(&'static str, Handoff)> = Vec::new();
    let job = |open| Job {
        part,
        len,
        open,
        cpu,
    };
    let worker = match mech {
        Mech::Pipe => {
            if to_child {
                let (r, w) = ipckit_pipes::pipe()?;
                handles.push(("rx", r.into_handoff()));
                e.tx = boxed_tx(Ip(w));
            }
            if from_child {
                let (r, w) = ipckit_pipes::pipe()?;
                handles.push(("tx", w.into_handoff()));
                e.rx = boxed_rx(Ip(r));
            }
            Worker::start(CHILD, &job(Open::Pipes), handles)?
        }
        Mech::Duplex => {
            let (mine, theirs) = ipckit_pipes::duplex()?;
            let (r, w) = mine.split()?;
            (e.rx, e.tx) = (boxed_rx(Ip(r)), boxed_tx(Ip(w)));
            Worker::start(CHILD, &job(Open::Duplex), [("conn", theirs.into_handoff())])?
        }
        Mech::Fifo => {
            let down = to_child.then(Fifo::create).transpose()?;
            let up = from_child.then(Fifo::create).transpose()?;
            let path = |f: &Option<Fifo>| f.as_ref().map(|f| f.path().to_owned());
            let open = Open::Fifo(path(&down), path(&up));
            let worker = Worker::launch(CHILD, &job(open), [])?;
            if let Some(f) = &down {
                e.tx = boxed_tx(Ip(ipckit_pipes::open_write_timeout(f.path(), PATIENCE)?));
            }
            if let Some(f) = &up {
                e.rx = boxed_rx(Ip(ipckit_pipes::open_read_timeout(f.path(), PATIENCE)?));
            }
            // Both sides have opened: the names can go.
            worker.ready()?
        }
        Mech::Uds | Mech::Tcp => {
            let path = SockPath::new("compare-sock");
            let addr = if mech == Mech::Uds {
                format!("unix://{}", path.0.display())
            } else {
                "tcp://127.0.0.1:0".to_owned()
            };
            let listener = ipckit_sockets::Listener::bind(&addr.parse()?)?;
            let open = Open::Connect(listener.address().to_string());
            let worker = Worker::launch(CHILD, &job(open), [])?;
            let (r, w) = listener.accept_timeout(PATIENCE)?.split()?;
            (e.rx, e.tx) = (boxed_rx(Ip(r)), boxed_tx(Ip(w)));
            e.keep.push(Box::new(path));
            worker.ready()?
        }
        Mech::Shm | Mech::ShmSpin => {
            let spin = mech == Mech::ShmSpin;
            let opts = QueueOptions::new(((1 << 20) / len).clamp(8, 1024)).max_message(len);
            if to_child {
                let q = Queue::<Vec<u8>>::create(opts)?;
                handles.push(("rx", q.try_clone()?.into_handoff()));
                e.tx = boxed_tx(Ip(q.spin(spin).byte_sender()?));
            }
            if from_child {
                let q = Queue::<Vec<u8>>::create(opts)?;
                handles.push(("tx", q.try_clone()?.into_handoff()));
                e.rx = boxed_rx(Ip(q.spin(spin).byte_receiver()?));
            }
            Worker::start(CHILD, &job(Open::Shm(spin)), handles)?
        }
        Mech::Mqueue => {
            let opts = MqOptions::new(10).max_message(len);
            if to_child {
                let q = MessageQueue::<Vec<u8>>::create(opts)?;
                handles.push(("rx", q.try_clone()?.into_handoff()));
                e.tx = boxed_tx(Ip(q.byte_sender()?));
                e.keep.push(Box::new(q));
            }
            if from_child {
                let q = MessageQueue::<Vec<u8>>::create(opts)?;
                handles.push(("tx", q.try_clone()?.into_handoff()));
                e.rx = boxed_rx(Ip(q.byte_receiver()?));
                e.keep.push(Box::new(q));
            }
            Worker::start(CHILD, &job(Open::Mqueue), handles)?
        }
        Mech::Manager => {
            let m = ipckit_manager::Manager::start()?;
            let down = to_child.then(|| fresh("down"));
            let up = from_child.then(|| fresh("up"));
            if let Some(name) = &down {
                e.tx = boxed_tx(Proxy(m.queue(name)?));
            }
            if let Some(name) = &up {
                e.rx = boxed_rx(Proxy(m.queue(name)?));
            }
            let open = Open::Manager(m.address().to_string(), down, up);
            e.keep.push(Box::new(m));
            Worker::start(CHILD, &job(open), [])?
        }
        Mech::Redis => {
            let url = match &env.redis {
                Ok(server) => server.url(),
                Err(why) => bail!("{why}"),
            };
            let (mut down, mut up) = (None, None);
            if to_child {
                let q: RedisQueue<Vec<u8>> = RedisQueue::create(&url, 1024)?;
                down = Some(q.name().to_owned());
                e.tx = boxed_tx(Ip(q.byte_sender()?));
                e.keep.push(Box::new(q));
            }
            if from_child {
                let q: RedisQueue<Vec<u8>> = RedisQueue::create(&url, 1024)?;
                up = Some(q.name().to_owned());
                e.rx = boxed_rx(Ip(q.byte_receiver()?));
                e.keep.push(Box::new(q));
            }
            Worker::start(CHILD, &job(Open::Redis(url, down, up)), [])?
        }
        Mech::IpcChannel => {
            let (mut theirs_tx, mut theirs_rx) = (None, None);
            if to_child {
                let (tx, rx) = ipc::bytes_channel()?;
                e.tx = boxed_tx(tx);
                theirs_rx = Some(rx);
            }
            if from_child {
                let (tx, rx) = ipc::bytes_channel()?;
                e.rx = boxed_rx(rx);
                theirs_tx = Some(tx);
            }
            start_ipc(job(Open::IpcChannel(String::new())), (theirs_tx, theirs_rx))?
        }
        Mech::RawPipe => {
            if to_child {
                let (r, w) = pipe2(OFlag::O_CLOEXEC)?;
                handles.push(("rx", Handoff::Fd(r)));
                e.tx = boxed_tx(RawIo(File::from(w)));
            }
            if from_child {
                let (r, w) = pipe2(OFlag::O_CLOEXEC)?;
                handles.push(("tx", Handoff::Fd(w)));
                e.rx = boxed_rx(RawIo(File::from(r)));
            }
            Worker::start(CHILD, &job(Open::RawFds), handles)?
        }
        Mech::RawSocketpair => {
            let (mine, theirs) = socketpair(
                AddressFamily::Unix,
                SockType::Stream,
                None,
                SockFlag::SOCK_CLOEXEC,
            )?;
            handles.push(("rx", Handoff::Fd(theirs.try_clone()?)));
            handles.push(("tx", Handoff::Fd(theirs)));
            e.rx = boxed_rx(RawIo(File::from(mine.try_clone()?)));
            e.tx = boxed_tx(RawIo(File::from(mine)));
            Worker::start(CHILD, &job(Open::RawFds), handles)?
        }
        Mech::RawUds => {
            let path = SockPath::new("compare-raw");
            let listener = UnixListener::bind(&path.0)?;
            let worker = Worker::launch(CHILD, &job(Open::RawUds(path.0.clone())), [])?;
            let s = accept_raw(&listener)?;
            (e.rx, e.tx) = (boxed_rx(RawIo(s.try_clone()?)), boxed_tx(RawIo(s)));
            e.keep.push(Box::new(path));
            worker.ready()?
        }
    };
    Ok((e, worker))
}

/// Starts an ipc-channel child (`job`, whose bootstrap name is filled in here) and sends
/// it `ends` through the bootstrap server, waiting at most `PATIENCE` for it to connect.
fn start_ipc(mut job: Job, ends: IpcEnds) -> anyhow::Result<Worker> {
    let (server, name) = IpcOneShotServer::<IpcSender<IpcEnds>>::new()?;
    job.open = Open::IpcChannel(name);
    let worker = Worker::launch(CHILD, &job, [])?;
    // `accept` has no timeout: wait for it on another thread.
    let (done, accepted) = mpsc::channel();
    std::thread::spawn(move || done.send(server.accept()));
    let (_, to_child) = accepted
        .recv_timeout(PATIENCE)
        .context("the ipc-channel child never connected")??;
    to_child.send(ends)?;
    worker.ready()
}

// The rigs: one per workload shape.

/// Round trips to an echoing child.
struct Rtt {
    ends: Ends,
    worker: Worker,
    msg: Vec<u8>,
    buf: Vec<u8>,
}

impl Rtt {
    fn start(env: &Env, mech: Mech) -> anyhow::Result<Self> {
        let (ends, worker) = link(env, mech, Part::Echo, SMALL, None)?;
        Ok(Rtt::new(ends, worker))
    }

    fn new(ends: Ends, worker: Worker) -> Self {
        Rtt {
            ends,
            worker,
            msg: vec![0xa5; SMALL],
            buf: Vec::with_capacity(SMALL),
        }
    }
}

impl Rig for Rtt {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
        self.worker.order(iters)?;
        let began = Instant::now();
        for i in 0..iters {
            stamp(&mut self.msg, i);
            self.ends.tx()?.put(&self.msg)?;
            self.ends.rx()?.take(&mut self.buf, SMALL)?;
            ensure!(
                self.buf.len() == SMALL && number(&self.buf)? == i,
                "a wrong echo"
            );
        }
        let took = began.elapsed();
        ensure!(self.worker.report()? == iters, "echoes missing");
        Ok(took)
    }

    fn finish(self) -> anyhow::Result<()> {
        drop(self.ends);
        self.worker.finish()
    }
}

/// Messages of `len` bytes from the parent to consuming children, each message to every
/// child (one child: a one-way stream).
struct Fan {
    links: Vec<(Ends, Worker)>,
    msg: Vec<u8>,
}

impl Fan {
    fn start(
        env: &Env,
        mech: Mech,
        len: usize,
        children: usize,
        cpu: Option<usize>,
    ) -> anyhow::Result<Self> {
        Ok(Fan {
            links: (0..children)
                .map(|_| link(env, mech, Part::Consume, len, cpu))
                .collect::<anyhow::Result<_>>()?,
            msg: vec![0xa5; len],
        })
    }
}

impl Rig for Fan {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
        let began = Instant::now();
        for (_, w) in &mut self.links {
            w.order(iters)?;
        }
        for i in 0..iters {
            stamp(&mut self.msg, i);
            for (ends, _) in &mut self.links {
                ends.tx()?.put(&self.msg)?;
            }
        }
        for (_, w) in &mut self.links {
            ensure!(w.report()? == sum_below(iters), "messages lost");
        }
        Ok(began.elapsed())
    }

    fn finish(self) -> anyhow::Result<()> {
        self.links.into_iter().try_for_each(|(ends, w)| {
            drop(ends);
            w.finish()
        })
    }
}

/// Producing children sharing one queue, and the parent taking every message.
struct Gather {
    rx: Box<dyn Take>,
    producers: Vec<Worker>,
    buf: Vec<u8>,
    _keep: Vec<Box<dyn Any>>,
}

impl Gather {
    fn start(env: &Env, mech: Mech, producers: usize) -> anyhow::Result<Self> {
        let job = |open| Job {
            part: Part::Produce,
            len: SMALL,
            open,
            cpu: None,
        };
        let mut keep: Vec<Box<dyn Any>> = Vec::new();
        let (rx, producers): (Box<dyn Take>, Vec<Worker>) = match mech {
            Mech::Shm => {
                let q = Queue::<Vec<u8>>::create(QueueOptions::new(1024).max_message(SMALL))?;
                let workers = (0..producers)
                    .map(|_| {
                        Worker::start(
                            CHILD,
                            &job(Open::Shm(false)),
                            [("tx", q.try_clone()?.into_handoff())],
                        )
                    })
                    .collect::<anyhow::Result<_>>()?;
                (Box::new(Ip(q.byte_receiver()?)), workers)
            }
            Mech::Mqueue => {
                let q = MessageQueue::<Vec<u8>>::create(MqOptions::new(10).max_message(SMALL))?;
                let workers = (0..producers)
                    .map(|_| {
                        Worker::start(
                            CHILD,
                            &job(Open::Mqueue),
                            [("tx", q.try_clone()?.into_handoff())],
                        )
                    })
                    .collect::<anyhow::Result<_>>()?;
                let rx = Box::new(Ip(q.byte_receiver()?));
                keep.push(Box::new(q));
                (rx, workers)
            }
            Mech::Manager => {
                let m = ipckit_manager::Manager::start()?;
                let name = fresh("gather");
                let rx = Box::new(Proxy(m.queue(&name)?));
                let open = || Open::Manager(m.address().to_string(), None, Some(name.clone()));
                let workers = (0..producers)
                    .map(|_| Worker::start(CHILD, &job(open()), []))
                    .collect::<anyhow::Result<_>>()?;
                keep.push(Box::new(m));
                (rx, workers)
            }
            Mech::Redis => {
                let url = match &env.redis {
                    Ok(server) => server.url(),
                    Err(why) => bail!("{why}"),
                };
                let q: RedisQueue<Vec<u8>> = RedisQueue::create(&url, 1024)?;
                let open = || Open::Redis(url.clone(), None, Some(q.name().to_owned()));
                let workers = (0..producers)
                    .map(|_| Worker::start(CHILD, &job(open()), []))
                    .collect::<anyhow::Result<_>>()?;
                let rx = Box::new(Ip(q.byte_receiver()?));
                keep.push(Box::new(q));
                (rx, workers)
            }
            Mech::IpcChannel => {
                let (tx, rx) = ipc::bytes_channel()?;
                let workers = (0..producers)
                    .map(|_| {
                        start_ipc(
                            job(Open::IpcChannel(String::new())),
                            (Some(tx.clone()), None),
                        )
                    })
                    .collect::<anyhow::Result<_>>()?;
                (Box::new(rx), workers)
            }
            other => bail!("{} has no many-to-one form here", other.label()),
        };
        Ok(Gather {
            rx,
            producers,
            buf: Vec::with_capacity(SMALL),
            _keep: keep,
        })
    }
}

impl Rig for Gather {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
        let k = self.producers.len() as u64;
        let began = Instant::now();
        let mut expected = 0u64;
        for (i, p) in (0..).zip(&mut self.producers) {
            let n = iters / k + u64::from(i < iters % k);
            expected = expected.wrapping_add(sum_below(n));
            p.order(n)?;
        }
        let mut sum = 0u64;
        for _ in 0..iters {
            self.rx.take(&mut self.buf, SMALL)?;
            ensure!(
                self.buf.len() == SMALL,
                "a message of {} bytes",
                self.buf.len()
            );
            sum = sum.wrapping_add(number(&self.buf)?);
        }
        for p in &mut self.producers {
            p.report()?;
        }
        let took = began.elapsed();
        ensure!(sum == expected, "numbers summing to {sum}, not {expected}");
        Ok(took)
    }

    fn finish(self) -> anyhow::Result<()> {
        self.producers.into_iter().try_for_each(Worker::finish)
    }
}

/// The raw spinning round trip over two atomics, each side pinned to its CPU (the parent's
/// by the paired group, for its batches).
fn spin_rtt(cpus: (usize, usize)) -> anyhow::Result<EchoRig<RawSpin>> {
    let words = Raw::<Words<AtomicU64>>::create()?;
    let worker = Worker::start(SPIN_ECHO, &cpus.1, [("mem", words.handoff()?)])?;
    Ok(EchoRig::new(RawSpin { words, last: 0 }, worker))
}

/// ipckit rpc: `echo` of 64 bytes on a child's server over a Unix socket.
struct RpcRtt {
    client: Option<Client>,
    child: ipckit_core::Child,
    msg: Vec<u8>,
    _path: SockPath,
}

impl RpcRtt {
    fn start() -> anyhow::Result<Self> {
        let path = SockPath::new("compare-rpc");
        let child = ipckit_benches::spawn(RPC_SERVE, &path.0, [])?;
        let addr = format!("unix://{}", path.0.display());
        let client =
            Client::connect_with(&addr, &ConnectOptions::new().retry(true).timeout(PATIENCE))?;
        Ok(RpcRtt {
            client: Some(client),
            child,
            msg: vec![0xa5; SMALL],
            _path: path,
        })
    }
}

impl Rig for RpcRtt {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
        let client = self.client.as_ref().context("no client")?;
        let began = Instant::now();
        for _ in 0..iters {
            ensure!(client.call(ECHO, &self.msg)? == self.msg, "a wrong echo");
        }
        Ok(began.elapsed())
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.client = None;
        let status = self.child.join_timeout(PATIENCE)?;
        ensure!(status.success(), "the rpc server ended with {status}");
        Ok(())
    }
}

// The workloads.

/// A workload: its name, what it shows, its figure, and how its rows start.
struct Workload {
    name: &'static str,
    title: &'static str,
    figure: Figure,
    /// The argument of `compare.py`.
    py: &'static str,
    /// Python's mechanisms that carry it.
    py_mechs: &'static [(&'static str, &'static str)],
}

const PY_PIPE: (&str, &str) = ("Python mp.Pipe", "pipe");
const PY_QUEUE: (&str, &str) = ("Python mp.Queue", "queue");
const PY_MANAGER: (&str, &str) = ("Python Manager().Queue", "manager");
const PY_CONN: (&str, &str) = ("Python mp.connection (Unix socket)", "connection");
const PY_XMLRPC: (&str, &str) = ("Python xmlrpc", "xmlrpc");

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "rtt_64B",
        title: "64-byte round trip",
        figure: Figure::RoundTrip,
        py: "rtt",
        py_mechs: &[PY_PIPE, PY_QUEUE, PY_MANAGER, PY_CONN, PY_XMLRPC],
    },
    Workload {
        name: "bw_1MiB",
        title: "1 MiB messages, one way",
        figure: Figure::Bandwidth(BIG as u64),
        py: "bw",
        py_mechs: &[PY_PIPE, PY_QUEUE, PY_MANAGER, PY_CONN],
    },
    Workload {
        name: "tput_1to1_64B",
        title: "64-byte messages, one producer to one consumer",
        figure: Figure::Rate,
        py: "1to1",
        py_mechs: &[PY_PIPE, PY_QUEUE, PY_MANAGER, PY_CONN],
    },
    Workload {
        name: "tput_4to1_64B",
        title: "64-byte messages, four producers to one consumer",
        figure: Figure::Rate,
        py: "4to1",
        py_mechs: &[PY_QUEUE, PY_MANAGER],
    },
    Workload {
        name: "fanout_8_64B",
        title: "64-byte messages, each to 8 consumers",
        figure: Figure::Rate,
        py: "fanout",
        py_mechs: &[PY_PIPE, PY_QUEUE, PY_MANAGER, PY_CONN],
    },
];

/// The mechanisms that carry one message stream between two processes.
const STREAMS: &[Mech] = &[
    Mech::Pipe,
    Mech::Duplex,
    Mech::Fifo,
    Mech::Uds,
    Mech::Tcp,
    Mech::Shm,
    Mech::Mqueue,
    Mech::Manager,
    Mech::Redis,
    Mech::IpcChannel,
    Mech::RawPipe,
    Mech::RawSocketpair,
    Mech::RawUds,
];

/// Whether `mech` carries messages of `len` bytes here.
fn carries(mech: Mech, len: usize) -> Result<(), String> {
    if mech == Mech::Mqueue && len > 8192 {
        return Err("messages over 8 KiB exceed the default msgsize_max".to_owned());
    }
    Ok(())
}

fn rows<'e>(env: &'e Env, w: &Workload) -> Paired<'e> {
    let mut g = Paired::new(w.name, w.figure);
    let redis_out = |g: &mut Paired, m: Mech| {
        if let (Mech::Redis, Err(why)) = (m, &env.redis) {
            g.skip(m.label(), why);
            true
        } else {
            false
        }
    };
    match w.name {
        "rtt_64B" => {
            for &m in STREAMS {
                if !redis_out(&mut g, m) {
                    g.row(m.label(), move || Rtt::start(env, m));
                }
            }
            g.pinned_row(Mech::ShmSpin.label(), &env.cpus, move |cpus| {
                let (ends, worker) = link(env, Mech::ShmSpin, Part::Echo, SMALL, Some(cpus.1))?;
                Ok(Rtt::new(ends, worker))
            });
            g.row("ipckit rpc", RpcRtt::start);
            g.pinned_row("raw spin (two atomics)", &env.cpus, spin_rtt);
        }
        "bw_1MiB" | "tput_1to1_64B" | "fanout_8_64B" => {
            let len = if w.name == "bw_1MiB" { BIG } else { SMALL };
            let children = if w.name == "fanout_8_64B" {
                CONSUMERS
            } else {
                1
            };
            for &m in STREAMS {
                if redis_out(&mut g, m) {
                    continue;
                }
                match carries(m, len) {
                    Ok(()) => g.row(m.label(), move || Fan::start(env, m, len, children, None)),
                    Err(why) => g.skip(m.label(), &why),
                }
            }
            if children == 1 {
                g.pinned_row(Mech::ShmSpin.label(), &env.cpus, move |cpus| {
                    Fan::start(env, Mech::ShmSpin, len, 1, Some(cpus.1))
                });
            } else {
                g.row("ipckit socket Server (broadcast)", move || {
                    Broadcast::start(BROADCAST_CLIENT, CONSUMERS)
                });
            }
        }
        "tput_4to1_64B" => {
            for m in [
                Mech::Shm,
                Mech::Mqueue,
                Mech::Manager,
                Mech::Redis,
                Mech::IpcChannel,
            ] {
                if !redis_out(&mut g, m) {
                    g.row(m.label(), move || Gather::start(env, m, PRODUCERS));
                }
            }
        }
        other => g.skip(other, "no such workload"),
    }
    let py_arg = w.py;
    for &(label, mech) in w.py_mechs {
        match &env.python {
            Some(py) => g.row(label, move || PythonRow::start(py, py_arg, mech)),
            None => g.skip(label, "no python3 found"),
        }
    }
    g
}

// The run and its report.

/// What the command line asks.
struct Args {
    smoke: bool,
    out: Option<PathBuf>,
    only: Vec<String>,
}

impl Args {
    /// The arguments. Without `--bench` (which `cargo bench` passes, and `cargo test
    /// --benches` does not) or with criterion's `--test`, the run is a smoke round, so a
    /// test run never writes to `docs/`. Other options (a test harness's) are ignored.
    fn parse() -> anyhow::Result<Self> {
        let mut args = Args {
            smoke: std::env::var_os("IPCKIT_COMPARE_SMOKE").is_some_and(|v| v == "1"),
            out: None,
            only: Vec::new(),
        };
        let mut benching = false;
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            match a.as_str() {
                "--smoke" | "--test" => args.smoke = true,
                "--out" => args.out = Some(it.next().context("--out needs a directory")?.into()),
                "--bench" => benching = true,
                s if s.starts_with('-') => println!("ignored: {s}"),
                s => args.only.push(s.to_owned()),
            }
        }
        args.smoke |= !benching;
        Ok(args)
    }
}

/// The date and time now, as `YYYY-MM-DD HH:MM UTC`.
fn now_utc() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}

/// The machine: CPU model, cores, kernel.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, Linux {}", kernel.trim())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The unit of a figure's values.
fn unit(f: Figure) -> &'static str {
    match f {
        Figure::RoundTrip => "µs per round trip",
        Figure::Bandwidth(_) => "GB/s",
        Figure::Rate => "M msg/s",
        Figure::Operation => "ns per operation",
    }
}

/// Whether more of the figure is better.
fn higher_is_better(f: Figure) -> bool {
    matches!(f, Figure::Bandwidth(_) | Figure::Rate)
}

fn fmt_value(v: f64) -> String {
    ipckit_benches::three_digits(v)
}

/// `docs/comparison.md`: the run's header, then a table per workload.
fn markdown(reports: &[(&Workload, Report)], env: &Env, command: &str, took: Duration) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Every mechanism, one comparison\n");
    let _ = writeln!(s, "- command: `{command}` ({:.0} s)", took.as_secs_f64());
    let _ = writeln!(s, "- date: {}", now_utc());
    let _ = writeln!(s, "- machine: {}; {} CPUs", machine(), cores());
    let _ = writeln!(s, "- Python: {}", env.python_version());
    let _ = writeln!(s, "- Redis: {}\n", env.redis_version());
    let _ = writeln!(
        s,
        "Each table's rows ran in paired rounds: every round runs one batch of a few \
         milliseconds of every row, in an order rotated each round; the rounds run in {} \
         blocks, each against freshly started processes, so that the spread shows what \
         differs from one start to the next. A row's *× fastest* is the median over the rounds of its \
         time per iteration (round trip or message) divided by the fastest row's in the same \
         round: 1.00× is the fastest, 2.00× takes twice as long; IQR and range are those of \
         the per-round ratios, the median figure that of the row's own rounds. Busy-wait \
         rows pin their two processes to two CPUs; in the round-trip table every other \
         process runs on one CPU, so that no row pays the wake-up of an idle CPU that \
         another is spared (see docs/benchmarks.md). Python's rows run \
         `benches/python/compare.py`, in the same rounds. Figures from a loaded machine move \
         more than their ratios: regenerate on a quiet one.\n",
        Rounds::FULL.blocks
    );
    for (w, r) in reports {
        let better = if higher_is_better(w.figure) {
            "higher"
        } else {
            "lower"
        };
        let _ = writeln!(s, "## {} (`{}`)\n", w.title, w.name);
        let _ = writeln!(
            s,
            "![{}]({}.svg)\n\nMedian in {} ({better} is better), {} rounds.\n",
            w.title,
            w.name,
            unit(w.figure),
            r.rounds
        );
        let _ = writeln!(s, "| mechanism | median | × fastest | IQR | range | note |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---|");
        for row in &r.rows {
            let note = row.note.clone().unwrap_or_default();
            let _ = match &row.outcome {
                Outcome::Measured { value, ratio, .. } => writeln!(
                    s,
                    "| {} | {} | {:.2}× | {:.2}–{:.2} | {:.2}–{:.2} | {note} |",
                    row.name,
                    fmt_value(*value),
                    ratio.median,
                    ratio.q1,
                    ratio.q3,
                    ratio.min,
                    ratio.max,
                ),
                Outcome::NotRun(why) => writeln!(
                    s,
                    "| {} | – | – | – | – | not run: {} |",
                    row.name,
                    why.replace('|', "/").replace('\n', " ")
                ),
            };
        }
        s.push('\n');
    }
    s
}

/// A horizontal bar chart of the measured rows' medians on a log scale, the fastest on
/// top, with the per-round ratio's IQR drawn as a whisker (scaled to the figure). Colours:
/// ipckit blue, raw system calls grey, Python orange, other libraries green.
fn chart(path: &Path, w: &Workload, r: &Report) -> anyhow::Result<()> {
    use plotters::prelude::*;

    let bars: Vec<(&str, f64, f64, f64)> = r
        .rows
        .iter()
        .filter_map(|row| match row.outcome {
            Outcome::Measured { value, ratio, .. } => {
                // The ratio is of times: a figure that grows with speed scales inversely.
                let (lo, hi) = if higher_is_better(w.figure) {
                    (
                        value * ratio.median / ratio.q3,
                        value * ratio.median / ratio.q1,
                    )
                } else {
                    (
                        value * ratio.q1 / ratio.median,
                        value * ratio.q3 / ratio.median,
                    )
                };
                Some((row.name.as_str(), value, lo, hi))
            }
            Outcome::NotRun(_) => None,
        })
        .collect();
    ensure!(!bars.is_empty(), "no row measured");
    let n = bars.len();
    // A log scale: the figures span several orders of magnitude.
    let max = bars.iter().map(|b| b.3.max(b.1)).fold(0.0, f64::max) * 1.5;
    let min = bars
        .iter()
        .map(|b| b.2.min(b.1))
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min)
        / 1.5;
    ensure!(min.is_finite() && max > min, "no positive figure");
    let height = 80 + 26 * n as u32;
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let caption = format!("{} — {} (median)", w.title, unit(w.figure));
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(260)
        .build_cartesian_2d((min..max).log_scale(), (0..n).into_segmented())?;
    let names: Vec<String> = bars.iter().map(|b| b.0.to_owned()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .label_style(("sans-serif", 14))
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            // Row 0 at the top.
            SegmentValue::CenterOf(i) => n
                .checked_sub(i + 1)
                .and_then(|k| names.get(k))
                .cloned()
                .unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc(format!("{} (log scale)", unit(w.figure)))
        .draw()?;
    let colour = |name: &str| {
        if name.starts_with("ipckit") {
            RGBColor(31, 119, 180)
        } else if name.starts_with("raw") {
            RGBColor(127, 127, 127)
        } else if name.starts_with("Python") {
            RGBColor(255, 127, 14)
        } else {
            RGBColor(44, 160, 44)
        }
    };
    chart.draw_series(bars.iter().enumerate().map(|(k, b)| {
        let y = n - 1 - k;
        let mut bar = Rectangle::new(
            [
                (min, SegmentValue::Exact(y)),
                (b.1, SegmentValue::Exact(y + 1)),
            ],
            colour(b.0).filled(),
        );
        bar.set_margin(3, 3, 0, 0);
        bar
    }))?;
    chart.draw_series(bars.iter().enumerate().map(|(k, b)| {
        let y = n - 1 - k;
        let at = SegmentValue::CenterOf(y);
        PathElement::new(vec![(b.2, at.clone()), (b.3, at)], BLACK.stroke_width(2))
    }))?;
    root.present()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    ipckit_core::enter(ROLES);
    let args = Args::parse()?;
    let began = Instant::now();
    let rounds = if args.smoke {
        Rounds::SMOKE
    } else {
        Rounds::FULL
    };
    let out = match (&args.out, args.smoke) {
        (Some(dir), _) => dir.clone(),
        (None, true) => ipckit_core::temp_path("compare"),
        (None, false) => Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs"),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let env = Env {
        redis: RedisServer::start()
            .map_err(|e| format!("redis-server not found or not starting ({e})")),
        cpus: two_cores(),
        python: ipckit_testkit::find_python(8..=20),
    };
    if let Err(e) = &env.cpus {
        println!("busy-wait rows: {e:#}");
    }
    let mut reports = Vec::new();
    for w in WORKLOADS {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == w.name) {
            continue;
        }
        // Blocking round trips on one CPU, as every round-trip group (see `OneCpu`).
        let one_cpu = (w.figure == Figure::RoundTrip)
            .then(OneCpu::pin)
            .transpose()?;
        let mut g = rows(&env, w);
        g.run(rounds);
        let report = g.finish();
        drop(one_cpu);
        report.print();
        reports.push((w, report));
    }
    let mut command = "cargo bench -p ipckit-benches --bench compare".to_owned();
    if args.smoke {
        command.push_str(" -- --smoke");
    }
    let md = markdown(&reports, &env, &command, began.elapsed());
    let md_path = out.join("comparison.md");
    std::fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;
    for (w, r) in &reports {
        let svg = out.join(format!("{}.svg", w.name));
        if let Err(e) = chart(&svg, w, r) {
            println!("{}: no chart: {e:#}", w.name);
        }
    }
    println!(
        "wrote {} and its charts in {:.0} s",
        md_path.display(),
        began.elapsed().as_secs_f64()
    );
    if args.smoke && args.out.is_none() {
        // A smoke round's output is only a check that it could be written.
        let charts = reports
            .iter()
            .filter(|(w, _)| out.join(format!("{}.svg", w.name)).exists())
            .count();
        std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
        ensure!(
            charts == reports.len(),
            "{charts} charts of {} were written",
            reports.len()
        );
        println!("smoke round: the table and {charts} charts were written, then removed");
    }
    Ok(())
}
