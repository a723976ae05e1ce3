//! Shared helpers of the ipckit benchmarks (see `docs/benchmarks.md` for the workloads).
//!
//! - [`spawn`] starts a role of the bench executable in a child process with its handles
//!   and argument; [`Fd`] hands a raw descriptor over for the floor rows.
//! - [`record`] keeps what each criterion measurement batch took, [`mean`] turns the last
//!   [`SAMPLES`] batches of a row into a time per iteration, and [`print_ratios`] prints a
//!   group's line comparing ipckit with its floor and its peers.

use std::{
    collections::{BTreeMap, VecDeque},
    fmt::Write as _,
    os::fd::OwnedFd,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use ipckit_core::{Child, Command, Error, Handle, Handoff, Result};
use serde::Serialize;

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
