//! What a pool tells about its workers.

/// Tasks sent to a worker together: the `count` tasks from position `index` of call
/// `call` (each `map`, `imap`, `imap_unordered`, `submit` or `apply` is one call,
/// numbered from 0 in the order they were made).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskRef {
    /// The call the tasks belong to.
    pub call: u64,
    /// The position of the first task in the call's input.
    pub index: usize,
    /// How many tasks travel together (the chunk's length).
    pub count: usize,
}

/// Something that happened to a pool's workers, given to the callback of
/// [`PoolOptions::on_event`](crate::PoolOptions::on_event). Workers are numbered from 1
/// in the order they were started; a replacement gets a new number.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A worker process was started (it runs its initializer, then takes tasks).
    Started {
        /// The worker's number.
        worker: u32,
        /// Its process id.
        pid: u32,
        /// The worker it replaces, if any.
        replacing: Option<u32>,
    },
    /// A worker died: killed by a signal, aborted, or exited without being asked to.
    Died {
        /// The worker's number.
        worker: u32,
        /// Its process id.
        pid: u32,
        /// The signal that killed it, if one did.
        signal: Option<i32>,
        /// The tasks it was running, if any.
        task: Option<TaskRef>,
        /// Whether those tasks will run again on another worker (otherwise their callers
        /// get [`Error::WorkerDied`](crate::Error::WorkerDied)).
        retried: bool,
    },
    /// A task ran longer than the pool's task timeout: its worker was killed.
    TimedOut {
        /// The worker's number.
        worker: u32,
        /// Its process id.
        pid: u32,
        /// The tasks it was running.
        task: TaskRef,
    },
    /// A worker went home as asked: after its `max_tasks_per_child`, or when the pool
    /// closed.
    Retired {
        /// The worker's number.
        worker: u32,
        /// Its process id.
        pid: u32,
        /// How many dispatches it served.
        tasks: u64,
    },
}

/// A worker of a pool as it was a moment ago: see [`Pool::workers`](crate::Pool::workers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerInfo {
    /// The worker's number (from 1, in the order workers were started).
    pub worker: u32,
    /// Its process id.
    pub pid: u32,
    /// Whether it has run its initializer and takes tasks.
    pub ready: bool,
    /// The tasks it runs now (the last it began of those sent to it and not yet
    /// answered), if any.
    pub task: Option<TaskRef>,
    /// How many dispatches it has answered.
    pub done: u64,
}
