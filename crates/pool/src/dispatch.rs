//! The pool's own thread: it starts the workers, sends them tasks, collects their
//! answers, and notices at once when one dies.
//!
//! It waits in one `poll(2)` on every worker's connection, every worker's exit
//! descriptor ([`Child::exit_fd`]) and a socket that calling threads write to when they
//! queue tasks. A worker killed by any means closes both of its descriptors, so the
//! thread wakes within the time the kernel takes to end the process: no timer, no
//! heartbeat. Per-task timeouts are the poll's timeout.
//!
//! Each worker has a window of chunks in flight: the one it runs, and the next ones
//! waiting in its socket so that it never idles between two, and reads many small tasks
//! with one system call and one wake-up. The window holds about [`QUEUED_NS`] of work at
//! the pace the worker answers (from 2 chunks for long tasks, so that none waits long
//! behind another, to [`WINDOW`] for tiny ones). Chunks wait behind the running one only
//! while they add up to [`PREFETCH_BYTES`]: they then fit the socket's buffer, and sending
//! them never blocks this thread. A large chunk goes only to an idle worker, which is reading,
//! so sending it takes the time of a copy.
//!
//! A worker counts the chunks it begins in shared memory ([`Progress`]), so this thread
//! knows which one it runs although its replies may come later, in batches. When a worker
//! dies, only the chunk it was running counts an attempt; the chunks it finished but
//! whose replies died with it run again, and those waiting behind it never started: both
//! go back to the queue as they were. A task's timeout counts from the moment the worker
//! began its chunk.

use std::{
    collections::VecDeque,
    io::Read,
    os::{fd::AsFd, unix::net::UnixStream},
    sync::{Arc, mpsc},
    time::Duration,
};

use ipckit_core::{Child, Connection, Deadline, Error as CoreError, RecvBytes, SendBytes};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::{
    Event, WorkerInfo,
    job::{Done, Failure, Reply, Shared, Snap, Task, lock},
    options::OnEvent,
    worker::{Progress, monotonic_ns, push_frame, write_frames},
};

/// Chunks in flight per worker, at most.
const WINDOW: usize = 256;
/// Chunks in flight per worker at first, and at least.
const MIN_WINDOW: usize = 2;
/// About how much work, in nanoseconds, waits in a worker's window.
const QUEUED_NS: u64 = 1_000_000;
/// The most bytes of chunks waiting behind a busy worker's running one.
const PREFETCH_BYTES: usize = 32 << 10;
/// How long a worker whose connection broke may take to end by itself before it is killed.
const ENDING: Duration = Duration::from_millis(200);
/// Replacements in a row that may die before they are ready, before the pool gives up.
const START_FAILURES: u32 = 3;

/// Starts one worker process and gives it and the pool's end of its connection.
pub(crate) type SpawnWorker =
    Box<dyn FnMut() -> ipckit_core::Result<(Child<()>, Connection, Progress)> + Send>;

/// What the pool's thread needs to run.
pub(crate) struct Config {
    pub(crate) spawn: SpawnWorker,
    pub(crate) size: usize,
    pub(crate) retries: u32,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) max_tasks: Option<u64>,
    pub(crate) on_event: Option<OnEvent>,
}

/// A worker process, as the pool's thread holds it.
struct Worker {
    id: u32,
    pid: u32,
    child: Child<()>,
    /// `None` once the pool asked it to go (it then exits by itself).
    conn: Option<Connection>,
    ready: bool,
    /// What it has begun, as it writes it.
    progress: Arc<Progress>,
    /// Chunks sent and not answered, in the order sent: the first is number `done` of
    /// those sent to it.
    inflight: VecDeque<Task>,
    /// The bytes of the chunks in `inflight`.
    inflight_bytes: usize,
    /// When the first chunk in flight was sent or the one before it answered (in
    /// [`monotonic_ns`]): a task's timeout counts from there until the worker says it
    /// began it.
    head_since: u64,
    /// How long it takes per chunk, as its answers come (0: not known yet).
    chunk_ns: u64,
    /// How many chunks it may have in flight.
    window: usize,
    sent: u64,
    done: u64,
}

impl Worker {
    fn info(&self) -> WorkerInfo {
        WorkerInfo {
            worker: self.id,
            pid: self.pid,
            ready: self.ready,
            task: self
                .inflight
                .get(self.begun().saturating_sub(1))
                .map(Task::task_ref),
            done: self.done,
        }
    }

    /// Takes the first chunk in flight, answered.
    fn pop_head(&mut self) -> Option<Task> {
        let task = self.inflight.pop_front()?;
        self.inflight_bytes -= task.bytes().len();
        self.done += 1;
        Some(task)
    }

    /// How many of the chunks in flight it has begun: those before the last it began are
    /// finished (their replies are on their way, or died with it), the last it runs.
    fn begun(&self) -> usize {
        self.begun_at().0
    }

    /// As [`begun`](Worker::begun), with when it began the last (or a later one).
    fn begun_at(&self) -> (usize, u64) {
        let (count, at) = self.progress.read();
        let begun = usize::try_from(count.saturating_sub(self.done))
            .unwrap_or(usize::MAX)
            .min(self.inflight.len());
        (begun, at)
    }

    /// The chunk it runs (its number among those sent to it) and when its time is up
    /// (in [`monotonic_ns`]), if it runs one and tasks have a limit. A chunk sent and not
    /// yet begun is counted from when it was sent or the one before it answered.
    fn deadline(&self, limit: Option<Duration>) -> Option<(u64, u64)> {
        let limit = limit?;
        if self.inflight.is_empty() {
            return None;
        }
        let (k, since) = match self.begun_at() {
            (0, _) => (0, self.head_since),
            (k, at) => (k - 1, at),
        };
        let task = &self.inflight[k];
        let n = u32::try_from(task.job.len_of(task.chunk)).unwrap_or(u32::MAX);
        let nanos = u64::try_from(limit.saturating_mul(n).as_nanos()).unwrap_or(u64::MAX);
        Some((self.done + k as u64, since.saturating_add(nanos)))
    }
}

/// Why a worker is buried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// Its process ended (or its connection broke).
    Ended,
    /// Its chunk number `.0` (among those sent to it) passed the task timeout; it was
    /// killed.
    TimedOut(u64),
}

pub(crate) struct Dispatcher {
    shared: Arc<Shared>,
    wake: UnixStream,
    cfg: Config,
    workers: Vec<Worker>,
    next_id: u32,
    /// Workers gone while the pool still needs them, to be named by their replacement.
    to_replace: VecDeque<u32>,
    /// Until the first workers are ready: tells `Pool::new` whether they started.
    started: Option<mpsc::Sender<Result<(), String>>>,
    /// Workers that died before they were ready, in a row.
    failures: u32,
    rotate: usize,
    dirty: bool,
}

impl Dispatcher {
    pub(crate) fn new(
        shared: Arc<Shared>,
        wake: UnixStream,
        cfg: Config,
        started: mpsc::Sender<Result<(), String>>,
    ) -> Self {
        Dispatcher {
            shared,
            wake,
            cfg,
            workers: Vec::new(),
            next_id: 1,
            to_replace: VecDeque::new(),
            started: Some(started),
            failures: 0,
            rotate: 0,
            dirty: true,
        }
    }

    pub(crate) fn run(mut self) {
        loop {
            let (terminate, closed) = {
                let q = lock(&self.shared.queue);
                (q.terminate, q.closed)
            };
            if terminate {
                self.terminate();
                break;
            }
            self.top_up();
            self.dispatch();
            if closed && self.retire_idle() {
                break;
            }
            self.publish();
            self.wait();
        }
        self.publish();
        if let Some(tx) = self.started.take() {
            let _ = tx.send(Err(
                "the pool was terminated while its workers started".into()
            ));
        }
        self.shared.set_ended();
    }

    fn emit(&self, event: Event) {
        tracing::debug!(?event, "pool event");
        if let Some(f) = &self.cfg.on_event {
            f(&event);
        }
    }

    fn index(&self, id: u32) -> Option<usize> {
        self.workers.iter().position(|w| w.id == id)
    }

    fn publish(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let mut snap = lock(&self.shared.snapshot);
        snap.truncate(self.workers.len());
        for (k, w) in self.workers.iter().enumerate() {
            if k == snap.len() {
                snap.push(Snap {
                    info: w.info(),
                    progress: w.progress.clone(),
                    done: 0,
                    inflight: Vec::new(),
                });
            }
            let s = &mut snap[k];
            if !Arc::ptr_eq(&s.progress, &w.progress) {
                s.progress = w.progress.clone();
            }
            s.info = w.info();
            s.done = w.done;
            s.inflight.clear();
            s.inflight.extend(w.inflight.iter().map(Task::task_ref));
        }
    }

    /// Starts workers until the pool has its number, while it needs them.
    fn top_up(&mut self) {
        loop {
            let live = self.workers.iter().filter(|w| w.conn.is_some()).count();
            if live >= self.cfg.size {
                return;
            }
            {
                let mut q = lock(&self.shared.queue);
                if let Some(why) = q.broken.clone() {
                    let pending: Vec<Task> = q.pending.drain(..).collect();
                    drop(q);
                    for t in pending {
                        t.finish(Done::Failed(Failure::Broken(why.clone())));
                    }
                    return;
                }
                if q.terminate || (q.closed && q.pending.is_empty()) {
                    return;
                }
            }
            let replacing = self.to_replace.pop_front();
            match (self.cfg.spawn)() {
                Ok((child, conn, progress)) => {
                    let id = self.next_id;
                    self.next_id += 1;
                    let pid = child.pid();
                    self.workers.push(Worker {
                        id,
                        pid,
                        child,
                        conn: Some(conn),
                        ready: false,
                        progress: Arc::new(progress),
                        inflight: VecDeque::new(),
                        inflight_bytes: 0,
                        head_since: 0,
                        chunk_ns: 0,
                        window: MIN_WINDOW,
                        sent: 0,
                        done: 0,
                    });
                    self.dirty = true;
                    self.emit(Event::Started {
                        worker: id,
                        pid,
                        replacing,
                    });
                }
                Err(e) => self.start_failed(format!("cannot start a worker process: {e}")),
            }
        }
    }

    /// A worker could not start, or died before it was ready.
    fn start_failed(&mut self, why: String) {
        tracing::warn!(%why, "pool worker failed to start");
        self.failures += 1;
        let give_up = self.started.is_some() || self.failures >= START_FAILURES;
        if let Some(tx) = self.started.take() {
            let _ = tx.send(Err(why.clone()));
        }
        if give_up {
            lock(&self.shared.queue).broken.get_or_insert(why);
        }
    }

    /// Sends waiting chunks to workers with room for them.
    fn dispatch(&mut self) {
        let n = self.workers.len();
        if n == 0 {
            return;
        }
        let mut assigned: Vec<(usize, Task)> = Vec::new();
        {
            let mut q = lock(&self.shared.queue);
            let mut extra = vec![0usize; n];
            let mut extra_bytes = vec![0usize; n];
            'rounds: loop {
                let mut progressed = false;
                for k in 0..n {
                    let i = (self.rotate + k) % n;
                    while q.pending.front().is_some_and(|t| t.job.is_abandoned()) {
                        q.pending.pop_front();
                    }
                    let Some(front) = q.pending.front() else {
                        break 'rounds;
                    };
                    let w = &self.workers[i];
                    let queued = w.inflight.len() + extra[i];
                    // Bytes already waiting behind the chunk the worker runs.
                    let waiting = w.inflight_bytes
                        - w.inflight.front().map_or(0, |t| t.bytes().len())
                        + extra_bytes[i];
                    let room = w.conn.is_some()
                        && w.ready
                        && self
                            .cfg
                            .max_tasks
                            .is_none_or(|m| w.sent + (extra[i] as u64) < m)
                        && (queued == 0
                            || (queued < w.window
                                && waiting + front.bytes().len() <= PREFETCH_BYTES));
                    if let Some(task) = room.then(|| q.pending.pop_front()).flatten() {
                        if queued > 0 {
                            extra_bytes[i] += task.bytes().len();
                        }
                        extra[i] += 1;
                        assigned.push((i, task));
                        progressed = true;
                    }
                }
                if !progressed {
                    break;
                }
            }
        }
        self.rotate = (self.rotate + 1) % n;
        // Every chunk for one worker goes out in one write: one system call and one
        // wake-up for many small tasks.
        let mut per_worker: Vec<Vec<Task>> = (0..n).map(|_| Vec::new()).collect();
        for (i, task) in assigned {
            per_worker[i].push(task);
        }
        let mut back = Vec::new();
        let mut frames = Vec::new();
        for (i, tasks) in per_worker.into_iter().enumerate() {
            if tasks.is_empty() {
                continue;
            }
            let w = &mut self.workers[i];
            let sent = match w.conn.as_mut() {
                Some(conn) => send_all(conn, &tasks, &mut frames),
                None => Err(CoreError::Disconnected),
            };
            match sent {
                Ok(()) => {
                    if w.inflight.is_empty() {
                        w.head_since = monotonic_ns();
                    }
                    w.sent += tasks.len() as u64;
                    w.inflight_bytes += tasks.iter().map(|t| t.bytes().len()).sum::<usize>();
                    w.inflight.extend(tasks);
                    self.dirty = true;
                }
                Err(e) => {
                    tracing::debug!(worker = w.id, error = %e, "cannot send to a pool worker");
                    // Its death shows on its exit descriptor; make sure it comes.
                    let _ = w.child.kill();
                    back.extend(tasks);
                }
            }
        }
        self.requeue(back);
    }

    /// Puts chunks back at the front of the queue, in their order.
    fn requeue(&self, tasks: Vec<Task>) {
        if tasks.is_empty() {
            return;
        }
        let mut q = lock(&self.shared.queue);
        for t in tasks.into_iter().rev() {
            q.pending.push_front(t);
        }
    }

    /// After `close`: lets idle workers go once nothing waits. True when every worker is
    /// gone and nothing is left to do.
    fn retire_idle(&mut self) -> bool {
        if !lock(&self.shared.queue).pending.is_empty() {
            return false;
        }
        for w in &mut self.workers {
            if w.conn.is_some() && w.inflight.is_empty() {
                w.conn = None;
                self.dirty = true;
            }
        }
        self.workers.is_empty()
    }

    /// Waits for a worker's answer or end, a wake-up, or the next task deadline; handles
    /// what came.
    fn wait(&mut self) {
        let timeout = match self.next_deadline() {
            None => PollTimeout::NONE,
            Some(d) => {
                let ms = d.saturating_sub(monotonic_ns()).div_ceil(1_000_000);
                PollTimeout::try_from(ms.min(i32::MAX as u64) as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut answered = Vec::new();
        let mut ended = Vec::new();
        let mut woken = false;
        {
            let mut fds = Vec::with_capacity(1 + 2 * self.workers.len());
            let mut whose = Vec::with_capacity(2 * self.workers.len());
            fds.push(PollFd::new(self.wake.as_fd(), PollFlags::POLLIN));
            for w in &self.workers {
                if let Some(c) = &w.conn {
                    fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
                    whose.push((w.id, false));
                }
                if let Some(e) = w.child.exit_fd() {
                    fds.push(PollFd::new(e, PollFlags::POLLIN));
                    whose.push((w.id, true));
                }
            }
            match poll(&mut fds, timeout) {
                Ok(0) => {}
                Ok(_) => {
                    let hit = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                    woken = hit(&fds[0]);
                    for (f, &(id, exit)) in fds[1..].iter().zip(&whose) {
                        if hit(f) {
                            if exit {
                                ended.push(id);
                            } else {
                                answered.push(id);
                            }
                        }
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "pool poll failed");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        if woken {
            let mut sink = [0u8; 64];
            while matches!((&self.wake).read(&mut sink), Ok(n) if n > 0) {}
        }
        for id in answered {
            if let Some(i) = self.index(id) {
                if !self.read_answers(i) {
                    ended.push(id);
                }
            }
        }
        ended.sort_unstable();
        ended.dedup();
        for id in ended {
            if let Some(i) = self.index(id) {
                self.bury(i, Cause::Ended);
            }
        }
        self.expire();
    }

    /// The earliest deadline of a running chunk.
    fn next_deadline(&self) -> Option<u64> {
        self.workers
            .iter()
            .filter(|w| w.conn.is_some())
            .filter_map(|w| w.deadline(self.cfg.task_timeout))
            .map(|(_, at)| at)
            .min()
    }

    /// Kills the workers whose running chunk passed its deadline.
    fn expire(&mut self) {
        if self.cfg.task_timeout.is_none() {
            return;
        }
        let now = monotonic_ns();
        let late: Vec<(u32, u64)> = self
            .workers
            .iter()
            .filter(|w| w.conn.is_some())
            .filter_map(|w| match w.deadline(self.cfg.task_timeout) {
                Some((seq, at)) if at <= now => Some((w.id, seq)),
                _ => None,
            })
            .collect();
        for (id, seq) in late {
            if let Some(i) = self.index(id) {
                self.bury(i, Cause::TimedOut(seq));
            }
        }
    }

    /// Takes every message worker `i` has sent, and sizes its window from the pace of its
    /// answers. False if its connection ended or broke.
    fn read_answers(&mut self, i: usize) -> bool {
        let now = monotonic_ns();
        let before = self.workers[i].done;
        let open = self.read_messages(i);
        let w = &mut self.workers[i];
        let answered = w.done - before;
        if let Some(per) = now.saturating_sub(w.head_since).checked_div(answered) {
            w.chunk_ns = match w.chunk_ns {
                0 => per,
                avg => (3 * avg + per) / 4,
            };
            w.window = usize::try_from(QUEUED_NS / w.chunk_ns.max(1))
                .unwrap_or(WINDOW)
                .clamp(MIN_WINDOW, WINDOW);
        }
        // The next chunk is counted from here until the worker says it began it.
        w.head_since = now;
        open
    }

    /// Takes every message worker `i` has sent. False if its connection ended or broke.
    fn read_messages(&mut self, i: usize) -> bool {
        // One buffer for the batch: small replies are copied out of it.
        let mut buf = Vec::new();
        loop {
            let Some(conn) = self.workers[i].conn.as_mut() else {
                return true;
            };
            match conn.recv_bytes_into_deadline(&mut buf, Deadline::Now) {
                Ok(()) => {
                    if !self.on_message(i, &mut buf) {
                        return false;
                    }
                }
                Err(CoreError::Timeout) => return true,
                Err(e) => {
                    if !matches!(e, CoreError::Disconnected) {
                        tracing::warn!(error = %e, "a pool worker's connection broke");
                    }
                    return false;
                }
            }
        }
    }

    /// Handles one message of worker `i`. False if it breaks the protocol.
    fn on_message(&mut self, i: usize, msg: &mut Vec<u8>) -> bool {
        let w = &mut self.workers[i];
        self.dirty = true;
        match accept(w, msg) {
            Accepted::Ready => {
                self.failures = 0;
                let all_ready = self.workers.iter().filter(|w| w.ready).count() >= self.cfg.size;
                if all_ready {
                    if let Some(tx) = self.started.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
                true
            }
            Accepted::Answer => {
                if self.cfg.max_tasks.is_some_and(|m| w.done >= m) && w.inflight.is_empty() {
                    // Served its share: it exits when its connection closes.
                    w.conn = None;
                    self.to_replace.push_back(w.id);
                }
                true
            }
            Accepted::Bad => false,
        }
    }

    /// Worker `i` has ended (or must): reaps it, takes the answers it sent before, and
    /// decides about the chunk it was running.
    fn bury(&mut self, i: usize, cause: Cause) {
        let mut w = self.workers.remove(i);
        self.dirty = true;
        // A worker asked to go has no connection any more, and exits by itself.
        let asked = w.conn.is_none();
        let outcome = match cause {
            // Its connection broke: the process is ending, and may still be reporting why
            // (a panic drops the connection before the report is sent). Give it a moment.
            Cause::Ended if !asked => match w.child.join_timeout(ENDING) {
                Err(CoreError::Timeout) => {
                    let _ = w.child.kill();
                    w.child.join()
                }
                other => other,
            },
            Cause::Ended => w.child.join(),
            Cause::TimedOut(_) => {
                let _ = w.child.kill();
                w.child.join()
            }
        };
        if let Some(mut conn) = w.conn.take() {
            let mut buf = Vec::new();
            while conn
                .recv_bytes_into_deadline(&mut buf, Deadline::Now)
                .is_ok()
            {
                if matches!(accept(&mut w, &mut buf), Accepted::Bad) {
                    break;
                }
            }
        }
        let (signal, why) = match &outcome {
            Ok(()) => (None, "it exited".to_string()),
            Err(CoreError::RoleKilled { signal, .. }) => {
                (Some(*signal), format!("it was killed by signal {signal}"))
            }
            Err(CoreError::RolePanicked { message, .. }) => {
                (None, format!("it panicked: {message}"))
            }
            Err(e) => (None, e.to_string()),
        };
        let unexpected = !asked || outcome.is_err();
        if !w.ready && cause == Cause::Ended {
            self.start_failed(format!(
                "worker {} (pid {}) ended before it was ready: {why}",
                w.id, w.pid
            ));
        }
        let broken = lock(&self.shared.queue).broken.is_some();
        // The chunk it ran is the last it began (the first in flight if it began none):
        // those before it were finished, and their replies died with it; those after it
        // never began.
        let begun = w.begun();
        let timed_out = match cause {
            Cause::TimedOut(seq) => seq
                .checked_sub(w.done)
                .and_then(|k| usize::try_from(k).ok())
                .filter(|&k| k < w.inflight.len()),
            Cause::Ended => None,
        };
        let running = timed_out.unwrap_or(begun.saturating_sub(1));
        let mut back = Vec::new();
        let mut tasks = std::mem::take(&mut w.inflight).into_iter();
        for task in tasks.by_ref().take(running) {
            if self.cfg.retries > 0 {
                tracing::debug!(
                    worker = w.id,
                    "a finished chunk's reply died with its worker"
                );
                back.push(task);
            } else {
                let attempts = task.attempts + 1;
                task.finish(Done::Failed(Failure::Died {
                    pid: w.pid,
                    signal,
                    attempts,
                }));
            }
        }
        match (timed_out, tasks.next()) {
            (Some(_), Some(task)) => {
                tracing::warn!(
                    worker = w.id,
                    pid = w.pid,
                    "pool task timed out; worker killed"
                );
                self.emit(Event::TimedOut {
                    worker: w.id,
                    pid: w.pid,
                    task: task.task_ref(),
                });
                let limit = self.cfg.task_timeout.unwrap_or_default();
                task.finish(Done::Failed(Failure::TimedOut { pid: w.pid, limit }));
            }
            (_, Some(mut task)) => {
                task.attempts += 1;
                let retried = task.attempts <= self.cfg.retries && !broken;
                tracing::warn!(worker = w.id, pid = w.pid, %why, retried, "pool worker died mid-task");
                self.emit(Event::Died {
                    worker: w.id,
                    pid: w.pid,
                    signal,
                    task: Some(task.task_ref()),
                    retried,
                });
                if retried {
                    back.push(task);
                } else {
                    let attempts = task.attempts;
                    task.finish(Done::Failed(Failure::Died {
                        pid: w.pid,
                        signal,
                        attempts,
                    }));
                }
            }
            (_, None) if unexpected => {
                tracing::warn!(worker = w.id, pid = w.pid, %why, "pool worker died");
                self.emit(Event::Died {
                    worker: w.id,
                    pid: w.pid,
                    signal,
                    task: None,
                    retried: false,
                });
            }
            (_, None) => self.emit(Event::Retired {
                worker: w.id,
                pid: w.pid,
                tasks: w.done,
            }),
        }
        // The chunks queued behind it never began.
        back.extend(tasks);
        self.requeue(back);
        if !asked {
            self.to_replace.push_back(w.id);
        }
    }

    /// Kills every worker now; every task not answered is reported terminated.
    fn terminate(&mut self) {
        for w in &mut self.workers {
            let _ = w.child.kill();
        }
        for mut w in self.workers.drain(..) {
            let _ = w.child.join();
            for t in w.inflight.drain(..) {
                t.finish(Done::Failed(Failure::Terminated));
            }
        }
        self.dirty = true;
        let pending: Vec<Task> = {
            let mut q = lock(&self.shared.queue);
            q.closed = true;
            q.pending.drain(..).collect()
        };
        for t in pending {
            t.finish(Done::Failed(Failure::Terminated));
        }
    }
}

/// What a worker's message was.
enum Accepted {
    Ready,
    Answer,
    Bad,
}

/// Takes a message of `w`: its ready signal, or the answer to its running chunk.
fn accept(w: &mut Worker, msg: &mut Vec<u8>) -> Accepted {
    if !w.ready {
        if !msg.is_empty() {
            return Accepted::Bad;
        }
        w.ready = true;
        return Accepted::Ready;
    }
    let Some(task) = w.pop_head() else {
        return Accepted::Bad;
    };
    task.finish(Done::Reply(Reply::take(msg)));
    Accepted::Answer
}

/// Sends `tasks` to a worker as consecutive frames in one write (a lone task as one
/// message). A worker that took part of them and died is seen on its exit descriptor;
/// the caller puts them all back.
fn send_all(
    conn: &mut Connection,
    tasks: &[Task],
    frames: &mut Vec<u8>,
) -> ipckit_core::Result<()> {
    let total: usize = tasks.iter().map(|t| t.bytes().len()).sum();
    if tasks.len() == 1 || total > 2 * PREFETCH_BYTES {
        // A large chunk goes as its own message, as large as the connection allows.
        for t in tasks {
            conn.send_bytes(t.bytes())?;
        }
        return Ok(());
    }
    frames.clear();
    for t in tasks {
        push_frame(frames, t.bytes());
    }
    write_frames(conn, frames)
}
