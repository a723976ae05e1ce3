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
//! Every row is measured by criterion, then all of them again in paired rounds (one batch
//! of each row per round, whole maps per batch), Python's rows included: they run in
//! processes of `benches/scripts/pool.py` that answer the same batch orders.
//!
//! ```text
//! cargo bench -p ipckit-benches --bench pool -- --warm-up-time 1 --measurement-time 3
//! ```

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::ensure;
use criterion::Criterion;
use ipckit_benches::{Figure, Group, PATIENCE, PythonRow, Rig};
use ipckit_pool::{Pool, PoolOptions};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de::DeserializeOwned};

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

/// One spawn and join of `trivial` per iteration.
struct SpawnRig;

impl Rig for SpawnRig {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
        let start = Instant::now();
        for i in 0..iters {
            let mut child = ipckit_core::spawn(i, trivial)?;
            ensure!(child.join()? == i + 1, "a wrong result");
        }
        Ok(start.elapsed())
    }

    fn finish(self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// One fork+exec+waitpid of this executable, which exits at once, per iteration.
struct ForkExecRig(PathBuf);

impl Rig for ForkExecRig {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
        let start = Instant::now();
        for _ in 0..iters {
            let status = Command::new(&self.0).env(EXIT_AT_ONCE, "1").status()?;
            ensure!(status.success(), "the child ended with {status}");
        }
        Ok(start.elapsed())
    }

    fn finish(self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Whole maps of `tasks` tasks through a pool, each map `per_map` iterations (a task or
/// the whole map); a batch runs the maps covering its iterations and counts their time
/// per iteration.
struct MapRig<R> {
    pool: Pool<u64, R>,
    tasks: u64,
    per_map: u64,
    check: fn(&[R]) -> bool,
}

impl<R: Serialize + DeserializeOwned + 'static> Rig for MapRig<R> {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
        let maps = iters.div_ceil(self.per_map).max(1);
        let start = Instant::now();
        for _ in 0..maps {
            let out = self.pool.map(0..self.tasks)?;
            ensure!((self.check)(&out), "a wrong result");
        }
        Ok(start
            .elapsed()
            .mul_f64(iters as f64 / (maps * self.per_map) as f64))
    }

    fn finish(self) -> anyhow::Result<()> {
        Ok(self.pool.join()?)
    }
}

/// Python's rows `rows` (`benches/scripts/pool.py`), if a Python 3.8+ is found.
fn python_rows(g: &mut Group, rows: &[&'static str]) -> anyhow::Result<()> {
    let Some(py) = ipckit_testkit::find_python(8..=13) else {
        println!("no Python 3.8+ found; Python's rows are left out");
        return Ok(());
    };
    for &row in rows {
        let py = py.clone();
        g.row(row, move || {
            PythonRow::script("scripts/pool.py", &py, &[row])
        })?;
    }
    Ok(())
}

fn spawn_join(c: &mut Criterion) -> anyhow::Result<()> {
    let mut g = Group::new(c, "spawn_join", Figure::RoundTrip);
    g.row("ipckit", || Ok(SpawnRig))?;
    g.row("raw_fork_exec", || {
        Ok(ForkExecRig(std::env::current_exe()?))
    })?;
    python_rows(&mut g, &["python_process"])?;
    g.finish(&[("ipckit", &["raw_fork_exec"])], &["python_process"]);
    Ok(())
}

fn pool_map_10k(c: &mut Criterion) -> anyhow::Result<()> {
    let name = "pool_map_10k";
    let opts = PoolOptions::new(4).task_timeout(PATIENCE);
    let map = |opts: PoolOptions| -> anyhow::Result<MapRig<u64>> {
        Ok(MapRig {
            pool: Pool::new(opts, trivial)?,
            tasks: TASKS,
            per_map: TASKS,
            check: |out| out.len() == TASKS as usize && out[9] == 10,
        })
    };
    let mut g = Group::new(c, name, Figure::Rate);
    g.row("ipckit_chunk1", || map(opts.clone().chunk_size(1)))?;
    g.row("ipckit_batched", || map(opts.clone()))?;
    let peers = [
        "python_pool_chunk1",
        "python_pool_default",
        "python_executor",
    ];
    python_rows(&mut g, &peers)?;
    let report = g.finish(&[("ipckit_chunk1", &[]), ("ipckit_batched", &[])], &peers);
    if let Some(times) = report.and_then(|r| r.between("python_pool_chunk1", "ipckit_chunk1")) {
        let verdict = if times.median >= 20.0 {
            "met"
        } else {
            "missed"
        };
        println!(
            "{name}: target ipckit_chunk1 ≥ 20× python_pool_chunk1: {:.1}× {verdict}",
            times.median
        );
    }
    Ok(())
}

fn pool_map_1mib(c: &mut Criterion) -> anyhow::Result<()> {
    let mut g = Group::new(
        c,
        "pool_map_1MiB",
        Figure::Bandwidth(BIG_TASKS * MIB as u64),
    );
    g.row("ipckit", || {
        Ok(MapRig {
            pool: Pool::new(PoolOptions::new(4).task_timeout(PATIENCE), one_mib)?,
            tasks: BIG_TASKS,
            per_map: 1,
            check: |out| out.len() == BIG_TASKS as usize && out[99].0.len() == MIB,
        })
    })?;
    python_rows(&mut g, &["python_pool"])?;
    g.finish(&[("ipckit", &[])], &["python_pool"]);
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
