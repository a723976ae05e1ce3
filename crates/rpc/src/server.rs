//! Serving a registry over ipckit transports: the threads of a connection take turns
//! reading it (leader/follower), the one that read a call runs it, and a bound shared by a
//! server's connections caps how many calls run at once.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::{
        Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle, Thread},
    time::{Duration, Instant},
};

use ipckit_core::{Connection, Reader, RecvBytes, SendBytes, Writer};
use ipckit_sockets::{Address, Listener};

use crate::{
    Error, Registry, Result,
    wire::{self, Frame, Outcome, WINDOW},
};

type Job = Box<dyn FnOnce() + Send>;

/// Calls waiting for a slot at most; the thread reading a connection waits while it is full.
const QUEUE: usize = 4096;

/// Locks a mutex whose data stays consistent even if a holder panicked (handlers run
/// outside every lock, under `catch_unwind`).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How many calls may run at once (shared by a server's connections), and the calls
/// waiting for one of those slots, in order.
struct Slots {
    state: Mutex<SlotState>,
    /// Signalled when a queued call leaves the queue.
    room: Condvar,
}

struct SlotState {
    free: usize,
    queue: VecDeque<Job>,
}

impl Slots {
    fn new(slots: usize) -> Arc<Slots> {
        Arc::new(Slots {
            state: Mutex::new(SlotState {
                free: slots.max(1),
                queue: VecDeque::new(),
            }),
            room: Condvar::new(),
        })
    }

    /// Takes a free slot for `job` and gives it back to run now; or queues it (waiting
    /// while the queue is full) for a thread that frees a slot.
    fn take_or_queue(&self, job: Job) -> Option<Job> {
        let mut s = lock(&self.state);
        loop {
            if s.free > 0 {
                s.free -= 1;
                return Some(job);
            }
            if s.queue.len() < QUEUE {
                s.queue.push_back(job);
                return None;
            }
            s = self.room.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// For a thread whose call ended: the next queued call, keeping the slot; or `None`,
    /// freeing it.
    fn next(&self) -> Option<Job> {
        let mut s = lock(&self.state);
        let job = s.queue.pop_front();
        match job {
            Some(_) => self.room.notify_one(),
            None => s.free += 1,
        }
        job
    }

    /// Runs `job`, then the queued calls while there are some, then frees the slot.
    fn run(&self, job: Job) {
        job();
        while let Some(job) = self.next() {
            job();
        }
    }
}

/// The server's side of a stream: how many more items the client has room for, and
/// whether it still wants them.
struct Flow {
    state: Mutex<(u32, bool)>,
    changed: Condvar,
}

impl Flow {
    fn new() -> Arc<Flow> {
        Arc::new(Flow {
            state: Mutex::new((WINDOW, false)),
            changed: Condvar::new(),
        })
    }

    /// Waits for room for one more item; `false` once the stream is cancelled.
    fn take(&self) -> bool {
        let mut s = lock(&self.state);
        while s.0 == 0 && !s.1 {
            s = self.changed.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        if s.1 {
            return false;
        }
        s.0 -= 1;
        true
    }

    fn grant(&self, n: u32) {
        let mut s = lock(&self.state);
        s.0 = s.0.saturating_add(n);
        self.changed.notify_all();
    }

    fn cancel(&self) {
        lock(&self.state).1 = true;
        self.changed.notify_all();
    }

    fn cancelled(&self) -> bool {
        lock(&self.state).1
    }
}

/// How often the watch looks for calls run by the thread that read them.
const TICK: Duration = Duration::from_millis(1);
/// A call run by the thread that read it for longer than this gets another thread to read
/// the connection meanwhile.
const TAKEOVER: Duration = Duration::from_millis(1);
/// Ticks without a call run by the thread that read it, after which the watch sleeps.
const STILL_TICKS: u32 = 100;

/// Watches a server's connections for calls run by the thread that read them for longer
/// than [`TAKEOVER`], and passes those connections' turn to read to another thread. It
/// sleeps while no such call starts.
struct Watch {
    conns: Mutex<Vec<Weak<Conn>>>,
    /// Calls run by the thread that read them, so far.
    starts: AtomicU64,
    parked: AtomicBool,
    stop: AtomicBool,
    thread: OnceLock<Thread>,
}

impl Watch {
    fn start() -> Result<Arc<Watch>> {
        let watch = Arc::new(Watch {
            conns: Mutex::new(Vec::new()),
            starts: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            thread: OnceLock::new(),
        });
        let me = watch.clone();
        let handle = thread::Builder::new()
            .name("ipckit-rpc-watch".into())
            .spawn(move || me.run())
            .map_err(Error::io)?;
        let _ = watch.thread.set(handle.thread().clone());
        Ok(watch)
    }

    fn add(&self, conn: &Arc<Conn>) {
        lock(&self.conns).push(Arc::downgrade(conn));
    }

    /// A call starts on the thread that read it: the watch must be awake.
    fn kick(&self) {
        self.starts.fetch_add(1, Ordering::SeqCst);
        if self.parked.swap(false, Ordering::SeqCst) {
            self.unpark();
        }
    }

    /// No more connections come: the watch ends once those it has are gone.
    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.unpark();
    }

    fn unpark(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    fn run(&self) {
        let mut seen = self.starts.load(Ordering::SeqCst);
        let mut still = 0;
        loop {
            thread::park_timeout(TICK);
            let live: Vec<Arc<Conn>> = {
                let mut conns = lock(&self.conns);
                conns.retain(|c| c.strong_count() > 0);
                conns.iter().filter_map(Weak::upgrade).collect()
            };
            if self.stop.load(Ordering::SeqCst) && live.is_empty() {
                return;
            }
            let mut running = false;
            for conn in &live {
                running |= conn.take_over_if_slow();
            }
            drop(live);
            let starts = self.starts.load(Ordering::SeqCst);
            if starts != seen || running {
                (seen, still) = (starts, 0);
                continue;
            }
            still += 1;
            if still < STILL_TICKS {
                continue;
            }
            // Sleep until a kick; a kick between the store and the check is seen by the
            // check (SeqCst both sides), one after it unparks.
            self.parked.store(true, Ordering::SeqCst);
            if self.starts.load(Ordering::SeqCst) == seen {
                thread::park_timeout(Duration::from_secs(1));
            }
            self.parked.store(false, Ordering::SeqCst);
        }
    }
}

/// Who reads a connection: the thread holding the turn; the others wait for it.
#[derive(Default)]
struct Turn {
    /// Threads waiting for the turn.
    idle: usize,
    /// The turn is free for a waiting thread to take.
    vacant: bool,
    /// The call being run by the thread that read it and kept the turn: its number and
    /// when it started.
    inline: Option<(u64, Instant)>,
    calls: u64,
}

/// One connection being served.
struct Conn {
    registry: Arc<Registry>,
    slots: Arc<Slots>,
    watch: Arc<Watch>,
    /// Held by the thread reading the connection (the leader).
    reader: Mutex<(Reader, Vec<u8>)>,
    writer: Mutex<Writer>,
    alive: AtomicBool,
    turn: Mutex<Turn>,
    /// Signalled when the turn is vacant, or the connection ended.
    turn_free: Condvar,
    /// The streams running, by call id.
    flows: Mutex<HashMap<u64, Arc<Flow>>>,
}

/// Serves one connection (a socket, or a duplex pipe to a child process) until the peer
/// goes away, running up to 16 calls at once.
///
/// The calling thread is one of the threads that serve it: it reads calls and runs them;
/// more threads start while calls run (about one per call running).
///
/// # Errors
///
/// [`Error::Core`] if the connection cannot be split or a thread cannot start. The peer
/// going away is the normal end: `Ok(())`.
pub fn serve_connection(conn: Connection, registry: &Registry) -> Result<()> {
    let slots = Slots::new(ServeOptions::default().workers);
    let watch = Watch::start()?;
    let conn = Conn::new(conn, Arc::new(registry.clone()), slots, watch.clone());
    let served = conn.map(|conn| conn.serve(true));
    watch.stop();
    served
}

impl Conn {
    fn new(
        conn: Connection,
        registry: Arc<Registry>,
        slots: Arc<Slots>,
        watch: Arc<Watch>,
    ) -> Result<Arc<Conn>> {
        let (reader, writer) = conn.split()?;
        let conn = Arc::new(Conn {
            registry,
            slots,
            watch,
            reader: Mutex::new((reader, Vec::new())),
            writer: Mutex::new(writer),
            alive: AtomicBool::new(true),
            turn: Mutex::new(Turn {
                vacant: true,
                ..Turn::default()
            }),
            turn_free: Condvar::new(),
            flows: Mutex::new(HashMap::new()),
        });
        conn.watch.add(&conn);
        Ok(conn)
    }

    /// Waits for the turn to read, reads and runs calls, and again, until the connection
    /// ends. A thread that is not `staying` ends when another one waits for the turn.
    fn serve(self: &Arc<Self>, staying: bool) {
        loop {
            {
                let mut t = lock(&self.turn);
                t.idle += 1;
                // `end` sets `alive` false (Release) before it takes this lock to wake us.
                while !t.vacant && self.alive.load(Ordering::Acquire) {
                    t = self
                        .turn_free
                        .wait(t)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                t.idle -= 1;
                if !self.alive.load(Ordering::Acquire) {
                    return;
                }
                t.vacant = false;
            }
            if !self.lead() {
                return;
            }
            if !staying && lock(&self.turn).idle > 0 {
                return;
            }
        }
    }

    /// Reads the connection and runs the calls read. A call expected to be quick runs here,
    /// keeping the turn (the watch passes it on if the call runs long); any other call is
    /// run here after passing the turn on. Returns once the turn went on (`true`), or the
    /// connection ended (`false`).
    fn lead(self: &Arc<Self>) -> bool {
        loop {
            let mut guard = lock(&self.reader);
            if !self.alive.load(Ordering::Acquire) {
                return false;
            }
            let (reader, buf) = &mut *guard;
            let frame = match reader.recv_bytes_into(buf).map_err(Error::from) {
                Ok(()) => wire::decode(buf),
                Err(e) => Err(e),
            };
            let job = match frame {
                Ok(frame) => self.job(frame),
                Err(e) => {
                    if !matches!(e, Error::Core(ipckit_core::Error::Disconnected)) {
                        tracing::debug!("rpc connection ends: {e}");
                    }
                    self.end();
                    return false;
                }
            };
            let Some((job, quick)) = job else { continue };
            let Some(job) = self.slots.take_or_queue(job) else {
                continue;
            };
            drop(guard);
            if !quick {
                self.pass(&mut lock(&self.turn));
                self.slots.run(job);
                return true;
            }
            let call = {
                let mut t = lock(&self.turn);
                t.calls += 1;
                t.inline = Some((t.calls, Instant::now()));
                t.calls
            };
            self.watch.kick();
            self.slots.run(job);
            let mut t = lock(&self.turn);
            if t.inline.is_none_or(|(c, _)| c != call) {
                // The watch passed the turn on while the call ran.
                return true;
            }
            t.inline = None;
        }
    }

    /// Gives the turn to read to a waiting thread, or to a new one.
    fn pass(self: &Arc<Self>, t: &mut Turn) {
        t.vacant = true;
        if t.idle > 0 {
            self.turn_free.notify_one();
            return;
        }
        let me = self.clone();
        let spawned = thread::Builder::new()
            .name("ipckit-rpc-conn".into())
            .spawn(move || me.serve(false));
        if let Err(e) = spawned {
            tracing::warn!("no thread to read while a call runs: {e}");
        }
    }

    /// Passes the turn on if the call run by the thread that read it has run for longer
    /// than [`TAKEOVER`]; says whether such a call is still running.
    fn take_over_if_slow(self: &Arc<Self>) -> bool {
        let mut t = lock(&self.turn);
        match t.inline {
            Some((_, started)) if started.elapsed() >= TAKEOVER => {
                t.inline = None;
                self.pass(&mut t);
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// What to run for a frame the client sent, and whether it is expected to be quick
    /// (`None`: nothing, it was handled).
    fn job(self: &Arc<Self>, frame: Frame) -> Option<(Job, bool)> {
        let deadline = |timeout_us: u64| {
            (timeout_us > 0).then(|| Instant::now() + Duration::from_micros(timeout_us))
        };
        match frame {
            Frame::Call {
                id,
                method,
                timeout_us,
                params,
            } => {
                let quick = self.registry.is_quick(&method);
                let (me, deadline) = (self.clone(), deadline(timeout_us));
                let job: Job = Box::new(move || {
                    // A client that went away cancels the calls not started yet.
                    if !me.alive.load(Ordering::Acquire) {
                        return;
                    }
                    let result = if deadline.is_some_and(|d| Instant::now() >= d) {
                        Err(Error::Timeout)
                    } else {
                        me.registry.call_bytes(&method, &params)
                    };
                    me.reply(id, result.into());
                });
                Some((job, quick))
            }
            Frame::Stream {
                id,
                method,
                timeout_us,
                params,
            } => {
                let flow = Flow::new();
                lock(&self.flows).insert(id, flow.clone());
                let (me, deadline) = (self.clone(), deadline(timeout_us));
                let job: Job = Box::new(move || me.stream(id, &method, &params, deadline, &flow));
                Some((job, false))
            }
            Frame::Notify { method, params } => {
                let quick = self.registry.is_quick(&method);
                let me = self.clone();
                let job: Job = Box::new(move || {
                    if let Err(e) = me.registry.call_bytes(&method, &params) {
                        tracing::debug!("notification `{method}` failed: {e}");
                    }
                });
                Some((job, quick))
            }
            Frame::Ack { id, n } => {
                if let Some(flow) = lock(&self.flows).get(&id) {
                    flow.grant(n);
                }
                None
            }
            Frame::Cancel { id } => {
                if let Some(flow) = lock(&self.flows).get(&id) {
                    flow.cancel();
                }
                None
            }
            Frame::Reply { .. } | Frame::Item { .. } => {
                tracing::debug!("rpc connection ends: a client sent an answer");
                self.end();
                None
            }
        }
    }

    /// Runs a stream: each item is sent when the client has room for it, until the
    /// function's iterator ends, fails, or the client cancels.
    fn stream(&self, id: u64, method: &str, params: &[u8], deadline: Option<Instant>, flow: &Flow) {
        let result = if !self.alive.load(Ordering::Acquire) || flow.cancelled() {
            Ok(())
        } else if deadline.is_some_and(|d| Instant::now() >= d) {
            Err(Error::Timeout)
        } else {
            let mut sink =
                |item: Vec<u8>| flow.take() && self.send(&Frame::Item { id, item }).is_ok();
            self.registry.call_stream(method, params, &mut sink)
        };
        lock(&self.flows).remove(&id);
        if !flow.cancelled() {
            self.reply(id, result.map(|()| Vec::new()).into());
        }
    }

    /// The connection ended: no call starts any more, running streams stop, and the
    /// threads waiting for the turn to read end.
    fn end(&self) {
        self.alive.store(false, Ordering::Release);
        for flow in lock(&self.flows).values() {
            flow.cancel();
        }
        let _turn = lock(&self.turn);
        self.turn_free.notify_all();
    }

    fn send(&self, frame: &Frame) -> Result<()> {
        let bytes = wire::encode(frame)?;
        lock(&self.writer).send_bytes(&bytes).map_err(Error::from)
    }

    fn reply(&self, id: u64, outcome: Outcome) {
        let sent = match self.send(&Frame::Reply { id, outcome }) {
            Err(Error::Decode(e)) => self.send(&Frame::Reply {
                id,
                outcome: Outcome::Internal(e),
            }),
            other => other,
        };
        // A client that went away drops its results.
        if let Err(e) = sent {
            tracing::debug!("rpc answer not sent: {e}");
        }
    }
}

/// How a [`Server`] runs: how many calls at once.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    workers: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions { workers: 16 }
    }
}

impl ServeOptions {
    /// The default options: 16 calls at once.
    pub fn new() -> Self {
        ServeOptions::default()
    }

    /// How many calls (and streams) run at once, shared by every connection; more wait in
    /// a queue, in order. At least 1.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }
}

/// A registry served on a listener (any ipckit-sockets address: Unix, abstract, TCP; with
/// its authkey if it has one): one thread accepts, and the threads of each connection take
/// turns reading it (leader/follower). The thread that reads a call runs it itself, so its
/// reply leaves from the thread that read it: a function whose last call was quick (under
/// 50 µs) runs at once, the thread keeping the turn to read, and one that runs longer than
/// 1 ms meanwhile has the turn passed to another thread by the server's watch thread; any
/// other function runs after the thread has passed the turn on. So calls on one connection
/// run concurrently, and one that waits for a later call of the same connection gets it.
/// At most [`ServeOptions::workers`] calls run at once across the connections; more wait in
/// order, and a connection has about one thread per call it is running.
///
/// Create one with [`Server::start`]. It stops accepting when dropped (connections already
/// open are served until their clients leave). A client that goes away cancels the calls it
/// has waiting and its streams; the answers of calls already running are dropped. A handler
/// that panics answers [`Error::Panicked`] and the server serves on. A stream holds its slot
/// until it ends or its client cancels it.
pub struct Server {
    address: Address,
    watch: Arc<Watch>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("address", &self.address)
            .finish()
    }
}

impl Server {
    /// Serves `registry` on `listener` with the default [`ServeOptions`].
    ///
    /// # Errors
    ///
    /// [`Error::Core`] if a thread cannot be started.
    pub fn start(listener: Listener, registry: &Registry) -> Result<Server> {
        Server::start_with(listener, registry, &ServeOptions::default())
    }

    /// Serves `registry` on `listener` with `opts`.
    ///
    /// # Errors
    ///
    /// [`Error::Core`] if a thread cannot be started.
    pub fn start_with(
        listener: Listener,
        registry: &Registry,
        opts: &ServeOptions,
    ) -> Result<Server> {
        let slots = Slots::new(opts.workers);
        let watch = Watch::start()?;
        let accept_watch = watch.clone();
        let registry = Arc::new(registry.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let address = listener.address().clone();
        let stop2 = stop.clone();
        let thread = thread::Builder::new()
            .name("ipckit-rpc-accept".into())
            .spawn(move || {
                while !stop2.load(Ordering::Acquire) {
                    match listener.accept_timeout(Duration::from_millis(100)) {
                        Ok(conn) => {
                            let conn = match Conn::new(
                                conn,
                                registry.clone(),
                                slots.clone(),
                                accept_watch.clone(),
                            ) {
                                Ok(conn) => conn,
                                Err(e) => {
                                    tracing::warn!("cannot serve a connection: {e}");
                                    continue;
                                }
                            };
                            let spawned = thread::Builder::new()
                                .name("ipckit-rpc-conn".into())
                                .spawn(move || conn.serve(true));
                            if let Err(e) = spawned {
                                tracing::warn!("cannot serve a connection: {e}");
                            }
                        }
                        Err(ipckit_core::Error::Timeout) => {}
                        Err(e) => tracing::debug!("accept failed: {e}"),
                    }
                }
            })
            .map_err(Error::io)?;
        Ok(Server {
            address,
            watch,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on (with the port a `tcp://…:0` listener was given).
    pub fn address(&self) -> &Address {
        &self.address
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // After the last accept: the watch ends with the last connection.
        self.watch.stop();
    }
}
