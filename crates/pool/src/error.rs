//! What a pool call can fail with.

use std::time::Duration;

/// A failure of a pool call or of one of its tasks.
///
/// A task's own failures name the task: `task` is the position of its argument in the
/// call's input (0 for [`submit`](crate::Pool::submit) and [`apply`](crate::Pool::apply)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The task's function panicked; the worker caught the panic and goes on.
    #[error("task {task} panicked: {message}")]
    Panicked {
        /// The task's position in its call.
        task: usize,
        /// The panic's message.
        message: String,
    },
    /// The worker running the task died (SIGKILL, abort, out of memory, `exit` inside the
    /// function), and the task had used up its retries
    /// ([`PoolOptions::retries`](crate::PoolOptions::retries)). The pool has started a
    /// replacement and goes on.
    #[error("task {task}: its worker (pid {pid}) died{} after {attempts} attempt(s)", signal_text(*.signal))]
    WorkerDied {
        /// The task's position in its call.
        task: usize,
        /// The process id of the worker that died last with it.
        pid: u32,
        /// The signal that killed it, if one did.
        signal: Option<i32>,
        /// How many times the task was started.
        attempts: u32,
    },
    /// The task ran longer than the pool's
    /// [`task_timeout`](crate::PoolOptions::task_timeout): its worker was killed and
    /// replaced. A task that timed out is not retried.
    #[error("task {task} ran longer than {limit:?}; its worker (pid {pid}) was killed")]
    TaskTimedOut {
        /// The task's position in its call.
        task: usize,
        /// The worker that was killed.
        pid: u32,
        /// The limit per task.
        limit: Duration,
    },
    /// The task's result could not travel back: it does not encode, or it exceeds the
    /// pool's [`max_message`](crate::PoolOptions::max_message).
    #[error("task {task}: its result cannot be sent back: {reason}")]
    Unsendable {
        /// The task's position in its call.
        task: usize,
        /// Why.
        reason: String,
    },
    /// The pool was terminated (or dropped) before the task finished.
    #[error("task {task}: the pool was terminated before it finished")]
    Terminated {
        /// The task's position in its call.
        task: usize,
    },
    /// The pool was closed (or terminated): it takes no more tasks.
    #[error("the pool is closed: it takes no more tasks")]
    Closed,
    /// Workers cannot start: the initializer panicked, the executable cannot be run, or
    /// three replacements in a row died before they were ready. The pool takes no more
    /// tasks.
    #[error("pool workers cannot start: {message}")]
    WorkerStart {
        /// What went wrong with the last worker that tried.
        message: String,
    },
    /// A `_timeout` wait ended before the result came; the task goes on, and the handle or
    /// iterator can be waited on again.
    #[error("timed out waiting for a result")]
    Timeout,
    /// The result of this handle was taken already by an earlier wait.
    #[error("the task's result was taken already")]
    ResultTaken,
    /// A failure of ipckit-core: starting a process, encoding an argument, a message
    /// larger than the maximum.
    #[error(transparent)]
    Core(#[from] ipckit_core::Error),
}

fn signal_text(signal: Option<i32>) -> String {
    match signal {
        Some(s) => format!(" (signal {s})"),
        None => String::new(),
    }
}

/// A `Result` of a pool call.
pub type Result<T, E = Error> = std::result::Result<T, E>;
