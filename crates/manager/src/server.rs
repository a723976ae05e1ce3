//! The server: an accept thread, and per client a reader thread (which applies the
//! client's calls to the store) and a writer thread (which drains its outbox).

use std::{
    os::fd::{AsFd, AsRawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use ipckit_core::{Deadline, Reader, RecvBytes, SendBytes, Writer};
use ipckit_sockets::{Address, Connection, Listener};
use nix::sys::socket::{Shutdown, shutdown};

use crate::{
    Result,
    local::{Outbound, Pair},
    protocol::{Answer, CLIENT_HELLO, CLIENT_HELLO_LOCAL, Fault, Hello, Reply, Request, VERSION},
    python::{Ctx, PyState},
    store::{ClientId, Outbox, Store, kick_pending, lock},
};

/// How a manager server runs: its authkey, the largest value it takes, how many watch
/// events may wait for a slow client.
///
/// `ServeOptions::default()` takes values up to 16 MiB, no authkey (a Unix socket file is
/// mode 0600: only its owner connects), lets 4096 events wait per client, and offers the
/// local fast path ([`fast_path`](ServeOptions::fast_path)) to ipckit clients on a Unix
/// socket.
#[derive(Clone)]
pub struct ServeOptions {
    pub(crate) authkey: Option<Vec<u8>>,
    pub(crate) max_value: usize,
    pub(crate) watch_backlog: usize,
    pub(crate) legacy_md5: bool,
    pub(crate) fast_path: bool,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("authkey", &self.authkey.as_ref().map(|_| "…"))
            .field("max_value", &self.max_value)
            .field("watch_backlog", &self.watch_backlog)
            .field("legacy_md5", &self.legacy_md5)
            .field("fast_path", &self.fast_path)
            .finish()
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            authkey: None,
            max_value: 16 << 20,
            watch_backlog: 4096,
            legacy_md5: false,
            fast_path: true,
        }
    }
}

impl ServeOptions {
    /// The defaults (see the type's documentation).
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires every client to prove it knows `key` (Python's `authkey`). A TCP server
    /// must have one.
    #[must_use]
    pub fn authkey(mut self, key: &[u8]) -> Self {
        self.authkey = Some(key.to_vec());
        self
    }

    /// The largest request (a value with its key) the server takes, in encoded bytes;
    /// larger ones are [`Error::TooLarge`](crate::Error::TooLarge).
    #[must_use]
    pub fn max_value(mut self, bytes: usize) -> Self {
        self.max_value = bytes;
        self
    }

    /// Also accepts the HMAC-MD5 handshake of Python 3.11 and older (a Python 3.11
    /// `BaseManager` client); by default only Python 3.12's SHA-256 one.
    #[must_use]
    pub fn legacy_md5(mut self, allow: bool) -> Self {
        self.legacy_md5 = allow;
        self
    }

    /// Whether ipckit clients on a Unix socket are served through shared-memory queues
    /// (on by default): after the socket's handshake (the authkey first), the server
    /// makes two queues in anonymous shared memory (memfd, nothing in `/dev/shm`) and
    /// hands them to the client over the socket; calls and answers then pass through them
    /// — several times faster than the socket, with the same proxies and the same
    /// answers. The socket stays open as the sign of life: a client whose socket closes
    /// (it exited or was killed) releases its locks and permits at once and its queues
    /// are freed; when the server's end closes, every call of that client (blocked ones
    /// too) returns `Disconnected`. Watch events still come over the socket. TCP clients
    /// and Python clients always use the socket. [`Manager::is_fast_path`](crate::Manager::is_fast_path)
    /// says which a connection uses.
    ///
    /// Each fast-path client costs two queues of 64 slots of 4 KiB (its pages are used
    /// as they are written) and one more server thread.
    #[must_use]
    pub fn fast_path(mut self, on: bool) -> Self {
        self.fast_path = on;
        self
    }

    /// How many watch events may wait unsent for one client before its watches lag
    /// (the watcher is then told how many it missed and gets a fresh snapshot).
    #[must_use]
    pub fn watch_backlog(mut self, events: usize) -> Self {
        self.watch_backlog = events.max(1);
        self
    }
}

/// How many answers may wait unsent for one client before the server stops reading its
/// requests (the client is not reading its answers).
const ANSWER_BACKLOG: usize = 1024;
/// What a request frame may hold beyond its largest value (the key, the call).
const REQUEST_OVERHEAD: usize = 4096;
/// The largest answer or event frame (a snapshot of a whole dict), either way.
pub(crate) const MAX_ANSWER: usize = 1 << 30;
/// How often lagging watchers are retried, and the stop flag is looked at.
const TICK: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
struct Shared {
    store: Mutex<Store>,
    stop: AtomicBool,
    next_client: AtomicU64,
    /// Every client's connection, to end them all when the server stops.
    conns: Mutex<Vec<(ClientId, Connection)>>,
    py: PyState,
}

/// A manager server running in a thread of this process, made by
/// [`Manager::serve`](crate::Manager::serve).
///
/// Clients connect to [`address`](Server::address) with
/// [`Manager::connect`](crate::Manager::connect). Dropping it (or [`stop`](Server::stop))
/// stops the server: every client sees `Disconnected`, the socket file is removed.
#[derive(Debug)]
pub struct Server {
    addr: Address,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    pub(crate) fn bind(addr: &Address, opts: ServeOptions) -> Result<(Listener, ServeOptions)> {
        if matches!(addr, Address::Tcp(_)) && opts.authkey.is_none() {
            return Err(ipckit_core::Error::InvalidOptions(format!(
                "a manager on TCP ({addr}) must have an authkey"
            ))
            .into());
        }
        let mut listener = Listener::bind(addr)?;
        if let Some(key) = &opts.authkey {
            listener = listener.authkey(key).legacy_md5(opts.legacy_md5);
        }
        Ok((listener, opts))
    }

    pub(crate) fn start(addr: &Address, opts: ServeOptions) -> Result<Server> {
        let (listener, opts) = Self::bind(addr, opts)?;
        let addr = listener.address().clone();
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("manager-accept".into())
            .spawn(move || run(&listener, &opts, &s))
            .map_err(ipckit_core::Error::Io)?;
        Ok(Server {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// Serves on the calling thread until a client asks the server to shut down.
    pub(crate) fn run_here(addr: &Address, opts: ServeOptions) -> Result<()> {
        let (listener, opts) = Self::bind(addr, opts)?;
        let shared = Arc::new(Shared::default());
        run(&listener, &opts, &shared);
        Ok(())
    }

    /// The address clients connect to (with the real port for `tcp://…:0`).
    pub fn address(&self) -> &Address {
        &self.addr
    }

    /// Stops the server: it accepts no one more, every client is disconnected.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The accept loop; returns when the server stops, after ending every client.
fn run(listener: &Listener, opts: &ServeOptions, shared: &Arc<Shared>) {
    tracing::info!(addr = %listener.address(), "manager serving");
    let ticker = {
        let s = Arc::clone(shared);
        thread::Builder::new()
            .name("manager-tick".into())
            .spawn(move || {
                while !s.stop.load(Ordering::SeqCst) {
                    thread::sleep(TICK);
                    with_store(&s, Store::report_lag);
                }
            })
            .ok()
    };
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept_timeout(TICK) {
            Ok(conn) => {
                if let Err(e) = start_client(conn, opts, shared) {
                    tracing::warn!(error = %e, "cannot serve a client");
                }
            }
            Err(ipckit_core::Error::Timeout) => {}
            Err(e) => tracing::warn!(error = %e, "a client was not accepted"),
        }
    }
    for (_, c) in lock(&shared.conns).drain(..) {
        let _ = shutdown(c.as_fd().as_raw_fd(), Shutdown::Both);
    }
    if let Some(t) = ticker {
        let _ = t.join();
    }
    tracing::info!(addr = %listener.address(), "manager stopped");
}

fn start_client(conn: Connection, opts: &ServeOptions, shared: &Arc<Shared>) -> Result<()> {
    let client = shared.next_client.fetch_add(1, Ordering::Relaxed);
    let peer = conn.peer().to_string();
    lock(&shared.conns).push((client, conn.try_clone()?));
    let (reader, writer) = conn.split()?;
    // Requests are at most a value and its key; answers (a whole dict) may be far larger.
    let mut reader = reader.max_message(opts.max_value.saturating_add(REQUEST_OVERHEAD));
    let writer = writer.max_message(MAX_ANSWER);
    let s = Arc::clone(shared);
    let opts = opts.clone();
    thread::Builder::new()
        .name(format!("manager-r{client}"))
        .spawn(move || {
            // The client speaks first: ipckit's greeting, or a Python request (a pickle).
            let mut first = Vec::new();
            let outcome = match reader.recv_bytes_into(&mut first) {
                Err(e) => Err(format!("it sent nothing ({e})")),
                Ok(()) if first.first() == Some(&0x80) => {
                    serve_python(client, first, reader, writer, &s);
                    Ok(())
                }
                Ok(()) if first == CLIENT_HELLO => {
                    serve_rust(client, &peer, reader, writer, &opts, &s);
                    Ok(())
                }
                Ok(()) if first == CLIENT_HELLO_LOCAL => {
                    offer_local(client, &peer, reader, writer, &opts, &s)
                }
                Ok(()) => Err("it speaks neither ipckit's protocol nor Python's".to_string()),
            };
            if let Err(reason) = outcome {
                tracing::warn!(client, peer = %peer, reason = %reason, "client dropped");
            }
            lock(&s.conns).retain(|(c, _)| *c != client);
        })
        .map_err(ipckit_core::Error::Io)?;
    Ok(())
}

/// Serves a Python `BaseManager` client's connection (see the crate README).
fn serve_python(client: ClientId, first: Vec<u8>, reader: Reader, writer: Writer, s: &Arc<Shared>) {
    let out = Arc::new(Outbox::new(usize::MAX, usize::MAX, None));
    with_store(s, |st| st.add_client(client, Arc::clone(&out)));
    let ctx = Ctx {
        store: &s.store,
        stop: &s.stop,
        py: &s.py,
        client,
        out,
        address: String::new(),
    };
    ctx.serve(first, reader, writer);
    with_store(s, |st| st.remove_client(client));
}

/// Serves an ipckit client: a writer thread drains its outbox, this thread reads.
fn serve_rust(
    client: ClientId,
    peer: &str,
    mut reader: Reader,
    mut writer: Writer,
    opts: &ServeOptions,
    s: &Arc<Shared>,
) {
    let hello = postcard::to_stdvec(&Hello {
        version: VERSION,
        max_value: opts.max_value as u64,
    })
    .unwrap_or_default();
    if writer.send_bytes(&hello).is_err() {
        return;
    }
    let out = Arc::new(Outbox::new(
        opts.watch_backlog,
        ANSWER_BACKLOG,
        Some(writer),
    ));
    with_store(s, |st| st.add_client(client, Arc::clone(&out)));
    tracing::debug!(client, peer = %peer, "client joined");

    let w_out = Arc::clone(&out);
    if thread::Builder::new()
        .name(format!("manager-w{client}"))
        .spawn(move || while w_out.wait_frame() && w_out.flush() {})
        .is_err()
    {
        with_store(s, |st| st.remove_client(client));
        tracing::warn!(client, "no thread to write to a client");
        return;
    }

    let max_value = opts.max_value;
    let mut buf = Vec::new();
    let reason = loop {
        out.wait_room();
        if let Err(e) = reader.recv_bytes_into(&mut buf) {
            // A clean end is the client leaving; anything else (a frame above the
            // limit, a broken frame) is the client breaking the protocol.
            let bad = !matches!(e, ipckit_core::Error::Disconnected);
            break (bad, e.to_string());
        }
        if buf.len() > max_value {
            // Answer it if its id can be read; either way, serve on.
            if let Ok((id, _)) = peek_id(&buf) {
                let frame = postcard::to_stdvec(&Reply::Done {
                    id,
                    result: Err::<Answer, _>(Fault::TooLarge {
                        len: buf.len() as u64,
                        max: max_value as u64,
                    }),
                })
                .unwrap_or_default();
                out.push_answer(frame);
                out.flush();
                continue;
            }
        }
        match postcard::from_bytes::<Request>(&buf) {
            Ok(Request::Call { id, op }) => {
                lock(&s.store).call(client, id, op);
                out.flush();
                kick_pending();
            }
            Ok(Request::Cancel { id }) => {
                lock(&s.store).cancel(client, id);
                out.flush();
                kick_pending();
            }
            Ok(Request::Shutdown) => {
                tracing::info!(client, "shutdown asked");
                s.stop.store(true, Ordering::SeqCst);
                break (false, "it asked the server to shut down".to_string());
            }
            Err(e) => break (true, format!("it sent a malformed request ({e})")),
        }
    };
    with_store(s, |st| st.remove_client(client));
    out.close();
    let (bad, reason) = reason;
    if bad {
        tracing::warn!(client, peer = %peer, reason = %reason, "client dropped");
    } else {
        tracing::info!(client, peer = %peer, reason = %reason, "client left");
    }
}

/// Answers a client that asked for the fast path: with the queues, then serves it through
/// them; or, if this server does not offer it (or cannot make the queues), over the
/// socket.
fn offer_local(
    client: ClientId,
    peer: &str,
    reader: Reader,
    writer: Writer,
    opts: &ServeOptions,
    s: &Arc<Shared>,
) -> std::result::Result<(), String> {
    let pair = if opts.fast_path {
        Pair::create()
            .map_err(|e| tracing::warn!(client, error = %e, "no fast path for a client"))
            .ok()
    } else {
        None
    };
    match pair {
        Some(pair) => {
            pair.offer(writer.as_fd())
                .map_err(|e| format!("its queues could not be sent ({e})"))?;
            serve_local(client, peer, reader, writer, &pair, opts, s);
        }
        None => {
            Pair::decline(writer.as_fd()).map_err(|e| format!("it cannot be answered ({e})"))?;
            serve_rust(client, peer, reader, writer, opts, s);
        }
    }
    Ok(())
}

/// A fast-path client's outgoing side: answers go into its reply queue, watch events
/// onto its socket, in the order they were queued in its outbox. Drained by the thread
/// that applied the client's call, and by a writer thread for what other clients' calls
/// queued (grants, events).
#[derive(Debug)]
struct LocalOut {
    out: Arc<Outbox>,
    send: Mutex<(Outbound, Writer)>,
}

impl LocalOut {
    /// Sends everything queued; `false` once the client is gone.
    fn drain(&self) -> bool {
        let mut send = lock(&self.send);
        let (replies, socket) = &mut *send;
        while let Some(frame) = self.out.next_frame(Some(Instant::now())) {
            // `Reply::Done` is variant 0: its frame begins with a zero byte.
            let sent = if frame.first() == Some(&0) {
                replies.put(&frame).is_ok()
            } else {
                socket.send_bytes(&frame).is_ok()
            };
            if !sent {
                self.out.close();
                let _ = shutdown(socket.as_fd().as_raw_fd(), Shutdown::Both);
                return false;
            }
        }
        true
    }
}

/// Serves an ipckit client through its queues: this thread applies its requests, a
/// writer thread sends what others queued for it, and a third watches the socket, whose
/// end (the client exited or was killed) ends the queues and so the client.
fn serve_local(
    client: ClientId,
    peer: &str,
    mut reader: Reader,
    mut writer: Writer,
    pair: &Pair,
    opts: &ServeOptions,
    s: &Arc<Shared>,
) {
    let limit = opts.max_value.saturating_add(REQUEST_OVERHEAD);
    let ends = pair.server_ends(limit);
    let hello = postcard::to_stdvec(&Hello {
        version: VERSION,
        max_value: opts.max_value as u64,
    })
    .unwrap_or_default();
    let (replies, mut requests) = match ends {
        Ok(ends) if writer.send_bytes(&hello).is_ok() => ends,
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(client, error = %e, "a fast-path client's queues cannot be used");
            return;
        }
    };
    let out = Arc::new(Outbox::new(opts.watch_backlog, usize::MAX, None));
    let link = Arc::new(LocalOut {
        out: Arc::clone(&out),
        send: Mutex::new((replies, writer)),
    });
    with_store(s, |st| st.add_client(client, Arc::clone(&out)));
    tracing::debug!(client, peer = %peer, "client joined (fast path)");

    let w_link = Arc::clone(&link);
    let writer_thread = thread::Builder::new()
        .name(format!("manager-w{client}"))
        .spawn(move || while w_link.out.wait_frame() && w_link.drain() {});
    let queues = pair.try_clone();
    let watcher = queues.and_then(|queues| {
        thread::Builder::new()
            .name(format!("manager-s{client}"))
            .spawn(move || {
                // Nothing comes on the socket but its end.
                let mut buf = Vec::new();
                let got = reader.recv_bytes_into(&mut buf);
                if got.is_ok() {
                    tracing::warn!(client, "a fast-path client wrote on its socket");
                }
                queues.close();
            })
            .map_err(ipckit_core::Error::Io)
    });
    if writer_thread.is_err() || watcher.is_err() {
        tracing::warn!(client, "no threads to serve a fast-path client");
        pair.close();
    }

    let reason = loop {
        let frame = match requests.recv(Deadline::Never) {
            Ok(frame) => frame,
            Err(ipckit_core::Error::Disconnected) => {
                break (false, "its connection ended".to_string());
            }
            Err(e) => break (true, format!("it sent a malformed request ({e})")),
        };
        match postcard::from_bytes::<Request>(frame) {
            Ok(Request::Call { id, op }) => {
                lock(&s.store).call(client, id, op);
                kick_pending();
                link.drain();
            }
            Ok(Request::Cancel { id }) => {
                lock(&s.store).cancel(client, id);
                kick_pending();
                link.drain();
            }
            Ok(Request::Shutdown) => {
                tracing::info!(client, "shutdown asked");
                s.stop.store(true, Ordering::SeqCst);
                break (false, "it asked the server to shut down".to_string());
            }
            Err(e) => break (true, format!("it sent a malformed request ({e})")),
        }
    };
    with_store(s, |st| st.remove_client(client));
    out.close();
    // Wakes a drain waiting for room in the reply queue, then ends the socket, which
    // the client takes as the server's end of it.
    pair.close();
    let _ = shutdown(lock(&link.send).1.as_fd().as_raw_fd(), Shutdown::Both);
    let (bad, reason) = reason;
    if bad {
        tracing::warn!(client, peer = %peer, reason = %reason, "client dropped");
    } else {
        tracing::info!(client, peer = %peer, reason = %reason, "client left");
    }
}

/// Uses the store, then writes what that queued for other clients.
fn with_store<R>(shared: &Shared, f: impl FnOnce(&mut Store) -> R) -> R {
    let r = f(&mut lock(&shared.store));
    kick_pending();
    r
}

/// Reads the id of a `Request::Call` without decoding the rest.
fn peek_id(buf: &[u8]) -> std::result::Result<(u64, &[u8]), postcard::Error> {
    let (tag, rest) = postcard::take_from_bytes::<u32>(buf)?;
    if tag != 0 {
        return Err(postcard::Error::DeserializeBadEnum);
    }
    postcard::take_from_bytes::<u64>(rest)
}
