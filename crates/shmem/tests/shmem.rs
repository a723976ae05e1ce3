//! ipckit-shmem across real processes: robust locks under SIGKILL, barriers, condition
//! variables, events, segments that leave nothing behind, snapshots that never tear, and
//! Python's `SharedMemory` on the other side.

use std::{
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use ipckit_core::{Child, Command, Ctx, Role, RoleResult};
use ipckit_shmem::{
    Array, Barrier, Condvar, Error, Event, MappedFile, Mutex, RawValue, Ring, RwLock, Segment,
    Semaphore, SemaphoreInit, SeqLock, Shared, Value,
};

const PATIENCE: Duration = Duration::from_secs(30);

fn join_ok(child: &mut Child) {
    let status = child.join_timeout(PATIENCE).expect("child joined");
    assert!(status.success(), "{} ended with {status}", child.role());
}

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
    let mut guard = value.lock()?;
    *guard = 99;
    flag.set();
    std::thread::sleep(Duration::from_secs(600));
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
    fn a_killed_holder_hands_a_value_over() {
        ipckit_core::enter(ROLES);
        let value: Value<u64> = Value::create(0).unwrap();
        let flag: Shared<Event> = Shared::create(()).unwrap();
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
        // The dead holder's write never reached the value: updates land when a guard drops.
        assert_eq!(*guard, 0);
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
        let s: Shared<Semaphore> = Shared::create(SemaphoreInit {
            value: 2,
            bounded: true,
        })
        .unwrap();
        s.acquire().unwrap();
        s.try_acquire().unwrap();
        assert!(matches!(
            s.acquire_timeout(Duration::from_millis(20)),
            Err(Error::Timeout)
        ));
        s.release().unwrap();
        s.release().unwrap();
        assert!(matches!(s.release(), Err(Error::SemaphoreOverflow(2))));
        let free: Shared<Semaphore> = Shared::create(0.into()).unwrap();
        free.release().unwrap();
        assert_eq!(free.value(), 1);
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
        let b: Shared<Barrier> = Shared::create(2).unwrap();
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
        let ev: Shared<(Event, Event)> = Shared::create(((), ())).unwrap();
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
        assert!(matches!(
            Shared::<Event>::open("ipckit-no-such-segment"),
            Err(Error::Io(_))
        ));
        assert!(matches!(Segment::open("a/b"), Err(Error::InvalidName(_))));
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
        v.store(2.5);
        assert_eq!(v.load(), 2.5);
        *v.lock().unwrap() *= 2.0;
        assert_eq!(v.load(), 5.0);
        let big: Value<[u64; 4]> = Value::create([1, 2, 3, 4]).unwrap();
        big.store([5; 4]);
        assert_eq!(big.load(), [5; 4]);
        let raw: RawValue<u32> = RawValue::create(3).unwrap();
        raw.store(4);
        assert_eq!(raw.load(), 4);
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
        let stop: Shared<Event> = Shared::create(()).unwrap();
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
    use std::{
        io::{BufRead, BufReader, Write},
        process::{Command, Stdio},
    };

    use super::*;

    fn python() -> Option<String> {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.version_info[1])"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Python creates the block; ipckit opens it, reads Python's bytes and writes its own.
    #[test]
    fn ipckit_opens_a_block_python_made() {
        if python().is_none() {
            eprintln!("skipped: python3 is not installed");
            return;
        }
        let name = ipckit_core::unique_name("py");
        let script = format!(
            "from multiprocessing import shared_memory\n\
             import sys\n\
             shm = shared_memory.SharedMemory(create=True, name='{name}', size=64)\n\
             shm.buf[:5] = b'hello'\n\
             print('ready', flush=True)\n\
             sys.stdin.readline()\n\
             ok = bytes(shm.buf[10:16]) == b'ipckit'\n\
             shm.close(); shm.unlink()\n\
             sys.exit(0 if ok else 3)\n"
        );
        let mut py = Command::new("python3")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(py.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        let seg = Segment::open(&name).unwrap();
        assert_eq!(seg.len(), 64);
        let mut buf = [0u8; 5];
        seg.read(0, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        seg.write(10, b"ipckit").unwrap();
        drop(seg);
        py.stdin.take().unwrap().write_all(b"go\n").unwrap();
        assert!(py.wait().unwrap().success());
        assert!(!std::path::Path::new("/dev/shm").join(&name).exists());
    }

    /// ipckit creates the block; Python attaches by name and reads it. Python 3.12 and older
    /// would unlink an attached block at exit (its resource tracker): the script opts out.
    #[test]
    fn python_opens_a_block_ipckit_made() {
        let Some(minor) = python() else {
            eprintln!("skipped: python3 is not installed");
            return;
        };
        let seg = Segment::create_named(32).unwrap();
        seg.write(0, b"from rust").unwrap();
        let name = seg.name().unwrap();
        let attach = if minor.parse::<u32>().unwrap_or(0) >= 13 {
            format!("shm = shared_memory.SharedMemory(name='{name}', track=False)\n")
        } else {
            format!(
                "shm = shared_memory.SharedMemory(name='{name}')\n\
                 from multiprocessing import resource_tracker\n\
                 resource_tracker.unregister(shm._name, 'shared_memory')\n"
            )
        };
        let script = format!(
            "from multiprocessing import shared_memory\n{attach}\
             assert bytes(shm.buf[:9]) == b'from rust', bytes(shm.buf[:9])\n\
             shm.buf[9:12] = b'+py'\n\
             shm.close()\n"
        );
        let status = Command::new("python3")
            .args(["-c", &script])
            .status()
            .unwrap();
        assert!(status.success());
        let mut buf = [0u8; 12];
        seg.read(0, &mut buf).unwrap();
        assert_eq!(&buf, b"from rust+py");
        assert!(
            std::path::Path::new("/dev/shm").join(name).exists(),
            "Python left it in place"
        );
    }
}
