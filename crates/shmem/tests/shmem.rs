//! ipckit-shmem across real processes: robust locks under SIGKILL, barriers, condition
//! variables, events, segments that leave nothing behind, snapshots that never tear, and
//! Python's `SharedMemory` on the other side.

use std::{
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use ipckit_core::{Child, Command, Ctx, Role, RoleResult};
use ipckit_shmem::{
    Array, Barrier, Condition, Condvar, Error, Event, MappedFile, Mutex, RLock, RawValue, Ring,
    RwLock, Segment, Semaphore, SemaphoreOptions, SeqLock, Shared, Value,
};
use ipckit_testkit::{Bounded, PATIENCE, join_ok};

type Locked = Shared<(Mutex<[u64; 2]>, Event)>;

/// Takes the lock, writes half of an update, says so, and waits to be killed.
fn hold_lock(ctx: &mut Ctx) -> RoleResult {
    let shared: Locked = ctx.handle("shared")?;
    let (mutex, locked) = &*shared;
    let mut guard = mutex.lock()?;
    guard[0] += 1;
    locked.set();
    std::thread::sleep(Duration::from_secs(600));
    guard[1] += 1;
    Ok(())
}

fn hold_value_lock(ctx: &mut Ctx) -> RoleResult {
    let value: Value<u64> = ctx.handle("value")?;
    let flag: Shared<Event> = ctx.handle("flag")?;
    let guard = value.lock()?;
    guard.set(99);
    flag.set();
    std::thread::sleep(Duration::from_secs(600));
    Ok(())
}

/// Two events: the child says "about to", does its part, says "done".
type Steps = Shared<(Event, Event)>;

/// Stores into a `Value<u64>` without its lock, between two signals.
fn store_value(ctx: &mut Ctx) -> RoleResult {
    let value: Value<u64> = ctx.handle("value")?;
    let steps: Steps = ctx.handle("steps")?;
    steps.0.set();
    value.store(7)?;
    steps.1.set();
    Ok(())
}

/// Stores into a `Value<[u64; 4]>` (which takes the lock), between two signals.
fn store_big_value(ctx: &mut Ctx) -> RoleResult {
    let value: Value<[u64; 4]> = ctx.handle("value")?;
    let steps: Steps = ctx.handle("steps")?;
    steps.0.set();
    value.store([7; 4])?;
    steps.1.set();
    Ok(())
}

/// Takes an `RLock` twice, says so, and waits to be killed.
fn hold_rlock_twice(ctx: &mut Ctx) -> RoleResult {
    let lock: Shared<RLock> = ctx.handle("lock")?;
    let held: Shared<Event> = ctx.handle("held")?;
    let _outer = lock.lock()?;
    let _inner = lock.lock()?;
    held.set();
    std::thread::sleep(Duration::from_secs(600));
    Ok(())
}

/// Tries an `RLock` held by the parent (it must fail), then waits for it.
fn contend_rlock(ctx: &mut Ctx) -> RoleResult {
    let lock: Shared<RLock> = ctx.handle("lock")?;
    let steps: Steps = ctx.handle("steps")?;
    if lock.try_lock().is_ok() {
        return Err("took an RLock another process holds".into());
    }
    steps.0.set();
    let guard = lock.lock_timeout(PATIENCE)?;
    steps.1.set();
    drop(guard);
    Ok(())
}

/// Waits on a `Condition<u32>` until the parent sets 1, then answers 2.
fn answer_condition(ctx: &mut Ctx) -> RoleResult {
    let c: Shared<Condition<u32>> = ctx.handle("condition")?;
    let guard = c.wait_while(c.lock()?, PATIENCE, |v| *v != 1)?;
    drop(guard);
    *c.lock()? = 2;
    c.notify_all();
    Ok(())
}

/// Locks a `Condition<u32>`, sets its data, says so, and waits to be killed.
fn hold_condition(ctx: &mut Ctx) -> RoleResult {
    let c: Shared<Condition<u32>> = ctx.handle("condition")?;
    let held: Shared<Event> = ctx.handle("held")?;
    let mut guard = c.lock()?;
    *guard = 5;
    held.set();
    std::thread::sleep(Duration::from_secs(600));
    Ok(())
}

/// Opens a semaphore by name and holds one unit until told.
fn take_semaphore(ctx: &mut Ctx) -> RoleResult {
    let name: String = ctx.arg()?;
    let sem = Semaphore::open(&name)?;
    let go: Shared<Event> = ctx.handle("go")?;
    sem.acquire_timeout(PATIENCE)?;
    go.wait_timeout(PATIENCE)?;
    sem.release()?;
    Ok(())
}

/// Sets a shared `bool` flag.
fn raise_flag(ctx: &mut Ctx) -> RoleResult {
    let flag: Value<bool> = ctx.handle("flag")?;
    flag.store(true)?;
    Ok(())
}

type Meeting = Shared<(Barrier, AtomicU32, AtomicU32)>;

fn meet(ctx: &mut Ctx) -> RoleResult {
    let m: Meeting = ctx.handle("meeting")?;
    let (barrier, arrived, leaders) = &*m;
    for round in 1..=3u32 {
        arrived.fetch_add(1, Ordering::SeqCst);
        if barrier.wait_timeout(PATIENCE)? {
            leaders.fetch_add(1, Ordering::SeqCst);
        }
        // Nobody passes the barrier before all four arrived in this round.
        let seen = arrived.load(Ordering::SeqCst);
        if seen < 4 * round {
            return Err(format!("round {round}: passed with only {seen} arrivals").into());
        }
        barrier.wait_timeout(PATIENCE)?;
    }
    Ok(())
}

type Mailbox = Shared<(Mutex<u32>, Condvar)>;

fn answer(ctx: &mut Ctx) -> RoleResult {
    let mb: Mailbox = ctx.handle("mailbox")?;
    let (m, cv) = &*mb;
    let mut g = cv.wait_while(m.lock()?, PATIENCE, |v| *v != 1)?;
    *g = 2;
    drop(g);
    cv.notify_all();
    Ok(())
}

fn ping_event(ctx: &mut Ctx) -> RoleResult {
    let events: Shared<(Event, Event)> = ctx.handle("events")?;
    events.0.wait_timeout(PATIENCE)?;
    events.1.set();
    Ok(())
}

fn make_named_segment(ctx: &mut Ctx) -> RoleResult {
    let report: Shared<SeqLock<[u8; 64]>> = ctx.handle("report")?;
    let seg = Segment::create_named(4096)?;
    let mut name = [0u8; 64];
    let n = seg.name().ok_or("named")?.as_bytes();
    name[..n.len()].copy_from_slice(n);
    report.publish(&name);
    std::thread::sleep(Duration::from_secs(600));
    drop(seg);
    Ok(())
}

fn write_by_name(ctx: &mut Ctx) -> RoleResult {
    let name: String = ctx.arg()?;
    let seg = Segment::open(&name)?;
    seg.write(100, b"written by a child")?;
    Ok(())
}

fn publish_runs(ctx: &mut Ctx) -> RoleResult {
    let cell: Shared<SeqLock<[u64; 32]>> = ctx.handle("cell")?;
    let stop: Shared<Event> = ctx.handle("stop")?;
    let mut i = 0u64;
    while !stop.is_set() {
        i += 1;
        cell.publish(&[i; 32]);
        // A sensor's pace, not a flood: back-to-back writes would starve readers.
        std::thread::sleep(Duration::from_micros(20));
    }
    Ok(())
}

type Readings = Shared<Ring<u64, 8>>;

/// A typed record in a mapped file.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
struct Record {
    id: u32,
    celsius: f32,
}

fn push_readings(ctx: &mut Ctx) -> RoleResult {
    let (count, close): (u64, bool) = ctx.arg()?;
    let ring: Readings = ctx.handle("ring")?;
    for i in 0..count {
        ring.push(&i);
    }
    if close {
        ring.close();
    } else {
        std::thread::sleep(Duration::from_secs(600));
    }
    Ok(())
}

fn write_record(ctx: &mut Ctx) -> RoleResult {
    let path: std::path::PathBuf = ctx.arg()?;
    let file = MappedFile::open(&path)?;
    file.write_at(
        8,
        &Record {
            id: 7,
            celsius: 3.5,
        },
    )?;
    file.flush()?;
    Ok(())
}

const ROLES: &[Role] = &[
    Role::new("hold-lock", hold_lock),
    Role::new("hold-value-lock", hold_value_lock),
    Role::new("store-value", store_value),
    Role::new("store-big-value", store_big_value),
    Role::new("hold-rlock-twice", hold_rlock_twice),
    Role::new("contend-rlock", contend_rlock),
    Role::new("answer-condition", answer_condition),
    Role::new("hold-condition", hold_condition),
    Role::new("take-semaphore", take_semaphore),
    Role::new("raise-flag", raise_flag),
    Role::new("meet", meet),
    Role::new("answer", answer),
    Role::new("ping-event", ping_event),
    Role::new("make-named-segment", make_named_segment),
    Role::new("write-by-name", write_by_name),
    Role::new("publish-runs", publish_runs),
    Role::new("push-readings", push_readings),
    Role::new("write-record", write_record),
];

mod locks {
    use super::*;

    /// The Python tutorial's fear, answered: a holder SIGKILLed inside its critical section does not
    /// hang the next locker, who learns that the holder died.
    #[test]
    fn a_killed_holder_hands_the_mutex_over() {
        ipckit_core::enter(ROLES);
        let shared: Locked = Shared::create(([0, 0], ())).unwrap();
        let mut child = Command::new("hold-lock")
            .handle("shared", shared.try_clone().unwrap())
            .spawn()
            .unwrap();
        shared.1.wait_timeout(PATIENCE).unwrap();
        assert!(
            matches!(shared.0.try_lock(), Err(Error::Timeout)),
            "the child holds it"
        );
        child.kill().unwrap();
        let _ = child.join_timeout(PATIENCE);
        let guard = shared
            .0
            .lock_timeout(PATIENCE)
            .expect("recovered, not hung");
        assert!(guard.previous_holder_died());
        assert_eq!(*guard, [1, 0], "the half-done update is visible");
        drop(guard);
        // After recovery the lock is an ordinary lock again.
        assert!(!shared.0.lock().unwrap().previous_holder_died());
    }

    #[test]
    fn a_killed_holder_hands_a_value_over_with_its_writes() {
        ipckit_core::enter(ROLES);
        let value: Value<u64> = Value::create(0).unwrap();
        let flag = Event::create().unwrap();
        let mut child = Command::new("hold-value-lock")
            .handle("value", value.try_clone().unwrap())
            .handle("flag", flag.try_clone().unwrap())
            .spawn()
            .unwrap();
        flag.wait_timeout(PATIENCE).unwrap();
        child.kill().unwrap();
        let _ = child.join_timeout(PATIENCE);
        let guard = value.lock_timeout(PATIENCE).unwrap();
        assert!(guard.previous_holder_died());
        // The guard is no copy: the dead holder's write is in the value.
        assert_eq!(guard.get().unwrap(), 99);
    }

    #[test]
    fn lock_timeout_gives_up() {
        let m: Shared<Mutex<u8>> = Shared::create(0).unwrap();
        let _held = m.lock().unwrap();
        let other = m.try_clone().unwrap();
        let start = Instant::now();
        let r =
            std::thread::spawn(move || other.lock_timeout(Duration::from_millis(100)).map(|_| ()))
                .join()
                .unwrap();
        assert!(matches!(r, Err(Error::Timeout)));
        assert!(start.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn locking_twice_in_one_thread_is_an_error_not_a_hang() {
        let m: Shared<Mutex<u8>> = Shared::create(0).unwrap();
        let _held = m.lock().unwrap();
        assert!(matches!(m.lock(), Err(Error::WouldDeadlock)));
    }

    #[test]
    fn rwlock_readers_share_writers_exclude() {
        let l: Shared<RwLock<u64>> = Shared::create(5).unwrap();
        let r1 = l.read().unwrap();
        let r2 = l.read_timeout(Duration::from_millis(10)).unwrap();
        assert_eq!(*r1 + *r2, 10);
        assert!(matches!(
            l.write_timeout(Duration::from_millis(20)),
            Err(Error::Timeout)
        ));
        drop((r1, r2));
        *l.write().unwrap() = 6;
        assert_eq!(*l.read().unwrap(), 6);
    }

    #[test]
    fn semaphores_count_and_bound() {
        let s = Semaphore::create(SemaphoreOptions::new(2).bounded(true)).unwrap();
        s.acquire().unwrap();
        s.try_acquire().unwrap();
        assert!(matches!(
            s.acquire_timeout(Duration::from_millis(20)),
            Err(Error::Timeout)
        ));
        s.release().unwrap();
        s.release().unwrap();
        assert!(matches!(s.release(), Err(Error::SemaphoreOverflow(2))));
        let free = Semaphore::create(0).unwrap();
        free.release().unwrap();
        assert_eq!(free.value(), 1);
    }

    /// Another process opens the semaphore by name and holds one of its two units.
    #[test]
    fn a_named_semaphore_is_opened_by_another_process() {
        ipckit_core::enter(ROLES);
        let sem = Semaphore::create_named(2).unwrap();
        let go = Event::create().unwrap();
        let mut child = Command::new("take-semaphore")
            .arg(&sem.name().unwrap().to_string())
            .unwrap()
            .handle("go", go.try_clone().unwrap())
            .spawn()
            .unwrap();
        ipckit_testkit::wait_until("the child took a unit", || sem.value() == 1);
        sem.acquire_timeout(PATIENCE).unwrap();
        assert!(matches!(sem.try_acquire(), Err(Error::Timeout)));
        go.set();
        sem.acquire_timeout(PATIENCE).unwrap();
        join_ok(&mut child);
    }

    #[test]
    fn an_rlock_is_reentrant_and_excludes_other_processes() {
        ipckit_core::enter(ROLES);
        let lock = RLock::create().unwrap();
        let steps: Steps = Shared::create(((), ())).unwrap();
        let outer = lock.lock().unwrap();
        let inner = lock.try_lock().expect("the holder takes it again");
        let mut child = Command::new("contend-rlock")
            .handle("lock", lock.try_clone().unwrap())
            .handle("steps", steps.try_clone().unwrap())
            .spawn()
            .unwrap();
        steps.0.wait_timeout(PATIENCE).unwrap();
        drop(inner);
        assert!(
            matches!(
                steps.1.wait_timeout(Duration::from_millis(100)),
                Err(Error::Timeout)
            ),
            "still held once"
        );
        drop(outer);
        steps.1.wait_timeout(PATIENCE).unwrap();
        join_ok(&mut child);
        assert!(!lock.lock().unwrap().previous_holder_died());
    }

    /// A holder that locked twice is SIGKILLed: the lock passes on whole.
    #[test]
    fn a_killed_rlock_holder_that_locked_twice_hands_it_over() {
        ipckit_core::enter(ROLES);
        let lock = RLock::create().unwrap();
        let held = Event::create().unwrap();
        let mut child = Command::new("hold-rlock-twice")
            .handle("lock", lock.try_clone().unwrap())
            .handle("held", held.try_clone().unwrap())
            .spawn()
            .unwrap();
        held.wait_timeout(PATIENCE).unwrap();
        assert!(matches!(lock.try_lock(), Err(Error::Timeout)));
        child.kill().unwrap();
        let _ = child.join_timeout(PATIENCE);
        let guard = lock.lock_timeout(PATIENCE).expect("recovered, not hung");
        assert!(guard.previous_holder_died());
        let again = lock.lock().unwrap();
        assert!(!again.previous_holder_died());
        drop((again, guard));
        // Free for another thread: the dead holder's two holds are gone.
        let other = lock.try_clone().unwrap();
        let taken = std::thread::spawn(move || other.lock_timeout(PATIENCE).map(|_| ()))
            .join()
            .unwrap();
        assert!(taken.is_ok());
    }
}

/// `Value` as a Python user expects it: the guard is a lock, not a copy.
mod values {
    use super::*;

    #[test]
    fn a_store_by_the_holder_under_the_lock_is_kept() {
        let v: Value<u64> = Value::create(1).unwrap();
        let guard = v.lock().unwrap();
        v.store(5).unwrap();
        assert_eq!(guard.get().unwrap(), 5, "the guard sees the store");
        assert_eq!(v.load().unwrap(), 5);
        drop(guard);
        assert_eq!(v.load().unwrap(), 5, "the guard's drop wrote nothing back");
    }

    #[test]
    fn a_large_value_is_read_and_written_under_its_reentrant_lock() {
        let v: Value<[u64; 4]> = Value::create([1, 2, 3, 4]).unwrap();
        let guard = v.lock().unwrap();
        v.store([5; 4])
            .expect("the holder stores again, no deadlock");
        assert_eq!(v.load().unwrap(), [5; 4]);
        guard
            .update(|mut a| {
                a[0] = 9;
                a
            })
            .unwrap();
        drop(guard);
        assert_eq!(v.load().unwrap(), [9, 5, 5, 5]);
    }

    /// A child stores while the parent holds the guard: the parent's next read under the
    /// lock sees it, and dropping the guard keeps it.
    #[test]
    fn a_childs_store_while_the_parent_holds_the_lock_is_seen_and_kept() {
        ipckit_core::enter(ROLES);
        let v: Value<u64> = Value::create(1).unwrap();
        let steps: Steps = Shared::create(((), ())).unwrap();
        let guard = v.lock().unwrap();
        assert_eq!(guard.get().unwrap(), 1);
        let mut child = Command::new("store-value")
            .handle("value", v.try_clone().unwrap())
            .handle("steps", steps.try_clone().unwrap())
            .spawn()
            .unwrap();
        steps.1.wait_timeout(PATIENCE).unwrap();
        assert_eq!(
            guard.get().unwrap(),
            7,
            "a read under the lock sees the latest"
        );
        assert_eq!(v.load().unwrap(), 7);
        drop(guard);
        assert_eq!(v.load().unwrap(), 7, "not overwritten by the guard");
        join_ok(&mut child);
    }

    /// A value too large for one atomic: the child's store waits for the parent's lock,
    /// then lands whole.
    #[test]
    fn a_childs_store_of_a_large_value_waits_for_the_lock_then_lands() {
        ipckit_core::enter(ROLES);
        let v: Value<[u64; 4]> = Value::create([1; 4]).unwrap();
        let steps: Steps = Shared::create(((), ())).unwrap();
        let guard = v.lock().unwrap();
        let mut child = Command::new("store-big-value")
            .handle("value", v.try_clone().unwrap())
            .handle("steps", steps.try_clone().unwrap())
            .spawn()
            .unwrap();
        steps.0.wait_timeout(PATIENCE).unwrap();
        assert!(
            matches!(
                steps.1.wait_timeout(Duration::from_millis(100)),
                Err(Error::Timeout)
            ),
            "the store waits for the lock"
        );
        guard.set([2; 4]);
        drop(guard);
        steps.1.wait_timeout(PATIENCE).unwrap();
        assert_eq!(v.load().unwrap(), [7; 4]);
        join_ok(&mut child);
    }

    #[test]
    fn a_bool_value_is_a_flag_across_processes() {
        ipckit_core::enter(ROLES);
        let flag: Value<bool> = Value::create(false).unwrap();
        let mut child = Command::new("raise-flag")
            .handle("flag", flag.try_clone().unwrap())
            .spawn()
            .unwrap();
        join_ok(&mut child);
        assert!(flag.load().unwrap());
    }

    #[test]
    fn bytes_that_are_no_bool_are_an_error_not_undefined_behaviour() {
        let flag: RawValue<bool> = RawValue::create(true).unwrap();
        // Another process writes 2 where the bool lives (just after the 64-byte header).
        flag.segment().write(64, &[2]).unwrap();
        assert!(matches!(flag.load(), Err(Error::InvalidValue("bool"))));
        flag.store(false);
        assert!(!flag.load().unwrap());
    }
}

mod waits {
    use super::*;

    #[test]
    fn barrier_across_four_processes() {
        ipckit_core::enter(ROLES);
        let m: Meeting = Shared::create((4, 0, 0)).unwrap();
        let mut children: Vec<Child> = (0..4)
            .map(|_| {
                Command::new("meet")
                    .handle("meeting", m.try_clone().unwrap())
                    .spawn()
                    .unwrap()
            })
            .collect();
        children.iter_mut().for_each(join_ok);
        assert_eq!(m.1.load(Ordering::SeqCst), 12);
        assert_eq!(m.2.load(Ordering::SeqCst), 3, "one leader per round");
    }

    #[test]
    fn a_barrier_breaks_instead_of_hanging() {
        let b = Barrier::create(2).unwrap();
        assert!(matches!(
            b.wait_timeout(Duration::from_millis(50)),
            Err(Error::Timeout)
        ));
        assert!(matches!(
            b.wait_timeout(PATIENCE),
            Err(Error::BrokenBarrier)
        ));
    }

    #[test]
    fn a_barrier_for_nobody_is_refused() {
        assert!(matches!(Barrier::create(0), Err(Error::InvalidOptions(_))));
    }

    #[test]
    fn a_condition_wakes_another_process() {
        ipckit_core::enter(ROLES);
        let c = Condition::create(0u32).unwrap();
        let mut child = Command::new("answer-condition")
            .handle("condition", c.try_clone().unwrap())
            .spawn()
            .unwrap();
        *c.lock().unwrap() = 1;
        c.notify_all();
        let g = c
            .wait_while(c.lock().unwrap(), PATIENCE, |v| *v != 2)
            .unwrap();
        assert_eq!(*g, 2);
        drop(g);
        join_ok(&mut child);
        let (g, timed_out) = c
            .wait_timeout(c.lock().unwrap(), Duration::from_millis(20))
            .unwrap();
        assert!(timed_out);
        drop(g);
    }

    /// A condition's lock is robust: its holder SIGKILLed, the next locker gets it, and
    /// waits on it work as before.
    #[test]
    fn a_killed_condition_holder_hands_the_lock_over() {
        ipckit_core::enter(ROLES);
        let c = Condition::create(0u32).unwrap();
        let held = Event::create().unwrap();
        let mut child = Command::new("hold-condition")
            .handle("condition", c.try_clone().unwrap())
            .handle("held", held.try_clone().unwrap())
            .spawn()
            .unwrap();
        held.wait_timeout(PATIENCE).unwrap();
        child.kill().unwrap();
        let _ = child.join_timeout(PATIENCE);
        let guard = c.lock_timeout(PATIENCE).expect("recovered, not hung");
        assert!(guard.previous_holder_died());
        assert_eq!(*guard, 5);
        let (guard, timed_out) = c.wait_timeout(guard, Duration::from_millis(10)).unwrap();
        assert!(timed_out);
        assert!(!guard.previous_holder_died());
    }

    #[test]
    fn condvar_wakes_another_process() {
        ipckit_core::enter(ROLES);
        let mb: Mailbox = Shared::create((0, ())).unwrap();
        let mut child = Command::new("answer")
            .handle("mailbox", mb.try_clone().unwrap())
            .spawn()
            .unwrap();
        let (m, cv) = &*mb;
        *m.lock().unwrap() = 1;
        cv.notify_all();
        let g = cv
            .wait_while(m.lock().unwrap(), PATIENCE, |v| *v != 2)
            .unwrap();
        assert_eq!(*g, 2);
        drop(g);
        join_ok(&mut child);
    }

    #[test]
    fn condvar_wait_times_out() {
        let mb: Mailbox = Shared::create((0, ())).unwrap();
        let (m, cv) = &*mb;
        let start = Instant::now();
        let (g, timed_out) = cv
            .wait_timeout(m.lock().unwrap(), Duration::from_millis(50))
            .unwrap();
        assert!(timed_out);
        drop(g);
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert!(matches!(
            cv.wait_while(m.lock().unwrap(), Duration::from_millis(20), |v| *v == 0),
            Err(Error::Timeout)
        ));
    }

    #[test]
    fn events_cross_processes_and_time_out() {
        ipckit_core::enter(ROLES);
        let ev: Steps = Shared::create(((), ())).unwrap();
        assert!(matches!(
            ev.1.wait_timeout(Duration::from_millis(20)),
            Err(Error::Timeout)
        ));
        let mut child = Command::new("ping-event")
            .handle("events", ev.try_clone().unwrap())
            .spawn()
            .unwrap();
        ev.0.set();
        ev.1.wait_timeout(PATIENCE).unwrap();
        assert!(ev.1.is_set());
        join_ok(&mut child);
        ev.1.clear();
        assert!(!ev.1.is_set());
    }
}

mod segments {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn in_dev_shm(name: &str) -> bool {
        std::path::Path::new("/dev/shm").join(name).exists()
    }

    #[test]
    fn named_segments_are_0600_and_removed_by_their_owner() {
        let seg = Segment::create_named(10_000).unwrap();
        let name = seg.name().unwrap().to_string();
        let meta = std::fs::metadata(format!("/dev/shm/{name}")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(seg.len(), 10_000, "exact size");
        let other = Segment::open(&name).unwrap();
        assert!(!other.is_owner());
        drop(other);
        assert!(in_dev_shm(&name), "a non-owner does not remove it");
        drop(seg);
        assert!(!in_dev_shm(&name));
    }

    #[test]
    fn a_child_opens_a_named_segment_by_name() {
        ipckit_core::enter(ROLES);
        let seg = Segment::create_named(4096).unwrap();
        let name = seg.name().unwrap().to_string();
        let mut child = Command::new("write-by-name")
            .arg(&name)
            .unwrap()
            .spawn()
            .unwrap();
        join_ok(&mut child);
        let mut buf = [0u8; 18];
        seg.read(100, &mut buf).unwrap();
        assert_eq!(&buf, b"written by a child");
    }

    #[test]
    fn a_killed_owner_leaves_a_segment_that_can_be_found_and_removed() {
        ipckit_core::enter(ROLES);
        let report: Shared<SeqLock<[u8; 64]>> = Shared::create([0; 64]).unwrap();
        let mut child = Command::new("make-named-segment")
            .handle("report", report.try_clone().unwrap())
            .spawn()
            .unwrap();
        let (raw, _) = report.wait_newer(0, PATIENCE).unwrap();
        let name =
            String::from_utf8(raw.iter().copied().take_while(|&b| b != 0).collect()).unwrap();
        assert!(in_dev_shm(&name));
        assert!(
            !ipckit_shmem::stale_segments().unwrap().contains(&name),
            "its owner lives"
        );
        child.kill().unwrap();
        let _ = child.join_timeout(PATIENCE);
        assert!(ipckit_shmem::stale_segments().unwrap().contains(&name));
        let removed = ipckit_shmem::remove_stale_segments().unwrap();
        assert!(removed.contains(&name));
        assert!(!in_dev_shm(&name));
    }

    #[test]
    fn opening_the_wrong_type_is_an_error() {
        let v: Shared<Mutex<u64>> = Shared::create_named(1).unwrap();
        let name = v.name().unwrap().to_string();
        assert!(matches!(
            Shared::<Mutex<u32>>::open(&name),
            Err(Error::Mismatch { .. })
        ));
        let missing = Event::open("ipckit-no-such-segment").unwrap_err();
        assert!(matches!(missing, Error::Os { action: "open", .. }));
        assert_eq!(
            missing.io_error().map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound)
        );
        assert!(
            missing.to_string().contains("ipckit-no-such-segment"),
            "{missing}"
        );
        assert!(matches!(Segment::open("a/b"), Err(Error::InvalidName(_))));
        // Under another crate's error, the original is the source, not a text.
        let core = ipckit_core::Error::from(Segment::open("a/b").unwrap_err());
        assert!(matches!(core, ipckit_core::Error::SharedMemory(_)));
        let source = std::error::Error::source(&core).expect("a source");
        assert!(matches!(
            source.downcast_ref::<Error>(),
            Some(Error::InvalidName(_))
        ));
        let seg = Segment::create(16).unwrap();
        assert!(matches!(
            seg.write(10, &[0; 7]),
            Err(Error::OutOfBounds { .. })
        ));
        assert!(matches!(
            seg.read_at::<u64>(4),
            Err(Error::Misaligned { .. })
        ));
    }

    #[test]
    fn values_and_arrays() {
        let v: Value<f64> = Value::create(1.5).unwrap();
        v.store(2.5).unwrap();
        assert_eq!(v.load().unwrap(), 2.5);
        v.lock().unwrap().update(|x| x * 2.0).unwrap();
        assert_eq!(v.load().unwrap(), 5.0);
        let named: Value<f64> = Value::create_named(0.5).unwrap();
        let opened: Value<f64> = Value::open(named.name().unwrap()).unwrap();
        assert_eq!(opened.load().unwrap(), 0.5);
        let raw: RawValue<u32> = RawValue::create(3).unwrap();
        raw.store(4);
        assert_eq!(raw.load().unwrap(), 4);
        let a: Array<i32> = Array::create_named(5).unwrap();
        a.set(4, -1).unwrap();
        assert!(matches!(a.get(5), Err(Error::OutOfBounds { .. })));
        let b: Array<i32> = Array::open(a.name().unwrap()).unwrap();
        assert_eq!(b.to_vec().unwrap(), [0, 0, 0, 0, -1]);
        assert!(matches!(
            Array::<i64>::open(a.name().unwrap()),
            Err(Error::Mismatch { .. })
        ));
        let counter: Shared<AtomicU64> = Shared::create(7).unwrap();
        assert_eq!(counter.fetch_add(1, Ordering::Relaxed), 7);
    }

    #[test]
    fn two_processes_share_a_mapped_file() {
        ipckit_core::enter(ROLES);
        let path = ipckit_core::temp_path("mapped");
        let file = MappedFile::create(&path, 64).unwrap();
        let mut child = Command::new("write-record")
            .arg(&path)
            .unwrap()
            .spawn()
            .unwrap();
        join_ok(&mut child);
        assert_eq!(
            file.read_at::<Record>(8).unwrap(),
            Record {
                id: 7,
                celsius: 3.5
            }
        );
        drop(file);
        let on_disk = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(&on_disk[8..12], &7u32.to_ne_bytes());
    }
}

mod snapshots {
    use super::*;

    /// A writer process publishes as fast as it can; no read ever mixes two publications.
    #[test]
    fn a_seqlock_never_shows_a_torn_value() {
        ipckit_core::enter(ROLES);
        let cell: Shared<SeqLock<[u64; 32]>> = Shared::create([0; 32]).unwrap();
        let stop = Event::create().unwrap();
        let mut child = Command::new("publish-runs")
            .handle("cell", cell.try_clone().unwrap())
            .handle("stop", stop.try_clone().unwrap())
            .spawn()
            .unwrap();
        let mut last = 0;
        let mut distinct = 0;
        for _ in 0..200_000 {
            let (v, _) = cell.read();
            assert!(v.iter().all(|&x| x == v[0]), "torn read: {v:?}");
            assert!(v[0] >= last, "went backwards");
            distinct += usize::from(v[0] != last);
            last = v[0];
        }
        stop.set();
        join_ok(&mut child);
        assert!(distinct > 1, "the writer never overlapped the reader");
    }

    #[test]
    fn ring_readers_drain_then_see_the_writer_close() {
        ipckit_core::enter(ROLES);
        let ring: Readings = Shared::create(()).unwrap();
        let mut fast = ring.reader();
        let mut child = Command::new("push-readings")
            .arg(&(5u64, true))
            .unwrap()
            .handle("ring", ring.try_clone().unwrap())
            .spawn()
            .unwrap();
        for i in 0..5 {
            assert_eq!(fast.recv_timeout(PATIENCE).unwrap(), i);
        }
        assert!(matches!(
            fast.recv_timeout(PATIENCE),
            Err(Error::Disconnected)
        ));
        join_ok(&mut child);
        // A reader starting late still gets everything in the ring.
        let mut late = ring.reader();
        assert_eq!(late.pending(), 5);
        assert_eq!(late.recv_timeout(PATIENCE).unwrap(), 0);
    }

    #[test]
    fn a_slow_reader_is_told_what_it_missed() {
        ipckit_core::enter(ROLES);
        let ring: Readings = Shared::create(()).unwrap();
        let mut slow = ring.reader();
        let mut child = Command::new("push-readings")
            .arg(&(20u64, true))
            .unwrap()
            .handle("ring", ring.try_clone().unwrap())
            .spawn()
            .unwrap();
        join_ok(&mut child);
        assert!(matches!(
            slow.recv_timeout(PATIENCE),
            Err(Error::Lagged(12))
        ));
        let rest: Vec<u64> = (0..8)
            .map(|_| slow.recv_timeout(PATIENCE).unwrap())
            .collect();
        assert_eq!(rest, (12..20).collect::<Vec<_>>());
    }

    #[test]
    fn a_killed_writer_ends_the_ring() {
        ipckit_core::enter(ROLES);
        let ring: Readings = Shared::create(()).unwrap();
        let mut reader = ring.reader();
        let mut child = Command::new("push-readings")
            .arg(&(3u64, false))
            .unwrap()
            .handle("ring", ring.try_clone().unwrap())
            .spawn()
            .unwrap();
        for i in 0..3 {
            assert_eq!(reader.recv_timeout(PATIENCE).unwrap(), i);
        }
        child.kill().unwrap();
        let _ = child.join_timeout(PATIENCE);
        assert!(matches!(
            reader.recv_timeout(Duration::from_secs(2)),
            Err(Error::Disconnected)
        ));
    }
}

mod python {
    use std::io::{BufRead, BufReader};

    use super::*;

    /// Python creates the block; ipckit opens it, reads Python's bytes and writes its own,
    /// which Python waits for before it removes the block.
    #[test]
    fn ipckit_opens_a_block_python_made() {
        let Some(py) = ipckit_testkit::python(12..=99) else {
            return;
        };
        let name = ipckit_core::unique_name("py");
        let script = format!(
            "from multiprocessing import shared_memory\n\
             import sys, time\n\
             shm = shared_memory.SharedMemory(create=True, name='{name}', size=64)\n\
             shm.buf[:5] = b'hello'\n\
             print('ready', flush=True)\n\
             deadline = time.monotonic() + {patience}\n\
             while bytes(shm.buf[10:16]) != b'ipckit' and time.monotonic() < deadline:\n\
             \x20   time.sleep(0.01)\n\
             ok = bytes(shm.buf[10:16]) == b'ipckit'\n\
             shm.close(); shm.unlink()\n\
             sys.exit(0 if ok else 3)\n",
            patience = PATIENCE.as_secs()
        );
        let mut python = Bounded::python(&py, &script, &[]).unwrap();
        let stdout = python.child().stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        let seg = Segment::open(&name).unwrap();
        assert_eq!(seg.len(), 64);
        let mut buf = [0u8; 5];
        seg.read(0, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        seg.write(10, b"ipckit").unwrap();
        drop(seg);
        python.wait_ok("the Python side");
        assert!(!std::path::Path::new("/dev/shm").join(&name).exists());
    }

    /// ipckit creates the block; Python attaches by name and reads it. Python 3.12 and older
    /// would unlink an attached block at exit (its resource tracker): the script opts out.
    #[test]
    fn python_opens_a_block_ipckit_made() {
        let Some(py) = ipckit_testkit::python(12..=99) else {
            return;
        };
        let seg = Segment::create_named(32).unwrap();
        seg.write(0, b"from rust").unwrap();
        let name = seg.name().unwrap();
        let script = format!(
            "from multiprocessing import shared_memory, resource_tracker\n\
             import sys\n\
             if sys.version_info >= (3, 13):\n\
             \x20   shm = shared_memory.SharedMemory(name='{name}', track=False)\n\
             else:\n\
             \x20   shm = shared_memory.SharedMemory(name='{name}')\n\
             \x20   resource_tracker.unregister(shm._name, 'shared_memory')\n\
             assert bytes(shm.buf[:9]) == b'from rust', bytes(shm.buf[:9])\n\
             shm.buf[9:12] = b'+py'\n\
             shm.close()\n"
        );
        Bounded::python(&py, &script, &[])
            .unwrap()
            .wait_ok("the Python side");
        let mut buf = [0u8; 12];
        seg.read(0, &mut buf).unwrap();
        assert_eq!(&buf, b"from rust+py");
        assert!(
            std::path::Path::new("/dev/shm").join(name).exists(),
            "Python left it in place"
        );
    }
}
