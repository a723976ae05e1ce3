//! The `workers` scenario: a pool of three worker processes sharing ten tasks from one task
//! queue and putting their results on another, as the Python tutorial's worker example, but without
//! its one `None` per worker: the parent closes the task queue, and each worker stops once
//! it is closed and empty.

use std::{collections::BTreeMap, time::Duration};

use ipckit_core::{Ctx, RoleResult};
use ipckit_queues::Queue;
use serde::{Deserialize, Serialize};

use crate::support::{Pace, expect_same, join_all, role};

const WORKERS: u32 = 3;
const TASKS: u64 = 10;
const PATIENCE: Duration = Duration::from_secs(60);

/// A task's result: the square of the task's number, and who worked it out.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Done {
    task: u64,
    square: u64,
    worker: u32,
}

#[derive(Serialize, Deserialize)]
struct Args {
    id: u32,
    pace: Pace,
}

/// The `workers` scenario.
pub(crate) fn workers(pace: Pace) -> anyhow::Result<()> {
    println!(
        "👷 {WORKERS} worker processes, {TASKS} tasks (square a number), \
         a task queue and a results queue"
    );
    let tasks: Queue<u64> = Queue::create(16)?;
    let results: Queue<Done> = Queue::create(16)?;
    let mut children = Vec::new();
    for id in 1..=WORKERS {
        let child = role("task-worker")
            .arg(&Args { id, pace })?
            .handle("tasks", tasks.try_clone()?)
            .handle("results", results.try_clone()?)
            .spawn()?;
        children.push(child);
    }
    for task in 1..=TASKS {
        println!("📋 Boss: Task {task} goes on the queue");
        tasks.put(&task)?;
        pace.pause(0.1);
    }
    tasks.close();
    println!(
        "📋 Boss: that is every task; closing the task queue (no None per worker: each \
         stops when it finds the queue closed and empty)"
    );
    let mut by_task = BTreeMap::new();
    for _ in 0..TASKS {
        let done = results.get_timeout(PATIENCE)?;
        println!(
            "📬 Boss: result of task {} = {} (from worker {})",
            done.task, done.square, done.worker
        );
        if done.square != done.task * done.task {
            anyhow::bail!(
                "worker {} says task {} gives {}",
                done.worker,
                done.task,
                done.square
            );
        }
        if by_task.insert(done.task, done.worker).is_some() {
            anyhow::bail!("task {} was done twice", done.task);
        }
    }
    join_all(&mut children)?;
    let tasks_done: Vec<u64> = by_task.keys().copied().collect();
    expect_same("tasks done", &tasks_done, &(1..=TASKS).collect::<Vec<_>>())?;
    for id in 1..=WORKERS {
        let mine: Vec<u64> = by_task
            .iter()
            .filter(|&(_, &w)| w == id)
            .map(|(&t, _)| t)
            .collect();
        println!("👷 Worker {id} did tasks {mine:?}");
    }
    println!("🎉 All {TASKS} tasks done exactly once, and every worker went home by itself");
    Ok(())
}

pub(crate) fn worker(ctx: &mut Ctx) -> RoleResult {
    let Args { id, pace } = ctx.arg()?;
    let tasks = ctx.handle::<Queue<u64>>("tasks")?;
    let results = ctx.handle::<Queue<Done>>("results")?;
    let mut count = 0;
    // Until the boss closed the task queue and it is empty.
    for task in tasks.receiver()?.iter() {
        let task = task?;
        println!("⚙️ Worker {id}: processing Task {task}");
        pace.pause(0.5);
        let square = task * task;
        results.put(&Done {
            task,
            square,
            worker: id,
        })?;
        count += 1;
    }
    println!("👷 Worker {id}: the task queue is closed and empty; did {count} tasks, going home");
    Ok(())
}
