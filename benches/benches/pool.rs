//! Process and pool workloads: `spawn_join`, `pool_map_10k` and `pool_map_1MiB`.
//!
//! - `spawn_join`: run a trivial function in a child process and join its result
//!   (`ipckit_core::spawn`); floor: a raw fork+exec+waitpid of this same executable told by
//!   an environment variable to exit at once; peer: Python's `Process(...).start(); join()`
//!   with the spawn method.
//! - `pool_map_10k`: map a trivial function over 10 000 integers with 4 workers, one task
//!   per dispatch (`chunk1`) and in Python's chunks (`batched`); figure: tasks per second.
//!   Peers: Python's `Pool(4).map` with `chunksize=1` and with its default chunks, and
//!   `ProcessPoolExecutor(4).map`.
//! - `pool_map_1MiB`: 100 tasks each returning 1 MiB, with 4 workers; figure: GB/s of
//!   results. Peer: Python's `Pool(4).map`.
//!
//! Python's rows run in the same bench run, from `benches/scripts/pool.py`, each for about
//! as long as a criterion row measures, and their figures join the ratio lines.
//!
//! ```text
//! cargo bench -p ipckit-benches --bench pool -- --warm-up-time 1 --measurement-time 3
//! ```

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use criterion::{Criterion, Throughput};
use ipckit_benches::{Figure, PATIENCE, print_ratios, record};
use ipckit_pool::{Pool, PoolOptions};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Set for the floor's child: exit as soon as `main` starts.
const EXIT_AT_ONCE: &str = "IPCKIT_BENCH_EXIT_AT_ONCE";
const TASKS: u64 = 10_000;
const MIB: usize = 1 << 20;
const BIG_TASKS: u64 = 100;

fn trivial(x: u64) -> u64 {
    x + 1
}

/// Bytes that serde moves as one block (as `serde_bytes` does), as Python's `bytes`.
#[derive(Debug)]
struct Blob(Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Blob;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(v))
            }
        }
        d.deserialize_bytes(V)
    }
}

fn one_mib(_: u64) -> Blob {
    Blob(vec![7; MIB])
}

/// The measurement time criterion was given (`--measurement-time S`), 5 s by default.
fn budget() -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--measurement-time")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0)
}

/// Whether criterion is benchmarking (not in its one-iteration test mode).
fn benchmarking() -> bool {
    let flag = |f: &str| std::env::args().any(|a| a == f);
    flag("--bench") && !flag("--test")
}

/// Runs Python's rows of `group` and records them; says so if there is no Python.
fn python_rows(group: &'static str) -> anyhow::Result<()> {
    if !benchmarking() {
        return Ok(());
    }
    let Some(py) = ipckit_testkit::find_python(8..=13) else {
        println!("{group}: no Python 3.8+ found; Python's rows are left out");
        return Ok(());
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/pool.py");
    let secs = budget();
    let out = ipckit_testkit::Bounded::start(
        Command::new(&py)
            .arg(&script)
            .arg(group)
            .arg(secs.to_string()),
    )?
    .wait_within(Duration::from_secs_f64(secs * 5.0 + 60.0))?;
    ensure!(
        out.status.success(),
        "{} {group} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut words = line.split_whitespace();
        let (Some(row), Some(secs), Some(count)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        let row: &'static str = Box::leak(row.to_string().into_boxed_str());
        let secs: f64 = secs.parse().context("seconds")?;
        let count: u64 = count.parse().context("count")?;
        record(group, row, Duration::from_secs_f64(secs), count);
    }
    Ok(())
}

fn spawn_join(c: &mut Criterion) -> anyhow::Result<()> {
    let group = "spawn_join";
    let mut g = c.benchmark_group(group);
    g.bench_function("ipckit", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                let mut child = ipckit_core::spawn(i, trivial).expect("spawn");
                assert_eq!(child.join().expect("join"), i + 1);
            }
            record(group, "ipckit", start.elapsed(), iters)
        });
    });
    g.bench_function("raw_fork_exec", |b| {
        let exe = std::env::current_exe().expect("this executable");
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let status = Command::new(&exe)
                    .env(EXIT_AT_ONCE, "1")
                    .status()
                    .expect("fork+exec");
                assert!(status.success());
            }
            record(group, "raw_fork_exec", start.elapsed(), iters)
        });
    });
    g.finish();
    python_rows(group)?;
    if benchmarking() {
        print_ratios(
            group,
            Figure::RoundTrip,
            "ipckit",
            &["raw_fork_exec"],
            &["python_process"],
        );
    }
    Ok(())
}

fn map_row<R>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    group: &'static str,
    row: &'static str,
    pool: &Pool<u64, R>,
    tasks: u64,
    per_iter: u64,
    check: impl Fn(&[R]),
) where
    R: Serialize + serde::de::DeserializeOwned + 'static,
{
    g.bench_function(row, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let out = pool.map(0..tasks).expect("map");
                check(&out);
            }
            record(group, row, start.elapsed(), iters * per_iter)
        });
    });
}

fn pool_map_10k(c: &mut Criterion) -> anyhow::Result<()> {
    let group = "pool_map_10k";
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(TASKS));
    let check = |out: &[u64]| assert!(out.len() == TASKS as usize && out[9] == 10);
    let opts = PoolOptions::new(4).task_timeout(PATIENCE);
    let pool = Pool::new(opts.clone().chunk_size(1), trivial)?;
    map_row(&mut g, group, "ipckit_chunk1", &pool, TASKS, TASKS, check);
    pool.join()?;
    let pool = Pool::new(opts, trivial)?;
    map_row(&mut g, group, "ipckit_batched", &pool, TASKS, TASKS, check);
    pool.join()?;
    g.finish();
    python_rows(group)?;
    if benchmarking() {
        let peers = [
            "python_pool_chunk1",
            "python_pool_default",
            "python_executor",
        ];
        print_ratios(group, Figure::Rate, "ipckit_chunk1", &[], &peers);
        print_ratios(group, Figure::Rate, "ipckit_batched", &[], &peers);
    }
    Ok(())
}

fn pool_map_1mib(c: &mut Criterion) -> anyhow::Result<()> {
    let group = "pool_map_1MiB";
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Bytes(BIG_TASKS * MIB as u64));
    g.sampling_mode(criterion::SamplingMode::Flat);
    g.sample_size(10);
    let pool = Pool::new(PoolOptions::new(4).task_timeout(PATIENCE), one_mib)?;
    map_row(&mut g, group, "ipckit", &pool, BIG_TASKS, 1, |out| {
        assert!(out.len() == BIG_TASKS as usize && out[99].0.len() == MIB);
    });
    pool.join()?;
    g.finish();
    python_rows(group)?;
    if benchmarking() {
        let bytes = BIG_TASKS * MIB as u64;
        print_ratios(
            group,
            Figure::Bandwidth(bytes),
            "ipckit",
            &[],
            &["python_pool"],
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    if std::env::var_os(EXIT_AT_ONCE).is_some() {
        return Ok(());
    }
    ipckit_core::enter(&[]);
    let mut c = Criterion::default().configure_from_args();
    spawn_join(&mut c)?;
    pool_map_10k(&mut c)?;
    pool_map_1mib(&mut c)?;
    c.final_summary();
    Ok(())
}
