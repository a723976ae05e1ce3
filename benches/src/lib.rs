//! Shared helpers of the ipckit benchmarks (see `docs/benchmarks.md` for the workloads).
//!
//! - [`spawn`] starts a role of the bench executable in a child process with its handles
//!   and argument; [`Fd`] hands a raw descriptor over for the floor rows.
//! - [`record`] keeps what each criterion measurement batch took, [`mean`] turns the last
//!   [`SAMPLES`] batches of a row into a time per iteration, and [`print_ratios`] prints a
//!   group's line comparing ipckit with its floor and its peers.
//! - [`Group`] is a criterion group whose rows each run a [`Rig`] of processes, started
//!   on the row's first batch and ended after its last; it then measures the rows again in
//!   paired rounds and prints the group's ratio lines from those.
//! - [`Work`] is the echo-and-stream workload of the pipe and socket benches, run over
//!   any [`Link`].
//! - [`Paired`] measures a group's rows in alternating rounds against processes that stay
//!   up, and reports each row's median ratio to a reference with its spread ([`Report`]);
//!   [`two_cores`] and [`pin`] place the two sides of a busy-wait row.
//! - [`PingPong`] is one round trip of the round-trip rows, [`echoes`] the worker that
//!   answers it.

mod broadcast;
mod paired;
mod pingpong;
mod python;
mod raw;
mod worker;

pub use {
    broadcast::{BROADCAST_WINDOW, Broadcast, broadcast_client},
    paired::{
        OneCpu, Outcome, Paired, Report, Rounds, RowReport, Spread, pin, pin_process, three_digits,
        two_cores,
    },
    pingpong::{EchoRig, PingPong, echoes},
    python::{PythonProc, PythonRow},
    raw::{Floor, Line, Raw, RawMem, RawSpin, Words},
    worker::{PATIENCE, SPINS, Worker, serve, spin_until},
};

use std::{
    collections::{BTreeMap, VecDeque},
    fmt::Write as _,
    os::fd::OwnedFd,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use anyhow::{Context as _, ensure};
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput, measurement::WallTime};
use ipckit_core::{Child, Command, Error, Handle, Handoff, RecvBytes, Result, SendBytes};
use serde::{Deserialize, Serialize};

/// A raw descriptor handed to a child role as it is, with no ipckit framing on top.
#[derive(Debug)]
pub struct Fd(pub OwnedFd);

impl Handle for Fd {
    fn into_handoff(self) -> Handoff {
        Handoff::Fd(self.0)
    }

    fn from_handoff(h: Handoff) -> Result<Self> {
        match h {
            Handoff::Fd(fd) => Ok(Fd(fd)),
            Handoff::Name(n) => Err(Error::RoleInput(format!(
                "expected a descriptor, got name {n}"
            ))),
        }
    }
}

/// A handle of any kind, already turned into what travels to the child.
struct Passed(Handoff);

impl Handle for Passed {
    fn into_handoff(self) -> Handoff {
        self.0
    }

    fn from_handoff(h: Handoff) -> Result<Self> {
        Ok(Passed(h))
    }
}

/// Starts role `role` of this executable in a child process, with argument `arg` and the
/// `handles` (each a key and [`Handle::into_handoff`] of the handle) that the role takes
/// with `Ctx::arg` and `Ctx::handle`.
///
/// # Errors
/// As [`Command::arg`] and [`Command::spawn`].
pub fn spawn<A: Serialize + ?Sized>(
    role: &str,
    arg: &A,
    handles: impl IntoIterator<Item = (&'static str, Handoff)>,
) -> Result<Child> {
    let mut cmd = Command::new(role).arg(arg)?;
    for (key, handoff) in handles {
        cmd = cmd.handle(key, Passed(handoff));
    }
    cmd.spawn()
}

/// How many of a row's last measurement batches make its figure.
///
/// Criterion calls a routine for its warm-up batches first and then once per sample, 100
/// samples by default, so with the default sample size the figure is exactly the
/// measurement's.
pub const SAMPLES: usize = 100;

/// The last [`SAMPLES`] batches of each (group, row): time taken and iterations run.
type Batches = BTreeMap<(&'static str, &'static str), VecDeque<(Duration, u64)>>;

static BATCHES: Mutex<Batches> = Mutex::new(BTreeMap::new());

/// Records that row `row` of group `group` ran `iters` iterations in `elapsed`, and
/// returns `elapsed` (what criterion's `iter_custom` wants back).
pub fn record(group: &'static str, row: &'static str, elapsed: Duration, iters: u64) -> Duration {
    let mut batches = BATCHES.lock().unwrap_or_else(PoisonError::into_inner);
    let kept = batches.entry((group, row)).or_default();
    if kept.len() == SAMPLES {
        kept.pop_front();
    }
    kept.push_back((elapsed, iters));
    elapsed
}

/// The time taken and the iterations run over the recorded batches of `row` in `group`.
fn totals(group: &str, row: &str) -> Option<(Duration, u64)> {
    let batches = BATCHES.lock().unwrap_or_else(PoisonError::into_inner);
    let kept = batches.get(&(group, row))?;
    Some(
        kept.iter()
            .fold((Duration::ZERO, 0u64), |(t, n), &(e, i)| (t + e, n + i)),
    )
}

/// The mean time of one iteration over the recorded batches of `row` in `group`, if any.
pub fn mean(group: &str, row: &str) -> Option<Duration> {
    let (total, iters) = totals(group, row)?;
    let iters = u32::try_from(iters).ok().filter(|&n| n > 0)?;
    Some(total / iters)
}

/// As [`mean`], in seconds, without rounding to whole nanoseconds (a figure of a few
/// nanoseconds per iteration would lose several percent to it).
fn mean_secs(group: &str, row: &str) -> Option<f64> {
    let (total, iters) = totals(group, row)?;
    (iters > 0).then(|| total.as_secs_f64() / iters as f64)
}

/// What a group's figure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    /// Time per round trip, shown in µs: lower is better.
    RoundTrip,
    /// Bytes moved per iteration, shown as GB/s: higher is better.
    Bandwidth(u64),
    /// Operations per second (one operation per iteration), shown in millions per second:
    /// higher is better.
    Rate,
    /// Time per operation (one per iteration), shown in ns: lower is better.
    Operation,
}

impl Figure {
    /// The figure of an iteration that took `secs` seconds, in µs, GB/s, M/s or ns.
    fn value(self, secs: f64) -> f64 {
        match self {
            Figure::RoundTrip => secs * 1e6,
            Figure::Bandwidth(bytes) => bytes as f64 / secs / 1e9,
            Figure::Rate => 1.0 / secs / 1e6,
            Figure::Operation => secs * 1e9,
        }
    }

    fn show(self, value: f64, first: bool) -> String {
        // Below a microsecond, one decimal would hide most of the figure.
        let digits = if value < 1.0 { 3 } else { 1 };
        match (self, first) {
            (Figure::RoundTrip, true) => format!("{value:.digits$} µs/RTT"),
            (Figure::RoundTrip, false) => format!("{value:.digits$} µs"),
            (Figure::Bandwidth(_), _) => format!("{value:.2} GB/s"),
            (Figure::Rate, _) => format!("{value:.2} M/s"),
            (Figure::Operation, true) => format!("{value:.1} ns/op"),
            (Figure::Operation, false) => format!("{value:.1} ns"),
        }
    }

    /// How many times better `ours` is than `theirs` (both from [`Figure::value`]).
    fn better(self, ours: f64, theirs: f64) -> f64 {
        match self {
            Figure::RoundTrip | Figure::Operation => theirs / ours,
            Figure::Bandwidth(_) | Figure::Rate => ours / theirs,
        }
    }
}

/// The line comparing row `ours` of `group` with its `floors` (raw system calls doing the
/// same work; the ratio is ours/raw of the figure) and its `peers` (other libraries; how
/// many times faster or slower ours is). Rows that were not measured are left out; `None`
/// if `ours` was not.
pub fn ratio_line(
    group: &str,
    figure: Figure,
    ours: &str,
    floors: &[&str],
    peers: &[&str],
) -> Option<String> {
    let our = figure.value(mean_secs(group, ours)?);
    let mut line = format!("{group}: {ours} {}", figure.show(our, true));
    let measured = |rows: &[&str]| -> Vec<(String, f64)> {
        rows.iter()
            .filter_map(|&r| mean_secs(group, r).map(|m| (r.to_string(), figure.value(m))))
            .collect()
    };
    for (i, (row, v)) in measured(floors).into_iter().enumerate() {
        let sep = if i == 0 { "," } else { ";" };
        let _ = write!(
            line,
            "{sep} {row} {} → {ours}/raw = {:.2}×",
            figure.show(v, false),
            our / v
        );
    }
    for (row, v) in measured(peers) {
        let better = figure.better(our, v);
        let (times, word) = if better >= 1.0 {
            (better, "faster")
        } else {
            (1.0 / better, "slower")
        };
        let _ = write!(
            line,
            "; {row} {} → {ours} is {times:.2}× {word}",
            figure.show(v, false)
        );
    }
    Some(line)
}

/// Prints [`ratio_line`] to standard output, if `ours` was measured.
pub fn print_ratios(group: &str, figure: Figure, ours: &str, floors: &[&str], peers: &[&str]) {
    if let Some(line) = ratio_line(group, figure, ours, floors, peers) {
        println!("{line}");
    }
}

/// One row's processes, as the parent holds them.
pub trait Rig {
    /// Runs `iters` iterations of the workload; returns the time they took.
    ///
    /// # Errors
    /// When the workload fails (a child left, a message went missing…).
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration>;

    /// Ends the row's children (or workers) and checks that they ended cleanly.
    ///
    /// # Errors
    /// When one did not.
    fn finish(self) -> anyhow::Result<()>;
}

/// A criterion group of one workload, whose rows each run a [`Rig`] of their own.
///
/// Criterion measures the rows one after the other; [`finish`](Group::finish) then starts
/// every row that ran again and measures them in paired rounds ([`Paired`]), and its ratio
/// lines come from those rounds, with their spread. A round-trip group runs with every
/// process on one CPU ([`OneCpu`]), except its busy-wait rows, pinned to two.
pub struct Group<'a, 's> {
    name: &'static str,
    figure: Figure,
    group: BenchmarkGroup<'a, WallTime>,
    /// The rows criterion ran, how to start each again, and the CPU a busy-wait row's
    /// batches run on.
    starts: Vec<(&'static str, Starter<'s>, Option<usize>)>,
    /// A round-trip group runs on one CPU ([`OneCpu`]), its busy-wait rows excepted.
    _one_cpu: Option<OneCpu>,
}

/// How a [`Group`] starts a row's rig again for its paired rounds.
type Starter<'s> = Box<dyn Fn() -> anyhow::Result<Box<dyn paired::Batches>> + 's>;

impl std::fmt::Debug for Group<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("name", &self.name)
            .field("figure", &self.figure)
            .finish_non_exhaustive()
    }
}

impl<'a, 's> Group<'a, 's> {
    /// Starts group `name` of `c`, with criterion's throughput (and, for iterations that
    /// move a MiB or more, flat sampling) set from `figure`.
    pub fn new(c: &'a mut Criterion, name: &'static str, figure: Figure) -> Self {
        let mut group = c.benchmark_group(name);
        match figure {
            Figure::Bandwidth(bytes) => {
                group.throughput(Throughput::Bytes(bytes));
                if bytes >= 1 << 20 {
                    // An iteration takes a millisecond or more: equal batches fit the time.
                    group.sampling_mode(SamplingMode::Flat);
                }
            }
            Figure::Rate => {
                group.throughput(Throughput::Elements(1));
            }
            Figure::RoundTrip | Figure::Operation => {}
        }
        let one_cpu = match figure {
            Figure::RoundTrip => OneCpu::pin()
                .inspect_err(|e| println!("{name}: not pinned to one CPU: {e:#}"))
                .ok(),
            _ => None,
        };
        Group {
            name,
            figure,
            group,
            starts: Vec::new(),
            _one_cpu: one_cpu,
        }
    }

    /// Benchmarks row `row`: starts its rig with `start` on the first batch (if the row is
    /// run at all), times and [`record`]s every batch, and finishes the rig afterwards.
    /// `start` is kept to start the row again for the paired rounds of
    /// [`finish`](Group::finish).
    ///
    /// # Errors
    /// When the rig does not finish cleanly. A rig that cannot start or run panics, as
    /// criterion gives no other way out of a routine.
    pub fn row<R: Rig + 'static>(
        &mut self,
        row: &'static str,
        start: impl Fn() -> anyhow::Result<R> + 's,
    ) -> anyhow::Result<()> {
        let name = self.name;
        let mut rig = None;
        self.group.bench_function(row, |b| {
            let rig = rig.get_or_insert_with(|| {
                start().unwrap_or_else(|e| panic!("{name}/{row}: cannot start: {e:#}"))
            });
            b.iter_custom(|iters| match rig.run(iters) {
                Ok(took) => record(name, row, took, iters),
                Err(e) => panic!("{name}/{row}: {e:#}"),
            });
        });
        match rig {
            Some(rig) => {
                rig.finish().with_context(|| format!("{name}/{row}"))?;
                self.starts.push((
                    row,
                    Box::new(move || Ok(Box::new(start()?) as Box<dyn paired::Batches>)),
                    None,
                ));
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// A Python row: `benches/python/compare.py workload mech` ([`PythonRow`]) as row
    /// `row`, if a Python 3.8 or newer is found; otherwise it says so and adds nothing.
    ///
    /// # Errors
    /// As [`row`](Group::row).
    pub fn python_row(
        &mut self,
        row: &'static str,
        workload: &'static str,
        mech: &'static str,
    ) -> anyhow::Result<()> {
        match ipckit_testkit::find_python(8..=20) {
            Some(py) => self.row(row, move || PythonRow::start(&py, workload, mech)),
            None => {
                println!("{}/{row}: not run (no python3 found)", self.name);
                Ok(())
            }
        }
    }

    /// As [`row`](Group::row), for a busy-wait row: this process runs its batches on one
    /// CPU and `start` is given both, (this side's, the other side's), to pin its other
    /// process to the second (e.g. with [`Worker::pin`]). On a machine with one CPU the
    /// row is not run, and says so.
    ///
    /// # Errors
    /// As [`row`](Group::row); when this thread cannot be pinned.
    pub fn pinned_row<R: Rig + 'static>(
        &mut self,
        row: &'static str,
        start: impl Fn((usize, usize)) -> anyhow::Result<R> + 's,
    ) -> anyhow::Result<()> {
        let cpus = match two_cores() {
            Ok(cpus) => cpus,
            Err(e) => {
                println!("{}/{row}: not run: {e:#}", self.name);
                return Ok(());
            }
        };
        let before = paired::affinity()?;
        pin(cpus.0)?;
        let ran = self.row(row, move || start(cpus));
        paired::restore(&before)?;
        if let Some(last) = self.starts.last_mut()
            && last.0 == row
        {
            last.2 = Some(cpus.0);
        }
        ran
    }

    /// Ends the group; when benchmarking (`--bench`, as `cargo bench` passes, not
    /// criterion's test mode: `--test`, or `cargo test --benches`, where each row runs one
    /// iteration), starts every row that ran again, measures them in paired rounds
    /// ([`Rounds::GROUP`]), prints their report and a ratio line for each of its ipckit
    /// rows `ours` (each with its floors) against those floors and the group's `peers`,
    /// each ratio the median of the per-round ratios. Returns the report if it ran.
    pub fn finish(self, ours: &[(&str, &[&str])], peers: &[&str]) -> Option<Report> {
        self.group.finish();
        let flag = |f: &str| std::env::args().any(|a| a == f);
        if !flag("--bench") || flag("--test") || self.starts.is_empty() {
            return None;
        }
        let mut paired = Paired::new(self.name, self.figure);
        for (row, start, pin) in &self.starts {
            paired.row_boxed(row, *pin, start);
        }
        paired.run(Rounds::GROUP);
        let report = paired.finish();
        report.print();
        for (row, floors) in ours {
            if let Some(line) = report.ratio_line(row, floors, peers) {
                println!("{line}");
            }
        }
        Some(report)
    }
}

/// The message of [`Work::Echo`].
pub const SMALL: usize = 64;
/// The message of [`Work::Stream`].
pub const BIG: usize = 1 << 20;

/// One side's end of a link between two processes, whatever carries it: sends messages
/// one way and receives them the other.
pub trait Link {
    /// Sends one message.
    ///
    /// # Errors
    /// When the carrier fails.
    fn send(&mut self, msg: &[u8]) -> anyhow::Result<()>;

    /// Receives one message into `buf`: `len` bytes on a raw stream, whatever came on a
    /// framed one. `Ok(false)` when the peer has closed the link.
    ///
    /// # Errors
    /// When the carrier fails.
    fn recv(&mut self, buf: &mut Vec<u8>, len: usize) -> anyhow::Result<bool>;
}

/// An ipckit receive, with the peer's leaving turned into `Ok(false)`.
fn framed(r: Result<()>) -> anyhow::Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(Error::Disconnected) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// ipckit's framed messages both ways over one connection.
#[derive(Debug)]
pub struct Framed<T>(pub T);

impl<T: SendBytes + RecvBytes> Link for Framed<T> {
    fn send(&mut self, msg: &[u8]) -> anyhow::Result<()> {
        Ok(self.0.send_bytes(msg)?)
    }

    fn recv(&mut self, buf: &mut Vec<u8>, _len: usize) -> anyhow::Result<bool> {
        framed(self.0.recv_bytes_into(buf))
    }
}

/// ipckit's framed messages over a writer one way and a reader the other.
impl<W: SendBytes, R: RecvBytes> Link for (W, R) {
    fn send(&mut self, msg: &[u8]) -> anyhow::Result<()> {
        Ok(self.0.send_bytes(msg)?)
    }

    fn recv(&mut self, buf: &mut Vec<u8>, _len: usize) -> anyhow::Result<bool> {
        framed(self.1.recv_bytes_into(buf))
    }
}

/// What the two processes do over their link.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum Work {
    /// Round trips: the parent sends a [`SMALL`]-byte message, the child sends it back.
    Echo,
    /// The parent announces a batch of `n` (an 8-byte message), streams `n` messages of
    /// [`BIG`] bytes, and the child acknowledges the batch with one byte.
    Stream,
}

impl Work {
    /// The size of the parent's message.
    #[must_use]
    pub fn msg_len(self) -> usize {
        match self {
            Work::Echo => SMALL,
            Work::Stream => BIG,
        }
    }

    /// The figure of a group of this work.
    #[must_use]
    pub fn figure(self) -> Figure {
        match self {
            Work::Echo => Figure::RoundTrip,
            Work::Stream => Figure::Bandwidth(BIG as u64),
        }
    }

    /// The parent's side: `iters` iterations over `link`, sending `msg`, receiving into
    /// `buf`.
    ///
    /// # Errors
    /// When the link fails or the child answers wrongly.
    pub fn drive(
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
    ///
    /// # Errors
    /// When the link fails or the parent's messages break off.
    pub fn serve(self, mut link: impl Link) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_compare_means_of_the_last_batches() {
        for _ in 0..SAMPLES + 5 {
            record("t", "ipckit", Duration::from_micros(300), 20);
            record("t", "raw", Duration::from_micros(150), 10);
            record("t", "peer", Duration::from_micros(60), 2);
        }
        assert_eq!(mean("t", "ipckit"), Some(Duration::from_micros(15)));
        let line = ratio_line(
            "t",
            Figure::RoundTrip,
            "ipckit",
            &["raw", "absent"],
            &["peer"],
        )
        .unwrap();
        assert_eq!(
            line,
            "t: ipckit 15.0 µs/RTT, raw 15.0 µs → ipckit/raw = 1.00×; peer 30.0 µs → ipckit is 2.00× faster"
        );
        assert_eq!(ratio_line("t", Figure::RoundTrip, "absent", &[], &[]), None);
    }

    #[test]
    fn rates_and_operations_compare_the_right_way_round() {
        record("r", "ipckit", Duration::from_nanos(4_000), 100);
        record("r", "raw", Duration::from_nanos(2_000), 100);
        record("r", "peer", Duration::from_nanos(8_000), 100);
        assert_eq!(
            ratio_line("r", Figure::Rate, "ipckit", &["raw"], &["peer"]).unwrap(),
            "r: ipckit 25.00 M/s, raw 50.00 M/s → ipckit/raw = 0.50×; peer 12.50 M/s → ipckit is 2.00× faster"
        );
        assert_eq!(
            ratio_line("r", Figure::Operation, "ipckit", &["raw"], &["peer"]).unwrap(),
            "r: ipckit 40.0 ns/op, raw 20.0 ns → ipckit/raw = 2.00×; peer 80.0 ns → ipckit is 2.00× faster"
        );
        record("s", "ipckit", Duration::from_nanos(412), 1);
        assert_eq!(
            ratio_line("s", Figure::RoundTrip, "ipckit", &[], &[]).unwrap(),
            "s: ipckit 0.412 µs/RTT"
        );
    }
}
