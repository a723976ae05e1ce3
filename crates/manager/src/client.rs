//! [`Manager`]: one connection per process to a manager server, shared by every proxy.
//! Calls are pipelined: each carries an id; whichever waiting thread reads the connection
//! hands answers to their callers and watch events to their watches.

use std::{
    collections::{HashMap, HashSet},
    os::fd::AsFd,
    sync::{
        Arc, Condvar, Mutex, PoisonError, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use ipckit_core::{Child, Command, Ctx, Deadline, RecvBytes, RoleResult, SendBytes};
use ipckit_sockets::{Address, ConnectOptions, Reader, Writer, connect_with};

use crate::{
    Error, Result,
    local::{Inbound, Outbound, Pair},
    protocol::{Answer, CLIENT_HELLO, CLIENT_HELLO_LOCAL, Hello, Op, Reply, Request, VERSION},
    server::{MAX_ANSWER, ServeOptions, Server},
    store::lock,
    watch::WatchState,
};

/// How long [`Manager::connect`] and [`Manager::start`] wait for the server.
const CONNECT: Duration = Duration::from_secs(10);
/// How long a dropped [`Manager`] waits for the server process it started to end.
const STOP: Duration = Duration::from_secs(5);
/// How many calls of one connection may await their answers before a call sent without
/// waiting ([`Conn::submit`]) reads answers first: fewer than the fast path's queues
/// hold, so the server never waits for room to answer a client that is not reading.
const IN_FLIGHT: usize = 32;

#[derive(Debug, Default)]
pub(crate) struct Routes {
    /// Calls whose answer is awaited.
    waiting: HashSet<u64>,
    /// Answers arrived, not yet taken by their caller.
    done: HashMap<u64, Result<Answer>>,
    watches: HashMap<u64, Arc<WatchState>>,
    /// Whether a thread is reading the connection for everyone.
    reading: bool,
    dead: bool,
}

/// The read half and its buffer, used by one thread at a time (the one reading).
#[derive(Debug)]
struct ReadSide {
    reader: Reader,
    buf: Vec<u8>,
}

/// What one read of the connection gave.
enum Read {
    Frame(Reply),
    Nothing,
    End,
}

/// How calls reach the server and answers come back.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per connection, never moved once made"
)]
enum Link {
    /// Both over the socket.
    Socket {
        writer: Mutex<Writer>,
        read: Mutex<ReadSide>,
    },
    /// The local fast path.
    Local(LocalLink),
}

/// The local fast path: calls and answers through shared-memory queues; the socket (read
/// by a thread of its own, for watch events and the server's end) stays open as the sign
/// that each side lives.
#[derive(Debug)]
struct LocalLink {
    tx: Mutex<Outbound>,
    rx: Mutex<Inbound>,
    queues: Pair,
    /// Never written: dropping it tells the server this client is gone.
    _socket: Writer,
}

#[derive(Debug)]
pub(crate) struct Conn {
    link: Link,
    routes: Mutex<Routes>,
    cv: Condvar,
    next_id: AtomicU64,
    max_value: usize,
    dead: AtomicBool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Link::Local(l) = &self.link {
            // Wakes the server's thread for this client at once.
            l.queues.close();
        }
    }
}

impl Conn {
    fn send(&self, req: &Request) -> Result<()> {
        let frame =
            postcard::to_stdvec(req).map_err(|e| ipckit_core::Error::Codec(e.to_string()))?;
        if frame.len() > self.max_value {
            return Err(Error::TooLarge {
                len: frame.len(),
                max: self.max_value,
            });
        }
        if self.dead.load(Ordering::Acquire) {
            return Err(Error::Disconnected);
        }
        match &self.link {
            Link::Socket { writer, .. } => lock(writer).send_bytes(&frame),
            Link::Local(l) => lock(&l.tx).put(&frame),
        }
        .map_err(|_| Error::Disconnected)
    }

    /// Whether calls go through the local fast path.
    pub(crate) fn is_local(&self) -> bool {
        matches!(self.link, Link::Local(_))
    }

    /// Marks the connection dead: every waiting call and watch ends with `Disconnected`.
    fn end(&self, r: &mut Routes) {
        self.dead.store(true, Ordering::Release);
        r.dead = true;
        r.waiting.clear();
        for (_, w) in r.watches.drain() {
            w.end();
        }
        if let Link::Local(l) = &self.link {
            l.queues.close();
        }
        self.cv.notify_all();
    }

    /// Makes a call and waits for its answer until `deadline`. A blocking call that times
    /// out is withdrawn (if the server served it meanwhile, that answer counts).
    pub(crate) fn call(&self, op: Op, deadline: Option<Instant>) -> Result<Answer> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.call_id(id, op, deadline)
    }

    pub(crate) fn fresh_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn call_id(&self, id: u64, op: Op, deadline: Option<Instant>) -> Result<Answer> {
        let blocks = matches!(&op, Op::On { call, .. } if call.blocks());
        self.send_call(id, op)?;
        match self.wait(deadline, true, |r| r.done.remove(&id)) {
            Ok(answer) => answer,
            Err(Error::Timeout) if blocks => {
                // Withdraw it; its answer is then Cancelled (a timeout), or what it got.
                self.send(&Request::Cancel { id })?;
                self.wait(None, true, |r| r.done.remove(&id))?
            }
            Err(e) => self.forget(id).unwrap_or(Err(e)),
        }
    }

    /// Sends a call whose answer its caller awaits.
    fn send_call(&self, id: u64, op: Op) -> Result<()> {
        {
            let mut r = lock(&self.routes);
            if r.dead {
                return Err(Error::Disconnected);
            }
            r.waiting.insert(id);
        }
        self.send(&Request::Call { id, op }).inspect_err(|_| {
            lock(&self.routes).waiting.remove(&id);
        })
    }

    /// Sends a call without waiting for its answer, which [`collect`](Conn::collect)
    /// takes later; first, while [`IN_FLIGHT`] calls await theirs, reads answers (until
    /// `deadline`). Calls of one connection are applied in the order they are sent.
    pub(crate) fn submit(&self, op: Op, deadline: Option<Instant>) -> Result<u64> {
        self.wait(deadline, true, |r| {
            (r.waiting.len() < IN_FLIGHT).then_some(())
        })?;
        let id = self.fresh_id();
        self.send_call(id, op)?;
        Ok(id)
    }

    /// The answer of call `id` made by [`submit`](Conn::submit), waiting for it until
    /// `deadline`; past it, the answer is forgotten (the call is not withdrawn).
    pub(crate) fn collect(&self, id: u64, deadline: Option<Instant>) -> Result<Answer> {
        match self.wait(deadline, true, |r| r.done.remove(&id)) {
            Ok(answer) => answer,
            Err(e) => self.forget(id).unwrap_or(Err(e)),
        }
    }

    /// No longer awaits the answer of call `id`; gives it if it came.
    pub(crate) fn forget(&self, id: u64) -> Option<Result<Answer>> {
        let mut r = lock(&self.routes);
        r.waiting.remove(&id);
        r.done.remove(&id)
    }

    /// Waits until `ready` gives a value (a watch's event), or `deadline`. On the socket
    /// it reads the connection for everyone if no other thread does; on the fast path
    /// events come through the socket's own thread, and answers are read by the callers
    /// waiting for them.
    pub(crate) fn wait_for<T>(
        &self,
        deadline: Option<Instant>,
        ready: impl FnMut(&mut Routes) -> Option<T>,
    ) -> Result<T> {
        self.wait(deadline, !self.is_local(), ready)
    }

    /// Waits until `ready` gives a value, or `deadline`. If `reads`, whichever waiting
    /// thread finds nobody reading the answers reads them for everyone (one frame at a
    /// time, handing answers to their callers and events to their watches), so a
    /// single-threaded caller reads its own answer with no thread in between.
    fn wait<T>(
        &self,
        deadline: Option<Instant>,
        reads: bool,
        mut ready: impl FnMut(&mut Routes) -> Option<T>,
    ) -> Result<T> {
        let mut tried = !reads;
        let mut r = lock(&self.routes);
        loop {
            if let Some(v) = ready(&mut r) {
                return Ok(v);
            }
            if r.dead {
                return Err(Error::Disconnected);
            }
            let expired = deadline.is_some_and(|d| Instant::now() >= d);
            if expired && tried {
                return Err(Error::Timeout);
            }
            if reads && !r.reading {
                r.reading = true;
                drop(r);
                let got = self.read_one(deadline);
                tried = true;
                r = lock(&self.routes);
                r.reading = false;
                match got {
                    Read::Frame(reply) => dispatch(&mut r, reply),
                    Read::Nothing => {}
                    Read::End => self.end(&mut r),
                }
                self.cv.notify_all();
                continue;
            }
            if expired {
                return Err(Error::Timeout);
            }
            r = match deadline {
                None => self.cv.wait(r).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    self.cv
                        .wait_timeout(r, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    fn read_one(&self, deadline: Option<Instant>) -> Read {
        let deadline = deadline.map_or(Deadline::Never, Deadline::At);
        let got = match &self.link {
            Link::Socket { read, .. } => {
                let mut side = lock(read);
                let ReadSide { reader, buf } = &mut *side;
                match reader.recv_bytes_into_deadline(buf, deadline) {
                    Ok(()) => Ok(postcard::from_bytes::<Reply>(buf)),
                    Err(e) => Err(e),
                }
            }
            Link::Local(l) => match lock(&l.rx).recv(deadline) {
                Ok(frame) => Ok(postcard::from_bytes::<Reply>(frame)),
                Err(e) => Err(e),
            },
        };
        match got {
            Ok(Ok(reply)) => Read::Frame(reply),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the manager sent a frame this client cannot read");
                Read::End
            }
            Err(ipckit_core::Error::Timeout) => Read::Nothing,
            Err(_) => Read::End,
        }
    }

    pub(crate) fn add_watch(&self, id: u64, state: Arc<WatchState>) -> Result<()> {
        let mut r = lock(&self.routes);
        if r.dead {
            return Err(Error::Disconnected);
        }
        r.watches.insert(id, state);
        Ok(())
    }

    pub(crate) fn remove_watch(&self, id: u64) {
        lock(&self.routes).watches.remove(&id);
    }

    fn shutdown_server(&self) -> Result<()> {
        self.send(&Request::Shutdown)
    }
}

/// Hands one frame from the server to whom it is for.
fn dispatch(r: &mut Routes, reply: Reply) {
    match reply {
        Reply::Done { id, result } => {
            // A call that gave up (a timeout) is no longer waiting: its answer is dropped.
            if r.waiting.remove(&id) {
                r.done.insert(id, result.map_err(Error::from));
            }
        }
        Reply::Changed { watch, seq, change } => {
            if let Some(w) = r.watches.get(&watch) {
                w.deliver(seq, change);
            }
        }
        Reply::Lagged { watch, missed } => {
            if let Some(w) = r.watches.get(&watch) {
                w.lag(missed);
            }
        }
    }
}

/// On the fast path, reads the socket for as long as the connection lives: watch events
/// (and any answer the server sends there) go to whom they are for; the socket's end is
/// the server's end, and ends every call.
fn read_socket(mut reader: Reader, conn: &Weak<Conn>) {
    let mut buf = Vec::new();
    loop {
        let got = reader.recv_bytes_into(&mut buf);
        let Some(c) = conn.upgrade() else {
            return;
        };
        let reply = match got {
            Ok(()) => postcard::from_bytes::<Reply>(&buf).map_err(|e| {
                tracing::warn!(error = %e, "the manager sent a frame this client cannot read");
            }),
            Err(_) => Err(()),
        };
        let mut r = lock(&c.routes);
        match reply {
            Ok(reply) => {
                dispatch(&mut r, reply);
                c.cv.notify_all();
            }
            Err(()) => {
                c.end(&mut r);
                return;
            }
        }
    }
}

/// A connection to a manager server: the objects it holds are reached through typed
/// proxies ([`dict`](Manager::dict), [`list`](Manager::list), [`value`](Manager::value),
/// [`lock`](Manager::lock), [`queue`](Manager::queue), …) made from it.
///
/// [`Manager::start`] starts a server process of its own and connects to it;
/// [`Manager::connect`] reaches a running server from any process (a child passed the
/// [`address`](Manager::address), or a process on another machine over TCP with an
/// authkey). A `Manager` is a cheap clone: every clone and every proxy shares one
/// connection, on which calls from many threads are pipelined.
///
/// On a Unix socket (what `start` uses), calls and answers pass through two
/// shared-memory queues of this connection's own instead of the socket — the local fast
/// path, same proxies, same answers, 1.6× the socket's calls per second for one caller
/// and 2× for calls sent without waiting (docs/design.md has the exceptions) — when the
/// server offers it ([`ServeOptions::fast_path`], on by default);
/// [`is_fast_path`](Manager::is_fast_path) says whether it does. The socket stays open
/// beside them as the sign of life, and carries watch events. Over TCP everything goes
/// through the socket.
///
/// When the server dies, every call — blocked ones too — returns
/// [`Error::Disconnected`] (within a second, on either path). When the last clone of a
/// `Manager` made by `start` is dropped, the server process is shut down and its socket
/// file removed; a fast-path connection's queues are freed with it.
#[derive(Debug, Clone)]
pub struct Manager {
    pub(crate) conn: Arc<Conn>,
    addr: Address,
    _owned: Option<Arc<Owned>>,
}

/// A server this handle started, stopped with its last clone.
#[derive(Debug)]
struct Owned {
    child: Mutex<Child<()>>,
    conn: Arc<Conn>,
    /// The server's socket file, which a killed server leaves behind.
    path: std::path::PathBuf,
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.conn.shutdown_server();
        let mut child = lock(&self.child);
        if child.join_timeout(STOP).is_err() {
            let _ = child.kill();
            let _ = child.join_timeout(STOP);
        }
        // A server that ended cleanly removed it already; one that was killed could not.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What the server child is told: address, value maximum, watch backlog, authkey,
/// whether Python 3.11's MD5 handshake is allowed, and whether local clients are offered
/// the fast path.
type ChildArgs = (String, u64, u64, Option<Vec<u8>>, bool, bool);

fn serve_child(
    (addr, max_value, backlog, key, legacy_md5, fast_path): ChildArgs,
    _: &mut Ctx,
) -> RoleResult<()> {
    let addr: Address = addr.parse()?;
    let mut opts = ServeOptions::new()
        .max_value(usize::try_from(max_value)?)
        .watch_backlog(usize::try_from(backlog)?)
        .legacy_md5(legacy_md5)
        .fast_path(fast_path);
    if let Some(k) = key {
        opts = opts.authkey(&k);
    }
    Server::run_here(&addr, opts)?;
    Ok(())
}

impl Manager {
    /// Starts a manager server in a child process, on a fresh Unix socket file in the
    /// temporary directory, and connects to it (Python's `multiprocessing.Manager()`).
    ///
    /// The child is this executable run as a function ([`ipckit_core::spawn`]), so
    /// [`enter`](crate::enter) must run first in `main`. It dies with this process; when
    /// the last clone of the handle is dropped it is shut down and its socket file
    /// removed. Children reach it with [`Manager::connect`] at [`address`](Manager::address).
    ///
    /// # Errors
    /// [`Error::Core`] if the process cannot start ([`EnterMissing`](crate::CoreError::EnterMissing)
    /// without `enter`) or its server does not answer within 10 s.
    pub fn start() -> Result<Manager> {
        Self::start_with(ServeOptions::default())
    }

    /// As [`start`](Manager::start), with the server's options (the largest value, the
    /// watch backlog, an authkey that [`connect`](Manager::connect) must then give).
    ///
    /// # Errors
    /// As [`start`](Manager::start).
    pub fn start_with(opts: ServeOptions) -> Result<Manager> {
        let path = ipckit_core::temp_path("manager");
        let addr = Address::Unix(path.clone());
        let args: ChildArgs = (
            addr.to_string(),
            opts.max_value as u64,
            opts.watch_backlog as u64,
            opts.authkey.clone(),
            opts.legacy_md5,
            opts.fast_path,
        );
        let child = Command::function(&args, serve_child)?.quiet().spawn()?;
        let mut connect = ConnectOptions::new().timeout(CONNECT).retry(true);
        if let Some(k) = &opts.authkey {
            connect = connect.authkey(k);
        }
        let m = Self::connect_opts(&addr, &connect)?;
        let owned = Owned {
            child: Mutex::new(child),
            conn: Arc::clone(&m.conn),
            path,
        };
        Ok(Manager {
            _owned: Some(Arc::new(owned)),
            ..m
        })
    }

    /// Runs a manager server in a thread of this process, listening at `addr`
    /// (`unix:///path`, `unix-abstract://name`, `tcp://host:port` — TCP only with an
    /// authkey). Connect to it with [`Manager::connect`].
    ///
    /// # Errors
    /// [`Error::Core`]: [`InvalidOptions`](crate::CoreError::InvalidOptions) for TCP
    /// without an authkey, [`Os`](crate::CoreError::Os) if the address cannot be bound.
    pub fn serve(addr: &Address, opts: ServeOptions) -> Result<Server> {
        Server::start(addr, opts)
    }

    /// Runs a manager server on the calling thread until a client asks it to shut down
    /// ([`Manager::shutdown`]); what the `ipckit-manager serve` command does.
    ///
    /// # Errors
    /// As [`serve`](Manager::serve).
    pub fn serve_forever(addr: &Address, opts: ServeOptions) -> Result<()> {
        Server::run_here(addr, opts)
    }

    /// Connects to the manager server at `addr`, proving `authkey` if it asks for one.
    ///
    /// # Errors
    /// [`Error::Core`]: [`Auth`](crate::CoreError::Auth) for a wrong or missing key,
    /// [`Os`](crate::CoreError::Os) if nobody listens there, [`Timeout`](crate::CoreError::Timeout)
    /// after 10 s; [`Error::Protocol`] if the server speaks another protocol version.
    pub fn connect(addr: &Address, authkey: Option<&[u8]>) -> Result<Manager> {
        let mut opts = ConnectOptions::new().timeout(CONNECT);
        if let Some(k) = authkey {
            opts = opts.authkey(k);
        }
        Self::connect_opts(addr, &opts)
    }

    /// Connects with [`ConnectOptions`]: a timeout, the authkey, and `retry(true)` to
    /// wait for a server that is still starting.
    ///
    /// # Errors
    /// As [`connect`](Manager::connect).
    pub fn connect_with(addr: &Address, opts: &ConnectOptions) -> Result<Manager> {
        Self::connect_opts(addr, opts)
    }

    fn connect_opts(addr: &Address, opts: &ConnectOptions) -> Result<Manager> {
        // A Unix socket's server is on this machine: ask for the fast path.
        let local = matches!(addr, Address::Unix(_) | Address::UnixAbstract(_));
        match Self::connect_via(addr, opts, local) {
            // A server that knows no fast path (an older one) ends a connection whose
            // first frame it does not know: ask again for the socket alone.
            Err(Error::Disconnected) if local => {
                tracing::debug!(%addr, "the manager offers no fast path: on its socket");
                Self::connect_via(addr, opts, false)
            }
            other => other,
        }
    }

    fn connect_via(addr: &Address, opts: &ConnectOptions, local: bool) -> Result<Manager> {
        let mut c = connect_with(addr, opts)?.max_message(MAX_ANSWER);
        c.send_bytes(if local {
            CLIENT_HELLO_LOCAL
        } else {
            CLIENT_HELLO
        })?;
        // The server's answer to that comes first, as one byte carrying the queues'
        // descriptors, before any frame (so no frame read can swallow it).
        let queues = if local {
            Pair::receive(c.as_fd(), CONNECT).map_err(|e| match e {
                ipckit_core::Error::Disconnected => Error::Disconnected,
                ipckit_core::Error::Timeout => {
                    Error::Protocol(format!("no greeting from the manager: {e}"))
                }
                e => Error::Core(e),
            })?
        } else {
            None
        };
        let hello = c
            .recv_bytes_timeout(CONNECT)
            .map_err(|e| Error::Protocol(format!("no greeting from the manager: {e}")))?;
        let hello: Hello = postcard::from_bytes(&hello)
            .map_err(|e| Error::Protocol(format!("not a manager's greeting: {e}")))?;
        if hello.version != VERSION {
            return Err(Error::Protocol(format!(
                "the manager speaks protocol {}, this client {VERSION}",
                hello.version
            )));
        }
        let (reader, writer) = c.split()?;
        let mut events = None;
        let link = match queues {
            None => Link::Socket {
                writer: Mutex::new(writer),
                read: Mutex::new(ReadSide {
                    reader,
                    buf: Vec::new(),
                }),
            },
            Some(queues) => {
                let (tx, rx) = queues.client_ends()?;
                events = Some(reader);
                Link::Local(LocalLink {
                    tx: Mutex::new(tx),
                    rx: Mutex::new(rx),
                    queues,
                    _socket: writer,
                })
            }
        };
        let conn = Arc::new(Conn {
            link,
            routes: Mutex::default(),
            cv: Condvar::new(),
            next_id: AtomicU64::new(1),
            max_value: usize::try_from(hello.max_value).unwrap_or(usize::MAX),
            dead: AtomicBool::new(false),
        });
        if let Some(reader) = events {
            let weak = Arc::downgrade(&conn);
            thread::Builder::new()
                .name("manager-events".into())
                .spawn(move || read_socket(reader, &weak))
                .map_err(ipckit_core::Error::Io)?;
        }
        Ok(Manager {
            conn,
            addr: addr.clone(),
            _owned: None,
        })
    }

    /// Whether this connection's calls go through the local fast path (shared-memory
    /// queues) rather than the socket: true on a Unix socket when the server offers it
    /// ([`ServeOptions::fast_path`], on by default), false over TCP.
    pub fn is_fast_path(&self) -> bool {
        self.conn.is_local()
    }

    /// The server's address, for other processes to [`connect`](Manager::connect) to.
    pub fn address(&self) -> &Address {
        &self.addr
    }

    /// The process id of the server this handle started with [`Manager::start`].
    pub fn server_pid(&self) -> Option<u32> {
        self._owned.as_deref().map(|o| lock(&o.child).pid())
    }

    /// Asks the server to stop: every client, this one included, is then disconnected.
    ///
    /// # Errors
    /// [`Error::Disconnected`] if the server is gone already.
    pub fn shutdown(&self) -> Result<()> {
        self.conn.shutdown_server()
    }
}
