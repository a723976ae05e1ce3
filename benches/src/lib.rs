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

/// The mean time of one iteration over the recorded batches of `row` in `group`, if any.
pub fn mean(group: &str, row: &str) -> Option<Duration> {
    let batches = BATCHES.lock().unwrap_or_else(PoisonError::into_inner);
    let kept = batches.get(&(group, row))?;
    let (total, iters) = kept
        .iter()
        .fold((Duration::ZERO, 0u64), |(t, n), &(e, i)| (t + e, n + i));
    let iters = u32::try_from(iters).ok().filter(|&n| n > 0)?;
    Some(total / iters)
}

/// What a group's figure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    /// Time per round trip, shown in µs: lower is better.
    RoundTrip,
    /// Bytes moved per iteration, shown as GB/s: higher is better.
    Bandwidth(u64),
}

impl Figure {
    /// The figure of an iteration that took `per_iter`, in µs or GB/s.
    fn value(self, per_iter: Duration) -> f64 {
        match self {
            Figure::RoundTrip => per_iter.as_secs_f64() * 1e6,
            Figure::Bandwidth(bytes) => bytes as f64 / per_iter.as_secs_f64() / 1e9,
        }
    }

    fn show(self, value: f64, first: bool) -> String {
        match (self, first) {
            (Figure::RoundTrip, true) => format!("{value:.1} µs/RTT"),
            (Figure::RoundTrip, false) => format!("{value:.1} µs"),
            (Figure::Bandwidth(_), _) => format!("{value:.2} GB/s"),
        }
    }

    /// How many times better `ours` is than `theirs` (both from [`Figure::value`]).
    fn better(self, ours: f64, theirs: f64) -> f64 {
        match self {
            Figure::RoundTrip => theirs / ours,
            Figure::Bandwidth(_) => ours / theirs,
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
    let our = figure.value(mean(group, ours)?);
    let mut line = format!("{group}: {ours} {}", figure.show(our, true));
    let measured = |rows: &[&str]| -> Vec<(String, f64)> {
        rows.iter()
            .filter_map(|&r| mean(group, r).map(|m| (r.to_string(), figure.value(m))))
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
}
