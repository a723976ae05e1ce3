//! Serving a registry over ipckit transports: a thread per connection reads calls, a
//! bounded pool of workers runs them, replies share the connection's writer.

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, SyncSender, sync_channel},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use ipckit_core::{Connection, RecvBytes, SendBytes, Writer};
use ipckit_sockets::{Address, Listener};

use crate::{
    Error, Registry, Result,
    wire::{self, Frame, Outcome},
};

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of worker threads taking jobs from one bounded queue.
#[derive(Clone)]
struct Pool {
    jobs: SyncSender<Job>,
}

impl Pool {
    fn new(workers: usize) -> Result<Pool> {
        let (jobs, rx) = sync_channel::<Job>(4096);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers.max(1) {
            let rx = rx.clone();
            thread::Builder::new()
                .name(format!("ipckit-rpc-worker-{i}"))
                .spawn(move || worker(&rx))
                .map_err(Error::io)?;
        }
        Ok(Pool { jobs })
    }

    fn submit(&self, job: Job) {
        // The workers end only when every sender is gone, so this cannot fail while we hold one.
        let _ = self.jobs.send(job);
    }
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
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
    /// The default options: 16 worker threads.
    pub fn new() -> Self {
        ServeOptions::default()
    }

    /// How many calls run at once (worker threads, shared by every connection); more wait
    /// in a queue, in order. At least 1.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }
}

/// Serves one connection (a socket, or a duplex pipe to a child process) until the peer
/// goes away, running up to 16 calls at once.
///
/// # Errors
///
/// [`Error::Core`] if the connection cannot be split or the worker threads cannot start.
/// The peer going away is the normal end: `Ok(())`.
pub fn serve_connection(conn: Connection, registry: &Registry) -> Result<()> {
    let pool = Pool::new(ServeOptions::default().workers)?;
    handle(conn, Arc::new(registry.clone()), &pool)
}

fn handle(conn: Connection, registry: Arc<Registry>, pool: &Pool) -> Result<()> {
    let (mut reader, writer) = conn.split()?;
    let writer = Arc::new(Mutex::new(writer));
    let alive = Arc::new(AtomicBool::new(true));
    let mut buf = Vec::new();
    loop {
        match reader.recv_bytes_into(&mut buf) {
            Ok(()) => {}
            Err(ipckit_core::Error::Disconnected) => break,
            Err(e) => {
                tracing::debug!("rpc connection ends: {e}");
                break;
            }
        }
        let frame = match wire::decode(&buf) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!("rpc connection ends: {e}");
                break;
            }
        };
        match frame {
            Frame::Call {
                id,
                method,
                timeout_us,
                params,
            } => {
                let deadline =
                    (timeout_us > 0).then(|| Instant::now() + Duration::from_micros(timeout_us));
                let (registry, writer, alive) = (registry.clone(), writer.clone(), alive.clone());
                pool.submit(Box::new(move || {
                    // A client that went away cancels the calls not started yet.
                    if !alive.load(Ordering::Acquire) {
                        return;
                    }
                    let result = if deadline.is_some_and(|d| Instant::now() >= d) {
                        Err(Error::Timeout)
                    } else {
                        registry.call_bytes(&method, &params)
                    };
                    reply(&writer, id, result.into());
                }));
            }
            Frame::Notify { method, params } => {
                let registry = registry.clone();
                pool.submit(Box::new(move || {
                    if let Err(e) = registry.call_bytes(&method, &params) {
                        tracing::debug!("notification `{method}` failed: {e}");
                    }
                }));
            }
            Frame::Reply { .. } => {
                tracing::debug!("rpc connection ends: a client sent a reply");
                break;
            }
        }
    }
    alive.store(false, Ordering::Release);
    Ok(())
}

fn reply(writer: &Mutex<Writer>, id: u64, outcome: Outcome) {
    let frame = match wire::encode(&Frame::Reply { id, outcome }) {
        Ok(f) => f,
        Err(e) => match wire::encode(&Frame::Reply {
            id,
            outcome: Outcome::Internal(e.to_string()),
        }) {
            Ok(f) => f,
            Err(_) => return,
        },
    };
    if let Ok(mut w) = writer.lock() {
        // A client that went away drops its results.
        let _ = w.send_bytes(&frame);
    }
}

/// A registry served on a listener (any ipckit-sockets address: Unix, abstract, TCP; with
/// its authkey if it has one): one thread accepts, one per connection reads calls, and a
/// shared pool of workers runs them, many at once per connection.
///
/// Create one with [`Server::start`]. It stops accepting when dropped (connections already
/// open are served until their clients leave). A client that goes away cancels the calls it
/// has waiting; the answers of calls already running are dropped. A handler that panics
/// answers [`Error::Panicked`] and the server serves on.
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
        let pool = Pool::new(opts.workers)?;
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
                            let (registry, pool) = (registry.clone(), pool.clone());
                            let spawned = thread::Builder::new()
                                .name("ipckit-rpc-conn".into())
                                .spawn(move || {
                                    let _ = handle(conn, registry, &pool);
                                });
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
