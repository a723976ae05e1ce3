//! Pipe workloads of `docs/benchmarks.md`: `pipe_rtt_64B`, `pipe_bw_1MiB` and
//! `fifo_rtt_64B`.
//!
//! Each row runs across two processes: the bench starts a role of its own executable once
//! per row (on the row's first batch), times batches of iterations against it with
//! criterion's `iter_custom`, and closes the link at the end, upon which the child
//! returns. Every workload runs for ipckit, for its floor (the raw system calls doing the
//! same work) and, where one exists, for ipc-channel; a line of ratios follows each group.
//!
//! ```text
//! cargo bench -p ipckit-benches --bench pipes -- --warm-up-time 1 --measurement-time 3
//! ```

use std::{
    fs::{File, OpenOptions},
    io::{Read, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput, measurement::WallTime};
use ipc_channel::{
    IpcError,
    ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcSender},
};
use ipckit_benches::{Fd, Figure, print_ratios, record, spawn};
use ipckit_core::{Child, Ctx, Handle, Handoff, Role, RoleResult};
use ipckit_pipes::{Connection, Fifo, PipeReader, PipeWriter, RecvBytes, SendBytes};
use nix::{
    fcntl::{FcntlArg, OFlag, fcntl},
    sys::{
        socket::{AddressFamily, SockFlag, SockType, socketpair},
        stat::Mode,
    },
    unistd::{mkfifo, pipe2},
};
use serde::{Deserialize, Serialize};

/// The message of the round-trip workloads.
const SMALL: usize = 64;
/// The message of the bandwidth workload.
const BIG: usize = 1 << 20;
/// How long either side waits for the other to open a FIFO, or to end.
const PATIENCE: Duration = Duration::from_secs(30);

/// One side's end of a link between the two processes, whatever carries it: sends
/// messages one way and receives them the other.
trait Link {
    /// Sends one message.
    fn send(&mut self, msg: &[u8]) -> anyhow::Result<()>;

    /// Receives one message into `buf`: `len` bytes on a raw stream, whatever came on a
    /// framed one. `Ok(false)` when the peer has closed the link.
    fn recv(&mut self, buf: &mut Vec<u8>, len: usize) -> anyhow::Result<bool>;
}

/// An ipckit receive, with the peer's leaving turned into `Ok(false)`.
fn framed(r: ipckit_pipes::Result<()>) -> anyhow::Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(ipckit_pipes::Error::Disconnected) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

impl Link for Connection {
    fn send(&mut self, msg: &[u8]) -> anyhow::Result<()> {
        Ok(self.send_bytes(msg)?)
    }

    fn recv(&mut self, buf: &mut Vec<u8>, _len: usize) -> anyhow::Result<bool> {
        framed(self.recv_bytes_into(buf))
    }
}

impl Link for (PipeWriter, PipeReader) {
    fn send(&mut self, msg: &[u8]) -> anyhow::Result<()> {
        Ok(self.0.send_bytes(msg)?)
    }

    fn recv(&mut self, buf: &mut Vec<u8>, _len: usize) -> anyhow::Result<bool> {
        framed(self.1.recv_bytes_into(buf))
    }
}

/// Raw descriptors (a socket twice, two pipes, two FIFOs): plain `write(2)` and `read(2)`.
impl Link for (File, File) {
    fn send(&mut self, msg: &[u8]) -> anyhow::Result<()> {
        Ok(self.0.write_all(msg)?)
    }

    fn recv(&mut self, buf: &mut Vec<u8>, len: usize) -> anyhow::Result<bool> {
        buf.resize(len, 0);
        let n = self.1.read(buf)?;
        if n == 0 {
            return Ok(false);
        }
        self.1.read_exact(&mut buf[n..])?;
        Ok(true)
    }
}

/// ipc-channel's byte channels, one each way.
type IpcLink = (IpcBytesSender, IpcBytesReceiver);

impl Link for IpcLink {
    fn send(&mut self, msg: &[u8]) -> anyhow::Result<()> {
        Ok(self.0.send(msg)?)
    }

    fn recv(&mut self, buf: &mut Vec<u8>, _len: usize) -> anyhow::Result<bool> {
        match self.1.recv() {
            Ok(msg) => {
                *buf = msg;
                Ok(true)
            }
            Err(IpcError::Disconnected) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// What the two processes do over their link.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum Work {
    /// Round trips: the parent sends a `SMALL`-byte message, the child sends it back.
    Echo,
    /// The parent announces a batch of `n` (an 8-byte message), streams `n` messages of
    /// `BIG` bytes, and the child acknowledges the batch with one byte.
    Stream,
}

impl Work {
    /// The size of the parent's message.
    fn len(self) -> usize {
        match self {
            Work::Echo => SMALL,
            Work::Stream => BIG,
        }
    }

    /// The parent's side: `iters` iterations over `link`, sending `msg`, receiving into
    /// `buf`.
    fn drive(
        self,
        link: &mut impl Link,
        msg: &[u8],
        buf: &mut Vec<u8>,
        iters: u64,
    ) -> anyhow::Result<()> {
        match self {
            Work::Echo => {
                for _ in 0..iters {
                    link.send(msg)?;
                    ensure!(
                        link.recv(buf, SMALL)? && buf.len() == SMALL,
                        "no echo from the child"
                    );
                }
            }
            Work::Stream => {
                link.send(&iters.to_le_bytes())?;
                for _ in 0..iters {
                    link.send(msg)?;
                }
                ensure!(link.recv(buf, 1)?, "no acknowledgement from the child");
            }
        }
        Ok(())
    }

    /// The child's side, until the parent closes the link.
    fn serve(self, mut link: impl Link) -> anyhow::Result<()> {
        let (mut head, mut buf) = (Vec::new(), Vec::new());
        match self {
            Work::Echo => {
                while link.recv(&mut buf, SMALL)? {
                    link.send(&buf)?;
                }
            }
            Work::Stream => {
                while link.recv(&mut head, 8)? {
                    let n = u64::from_le_bytes(head.as_slice().try_into().context("batch size")?);
                    for _ in 0..n {
                        ensure!(
                            link.recv(&mut buf, BIG)? && buf.len() == BIG,
                            "the stream broke off"
                        );
                    }
                    link.send(&[1])?;
                }
            }
        }
        Ok(())
    }
}

/// A child role's argument: the work, and the names of the objects it opens by name (the
/// FIFOs to the child and to the parent, or ipc-channel's bootstrap server).
#[derive(Debug, Serialize, Deserialize)]
struct Job {
    work: Work,
    names: Vec<String>,
}

impl Job {
    fn new(work: Work, names: &[&Path]) -> anyhow::Result<Self> {
        let names = names
            .iter()
            .map(|p| {
                p.to_str()
                    .map(str::to_owned)
                    .context("a temporary path that is not UTF-8")
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Job { work, names })
    }
}

// The child roles: each opens its end of the link and serves the work.

const IPCKIT_DUPLEX: &str = "ipckit_duplex";
const IPCKIT_PIPES: &str = "ipckit_pipes";
const IPCKIT_FIFO: &str = "ipckit_fifo";
const RAW_FDS: &str = "raw_fds";
const RAW_FIFO: &str = "raw_fifo";
const IPC_CHANNEL: &str = "ipc_channel";

const ROLES: &[Role] = &[
    Role::new(IPCKIT_DUPLEX, serve_ipckit_duplex),
    Role::new(IPCKIT_PIPES, serve_ipckit_pipes),
    Role::new(IPCKIT_FIFO, serve_ipckit_fifo),
    Role::new(RAW_FDS, serve_raw_fds),
    Role::new(RAW_FIFO, serve_raw_fifo),
    Role::new(IPC_CHANNEL, serve_ipc_channel),
];

fn serve_ipckit_duplex(ctx: &mut Ctx) -> RoleResult {
    let job: Job = ctx.arg()?;
    let link: Connection = ctx.handle("link")?;
    Ok(job.work.serve(link)?)
}

fn serve_ipckit_pipes(ctx: &mut Ctx) -> RoleResult {
    let job: Job = ctx.arg()?;
    let link: (PipeWriter, PipeReader) = (ctx.handle("tx")?, ctx.handle("rx")?);
    Ok(job.work.serve(link)?)
}

fn serve_ipckit_fifo(ctx: &mut Ctx) -> RoleResult {
    let job: Job = ctx.arg()?;
    let [to_child, to_parent] = job.names.as_slice() else {
        return Err("two FIFO paths expected".into());
    };
    // The same order as the parent's opens, which wait for these.
    let rx = ipckit_pipes::open_read_timeout(to_child, PATIENCE)?;
    let tx = ipckit_pipes::open_write_timeout(to_parent, PATIENCE)?;
    Ok(job.work.serve((tx, rx))?)
}

fn serve_raw_fds(ctx: &mut Ctx) -> RoleResult {
    let job: Job = ctx.arg()?;
    let (tx, rx) = (ctx.handle::<Fd>("tx")?.0, ctx.handle::<Fd>("rx")?.0);
    Ok(job.work.serve((File::from(tx), File::from(rx)))?)
}

fn serve_raw_fifo(ctx: &mut Ctx) -> RoleResult {
    let job: Job = ctx.arg()?;
    let [to_child, to_parent] = job.names.as_slice() else {
        return Err("two FIFO paths expected".into());
    };
    let rx = File::open(to_child)?;
    let tx = OpenOptions::new().write(true).open(to_parent)?;
    Ok(job.work.serve((tx, rx))?)
}

fn serve_ipc_channel(ctx: &mut Ctx) -> RoleResult {
    let job: Job = ctx.arg()?;
    let [server] = job.names.as_slice() else {
        return Err("the bootstrap server's name expected".into());
    };
    let bootstrap = IpcSender::<IpcLink>::connect(server.clone())?;
    let (to_child, from_parent) = ipc::bytes_channel()?;
    let (to_parent, from_child) = ipc::bytes_channel()?;
    bootstrap.send((to_child, from_child))?;
    Ok(job.work.serve((to_parent, from_parent))?)
}

// The parent's side: a running child and the parent's end of the link to it.

/// The parent's end of one row: the child, the link to it, and the work's buffers.
struct Peer<L> {
    work: Work,
    link: L,
    child: Child,
    msg: Vec<u8>,
    buf: Vec<u8>,
}

impl<L: Link> Peer<L> {
    fn new(work: Work, link: L, child: Child) -> Self {
        Peer {
            work,
            link,
            child,
            msg: vec![0xa5; work.len()],
            buf: Vec::new(),
        }
    }

    fn run(&mut self, iters: u64) -> anyhow::Result<()> {
        self.work
            .drive(&mut self.link, &self.msg, &mut self.buf, iters)
    }

    /// Closes the link and checks that the child then ended cleanly.
    fn finish(self) -> anyhow::Result<()> {
        let Peer {
            link, mut child, ..
        } = self;
        drop(link);
        let status = child.join_timeout(PATIENCE)?;
        ensure!(
            status.success(),
            "child role {} ended with {status}",
            child.role()
        );
        Ok(())
    }
}

/// How the parent starts a row: makes the link, starts the child role with its end.
type Start<L> = fn(Work) -> anyhow::Result<Peer<L>>;

fn ipckit_duplex(work: Work) -> anyhow::Result<Peer<Connection>> {
    let (mine, theirs) = ipckit_pipes::duplex()?;
    let child = spawn(
        IPCKIT_DUPLEX,
        &Job::new(work, &[])?,
        [("link", theirs.into_handoff())],
    )?;
    Ok(Peer::new(work, mine, child))
}

fn ipckit_pipes(work: Work) -> anyhow::Result<Peer<(PipeWriter, PipeReader)>> {
    let (child_rx, tx) = ipckit_pipes::pipe()?;
    let (rx, child_tx) = ipckit_pipes::pipe()?;
    let handles = [
        ("tx", child_tx.into_handoff()),
        ("rx", child_rx.into_handoff()),
    ];
    let child = spawn(IPCKIT_PIPES, &Job::new(work, &[])?, handles)?;
    Ok(Peer::new(work, (tx, rx), child))
}

fn ipckit_fifo(work: Work) -> anyhow::Result<Peer<(PipeWriter, PipeReader)>> {
    let (to_child, to_parent) = (Fifo::create()?, Fifo::create()?);
    let child = spawn(
        IPCKIT_FIFO,
        &Job::new(work, &[to_child.path(), to_parent.path()])?,
        [],
    )?;
    let tx = ipckit_pipes::open_write_timeout(to_child.path(), PATIENCE)?;
    let rx = ipckit_pipes::open_read_timeout(to_parent.path(), PATIENCE)?;
    // Both ends are open on both sides now: the FIFOs' names can go.
    Ok(Peer::new(work, (tx, rx), child))
}

fn raw_socketpair(work: Work) -> anyhow::Result<Peer<(File, File)>> {
    let (mine, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let handles = [
        ("tx", Handoff::Fd(theirs.try_clone()?)),
        ("rx", Handoff::Fd(theirs)),
    ];
    let child = spawn(RAW_FDS, &Job::new(work, &[])?, handles)?;
    Ok(Peer::new(
        work,
        (File::from(mine.try_clone()?), File::from(mine)),
        child,
    ))
}

fn raw_pipes(work: Work) -> anyhow::Result<Peer<(File, File)>> {
    let (child_rx, tx) = pipe2(OFlag::O_CLOEXEC)?;
    let (rx, child_tx) = pipe2(OFlag::O_CLOEXEC)?;
    let handles = [("tx", Handoff::Fd(child_tx)), ("rx", Handoff::Fd(child_rx))];
    let child = spawn(RAW_FDS, &Job::new(work, &[])?, handles)?;
    Ok(Peer::new(work, (File::from(tx), File::from(rx)), child))
}

/// As [`raw_pipes`], with the data pipe's kernel buffer set to 1 MiB (`F_SETPIPE_SZ`), as
/// ipckit grows it for large messages.
fn raw_pipes_1mib(work: Work) -> anyhow::Result<Peer<(File, File)>> {
    let (child_rx, tx) = pipe2(OFlag::O_CLOEXEC)?;
    fcntl(&tx, FcntlArg::F_SETPIPE_SZ(BIG as i32))?;
    let (rx, child_tx) = pipe2(OFlag::O_CLOEXEC)?;
    let handles = [("tx", Handoff::Fd(child_tx)), ("rx", Handoff::Fd(child_rx))];
    let child = spawn(RAW_FDS, &Job::new(work, &[])?, handles)?;
    Ok(Peer::new(work, (File::from(tx), File::from(rx)), child))
}

/// A FIFO made with `mkfifo(3)` under a fresh temporary name, removed on drop.
struct RawFifo(PathBuf);

impl RawFifo {
    fn create() -> anyhow::Result<Self> {
        let path = ipckit_core::temp_path("benchfifo");
        mkfifo(&path, Mode::S_IRUSR | Mode::S_IWUSR)?;
        Ok(RawFifo(path))
    }
}

impl Drop for RawFifo {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn raw_fifo(work: Work) -> anyhow::Result<Peer<(File, File)>> {
    let (to_child, to_parent) = (RawFifo::create()?, RawFifo::create()?);
    let child = spawn(RAW_FIFO, &Job::new(work, &[&to_child.0, &to_parent.0])?, [])?;
    let tx = OpenOptions::new().write(true).open(&to_child.0)?;
    let rx = File::open(&to_parent.0)?;
    // Both ends are open on both sides now: the FIFOs' names can go.
    Ok(Peer::new(work, (tx, rx), child))
}

fn ipc_channel(work: Work) -> anyhow::Result<Peer<IpcLink>> {
    let (server, name) = IpcOneShotServer::<IpcLink>::new()?;
    let job = Job {
        work,
        names: vec![name],
    };
    let child = spawn(IPC_CHANNEL, &job, [])?;
    let (_bootstrap, link) = server.accept()?;
    Ok(Peer::new(work, link, child))
}

/// A criterion group of one workload whose rows each run against a child of their own.
struct Group<'a> {
    name: &'static str,
    work: Work,
    group: BenchmarkGroup<'a, WallTime>,
}

impl<'a> Group<'a> {
    fn new(c: &'a mut Criterion, name: &'static str, work: Work) -> Self {
        let mut group = c.benchmark_group(name);
        if let Work::Stream = work {
            group.throughput(Throughput::Bytes(BIG as u64));
            // An iteration takes about a millisecond: equal batches fit the measurement time.
            group.sampling_mode(SamplingMode::Flat);
        }
        Group { name, work, group }
    }

    /// Benchmarks row `row`: starts its child with `start` on the first batch (if the row
    /// is run at all), times and records every batch, and ends the child afterwards.
    fn row<L: Link>(&mut self, row: &'static str, start: Start<L>) -> anyhow::Result<()> {
        let (name, work) = (self.name, self.work);
        let mut peer = None;
        self.group.bench_function(row, |b| {
            let peer = peer.get_or_insert_with(|| {
                start(work).unwrap_or_else(|e| panic!("{name}/{row}: cannot start: {e:#}"))
            });
            b.iter_custom(|iters| {
                let began = Instant::now();
                if let Err(e) = peer.run(iters) {
                    panic!("{name}/{row}: {e:#}");
                }
                record(name, row, began.elapsed(), iters)
            });
        });
        match peer {
            Some(peer) => peer.finish().with_context(|| format!("{name}/{row}")),
            None => Ok(()),
        }
    }

    /// Ends the group and prints a ratio line for each of its ipckit rows, against that
    /// row's floors and the group's `peers` (not in criterion's `--test` mode, where each
    /// row runs one iteration).
    fn finish(self, ours: &[(&str, &[&str])], peers: &[&str]) {
        self.group.finish();
        if std::env::args().any(|a| a == "--test") {
            return;
        }
        let figure = match self.work {
            Work::Echo => Figure::RoundTrip,
            Work::Stream => Figure::Bandwidth(BIG as u64),
        };
        for (row, floors) in ours {
            print_ratios(self.name, figure, row, floors, peers);
        }
    }
}

fn pipe_rtt(c: &mut Criterion) -> anyhow::Result<()> {
    let mut g = Group::new(c, "pipe_rtt_64B", Work::Echo);
    g.row("ipckit", ipckit_duplex)?;
    g.row("ipckit_pipes", ipckit_pipes)?;
    g.row("raw_socketpair", raw_socketpair)?;
    g.row("raw_pipe", raw_pipes)?;
    g.row("ipc-channel", ipc_channel)?;
    g.finish(
        &[
            ("ipckit", &["raw_socketpair"]),
            ("ipckit_pipes", &["raw_pipe"]),
        ],
        &["ipc-channel"],
    );
    Ok(())
}

fn pipe_bw(c: &mut Criterion) -> anyhow::Result<()> {
    let mut g = Group::new(c, "pipe_bw_1MiB", Work::Stream);
    g.row("ipckit", ipckit_duplex)?;
    g.row("ipckit_pipes", ipckit_pipes)?;
    g.row("raw_socketpair", raw_socketpair)?;
    g.row("raw_pipe", raw_pipes)?;
    g.row("raw_pipe_1MiB", raw_pipes_1mib)?;
    g.row("ipc-channel", ipc_channel)?;
    g.finish(
        &[
            ("ipckit", &["raw_socketpair"]),
            ("ipckit_pipes", &["raw_pipe", "raw_pipe_1MiB"]),
        ],
        &["ipc-channel"],
    );
    Ok(())
}

fn fifo_rtt(c: &mut Criterion) -> anyhow::Result<()> {
    let mut g = Group::new(c, "fifo_rtt_64B", Work::Echo);
    g.row("ipckit", ipckit_fifo)?;
    g.row("raw_fifo", raw_fifo)?;
    g.finish(&[("ipckit", &["raw_fifo"])], &[]);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    ipckit_core::enter(ROLES);
    let mut c = Criterion::default().configure_from_args();
    pipe_rtt(&mut c)?;
    pipe_bw(&mut c)?;
    fifo_rtt(&mut c)?;
    c.final_summary();
    Ok(())
}
