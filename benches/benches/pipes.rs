//! Pipe workloads of `docs/benchmarks.md`: `pipe_rtt_64B`, `pipe_bw_1MiB` and
//! `fifo_rtt_64B`.
//!
//! Each row runs across two processes: the bench starts a role of its own executable once
//! per row (on the row's first batch), times batches of iterations against it with
//! criterion's `iter_custom`, and closes the link at the end, upon which the child
//! returns. Every workload runs for ipckit, for its floor (the raw system calls doing the
//! same work), for ipc-channel and, for the pipe workloads, Python's `multiprocessing.Pipe`
//! (`benches/python/compare.py`, when a Python is found); then every row that ran runs
//! again in paired rounds, whose table and ratio lines follow each group.
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
use criterion::Criterion;
use ipc_channel::{
    IpcError,
    ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcSender},
};
use ipckit_benches::{BIG, Fd, Framed, Group, Link, PATIENCE, Rig, Work, spawn};
use ipckit_core::{Child, Ctx, Handle, Handoff, Role, RoleResult};
use ipckit_pipes::{Connection, Fifo, Reader, Writer};
use nix::{
    fcntl::{FcntlArg, OFlag, fcntl},
    sys::{
        socket::{AddressFamily, SockFlag, SockType, socketpair},
        stat::Mode,
    },
    unistd::{mkfifo, pipe2},
};
use serde::{Deserialize, Serialize};

/// Raw descriptors (a socket twice, two pipes, two FIFOs): plain `write(2)` and `read(2)`.
struct Raw(File, File);

impl Link for Raw {
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

/// ipc-channel's byte channels, one each way, as they travel.
type IpcPair = (IpcBytesSender, IpcBytesReceiver);

/// ipc-channel's byte channels, one each way.
struct IpcLink(IpcBytesSender, IpcBytesReceiver);

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
    Ok(job.work.serve(Framed(link))?)
}

fn serve_ipckit_pipes(ctx: &mut Ctx) -> RoleResult {
    let job: Job = ctx.arg()?;
    let link: (Writer, Reader) = (ctx.handle("tx")?, ctx.handle("rx")?);
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
    Ok(job.work.serve(Raw(File::from(tx), File::from(rx)))?)
}

fn serve_raw_fifo(ctx: &mut Ctx) -> RoleResult {
    let job: Job = ctx.arg()?;
    let [to_child, to_parent] = job.names.as_slice() else {
        return Err("two FIFO paths expected".into());
    };
    let rx = File::open(to_child)?;
    let tx = OpenOptions::new().write(true).open(to_parent)?;
    Ok(job.work.serve(Raw(tx, rx))?)
}

fn serve_ipc_channel(ctx: &mut Ctx) -> RoleResult {
    let job: Job = ctx.arg()?;
    let [server] = job.names.as_slice() else {
        return Err("the bootstrap server's name expected".into());
    };
    let bootstrap = IpcSender::<IpcPair>::connect(server.clone())?;
    let (to_child, from_parent) = ipc::bytes_channel()?;
    let (to_parent, from_child) = ipc::bytes_channel()?;
    bootstrap.send((to_child, from_child))?;
    Ok(job.work.serve(IpcLink(to_parent, from_parent))?)
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
            msg: vec![0xa5; work.msg_len()],
            buf: Vec::new(),
        }
    }
}

impl<L: Link> Rig for Peer<L> {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
        let began = Instant::now();
        self.work
            .drive(&mut self.link, &self.msg, &mut self.buf, iters)?;
        Ok(began.elapsed())
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

fn ipckit_duplex(work: Work) -> anyhow::Result<Peer<Framed<Connection>>> {
    let (mine, theirs) = ipckit_pipes::duplex()?;
    let child = spawn(
        IPCKIT_DUPLEX,
        &Job::new(work, &[])?,
        [("link", theirs.into_handoff())],
    )?;
    Ok(Peer::new(work, Framed(mine), child))
}

fn ipckit_pipes(work: Work) -> anyhow::Result<Peer<(Writer, Reader)>> {
    let (child_rx, tx) = ipckit_pipes::pipe()?;
    let (rx, child_tx) = ipckit_pipes::pipe()?;
    let handles = [
        ("tx", child_tx.into_handoff()),
        ("rx", child_rx.into_handoff()),
    ];
    let child = spawn(IPCKIT_PIPES, &Job::new(work, &[])?, handles)?;
    Ok(Peer::new(work, (tx, rx), child))
}

fn ipckit_fifo(work: Work) -> anyhow::Result<Peer<(Writer, Reader)>> {
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

fn raw_socketpair(work: Work) -> anyhow::Result<Peer<Raw>> {
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
        Raw(File::from(mine.try_clone()?), File::from(mine)),
        child,
    ))
}

fn raw_pipes(work: Work) -> anyhow::Result<Peer<Raw>> {
    let (child_rx, tx) = pipe2(OFlag::O_CLOEXEC)?;
    let (rx, child_tx) = pipe2(OFlag::O_CLOEXEC)?;
    let handles = [("tx", Handoff::Fd(child_tx)), ("rx", Handoff::Fd(child_rx))];
    let child = spawn(RAW_FDS, &Job::new(work, &[])?, handles)?;
    Ok(Peer::new(work, Raw(File::from(tx), File::from(rx)), child))
}

/// As [`raw_pipes`], with the data pipe's kernel buffer set to 1 MiB (`F_SETPIPE_SZ`), as
/// ipckit grows it for large messages.
fn raw_pipes_1mib(work: Work) -> anyhow::Result<Peer<Raw>> {
    let (child_rx, tx) = pipe2(OFlag::O_CLOEXEC)?;
    fcntl(&tx, FcntlArg::F_SETPIPE_SZ(BIG as i32))?;
    let (rx, child_tx) = pipe2(OFlag::O_CLOEXEC)?;
    let handles = [("tx", Handoff::Fd(child_tx)), ("rx", Handoff::Fd(child_rx))];
    let child = spawn(RAW_FDS, &Job::new(work, &[])?, handles)?;
    Ok(Peer::new(work, Raw(File::from(tx), File::from(rx)), child))
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

fn raw_fifo(work: Work) -> anyhow::Result<Peer<Raw>> {
    let (to_child, to_parent) = (RawFifo::create()?, RawFifo::create()?);
    let child = spawn(RAW_FIFO, &Job::new(work, &[&to_child.0, &to_parent.0])?, [])?;
    let tx = OpenOptions::new().write(true).open(&to_child.0)?;
    let rx = File::open(&to_parent.0)?;
    // Both ends are open on both sides now: the FIFOs' names can go.
    Ok(Peer::new(work, Raw(tx, rx), child))
}

fn ipc_channel(work: Work) -> anyhow::Result<Peer<IpcLink>> {
    let (server, name) = IpcOneShotServer::<IpcPair>::new()?;
    let job = Job {
        work,
        names: vec![name],
    };
    let child = spawn(IPC_CHANNEL, &job, [])?;
    let (_bootstrap, (tx, rx)) = server.accept()?;
    Ok(Peer::new(work, IpcLink(tx, rx), child))
}

fn pipe_rtt(c: &mut Criterion) -> anyhow::Result<()> {
    let work = Work::Echo;
    let mut g = Group::new(c, "pipe_rtt_64B", work.figure());
    g.row("ipckit", || ipckit_duplex(work))?;
    g.row("ipckit_pipes", || ipckit_pipes(work))?;
    g.row("raw_socketpair", || raw_socketpair(work))?;
    g.row("raw_pipe", || raw_pipes(work))?;
    g.row("ipc-channel", || ipc_channel(work))?;
    g.python_row("python_mp_pipe", "rtt", "pipe")?;
    g.finish(
        &[
            ("ipckit", &["raw_socketpair"]),
            ("ipckit_pipes", &["raw_pipe"]),
        ],
        &["ipc-channel", "python_mp_pipe"],
    );
    Ok(())
}

fn pipe_bw(c: &mut Criterion) -> anyhow::Result<()> {
    let work = Work::Stream;
    let mut g = Group::new(c, "pipe_bw_1MiB", work.figure());
    g.row("ipckit", || ipckit_duplex(work))?;
    g.row("ipckit_pipes", || ipckit_pipes(work))?;
    g.row("raw_socketpair", || raw_socketpair(work))?;
    g.row("raw_pipe", || raw_pipes(work))?;
    g.row("raw_pipe_1MiB", || raw_pipes_1mib(work))?;
    g.row("ipc-channel", || ipc_channel(work))?;
    g.python_row("python_mp_pipe", "bw", "pipe")?;
    g.finish(
        &[
            ("ipckit", &["raw_socketpair"]),
            ("ipckit_pipes", &["raw_pipe", "raw_pipe_1MiB"]),
        ],
        &["ipc-channel", "python_mp_pipe"],
    );
    Ok(())
}

fn fifo_rtt(c: &mut Criterion) -> anyhow::Result<()> {
    let work = Work::Echo;
    let mut g = Group::new(c, "fifo_rtt_64B", work.figure());
    g.row("ipckit", || ipckit_fifo(work))?;
    g.row("raw_fifo", || raw_fifo(work))?;
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
