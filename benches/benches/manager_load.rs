//! `manager_load`: many clients and watchers on one manager at once.
//!
//! 32 client processes each make 10 000 mixed calls on one manager server (a child
//! process, `Manager::start`, a Unix socket), as fast as they can, all starting together
//! at a barrier; 8 watcher processes watch the dict and the list being changed. The mix,
//! by call: 25 % `Dict::get`, 15 % `Dict::insert` (of a timestamp), 20 % `Dict::incr` (one
//! shared key), 10 % `List::push` (of a timestamp), 10 % `List::len`, 10 % a `Lock`
//! acquired and released, 10 % a `Queue` put then get (a pair is one call of the mix,
//! timed as one).
//!
//! Every call must be served: no client call fails, the shared key holds every `incr`, the
//! list every push, the queue ends empty. It prints the throughput (calls over the span
//! from the first client's start to the last one's end), the latency percentiles p50,
//! p99, p99.9 and the largest (every call's latency, measured in the clients), by kind
//! of call too, and for the watchers the changes each received, how often one fell
//! behind (`Lagged`, with how many changes it was not sent), and the delivery lag (from a
//! client's timestamp in a change to its receipt by a watcher). Target: p99.9 ≤ 100 ms.
//!
//! Not a criterion bench: the workload is fixed and its figures are percentiles.
//!
//! ```text
//! cargo bench -p ipckit-benches --bench manager_load
//! ```
//!
//! Without `--bench` (as `cargo test --benches` runs it) it makes a small run, 4 clients
//! × 200 calls and 2 watchers, with the same checks.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, ensure};
use ipckit_manager::{Change, Event, Manager, Value};
use serde::{Deserialize, Serialize};

/// How long any wait may take before the run fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// The kinds of call of the mix, in the order of [`MIX`]'s entries.
const KINDS: [&str; 7] = [
    "dict get",
    "dict insert",
    "dict incr",
    "list push",
    "list len",
    "lock acquire+release",
    "queue put+get",
];

/// One cycle of 20 calls: indices into [`KINDS`] (25 %, 15 %, 20 %, 10 %, 10 %, 10 %, 10 %).
const MIX: [usize; 20] = [0, 2, 1, 0, 3, 2, 5, 0, 4, 6, 1, 2, 0, 3, 1, 5, 2, 0, 4, 6];

/// How many keys `Dict::get` reads (inserted before the run).
const KEYS: u32 = 64;

/// The object names.
const DICT: &str = "load:dict";
const LIST: &str = "load:list";
const LOCK: &str = "load:lock";
const QUEUE: &str = "load:queue";
const START: &str = "load:start";
/// The dict key that every `incr` adds to, and the one that tells the watchers to stop.
const HITS: &str = "hits";
const STOP: &str = "stop";

/// Nanoseconds of the wall clock: the same clock in every process.
fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[derive(Serialize, Deserialize)]
struct ClientArgs {
    addr: String,
    me: u32,
    calls: u32,
    parties: u64,
}

/// What a client did.
#[derive(Serialize, Deserialize)]
struct ClientReport {
    /// Each call's latency in ns, and its kind.
    calls: Vec<(u8, u64)>,
    started_ns: i64,
    ended_ns: i64,
}

fn client(a: ClientArgs) -> Result<ClientReport, String> {
    run_client(&a).map_err(|e| format!("client {}: {e:#}", a.me))
}

fn run_client(a: &ClientArgs) -> anyhow::Result<ClientReport> {
    let m = Manager::connect(&a.addr.parse()?, None)?;
    let d = m.dict::<String, i64>(DICT)?.with_timeout(PATIENCE);
    let l = m.list::<i64>(LIST)?.with_timeout(PATIENCE);
    let lock = m.lock(LOCK)?.with_timeout(PATIENCE);
    let q = m.queue::<i64>(QUEUE)?.with_timeout(PATIENCE);
    let mine = format!("t{}", a.me);
    let keys: Vec<String> = (0..KEYS).map(|k| format!("k{k}")).collect();
    let hits = HITS.to_string();
    let mut calls = Vec::with_capacity(a.calls as usize);
    m.barrier(START, a.parties)?.wait_timeout(PATIENCE)?;
    let started_ns = now_ns();
    for i in 0..a.calls {
        let kind = MIX[(i as usize + a.me as usize) % MIX.len()];
        let began = Instant::now();
        match kind {
            0 => {
                let k = &keys[(i % KEYS) as usize];
                ensure!(d.get(k)?.is_some(), "key {k} missing");
            }
            1 => {
                d.insert(&mine, &now_ns())?;
            }
            2 => {
                d.incr(&hits, 1)?;
            }
            3 => {
                l.push(&now_ns())?;
            }
            4 => {
                l.len()?;
            }
            5 => drop(lock.acquire()?),
            _ => {
                q.put(&i64::from(i))?;
                q.get()?;
            }
        }
        let took = began.elapsed();
        calls.push((
            kind as u8,
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
        ));
    }
    Ok(ClientReport {
        calls,
        started_ns,
        ended_ns: now_ns(),
    })
}

/// What a watcher of one object saw.
#[derive(Default, Serialize, Deserialize)]
struct Seen {
    events: u64,
    lagged: u64,
    missed: u64,
    /// Delivery lag of each timestamped change, µs.
    lags_us: Vec<u32>,
}

impl Seen {
    fn timestamped(&mut self, t: &Value) {
        if let Value::Int(t) = t {
            if *t > 0 {
                let lag = (now_ns() - t).max(0) / 1000;
                self.lags_us.push(u32::try_from(lag).unwrap_or(u32::MAX));
            }
        }
    }
}

fn watcher((addr, parties): (String, u64)) -> Result<(Seen, Seen), String> {
    run_watcher(&addr, parties).map_err(|e| format!("watcher: {e:#}"))
}

fn run_watcher(addr: &str, parties: u64) -> anyhow::Result<(Seen, Seen)> {
    let m = Manager::connect(&addr.parse()?, None)?;
    let mut dw = m.dict::<String, i64>(DICT)?.watch()?;
    let mut lw = m.list::<i64>(LIST)?.watch()?;
    m.barrier(START, parties)?.wait_timeout(PATIENCE)?;
    let list = std::thread::spawn(move || -> anyhow::Result<Seen> {
        let mut seen = Seen::default();
        loop {
            match lw.recv_timeout(PATIENCE)? {
                Event::Changed { change, .. } => {
                    seen.events += 1;
                    if let Change::Inserted { value, .. } = change {
                        if value == Value::Int(-1) {
                            return Ok(seen);
                        }
                        seen.timestamped(&value);
                    }
                }
                Event::Lagged {
                    missed, snapshot, ..
                } => {
                    seen.lagged += 1;
                    seen.missed += missed;
                    if let Value::List(items) = snapshot {
                        if items.last() == Some(&Value::Int(-1)) {
                            return Ok(seen);
                        }
                    }
                }
            }
        }
    });
    let mut seen = Seen::default();
    let stop = Value::Str(STOP.into());
    loop {
        match dw.recv_timeout(PATIENCE)? {
            Event::Changed { change, .. } => {
                seen.events += 1;
                if let Change::Set { key, value } = change {
                    if key == stop {
                        break;
                    }
                    if matches!(&key, Value::Str(k) if k.starts_with('t')) {
                        seen.timestamped(&value);
                    }
                }
            }
            Event::Lagged {
                missed, snapshot, ..
            } => {
                seen.lagged += 1;
                seen.missed += missed;
                if let Value::Map(pairs) = snapshot {
                    if pairs.iter().any(|(k, _)| *k == stop) {
                        break;
                    }
                }
            }
        }
    }
    let list = list
        .join()
        .map_err(|_| anyhow::anyhow!("the list watcher panicked"))??;
    Ok((seen, list))
}

/// The `p`-th percentile of sorted `v`.
fn pct<T: Copy + Default>(v: &[T], p: f64) -> T {
    if v.is_empty() {
        return T::default();
    }
    let at = ((v.len() as f64 * p / 100.0).ceil() as usize).clamp(1, v.len());
    v[at - 1]
}

fn us(ns: u64) -> String {
    let us = ns as f64 / 1e3;
    if us >= 1000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn main() -> anyhow::Result<()> {
    ipckit_core::enter(&[]);
    let full = std::env::args().any(|a| a == "--bench");
    let (clients, calls, watchers) = if full { (32, 10_000, 8) } else { (4, 200, 2) };
    let parties = u64::from(clients + watchers + 1);
    let name = "manager_load";

    let m = Manager::start()?;
    let addr = m.address().to_string();
    let d = m.dict::<String, i64>(DICT)?;
    for k in 0..KEYS {
        d.insert(&format!("k{k}"), &i64::from(k))?;
    }
    let l = m.list::<i64>(LIST)?;
    m.lock(LOCK)?;
    let q = m.queue::<i64>(QUEUE)?;
    let start = m.barrier(START, parties)?;

    let mut ws = (0..watchers)
        .map(|_| ipckit_core::spawn((addr.clone(), parties), watcher))
        .collect::<Result<Vec<_>, _>>()?;
    let mut cs = (0..clients)
        .map(|me| {
            let a = ClientArgs {
                addr: addr.clone(),
                me,
                calls,
                parties,
            };
            ipckit_core::spawn(a, client)
        })
        .collect::<Result<Vec<_>, _>>()?;
    start.wait_timeout(PATIENCE)?;
    let began = Instant::now();
    let mut reports = Vec::new();
    for c in &mut cs {
        reports.push(c.join_timeout(PATIENCE * 5)?.map_err(anyhow::Error::msg)?);
    }
    let wall = began.elapsed();
    // Tell the watchers to stop, through the objects they watch.
    d.insert(&STOP.to_string(), &1)?;
    l.push(&-1)?;
    let mut seen = Vec::new();
    for w in &mut ws {
        seen.push(w.join_timeout(PATIENCE)?.map_err(anyhow::Error::msg)?);
    }

    // Every call served.
    let mut by_kind = vec![Vec::new(); KINDS.len()];
    for r in &reports {
        ensure!(r.calls.len() == calls as usize, "a client made fewer calls");
        for &(k, ns) in &r.calls {
            by_kind[k as usize].push(ns);
        }
    }
    let count = |k: usize| by_kind[k].len() as i64;
    let hits = d.get(&HITS.to_string())?.unwrap_or(0);
    ensure!(
        hits == count(2),
        "{} incr calls, the key holds {hits}",
        count(2)
    );
    let pushed = l.len()? as i64 - 1;
    ensure!(
        pushed == count(3),
        "{} pushes, the list holds {pushed}",
        count(3)
    );
    ensure!(q.len()? == 0, "the queue is not empty");

    let total: usize = by_kind.iter().map(Vec::len).sum();
    let first = reports
        .iter()
        .map(|r| r.started_ns)
        .min()
        .context("no client")?;
    let last = reports
        .iter()
        .map(|r| r.ended_ns)
        .max()
        .context("no client")?;
    let span = Duration::from_nanos(u64::try_from(last - first).unwrap_or(0));
    let mut all: Vec<u64> = by_kind.iter().flatten().copied().collect();
    all.sort_unstable();
    let mix: Vec<String> = KINDS
        .iter()
        .enumerate()
        .map(|(k, n)| {
            let share = MIX.iter().filter(|&&m| m == k).count() * 100 / MIX.len();
            format!("{share} % {n}")
        })
        .collect();
    println!(
        "{name}: {clients} client processes × {calls} calls ({}), {watchers} watcher processes on the dict and the list",
        mix.join(", ")
    );
    println!(
        "{name}: {total} calls, all served, in {:.2} s: {:.1} k calls/s (first start to last end; {:.2} s barrier to last join)",
        span.as_secs_f64(),
        total as f64 / span.as_secs_f64() / 1e3,
        wall.as_secs_f64()
    );
    let p999 = pct(&all, 99.9);
    println!(
        "{name}: latency p50 {}, p99 {}, p99.9 {}, max {}",
        us(pct(&all, 50.0)),
        us(pct(&all, 99.0)),
        us(p999),
        us(*all.last().unwrap_or(&0))
    );
    let verdict = if p999 <= 100_000_000 { "met" } else { "missed" };
    println!("{name}: target p99.9 ≤ 100 ms: {verdict}");
    for (k, mut v) in by_kind.into_iter().enumerate() {
        v.sort_unstable();
        println!(
            "{name}:   {:<22} {:>7} calls  p50 {:>8}  p99 {:>8}  p99.9 {:>8}  max {:>8}",
            KINDS[k],
            v.len(),
            us(pct(&v, 50.0)),
            us(pct(&v, 99.0)),
            us(pct(&v, 99.9)),
            us(*v.last().unwrap_or(&0))
        );
    }
    for (what, pick) in [("dict", 0), ("list", 1)] {
        let per: Vec<&Seen> = seen
            .iter()
            .map(|s| if pick == 0 { &s.0 } else { &s.1 })
            .collect();
        let events: Vec<u64> = per.iter().map(|s| s.events).collect();
        let lagged: u64 = per.iter().map(|s| s.lagged).sum();
        let missed: u64 = per.iter().map(|s| s.missed).sum();
        let mut lags: Vec<u32> = per.iter().flat_map(|s| s.lags_us.iter().copied()).collect();
        lags.sort_unstable();
        println!(
            "{name}: {what} watchers: {}–{} changes received each, fell behind {lagged} times ({missed} changes not sent, a snapshot instead); delivery lag p50 {}, p99 {}, max {}",
            events.iter().min().unwrap_or(&0),
            events.iter().max().unwrap_or(&0),
            us(u64::from(pct(&lags, 50.0)) * 1000),
            us(u64::from(pct(&lags, 99.0)) * 1000),
            us(u64::from(*lags.last().unwrap_or(&0)) * 1000)
        );
    }
    Ok(())
}
