//! The pool as its callers hold it.

use std::{
    collections::VecDeque,
    fmt,
    marker::PhantomData,
    os::unix::net::UnixStream,
    sync::{Arc, Mutex, atomic::Ordering, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use ipckit_core::{Child, Codec, Command, Error as CoreError, Postcard};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    Error, PoolOptions, Result, WorkerInfo,
    dispatch::{Config, Dispatcher, SpawnWorker},
    job::{Done, Job, Shared, Snap, Task, lock},
    worker::{
        CONN, INIT, Outcome, PROGRESS, Progress, TASK, WorkerConfig, decode_each, worker_main,
    },
};

/// An initializer and its encoded argument.
type Init<I> = (fn(I), Vec<u8>);

/// A pool of worker processes that run `f: fn(A) -> R`: Python's
/// `multiprocessing.Pool`, typed by its function.
///
/// Made by [`Pool::new`] (or [`Pool::with_initializer`]), which starts the workers and
/// waits until each is ready. The workers are fresh `exec`s of this executable (see
/// `ipckit_core::enter`, which `main` must call first), started once and given tasks
/// over a socket each; arguments and results cross as serde values (postcard).
///
/// # Calls
///
/// [`map`](Pool::map), [`imap`](Pool::imap), [`imap_unordered`](Pool::imap_unordered),
/// [`submit`](Pool::submit) (a [`TaskHandle`] to wait on) and [`apply`](Pool::apply).
/// The pool is `Send + Sync`: share it (`&Pool`, `Arc<Pool>`) and call it from any thread.
///
/// # When a worker dies
///
/// The pool's thread waits on every worker's exit descriptor beside its socket, so it
/// sees a death (SIGKILL, abort, out of memory) as the kernel ends the process. It starts
/// a replacement, and the task the worker was running is run again on another worker
/// ([`PoolOptions::retries`], once by default) or reported to its caller as
/// [`Error::WorkerDied`] with the signal. Chunks queued behind it had not started and go
/// back to the queue; so do the quick chunks it had finished but whose replies it was
/// still holding back to send them together (it counts the chunks it begins in shared
/// memory, so the pool knows which is which), to run again. A task that panics gives
/// [`Error::Panicked`] with the message; its worker goes on. A task that runs past
/// [`PoolOptions::task_timeout`] gives [`Error::TaskTimedOut`]; its worker is killed and
/// replaced. Each task's result is delivered once.
///
/// # Ending
///
/// [`close`](Pool::close) takes no more tasks, [`join`](Pool::join) waits for those
/// taken and for every worker to exit, [`terminate`](Pool::terminate) kills the workers
/// now. Dropping the pool terminates it: no worker outlives it.
pub struct Pool<A, R> {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    opts: PoolOptions,
    _fn: PhantomData<fn(A) -> R>,
}

impl<A, R> fmt::Debug for Pool<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("options", &self.opts)
            .field("workers", &self.workers())
            .finish_non_exhaustive()
    }
}

impl<A, R> Pool<A, R>
where
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    /// Starts a pool whose workers run `f`, and waits until every worker is ready.
    /// `opts` is a number of workers or [`PoolOptions`].
    ///
    /// ```no_run
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// fn main() -> Result<(), ipckit_pool::Error> {
    ///     ipckit_pool::enter(&[]);
    ///     let pool = ipckit_pool::Pool::new(4, square)?;
    ///     assert_eq!(pool.map(1..=3)?, [1, 4, 9]);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    /// [`Error::Core`] with `InvalidOptions` for zero workers, `EnterMissing` if
    /// `ipckit_core::enter` was never called, `Io` if a process cannot start;
    /// [`Error::WorkerStart`] if a worker died before it was ready.
    pub fn new(opts: impl Into<PoolOptions>, f: fn(A) -> R) -> Result<Self> {
        Self::start::<()>(opts.into(), f, None)
    }

    /// As [`new`](Pool::new), and each worker runs `init(args)` once when it starts,
    /// before any task: Python's `initializer` and `initargs`. Set up what the tasks
    /// share there (a `static` `OnceLock`, a connection).
    ///
    /// # Errors
    /// As [`new`](Pool::new); [`Error::WorkerStart`] with the panic message if `init`
    /// panics in a worker.
    pub fn with_initializer<I>(
        opts: impl Into<PoolOptions>,
        f: fn(A) -> R,
        init: fn(I),
        args: I,
    ) -> Result<Self>
    where
        I: Serialize + DeserializeOwned + 'static,
    {
        let mut bytes = Vec::new();
        Postcard.encode(&args, &mut bytes)?;
        Self::start::<I>(opts.into(), f, Some((init, bytes)))
    }

    fn start<I>(opts: PoolOptions, f: fn(A) -> R, init: Option<Init<I>>) -> Result<Self>
    where
        I: Serialize + DeserializeOwned + 'static,
    {
        if opts.workers == 0 {
            return Err(
                CoreError::InvalidOptions("a pool needs at least one worker".into()).into(),
            );
        }
        let max_message = opts.max_message;
        let hold_replies = opts.retries > 0;
        let timed = opts.task_timeout.is_some();
        let init_fn = init.as_ref().map(|(f, _)| *f);
        let init_args = init.map(|(_, a)| a);
        let spawn: SpawnWorker = Box::new(move || {
            let (ours, theirs) = ipckit_pipes::duplex()?;
            let config = WorkerConfig {
                init: init_args.clone(),
                max_message,
                hold_replies,
                timed,
            };
            let (progress, their_progress) = Progress::create()?;
            let mut cmd = Command::function(&config, worker_main::<A, R, I>)?
                .pass_fn(TASK, f)
                .handle(CONN, theirs)
                .handle(PROGRESS, their_progress);
            if let Some(init) = init_fn {
                cmd = cmd.pass_fn(INIT, init);
            }
            let child: Child<()> = cmd.spawn()?;
            Ok((child, ours.max_message(max_message), progress))
        });
        let (wake_tx, wake_rx) = UnixStream::pair().map_err(CoreError::from)?;
        wake_tx.set_nonblocking(true).map_err(CoreError::from)?;
        wake_rx.set_nonblocking(true).map_err(CoreError::from)?;
        let shared = Arc::new(Shared::new(wake_tx));
        let (started_tx, started) = mpsc::channel();
        let dispatcher = Dispatcher::new(
            shared.clone(),
            wake_rx,
            Config {
                spawn,
                size: opts.workers,
                retries: opts.retries,
                task_timeout: opts.task_timeout,
                max_tasks: opts.max_tasks_per_child,
                on_event: opts.on_event.clone(),
            },
            started_tx,
        );
        let thread = std::thread::Builder::new()
            .name("ipckit-pool".into())
            .spawn(move || dispatcher.run())
            .map_err(CoreError::from)?;
        let pool = Pool {
            shared,
            thread: Mutex::new(Some(thread)),
            opts,
            _fn: PhantomData,
        };
        match started.recv() {
            Ok(Ok(())) => Ok(pool),
            Ok(Err(message)) => Err(Error::WorkerStart { message }),
            Err(_) => Err(Error::WorkerStart {
                message: "the pool's thread ended".into(),
            }),
        }
    }

    /// Queues `items` in chunks of `chunk` as one call.
    fn enqueue(&self, items: Vec<A>, chunk: usize) -> Result<Arc<Job>> {
        let call = self.shared.next_call.fetch_add(1, Ordering::Relaxed);
        let chunk = chunk.max(1);
        // Every chunk's arguments in one buffer, one after the other.
        let mut args = Vec::new();
        let mut ends = Vec::with_capacity(items.len().div_ceil(chunk));
        for part in items.chunks(chunk) {
            let start = args.len();
            Postcard.encode(part, &mut args)?;
            let len = args.len() - start;
            if len > self.opts.max_message {
                return Err(CoreError::TooLarge {
                    len: len as u64,
                    max: self.opts.max_message,
                }
                .into());
            }
            ends.push(args.len());
        }
        let job = Arc::new(Job::new(call, items.len(), chunk, args, ends));
        let tasks: Vec<Task> = (0..job.chunks())
            .map(|k| Task {
                job: job.clone(),
                chunk: k,
                attempts: 0,
            })
            .collect();
        {
            let mut q = lock(&self.shared.queue);
            if let Some(message) = &q.broken {
                return Err(Error::WorkerStart {
                    message: message.clone(),
                });
            }
            if q.closed {
                return Err(Error::Closed);
            }
            q.pending.extend(tasks);
        }
        self.shared.wake();
        Ok(job)
    }

    /// Runs `f` on every item and gives the results in order: Python's `Pool.map`. The
    /// input is read whole at the call and sent in chunks
    /// ([`PoolOptions::chunk_size`]).
    ///
    /// # Errors
    /// The first failed task in input order ([`Error::Panicked`],
    /// [`Error::WorkerDied`], [`Error::TaskTimedOut`], …); the tasks after it that have
    /// not started are dropped. [`Error::Closed`] after [`close`](Pool::close).
    pub fn map(&self, items: impl IntoIterator<Item = A>) -> Result<Vec<R>> {
        let items: Vec<A> = items.into_iter().collect();
        let chunk = self.opts.chunk_for(items.len());
        let job = self.enqueue(items, chunk)?;
        // Every chunk ends (with its result, or a failure: never a hang), so waiting for
        // them all costs one wake-up instead of one per chunk; the results are then
        // decoded straight into the output.
        job.wait_all();
        let mut out = Vec::with_capacity(job.items);
        for (k, done) in job.take_all().into_iter().enumerate() {
            let done =
                done.ok_or_else(|| CoreError::Malformed("a chunk without outcome".into()))?;
            decode_into(&job, k, done, &mut out)?;
        }
        Ok(out)
    }

    /// Runs `f` on every item and yields the results in input order as they come:
    /// Python's `Pool.imap`. Each item is a `Result`: a failed task does not end the
    /// iteration.
    ///
    /// # Errors
    /// [`Error::Closed`] after [`close`](Pool::close); [`Error::Core`] if an argument
    /// cannot be encoded or exceeds [`PoolOptions::max_message`].
    pub fn imap(&self, items: impl IntoIterator<Item = A>) -> Result<Imap<R>> {
        let items: Vec<A> = items.into_iter().collect();
        let chunk = self.opts.chunk_for(items.len());
        Ok(Imap {
            job: self.enqueue(items, chunk)?,
            next_chunk: 0,
            ready: VecDeque::new(),
            _r: PhantomData,
        })
    }

    /// Runs `f` on every item and yields `(position, result)` in the order tasks finish:
    /// Python's `Pool.imap_unordered`, with each result's position in the input.
    ///
    /// # Errors
    /// As [`imap`](Pool::imap).
    pub fn imap_unordered(&self, items: impl IntoIterator<Item = A>) -> Result<ImapUnordered<R>> {
        let items: Vec<A> = items.into_iter().collect();
        let chunk = self.opts.chunk_for(items.len());
        let job = self.enqueue(items, chunk)?;
        Ok(ImapUnordered {
            left: job.chunks(),
            job,
            ready: VecDeque::new(),
            _r: PhantomData,
        })
    }

    /// Queues one task and returns a handle on its result: Python's
    /// `ProcessPoolExecutor.submit` and `Pool.apply_async`.
    ///
    /// # Errors
    /// As [`imap`](Pool::imap).
    pub fn submit(&self, args: A) -> Result<TaskHandle<R>> {
        Ok(TaskHandle {
            job: self.enqueue(vec![args], 1)?,
            taken: false,
            _r: PhantomData,
        })
    }

    /// Runs one task and waits for its result: Python's `Pool.apply`.
    ///
    /// # Errors
    /// As [`TaskHandle::wait`].
    pub fn apply(&self, args: A) -> Result<R> {
        self.submit(args)?.wait()
    }
}

impl<A, R> Pool<A, R> {
    /// The number of workers the pool keeps.
    pub fn size(&self) -> usize {
        self.opts.workers
    }

    /// The workers as they were a moment ago: number, process id, what they run.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        lock(&self.shared.snapshot).iter().map(Snap::now).collect()
    }

    /// Takes no more tasks (later calls fail with [`Error::Closed`]); the tasks taken are
    /// finished, then the workers exit. Returns at once: see [`join`](Pool::join).
    pub fn close(&self) {
        lock(&self.shared.queue).closed = true;
        self.shared.wake();
    }

    /// Closes the pool and waits until every task taken is done and every worker has
    /// exited.
    ///
    /// # Errors
    /// Never for now; the `Result` leaves room for a failure to reap a worker.
    pub fn join(&self) -> Result<()> {
        self.close();
        self.shared.wait_ended(None);
        self.reap_thread();
        Ok(())
    }

    /// As [`join`](Pool::join), waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if tasks or workers remain (the pool stays closed; join again,
    /// or [`terminate`](Pool::terminate)).
    pub fn join_timeout(&self, timeout: Duration) -> Result<()> {
        self.close();
        if !self.shared.wait_ended(Some(timeout)) {
            return Err(Error::Timeout);
        }
        self.reap_thread();
        Ok(())
    }

    /// Kills every worker now and waits until they are reaped. Tasks not finished are
    /// reported as [`Error::Terminated`]; later calls fail with [`Error::Closed`].
    pub fn terminate(&self) {
        {
            let mut q = lock(&self.shared.queue);
            q.terminate = true;
            q.closed = true;
        }
        self.shared.wake();
        self.shared.wait_ended(None);
        self.reap_thread();
    }

    fn reap_thread(&self) {
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

impl<A, R> Drop for Pool<A, R> {
    /// Terminates the pool: kills and reaps its workers, ends its thread.
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Decodes chunk `chunk`'s results onto the end of `out`; the first failed task's error.
fn decode_into<R: DeserializeOwned>(
    job: &Job,
    chunk: usize,
    done: Done,
    out: &mut Vec<R>,
) -> Result<()> {
    let first = job.first_of(chunk);
    let len = job.len_of(chunk);
    let bytes = match done {
        Done::Reply(reply) => reply,
        Done::Failed(failure) => return Err(failure.to_error(first)),
    };
    let mut failed = None;
    let mut task = first;
    let n = decode_each(bytes.as_bytes(), |o: Outcome<R>| {
        match o {
            Outcome::Ok(r) if failed.is_none() => out.push(r),
            Outcome::Ok(_) => {}
            Outcome::Panicked(message) => {
                failed.get_or_insert(Error::Panicked { task, message });
            }
            Outcome::Unsendable(reason) => {
                failed.get_or_insert(Error::Unsendable { task, reason });
            }
        }
        task += 1;
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    if n != len {
        return Err(CoreError::Malformed(format!("{n} results for a chunk of {len}")).into());
    }
    Ok(())
}

/// Turns chunk `chunk`'s outcome into one result per task, with the task's position.
fn expand<R: DeserializeOwned>(job: &Job, chunk: usize, done: Done) -> Vec<(usize, Result<R>)> {
    let first = job.first_of(chunk);
    let len = job.len_of(chunk);
    let positions = first..first + len;
    match done {
        Done::Reply(reply) => match Postcard.decode::<Vec<Outcome<R>>>(reply.as_bytes()) {
            Ok(outcomes) if outcomes.len() == len => positions
                .zip(outcomes)
                .map(|(task, o)| {
                    let r = match o {
                        Outcome::Ok(r) => Ok(r),
                        Outcome::Panicked(message) => Err(Error::Panicked { task, message }),
                        Outcome::Unsendable(reason) => Err(Error::Unsendable { task, reason }),
                    };
                    (task, r)
                })
                .collect(),
            Ok(outcomes) => {
                let why = format!("{} results for a chunk of {len}", outcomes.len());
                positions
                    .map(|t| (t, Err(CoreError::Malformed(why.clone()).into())))
                    .collect()
            }
            Err(e) => {
                let why = e.to_string();
                positions
                    .map(|t| (t, Err(CoreError::Codec(why.clone()).into())))
                    .collect()
            }
        },
        Done::Failed(failure) => positions.map(|t| (t, Err(failure.to_error(t)))).collect(),
    }
}

fn deadline_after(timeout: Duration) -> Option<Instant> {
    // Far enough to be for ever.
    Some(
        Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)),
    )
}

/// The results of [`Pool::imap`] (and [`Pool::map`]), in input order.
///
/// Each item is `Ok(result)` or the task's error; the iteration ends after the last
/// task. Dropping it drops the call's tasks that have not started.
pub struct Imap<R> {
    job: Arc<Job>,
    next_chunk: usize,
    ready: VecDeque<Result<R>>,
    _r: PhantomData<fn() -> R>,
}

impl<R: DeserializeOwned> Imap<R> {
    fn next_until(&mut self, deadline: Option<Instant>) -> Option<Result<R>> {
        if let Some(r) = self.ready.pop_front() {
            return Some(r);
        }
        if self.next_chunk >= self.job.chunks() {
            return None;
        }
        let done = match self.job.take(self.next_chunk, deadline) {
            Ok(done) => done,
            Err(e) => return Some(Err(e)),
        };
        self.ready = expand(&self.job, self.next_chunk, done)
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        self.next_chunk += 1;
        self.ready.pop_front()
    }

    /// The next result, waiting at most `timeout`: `Some(Err(Error::Timeout))` if it did
    /// not come in time (the iteration can go on), `None` after the last.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R>> {
        self.next_until(deadline_after(timeout))
    }
}

impl<R: DeserializeOwned> Iterator for Imap<R> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        self.next_until(None)
    }
}

impl<R> Drop for Imap<R> {
    fn drop(&mut self) {
        self.job.abandon();
    }
}

impl<R> fmt::Debug for Imap<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Imap")
            .field("call", &self.job.call)
            .field("tasks", &self.job.items)
            .finish_non_exhaustive()
    }
}

/// The results of [`Pool::imap_unordered`], as `(position, result)` in the order tasks
/// finish.
///
/// Each item is `Ok((position, result))` or the task's error (which names the position);
/// the iteration ends after the last task. Dropping it drops the call's tasks that have
/// not started.
pub struct ImapUnordered<R> {
    job: Arc<Job>,
    left: usize,
    ready: VecDeque<Result<(usize, R)>>,
    _r: PhantomData<fn() -> R>,
}

impl<R: DeserializeOwned> ImapUnordered<R> {
    fn next_until(&mut self, deadline: Option<Instant>) -> Option<Result<(usize, R)>> {
        if let Some(r) = self.ready.pop_front() {
            return Some(r);
        }
        if self.left == 0 {
            return None;
        }
        let (chunk, done) = match self.job.take_any(deadline) {
            Ok(found) => found,
            Err(e) => return Some(Err(e)),
        };
        self.left -= 1;
        self.ready = expand(&self.job, chunk, done)
            .into_iter()
            .map(|(i, r)| r.map(|r| (i, r)))
            .collect();
        self.ready.pop_front()
    }

    /// The next result, waiting at most `timeout`: `Some(Err(Error::Timeout))` if none
    /// came in time (the iteration can go on), `None` after the last.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<(usize, R)>> {
        self.next_until(deadline_after(timeout))
    }
}

impl<R: DeserializeOwned> Iterator for ImapUnordered<R> {
    type Item = Result<(usize, R)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_until(None)
    }
}

impl<R> Drop for ImapUnordered<R> {
    fn drop(&mut self) {
        self.job.abandon();
    }
}

impl<R> fmt::Debug for ImapUnordered<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImapUnordered")
            .field("call", &self.job.call)
            .field("tasks", &self.job.items)
            .finish_non_exhaustive()
    }
}

/// The result of one task queued with [`Pool::submit`], to wait on: Python's `Future` /
/// `AsyncResult`.
///
/// Dropping it before the task started drops the task.
pub struct TaskHandle<R> {
    job: Arc<Job>,
    taken: bool,
    _r: PhantomData<fn() -> R>,
}

impl<R: DeserializeOwned> TaskHandle<R> {
    fn take(&mut self, deadline: Option<Instant>) -> Result<R> {
        if self.taken {
            return Err(Error::ResultTaken);
        }
        let done = self.job.take(0, deadline)?;
        self.taken = true;
        match expand(&self.job, 0, done).pop() {
            Some((_, r)) => r,
            None => Err(CoreError::Malformed("no result for the task".into()).into()),
        }
    }

    /// Waits for the task's result.
    ///
    /// # Errors
    /// The task's failure: [`Error::Panicked`], [`Error::WorkerDied`],
    /// [`Error::TaskTimedOut`], [`Error::Unsendable`], [`Error::Terminated`].
    pub fn wait(mut self) -> Result<R> {
        self.take(None)
    }

    /// Waits at most `timeout` for the task's result.
    ///
    /// # Errors
    /// [`Error::Timeout`] if it did not come in time (wait again later);
    /// [`Error::ResultTaken`] if an earlier wait took it; otherwise as
    /// [`wait`](TaskHandle::wait).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<R> {
        self.take(deadline_after(timeout))
    }

    /// The task's result if it is done, without waiting: `Ok(None)` while it runs.
    ///
    /// # Errors
    /// As [`wait_timeout`](TaskHandle::wait_timeout), never `Timeout`.
    pub fn try_wait(&mut self) -> Result<Option<R>> {
        match self.take(Some(Instant::now())) {
            Ok(r) => Ok(Some(r)),
            Err(Error::Timeout) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the task is done (its result waits to be taken).
    pub fn is_done(&self) -> bool {
        !self.taken && self.job.is_done(0)
    }
}

impl<R> Drop for TaskHandle<R> {
    fn drop(&mut self) {
        self.job.abandon();
    }
}

impl<R> fmt::Debug for TaskHandle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("call", &self.job.call)
            .field("taken", &self.taken)
            .finish_non_exhaustive()
    }
}
