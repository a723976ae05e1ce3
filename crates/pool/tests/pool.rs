//! The pool with real worker processes: typed results, panics, SIGKILLed and aborting
//! workers, 16 MiB messages, task timeouts, retired workers, initializers, ending.
//!
//! Every test calls `enter` first: a worker re-runs the test binary, filtered to a test,
//! whose first line turns it into the worker.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use ipckit_pool::{Error, Event, Pool, PoolOptions};
use ipckit_testkit::{PATIENCE, wait_until};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde::{Deserialize, Serialize};

fn enter() {
    ipckit_pool::enter(&[]);
}

fn square(x: u64) -> u64 {
    x * x
}

/// Whether process `pid` still exists (a reaped worker does not).
fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

fn sigkill(pid: u32) {
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill the worker");
}

/// Events of a pool, each with the instant the pool told it.
fn events() -> (PoolOptions, mpsc::Receiver<(Instant, Event)>) {
    let (tx, rx) = mpsc::channel();
    let opts = PoolOptions::new(3).on_event(move |e| {
        let _ = tx.send((Instant::now(), e.clone()));
    });
    (opts, rx)
}

/// Waits for the first event that `pick` accepts.
fn wait_event<T>(
    rx: &mpsc::Receiver<(Instant, Event)>,
    mut pick: impl FnMut(Instant, &Event) -> Option<T>,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (at, e) = rx.recv_timeout(left).expect("an event within PATIENCE");
        if let Some(t) = pick(at, &e) {
            return t;
        }
    }
}

#[test]
fn map_imap_and_submit_give_typed_results() {
    enter();
    let pool = Pool::new(PoolOptions::new(3).task_timeout(PATIENCE), square).unwrap();
    assert_eq!(pool.size(), 3);
    assert_eq!(
        pool.map(1..=100).unwrap(),
        (1..=100u64).map(|x| x * x).collect::<Vec<_>>()
    );
    assert_eq!(pool.map(Vec::new()).unwrap(), Vec::<u64>::new());
    let ordered: Vec<u64> = pool.imap(0..50).unwrap().map(Result::unwrap).collect();
    assert_eq!(ordered, (0..50u64).map(|x| x * x).collect::<Vec<_>>());
    let mut seen: Vec<(usize, u64)> = pool
        .imap_unordered(0..50)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..50u64).map(|x| (x as usize, x * x)).collect::<Vec<_>>()
    );
    let mut handle = pool.submit(12).unwrap();
    assert_eq!(handle.wait_timeout(PATIENCE).unwrap(), 144);
    assert!(matches!(
        handle.wait_timeout(PATIENCE),
        Err(Error::ResultTaken)
    ));
    let mut handle = pool.submit(5).unwrap();
    wait_until("the task is done", || handle.is_done());
    assert_eq!(handle.try_wait().unwrap(), Some(25));
    assert_eq!(pool.apply(9).unwrap(), 81);
    pool.join_timeout(PATIENCE).unwrap();
}

#[test]
fn map_in_chunks_and_one_by_one_agree() {
    enter();
    for chunk in [1, 7, 1000] {
        let pool = Pool::new(PoolOptions::new(2).chunk_size(chunk), square).unwrap();
        let got = pool.imap(0..1000).unwrap();
        let got: Vec<u64> = got.map(Result::unwrap).collect();
        assert_eq!(
            got,
            (0..1000u64).map(|x| x * x).collect::<Vec<_>>(),
            "chunk {chunk}"
        );
    }
}

fn unlucky(x: u64) -> u64 {
    assert!(x != 13, "unlucky {x}");
    x
}

#[test]
fn a_task_that_panics_returns_its_message_and_its_worker_goes_on() {
    enter();
    let (opts, rx) = events();
    let pool = Pool::new(opts.chunk_size(4).task_timeout(PATIENCE), unlucky).unwrap();
    let before: Vec<u32> = pool.workers().iter().map(|w| w.pid).collect();
    let results: Vec<_> = pool.imap(0..20).unwrap().collect();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Err(Error::Panicked { task, message }) => {
                assert_eq!((task, message.as_str()), (13, "unlucky 13"));
            }
            Ok(v) => assert_eq!(v, i as u64),
            Err(e) => panic!("task {i}: {e}"),
        }
    }
    // Its chunk-mates were answered too, by the same worker, which goes on.
    assert!(matches!(
        pool.map(10..16),
        Err(Error::Panicked { task: 3, .. })
    ));
    let after: Vec<u32> = pool.workers().iter().map(|w| w.pid).collect();
    assert_eq!(before, after);
    drop(pool);
    let died = rx
        .try_iter()
        .filter(|(_, e)| matches!(e, Event::Died { .. }))
        .count();
    assert_eq!(died, 0);
}

/// A task of the kill tests: the task numbered `victim` leaves a file naming its process
/// in `dir` and sleeps, the first time only (its retry finds the file and runs through).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Hang {
    n: u64,
    victim: u64,
    dir: PathBuf,
}

fn hang_once(h: Hang) -> (u64, u32) {
    let marker = h.dir.join(format!("started-{}", h.n));
    if h.n == h.victim && !marker.exists() {
        let tmp = h.dir.join(format!("tmp-{}", h.n));
        std::fs::write(&tmp, std::process::id().to_string()).expect("write the marker");
        std::fs::rename(&tmp, &marker).expect("publish the marker");
        std::thread::sleep(Duration::from_secs(600));
    }
    (h.n * h.n, std::process::id())
}

/// A fresh directory for one round's marker files, removed when dropped (a failing test
/// included).
fn marker_dir(name: &str, round: usize) -> Markers {
    let dir =
        std::env::temp_dir().join(format!("ipckit-pool-{name}-{}-{round}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("make the marker directory");
    Markers(dir)
}

/// A marker directory, removed on drop.
struct Markers(PathBuf);

impl std::ops::Deref for Markers {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Markers {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits for the victim's marker; gives the pid of the worker running it.
fn victim_pid(dir: &std::path::Path, victim: u64) -> u32 {
    let marker = dir.join(format!("started-{victim}"));
    wait_until("the victim task starts", || marker.exists());
    std::fs::read_to_string(&marker)
        .expect("read the marker")
        .parse()
        .expect("a pid")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

#[test]
fn a_worker_killed_mid_task_is_noticed_at_once_and_its_task_retried_50_times_over() {
    enter();
    let (opts, rx) = events();
    let pool = Pool::new(opts.chunk_size(1).task_timeout(PATIENCE), hang_once).unwrap();
    let mut noticed = Vec::new();
    for round in 0..50 {
        let dir = marker_dir("retry", round);
        let victim = (round % 10) as u64;
        let args = (0..10).map(|n| Hang {
            n,
            victim,
            dir: dir.to_path_buf(),
        });
        let mut results = pool.imap_unordered(args).unwrap();
        let pid = victim_pid(&dir, victim);
        let killed = Instant::now();
        sigkill(pid);
        let at = wait_event(&rx, |at, e| match e {
            Event::Died {
                pid: p,
                signal,
                task: Some(task),
                retried,
                ..
            } if *p == pid => {
                assert_eq!(*signal, Some(9));
                assert_eq!(task.index, victim as usize);
                assert!(retried);
                Some(at)
            }
            _ => None,
        });
        noticed.push(at.duration_since(killed));
        // Each task's result exactly once: none lost, none twice.
        let mut tally = BTreeMap::new();
        while let Some(r) = results.next_timeout(PATIENCE) {
            let (i, (sq, _)) = r.unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(sq, (i * i) as u64);
            *tally.entry(i).or_insert(0) += 1;
        }
        assert_eq!(tally, (0..10).map(|i| (i, 1)).collect(), "round {round}");
    }
    let (mid, most) = (
        median(noticed.clone()),
        noticed.iter().max().copied().unwrap(),
    );
    eprintln!("kill → noticed and requeued: median {mid:?}, max {most:?} over 50 kills");
    assert!(mid < Duration::from_millis(100), "median {mid:?}");
    assert!(most < Duration::from_secs(2), "max {most:?}");
    // Replacements keep the pool at its size.
    wait_until("three workers ready", || {
        let w = pool.workers();
        w.len() == 3 && w.iter().all(|w| w.ready)
    });
    pool.join_timeout(PATIENCE).unwrap();
}

#[test]
fn without_retries_a_killed_workers_task_is_reported_within_100_ms() {
    enter();
    let pool = Pool::new(
        PoolOptions::new(2).retries(0).task_timeout(PATIENCE),
        hang_once,
    )
    .unwrap();
    let mut reported = Vec::new();
    for round in 0..10 {
        let dir = marker_dir("report", round);
        let mut handle = pool
            .submit(Hang {
                n: 7,
                victim: 7,
                dir: dir.to_path_buf(),
            })
            .unwrap();
        let pid = victim_pid(&dir, 7);
        let killed = Instant::now();
        sigkill(pid);
        match handle.wait_timeout(PATIENCE) {
            Err(Error::WorkerDied {
                task,
                pid: p,
                signal,
                attempts,
            }) => {
                reported.push(killed.elapsed());
                assert_eq!((task, p, signal, attempts), (0, pid, Some(9), 1));
            }
            other => panic!("expected WorkerDied, got {other:?}"),
        }
        assert!(!alive(pid));
        // The pool goes on.
        let next = Hang {
            n: 3,
            victim: 7,
            dir: dir.to_path_buf(),
        };
        assert_eq!(pool.apply(next).unwrap().0, 9);
    }
    let (mid, most) = (
        median(reported.clone()),
        reported.iter().max().copied().unwrap(),
    );
    eprintln!("kill → WorkerDied at the caller: median {mid:?}, max {most:?}");
    assert!(mid < Duration::from_millis(100), "median {mid:?}");
    assert!(most < Duration::from_secs(2), "max {most:?}");
}

/// One worker, one task per chunk: after many tiny tasks its window is wide, so a call's
/// ten chunks reach it in one write and it holds back the replies of those it finishes
/// while the next is already there. The victim (task 5) then dies by SIGKILL, or runs past
/// `timeout`: the pool must blame task 5, not the first chunk it has no reply for, and run
/// the finished chunks whose replies died with the worker again, each result once.
fn held_replies_then(name: &str, timeout: Option<Duration>) {
    let (tx, rx) = mpsc::channel();
    let opts = PoolOptions::new(1)
        .chunk_size(1)
        .task_timeout(timeout.unwrap_or(PATIENCE))
        .on_event(move |e| {
            let _ = tx.send((Instant::now(), e.clone()));
        });
    let pool = Pool::new(opts, hang_once).unwrap();
    let dir = marker_dir(name, 0);
    let task = |n, victim| Hang {
        n,
        victim,
        dir: dir.to_path_buf(),
    };
    assert_eq!(
        pool.map((0..500).map(|n| task(n, u64::MAX))).unwrap().len(),
        500
    );
    let victim = 5;
    let mut results = pool
        .imap_unordered((0..10).map(|n| task(n, victim)))
        .unwrap();
    let pid = victim_pid(&dir, victim);
    if timeout.is_none() {
        sigkill(pid);
    }
    let blamed = wait_event(&rx, |_, e| match e {
        Event::Died {
            pid: p,
            task: Some(task),
            retried,
            ..
        } if *p == pid => {
            assert!(retried);
            Some(*task)
        }
        Event::TimedOut { pid: p, task, .. } if *p == pid => Some(*task),
        _ => None,
    });
    assert_eq!((blamed.index, blamed.count), (victim as usize, 1));
    let mut tally = BTreeMap::new();
    while let Some(r) = results.next_timeout(PATIENCE) {
        let i = match r {
            Ok((i, (sq, _))) => {
                assert_eq!(sq, (i * i) as u64);
                i
            }
            Err(Error::TaskTimedOut { task, pid: p, .. }) if timeout.is_some() => {
                assert_eq!((task, p), (victim as usize, pid));
                task
            }
            Err(e) => panic!("{e}"),
        };
        *tally.entry(i).or_insert(0) += 1;
    }
    assert_eq!(tally, (0..10).map(|i| (i, 1)).collect());
}

#[test]
fn a_worker_killed_with_replies_held_back_has_the_right_task_blamed_and_retried() {
    enter();
    held_replies_then("held-kill", None);
}

#[test]
fn a_task_timed_out_behind_replies_held_back_is_the_one_reported() {
    enter();
    held_replies_then("held-timeout", Some(Duration::from_millis(300)));
}

#[test]
fn workers_shows_the_task_a_worker_runs_while_it_holds_back_the_reply_before_it() {
    enter();
    let pool = Pool::new(
        PoolOptions::new(1).chunk_size(1).task_timeout(PATIENCE),
        hang_once,
    )
    .unwrap();
    let dir = marker_dir("shows", 0);
    // Tasks 0 and 1 reach the worker in one write: it runs 1 with 0's reply held back.
    let mut results = pool
        .imap((0..3).map(|n| Hang {
            n,
            victim: 1,
            dir: dir.to_path_buf(),
        }))
        .unwrap();
    let pid = victim_pid(&dir, 1);
    wait_until("the snapshot shows task 1", || {
        pool.workers()
            .iter()
            .any(|w| w.pid == pid && w.task.is_some_and(|t| t.index == 1))
    });
    sigkill(pid);
    for i in 0..3u64 {
        let r = results.next_timeout(PATIENCE).expect("a result");
        assert_eq!(r.unwrap().0, i * i);
    }
}

fn abort_on_odd(x: u64) -> u64 {
    if x % 2 == 1 {
        std::process::abort();
    }
    x
}

#[test]
fn an_aborting_task_is_reported_with_its_signal_after_its_retries() {
    enter();
    let (opts, rx) = events();
    let pool = Pool::new(
        opts.retries(2).chunk_size(1).task_timeout(PATIENCE),
        abort_on_odd,
    )
    .unwrap();
    let results: Vec<_> = pool.imap(0..4).unwrap().collect();
    assert_eq!(results[0].as_ref().unwrap(), &0);
    assert_eq!(results[2].as_ref().unwrap(), &2);
    for i in [1, 3] {
        match &results[i] {
            Err(Error::WorkerDied {
                task,
                signal,
                attempts,
                ..
            }) => assert_eq!((*task, *signal, *attempts), (i, Some(6), 3)),
            other => panic!("task {i}: {other:?}"),
        }
    }
    let deaths = rx
        .try_iter()
        .filter(|(_, e)| {
            matches!(
                e,
                Event::Died {
                    signal: Some(6),
                    ..
                }
            )
        })
        .count();
    assert_eq!(deaths, 6, "two tasks, three attempts each");
    assert_eq!(pool.apply(8).unwrap(), 8);
}

fn reversed(mut v: Vec<u8>) -> Vec<u8> {
    v.reverse();
    v
}

#[test]
fn sixteen_mib_arguments_and_results_cross() {
    enter();
    let pool = Pool::new(PoolOptions::new(2).task_timeout(PATIENCE), reversed).unwrap();
    let big: Vec<u8> = (0..16 << 20).map(|i| (i % 251) as u8).collect();
    let mut expected = big.clone();
    expected.reverse();
    // Two at once, and one beside a flow of small ones.
    let a = pool.submit(big.clone()).unwrap();
    let b = pool.submit(big.clone()).unwrap();
    let small = pool.map((0..100u8).map(|i| vec![i, 1])).unwrap();
    assert_eq!(small[7], vec![1, 7]);
    assert!(a.wait().unwrap() == expected);
    assert!(b.wait().unwrap() == expected);
    let results = pool.map(vec![big.clone(), big]).unwrap();
    assert!(results.iter().all(|r| *r == expected));
}

fn sleep_ms(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

#[test]
fn a_task_past_its_timeout_has_its_worker_killed_and_replaced() {
    enter();
    let (opts, rx) = events();
    let limit = Duration::from_millis(300);
    let pool = Pool::new(opts.task_timeout(limit), sleep_ms).unwrap();
    // Before the submit: the worker may begin the task before `submit` returns.
    let started = Instant::now();
    let mut slow = pool.submit(600_000).unwrap();
    let quick = pool.submit(1).unwrap();
    match slow.wait_timeout(PATIENCE) {
        Err(Error::TaskTimedOut {
            task: 0,
            pid,
            limit: l,
        }) => {
            assert_eq!(l, limit);
            assert!(started.elapsed() >= limit, "{:?}", started.elapsed());
            assert!(!alive(pid));
            let (replaced, by) = wait_event(&rx, |_, e| match e {
                Event::Started {
                    replacing: Some(old),
                    pid: new,
                    ..
                } => Some((*old, *new)),
                _ => None,
            });
            assert!(replaced > 0 && by != pid);
        }
        other => panic!("expected TaskTimedOut, got {other:?}"),
    }
    quick.wait().unwrap();
    assert!(rx.try_iter().all(|(_, e)| !matches!(e, Event::Died { .. })));
    // The pool goes on at its size.
    let pids: Vec<u32> = pool.map(vec![50; 6]).unwrap();
    assert!(!pids.is_empty());
    assert_eq!(pool.workers().len(), 3);
}

#[test]
fn a_long_tasks_result_is_not_held_back_while_the_next_task_runs() {
    enter();
    let pool = Pool::new(PoolOptions::new(1).task_timeout(PATIENCE), sleep_ms).unwrap();
    let mut first = pool.submit(50).unwrap();
    // Already in the worker's socket when the first ends, and runs for ten minutes.
    let _second = pool.submit(600_000).unwrap();
    let pid = first.wait_timeout(PATIENCE).unwrap();
    assert!(alive(pid));
}

fn pid_of(_: u64) -> u32 {
    std::process::id()
}

#[test]
fn max_tasks_per_child_replaces_each_worker_after_its_share() {
    enter();
    let (opts, rx) = events();
    let pool = Pool::new(
        opts.max_tasks_per_child(2)
            .chunk_size(1)
            .task_timeout(PATIENCE),
        pid_of,
    )
    .unwrap();
    let pids = pool.map(0..30).unwrap();
    let mut per_pid: BTreeMap<u32, usize> = BTreeMap::new();
    for p in pids {
        *per_pid.entry(p).or_default() += 1;
    }
    assert!(per_pid.values().all(|&n| n <= 2), "{per_pid:?}");
    assert!(per_pid.len() >= 15, "{per_pid:?}");
    pool.join_timeout(PATIENCE).unwrap();
    let retired = rx
        .try_iter()
        .filter(|(_, e)| matches!(e, Event::Retired { tasks: 2, .. }))
        .count();
    assert!(retired >= 14, "{retired} workers retired after 2 tasks");
    assert!(per_pid.keys().all(|&p| !alive(p)));
}

#[test]
fn close_finishes_the_tasks_taken_then_join_sees_every_worker_exit() {
    enter();
    let (opts, rx) = events();
    let pool = Pool::new(opts.task_timeout(PATIENCE), sleep_ms).unwrap();
    let pids: Vec<u32> = pool.workers().iter().map(|w| w.pid).collect();
    let handles: Vec<_> = (0..6).map(|_| pool.submit(50).unwrap()).collect();
    pool.close();
    assert!(matches!(pool.submit(1), Err(Error::Closed)));
    pool.join_timeout(PATIENCE).unwrap();
    for h in handles {
        h.wait().unwrap();
    }
    assert!(pids.iter().all(|&p| !alive(p)));
    assert!(pool.workers().is_empty());
    let retired = rx
        .try_iter()
        .filter(|(_, e)| matches!(e, Event::Retired { .. }))
        .count();
    assert_eq!(retired, 3);
}

#[test]
fn terminate_kills_the_workers_and_reports_unfinished_tasks() {
    enter();
    let pool = Pool::new(PoolOptions::new(2).chunk_size(1), sleep_ms).unwrap();
    let pids: Vec<u32> = pool.workers().iter().map(|w| w.pid).collect();
    let running = pool.imap(vec![600_000; 5]).unwrap();
    wait_until("both workers busy", || {
        pool.workers().iter().all(|w| w.task.is_some())
    });
    pool.terminate();
    for (i, r) in running.enumerate() {
        assert!(
            matches!(r, Err(Error::Terminated { task }) if task == i),
            "{i}"
        );
    }
    assert!(pids.iter().all(|&p| !alive(p)));
    assert!(matches!(pool.submit(1), Err(Error::Closed)));
}

#[test]
fn dropping_the_pool_kills_and_reaps_its_workers() {
    enter();
    let pool = Pool::new(2, sleep_ms).unwrap();
    let pids: Vec<u32> = pool.workers().iter().map(|w| w.pid).collect();
    let handle = pool.submit(600_000).unwrap();
    drop(pool);
    assert!(pids.iter().all(|&p| !alive(p)));
    assert!(matches!(handle.wait(), Err(Error::Terminated { task: 0 })));
}

static INITIALIZED: AtomicU64 = AtomicU64::new(0);
static BASE: AtomicU64 = AtomicU64::new(0);

fn init(base: u64) {
    INITIALIZED.fetch_add(1, Ordering::SeqCst);
    BASE.store(base, Ordering::SeqCst);
}

/// (worker pid, times its initializer ran, base + x).
fn after_init(x: u64) -> (u32, u64, u64) {
    (
        std::process::id(),
        INITIALIZED.load(Ordering::SeqCst),
        BASE.load(Ordering::SeqCst) + x,
    )
}

#[test]
fn the_initializer_runs_once_in_each_worker_replacements_included() {
    enter();
    let opts = PoolOptions::new(3)
        .max_tasks_per_child(4)
        .chunk_size(1)
        .task_timeout(PATIENCE);
    let pool = Pool::with_initializer(opts, after_init, init, 1000).unwrap();
    let results = pool.map(0..30).unwrap();
    for (x, (_, runs, v)) in results.iter().enumerate() {
        assert_eq!((*runs, *v), (1, 1000 + x as u64));
    }
    let workers: std::collections::BTreeSet<u32> = results.iter().map(|r| r.0).collect();
    assert!(workers.len() >= 8, "{workers:?}");
}

fn failing_init(_: ()) {
    panic!("no database here");
}

#[test]
fn a_panicking_initializer_fails_the_start_with_its_message() {
    enter();
    match Pool::with_initializer(2, square, failing_init, ()) {
        Err(Error::WorkerStart { message }) => {
            assert!(message.contains("no database here"), "{message}");
        }
        other => panic!("expected WorkerStart, got {other:?}"),
    }
}

#[test]
fn zero_workers_is_an_invalid_option() {
    enter();
    assert!(matches!(
        Pool::new(0, square),
        Err(Error::Core(ipckit_pool::CoreError::InvalidOptions(_)))
    ));
}

#[test]
fn the_pool_serves_many_threads_at_once() {
    enter();
    let pool = Arc::new(Pool::new(PoolOptions::new(3).task_timeout(PATIENCE), square).unwrap());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let base = t * 1000;
                let got = pool.map(base..base + 200).unwrap();
                assert_eq!(got, (base..base + 200).map(|x| x * x).collect::<Vec<_>>());
                let one = pool.submit(base).unwrap().wait().unwrap();
                assert_eq!(one, base * base);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn a_worker_killed_while_idle_is_replaced() {
    enter();
    let (opts, rx) = events();
    let pool = Pool::new(opts.task_timeout(PATIENCE), square).unwrap();
    let victim = pool.workers()[0].pid;
    sigkill(victim);
    wait_event(&rx, |_, e| match e {
        Event::Died {
            pid,
            task: None,
            signal: Some(9),
            ..
        } if *pid == victim => Some(()),
        _ => None,
    });
    wait_event(&rx, |_, e| {
        matches!(
            e,
            Event::Started {
                replacing: Some(_),
                ..
            }
        )
        .then_some(())
    });
    assert_eq!(pool.map(0..10).unwrap()[3], 9);
}
