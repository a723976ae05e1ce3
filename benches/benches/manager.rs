//! Manager workloads: `manager_get_rtt` and `manager_dict_incr_4x`.
//!
//! - `manager_get_rtt` (µs per call): one `Dict::get` of a small value from a manager
//!   server in a child process (`Manager::start_with`), over its Unix socket (`ipckit`) and
//!   through the local fast path (`ipckit_fast_path`). Its floor `raw_uds` is a
//!   32-byte round trip over a Unix socket pair to a child echoing with plain
//!   `read(2)`/`write(2)`: what a request and its answer cost at the least. Target:
//!   ipckit ≤ 1.3× the floor.
//! - `manager_dict_incr_4x` (operations per second, all processes together): four worker
//!   processes (`Worker`, ordered over a control connection) add 1 to one key of one dict,
//!   each a quarter of the batch: `incr` is one server-side update per call;
//!   `lock_get_set` is the Python tutorial's way (`with lock: d[k] = d[k] + 1`: four round
//!   trips). After each row the key must hold every increment. Target: incr ≥ 100 k ops/s.
//!   `incr_later` sends each `incr` without waiting for its answer (`Dict::incr_later`),
//!   32 awaiting theirs at most, and takes the answers oldest first: what a client that
//!   need not see each new value before its next call can do. Each row runs twice: over
//!   the server's Unix socket (`incr`, `incr_later`, `lock_get_set`) and through the local
//!   fast path's shared-memory queues (`incr_fast_path`, `incr_later_fast_path`,
//!   `lock_get_set_fast_path`). Target: ≥ 1 M ops/s through the fast path.
//!
//! Python's own `multiprocessing.Manager` does the same (`benches/python/manager_bench.py`:
//! `d.get`, and four processes doing lock + get + set, and without the lock) in the same
//! run when `python3` is on the `PATH`, first, bounded to two minutes; its figures are
//! printed beside ours. Its round trips run on one CPU, as `manager_get_rtt` does (see
//! `OneCpu`); its four processes run a second time unpinned, as `manager_dict_incr_4x`'s
//! do, for the figures printed beside those.
//!
//! ```text
//! cargo bench -p ipckit-benches --bench manager -- --warm-up-time 1 --measurement-time 3
//! ```

use std::{
    collections::VecDeque,
    io::{ErrorKind, Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use criterion::Criterion;
use ipckit_benches::{Fd, Figure, Group, OneCpu, PATIENCE, Rig, Worker, serve, spawn};
use ipckit_core::{Child, Ctx, Handle, Role, RoleResult};
use ipckit_manager::{Dict, Manager, Pending, ServeOptions};

const RAW_ECHO: &str = "manager-raw-echo";
const INCR: &str = "manager-incr";
const INCR_LATER: &str = "manager-incr-later";
const LOCKED: &str = "manager-lock-get-set";
const ROLES: &[Role] = &[
    Role::new(RAW_ECHO, raw_echo),
    Role::new(INCR, incr_worker),
    Role::new(INCR_LATER, incr_later_worker),
    Role::new(LOCKED, locked_worker),
];
/// The request size of the raw floor.
const MSG: usize = 32;

/// Echoes `MSG`-byte messages on the socket `sock` until the parent closes it.
fn raw_echo(ctx: &mut Ctx) -> RoleResult {
    let Fd(fd) = ctx.handle("sock")?;
    let mut s = UnixStream::from(fd);
    let mut buf = [0u8; MSG];
    loop {
        match s.read_exact(&mut buf) {
            Ok(()) => s.write_all(&buf)?,
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

fn scores(addr: &str) -> anyhow::Result<(Manager, Dict<String, i64>)> {
    let m = Manager::connect(&addr.parse()?, None)?;
    let d = m.dict("scores")?;
    Ok((m, d))
}

fn incr_worker(ctx: &mut Ctx) -> RoleResult {
    let addr: String = ctx.arg()?;
    let (_m, d) = scores(&addr)?;
    serve(ctx, |n| {
        for _ in 0..n {
            d.incr("x", 1)?;
        }
        Ok(n)
    })
}

/// As `incr_worker`, sending each `incr` without waiting for its answer: up to
/// `IN_FLIGHT` await theirs, taken oldest first.
fn incr_later_worker(ctx: &mut Ctx) -> RoleResult {
    const IN_FLIGHT: usize = 32;
    let addr: String = ctx.arg()?;
    let (_m, d) = scores(&addr)?;
    let mut sent = VecDeque::with_capacity(IN_FLIGHT);
    serve(ctx, |n| {
        for _ in 0..n {
            if sent.len() == IN_FLIGHT
                && let Some(p) = sent.pop_front()
            {
                Pending::wait(p)?;
            }
            sent.push_back(d.incr_later("x", 1)?);
        }
        sent.drain(..).try_for_each(|p| p.wait().map(drop))?;
        Ok(n)
    })
}

fn locked_worker(ctx: &mut Ctx) -> RoleResult {
    let addr: String = ctx.arg()?;
    let (m, d) = scores(&addr)?;
    let lock = m.lock("lock")?;
    serve(ctx, |n| {
        for _ in 0..n {
            let _held = lock.acquire()?;
            let v = d.get("x")?.unwrap_or(0);
            d.insert("x", &(v + 1))?;
        }
        Ok(n)
    })
}

/// `Dict::get` against a manager process.
struct GetRig {
    _m: Manager,
    d: Dict<String, i64>,
}

impl GetRig {
    /// A server in a child process, reached over its socket or through the fast path.
    fn start(fast_path: bool) -> anyhow::Result<Self> {
        let m = Manager::start_with(ServeOptions::new().fast_path(fast_path))?;
        ensure!(m.is_fast_path() == fast_path, "the wrong path");
        let d = m.dict("scores")?;
        d.insert("x", &42)?;
        Ok(GetRig { _m: m, d })
    }
}

impl Rig for GetRig {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
        let began = Instant::now();
        for _ in 0..iters {
            ensure!(self.d.get("x")? == Some(42), "a wrong value");
        }
        Ok(began.elapsed())
    }

    fn finish(self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The raw floor: a round trip of `MSG` bytes over a Unix socket pair.
struct RawRig {
    sock: UnixStream,
    child: Child,
}

impl RawRig {
    fn start() -> anyhow::Result<Self> {
        let (ours, theirs) = UnixStream::pair()?;
        let child = spawn(RAW_ECHO, &(), [("sock", Fd(theirs.into()).into_handoff())])?;
        Ok(RawRig { sock: ours, child })
    }
}

impl Rig for RawRig {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
        let mut buf = [7u8; MSG];
        let began = Instant::now();
        for _ in 0..iters {
            self.sock.write_all(&buf)?;
            self.sock.read_exact(&mut buf)?;
        }
        Ok(began.elapsed())
    }

    fn finish(self) -> anyhow::Result<()> {
        let RawRig { sock, mut child } = self;
        drop(sock);
        let status = child.join_timeout(PATIENCE)?;
        ensure!(status.success(), "the echo ended with {status}");
        Ok(())
    }
}

/// Four workers adding to one key of a manager's dict.
struct FourRig {
    m: Manager,
    workers: Vec<Worker>,
    done: i64,
}

impl FourRig {
    /// Four workers of `role` against a fresh server, which serves them through the
    /// shared-memory fast path if `fast`, else over its Unix socket.
    fn start(role: &'static str, fast: bool) -> anyhow::Result<Self> {
        let m = Manager::start_with(ServeOptions::new().fast_path(fast))?;
        ensure!(
            m.is_fast_path() == fast,
            "the manager's path is not the one asked for"
        );
        let addr = m.address().to_string();
        let workers = (0..4)
            .map(|_| Worker::start(role, &addr, []))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(FourRig {
            m,
            workers,
            done: 0,
        })
    }
}

impl Rig for FourRig {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
        let share = iters.div_ceil(4);
        let began = Instant::now();
        for w in &mut self.workers {
            w.order(share)?;
        }
        for w in &mut self.workers {
            w.report()?;
        }
        let took = began.elapsed();
        self.done += i64::try_from(share * 4)?;
        // The batch ran `share * 4` operations; scale to the `iters` criterion asked for.
        Ok(took.mul_f64(iters as f64 / (share * 4) as f64))
    }

    fn finish(self) -> anyhow::Result<()> {
        let got = self.m.dict::<String, i64>("scores")?.get("x")?.unwrap_or(0);
        ensure!(
            got == self.done,
            "{} increments, the key holds {got}",
            self.done
        );
        self.workers.into_iter().try_for_each(Worker::finish)
    }
}

/// Runs Python's manager script for `seconds` per figure; its `name value` lines.
///
/// The script's Python clients also run against an ipckit manager started here, so that
/// Python's client code meets both servers in the same run.
fn python(seconds: f64) -> anyhow::Result<Vec<(String, f64)>> {
    const KEY: &[u8] = b"bench";
    // `python3` may be 3.11, whose handshake is HMAC-MD5.
    let manager = Manager::start_with(ServeOptions::new().authkey(KEY).legacy_md5(true))?;
    manager
        .dict::<String, i64>("bench")?
        .insert(&"x".to_string(), &0)?;
    let _ = manager.lock("lock")?;
    let addr = manager.address().to_string();
    let socket = addr.strip_prefix("unix://").unwrap_or(&addr).to_string();
    run_python(&[&seconds.to_string(), &socket, std::str::from_utf8(KEY)?])
}

/// Runs Python's manager script with `args`, at most two minutes; its `name value` lines.
fn run_python(args: &[&str]) -> anyhow::Result<Vec<(String, f64)>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/manager_bench.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("python3")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("python3 took more than two minutes");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = String::new();
    child
        .stdout
        .take()
        .context("python3's output")?
        .read_to_string(&mut out)?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.parse().ok()?))
        })
        .collect())
}

fn benchmarking() -> bool {
    let flag = |f: &str| std::env::args().any(|a| a == f);
    flag("--bench") && !flag("--test")
}

/// Python's figure `row`, if it ran.
fn py(rows: &[(String, f64)], row: &str) -> Option<f64> {
    rows.iter().find(|(r, _)| r == row).map(|(_, v)| *v)
}

fn main() -> anyhow::Result<()> {
    ipckit_core::enter(ROLES);
    let mut c = Criterion::default().configure_from_args();
    // Python first, so that its figures stand beside ours in each group's lines.
    let not_run = |e: anyhow::Error| {
        println!("python multiprocessing.Manager: not run ({e:#})");
        Vec::new()
    };
    let (python, python_four) = if benchmarking() {
        // Round trips, each server and its Python clients on one CPU as the round-trip
        // groups run (see `OneCpu`); Python's client code against both servers too, for
        // the same reason and for the bound its CPU time sets.
        let one_cpu = OneCpu::pin()?;
        let pinned = python(2.0).unwrap_or_else(not_run);
        drop(one_cpu);
        // Python's four processes as ours run in `manager_dict_incr_4x`: unpinned.
        let four = run_python(&["2", "--four"]).unwrap_or_else(not_run);
        (pinned, four)
    } else {
        (Vec::new(), Vec::new())
    };

    let name = "manager_get_rtt";
    let mut g = Group::new(&mut c, name, Figure::RoundTrip);
    g.row("ipckit", || GetRig::start(false))?;
    g.row("ipckit_fast_path", || GetRig::start(true))?;
    g.row("raw_uds", RawRig::start)?;
    let report = g.finish(
        &[("ipckit", &["raw_uds"]), ("ipckit_fast_path", &["raw_uds"])],
        &[],
    );
    if let Some(r) = report
        && let (Some(ratio), Some(us)) = (r.between("ipckit", "raw_uds"), r.value("ipckit"))
    {
        let verdict = |x: f64| if x <= 1.3 { "met" } else { "missed" };
        let socket = ratio.median;
        print!(
            "{name}: target ≤ 1.3× raw_uds: over the socket {socket:.2}× {}",
            verdict(socket)
        );
        match r.between("ipckit_fast_path", "raw_uds") {
            Some(fast) => println!(
                ", through the fast path (a local client's default) {:.2}× {}",
                fast.median,
                verdict(fast.median)
            ),
            None => println!(),
        }
        if let Some(p) = py(&python, "get_rtt_us") {
            let (times, word) = if p >= us {
                (p / us, "faster")
            } else {
                (us / p, "slower")
            };
            println!(
                "{name}: Python multiprocessing.Manager d.get {p:.1} µs → ipckit is {times:.1}× {word}"
            );
        }
    }
    // Python's own client code, against ipckit's manager and against Python's.
    if let (Some(ours), Some(theirs)) =
        (py(&python, "ipckit_get_rtt_us"), py(&python, "get_rtt_us"))
    {
        println!(
            "manager_python_client_get: Python's d.get against the ipckit manager {ours:.1} µs, \
             against Python's manager {theirs:.1} µs → {:.1}× (goal ≥ 3×)",
            theirs / ours
        );
        if let Some(cpu) = py(&python, "ipckit_get_client_cpu_us") {
            println!(
                "manager_python_client_get: Python's client code alone takes {cpu:.1} µs of CPU \
                 per d.get; against a server that took no time at all, {:.1}× at most",
                theirs / cpu
            );
        }
    }
    if let (Some(ours), Some(theirs)) = (
        py(&python, "ipckit_lock_get_set_4x_ops"),
        py(&python, "lock_get_set_4x_ops"),
    ) {
        println!(
            "manager_python_client_incr_4x: 4 Python processes, with lock: d[k] = d[k] + 1, \
             against the ipckit manager {:.1} k ops/s, against Python's manager {:.1} k ops/s \
             → {:.1}× (goal ≥ 3×)",
            ours / 1e3,
            theirs / 1e3,
            ours / theirs
        );
        if let Some(cpu) = py(&python, "ipckit_lock_get_set_4x_client_cpu_us") {
            // On one CPU, the increments can go no faster than the clients' own CPU time.
            println!(
                "manager_python_client_incr_4x: Python's client code alone takes {cpu:.1} µs \
                 of CPU per locked increment; on one CPU, against a server that took no time \
                 at all, {:.1}× at most",
                1e6 / cpu / theirs
            );
        }
    }

    let name = "manager_dict_incr_4x";
    let mut g = Group::new(&mut c, name, Figure::Rate);
    g.row("incr", || FourRig::start(INCR, false))?;
    g.row("incr_fast_path", || FourRig::start(INCR, true))?;
    g.row("incr_later", || FourRig::start(INCR_LATER, false))?;
    g.row("incr_later_fast_path", || FourRig::start(INCR_LATER, true))?;
    g.row("lock_get_set", || FourRig::start(LOCKED, false))?;
    g.row("lock_get_set_fast_path", || FourRig::start(LOCKED, true))?;
    if let Some(r) = g.finish(&[], &[]) {
        // The report's rates are in M/s.
        let k = |row| r.value(row).map(|m| m * 1e3);
        if let (Some(incr), Some(locked)) = (k("incr"), k("lock_get_set")) {
            let verdict = if incr >= 100.0 { "met" } else { "missed" };
            println!(
                "{name}: incr {incr:.1} k ops/s, lock_get_set {locked:.1} k ops/s (4 processes, one key)"
            );
            println!("{name}: target incr ≥ 100 k ops/s: {verdict}");
            if let (Some(fast), Some(fast_locked)) =
                (k("incr_fast_path"), k("lock_get_set_fast_path"))
            {
                println!(
                    "{name}: fast path: incr {fast:.1} k ops/s ({:.1}× the socket), \
                     lock_get_set {fast_locked:.1} k ops/s ({:.1}×)",
                    fast / incr,
                    fast_locked / locked
                );
            }
            if let (Some(later), Some(fast_later)) = (k("incr_later"), k("incr_later_fast_path")) {
                let verdict = if fast_later >= 1000.0 {
                    "met"
                } else {
                    "missed"
                };
                println!(
                    "{name}: calls sent without waiting: incr_later {later:.1} k ops/s, \
                     through the fast path {fast_later:.1} k ops/s ({:.1}× the socket)",
                    fast_later / later
                );
                println!("{name}: target incr_later_fast_path ≥ 1000 k ops/s: {verdict}");
            }
            if let Some(p) = py(&python_four, "lock_get_set_4x_ops") {
                let p = p / 1e3;
                println!(
                    "{name}: Python multiprocessing.Manager lock+get+set {p:.1} k ops/s → \
                     ipckit lock_get_set is {:.1}×, incr {:.1}× Python's",
                    locked / p,
                    incr / p
                );
            }
            if let (Some(p), Some(lost)) = (
                py(&python_four, "unlocked_4x_ops"),
                py(&python_four, "unlocked_4x_lost"),
            ) {
                println!(
                    "{name}: Python without the lock {:.1} k ops/s, {lost:.0} of 8000 updates lost",
                    p / 1e3
                );
            }
        }
    }
    c.final_summary();
    Ok(())
}
