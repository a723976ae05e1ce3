//! Serving a registry over ipckit transports: the threads of a connection take turns
//! reading it (leader/follower), the one that read a call runs it, and a bound shared by a
//! server's connections caps how many calls run at once.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
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

/// One connection being served.
struct Conn {
    registry: Arc<Registry>,
    slots: Arc<Slots>,
    /// Whoever holds it reads the connection (the leader); the others wait for it.
    reader: Mutex<(Reader, Vec<u8>)>,
    writer: Mutex<Writer>,
    alive: AtomicBool,
    /// Threads waiting for the turn to read.
    idle: AtomicUsize,
    /// The streams running, by call id.
    flows: Mutex<HashMap<u64, Arc<Flow>>>,
}

/// Serves one connection (a socket, or a duplex pipe to a child process) until the peer
/// goes away, running up to 16 calls at once.
///
/// The calling thread is one of the threads that serve it: it reads calls and runs them,
/// and starts more threads while calls run, one per running call.
///
/// # Errors
///
/// [`Error::Core`] if the connection cannot be split. The peer going away is the normal
/// end: `Ok(())`.
pub fn serve_connection(conn: Connection, registry: &Registry) -> Result<()> {
    let slots = Slots::new(ServeOptions::default().workers);
    let conn = Conn::new(conn, Arc::new(registry.clone()), slots)?;
    conn.serve(true);
    Ok(())
}

impl Conn {
    fn new(conn: Connection, registry: Arc<Registry>, slots: Arc<Slots>) -> Result<Arc<Conn>> {
        let (reader, writer) = conn.split()?;
        Ok(Arc::new(Conn {
            registry,
            slots,
            reader: Mutex::new((reader, Vec::new())),
            writer: Mutex::new(writer),
            alive: AtomicBool::new(true),
            idle: AtomicUsize::new(0),
            flows: Mutex::new(HashMap::new()),
        }))
    }

    /// Takes turns reading the connection and running the calls read, until it ends. A
    /// thread that is not `staying` ends when it finds another one waiting to read.
    fn serve(self: &Arc<Self>, staying: bool) {
        loop {
            self.idle.fetch_add(1, Ordering::AcqRel);
            let mut guard = lock(&self.reader);
            self.idle.fetch_sub(1, Ordering::AcqRel);
            // The reader that saw the end set it false (Release) before letting us in.
            if !self.alive.load(Ordering::Acquire) {
                return;
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
                    return;
                }
            };
            let Some(job) = job else { continue };
            if let Some(job) = self.slots.take_or_queue(job) {
                // Someone must read while this thread runs the call.
                if self.idle.load(Ordering::Acquire) == 0 {
                    let me = self.clone();
                    let spawned = thread::Builder::new()
                        .name("ipckit-rpc-conn".into())
                        .spawn(move || me.serve(false));
                    if let Err(e) = spawned {
                        tracing::warn!("no thread to read while a call runs: {e}");
                    }
                }
                drop(guard);
                self.slots.run(job);
                if !staying && self.idle.load(Ordering::Acquire) > 0 {
                    return;
                }
            }
        }
    }

    /// What to run for a frame the client sent (`None`: nothing, it was handled).
    fn job(self: &Arc<Self>, frame: Frame) -> Option<Job> {
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
                let (me, deadline) = (self.clone(), deadline(timeout_us));
                Some(Box::new(move || {
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
                }))
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
                Some(Box::new(move || {
                    me.stream(id, &method, &params, deadline, &flow)
                }))
            }
            Frame::Notify { method, params } => {
                let me = self.clone();
                Some(Box::new(move || {
                    if let Err(e) = me.registry.call_bytes(&method, &params) {
                        tracing::debug!("notification `{method}` failed: {e}");
                    }
                }))
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

    /// The connection ended: no call starts any more, and running streams stop.
    fn end(&self) {
        self.alive.store(false, Ordering::Release);
        for flow in lock(&self.flows).values() {
            flow.cancel();
        }
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
/// turns reading it; the thread that reads a call runs it itself, after handing the reading
/// to another (leader/follower), so that a call's reply leaves from the thread that read it.
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
                            let conn = match Conn::new(conn, registry.clone(), slots.clone()) {
                                Ok(conn) => conn,
                                Err(e) => {
                                    tracing::warn!("cannot serve a connection: {e}");
                                    continue;
                                }
                            };
                            let spawned = thread::Builder::new()
                                .name("ipckit-rpc-conn".into())
                                .spawn(move || conn.serve(false));
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
    }
}
