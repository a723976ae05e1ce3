//! [`Manager`]: one connection per process to a manager server, shared by every proxy.
//! Calls are pipelined: each carries an id; whichever waiting thread reads the connection
//! hands answers to their callers and watch events to their watches.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Condvar, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ipckit_core::{Child, Command, Ctx, Deadline, RecvBytes, RoleResult, SendBytes};
use ipckit_sockets::{Address, ConnectOptions, Reader, Writer, connect_with};

use crate::{
    Error, Result,
    protocol::{Answer, CLIENT_HELLO, Hello, Op, Reply, Request, VERSION},
    server::{MAX_ANSWER, ServeOptions, Server},
    store::lock,
    watch::WatchState,
};

/// How long [`Manager::connect`] and [`Manager::start`] wait for the server.
const CONNECT: Duration = Duration::from_secs(10);
/// How long a dropped [`Manager`] waits for the server process it started to end.
const STOP: Duration = Duration::from_secs(5);

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

#[derive(Debug)]
pub(crate) struct Conn {
    writer: Mutex<Writer>,
    read: Mutex<ReadSide>,
    routes: Mutex<Routes>,
    cv: Condvar,
    next_id: AtomicU64,
    max_value: usize,
    dead: AtomicBool,
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
        lock(&self.writer)
            .send_bytes(&frame)
            .map_err(|_| Error::Disconnected)
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
        {
            let mut r = lock(&self.routes);
            if r.dead {
                return Err(Error::Disconnected);
            }
            r.waiting.insert(id);
        }
        if let Err(e) = self.send(&Request::Call { id, op }) {
            lock(&self.routes).waiting.remove(&id);
            return Err(e);
        }
        let taken = |r: &mut Routes| r.done.remove(&id);
        match self.wait_for(deadline, taken) {
            Ok(answer) => answer,
            Err(Error::Timeout) if blocks => {
                // Withdraw it; its answer is then Cancelled (a timeout), or what it got.
                self.send(&Request::Cancel { id })?;
                self.wait_for(None, taken)?
            }
            Err(e) => {
                let mut r = lock(&self.routes);
                r.waiting.remove(&id);
                match r.done.remove(&id) {
                    Some(answer) => answer,
                    None => Err(e),
                }
            }
        }
    }

    /// Waits until `ready` gives a value, or `deadline`. Whichever waiting thread finds
    /// nobody reading the connection reads it for everyone (one frame at a time, handing
    /// answers to their callers and events to their watches), so a single-threaded caller
    /// reads its own answer with no thread in between.
    pub(crate) fn wait_for<T>(
        &self,
        deadline: Option<Instant>,
        mut ready: impl FnMut(&mut Routes) -> Option<T>,
    ) -> Result<T> {
        let mut tried = false;
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
            if !r.reading {
                r.reading = true;
                drop(r);
                let got = self.read_one(deadline);
                tried = true;
                r = lock(&self.routes);
                r.reading = false;
                match got {
                    Read::Frame(reply) => dispatch(&mut r, reply),
                    Read::Nothing => {}
                    Read::End => {
                        self.dead.store(true, Ordering::Release);
                        r.dead = true;
                        r.waiting.clear();
                        for (_, w) in r.watches.drain() {
                            w.end();
                        }
                    }
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
        let mut side = lock(&self.read);
        let ReadSide { reader, buf } = &mut *side;
        let deadline = deadline.map_or(Deadline::Never, Deadline::At);
        match reader.recv_bytes_into_deadline(buf, deadline) {
            Ok(()) => match postcard::from_bytes::<Reply>(buf) {
                Ok(reply) => Read::Frame(reply),
                Err(e) => {
                    tracing::warn!(error = %e, "the manager sent a frame this client cannot read");
                    Read::End
                }
            },
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
/// When the server dies, every call — blocked ones too — returns
/// [`Error::Disconnected`]. When the last clone of a `Manager` made by `start` is dropped,
/// the server process is shut down and its socket file removed.
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
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.conn.shutdown_server();
        let mut child = lock(&self.child);
        if child.join_timeout(STOP).is_err() {
            let _ = child.kill();
            let _ = child.join_timeout(STOP);
        }
    }
}

/// The server process of [`Manager::start`]: its address, the largest value, the watch
/// backlog and the authkey.
/// What the server child is told: address, value maximum, watch backlog, authkey, and
/// whether Python 3.11's MD5 handshake is allowed.
type ChildArgs = (String, u64, u64, Option<Vec<u8>>, bool);

fn serve_child(
    (addr, max_value, backlog, key, legacy_md5): ChildArgs,
    _: &mut Ctx,
) -> RoleResult<()> {
    let addr: Address = addr.parse()?;
    let mut opts = ServeOptions::new()
        .max_value(usize::try_from(max_value)?)
        .watch_backlog(usize::try_from(backlog)?)
        .legacy_md5(legacy_md5);
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
        let addr = Address::Unix(ipckit_core::temp_path("manager"));
        let args: ChildArgs = (
            addr.to_string(),
            opts.max_value as u64,
            opts.watch_backlog as u64,
            opts.authkey.clone(),
            opts.legacy_md5,
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
        let mut c = connect_with(addr, opts)?.max_message(MAX_ANSWER);
        c.send_bytes(CLIENT_HELLO)?;
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
        let conn = Arc::new(Conn {
            writer: Mutex::new(writer),
            read: Mutex::new(ReadSide {
                reader,
                buf: Vec::new(),
            }),
            routes: Mutex::default(),
            cv: Condvar::new(),
            next_id: AtomicU64::new(1),
            max_value: usize::try_from(hello.max_value).unwrap_or(usize::MAX),
            dead: AtomicBool::new(false),
        });
        Ok(Manager {
            conn,
            addr: addr.clone(),
            _owned: None,
        })
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
