//! A server for many clients at once over a [`Listener`]: a chat room, a pub/sub hub.
//!
//! One thread accepts; every client has a reader thread, a writer thread and a bounded
//! outbox. [`Server::broadcast`] only puts a message in each outbox, so a slow or dead
//! client never holds up the others: when its outbox overflows it is disconnected with
//! [`LeaveReason::OutboxOverflow`]. A client that breaks the framing (garbage, a header
//! announcing more than the maximum message) is dropped with the reason logged
//! (`tracing`, level warn) and the others are served on.
//!
//! What clients say arrives as [`Event`]s on [`Events`], in order per client: its
//! [`Joined`](Event::Joined), its [`Message`](Event::Message)s, then its
//! [`Left`](Event::Left), always last. When the application takes events slower than
//! clients send, the readers stop reading (at [`ServerOptions::events`] messages waiting)
//! and the kernel pushes back on the clients.
//!
//! Every thread has a way out: accepting polls the shutdown flag, blocked reads and writes
//! are woken by `shutdown(2)` of their socket, and a client that does not close its end in
//! time is closed for it ([`ServerOptions::linger`]).
//!
//! A client costs three descriptors (its socket, and a duplicate each for its writer and
//! for shutting it down) and two threads. With a listener that asks for an
//! [`authkey`](Listener::authkey), the handshake runs on the accept thread: a client that
//! connects and says nothing holds up other joins, and shutdown, for up to 10 s.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc::{self, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use ipckit_core::{
    DEFAULT_MAX_MESSAGE, Deadline, Error, RecvBytes, RecvTimeoutError, Result, SendBytes,
    TryRecvError, Writer,
};
use nix::sys::socket::{Shutdown, shutdown};

use crate::{Address, Listener, PeerCredentials, Stream};

/// How often the accept thread looks at the shutdown flag and tidies up.
const TICK: Duration = Duration::from_millis(50);

/// How a [`Server`] treats its clients.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Messages waiting for one client before it counts as too slow and is disconnected
    /// (default 1024).
    pub outbox: usize,
    /// Messages from clients waiting in [`Events`] before the readers stop reading until
    /// the application takes some (default 1024). Joins and leaves are never held back.
    pub events: usize,
    /// The largest message received or sent (default 64 MiB); a client announcing more is
    /// dropped.
    pub max_message: usize,
    /// How long a leaving client has to take what is still queued for it and close its
    /// end, before its connection is closed for it (default 2 s). [`Server::shutdown`]
    /// takes at most about this long.
    pub linger: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            outbox: 1024,
            events: 1024,
            max_message: DEFAULT_MAX_MESSAGE,
            linger: Duration::from_secs(2),
        }
    }
}

/// A client of a [`Server`], numbered from 1 in the order they connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(u64);

impl ClientId {
    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Who connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Where from, as text: `tcp://ip:port`, or the listener's address for a Unix socket.
    pub address: String,
    /// The process at the other end of a Unix socket, as the kernel vouches for it; `None`
    /// over TCP.
    pub credentials: Option<PeerCredentials>,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.credentials {
            Some(c) => write!(f, "pid {}, uid {}", c.pid, c.uid),
            None => f.write_str(&self.address),
        }
    }
}

/// Why a client left.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaveReason {
    /// It closed its connection (or its process died).
    Closed,
    /// [`Server::disconnect`] sent it away, for this reason.
    Disconnected(String),
    /// It did not read fast enough: its outbox filled up.
    OutboxOverflow,
    /// It broke the framing: garbage, or a message above the maximum. The error.
    Protocol(String),
    /// Its connection failed. The error.
    Failed(String),
    /// The server shut down.
    Shutdown,
}

impl fmt::Display for LeaveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaveReason::Closed => f.write_str("closed the connection"),
            LeaveReason::Disconnected(why) => write!(f, "disconnected: {why}"),
            LeaveReason::OutboxOverflow => f.write_str("outbox overflow"),
            LeaveReason::Protocol(e) => write!(f, "protocol error: {e}"),
            LeaveReason::Failed(e) => write!(f, "connection failed: {e}"),
            LeaveReason::Shutdown => f.write_str("server shutdown"),
        }
    }
}

/// What happens on a [`Server`]; see [`Events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A client connected (and passed the authkey handshake, if the listener asks for one).
    Joined(ClientId, Peer),
    /// A client sent a message.
    Message(ClientId, Vec<u8>),
    /// A client is gone: nothing more comes from it and nothing more can be sent to it.
    Left(ClientId, LeaveReason),
}

/// Serves many clients of one [`Listener`] at once. See the [module](self) documentation.
///
/// ```
/// use std::time::Duration;
/// use ipckit_sockets::{Address, Event, Listener, RecvBytes, SendBytes, Server, Stream};
///
/// let addr: Address = format!("unix-abstract://{}", ipckit_core::unique_name("doc")).parse()?;
/// let (server, events) = Server::start(Listener::bind(&addr)?)?;
/// let mut alice = Stream::connect(&addr)?;
/// let Event::Joined(id, _) = events.recv_timeout(Duration::from_secs(10))? else { panic!() };
/// alice.send_bytes(b"hello")?;
/// assert_eq!(events.recv_timeout(Duration::from_secs(10))?, Event::Message(id, b"hello".to_vec()));
/// server.broadcast(b"welcome, everyone")?;
/// assert_eq!(alice.recv_bytes_timeout(Duration::from_secs(10))?, b"welcome, everyone");
/// drop(alice);
/// assert!(matches!(events.recv_timeout(Duration::from_secs(10))?, Event::Left(i, _) if i == id));
/// server.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Server {
    shared: Arc<Shared>,
    /// The accept thread; `None` once shut down.
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

/// The events of a [`Server`], in order per client. Dropping it discards clients' messages
/// from then on (the server serves on).
pub struct Events {
    shared: Arc<Shared>,
}

struct Shared {
    opts: ServerOptions,
    addr: Address,
    stopping: AtomicBool,
    next_id: AtomicU64,
    state: Mutex<State>,
    events: EventQueue,
}

#[derive(Default)]
struct State {
    clients: HashMap<ClientId, Entry>,
    /// Clients on their way out, closed for them when their time is up.
    closing: Vec<Closing>,
    /// Every client thread not yet joined.
    threads: Vec<JoinHandle<()>>,
}

struct Entry {
    client: Arc<Client>,
    outbox: SyncSender<Arc<[u8]>>,
}

struct Closing {
    client: Arc<Client>,
    deadline: Instant,
    forced: bool,
}

struct Client {
    id: ClientId,
    peer: Peer,
    /// A descriptor of the socket, kept to `shutdown(2)` it whatever its threads do.
    ctl: OwnedFd,
    reason: Mutex<Option<LeaveReason>>,
    /// The server sent it away: what it sends from now on is dropped.
    discard: AtomicBool,
    /// Its threads still running.
    threads: AtomicUsize,
}

/// How a client is sent away.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Leave {
    /// What is queued for it goes out first, then end-of-stream; it gets `linger` to close.
    Gracefully { discard: bool },
    /// Its connection is shut down at once.
    Now,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state stays consistent across a panic in a holder: every update is one step.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Client {
    fn shut(&self, how: Shutdown) {
        // Fails only if the socket is already disconnected, which is the goal.
        let _ = shutdown(self.ctl.as_raw_fd(), how);
    }

    /// Records why it left; the first reason stays. Whether this was the first.
    fn set_reason(&self, reason: LeaveReason) -> bool {
        let mut r = lock(&self.reason);
        if r.is_some() {
            return false;
        }
        *r = Some(reason);
        true
    }

    fn reason(&self) -> LeaveReason {
        lock(&self.reason).clone().unwrap_or(LeaveReason::Closed)
    }
}

/// Counts a client thread as ended, however it ends.
struct Running(Arc<Client>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.threads.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Server {
    /// Serves the clients of `listener` with the default [`ServerOptions`].
    ///
    /// # Errors
    /// [`Error::Io`] if the accept thread cannot be started.
    pub fn start(listener: Listener) -> Result<(Server, Events)> {
        Self::start_with(listener, ServerOptions::default())
    }

    /// Serves the clients of `listener` as `opts` say.
    ///
    /// # Errors
    /// [`Error::Io`] if the accept thread cannot be started.
    pub fn start_with(listener: Listener, opts: ServerOptions) -> Result<(Server, Events)> {
        let opts = ServerOptions {
            outbox: opts.outbox.max(1),
            events: opts.events.max(1),
            ..opts
        };
        let shared = Arc::new(Shared {
            events: EventQueue::new(opts.events),
            addr: listener.address().clone(),
            opts,
            stopping: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            state: Mutex::new(State::default()),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("ipckit-accept".into())
                .spawn(move || shared.accept_loop(listener))?
        };
        tracing::debug!(addr = %shared.addr, "server started");
        Ok((
            Server {
                shared: Arc::clone(&shared),
                acceptor: Mutex::new(Some(acceptor)),
            },
            Events { shared },
        ))
    }

    /// The address served (with the real port for `tcp://…:0`).
    pub fn address(&self) -> &Address {
        &self.shared.addr
    }

    /// The clients connected now, in the order they came.
    pub fn clients(&self) -> Vec<ClientId> {
        let mut ids: Vec<ClientId> = lock(&self.shared.state).clients.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Who client `id` is, while it is connected.
    pub fn peer(&self, id: ClientId) -> Option<Peer> {
        lock(&self.shared.state)
            .clients
            .get(&id)
            .map(|e| e.client.peer.clone())
    }

    /// Queues `msg` for client `id`. If its outbox is full, the client is disconnected
    /// ([`LeaveReason::OutboxOverflow`]) instead.
    ///
    /// # Errors
    /// [`Error::Disconnected`] if `id` is not connected (or was just disconnected for
    /// overflowing), [`Error::TooLarge`] above [`ServerOptions::max_message`].
    pub fn send_to(&self, id: ClientId, msg: &[u8]) -> Result<()> {
        let msg = self.shared.message(msg)?;
        let mut st = lock(&self.shared.state);
        let entry = st.clients.get(&id).ok_or(Error::Disconnected)?;
        match entry.outbox.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                let client = Arc::clone(&entry.client);
                self.shared
                    .leave_locked(&mut st, &client, LeaveReason::OutboxOverflow, Leave::Now);
                Err(Error::Disconnected)
            }
            Err(TrySendError::Disconnected(_)) => Err(Error::Disconnected),
        }
    }

    /// Queues `msg` for every client; gives how many. Never waits: a client whose outbox is
    /// full is disconnected ([`LeaveReason::OutboxOverflow`]).
    ///
    /// # Errors
    /// [`Error::TooLarge`] above [`ServerOptions::max_message`].
    pub fn broadcast(&self, msg: &[u8]) -> Result<usize> {
        self.shared.broadcast(msg, None)
    }

    /// As [`broadcast`](Server::broadcast), to every client but `except` (the sender of
    /// what is relayed, usually).
    ///
    /// # Errors
    /// As [`broadcast`](Server::broadcast).
    pub fn broadcast_except(&self, except: ClientId, msg: &[u8]) -> Result<usize> {
        self.shared.broadcast(msg, Some(except))
    }

    /// Sends client `id` away: what is already queued for it still goes out, then its
    /// connection closes; what it sends from now on is dropped. Its
    /// [`Left`](Event::Left) says [`LeaveReason::Disconnected`] with `reason`. Whether it was
    /// connected.
    pub fn disconnect(&self, id: ClientId, reason: &str) -> bool {
        let mut st = lock(&self.shared.state);
        let Some(client) = st.clients.get(&id).map(|e| Arc::clone(&e.client)) else {
            return false;
        };
        self.shared.leave_locked(
            &mut st,
            &client,
            LeaveReason::Disconnected(reason.to_string()),
            Leave::Gracefully { discard: true },
        );
        true
    }

    /// Stops accepting (a Unix socket file is removed), sends every client what is queued
    /// for it and closes it ([`LeaveReason::Shutdown`]), and joins every thread; takes at
    /// most about [`ServerOptions::linger`]. [`Events`] ends after the last
    /// [`Left`](Event::Left). Calling it again does nothing; dropping the server calls it.
    pub fn shutdown(&self) {
        let mut acceptor = lock(&self.acceptor);
        let Some(handle) = acceptor.take() else {
            return;
        };
        let shared = &self.shared;
        shared.stopping.store(true, Ordering::Release);
        if handle.join().is_err() {
            tracing::warn!(addr = %shared.addr, "the accept thread panicked");
        }
        {
            let mut st = lock(&shared.state);
            let clients: Vec<Arc<Client>> =
                st.clients.values().map(|e| Arc::clone(&e.client)).collect();
            for client in clients {
                shared.leave_locked(
                    &mut st,
                    &client,
                    LeaveReason::Shutdown,
                    Leave::Gracefully { discard: true },
                );
            }
        }
        // No blocking call is left without a way out: the linger forces every socket shut.
        loop {
            shared.tidy();
            let st = lock(&shared.state);
            if st.threads.is_empty() && st.closing.is_empty() {
                break;
            }
            drop(st);
            std::thread::sleep(Duration::from_millis(2));
        }
        shared.events.close();
        tracing::debug!(addr = %shared.addr, "server shut down");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.shared.addr)
            .field("clients", &self.clients().len())
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn message(&self, msg: &[u8]) -> Result<Arc<[u8]>> {
        if msg.len() > self.opts.max_message {
            return Err(Error::TooLarge {
                len: msg.len() as u64,
                max: self.opts.max_message,
            });
        }
        Ok(Arc::from(msg))
    }

    fn broadcast(&self, msg: &[u8], except: Option<ClientId>) -> Result<usize> {
        let msg = self.message(msg)?;
        let mut st = lock(&self.state);
        let mut queued = 0;
        let mut overflowed = Vec::new();
        for (id, entry) in &st.clients {
            if Some(*id) == except {
                continue;
            }
            match entry.outbox.try_send(Arc::clone(&msg)) {
                Ok(()) => queued += 1,
                Err(TrySendError::Full(_)) => overflowed.push(Arc::clone(&entry.client)),
                // Its writer failed and is taking it out.
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
        for client in overflowed {
            self.leave_locked(&mut st, &client, LeaveReason::OutboxOverflow, Leave::Now);
        }
        Ok(queued)
    }

    fn leave(&self, client: &Arc<Client>, reason: LeaveReason, how: Leave) {
        let mut st = lock(&self.state);
        self.leave_locked(&mut st, client, reason, how);
    }

    /// A client whose threads could not all start: takes it out at once, tells the
    /// application it left, and gives the error back.
    fn failed_to_start(
        &self,
        st: &mut State,
        client: &Arc<Client>,
        id: ClientId,
        e: std::io::Error,
    ) -> Error {
        self.leave_locked(st, client, LeaveReason::Failed(e.to_string()), Leave::Now);
        self.events.push(Event::Left(id, client.reason()));
        e.into()
    }

    /// Takes `client` out of the server (if still in) and closes it as `how` says.
    fn leave_locked(&self, st: &mut State, client: &Arc<Client>, reason: LeaveReason, how: Leave) {
        // Dropping the entry drops the outbox's sender: the writer sends what is queued, then
        // ends.
        let was_in = st.clients.remove(&client.id).is_some();
        let first = client.set_reason(reason.clone());
        match how {
            Leave::Now => {
                client.discard.store(true, Ordering::Release);
                client.shut(Shutdown::Both);
            }
            Leave::Gracefully { discard } => {
                if discard {
                    client.discard.store(true, Ordering::Release);
                }
                if was_in {
                    st.closing.push(Closing {
                        client: Arc::clone(client),
                        deadline: Instant::now() + self.opts.linger,
                        forced: false,
                    });
                }
            }
        }
        if first {
            match reason {
                LeaveReason::OutboxOverflow | LeaveReason::Protocol(_) => {
                    tracing::warn!(client = %client.id, peer = %client.peer, %reason, "client dropped");
                }
                _ => {
                    tracing::debug!(client = %client.id, peer = %client.peer, %reason, "client leaving")
                }
            }
        }
        // Its reader may be waiting for room in the events; it waits no more.
        self.events.wake_waiters();
    }

    /// Closes lingering clients whose time is up and joins the threads that ended.
    fn tidy(&self) {
        let now = Instant::now();
        let ended: Vec<JoinHandle<()>> = {
            let mut st = lock(&self.state);
            st.closing.retain_mut(|c| {
                if c.client.threads.load(Ordering::Acquire) == 0 {
                    return false;
                }
                if !c.forced && now >= c.deadline {
                    tracing::debug!(client = %c.client.id, "linger over: closing the connection");
                    c.client.shut(Shutdown::Both);
                    c.forced = true;
                }
                true
            });
            let (ended, running) = std::mem::take(&mut st.threads)
                .into_iter()
                .partition(JoinHandle::is_finished);
            st.threads = running;
            ended
        };
        for handle in ended {
            if handle.join().is_err() {
                tracing::warn!(addr = %self.addr, "a client thread panicked");
            }
        }
    }

    fn accept_loop(self: Arc<Self>, listener: Listener) {
        while !self.stopping.load(Ordering::Acquire) {
            self.tidy();
            match listener.accept_timeout(TICK) {
                Ok(stream) => {
                    if let Err(e) = self.admit(stream) {
                        tracing::warn!(addr = %self.addr, error = %e, "could not serve a client");
                    }
                }
                Err(Error::Timeout) => {}
                // Refused by the handshake: logged by the listener.
                Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
                Err(Error::Io(e)) => {
                    // Out of descriptors, say: the client stays queued; do not spin on it.
                    tracing::warn!(addr = %self.addr, error = %e, "accept failed");
                    std::thread::sleep(TICK);
                }
                Err(e) => {
                    tracing::debug!(addr = %self.addr, error = %e, "a client went before it was served")
                }
            }
        }
        // Dropping the listener removes its socket file.
        drop(listener);
    }

    fn admit(self: &Arc<Self>, stream: Stream) -> Result<()> {
        let stream = stream.max_message(self.opts.max_message);
        let ctl = stream.as_fd().try_clone_to_owned()?;
        let writer = Writer::from_fd(ctl.try_clone()?)?.max_message(self.opts.max_message);
        let peer = Peer {
            address: stream.peer().to_string(),
            credentials: match self.addr {
                Address::Unix(_) | Address::UnixAbstract(_) => stream.peer_credentials().ok(),
                _ => None,
            },
        };
        let id = ClientId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let client = Arc::new(Client {
            id,
            peer: peer.clone(),
            ctl,
            reason: Mutex::new(None),
            discard: AtomicBool::new(false),
            threads: AtomicUsize::new(2),
        });
        let (outbox, queued) = mpsc::sync_channel::<Arc<[u8]>>(self.opts.outbox);
        // Under the lock, so that `Joined` comes before anything its threads report.
        let mut st = lock(&self.state);
        st.clients.insert(
            id,
            Entry {
                client: Arc::clone(&client),
                outbox,
            },
        );
        self.events.push(Event::Joined(id, peer.clone()));
        tracing::debug!(client = %id, %peer, "client joined");
        let writer = {
            let (shared, running) = (Arc::clone(self), Running(Arc::clone(&client)));
            std::thread::Builder::new()
                .name(format!("ipckit-client-{}-w", id.0))
                .spawn(move || shared.write_loop(running, writer, queued))
        };
        let writer = match writer {
            Ok(h) => h,
            Err(e) => {
                // Neither thread runs (the writer's `Running` went with its closure, the
                // reader's was never made): say it left here.
                client.threads.store(0, Ordering::Release);
                return Err(self.failed_to_start(&mut st, &client, id, e));
            }
        };
        st.threads.push(writer);
        let reader = {
            let (shared, running) = (Arc::clone(self), Running(Arc::clone(&client)));
            std::thread::Builder::new()
                .name(format!("ipckit-client-{}-r", id.0))
                .spawn(move || shared.read_loop(running, stream))
        };
        match reader {
            Ok(h) => st.threads.push(h),
            Err(e) => {
                // The reader's `Running` went with its closure: only the writer runs.
                return Err(self.failed_to_start(&mut st, &client, id, e));
            }
        }
        Ok(())
    }

    fn read_loop(&self, running: Running, mut stream: Stream) {
        let client = &running.0;
        loop {
            let mut buf = Vec::new();
            match stream.recv_bytes_into(&mut buf) {
                Ok(()) => {
                    if !client.discard.load(Ordering::Acquire) {
                        self.events.push_message(client, buf);
                    }
                }
                Err(Error::Disconnected) => {
                    self.leave(
                        client,
                        LeaveReason::Closed,
                        Leave::Gracefully { discard: false },
                    );
                    break;
                }
                Err(e @ (Error::TooLarge { .. } | Error::Malformed(_))) => {
                    self.leave(client, LeaveReason::Protocol(e.to_string()), Leave::Now);
                    break;
                }
                Err(e) => {
                    self.leave(client, LeaveReason::Failed(e.to_string()), Leave::Now);
                    break;
                }
            }
        }
        drop(stream);
        let reason = client.reason();
        tracing::debug!(client = %client.id, %reason, "client left");
        self.events.push(Event::Left(client.id, reason));
    }

    fn write_loop(&self, running: Running, mut writer: Writer, queued: mpsc::Receiver<Arc<[u8]>>) {
        let client = &running.0;
        // Ends when the client is taken out of the server and its outbox is empty.
        for msg in queued {
            if let Err(e) = writer.send_bytes(&msg) {
                let (reason, how) = match e {
                    // It closed; its reader takes in what it sent before.
                    Error::Disconnected => {
                        (LeaveReason::Closed, Leave::Gracefully { discard: false })
                    }
                    e => (LeaveReason::Failed(e.to_string()), Leave::Now),
                };
                self.leave(client, reason, how);
                return;
            }
        }
        // All sent: end-of-stream tells the client.
        client.shut(Shutdown::Write);
    }
}

impl Events {
    /// The next event, waiting as long as it takes; `None` once the server has shut down
    /// and every event was taken.
    pub fn recv(&self) -> Option<Event> {
        self.shared.events.pop(Deadline::Never).ok()
    }

    /// The next event, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`RecvTimeoutError::Timeout`] if none came, [`RecvTimeoutError::Disconnected`] once
    /// the server has shut down and every event was taken.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event, RecvTimeoutError> {
        Ok(self.shared.events.pop(Deadline::after(timeout))?)
    }

    /// The next event if there is one now.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] if there is none, [`TryRecvError::Disconnected`] once the
    /// server has shut down and every event was taken.
    pub fn try_recv(&self) -> Result<Event, TryRecvError> {
        Ok(self.shared.events.pop(Deadline::Now)?)
    }
}

/// Every event until the server has shut down.
impl Iterator for Events {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        self.recv()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.shared.events.abandon();
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("addr", &self.shared.addr)
            .finish_non_exhaustive()
    }
}

/// The events, with room for `capacity` messages; joins and leaves always fit.
struct EventQueue {
    inner: Mutex<Queue>,
    /// An event came, or the queue closed.
    ready: Condvar,
    /// Room was made, or a waiting client left.
    room: Condvar,
    capacity: usize,
}

#[derive(Default)]
struct Queue {
    events: VecDeque<Event>,
    messages: usize,
    /// The server shut down: nothing more comes.
    closed: bool,
    /// Nobody takes events any more.
    abandoned: bool,
}

impl EventQueue {
    fn new(capacity: usize) -> Self {
        EventQueue {
            inner: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            room: Condvar::new(),
            capacity,
        }
    }

    fn push(&self, event: Event) {
        let mut q = lock(&self.inner);
        if q.abandoned {
            return;
        }
        q.events.push_back(event);
        self.ready.notify_one();
    }

    /// Queues a client's message, waiting for room; drops it if the client was sent away
    /// or nobody listens.
    fn push_message(&self, client: &Client, msg: Vec<u8>) {
        let mut q = lock(&self.inner);
        loop {
            if q.abandoned || q.closed || client.discard.load(Ordering::Acquire) {
                return;
            }
            if q.messages < self.capacity {
                break;
            }
            q = self.room.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
        q.events.push_back(Event::Message(client.id, msg));
        q.messages += 1;
        self.ready.notify_one();
    }

    fn pop(&self, deadline: Deadline) -> Result<Event> {
        let mut q = lock(&self.inner);
        loop {
            if let Some(event) = q.events.pop_front() {
                if matches!(event, Event::Message(..)) {
                    q.messages -= 1;
                    self.room.notify_all();
                }
                return Ok(event);
            }
            if q.closed {
                return Err(Error::Disconnected);
            }
            q = match deadline.remaining() {
                None => self.ready.wait(q).unwrap_or_else(PoisonError::into_inner),
                Some(left) if left.is_zero() => return Err(Error::Timeout),
                Some(left) => {
                    self.ready
                        .wait_timeout(q, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    fn wake_waiters(&self) {
        let _q = lock(&self.inner);
        self.room.notify_all();
    }

    fn close(&self) {
        lock(&self.inner).closed = true;
        self.ready.notify_all();
        self.room.notify_all();
    }

    fn abandon(&self) {
        let mut q = lock(&self.inner);
        q.abandoned = true;
        q.events.clear();
        q.messages = 0;
        self.room.notify_all();
    }
}
