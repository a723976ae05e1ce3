//! How a pool is set up.

use std::{fmt, sync::Arc, time::Duration};

use ipckit_core::DEFAULT_MAX_MESSAGE;

use crate::Event;

/// A callback told of each [`Event`] of a pool.
pub(crate) type OnEvent = Arc<dyn Fn(&Event) + Send + Sync>;

/// How a [`Pool`](crate::Pool) is set up: the number of workers, and what it does with a
/// dead worker's task, a task that runs too long, a worker that served enough tasks.
///
/// `PoolOptions::new(4)` (or just `4` where options are expected) gives the defaults:
/// a task whose worker died is retried once, no task timeout, workers never retired,
/// `map` in chunks as Python's `Pool.map` cuts them, messages up to 64 MiB.
#[derive(Clone)]
pub struct PoolOptions {
    pub(crate) workers: usize,
    pub(crate) retries: u32,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) max_tasks_per_child: Option<u64>,
    pub(crate) chunk_size: Option<usize>,
    pub(crate) max_message: usize,
    pub(crate) on_event: Option<OnEvent>,
}

impl PoolOptions {
    /// Options for a pool of `workers` processes, with the defaults.
    pub fn new(workers: usize) -> Self {
        PoolOptions {
            workers,
            retries: 1,
            task_timeout: None,
            max_tasks_per_child: None,
            chunk_size: None,
            max_message: DEFAULT_MAX_MESSAGE,
            on_event: None,
        }
    }

    /// Options for as many workers as this machine has processors.
    pub fn per_cpu() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// How many times a task whose worker died is started again (on another worker)
    /// before it is reported as [`Error::WorkerDied`](crate::Error::WorkerDied). The
    /// default, 1, makes tasks *at least once*: a task may have run partly (or wholly,
    /// if the worker died after its work but before its answer) before it runs again.
    /// 0 makes them *at most once*: workers then send each reply at once instead of in
    /// batches (a worker's death loses only the chunk it ran), which costs a system call
    /// and a wake-up per chunk with tiny tasks.
    #[must_use]
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The longest a task may run: past it, its worker is killed and replaced, and the
    /// task reported as [`Error::TaskTimedOut`](crate::Error::TaskTimedOut) (not retried).
    /// A chunk of `n` tasks may run `n` times this, counted from when its worker began
    /// it; the worker is killed up to a few milliseconds after the limit (two ticks of the
    /// system's coarse clock), never before.
    #[must_use]
    pub fn task_timeout(mut self, limit: Duration) -> Self {
        self.task_timeout = Some(limit);
        self
    }

    /// Replaces a worker once it has served `n` dispatches (a chunk of a `map` counts as
    /// one, as in Python), as Python's `maxtasksperchild`: a worker that leaks memory or
    /// other resources is retired and replaced by a fresh process. The pool starts the
    /// replacement when the old worker answers its last task.
    #[must_use]
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        self.max_tasks_per_child = Some(n.max(1));
        self
    }

    /// How many tasks of `map`, `imap` and `imap_unordered` travel together to a worker
    /// (one message there, one back). By default, Python's `Pool.map` rule: the input cut
    /// into about four chunks per worker. `chunk_size(1)` sends each task on its own, for
    /// long tasks of uneven length.
    #[must_use]
    pub fn chunk_size(mut self, n: usize) -> Self {
        self.chunk_size = Some(n.max(1));
        self
    }

    /// The largest message, in bytes, between the pool and a worker: a chunk of
    /// arguments, or a chunk of results (64 MiB by default).
    #[must_use]
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// Calls `f` with each [`Event`] of the pool: a worker started, died, timed out or
    /// retired. `f` runs on the pool's own thread: keep it short (print, or send the event
    /// on a channel); the pool waits for it.
    #[must_use]
    pub fn on_event(mut self, f: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(f));
        self
    }

    /// The chunk size for `n` tasks.
    pub(crate) fn chunk_for(&self, n: usize) -> usize {
        match self.chunk_size {
            Some(c) => c,
            // Python's Pool.map: divmod(len, 4 * processes), rounded up.
            None => n.div_ceil(self.workers.max(1) * 4).max(1),
        }
    }
}

impl From<usize> for PoolOptions {
    fn from(workers: usize) -> Self {
        PoolOptions::new(workers)
    }
}

impl Default for PoolOptions {
    /// As [`PoolOptions::per_cpu`].
    fn default() -> Self {
        Self::per_cpu()
    }
}

impl fmt::Debug for PoolOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolOptions")
            .field("workers", &self.workers)
            .field("retries", &self.retries)
            .field("task_timeout", &self.task_timeout)
            .field("max_tasks_per_child", &self.max_tasks_per_child)
            .field("chunk_size", &self.chunk_size)
            .field("max_message", &self.max_message)
            .field("on_event", &self.on_event.is_some())
            .finish()
    }
}
