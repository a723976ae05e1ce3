//! Socket workloads of `docs/benchmarks.md`: `uds_rtt_64B`, `tcp_rtt_64B`, `uds_bw_1MiB`,
//! `tcp_bw_1MiB` and `broadcast_8`.
//!
//! Every row runs across processes, started once per row (on its first batch), with
//! criterion's `iter_custom` timing batches of iterations against them:
//!
//! - the round trips and the streams (`*_rtt_64B`, `*_bw_1MiB`): a child role listens (a
//!   Unix socket file under a fresh [`ipckit_core::temp_path`], or `127.0.0.1` on a port
//!   the system picks), tells the parent its address over a control connection
//!   (`ipckit_pipes::duplex`), accepts the parent, and serves it until the parent closes
//!   the socket, upon which the child returns. The `ipckit` rows use `Listener` and
//!   `Connection` on both sides (framed messages; TCP with `TCP_NODELAY`, as ipckit sets it);
//!   their floors `raw_uds` and `raw_tcp` use std's `UnixListener`/`UnixStream` and
//!   `TcpListener`/`TcpStream` (`set_nodelay(true)`) with `write_all` and `read_exact` of
//!   the bare bytes. The round trips echo a 64-byte message; the streams announce a batch
//!   of `n` (8 bytes), send `n` messages of 1 MiB, and the child acknowledges the batch
//!   with one byte. The ratio lines quote Python's `multiprocessing.connection`, measured
//!   apart on these machines (14–15 µs over a Unix socket, 23–25 µs over TCP), and the
//!   target of at most 1.15× the floor.
//! - `broadcast_8` (broadcasts per second; every client receives each one, so also the
//!   messages per second per client): eight client processes connect to the parent, which
//!   sends 64-byte messages to all of them. The batch goes out in windows of at most
//!   `WINDOW` messages, each announced by its size (8 bytes) and acknowledged by every
//!   client with one byte once it has received the whole window, since ipckit's
//!   `Server::broadcast` never waits: a client more than its outbox behind is dropped.
//!   The `ipckit` row is a `Server` on a Unix socket (its acknowledgements arrive as
//!   `Event::Message`); its floors have the parent write the same bytes to eight raw Unix
//!   sockets, one `write(2)` per message and client, and read the acknowledgements back,
//!   their clients reading through a 64 KiB `BufReader` (as ipckit's read-ahead):
//!   `raw_uds` message after message (each to every client in turn), `raw_uds_per_client`
//!   a window's messages to one client after the other. Both write from one thread,
//!   where the server writes from a thread per client.
//!
//! Every wait has a deadline of `PATIENCE` (the benches library's) or ends when the socket closes: accepts and the
//! control connection's report are polled, connects time out, and the echo loops end at
//! the peer's end of stream; a parent giving up kills its children (dropping a `Child`
//! kills it). Socket files are removed as soon as every client is connected (the
//! `Server`'s when it shuts down), and again, if still there, when the row ends.
//!
//! ```text
//! cargo bench -p ipckit-benches --bench sockets -- --warm-up-time 1 --measurement-time 3
//! ```

use std::{
    io::{self, BufReader, ErrorKind, Read, Write},
    net::{TcpListener, TcpStream},
    os::{
        fd::{AsFd, BorrowedFd},
        unix::net::{UnixListener, UnixStream},
    },
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use criterion::Criterion;
use ipckit_benches::{
    BIG, BROADCAST_WINDOW, Broadcast, Figure, Framed, Group, Link, PATIENCE, Report, Rig, SMALL,
    Work, broadcast_client, spawn,
};
use ipckit_core::{Child, Ctx, Deadline, Handle, RecvBytes, Role, RoleResult, SendBytes};
use ipckit_sockets::{Address, ConnectOptions, Connection, Listener, connect_with};
use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout, poll},
};
use serde::{Deserialize, Serialize};

/// The clients of `broadcast_8`.
const CLIENTS: usize = 8;
/// The floors' windows: as many messages as ipckit's row sends before the acknowledgements.
const WINDOW: u64 = BROADCAST_WINDOW;
/// Where the TCP rows listen; the system picks the port.
const TCP_ANY: &str = "tcp://127.0.0.1:0";

/// A Unix socket path under a fresh temporary name, removed (if still there) on drop.
struct SockPath(PathBuf);

impl SockPath {
    fn new() -> Self {
        SockPath(ipckit_core::temp_path("benchsock"))
    }

    /// The path as an ipckit address, `unix:///…`.
    fn address(&self) -> Address {
        Address::Unix(self.0.clone())
    }
}

impl Drop for SockPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Waits until `fd` is readable (a listener: a client is queued), at most `PATIENCE`.
fn readable(fd: BorrowedFd<'_>) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(!left.is_zero(), "nobody came in {PATIENCE:?}");
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::try_from(left)?) {
            Ok(0) | Err(Errno::EINTR) => {}
            Ok(_) => return Ok(()),
            Err(e) => return Err(e).context("poll"),
        }
    }
}

/// A raw stream socket: plain `write(2)` and `read(2)` of the bare bytes.
struct Raw<S>(S);

impl<S: Read + Write> Link for Raw<S> {
    fn send(&mut self, msg: &[u8]) -> anyhow::Result<()> {
        Ok(self.0.write_all(msg)?)
    }

    fn recv(&mut self, buf: &mut Vec<u8>, len: usize) -> anyhow::Result<bool> {
        buf.resize(len, 0);
        let n = match self.0.read(buf) {
            Ok(0) => return Ok(false),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(false),
            r => r?,
        };
        self.0.read_exact(&mut buf[n..])?;
        Ok(true)
    }
}

/// A serving child's argument: the work, and where to listen (`unix:///…` or
/// `tcp://127.0.0.1:0`).
#[derive(Debug, Serialize, Deserialize)]
struct Job {
    work: Work,
    addr: String,
}

// The child roles.

const IPCKIT_SERVE: &str = "ipckit_serve";
const RAW_SERVE: &str = "raw_serve";
const IPCKIT_CLIENT: &str = "ipckit_client";
const RAW_CLIENT: &str = "raw_client";

const ROLES: &[Role] = &[
    Role::new(IPCKIT_SERVE, ipckit_serve),
    Role::new(RAW_SERVE, raw_serve),
    Role::new(IPCKIT_CLIENT, broadcast_client),
    Role::new(RAW_CLIENT, raw_client),
];

/// Tells the parent over the control connection `ctl` where the child listens.
fn report(ctx: &mut Ctx, addr: &Address) -> anyhow::Result<()> {
    let mut ctl: Connection = ctx.handle("ctl")?;
    Ok(ctl.send_bytes(addr.to_string().as_bytes())?)
}

/// Listens with ipckit's `Listener`, accepts the parent, and serves it.
fn ipckit_serve(ctx: &mut Ctx) -> RoleResult {
    let job: Job = ctx.arg()?;
    let listener = Listener::bind(&job.addr.parse()?)?;
    report(ctx, listener.address())?;
    let stream = listener.accept_timeout(PATIENCE)?;
    // Removes the socket file: both ends are connected.
    drop(listener);
    Ok(job.work.serve(Framed(stream))?)
}

/// Listens with std's Unix or TCP listener, accepts the parent, and serves it.
fn raw_serve(ctx: &mut Ctx) -> RoleResult {
    let job: Job = ctx.arg()?;
    match job.addr.parse()? {
        Address::Unix(path) => {
            let listener = UnixListener::bind(&path)?;
            report(ctx, &Address::Unix(path.clone()))?;
            readable(listener.as_fd())?;
            let (stream, _) = listener.accept()?;
            std::fs::remove_file(&path)?;
            Ok(job.work.serve(Raw(stream))?)
        }
        Address::Tcp(addr) => {
            let listener = TcpListener::bind(addr)?;
            report(ctx, &Address::Tcp(listener.local_addr()?))?;
            readable(listener.as_fd())?;
            let (stream, _) = listener.accept()?;
            stream.set_nodelay(true)?;
            Ok(job.work.serve(Raw(stream))?)
        }
        other => Err(format!("a raw server cannot listen at {other}").into()),
    }
}

/// A broadcast client's side of one window: the announcement of `k` messages, then the
/// `k` messages of `SMALL` bytes; `Ok(false)` when the server has closed the connection
/// instead.
fn window(link: &mut impl Link, buf: &mut Vec<u8>) -> anyhow::Result<bool> {
    if !link.recv(buf, 8)? {
        return Ok(false);
    }
    let k = u64::from_le_bytes(buf.as_slice().try_into().context("window size")?);
    for _ in 0..k {
        ensure!(
            link.recv(buf, SMALL)? && buf.len() == SMALL,
            "the broadcast broke off"
        );
    }
    Ok(true)
}

/// A raw broadcast client: reads through a 64 KiB buffer, acknowledges every window with
/// one byte.
struct RawClient {
    rx: BufReader<UnixStream>,
    tx: UnixStream,
}

impl Link for RawClient {
    fn send(&mut self, msg: &[u8]) -> anyhow::Result<()> {
        Ok(self.tx.write_all(msg)?)
    }

    fn recv(&mut self, buf: &mut Vec<u8>, len: usize) -> anyhow::Result<bool> {
        buf.resize(len, 0);
        match self.rx.read_exact(buf) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

fn raw_client(ctx: &mut Ctx) -> RoleResult {
    let path: PathBuf = ctx.arg()?;
    let tx = UnixStream::connect(&path)?;
    let mut client = RawClient {
        rx: BufReader::with_capacity(64 << 10, tx.try_clone()?),
        tx,
    };
    let mut buf = Vec::new();
    while window(&mut client, &mut buf)? {
        client.send(&[1])?;
    }
    Ok(())
}

// The parent's side.

/// Waits for a child's end and checks that it ended cleanly.
fn join(mut child: Child) -> anyhow::Result<()> {
    let status = child.join_timeout(PATIENCE)?;
    ensure!(
        status.success(),
        "child role {} ended with {status}",
        child.role()
    );
    Ok(())
}

/// A round-trip or stream row: the serving child, the parent's end of the connection to
/// it, and the work's buffers.
struct Peer<L> {
    work: Work,
    link: L,
    child: Child,
    msg: Vec<u8>,
    buf: Vec<u8>,
    /// The socket file of a Unix row.
    _path: Option<SockPath>,
}

impl<L: Link> Peer<L> {
    /// Starts role `role` serving `work` at `addr`, waits for its report of the address it
    /// listens at, and connects to that with `connect`.
    fn start(
        role: &'static str,
        work: Work,
        addr: &str,
        path: Option<SockPath>,
        connect: impl FnOnce(&Address) -> anyhow::Result<L>,
    ) -> anyhow::Result<Self> {
        let (mut ctl, theirs) = ipckit_pipes::duplex()?;
        let job = Job {
            work,
            addr: addr.to_owned(),
        };
        let child = spawn(role, &job, [("ctl", theirs.into_handoff())])?;
        let mut buf = Vec::new();
        ctl.recv_bytes_into_deadline(&mut buf, Deadline::after(PATIENCE))
            .with_context(|| format!("no address from {role}"))?;
        let addr: Address = std::str::from_utf8(&buf)?.parse()?;
        Ok(Peer {
            work,
            link: connect(&addr)?,
            child,
            msg: vec![0xa5; work.msg_len()],
            buf: Vec::new(),
            _path: path,
        })
    }
}

impl<L: Link> Rig for Peer<L> {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
        let began = Instant::now();
        self.work
            .drive(&mut self.link, &self.msg, &mut self.buf, iters)?;
        Ok(began.elapsed())
    }

    /// Closes the connection, upon which the child returns.
    fn finish(self) -> anyhow::Result<()> {
        drop(self.link);
        join(self.child)
    }
}

fn connect_ipckit(addr: &Address) -> anyhow::Result<Framed<Connection>> {
    let opts = ConnectOptions::new().timeout(PATIENCE).retry(true);
    Ok(Framed(connect_with(addr, &opts)?))
}

fn ipckit_uds(work: Work) -> anyhow::Result<Peer<Framed<Connection>>> {
    let path = SockPath::new();
    let addr = path.address().to_string();
    Peer::start(IPCKIT_SERVE, work, &addr, Some(path), connect_ipckit)
}

fn ipckit_tcp(work: Work) -> anyhow::Result<Peer<Framed<Connection>>> {
    Peer::start(IPCKIT_SERVE, work, TCP_ANY, None, connect_ipckit)
}

fn raw_uds(work: Work) -> anyhow::Result<Peer<Raw<UnixStream>>> {
    let path = SockPath::new();
    let addr = path.address().to_string();
    Peer::start(RAW_SERVE, work, &addr, Some(path), |addr| match addr {
        Address::Unix(p) => Ok(Raw(UnixStream::connect(p)?)),
        other => bail!("a Unix address expected, not {other}"),
    })
}

fn raw_tcp(work: Work) -> anyhow::Result<Peer<Raw<TcpStream>>> {
    Peer::start(RAW_SERVE, work, TCP_ANY, None, |addr| match addr {
        Address::Tcp(a) => {
            let s = TcpStream::connect_timeout(a, PATIENCE)?;
            s.set_nodelay(true)?;
            Ok(Raw(s))
        }
        other => bail!("a TCP address expected, not {other}"),
    })
}

/// `broadcast_8`'s floors: the parent writes every message to eight raw Unix sockets, one
/// `write(2)` each, and reads one byte of acknowledgement from each per window.
struct RawHub {
    socks: Vec<UnixStream>,
    clients: Vec<Child>,
    msg: Vec<u8>,
    /// Whether a window goes to one client after the other (all its messages to the first
    /// client, then to the second…) rather than message after message (each message to
    /// every client in turn).
    per_client: bool,
}

impl RawHub {
    /// Message after message.
    fn start() -> anyhow::Result<Self> {
        Self::start_with(false)
    }

    /// Client after client.
    fn start_per_client() -> anyhow::Result<Self> {
        Self::start_with(true)
    }

    fn start_with(per_client: bool) -> anyhow::Result<Self> {
        let path = SockPath::new();
        let listener = UnixListener::bind(&path.0)?;
        let clients = (0..CLIENTS)
            .map(|_| spawn(RAW_CLIENT, &path.0, []))
            .collect::<ipckit_core::Result<Vec<_>>>()?;
        let socks = (0..CLIENTS)
            .map(|_| {
                readable(listener.as_fd())?;
                Ok(listener.accept()?.0)
            })
            .collect::<anyhow::Result<_>>()?;
        let mut hub = RawHub {
            socks,
            clients,
            msg: vec![0xa5; SMALL],
            per_client,
        };
        hub.window(0)?;
        Ok(hub)
    }

    /// Writes a window of `k` messages to every client and reads every acknowledgement.
    fn window(&mut self, k: u64) -> io::Result<()> {
        for s in &mut self.socks {
            s.write_all(&k.to_le_bytes())?;
        }
        if self.per_client {
            for s in &mut self.socks {
                for _ in 0..k {
                    s.write_all(&self.msg)?;
                }
            }
        } else {
            for _ in 0..k {
                for s in &mut self.socks {
                    s.write_all(&self.msg)?;
                }
            }
        }
        for s in &mut self.socks {
            s.read_exact(&mut [0])?;
        }
        Ok(())
    }
}

impl Rig for RawHub {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
        let began = Instant::now();
        let mut left = iters;
        while left > 0 {
            let k = left.min(WINDOW);
            self.window(k).context("a raw client left")?;
            left -= k;
        }
        Ok(began.elapsed())
    }

    /// Closes the sockets, upon which the clients return.
    fn finish(self) -> anyhow::Result<()> {
        drop(self.socks);
        self.clients.into_iter().try_for_each(join)
    }
}

/// Prints whether row `ipckit` of `report` is within `max` times its floor `floor`, as
/// the median of the paired rounds' ratios.
fn print_target(group: &str, report: &Report, floor: &str, max: f64) {
    if let Some(ratio) = report.between("ipckit", floor) {
        let ratio = ratio.median;
        let verdict = if ratio <= max { "met" } else { "missed" };
        println!("{group}: target ipckit/{floor} ≤ {max}×: {ratio:.2}× {verdict}");
    }
}

fn rtt(c: &mut Criterion) -> anyhow::Result<()> {
    let (work, figure) = (Work::Echo, Figure::RoundTrip);
    let name = "uds_rtt_64B";
    let mut g = Group::new(c, name, figure);
    g.row("ipckit", || ipckit_uds(work))?;
    g.row("raw_uds", || raw_uds(work))?;
    g.python_row("python_mp_connection", "rtt", "connection")?;
    if let Some(r) = g.finish(&[("ipckit", &["raw_uds"])], &["python_mp_connection"]) {
        print_target(name, &r, "raw_uds", 1.15);
    }
    let name = "tcp_rtt_64B";
    let mut g = Group::new(c, name, figure);
    g.row("ipckit", || ipckit_tcp(work))?;
    g.row("raw_tcp", || raw_tcp(work))?;
    if let Some(r) = g.finish(&[("ipckit", &["raw_tcp"])], &[]) {
        print_target(name, &r, "raw_tcp", 1.15);
    }
    Ok(())
}

fn bw(c: &mut Criterion) -> anyhow::Result<()> {
    let (work, figure) = (Work::Stream, Figure::Bandwidth(BIG as u64));
    let mut g = Group::new(c, "uds_bw_1MiB", figure);
    g.row("ipckit", || ipckit_uds(work))?;
    g.row("raw_uds", || raw_uds(work))?;
    g.finish(&[("ipckit", &["raw_uds"])], &[]);
    let mut g = Group::new(c, "tcp_bw_1MiB", figure);
    g.row("ipckit", || ipckit_tcp(work))?;
    g.row("raw_tcp", || raw_tcp(work))?;
    g.finish(&[("ipckit", &["raw_tcp"])], &[]);
    Ok(())
}

fn broadcast(c: &mut Criterion) -> anyhow::Result<()> {
    let name = "broadcast_8";
    let mut g = Group::new(c, name, Figure::Rate);
    g.row("ipckit", || Broadcast::start(IPCKIT_CLIENT, CLIENTS))?;
    g.row("raw_uds", RawHub::start)?;
    g.row("raw_uds_per_client", RawHub::start_per_client)?;
    if let Some(r) = g.finish(&[("ipckit", &["raw_uds", "raw_uds_per_client"])], &[]) {
        // The ratio line's M/s has two decimals: too few here.
        for row in ["ipckit", "raw_uds", "raw_uds_per_client"] {
            if let Some(m) = r.value(row) {
                let per_sec = m * 1e6;
                println!(
                    "{name}: {row} {:.1} k broadcasts/s, each to {CLIENTS} clients = {:.1} k \
                     messages/s in all",
                    per_sec / 1e3,
                    per_sec * CLIENTS as f64 / 1e3,
                );
            }
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    ipckit_core::enter(ROLES);
    let mut c = Criterion::default().configure_from_args();
    rtt(&mut c)?;
    bw(&mut c)?;
    broadcast(&mut c)?;
    c.final_summary();
    Ok(())
}
