//! Shared-memory workloads of `docs/benchmarks.md`: `counter_lock_4x`,
//! `counter_atomic_4x`, `shm_bw_64MiB`, `shm_spin_rtt`, and `lock_uncontended`.
//!
//! The first four run across processes: each row starts its worker processes (roles of
//! this executable) once, on its first batch, each with the row's shared memory and a
//! control connection. For every batch the parent orders the work over the control
//! connections and waits for the workers' reports; at the end it closes them, upon which
//! the workers return. `lock_uncontended` runs in this process alone.
//!
//! The floors are the raw calls and raw atomics doing the same work on a raw shared
//! mapping of an anonymous memfd (`memfd_create`, `ftruncate`, `mmap`):
//!
//! - `counter_lock_4x` (increments/s): `raw_pthread` is the floor the workload names, a
//!   process-shared pthread mutex without robustness; `raw_pthread_robust` is exactly the
//!   lock ipckit's `Mutex` wraps (process-shared and robust), so ipckit against it is the
//!   cost of the wrapper alone; `raw_spinlock` is a test-and-test-and-set lock on one
//!   `AtomicU32` that yields the CPU every 1024 spins (four spinning processes share two
//!   cores here);
//! - `counter_atomic_4x` (increments/s): `fetch_add` on a raw `AtomicU64`;
//! - `shm_bw_64MiB` (GB/s): `ptr::copy_nonoverlapping` in and out of the mapping, against
//!   `Segment::write` and `Segment::read`;
//! - `shm_spin_rtt` (µs per RTT): two raw `AtomicU64`s spun on, against two `SeqLock`s
//!   with `spin_newer`;
//! - `lock_uncontended` (ns per lock and unlock): the pthread and spin locks above, and
//!   `std::sync::Mutex` (within one process only) as a peer; the `ipckit_lock_timeout` row
//!   measures `Mutex::lock_timeout`.
//!
//! Every wait in a worker has a deadline (the raw pthread rows use
//! `pthread_mutex_timedlock`), except ipckit's `Mutex::lock`, which is robust instead: a
//! holder that dies hands the lock on. A line of ratios follows each group.
//!
//! ```text
//! cargo bench -p ipckit-benches --bench shmem -- --warm-up-time 1 --measurement-time 3
//! ```

use std::{
    cell::UnsafeCell,
    hint::{black_box, spin_loop},
    mem::MaybeUninit,
    sync::{
        PoisonError,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::ensure;
use criterion::Criterion;
use ipckit_benches::{
    EchoRig, Figure, Floor, Group, PATIENCE, PingPong, Raw, RawMem, RawSpin, Rig, SPINS, Worker,
    echoes, serve,
};
use ipckit_core::{Ctx, Handle, Handoff, Role, RoleResult};
use ipckit_shmem::{Mutex, Segment, SeqLock, Shared};

/// The worker processes of a counter row.
const WORKERS: u64 = 4;
/// The bytes of the bandwidth workload.
const BIG: usize = 64 << 20;
/// An error unless the pthread call `what` returned 0.
fn check(rc: libc::c_int, what: &str) -> anyhow::Result<()> {
    ensure!(rc == 0, "{what}: {}", std::io::Error::from_raw_os_error(rc));
    Ok(())
}

/// `PATIENCE` from now on `CLOCK_REALTIME`, as `pthread_mutex_timedlock` wants it.
fn realtime_deadline() -> libc::timespec {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        + PATIENCE;
    libc::timespec {
        tv_sec: t.as_secs() as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    }
}

/// A counter under a process-shared (not robust) pthread mutex.
#[repr(C)]
struct PthreadCounter {
    mutex: UnsafeCell<libc::pthread_mutex_t>,
    count: UnsafeCell<u64>,
}

// SAFETY: a pthread mutex is made to be shared; the count is touched only under it.
unsafe impl Sync for PthreadCounter {}

// SAFETY: zeroes are a zero count and `PTHREAD_MUTEX_INITIALIZER` (on glibc and musl), a
// valid mutex, which `init` makes process-shared before any other process can reach it;
// the count is touched only under the mutex.
unsafe impl Floor for PthreadCounter {}

impl PthreadCounter {
    /// Makes the mutex process-shared, and robust if `robust` (as ipckit's is). Only
    /// [`pthread_counter`] calls it, on memory it has just made.
    fn init(&self, robust: bool) -> anyhow::Result<()> {
        let mut attr = MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        // SAFETY: initialises the attribute object on this stack.
        let rc = unsafe { libc::pthread_mutexattr_init(attr.as_mut_ptr()) };
        check(rc, "pthread_mutexattr_init")?;
        let attr = attr.as_mut_ptr();
        // SAFETY: `attr` was initialised above.
        let rc = unsafe { libc::pthread_mutexattr_setpshared(attr, libc::PTHREAD_PROCESS_SHARED) };
        let r = check(rc, "pthread_mutexattr_setpshared").and_then(|()| {
            if robust {
                // SAFETY: `attr` was initialised above.
                let rc =
                    unsafe { libc::pthread_mutexattr_setrobust(attr, libc::PTHREAD_MUTEX_ROBUST) };
                check(rc, "pthread_mutexattr_setrobust")?;
            }
            // SAFETY: no other thread or process can reach the mutex yet (see above);
            // `attr` is initialised.
            let rc = unsafe { libc::pthread_mutex_init(self.mutex.get(), attr) };
            check(rc, "pthread_mutex_init")
        });
        // SAFETY: `attr` was initialised above and is not used after this.
        unsafe { libc::pthread_mutexattr_destroy(attr) };
        r
    }

    /// Runs `f` on the count under the mutex, waiting for it until `deadline` (on
    /// `CLOCK_REALTIME`) if there is one, as long as it takes otherwise.
    fn with<R>(
        &self,
        deadline: Option<&libc::timespec>,
        f: impl FnOnce(&mut u64) -> R,
    ) -> anyhow::Result<R> {
        let rc = match deadline {
            // SAFETY: `init` made the mutex before any other process could reach it; the
            // deadline lives on the caller's stack for the call.
            Some(t) => unsafe { libc::pthread_mutex_timedlock(self.mutex.get(), t) },
            // SAFETY: as above.
            None => unsafe { libc::pthread_mutex_lock(self.mutex.get()) },
        };
        check(rc, "pthread_mutex_lock")?;
        // SAFETY: the mutex is held: nothing else touches the count until it is unlocked.
        let r = f(unsafe { &mut *self.count.get() });
        // SAFETY: this thread holds the mutex.
        let rc = unsafe { libc::pthread_mutex_unlock(self.mutex.get()) };
        check(rc, "pthread_mutex_unlock")?;
        Ok(r)
    }
}

/// A zero count under a new process-shared mutex, robust if `robust`.
fn pthread_counter(robust: bool) -> anyhow::Result<Raw<PthreadCounter>> {
    let counter = Raw::<PthreadCounter>::create()?;
    counter.init(robust)?;
    Ok(counter)
}

/// A counter under a spin lock made of one `AtomicU32`.
#[repr(C)]
struct SpinCounter {
    lock: AtomicU32,
    count: UnsafeCell<u64>,
}

// SAFETY: the count is touched only under the lock.
unsafe impl Sync for SpinCounter {}

// SAFETY: zeroes are an unlocked lock and a zero count; the count is touched only under
// the lock.
unsafe impl Floor for SpinCounter {}

impl SpinCounter {
    /// Runs `f` on the count under the lock: test and set, then spin on loads until it is
    /// free, yielding the CPU every `SPINS` spins, giving up at `deadline`.
    fn with<R>(&self, deadline: Instant, f: impl FnOnce(&mut u64) -> R) -> anyhow::Result<R> {
        let mut spins = 0u32;
        while self.lock.swap(1, Ordering::Acquire) != 0 {
            while self.lock.load(Ordering::Relaxed) != 0 {
                spins = spins.wrapping_add(1);
                if spins % SPINS == 0 {
                    ensure!(Instant::now() < deadline, "the spin lock stayed held");
                    std::thread::yield_now();
                } else {
                    spin_loop();
                }
            }
        }
        // SAFETY: the lock is held: nothing else touches the count until it is released.
        let r = f(unsafe { &mut *self.count.get() });
        // Pairs with the Acquire swap of the next holder.
        self.lock.store(0, Ordering::Release);
        Ok(r)
    }
}

// The workers: each takes its memory and its control connection and serves orders.

const LOCK_IPCKIT: &str = "lock_ipckit";
const LOCK_PTHREAD: &str = "lock_pthread";
const LOCK_SPIN: &str = "lock_spin";
const ATOMIC_IPCKIT: &str = "atomic_ipckit";
const ATOMIC_RAW: &str = "atomic_raw";
const BW_IPCKIT: &str = "bw_ipckit";
const BW_RAW: &str = "bw_raw";
const SPIN_IPCKIT: &str = "spin_ipckit";
const SPIN_RAW: &str = "spin_raw";

const ROLES: &[Role] = &[
    Role::new(LOCK_IPCKIT, lock_ipckit),
    Role::new(LOCK_PTHREAD, lock_pthread),
    Role::new(LOCK_SPIN, lock_spin),
    Role::new(ATOMIC_IPCKIT, atomic_ipckit),
    Role::new(ATOMIC_RAW, atomic_raw),
    Role::new(BW_IPCKIT, bw_ipckit),
    Role::new(BW_RAW, bw_raw),
    Role::new(SPIN_IPCKIT, spin_ipckit),
    Role::new(SPIN_RAW, spin_raw),
];

/// `n` increments under ipckit's robust `Mutex`.
fn lock_ipckit(ctx: &mut Ctx) -> RoleResult {
    let counter: Shared<Mutex<u64>> = ctx.handle("mem")?;
    serve(ctx, |n| {
        for _ in 0..n {
            *counter.lock()? += 1;
        }
        Ok(n)
    })
}

/// `n` increments under the raw pthread mutex.
fn lock_pthread(ctx: &mut Ctx) -> RoleResult {
    let counter = Raw::<PthreadCounter>::open(ctx, "mem")?;
    serve(ctx, |n| {
        let deadline = realtime_deadline();
        for _ in 0..n {
            counter.with(Some(&deadline), |c| *c += 1)?;
        }
        Ok(n)
    })
}

/// `n` increments under the raw spin lock.
fn lock_spin(ctx: &mut Ctx) -> RoleResult {
    let counter = Raw::<SpinCounter>::open(ctx, "mem")?;
    serve(ctx, |n| {
        let deadline = Instant::now() + PATIENCE;
        for _ in 0..n {
            counter.with(deadline, |c| *c += 1)?;
        }
        Ok(n)
    })
}

/// `n` increments of ipckit's shared atomic.
fn atomic_ipckit(ctx: &mut Ctx) -> RoleResult {
    let counter: Shared<AtomicU64> = ctx.handle("mem")?;
    serve(ctx, |n| {
        for _ in 0..n {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Ok(n)
    })
}

/// `n` increments of the raw atomic.
fn atomic_raw(ctx: &mut Ctx) -> RoleResult {
    let counter = Raw::<AtomicU64>::open(ctx, "mem")?;
    serve(ctx, |n| {
        for _ in 0..n {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Ok(n)
    })
}

/// Reads all of ipckit's segment on each order.
fn bw_ipckit(ctx: &mut Ctx) -> RoleResult {
    let seg: Segment = ctx.handle("mem")?;
    read_all(ctx, seg)
}

/// Reads all of the raw mapping on each order.
fn bw_raw(ctx: &mut Ctx) -> RoleResult {
    let mem = RawMem::open(ctx, "mem")?;
    read_all(ctx, mem)
}

/// On each order, copies the `BIG` bytes of `mem` out and reports their last 8 bytes (the
/// parent's stamp).
fn read_all(ctx: &mut Ctx, mem: impl Bytes) -> RoleResult {
    let mut buf = vec![0u8; BIG];
    serve(ctx, |_| {
        mem.get(&mut buf)?;
        Ok(u64::from_le_bytes(buf[BIG - 8..].try_into()?))
    })
}

/// Echoes over ipckit's sequence locks: `n` echoes on each order.
fn spin_ipckit(ctx: &mut Ctx) -> RoleResult {
    let pair = SeqPair {
        ping: ctx.handle("ping")?,
        pong: ctx.handle("pong")?,
        seen: 0,
    };
    echoes(ctx, pair)
}

/// Echoes over the raw words: `n` echoes on each order.
fn spin_raw(ctx: &mut Ctx) -> RoleResult {
    let pair = RawSpin {
        words: Raw::open(ctx, "mem")?,
        last: 0,
    };
    echoes(ctx, pair)
}

// The parent's side.

/// A counter the parent shares with a row's workers.
trait Counter {
    /// A handle on it for one worker.
    fn handoff(&self) -> anyhow::Result<Handoff>;

    /// Its value, read while the workers are idle.
    fn total(&self) -> anyhow::Result<u64>;
}

impl Counter for Shared<Mutex<u64>> {
    fn handoff(&self) -> anyhow::Result<Handoff> {
        Ok(self.try_clone()?.into_handoff())
    }

    fn total(&self) -> anyhow::Result<u64> {
        Ok(*self.lock()?)
    }
}

impl Counter for Shared<AtomicU64> {
    fn handoff(&self) -> anyhow::Result<Handoff> {
        Ok(self.try_clone()?.into_handoff())
    }

    fn total(&self) -> anyhow::Result<u64> {
        Ok(self.load(Ordering::Relaxed))
    }
}

impl Counter for Raw<PthreadCounter> {
    fn handoff(&self) -> anyhow::Result<Handoff> {
        Raw::handoff(self)
    }

    fn total(&self) -> anyhow::Result<u64> {
        self.with(Some(&realtime_deadline()), |c| *c)
    }
}

impl Counter for Raw<SpinCounter> {
    fn handoff(&self) -> anyhow::Result<Handoff> {
        Raw::handoff(self)
    }

    fn total(&self) -> anyhow::Result<u64> {
        self.with(Instant::now() + PATIENCE, |c| *c)
    }
}

impl Counter for Raw<AtomicU64> {
    fn handoff(&self) -> anyhow::Result<Handoff> {
        Raw::handoff(self)
    }

    fn total(&self) -> anyhow::Result<u64> {
        Ok(self.load(Ordering::Relaxed))
    }
}

/// A counter row: `WORKERS` workers share the iterations of a batch, one increment each.
struct Counters<C> {
    counter: C,
    workers: Vec<Worker>,
    /// The increments ordered so far.
    expected: u64,
}

impl<C: Counter> Counters<C> {
    fn start(role: &'static str, counter: C) -> anyhow::Result<Self> {
        let workers = (0..WORKERS)
            .map(|_| Worker::launch(role, &(), [("mem", counter.handoff()?)]))
            .collect::<anyhow::Result<_>>()?;
        Ok(Counters {
            counter,
            workers,
            expected: 0,
        })
    }
}

impl<C: Counter> Rig for Counters<C> {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
        let began = Instant::now();
        for (i, w) in (0..).zip(&mut self.workers) {
            w.order(iters / WORKERS + u64::from(i < iters % WORKERS))?;
        }
        for w in &mut self.workers {
            w.report()?;
        }
        let took = began.elapsed();
        self.expected += iters;
        let total = self.counter.total()?;
        ensure!(
            total == self.expected,
            "the counter is {total} after {} increments",
            self.expected
        );
        Ok(took)
    }

    fn finish(self) -> anyhow::Result<()> {
        self.workers.into_iter().try_for_each(Worker::finish)
    }
}

/// Memory the parent fills and a worker reads whole.
trait Bytes {
    /// A handle on it for the worker.
    fn handoff(&self) -> anyhow::Result<Handoff>;

    /// Copies `src` to the start of the memory.
    fn put(&self, src: &[u8]) -> anyhow::Result<()>;

    /// Copies the start of the memory into `dst`.
    fn get(&self, dst: &mut [u8]) -> anyhow::Result<()>;
}

impl Bytes for Segment {
    fn handoff(&self) -> anyhow::Result<Handoff> {
        Ok(self.try_clone()?.into_handoff())
    }

    fn put(&self, src: &[u8]) -> anyhow::Result<()> {
        Ok(self.write(0, src)?)
    }

    fn get(&self, dst: &mut [u8]) -> anyhow::Result<()> {
        Ok(self.read(0, dst)?)
    }
}

/// `memcpy` in and out. The two processes take turns: the worker reads only between an
/// order and its report, the parent writes only outside them, and the fences of
/// [`Worker`] and [`serve`] order the turns, so the plain copies never race.
impl Bytes for RawMem {
    fn handoff(&self) -> anyhow::Result<Handoff> {
        RawMem::handoff(self)
    }

    fn put(&self, src: &[u8]) -> anyhow::Result<()> {
        ensure!(src.len() <= self.len(), "more than the mapping holds");
        // SAFETY: the range lies within the mapping, which lives as long as `self`; nobody
        // else touches it during our turn (above); `src` is ours, not in the mapping.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.as_ptr(), src.len()) };
        Ok(())
    }

    fn get(&self, dst: &mut [u8]) -> anyhow::Result<()> {
        ensure!(dst.len() <= self.len(), "more than the mapping holds");
        // SAFETY: as in `put`, the other way round.
        unsafe { std::ptr::copy_nonoverlapping(self.as_ptr(), dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }
}

/// The bandwidth row: per iteration, the parent writes `BIG` bytes (stamped in their last
/// 8 with the iteration's number), orders the worker to read them all, and checks the
/// stamp it reports.
struct Bandwidth<M> {
    mem: M,
    worker: Worker,
    src: Vec<u8>,
    stamp: u64,
}

impl<M: Bytes> Bandwidth<M> {
    fn start(role: &'static str, mem: M) -> anyhow::Result<Self> {
        let worker = Worker::launch(role, &(), [("mem", mem.handoff()?)])?;
        Ok(Bandwidth {
            mem,
            worker,
            src: vec![0xa5; BIG],
            stamp: 0,
        })
    }
}

impl<M: Bytes> Rig for Bandwidth<M> {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
        let began = Instant::now();
        for _ in 0..iters {
            self.stamp += 1;
            self.src[BIG - 8..].copy_from_slice(&self.stamp.to_le_bytes());
            self.mem.put(&self.src)?;
            self.worker.order(self.stamp)?;
            let seen = self.worker.report()?;
            ensure!(seen == self.stamp, "read {seen} for write {}", self.stamp);
        }
        Ok(began.elapsed())
    }

    fn finish(self) -> anyhow::Result<()> {
        self.worker.finish()
    }
}

/// A spinning ping-pong in shared memory, which the worker gets as handles.
trait SpinPair: PingPong {
    /// The handles for the worker.
    fn handoffs(&self) -> anyhow::Result<Vec<(&'static str, Handoff)>>;
}

/// ipckit's ping-pong: two sequence locks. `spin_newer` takes a timeout, not a deadline.
struct SeqPair {
    ping: Shared<SeqLock<u64>>,
    pong: Shared<SeqLock<u64>>,
    /// The version last read of the lock this side waits on (`pong` in the parent, `ping`
    /// in the worker).
    seen: u32,
}

impl PingPong for SeqPair {
    fn round(&mut self, v: u64, _: Instant) -> anyhow::Result<()> {
        self.ping.publish(&v);
        let (echo, version) = self.pong.spin_newer(self.seen, PATIENCE)?;
        self.seen = version;
        ensure!(echo == v, "echo {echo} of {v}");
        Ok(())
    }

    fn echo(&mut self, _: Instant) -> anyhow::Result<()> {
        let (v, version) = self.ping.spin_newer(self.seen, PATIENCE)?;
        self.seen = version;
        self.pong.publish(&v);
        Ok(())
    }
}

impl SpinPair for SeqPair {
    fn handoffs(&self) -> anyhow::Result<Vec<(&'static str, Handoff)>> {
        Ok(vec![
            ("ping", self.ping.try_clone()?.into_handoff()),
            ("pong", self.pong.try_clone()?.into_handoff()),
        ])
    }
}

/// The raw ping-pong: two words on cache lines of their own.
impl SpinPair for RawSpin {
    fn handoffs(&self) -> anyhow::Result<Vec<(&'static str, Handoff)>> {
        Ok(vec![("mem", self.words.handoff()?)])
    }
}

/// The spinning round-trip row of role `role` over `pair`, its echoing child pinned to
/// CPU `theirs`.
fn spin_rig<P: SpinPair>(
    role: &'static str,
    pair: P,
    (_, theirs): (usize, usize),
) -> anyhow::Result<EchoRig<P>> {
    let worker = Worker::launch(role, &(), pair.handoffs()?)?;
    worker.pin(theirs)?;
    Ok(EchoRig::new(pair, worker))
}

/// A row in this process alone: `op(iters)` runs a batch.
struct Local<F>(F);

impl<F: FnMut(u64) -> anyhow::Result<()>> Rig for Local<F> {
    fn run(&mut self, iters: u64) -> anyhow::Result<Duration> {
        let began = Instant::now();
        (self.0)(iters)?;
        Ok(began.elapsed())
    }

    fn finish(self) -> anyhow::Result<()> {
        Ok(())
    }
}

fn counter_lock(c: &mut Criterion) -> anyhow::Result<()> {
    let mut g = Group::new(c, "counter_lock_4x", Figure::Rate);
    g.row("ipckit", || {
        Counters::start(LOCK_IPCKIT, Shared::<Mutex<u64>>::create(0)?)
    })?;
    g.row("raw_pthread", || {
        Counters::start(LOCK_PTHREAD, pthread_counter(false)?)
    })?;
    g.row("raw_pthread_robust", || {
        Counters::start(LOCK_PTHREAD, pthread_counter(true)?)
    })?;
    g.row("raw_spinlock", || {
        Counters::start(LOCK_SPIN, Raw::<SpinCounter>::create()?)
    })?;
    g.finish(
        &[(
            "ipckit",
            &["raw_pthread", "raw_pthread_robust", "raw_spinlock"],
        )],
        &[],
    );
    Ok(())
}

fn counter_atomic(c: &mut Criterion) -> anyhow::Result<()> {
    let mut g = Group::new(c, "counter_atomic_4x", Figure::Rate);
    g.row("ipckit", || {
        Counters::start(ATOMIC_IPCKIT, Shared::<AtomicU64>::create(0)?)
    })?;
    g.row("raw_atomic", || {
        Counters::start(ATOMIC_RAW, Raw::<AtomicU64>::create()?)
    })?;
    g.finish(&[("ipckit", &["raw_atomic"])], &[]);
    Ok(())
}

fn shm_bw(c: &mut Criterion) -> anyhow::Result<()> {
    let mut g = Group::new(c, "shm_bw_64MiB", Figure::Bandwidth(BIG as u64));
    g.row("ipckit", || {
        Bandwidth::start(BW_IPCKIT, Segment::create(BIG)?)
    })?;
    g.row("raw_memcpy", || {
        Bandwidth::start(BW_RAW, RawMem::create(BIG)?)
    })?;
    g.finish(&[("ipckit", &["raw_memcpy"])], &[]);
    Ok(())
}

fn shm_spin_rtt(c: &mut Criterion) -> anyhow::Result<()> {
    let mut g = Group::new(c, "shm_spin_rtt", Figure::RoundTrip);
    g.pinned_row("ipckit", |cpus| {
        let pair = SeqPair {
            ping: Shared::create(0)?,
            pong: Shared::create(0)?,
            seen: 0,
        };
        spin_rig(SPIN_IPCKIT, pair, cpus)
    })?;
    g.pinned_row("raw_atomics", |cpus| {
        let pair = RawSpin {
            words: Raw::create()?,
            last: 0,
        };
        spin_rig(SPIN_RAW, pair, cpus)
    })?;
    g.finish(&[("ipckit", &["raw_atomics"])], &[]);
    Ok(())
}

fn lock_uncontended(c: &mut Criterion) -> anyhow::Result<()> {
    let mut g = Group::new(c, "lock_uncontended", Figure::Operation);
    g.row("ipckit", || {
        let counter = Shared::<Mutex<u64>>::create(0)?;
        Ok(Local(move |n| -> anyhow::Result<()> {
            for _ in 0..n {
                *black_box(&counter).lock()? += 1;
            }
            Ok(())
        }))
    })?;
    g.row("ipckit_lock_timeout", || {
        let counter = Shared::<Mutex<u64>>::create(0)?;
        Ok(Local(move |n| -> anyhow::Result<()> {
            for _ in 0..n {
                *black_box(&counter).lock_timeout(PATIENCE)? += 1;
            }
            Ok(())
        }))
    })?;
    for (row, robust) in [("raw_pthread", false), ("raw_pthread_robust", true)] {
        g.row(row, move || {
            let counter = pthread_counter(robust)?;
            Ok(Local(move |n| -> anyhow::Result<()> {
                for _ in 0..n {
                    black_box(&counter).with(None, |c| *c += 1)?;
                }
                Ok(())
            }))
        })?;
    }
    g.row("raw_spinlock", || {
        let counter = Raw::<SpinCounter>::create()?;
        Ok(Local(move |n| -> anyhow::Result<()> {
            let deadline = Instant::now() + PATIENCE;
            for _ in 0..n {
                black_box(&counter).with(deadline, |c| *c += 1)?;
            }
            Ok(())
        }))
    })?;
    g.row("std_mutex", || {
        let counter = std::sync::Mutex::new(0u64);
        Ok(Local(move |n| -> anyhow::Result<()> {
            for _ in 0..n {
                *black_box(&counter)
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) += 1;
            }
            Ok(())
        }))
    })?;
    g.finish(
        &[
            (
                "ipckit",
                &["raw_pthread", "raw_pthread_robust", "raw_spinlock"],
            ),
            ("ipckit_lock_timeout", &["raw_pthread_robust"]),
        ],
        &["std_mutex"],
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    ipckit_core::enter(ROLES);
    let mut c = Criterion::default().configure_from_args();
    counter_lock(&mut c)?;
    counter_atomic(&mut c)?;
    shm_bw(&mut c)?;
    shm_spin_rtt(&mut c)?;
    lock_uncontended(&mut c)?;
    c.final_summary();
    Ok(())
}
