//! The slot protocol under loom: threads stand for processes, and one of them is killed
//! for good at a chosen step (every step is tried, and no kill at all), as SIGKILL would,
//! leaving its pid dead. Every interleaving of the survivors must make progress, lose no
//! message whose put returned (only the one a killed consumer held), and get none twice.
//!
//! Built and run only with `--cfg loom`:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p ipckit-queues --test loom --release
//! ```
#![cfg(loom)]

use std::sync::Arc;

use ipckit_queues::model::{Model, Outcome, Process};
use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// More kill points than any one call of the victim passes (so the last run kills none).
const KILL_POINTS: usize = 5;

/// Retries `call` while it says blocked (sleeping until a wake-up, as a real waiter does)
/// or busy.
fn until_done(model: &Model, mut call: impl FnMut() -> Outcome) -> Outcome {
    loop {
        let seen = model.progress();
        match call() {
            Outcome::Blocked => model.sleep(seen),
            Outcome::Busy => loom::thread::yield_now(),
            done => return done,
        }
    }
}

/// A producer killed at step `kill_at` of its one put, beside a producer of two messages
/// and a consumer: the consumer gets both of the live producer's messages, and the
/// victim's exactly if its put returned.
fn producer_killed_at(kill_at: Option<usize>) {
    loom::model(move || {
        let model = Arc::new(Model::new(2));
        let victim_done = Arc::new(AtomicBool::new(false));
        let victim_over = Arc::new(AtomicBool::new(false));
        let victim = {
            let (model, done, over) = (model.clone(), victim_done.clone(), victim_over.clone());
            loom::thread::spawn(move || {
                let me = Process::new(&model, 1, kill_at);
                if until_done(&model, || me.put(100, true)) == Outcome::Done(None) {
                    done.store(true, Ordering::SeqCst);
                }
                over.store(true, Ordering::SeqCst);
                model.wake();
            })
        };
        let producer = {
            let model = model.clone();
            loom::thread::spawn(move || {
                let me = Process::new(&model, 2, None);
                for id in [200, 201] {
                    assert_eq!(until_done(&model, || me.put(id, true)), Outcome::Done(None));
                }
            })
        };
        let me = Process::new(&model, 3, None);
        let mut got = Vec::new();
        while got.iter().filter(|&&id| id >= 200).count() < 2 {
            match until_done(&model, || me.get(true)) {
                Outcome::Done(Some(id)) => got.push(id),
                other => panic!("consumer: {other:?}"),
            }
        }
        producer.join().unwrap();
        victim.join().unwrap();
        assert!(victim_over.load(Ordering::SeqCst));
        // The victim's message, if its put returned, is still to come or already got.
        let returned = victim_done.load(Ordering::SeqCst);
        if returned && !got.contains(&100) {
            match until_done(&model, || me.get(true)) {
                Outcome::Done(Some(id)) => got.push(id),
                other => panic!("consumer, after the victim's put returned: {other:?}"),
            }
        }
        // Nothing else is in the queue: a killed put left nothing to get.
        assert_eq!(me.get(true), Outcome::Blocked, "got {got:?}");
        let (head, tail) = model.cursors();
        assert_eq!(head, tail);
        got.sort_unstable();
        let expected: &[u64] = if returned {
            &[100, 200, 201]
        } else {
            &[200, 201]
        };
        assert_eq!(got, expected, "kill at {kill_at:?}");
    });
}

/// A consumer killed at step `kill_at` of its one get, beside a producer of three messages
/// (more than the two slots hold, so the ring wraps over the victim's slot) and a consumer:
/// every message is got once, but the one the victim held when it was killed.
fn consumer_killed_at(kill_at: Option<usize>) {
    loom::model(move || {
        let model = Arc::new(Model::new(2));
        // What the victim got: 0 for nothing (yet).
        let victim_got = Arc::new(AtomicU64::new(0));
        let victim_over = Arc::new(AtomicBool::new(false));
        let producer_done = Arc::new(AtomicBool::new(false));
        let victim = {
            let (model, got, over, producer_done) = (
                model.clone(),
                victim_got.clone(),
                victim_over.clone(),
                producer_done.clone(),
            );
            loom::thread::spawn(move || {
                let me = Process::new(&model, 1, kill_at);
                // One message, unless the others took them all.
                loop {
                    let seen = model.progress();
                    let settled = producer_done.load(Ordering::SeqCst);
                    match me.get(true) {
                        Outcome::Done(Some(id)) => {
                            got.store(id, Ordering::SeqCst);
                            break;
                        }
                        Outcome::Blocked if settled => break,
                        Outcome::Blocked => model.sleep(seen),
                        Outcome::Busy => loom::thread::yield_now(),
                        Outcome::Killed | Outcome::Done(None) => break,
                    }
                }
                over.store(true, Ordering::SeqCst);
                model.wake();
            })
        };
        let producer = {
            let (model, done) = (model.clone(), producer_done.clone());
            loom::thread::spawn(move || {
                let me = Process::new(&model, 2, None);
                for id in [100, 101, 102] {
                    assert_eq!(until_done(&model, || me.put(id, true)), Outcome::Done(None));
                }
                done.store(true, Ordering::SeqCst);
                model.wake();
            })
        };
        let me = Process::new(&model, 3, None);
        let mut got = Vec::new();
        // Until the producer is done and the victim over, and then the queue is empty.
        loop {
            let seen = model.progress();
            let settled =
                producer_done.load(Ordering::SeqCst) && victim_over.load(Ordering::SeqCst);
            match me.get(true) {
                Outcome::Done(Some(id)) => got.push(id),
                Outcome::Blocked if settled => break,
                Outcome::Blocked => model.sleep(seen),
                Outcome::Busy => loom::thread::yield_now(),
                other => panic!("consumer: {other:?}"),
            }
        }
        producer.join().unwrap();
        victim.join().unwrap();
        let theirs = victim_got.load(Ordering::SeqCst);
        if theirs != 0 {
            assert!(!got.contains(&theirs), "{theirs} got twice");
            got.push(theirs);
        }
        got.sort_unstable();
        let killed = me_killed(&model);
        let lost = 3 - got.len();
        assert!(
            lost == 0 || (lost == 1 && killed),
            "kill at {kill_at:?}: got {got:?}"
        );
        let mut unique = got.clone();
        unique.dedup();
        assert_eq!(unique, got, "a message got twice");
    });
}

/// The steps at which the victim is killed: each, and none; or only `LOOM_KILL_AT` (`none`
/// for none) if set.
fn kills() -> Vec<Option<usize>> {
    match std::env::var("LOOM_KILL_AT") {
        Ok(k) => vec![k.parse().ok()],
        Err(_) => (1..=KILL_POINTS).map(Some).chain([None]).collect(),
    }
}

/// Whether the victim (pid 1) was killed.
fn me_killed(model: &Model) -> bool {
    Process::new(model, 1, None).is_killed()
}

#[test]
fn a_producer_killed_at_any_step_loses_nothing_it_put_and_blocks_no_one() {
    for kill_at in kills() {
        producer_killed_at(kill_at);
    }
}

#[test]
fn a_consumer_killed_at_any_step_loses_at_most_what_it_held_and_blocks_no_one() {
    for kill_at in kills() {
        consumer_killed_at(kill_at);
    }
}
