//! The `workers` scenario: a pool of three worker processes squares ten numbers, as the
//! Python tutorial's `Pool` example. With `--kill-one` the boss SIGKILLs a worker in the
//! middle of a task; a worker killed from another terminal (`kill -9 PID`) gets the same
//! treatment: the pool notices at once, starts a replacement, and runs the task again, so
//! each task is still done exactly once in the final tally.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure};
use ipckit_pool::{Event, Pool, PoolOptions};
use serde::{Deserialize, Serialize};

use crate::support::{PATIENCE, expect_same};

const WORKERS: usize = 3;
const TASKS: u64 = 10;
/// The task the boss interrupts with `--kill-one`.
const VICTIM: u64 = 5;

/// A task: square `n`, taking `secs` about it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Task {
    n: u64,
    secs: f64,
}

/// A task's result: the square, and the process that worked it out.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Done {
    n: u64,
    square: u64,
    pid: u32,
}

/// What a worker runs for each task.
fn square(task: Task) -> Done {
    let pid = std::process::id();
    println!("⚙️ Process {pid}: processing Task {}", task.n);
    std::thread::sleep(Duration::from_secs_f64(task.secs));
    Done {
        n: task.n,
        square: task.n * task.n,
        pid,
    }
}

/// Worker numbers by process id, and the deaths seen, as the pool's events tell them.
#[derive(Debug, Default)]
struct Log {
    numbers: BTreeMap<u32, u32>,
    deaths: Vec<(u32, u32, Option<u64>)>,
}

fn narrate(log: &Mutex<Log>, event: &Event) {
    let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
    match *event {
        Event::Started {
            worker,
            pid,
            replacing,
        } => {
            log.numbers.insert(pid, worker);
            match replacing {
                Some(old) => println!(
                    "👷 Pool: worker {worker} (process {pid}) starts in place of worker {old}"
                ),
                None => println!("👷 Pool: worker {worker} is process {pid}"),
            }
        }
        Event::Died {
            worker,
            pid,
            signal,
            task,
            retried,
        } => {
            let how = match signal {
                Some(9) => "was killed (SIGKILL)".to_string(),
                Some(s) => format!("was killed by signal {s}"),
                None => "died".to_string(),
            };
            // One task per dispatch: the task's number is its position + 1.
            let n = task.map(|t| t.index as u64 + 1);
            match n {
                Some(n) if retried => println!(
                    "💀 Pool: worker {worker} (process {pid}) {how} in the middle of task {n}; \
                     task {n} goes back on the queue to run again"
                ),
                Some(n) => println!(
                    "💀 Pool: worker {worker} (process {pid}) {how} in the middle of task {n}; \
                     task {n} is reported failed"
                ),
                None => println!("💀 Pool: worker {worker} (process {pid}) {how} between tasks"),
            }
            log.deaths.push((worker, pid, n));
        }
        Event::Retired { worker, tasks, .. } => {
            println!("👋 Pool: worker {worker} went home after {tasks} tasks");
        }
        _ => {}
    }
}

/// The `workers` scenario; `kill_one` SIGKILLs the worker running task 5.
pub(crate) fn workers(fast: bool, kill_one: bool) -> anyhow::Result<()> {
    println!(
        "👷 A pool of {WORKERS} worker processes, {TASKS} tasks (square a number); a worker \
         that dies is replaced and its task runs again"
    );
    let log = Arc::new(Mutex::new(Log::default()));
    let opts = PoolOptions::new(WORKERS)
        .chunk_size(1)
        .task_timeout(PATIENCE)
        .on_event({
            let log = log.clone();
            move |e| narrate(&log, e)
        });
    let pool = Pool::new(opts, square)?;
    println!(
        "🔪 (kill -9 any of these processes from another terminal: the pool runs its task again)"
    );
    let secs = if fast { 0.2 } else { 1.0 };
    println!("📋 Boss: tasks 1 to {TASKS} go to the pool");
    let mut results = pool.imap_unordered((1..=TASKS).map(|n| Task { n, secs }))?;
    if kill_one {
        let deadline = Instant::now() + PATIENCE;
        let busy = loop {
            let on_it = pool
                .workers()
                .into_iter()
                .find(|w| w.task.is_some_and(|t| t.index as u64 + 1 == VICTIM));
            if let Some(w) = on_it {
                break w;
            }
            ensure!(Instant::now() < deadline, "no worker took task {VICTIM}");
            std::thread::sleep(Duration::from_millis(2));
        };
        println!(
            "🔪 Boss: SIGKILL to worker {} (process {}) in the middle of task {VICTIM}",
            busy.worker, busy.pid
        );
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(busy.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )?;
    }
    let mut by_task = BTreeMap::new();
    while let Some(result) = results.next_timeout(PATIENCE) {
        let (_, done) = result?;
        let worker = {
            let log = log.lock().unwrap_or_else(PoisonError::into_inner);
            log.numbers.get(&done.pid).copied().unwrap_or(0)
        };
        println!(
            "📬 Boss: result of task {} = {} (from worker {worker})",
            done.n, done.square
        );
        if done.square != done.n * done.n {
            bail!("worker {worker} says task {} gives {}", done.n, done.square);
        }
        if by_task.insert(done.n, worker).is_some() {
            bail!("task {} was done twice", done.n);
        }
    }
    pool.join_timeout(PATIENCE)?;
    let tasks_done: Vec<u64> = by_task.keys().copied().collect();
    expect_same("tasks done", &tasks_done, &(1..=TASKS).collect::<Vec<_>>())?;
    let log = log.lock().unwrap_or_else(PoisonError::into_inner);
    let mut workers: Vec<u32> = by_task.values().copied().collect();
    workers.sort_unstable();
    workers.dedup();
    for w in workers {
        let mine: Vec<u64> = by_task
            .iter()
            .filter(|&(_, &by)| by == w)
            .map(|(&t, _)| t)
            .collect();
        println!("👷 Worker {w} did tasks {mine:?}");
    }
    for &(worker, pid, task) in &log.deaths {
        match task {
            Some(n) => println!(
                "✅ Task {n}, whose worker {worker} (process {pid}) died, was re-run by worker {}",
                by_task.get(&n).copied().unwrap_or(0)
            ),
            None => println!("✅ Worker {worker} (process {pid}) died idle and was replaced"),
        }
    }
    if kill_one {
        ensure!(
            log.deaths.iter().any(|d| d.2 == Some(VICTIM)),
            "the pool did not see the worker of task {VICTIM} die"
        );
    }
    println!(
        "🎉 All {TASKS} tasks done exactly once, {} worker(s) lost and replaced, every worker \
         went home",
        log.deaths.len()
    );
    Ok(())
}
