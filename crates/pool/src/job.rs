//! What the calling threads and the pool's thread share: the queue of tasks waiting for a
//! worker, and each call's slots of results.

use std::{
    collections::VecDeque,
    io::Write,
    os::unix::net::UnixStream,
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{Error, TaskRef, WorkerInfo, worker::Progress};

/// Locks `m`, whatever a panicking thread left (every state here stays consistent between
/// statements).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The state every thread of a pool shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) queue: Mutex<Queue>,
    /// Written to wake the pool's thread (its other end is in the poll set).
    wake: UnixStream,
    pub(crate) next_call: AtomicU64,
    pub(crate) snapshot: Mutex<Vec<Snap>>,
    /// Set when the pool's thread has ended every worker.
    pub(crate) ended: Mutex<bool>,
    pub(crate) ended_cond: Condvar,
}

impl Shared {
    pub(crate) fn new(wake: UnixStream) -> Self {
        Shared {
            queue: Mutex::new(Queue::default()),
            wake,
            next_call: AtomicU64::new(0),
            snapshot: Mutex::new(Vec::new()),
            ended: Mutex::new(false),
            ended_cond: Condvar::new(),
        }
    }

    /// Wakes the pool's thread.
    pub(crate) fn wake(&self) {
        // Non-blocking: a full socket means a wake-up is pending already.
        let _ = (&self.wake).write(&[1]);
    }

    /// Tells waiters that the pool's thread has ended every worker.
    pub(crate) fn set_ended(&self) {
        *lock(&self.ended) = true;
        self.ended_cond.notify_all();
    }

    /// Waits until the pool's thread has ended every worker, at most `timeout`.
    pub(crate) fn wait_ended(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut ended = lock(&self.ended);
        while !*ended {
            match deadline {
                None => {
                    ended = self
                        .ended_cond
                        .wait(ended)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    ended = self
                        .ended_cond
                        .wait_timeout(ended, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
        true
    }
}

/// A worker as the pool's thread last published it, for [`Pool::workers`]: the chunk it
/// runs is read from its own count when asked, since it begins chunks without telling.
///
/// [`Pool::workers`]: crate::Pool::workers
#[derive(Debug)]
pub(crate) struct Snap {
    pub(crate) info: WorkerInfo,
    pub(crate) progress: Arc<Progress>,
    /// Chunks it had answered.
    pub(crate) done: u64,
    /// The chunks in flight, in the order sent.
    pub(crate) inflight: Vec<TaskRef>,
}

impl Snap {
    /// The worker as it is now.
    pub(crate) fn now(&self) -> WorkerInfo {
        let (count, _) = self.progress.read();
        let begun = usize::try_from(count.saturating_sub(self.done)).unwrap_or(usize::MAX);
        let running = begun.min(self.inflight.len()).saturating_sub(1);
        WorkerInfo {
            task: self.inflight.get(running).copied(),
            ..self.info
        }
    }
}

/// Tasks waiting for a worker, and what the pool was told to do.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    pub(crate) pending: VecDeque<Task>,
    /// No more tasks: finish those taken, then let the workers go.
    pub(crate) closed: bool,
    /// Kill the workers now.
    pub(crate) terminate: bool,
    /// Workers cannot start: why.
    pub(crate) broken: Option<String>,
}

/// One dispatch: a chunk of a call's tasks, encoded, on its way to a worker.
#[derive(Debug)]
pub(crate) struct Task {
    pub(crate) job: Arc<Job>,
    pub(crate) chunk: usize,
    /// How many times it was started on a worker.
    pub(crate) attempts: u32,
}

impl Task {
    /// The chunk's arguments, encoded: one message to a worker.
    pub(crate) fn bytes(&self) -> &[u8] {
        self.job.args_of(self.chunk)
    }

    pub(crate) fn task_ref(&self) -> TaskRef {
        TaskRef {
            call: self.job.call,
            index: self.job.first_of(self.chunk),
            count: self.job.len_of(self.chunk),
        }
    }

    /// Gives the chunk its outcome.
    pub(crate) fn finish(self, done: Done) {
        self.job.complete(self.chunk, done);
    }
}

/// How a chunk ended.
#[derive(Debug)]
pub(crate) enum Done {
    /// The worker's reply: the encoded outcomes.
    Reply(Reply),
    /// No reply will come.
    Failed(Failure),
}

/// Replies up to this size are kept inline: the reply of a small task allocates nothing.
const INLINE: usize = 30;

/// A worker's reply to a chunk, as the pool's thread received it.
#[derive(Debug)]
pub(crate) enum Reply {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Vec<u8>),
}

impl Reply {
    /// Takes the message in `buf`: a small one is copied (`buf` keeps its memory for the
    /// next), a large one taken whole.
    pub(crate) fn take(buf: &mut Vec<u8>) -> Reply {
        match u8::try_from(buf.len()) {
            Ok(len) if buf.len() <= INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..buf.len()].copy_from_slice(buf);
                Reply::Inline { len, bytes }
            }
            _ => Reply::Heap(std::mem::take(buf)),
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Reply::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Reply::Heap(v) => v,
        }
    }
}

/// Why no reply will come for a chunk.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    Died {
        pid: u32,
        signal: Option<i32>,
        attempts: u32,
    },
    TimedOut {
        pid: u32,
        limit: Duration,
    },
    Terminated,
    Broken(String),
}

impl Failure {
    /// The error of the task at position `task`.
    pub(crate) fn to_error(&self, task: usize) -> Error {
        match self {
            Failure::Died {
                pid,
                signal,
                attempts,
            } => Error::WorkerDied {
                task,
                pid: *pid,
                signal: *signal,
                attempts: *attempts,
            },
            Failure::TimedOut { pid, limit } => Error::TaskTimedOut {
                task,
                pid: *pid,
                limit: *limit,
            },
            Failure::Terminated => Error::Terminated { task },
            Failure::Broken(message) => Error::WorkerStart {
                message: message.clone(),
            },
        }
    }
}

/// One call's tasks (a `map`, a `submit`): `items` tasks in chunks of `chunk`.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) call: u64,
    pub(crate) items: usize,
    pub(crate) chunk: usize,
    /// Every chunk's arguments, encoded one after the other: one buffer for the call,
    /// not one per chunk.
    args: Vec<u8>,
    /// Where chunk `k`'s arguments end in `args` (they begin where chunk `k - 1`'s end).
    ends: Vec<usize>,
    /// Nobody waits for the results any more: tasks not yet sent are dropped.
    abandoned: AtomicBool,
    slots: Mutex<Slots>,
    cond: Condvar,
}

#[derive(Debug)]
struct Slots {
    done: Vec<Option<Done>>,
    /// Chunks in the order they were done.
    order: VecDeque<usize>,
    /// Chunks done so far (taken or not).
    finished: usize,
    /// What the waiting caller waits for: only that wakes it.
    want: Want,
}

/// What a caller waits for, so that the pool's thread wakes it only when it comes (a
/// wake-up costs more than a small task).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Nothing,
    Chunk(usize),
    Any,
    All,
}

impl Job {
    /// A call of `items` tasks in chunks of `chunk`, whose encoded arguments are
    /// `args`, chunk `k`'s ending at `ends[k]`.
    pub(crate) fn new(
        call: u64,
        items: usize,
        chunk: usize,
        args: Vec<u8>,
        ends: Vec<usize>,
    ) -> Self {
        let chunks = items.div_ceil(chunk.max(1));
        debug_assert_eq!(ends.len(), chunks);
        Job {
            call,
            items,
            chunk: chunk.max(1),
            args,
            ends,
            abandoned: AtomicBool::new(false),
            slots: Mutex::new(Slots {
                done: (0..chunks).map(|_| None).collect(),
                order: VecDeque::new(),
                finished: 0,
                want: Want::Nothing,
            }),
            cond: Condvar::new(),
        }
    }

    /// Chunk `chunk`'s arguments, encoded.
    pub(crate) fn args_of(&self, chunk: usize) -> &[u8] {
        let start = chunk.checked_sub(1).map_or(0, |k| self.ends[k]);
        &self.args[start..self.ends[chunk]]
    }

    pub(crate) fn chunks(&self) -> usize {
        self.items.div_ceil(self.chunk)
    }

    pub(crate) fn first_of(&self, chunk: usize) -> usize {
        chunk * self.chunk
    }

    pub(crate) fn len_of(&self, chunk: usize) -> usize {
        self.chunk.min(self.items - self.first_of(chunk))
    }

    pub(crate) fn abandon(&self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Relaxed)
    }

    /// Records a chunk's outcome, once: a second outcome for the same chunk (which the
    /// pool never makes) would be dropped, so no caller sees a result twice.
    fn complete(&self, chunk: usize, done: Done) {
        let mut slots = lock(&self.slots);
        if let Some(slot @ None) = slots.done.get_mut(chunk) {
            *slot = Some(done);
            slots.order.push_back(chunk);
            slots.finished += 1;
            let wake = match slots.want {
                Want::Nothing => false,
                Want::Chunk(c) => c == chunk,
                Want::Any => true,
                Want::All => slots.finished == slots.done.len(),
            };
            drop(slots);
            if wake {
                self.cond.notify_all();
            }
        }
    }

    /// Waits until `pick` finds a chunk to take, or `deadline` passes (`Err(Timeout)`).
    fn take_with(
        &self,
        deadline: Option<Instant>,
        want: Want,
        mut pick: impl FnMut(&mut Slots) -> Option<(usize, Done)>,
    ) -> Result<(usize, Done), Error> {
        let mut slots = lock(&self.slots);
        loop {
            if let Some(found) = pick(&mut slots) {
                slots.want = Want::Nothing;
                return Ok(found);
            }
            slots.want = want;
            slots = match deadline {
                None => self
                    .cond
                    .wait(slots)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        slots.want = Want::Nothing;
                        return Err(Error::Timeout);
                    }
                    self.cond
                        .wait_timeout(slots, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// Takes chunk `chunk`'s outcome, waiting for it until `deadline`.
    pub(crate) fn take(&self, chunk: usize, deadline: Option<Instant>) -> Result<Done, Error> {
        self.take_with(deadline, Want::Chunk(chunk), |s| {
            s.done
                .get_mut(chunk)
                .and_then(Option::take)
                .map(|d| (chunk, d))
        })
        .map(|(_, d)| d)
    }

    /// Takes the outcome of whichever chunk was done first of those not taken yet.
    pub(crate) fn take_any(&self, deadline: Option<Instant>) -> Result<(usize, Done), Error> {
        self.take_with(deadline, Want::Any, |s| {
            let chunk = s.order.pop_front()?;
            s.done[chunk].take().map(|d| (chunk, d))
        })
    }

    /// Waits until every chunk has its outcome (taken or not): one wake-up for a whole
    /// `map`.
    pub(crate) fn wait_all(&self) {
        let mut slots = lock(&self.slots);
        while slots.finished < slots.done.len() {
            slots.want = Want::All;
            slots = self
                .cond
                .wait(slots)
                .unwrap_or_else(PoisonError::into_inner);
        }
        slots.want = Want::Nothing;
    }

    /// Takes every chunk's outcome (after [`wait_all`](Job::wait_all): each has one), in
    /// chunk order, with one lock.
    pub(crate) fn take_all(&self) -> Vec<Option<Done>> {
        let mut slots = lock(&self.slots);
        slots.order.clear();
        std::mem::take(&mut slots.done)
    }

    /// Whether chunk `chunk` has its outcome (and it was not taken).
    pub(crate) fn is_done(&self, chunk: usize) -> bool {
        lock(&self.slots)
            .done
            .get(chunk)
            .is_some_and(Option::is_some)
    }
}
