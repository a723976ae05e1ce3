//! Paired measurement: the rows of a group take turns in short rounds, and each row's
//! figure is the median of its per-round ratios to the group's reference, with their
//! spread.
//!
//! A criterion group measures one row after the other, so whatever else the machine does
//! meanwhile (another build, a frequency change) lands on one row and not on the next, and
//! a ratio of two such figures swings from run to run. Here every round runs one batch of
//! every row (the order rotated each round), a batch sized to a few milliseconds, so a
//! disturbance lasting longer than a round hits all rows alike and cancels out of that
//! round's ratios.
//!
//! The rounds run in blocks, and every row's processes are started afresh for each block:
//! what one start happens to get (where its memory lies, which cache lines its atomics
//! share, the buffers the kernel gives it) differs from one start to the next and then
//! stays for as long as the processes live. Were the rounds all run against one start,
//! their spread would not show it, and a second run would land outside it.

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context as _, bail};
use nix::{sched::CpuSet, unistd::Pid};

use crate::{Figure, Rig};

/// A [`Rig`] behind a box: the rows of a group are of different types.
pub(crate) trait Batches {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration>;
    fn finish(self: Box<Self>) -> anyhow::Result<()>;
}

impl<R: Rig> Batches for R {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
        Rig::run(self, iters)
    }

    fn finish(self: Box<Self>) -> anyhow::Result<()> {
        Rig::finish(*self)
    }
}

/// How long the rounds of a [`Paired`] group run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rounds {
    /// How many rounds (each runs one batch of every row).
    pub rounds: usize,
    /// How long one batch should take: its iterations are sized to it once, before the
    /// first round.
    pub batch: Duration,
    /// Into how many blocks the rounds are split: each block runs against fresh
    /// processes (see the module's documentation).
    pub blocks: usize,
}

impl Rounds {
    /// A full measurement: 100 rounds of batches of about 10 ms, in 5 blocks.
    pub const FULL: Rounds = Rounds {
        rounds: 100,
        batch: Duration::from_millis(10),
        blocks: 5,
    };
    /// The paired rounds that follow a criterion [`Group`](crate::Group): 24 rounds of
    /// about 5 ms, in 4 blocks.
    pub const GROUP: Rounds = Rounds {
        rounds: 24,
        batch: Duration::from_millis(5),
        blocks: 4,
    };
    /// A smoke round, to check that every row works and starts again: 3 rounds of about
    /// 1 ms, in 2 blocks.
    pub const SMOKE: Rounds = Rounds {
        rounds: 3,
        batch: Duration::from_millis(1),
        blocks: 2,
    };
}

/// Two CPUs to pin the two sides of a busy-wait row to, or why there are none.
///
/// # Errors
/// When this process may run on one CPU only: two spinning processes would then take turns
/// at a scheduler tick each, and the figure would measure the scheduler.
pub fn two_cores() -> anyhow::Result<(usize, usize)> {
    let set = original_cpus()?;
    let mut cpus = (0..CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false));
    match (cpus.next(), cpus.next()) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => bail!("cannot run on one core: a busy-wait row needs two"),
    }
}

/// The CPUs this process may use, as they were before any [`OneCpu`].
fn original_cpus() -> anyhow::Result<CpuSet> {
    static ORIGINAL: std::sync::OnceLock<CpuSet> = std::sync::OnceLock::new();
    if let Some(set) = ORIGINAL.get() {
        return Ok(*set);
    }
    let set = nix::sched::sched_getaffinity(Pid::from_raw(0)).context("sched_getaffinity")?;
    Ok(*ORIGINAL.get_or_init(|| set))
}

/// Every thread of this process on one CPU, the first it may use, until dropped; the
/// processes and threads started meanwhile inherit it. For the blocking round-trip
/// groups: on a machine whose idle CPUs halt at once (a VM), a round trip whose two sides
/// sit on two CPUs pays a wake-up of a halted CPU each way (25–30 µs here), one whose two
/// sides share a CPU does not, and which of the two a row gets is up to the scheduler: on
/// one CPU every row gets the same, and the figure is the kernel path's.
#[derive(Debug)]
pub struct OneCpu {
    before: Vec<(Pid, CpuSet)>,
}

impl OneCpu {
    /// Pins every thread of this process to its first CPU.
    ///
    /// # Errors
    /// When the process's threads cannot be listed or its CPUs read.
    pub fn pin() -> anyhow::Result<OneCpu> {
        let cpu = (0..CpuSet::count())
            .find(|&c| original_cpus().is_ok_and(|s| s.is_set(c).unwrap_or(false)))
            .context("no CPU to run on")?;
        let mut one = CpuSet::new();
        one.set(cpu).context("CPU number")?;
        let mut before = Vec::new();
        for tid in threads()? {
            // A thread that ended meanwhile is left out.
            if let Ok(set) = nix::sched::sched_getaffinity(tid)
                && nix::sched::sched_setaffinity(tid, &one).is_ok()
            {
                before.push((tid, set));
            }
        }
        Ok(OneCpu { before })
    }
}

/// The threads of this process.
fn threads() -> anyhow::Result<Vec<Pid>> {
    std::fs::read_dir("/proc/self/task")
        .context("/proc/self/task")?
        .map(|task| {
            let tid = task?.file_name().to_str().and_then(|t| t.parse().ok());
            Ok(Pid::from_raw(tid.context("a thread id")?))
        })
        .collect()
}

impl Drop for OneCpu {
    /// Gives every thread back the CPUs it had; one started meanwhile (which took the one
    /// CPU from its parent) gets the CPUs the process had at first.
    fn drop(&mut self) {
        let original = original_cpus().ok();
        for tid in threads().unwrap_or_default() {
            let had = self.before.iter().find(|(t, _)| *t == tid).map(|(_, s)| s);
            if let Some(set) = had.or(original.as_ref()) {
                let _ = nix::sched::sched_setaffinity(tid, set);
            }
        }
    }
}

/// Pins the calling thread to CPU `cpu`.
///
/// # Errors
/// When the system refuses it.
pub fn pin(cpu: usize) -> anyhow::Result<()> {
    pin_process(0, cpu)
}

/// Pins process `pid` (its main thread; 0 for the calling thread) to CPU `cpu`.
///
/// # Errors
/// When the system refuses it.
pub fn pin_process(pid: u32, cpu: usize) -> anyhow::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).context("CPU number")?;
    let pid = Pid::from_raw(i32::try_from(pid).context("a process id")?);
    nix::sched::sched_setaffinity(pid, &set).context("sched_setaffinity")?;
    Ok(())
}

/// The calling thread's CPUs, to [`restore`] after a pinned row.
pub(crate) fn affinity() -> anyhow::Result<CpuSet> {
    nix::sched::sched_getaffinity(Pid::from_raw(0)).context("sched_getaffinity")
}

pub(crate) fn restore(set: &CpuSet) -> anyhow::Result<()> {
    nix::sched::sched_setaffinity(Pid::from_raw(0), set).context("sched_setaffinity")
}

/// `v` with three significant digits (at least the units).
#[must_use]
pub fn three_digits(v: f64) -> String {
    if !v.is_finite() || v == 0.0 || v.abs() >= 100.0 {
        return format!("{v:.0}");
    }
    let digits = (2 - v.abs().log10().floor() as i32).max(0) as usize;
    format!("{v:.digits$}")
}

/// The unit of a figure's values, short.
fn unit(f: Figure) -> &'static str {
    match f {
        Figure::RoundTrip => "µs/RTT",
        Figure::Bandwidth(_) => "GB/s",
        Figure::Rate => "M/s",
        Figure::Operation => "ns/op",
    }
}

/// How a row's rig is started, for each block of rounds.
type Start<'a> = Box<dyn FnMut() -> anyhow::Result<Box<dyn Batches>> + 'a>;

/// A row of a paired group while it runs.
struct Row<'a> {
    name: String,
    /// Said after the row's name: how it ran (pinned cores…).
    note: Option<String>,
    state: State,
    /// Starts its rig again (`None` for a row kept as not run).
    start: Option<Start<'a>>,
    /// The CPU the parent runs this row's batches on, if pinned.
    pin: Option<usize>,
    iters: u64,
    /// Seconds per iteration, per round (`None` for a round the row missed).
    secs: Vec<Option<f64>>,
}

enum State {
    Running(Box<dyn Batches>),
    /// Not run (or stopped), and why.
    Out(String),
    /// Finished after its rounds.
    Done,
}

/// A group of rows measured in paired rounds (see the module's documentation).
///
/// Make it with [`Paired::new`], add rows with [`row`](Paired::row) (which starts the
/// row's processes at once, and keeps `start` to start them afresh for each block of
/// rounds), then [`run`](Paired::run) the rounds and [`finish`](Paired::finish) for the
/// [`Report`].
pub struct Paired<'a> {
    name: String,
    figure: Figure,
    reference: Option<String>,
    rows: Vec<Row<'a>>,
    rounds: usize,
}

impl std::fmt::Debug for Paired<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Paired")
            .field("name", &self.name)
            .field("figure", &self.figure)
            .field("rows", &self.rows.len())
            .finish_non_exhaustive()
    }
}

impl<'a> Paired<'a> {
    /// An empty group `name` whose rows' figure is `figure`.
    pub fn new(name: impl Into<String>, figure: Figure) -> Self {
        Paired {
            name: name.into(),
            figure,
            reference: None,
            rows: Vec::new(),
            rounds: 0,
        }
    }

    /// Makes row `row` the reference of the per-round ratios (the floor); without one, the
    /// ratios are to the row of the best median time.
    #[must_use]
    pub fn reference(mut self, row: &str) -> Self {
        self.reference = Some(row.to_owned());
        self
    }

    /// Adds row `name`, starting its rig with `start` now and again for each block of
    /// rounds. A row that cannot start is kept, with the reason, as not run.
    pub fn row<R: Rig + 'static>(
        &mut self,
        name: &str,
        start: impl FnMut() -> anyhow::Result<R> + 'a,
    ) {
        self.add(name, None, None, start);
    }

    /// As [`row`](Paired::row), for a busy-wait row: its batches run on CPU `cpus.0`, and
    /// `start` is given both CPUs to pin the other side to `cpus.1`; the report says so.
    /// Without two CPUs (`cpus` from [`two_cores`]), the row is kept as not run.
    pub fn pinned_row<R: Rig + 'static>(
        &mut self,
        name: &str,
        cpus: &anyhow::Result<(usize, usize)>,
        mut start: impl FnMut((usize, usize)) -> anyhow::Result<R> + 'a,
    ) {
        match cpus {
            &Ok((a, b)) => {
                let note = format!("busy-wait, pinned to CPUs {a} and {b}");
                self.add(name, Some(note), Some(a), move || start((a, b)));
            }
            Err(e) => self.skip(name, &format!("{e:#}")),
        }
    }

    /// As [`row`](Paired::row), for a rig already boxed, its batches run on CPU `pin` if
    /// given (a busy-wait row whose other side `start` pinned elsewhere).
    pub(crate) fn row_boxed(
        &mut self,
        name: &str,
        pin: Option<usize>,
        start: impl FnMut() -> anyhow::Result<Box<dyn Batches>> + 'a,
    ) {
        let note = pin.map(|cpu| format!("busy-wait, pinned: this side to CPU {cpu}"));
        self.push(name, note, pin, Box::new(start));
    }

    /// Keeps row `name` as not run, because of `why`.
    pub fn skip(&mut self, name: &str, why: &str) {
        self.rows.push(Row {
            name: name.to_owned(),
            note: None,
            state: State::Out(why.to_owned()),
            start: None,
            pin: None,
            iters: 0,
            secs: Vec::new(),
        });
    }

    fn add<R: Rig + 'static>(
        &mut self,
        name: &str,
        note: Option<String>,
        pin: Option<usize>,
        mut start: impl FnMut() -> anyhow::Result<R> + 'a,
    ) {
        let start = move || Ok(Box::new(start()?) as Box<dyn Batches>);
        self.push(name, note, pin, Box::new(start));
    }

    /// Adds a row and starts its rig.
    fn push(&mut self, name: &str, note: Option<String>, pin: Option<usize>, start: Start<'a>) {
        let mut row = Row {
            name: name.to_owned(),
            note,
            state: State::Out(String::new()),
            start: Some(start),
            pin,
            iters: 0,
            secs: Vec::new(),
        };
        row.state = row.started();
        self.rows.push(row);
    }

    /// Sizes each row's batch to `rounds.batch`, then runs `rounds.rounds` rounds: each
    /// runs one batch of every running row, starting one row further each round. The
    /// rounds are split into `rounds.blocks` blocks, and before each block but the first
    /// every row's rig is finished and started afresh. A row that fails is stopped, and
    /// reported with its error.
    pub fn run(&mut self, rounds: Rounds) {
        for row in &mut self.rows {
            if let Err(e) = row.size(rounds.batch) {
                row.stop(format!("failed while sizing its batch: {e:#}"));
            }
        }
        let n = self.rows.len();
        let blocks = rounds.blocks.clamp(1, rounds.rounds.max(1));
        for round in 0..rounds.rounds {
            if round > 0 && round * blocks / rounds.rounds != (round - 1) * blocks / rounds.rounds {
                for row in &mut self.rows {
                    row.restart();
                }
            }
            for k in 0..n {
                let row = &mut self.rows[(round + k) % n];
                let got = row.batch(row.iters);
                match got {
                    Ok(Some(took)) => row
                        .secs
                        .push(Some(took.as_secs_f64() / row.iters.max(1) as f64)),
                    Ok(None) => {}
                    Err(e) => {
                        let why = format!("failed in round {}: {e:#}", round + 1);
                        row.stop(why);
                    }
                }
                if !matches!(row.state, State::Running(_)) && row.secs.len() < round + 1 {
                    row.secs.push(None);
                }
            }
        }
        self.rounds += rounds.rounds;
    }

    /// Ends every row's processes and makes the report. A row that does not end cleanly is
    /// reported with the error.
    pub fn finish(mut self) -> Report {
        for row in &mut self.rows {
            if !matches!(row.state, State::Running(_)) {
                continue;
            }
            if let State::Running(rig) = std::mem::replace(&mut row.state, State::Done) {
                if let Err(e) = rig.finish() {
                    row.state = State::Out(format!("did not end cleanly: {e:#}"));
                }
            }
        }
        Report::new(self)
    }
}

impl Row<'_> {
    /// Its rig, started, or why it is out.
    fn started(&mut self) -> State {
        let Some(start) = &mut self.start else {
            return State::Out("no way to start it".to_owned());
        };
        match start() {
            Ok(rig) => State::Running(rig),
            Err(e) => State::Out(format!("cannot start: {e:#}")),
        }
    }

    /// Finishes a running row's rig and starts it afresh, warmed up by one iteration; a
    /// row that does not end cleanly or start again is stopped.
    fn restart(&mut self) {
        let rig = match std::mem::replace(&mut self.state, State::Done) {
            State::Running(rig) => rig,
            other => {
                self.state = other;
                return;
            }
        };
        if let Err(e) = rig.finish() {
            self.state = State::Out(format!("did not end cleanly between blocks: {e:#}"));
            return;
        }
        self.state = self.started();
        if let Err(e) = self.batch(1) {
            self.stop(format!("failed after a fresh start: {e:#}"));
        }
    }

    /// Runs one batch of `iters` (on the pinned CPU if any); `None` if the row is out.
    fn batch(&mut self, iters: u64) -> anyhow::Result<Option<Duration>> {
        let State::Running(rig) = &mut self.state else {
            return Ok(None);
        };
        let Some(cpu) = self.pin else {
            return rig.run(iters).map(Some);
        };
        let before = affinity()?;
        pin(cpu)?;
        let took = rig.run(iters);
        restore(&before)?;
        took.map(Some)
    }

    /// Doubles the batch from one iteration until it takes a quarter of `target`, then
    /// scales it to `target`.
    fn size(&mut self, target: Duration) -> anyhow::Result<()> {
        let mut iters = 1u64;
        // A warm-up: the first batch may page in code and buffers.
        self.batch(1)?;
        loop {
            let Some(took) = self.batch(iters)? else {
                return Ok(());
            };
            if took >= target / 4 || iters >= 1 << 30 {
                let per = took.as_secs_f64() / iters as f64;
                self.iters = ((target.as_secs_f64() / per.max(1e-9)) as u64).max(1);
                return Ok(());
            }
            iters *= 2;
        }
    }

    fn stop(&mut self, why: String) {
        if let State::Running(rig) = std::mem::replace(&mut self.state, State::Out(why)) {
            // The error that stopped it is what the report says.
            let _ = rig.finish();
        }
    }
}

/// The median and the spread of a set of values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// The median.
    pub median: f64,
    /// The first quartile.
    pub q1: f64,
    /// The third quartile.
    pub q3: f64,
    /// The least value.
    pub min: f64,
    /// The greatest value.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`; `None` if there are none (or one is not a number).
    pub fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() || values.iter().any(|v| v.is_nan()) {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        // Linear interpolation between the closest ranks.
        let at = |p: f64| {
            let x = p * (v.len() - 1) as f64;
            let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
            v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
        };
        Some(Spread {
            median: at(0.5),
            q1: at(0.25),
            q3: at(0.75),
            min: v[0],
            max: v[v.len() - 1],
        })
    }

    /// Its IQR and range, as the reports print them: `(IQR 1.21–1.26, range 1.05–1.27)`.
    #[must_use]
    pub fn bounds(&self) -> String {
        format!(
            "(IQR {:.2}–{:.2}, range {:.2}–{:.2})",
            self.q1, self.q3, self.min, self.max
        )
    }

    /// The spread of the inverses of the values.
    #[must_use]
    pub fn inverse(self) -> Spread {
        Spread {
            median: 1.0 / self.median,
            q1: 1.0 / self.q3,
            q3: 1.0 / self.q1,
            min: 1.0 / self.max,
            max: 1.0 / self.min,
        }
    }
}

/// One row of a [`Report`].
#[derive(Debug, Clone, PartialEq)]
pub struct RowReport {
    /// The row's name.
    pub name: String,
    /// How it ran, if anything is to be said (pinned cores…).
    pub note: Option<String>,
    /// What it measured, or why it has no figure.
    pub outcome: Outcome,
    /// Its seconds per iteration in each round (`None` where it did not run).
    pub secs: Vec<Option<f64>>,
}

/// What a row of a [`Report`] measured.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Its figures.
    Measured {
        /// The median over the rounds of its figure ([`Figure`]'s unit: µs, GB/s, M/s, ns).
        value: f64,
        /// Its per-round time per iteration divided by the reference's in the same round:
        /// 1.0 is as fast, 2.0 twice as slow.
        ratio: Spread,
        /// How many rounds it ran.
        rounds: usize,
        /// Iterations per batch.
        iters: u64,
    },
    /// Not run, or stopped, and why.
    NotRun(String),
}

/// The result of a [`Paired`] group: its rows sorted by their median ratio, the rows
/// without a figure last.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The group's name.
    pub name: String,
    /// The rows' figure.
    pub figure: Figure,
    /// The reference of the ratios, if any row was measured.
    pub reference: Option<String>,
    /// How many rounds ran.
    pub rounds: usize,
    /// The rows, sorted.
    pub rows: Vec<RowReport>,
}

impl Report {
    fn new(group: Paired<'_>) -> Report {
        let Paired {
            name,
            figure,
            reference,
            rows,
            rounds,
        } = group;
        let median_secs = |r: &Row| {
            let s: Vec<f64> = r.secs.iter().flatten().copied().collect();
            Spread::of(&s).map(|s| s.median)
        };
        // The reference: the one asked for if it was measured, else the fastest row.
        let measured = |r: &&Row| matches!(r.state, State::Done) && median_secs(r).is_some();
        let chosen = reference
            .as_deref()
            .and_then(|want| rows.iter().filter(measured).find(|r| r.name == want))
            .or_else(|| {
                rows.iter().filter(measured).min_by(|a, b| {
                    f64::total_cmp(
                        &median_secs(a).unwrap_or(f64::INFINITY),
                        &median_secs(b).unwrap_or(f64::INFINITY),
                    )
                })
            });
        let base: Option<(String, Vec<Option<f64>>)> =
            chosen.map(|r| (r.name.clone(), r.secs.clone()));
        let mut out: Vec<RowReport> = rows
            .iter()
            .map(|r| {
                let outcome = match (&r.state, &base) {
                    (State::Out(why), _) => Outcome::NotRun(why.clone()),
                    (_, Some((_, base))) => {
                        let ratios: Vec<f64> = r
                            .secs
                            .iter()
                            .zip(base)
                            .filter_map(|(a, b)| Some(a.as_ref()? / b.as_ref()?))
                            .collect();
                        match (Spread::of(&ratios), median_secs(r)) {
                            (Some(ratio), Some(secs)) => Outcome::Measured {
                                value: figure.value(secs),
                                ratio,
                                rounds: ratios.len(),
                                iters: r.iters,
                            },
                            _ => Outcome::NotRun("no round measured".to_owned()),
                        }
                    }
                    (_, None) => Outcome::NotRun("no round measured".to_owned()),
                };
                RowReport {
                    name: r.name.clone(),
                    note: r.note.clone(),
                    outcome,
                    secs: r.secs.clone(),
                }
            })
            .collect();
        let key = |r: &RowReport| match r.outcome {
            Outcome::Measured { ratio, .. } => ratio.median,
            Outcome::NotRun(_) => f64::INFINITY,
        };
        out.sort_by(|a, b| f64::total_cmp(&key(a), &key(b)));
        Report {
            name,
            figure,
            reference: base.map(|(n, _)| n),
            rounds,
            rows: out,
        }
    }

    /// The report as text lines: per row its median figure and its ratio to the reference
    /// (median, IQR, min–max).
    pub fn text(&self) -> String {
        let mut s = format!(
            "{}: {} rounds, ratios of time per iteration to {} (1.00× = as fast)\n",
            self.name,
            self.rounds,
            self.reference.as_deref().unwrap_or("(none)")
        );
        let width = self.rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
        for r in &self.rows {
            let _ = match &r.outcome {
                Outcome::Measured { value, ratio, .. } => write!(
                    s,
                    "  {:width$}  {:>8} {:<7}  {:>7.2}×  IQR {:.2}–{:.2}  range {:.2}–{:.2}",
                    r.name,
                    three_digits(*value),
                    unit(self.figure),
                    ratio.median,
                    ratio.q1,
                    ratio.q3,
                    ratio.min,
                    ratio.max,
                ),
                Outcome::NotRun(why) => write!(s, "  {:width$}  not run: {why}", r.name),
            };
            if let Some(note) = &r.note {
                let _ = write!(s, "  ({note})");
            }
            s.push('\n');
        }
        s
    }

    /// Prints [`text`](Report::text) to standard output.
    pub fn print(&self) {
        print!("{}", self.text());
    }

    /// The spread over the rounds of row `a`'s time per iteration divided by row `b`'s in
    /// the same round, if both were measured in some round.
    pub fn between(&self, a: &str, b: &str) -> Option<Spread> {
        let secs = |name: &str| {
            self.rows
                .iter()
                .find(|r| r.name == name && matches!(r.outcome, Outcome::Measured { .. }))
                .map(|r| &r.secs)
        };
        let ratios: Vec<f64> = secs(a)?
            .iter()
            .zip(secs(b)?)
            .filter_map(|(x, y)| Some(x.as_ref()? / y.as_ref()?))
            .collect();
        Spread::of(&ratios)
    }

    /// The median figure of row `row`, if it was measured.
    pub fn value(&self, row: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.name == row)
            .and_then(|r| match r.outcome {
                Outcome::Measured { value, .. } => Some(value),
                Outcome::NotRun(_) => None,
            })
    }

    /// The line comparing row `ours` with its `floors` (the ratio is ours/raw of the
    /// figure) and the `peers` (how many times faster or slower ours is), each the median
    /// of the per-round ratios with their IQR and range; rows not measured are left out;
    /// `None` if `ours` was not.
    pub fn ratio_line(&self, ours: &str, floors: &[&str], peers: &[&str]) -> Option<String> {
        let f = self.figure;
        let our = self.value(ours)?;
        let mut line = format!(
            "{} (paired, {} rounds): {ours} {} {}",
            self.name,
            self.rounds,
            three_digits(our),
            unit(f)
        );
        // Per-round ratios of times, turned into ratios of the figure.
        let of_figure = |s: Spread| match f {
            Figure::RoundTrip | Figure::Operation => s,
            Figure::Bandwidth(_) | Figure::Rate => s.inverse(),
        };
        let mut first = true;
        for &row in floors {
            let (Some(v), Some(s)) = (self.value(row), self.between(ours, row)) else {
                continue;
            };
            let s = of_figure(s);
            let _ = write!(
                line,
                "{} {row} {} → {ours}/raw = {:.2}× {}",
                if first { "," } else { ";" },
                three_digits(v),
                s.median,
                s.bounds()
            );
            first = false;
        }
        for &row in peers {
            let (Some(v), Some(s)) = (self.value(row), self.between(row, ours)) else {
                continue;
            };
            // Their time over ours: how many times faster ours is.
            let (s, word) = if s.median >= 1.0 {
                (s, "faster")
            } else {
                (s.inverse(), "slower")
            };
            let _ = write!(
                line,
                "; {row} {} → {ours} is {:.2}× {word} {}",
                three_digits(v),
                s.median,
                s.bounds()
            );
        }
        Some(line)
    }

    /// The median ratio of row `row`, if it was measured.
    pub fn ratio(&self, row: &str) -> Option<Spread> {
        self.rows
            .iter()
            .find(|r| r.name == row)
            .and_then(|r| match r.outcome {
                Outcome::Measured { ratio, .. } => Some(ratio),
                Outcome::NotRun(_) => None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row that "takes" `per` per iteration, times `slow` in the rounds it is told.
    struct Fake {
        per: Duration,
        runs: u32,
        slow_every: u32,
    }

    impl Rig for Fake {
        fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
            self.runs += 1;
            let k = if self.slow_every > 0 && self.runs % self.slow_every == 0 {
                3
            } else {
                1
            };
            Ok(self.per * (iters as u32) * k)
        }

        fn finish(self) -> anyhow::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn three_significant_digits() {
        assert_eq!(three_digits(0.02034), "0.0203");
        assert_eq!(three_digits(0.294), "0.294");
        assert_eq!(three_digits(4.071), "4.07");
        assert_eq!(three_digits(46.71), "46.7");
        assert_eq!(three_digits(1169.2), "1169");
    }

    #[test]
    fn spread_of_known_values() {
        let s = Spread::of(&[4.0, 1.0, 3.0, 2.0, 5.0]).unwrap();
        assert_eq!(
            (s.median, s.q1, s.q3, s.min, s.max),
            (3.0, 2.0, 4.0, 1.0, 5.0)
        );
        assert_eq!(Spread::of(&[]), None);
    }

    #[test]
    fn ratios_are_per_round_and_rows_sorted() {
        let mut g = Paired::new("t", Figure::RoundTrip).reference("floor");
        g.row("slow", || {
            Ok(Fake {
                per: Duration::from_micros(30),
                runs: 0,
                slow_every: 0,
            })
        });
        g.row("floor", || {
            Ok(Fake {
                per: Duration::from_micros(10),
                runs: 0,
                slow_every: 0,
            })
        });
        g.row("broken", || -> anyhow::Result<Fake> {
            bail!("no such thing")
        });
        g.skip("absent", "not found");
        g.run(Rounds {
            rounds: 5,
            batch: Duration::from_millis(1),
            blocks: 1,
        });
        let r = g.finish();
        assert_eq!(r.reference.as_deref(), Some("floor"));
        let names: Vec<&str> = r.rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(&names[..2], ["floor", "slow"]);
        let slow = r.ratio("slow").unwrap();
        assert!((slow.median - 3.0).abs() < 1e-9, "{slow:?}");
        // The rows without a figure last, in the order they were added.
        assert_eq!(
            r.rows[2].outcome,
            Outcome::NotRun("cannot start: no such thing".to_owned())
        );
        assert_eq!(r.rows[3].outcome, Outcome::NotRun("not found".to_owned()));
        let text = r.text();
        assert!(text.contains("3.00×"), "{text}");
        assert_eq!(
            r.ratio_line("slow", &["floor"], &["floor"]).unwrap(),
            "t (paired, 5 rounds): slow 30.0 µs/RTT, floor 10.0 → slow/raw = 3.00× (IQR \
             3.00–3.00, range 3.00–3.00); floor 10.0 → slow is 3.00× slower (IQR 3.00–3.00, \
             range 3.00–3.00)"
        );
        assert!(text.contains("not run: not found"), "{text}");
    }

    #[test]
    fn a_disturbance_spreads_the_ratios_but_not_their_median() {
        let mut g = Paired::new("t", Figure::Rate);
        for (name, slow_every) in [("a", 0), ("b", 4)] {
            g.row(name, move || {
                Ok(Fake {
                    per: Duration::from_micros(10),
                    runs: 0,
                    slow_every,
                })
            });
        }
        g.run(Rounds {
            rounds: 9,
            batch: Duration::from_millis(1),
            blocks: 1,
        });
        let r = g.finish();
        let b = r.ratio("b").unwrap();
        assert!((b.median - 1.0).abs() < 1e-9, "{b:?}");
        assert!((b.max - 3.0).abs() < 1e-9, "{b:?}");
    }

    #[test]
    fn each_block_runs_against_a_fresh_start() {
        let starts = std::cell::Cell::new(0);
        let mut g = Paired::new("t", Figure::RoundTrip);
        g.row("fresh", || {
            starts.set(starts.get() + 1);
            Ok(Fake {
                per: Duration::from_micros(10),
                runs: 0,
                slow_every: 0,
            })
        });
        let mut failing = 0;
        g.row("once", move || {
            failing += 1;
            if failing > 1 {
                bail!("gone");
            }
            Ok(Fake {
                per: Duration::from_micros(10),
                runs: 0,
                slow_every: 0,
            })
        });
        g.run(Rounds {
            rounds: 8,
            batch: Duration::from_millis(1),
            blocks: 4,
        });
        let r = g.finish();
        assert_eq!(starts.get(), 4);
        assert_eq!(r.rounds, 8);
        let once = r.rows.iter().find(|r| r.name == "once").unwrap();
        assert_eq!(
            once.outcome,
            Outcome::NotRun("cannot start: gone".to_owned())
        );
        // It ran the two rounds of the first block, and no more.
        assert_eq!(once.secs.iter().flatten().count(), 2);
    }

    #[test]
    fn a_thread_started_on_one_cpu_gets_every_cpu_back() {
        let all = original_cpus().unwrap();
        let cpus = |set: &CpuSet| {
            (0..CpuSet::count())
                .filter(|&c| set.is_set(c).unwrap_or(false))
                .count()
        };
        if cpus(&all) < 2 {
            return;
        }
        let pinned = OneCpu::pin().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let here = || nix::sched::sched_getaffinity(Pid::from_raw(0)).unwrap();
            tx.send(here()).unwrap();
            wait.recv().unwrap();
            tx.send(here()).unwrap();
        });
        assert_eq!(cpus(&rx.recv().unwrap()), 1);
        drop(pinned);
        go.send(()).unwrap();
        assert_eq!(cpus(&rx.recv().unwrap()), cpus(&all));
        t.join().unwrap();
    }
}
