//! The `counter` scenario: three worker processes each add 5 to one counter in shared
//! memory, as the Python tutorial's `multiprocessing.Value` example. Under the value's lock (the
//! default), with a lock-free atomic (`--atomic`), or with neither (`--unsafe`), to watch
//! updates get lost.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use anyhow::bail;
use ipckit_core::{Ctx, Handle, RoleResult};
use ipckit_shmem::{Barrier, Shared, Value};
use serde::{Deserialize, Serialize};

use crate::support::{PATIENCE, Pace, join_all, role};

const WORKERS: u32 = 3;
const INCREMENTS: u64 = 5;
const EXPECTED: u64 = WORKERS as u64 * INCREMENTS;
/// How long an `--unsafe` worker holds on to the value it read before writing it back plus
/// one. `--fast` keeps it: it is the race being shown, not a pause for the reader.
const RACE_WINDOW: Duration = Duration::from_millis(5);

/// How the workers increment the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Variant {
    /// `Value<u64>`, each increment under its lock: `with v.get_lock(): v.value += 1`.
    Locked,
    /// `Shared<AtomicU64>`, each increment one `fetch_add`: no lock at all.
    Atomic,
    /// `Value<u64>` without its lock: read, wait a moment, write back plus one.
    Unlocked,
}

#[derive(Serialize, Deserialize)]
struct Args {
    id: u32,
    variant: Variant,
    pace: Pace,
}

/// The `counter` scenario.
pub(crate) fn counter(variant: Variant, pace: Pace) -> anyhow::Result<()> {
    println!(
        "🔢 {WORKERS} worker processes, one counter in shared memory, {INCREMENTS} increments each"
    );
    match variant {
        Variant::Locked => {
            println!("🔒 A Value<u64>: each increment happens under the value's lock");
        }
        Variant::Atomic => println!(
            "⚛️ A Shared<AtomicU64>: each increment is one atomic fetch_add, no lock \
             (the adds never collide; their printing may come out of order)"
        ),
        Variant::Unlocked => println!(
            "⚠️ A Value<u64> used WITHOUT its lock: each worker reads the counter, \
             waits {} ms, then writes back what it read plus one",
            RACE_WINDOW.as_millis()
        ),
    }
    // A start line, so that the workers run together rather than one after the other.
    let start = Barrier::create(WORKERS)?;
    let got = match variant {
        Variant::Locked | Variant::Unlocked => {
            let counter: Value<u64> = Value::create(0)?;
            run_workers(variant, pace, &start, || counter.try_clone())?;
            counter.load()?
        }
        Variant::Atomic => {
            let counter: Shared<AtomicU64> = Shared::create(0)?;
            run_workers(variant, pace, &start, || counter.try_clone())?;
            counter.load(Ordering::SeqCst)
        }
    };
    println!();
    println!("🎯 Final counter value: {got}");
    println!("Expected: {EXPECTED} ({WORKERS} processes × {INCREMENTS} increments)");
    let lost = EXPECTED.saturating_sub(got);
    match variant {
        Variant::Locked | Variant::Atomic if got != EXPECTED => {
            bail!("the counter ended at {got}, not {EXPECTED}: {lost} updates were lost")
        }
        Variant::Locked => println!("✅ No update lost: the lock let one worker at a time in"),
        Variant::Atomic => {
            println!("✅ No update lost: each fetch_add reads and writes in one indivisible step");
        }
        Variant::Unlocked if lost > 0 => {
            println!(
                "💥 {lost} of {EXPECTED} updates were lost: workers read the same value (the \
                 repeated \"read N\" above), each wrote back that value plus one, and all \
                 but one of those increments vanished."
            );
            println!(
                "   That is the race the lock prevents: run `demo counter` (lock) or \
                 `demo counter --atomic`, and the counter ends at {EXPECTED}."
            );
        }
        Variant::Unlocked => println!(
            "🍀 No update was lost this time, by luck of timing, not by design: the race is \
             still there, run it again. `demo counter` (lock) makes it impossible."
        ),
    }
    Ok(())
}

/// Starts the workers with `counter()` as their counter and waits for them all.
fn run_workers<H: Handle>(
    variant: Variant,
    pace: Pace,
    start: &Shared<Barrier>,
    counter: impl Fn() -> ipckit_shmem::Result<H>,
) -> anyhow::Result<()> {
    let mut children = Vec::new();
    for id in 1..=WORKERS {
        let args = Args { id, variant, pace };
        let child = role("counter-worker")
            .arg(&args)?
            .handle("start", start.try_clone()?)
            .handle("counter", counter()?)
            .spawn()?;
        children.push(child);
    }
    join_all(&mut children)
}

pub(crate) fn worker(ctx: &mut Ctx) -> RoleResult {
    let Args { id, variant, pace } = ctx.arg()?;
    let start = ctx.handle::<Shared<Barrier>>("start")?;
    match variant {
        Variant::Locked => {
            let counter = ctx.handle::<Value<u64>>("counter")?;
            start.wait_timeout(PATIENCE)?;
            for _ in 0..INCREMENTS {
                let value = counter.lock()?; // `with counter.get_lock():`
                pace.pause(0.01); // some work, under the lock, as the Python tutorials do
                let now = value.update(|v| v + 1)?; // `counter.value += 1`
                // Printed under the lock, so the lines come out in the counter's order.
                println!("Worker {id}: counter = {now}");
                drop(value);
                pace.pause(0.05);
            }
        }
        Variant::Atomic => {
            let counter = ctx.handle::<Shared<AtomicU64>>("counter")?;
            start.wait_timeout(PATIENCE)?;
            for _ in 0..INCREMENTS {
                let now = counter.fetch_add(1, Ordering::SeqCst) + 1;
                println!("Worker {id}: counter = {now}");
                pace.pause(0.05);
            }
        }
        Variant::Unlocked => {
            let counter = ctx.handle::<Value<u64>>("counter")?;
            start.wait_timeout(PATIENCE)?;
            for _ in 0..INCREMENTS {
                let seen = counter.load()?;
                // The gap between read and write, where another worker gets in.
                std::thread::sleep(RACE_WINDOW);
                counter.store(seen + 1)?;
                println!("Worker {id}: read {seen}, wrote {}", seen + 1);
                pace.pause(0.05);
            }
        }
    }
    Ok(())
}
