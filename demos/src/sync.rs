//! The `sync` scenario: the synchronisation primitives of the Python tutorials, each played
//! by real processes and checked: a lock that lets one process in at a time, a re-entrant
//! lock taken twice (and recovered from a holder killed while it held it twice), a
//! semaphore that lets 2 of 5 processes in at once, an event that releases waiting
//! processes, a barrier that no process passes before all arrived, and a condition that
//! hands items from a producer to consumers.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{bail, ensure};
use ipckit_core::{Child, Ctx, RoleResult};
use ipckit_shmem::{Barrier, Condition, Event, Mutex, RLock, Semaphore, SemaphoreOptions, Shared};
use serde::{Deserialize, Serialize};

use crate::support::{PATIENCE, Pace, join_all, role};

#[derive(Serialize, Deserialize)]
struct Args {
    id: u32,
    pace: Pace,
}

/// Who is inside a critical section now, and the most there ever were at once.
type Occupancy = (AtomicU32, AtomicU32);

fn enter(occupancy: &Occupancy) -> u32 {
    let now = occupancy.0.fetch_add(1, Ordering::SeqCst) + 1;
    occupancy.1.fetch_max(now, Ordering::SeqCst);
    now
}

fn leave(occupancy: &Occupancy) {
    occupancy.0.fetch_sub(1, Ordering::SeqCst);
}

/// The `sync` scenario.
pub(crate) fn sync(pace: Pace) -> anyhow::Result<()> {
    println!("🚦 The synchronisation primitives, each across real processes");
    lock(pace)?;
    rlock(pace)?;
    semaphore(pace)?;
    event(pace)?;
    barrier(pace)?;
    condition(pace)?;
    println!();
    println!("🎉 Every primitive did its job: lock, rlock, semaphore, event, barrier, condition");
    Ok(())
}

/// Starts `n` processes of role `name`, each with its id, the pace and `shared`.
fn start<H: ipckit_core::Handle>(
    name: &str,
    n: u32,
    pace: Pace,
    shared: impl Fn() -> ipckit_shmem::Result<H>,
) -> anyhow::Result<Vec<Child>> {
    let mut children = Vec::new();
    for id in 1..=n {
        children.push(
            role(name)
                .arg(&Args { id, pace })?
                .handle("shared", shared()?)
                .spawn()?,
        );
    }
    Ok(children)
}

// --- Lock -------------------------------------------------------------------------------

/// The lock (holding how many entered) and who is inside it, counted outside the lock so
/// that a lock letting two in would show.
type LockState = Shared<(Mutex<u32>, Occupancy)>;

fn lock(pace: Pace) -> anyhow::Result<()> {
    println!();
    println!("🔒 Lock: 3 processes, one at a time in the critical section");
    let state: LockState = Shared::create((0, (0, 0)))?;
    let mut children = start("sync-lock", 3, pace, || state.try_clone())?;
    join_all(&mut children)?;
    let entries = *state.0.lock()?;
    let most = (state.1).1.load(Ordering::SeqCst);
    ensure!(entries == 3, "{entries} of 3 processes got the lock");
    ensure!(most == 1, "{most} processes were inside the lock at once");
    println!("✅ Lock: 3 entries, never more than 1 inside");
    Ok(())
}

pub(crate) fn lock_worker(ctx: &mut Ctx) -> RoleResult {
    let Args { id, pace } = ctx.arg()?;
    let state: LockState = ctx.handle("shared")?;
    let mut entries = state.0.lock()?; // `with lock:`
    enter(&state.1);
    *entries += 1;
    println!("Process {id} has the lock");
    pace.pause(0.2);
    println!("Process {id} releases the lock");
    leave(&state.1);
    Ok(())
}

// --- RLock ------------------------------------------------------------------------------

/// The re-entrant lock, how deep its holder went, and a flag for "held".
type RLockState = Shared<(RLock, AtomicU32, Event)>;

fn rlock(pace: Pace) -> anyhow::Result<()> {
    println!();
    println!("🔁 RLock: a process takes the same lock twice, then one is killed holding it twice");
    let state: RLockState = Shared::create(((), 0, ()))?;
    let mut nested = start("sync-rlock", 1, pace, || state.try_clone())?;
    join_all(&mut nested)?;
    let depth = state.1.load(Ordering::SeqCst);
    ensure!(depth == 2, "the holder went {depth} deep, not 2");
    ensure!(
        state.0.try_lock().is_ok(),
        "the lock is still held after its holder left"
    );
    let mut doomed = role("sync-rlock-die")
        .handle("shared", state.try_clone()?)
        .spawn()?;
    state.2.wait_timeout(PATIENCE)?;
    println!("Parent: the child holds the lock twice; killing it (SIGKILL)");
    doomed.kill()?;
    let _ = doomed.join_timeout(PATIENCE);
    let guard = state.0.lock_timeout(PATIENCE)?;
    ensure!(
        guard.previous_holder_died(),
        "the lock did not say its holder died"
    );
    println!("Parent: took the lock; it says its previous holder died");
    drop(guard);
    println!("✅ RLock: taken twice by one holder, and passed on when that holder was killed");
    Ok(())
}

pub(crate) fn rlock_worker(ctx: &mut Ctx) -> RoleResult {
    let Args { id, pace } = ctx.arg()?;
    let state: RLockState = ctx.handle("shared")?;
    let outer = state.0.lock()?;
    state.1.fetch_add(1, Ordering::SeqCst);
    println!("Process {id} has the lock (outer)");
    pace.pause(0.1);
    {
        let _inner = state.0.lock()?; // the same lock again: no deadlock
        state.1.fetch_add(1, Ordering::SeqCst);
        println!("Process {id} has the lock again (inner)");
        pace.pause(0.1);
    }
    drop(outer);
    println!("Process {id} released both");
    Ok(())
}

pub(crate) fn rlock_die(ctx: &mut Ctx) -> RoleResult {
    let state: RLockState = ctx.handle("shared")?;
    let _outer = state.0.lock()?;
    let _inner = state.0.lock()?;
    println!("Doomed process: holding the lock twice");
    state.2.set();
    std::thread::sleep(PATIENCE);
    Err("was not killed".into())
}

// --- Semaphore --------------------------------------------------------------------------

/// The semaphore, who holds a slot, and a start line so that all five contend at once.
type SemaphoreState = Shared<(Semaphore, Occupancy, Barrier)>;

/// How long a process keeps its slot. `--fast` keeps it: the overlap is what is shown.
const HOLD: Duration = Duration::from_millis(100);

fn semaphore(pace: Pace) -> anyhow::Result<()> {
    println!();
    println!("🎫 Semaphore(2): 5 processes, at most 2 at a time");
    let state: SemaphoreState = Shared::create((SemaphoreOptions::new(2), (0, 0), 5))?;
    let mut children = start("sync-semaphore", 5, pace, || state.try_clone())?;
    join_all(&mut children)?;
    let most = (state.1).1.load(Ordering::SeqCst);
    ensure!(most <= 2, "{most} processes were inside at once");
    ensure!(
        state.0.value() == 2,
        "the semaphore ended at {}",
        state.0.value()
    );
    println!("✅ Semaphore: 5 processes served, never more than {most} inside at once");
    Ok(())
}

pub(crate) fn semaphore_worker(ctx: &mut Ctx) -> RoleResult {
    let Args { id, pace } = ctx.arg()?;
    let state: SemaphoreState = ctx.handle("shared")?;
    state.2.wait_timeout(PATIENCE)?;
    println!("Process {id} waiting for a slot");
    state.0.acquire_timeout(PATIENCE)?;
    let inside = enter(&state.1);
    println!("Process {id} got a slot ({inside} inside)");
    std::thread::sleep(HOLD);
    pace.pause(0.2);
    leave(&state.1);
    println!("Process {id} releases its slot");
    state.0.release()?;
    Ok(())
}

// --- Event ------------------------------------------------------------------------------

/// The event, whether the parent has set it, and how many waiters it released.
type EventState = Shared<(Event, AtomicU32, AtomicU32)>;

fn event(pace: Pace) -> anyhow::Result<()> {
    println!();
    println!("📣 Event: 3 processes wait until the parent sets it");
    let state: EventState = Shared::create(((), 0, 0))?;
    let mut children = start("sync-event", 3, pace, || state.try_clone())?;
    pace.pause(0.5);
    println!("Parent: setting the event");
    state.1.store(1, Ordering::SeqCst);
    state.0.set();
    join_all(&mut children)?;
    let released = state.2.load(Ordering::SeqCst);
    ensure!(released == 3, "{released} of 3 waiters were released");
    println!("✅ Event: all 3 waiters went on, none before it was set");
    Ok(())
}

pub(crate) fn event_worker(ctx: &mut Ctx) -> RoleResult {
    let Args { id, .. } = ctx.arg()?;
    let state: EventState = ctx.handle("shared")?;
    println!("Process {id} waiting for the event");
    state.0.wait_timeout(PATIENCE)?;
    if state.1.load(Ordering::SeqCst) != 1 {
        return Err(format!("process {id} went on before the event was set").into());
    }
    state.2.fetch_add(1, Ordering::SeqCst);
    println!("Process {id} got the event");
    Ok(())
}

// --- Barrier ----------------------------------------------------------------------------

/// The barrier and how many arrived.
type BarrierState = Shared<(Barrier, AtomicU32)>;

fn barrier(pace: Pace) -> anyhow::Result<()> {
    println!();
    println!("🚧 Barrier(3): 3 processes get ready at their own pace, then start together");
    let state: BarrierState = Shared::create((3, 0))?;
    let mut children = start("sync-barrier", 3, pace, || state.try_clone())?;
    join_all(&mut children)?;
    println!("✅ Barrier: nobody started before all 3 were ready");
    Ok(())
}

pub(crate) fn barrier_worker(ctx: &mut Ctx) -> RoleResult {
    let Args { id, pace } = ctx.arg()?;
    let state: BarrierState = ctx.handle("shared")?;
    println!("Process {id} getting ready");
    pace.pause(0.2 * f64::from(id));
    state.1.fetch_add(1, Ordering::SeqCst);
    println!("Process {id} ready, waiting at the barrier");
    state.0.wait_timeout(PATIENCE)?;
    let arrived = state.1.load(Ordering::SeqCst);
    if arrived != 3 {
        return Err(format!("process {id} passed with {arrived} of 3 arrived").into());
    }
    println!("Process {id} passed the barrier");
    Ok(())
}

// --- Condition --------------------------------------------------------------------------

/// The condition's data: `[items waiting, items taken]`.
type ConditionState = Shared<Condition<[u32; 2]>>;

const ITEMS: u32 = 2;

fn condition(pace: Pace) -> anyhow::Result<()> {
    println!();
    println!("🔔 Condition: 2 consumer processes wait; the parent produces 2 items");
    let state: ConditionState = Condition::create([0; 2])?;
    let mut children = start("sync-condition", ITEMS, pace, || state.try_clone())?;
    for item in 1..=ITEMS {
        pace.pause(0.3);
        let mut data = state.lock()?; // `with condition:`
        data[0] += 1;
        println!("Parent: produced item {item}, notifying one consumer");
        state.notify_one();
    }
    join_all(&mut children)?;
    let [waiting, taken] = *state.lock()?;
    if taken != ITEMS || waiting != 0 {
        bail!("{taken} of {ITEMS} items taken, {waiting} left");
    }
    println!("✅ Condition: each item went to exactly one consumer");
    Ok(())
}

pub(crate) fn condition_worker(ctx: &mut Ctx) -> RoleResult {
    let Args { id, .. } = ctx.arg()?;
    let state: ConditionState = ctx.handle("shared")?;
    println!("Consumer {id} waiting for an item");
    // `condition.wait_for(lambda: items > 0)`
    let mut data = state.wait_while(state.lock()?, PATIENCE, |d| d[0] == 0)?;
    data[0] -= 1;
    data[1] += 1;
    println!("Consumer {id} took an item");
    Ok(())
}
