//! The typed client: many calls and streams in flight on one connection.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    marker::PhantomData,
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ipckit_core::{Connection, Deadline, Reader, RecvBytes, SendBytes, Writer};
use ipckit_sockets::{Address, ConnectOptions};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    Error, Method, Result, StreamMethod,
    wire::{self, ACK_EVERY, Frame, Outcome},
};

/// What the connection brought for a call: an item of its stream, or its end.
enum Msg {
    Item(Vec<u8>),
    End(Outcome),
}

/// A call in flight: what came for it and nobody took yet, and how to wake its caller.
struct Slot {
    queue: VecDeque<Msg>,
    /// Its caller is waiting (and may be handed the turn to read).
    waiting: bool,
    /// Its caller was handed the turn to read.
    lead: bool,
    /// Made when its caller first waits: a lone caller reads its own answer and never does.
    wake: Option<Arc<Condvar>>,
}

impl Slot {
    /// Wakes its caller, if it waits.
    fn wake(&self) {
        if let Some(wake) = &self.wake {
            wake.notify_one();
        }
    }
}

struct Pending {
    /// `None` once the connection is gone: no call may wait any more.
    calls: Option<HashMap<u64, Slot>>,
}

struct Inner {
    writer: Mutex<Writer>,
    /// Whoever holds it reads the connection for every waiting call (the leader).
    reader: Mutex<(Reader, Vec<u8>)>,
    pending: Mutex<Pending>,
    next: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A connection to a [`Server`](crate::Server) (or to [`serve_connection`](crate::serve_connection)),
/// calling its functions by name, typed.
///
/// Create one with [`Client::connect`] / [`Client::connect_with`] (an ipckit-sockets
/// address, with an authkey if the server has one) or [`Client::new`] on any
/// [`Connection`] (a duplex pipe to a child process). It is `Sync`: many threads call
/// through one client at once, each call with its own id; whichever waiting caller reads the
/// connection hands each answer to its caller (no thread of its own). Every call has a deadline (30 s unless [`Client::timeout`] or
/// [`Client::call_timeout`] says otherwise), which travels to the server: a call still
/// waiting there when it passes is not started. When the server goes away (closes, or its
/// process dies), every waiting call and every later one is [`Error::Disconnected`] at once.
/// Dropping the client closes its side; the server drops what it had not started, and
/// stops its streams.
///
/// A call whose function streams its results ([`StreamMethod`]) is made with
/// [`Client::stream`], which gives an iterator of its items.
pub struct Client {
    inner: Arc<Inner>,
    closer: Connection,
    timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("peer", &self.closer.peer())
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn map_core(e: ipckit_core::Error) -> Error {
    match e {
        ipckit_core::Error::Disconnected => Error::Disconnected,
        ipckit_core::Error::Timeout => Error::Timeout,
        e => Error::Core(e),
    }
}

impl Client {
    /// Connects to a server at `addr` (`unix://…`, `unix-abstract://…`, `tcp://host:port`).
    ///
    /// # Errors
    ///
    /// [`Error::Core`] with the address's or the connect's error (nobody there, a wrong
    /// authkey).
    pub fn connect(addr: &str) -> Result<Client> {
        Client::connect_with(addr, &ConnectOptions::new())
    }

    /// Connects with options: a connect timeout, retrying until the server is there, an
    /// authkey.
    ///
    /// # Errors
    ///
    /// As [`Client::connect`].
    pub fn connect_with(addr: &str, opts: &ConnectOptions) -> Result<Client> {
        let addr: Address = addr.parse()?;
        Client::new(ipckit_sockets::connect_with(&addr, opts)?)
    }

    /// A client over an open connection (a socket, or one end of a duplex pipe whose other
    /// end a child serves with [`serve_connection`](crate::serve_connection)).
    ///
    /// # Errors
    ///
    /// [`Error::Core`] if the connection cannot be split or cloned.
    pub fn new(conn: Connection) -> Result<Client> {
        let closer = conn.try_clone()?;
        let (reader, writer) = conn.split()?;
        let inner = Arc::new(Inner {
            writer: Mutex::new(writer),
            reader: Mutex::new((reader, Vec::new())),
            pending: Mutex::new(Pending {
                calls: Some(HashMap::new()),
            }),
            next: AtomicU64::new(1),
        });
        Ok(Client {
            inner,
            closer,
            timeout: Duration::from_secs(30),
        })
    }

    /// Sets the timeout of calls that do not give their own (30 s by default).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Calls a typed [`Method`]: the arguments and the result have its types.
    ///
    /// # Errors
    ///
    /// [`Error::Remote`] (the function's [`Fault`](crate::Fault)), [`Error::UnknownMethod`],
    /// [`Error::BadParams`], [`Error::Panicked`], [`Error::Timeout`],
    /// [`Error::Disconnected`], [`Error::Decode`] (the answer is not an `R`).
    pub fn call<A: Serialize, R: DeserializeOwned>(
        &self,
        method: Method<A, R>,
        args: &A,
    ) -> Result<R> {
        self.call_timeout(method, args, self.timeout)
    }

    /// Calls a typed [`Method`] with its own timeout.
    ///
    /// # Errors
    ///
    /// As [`Client::call`].
    pub fn call_timeout<A: Serialize, R: DeserializeOwned>(
        &self,
        method: Method<A, R>,
        args: &A,
        timeout: Duration,
    ) -> Result<R> {
        self.call_as_timeout(method.name(), args, timeout)
    }

    /// Calls a method by name, with the types given here (`call_as::<(i64, i64), i64>("add",
    /// &(5, 3))`); the server checks them when it decodes.
    ///
    /// # Errors
    ///
    /// As [`Client::call`].
    pub fn call_as<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: &str,
        args: &A,
    ) -> Result<R> {
        self.call_as_timeout(method, args, self.timeout)
    }

    /// [`Client::call_as`] with its own timeout.
    ///
    /// # Errors
    ///
    /// As [`Client::call`].
    pub fn call_as_timeout<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: &str,
        args: &A,
        timeout: Duration,
    ) -> Result<R> {
        let params = postcard::to_stdvec(args).map_err(|e| Error::Decode(e.to_string()))?;
        let answer = self.call_bytes(method, params, timeout)?;
        postcard::from_bytes(&answer).map_err(|e| Error::Decode(e.to_string()))
    }

    /// Calls a [`StreamMethod`]: the items its function yields come back one by one, as an
    /// iterator of `Result<T>` that ends when the server ends the stream.
    ///
    /// ```
    /// use ipckit_rpc::{Client, Listener, Registry, Server, StreamMethod};
    ///
    /// const COUNT: StreamMethod<u32, u64> = StreamMethod::new("count");
    ///
    /// let registry = Registry::new().stream(COUNT, |n| Ok((0..u64::from(n)).map(Ok)));
    /// let server = Server::start(Listener::bind(&"tcp://127.0.0.1:0".parse()?)?, &registry)?;
    ///
    /// let client = Client::connect(&server.address().to_string())?;
    /// let items: Vec<u64> = client.stream(COUNT, &3)?.collect::<Result<_, _>>()?;
    /// assert_eq!(items, [0, 1, 2]);
    /// # Ok::<(), ipckit_rpc::Error>(())
    /// ```
    ///
    /// The client's timeout ([`Client::timeout`]) bounds each wait for the next item, not
    /// the whole stream: a stream may run for as long as its items keep coming. Ordinary
    /// calls and other streams go on on the same connection meanwhile.
    ///
    /// # Errors
    ///
    /// [`Error::Disconnected`] if the server is gone before the call is sent (a failure to
    /// encode the arguments is [`Error::Decode`]). Everything else comes as an item: see
    /// [`Stream`].
    pub fn stream<A: Serialize, T: DeserializeOwned>(
        &self,
        method: StreamMethod<A, T>,
        args: &A,
    ) -> Result<Stream<T>> {
        self.stream_timeout(method, args, self.timeout)
    }

    /// [`Client::stream`] with its own timeout for each wait.
    ///
    /// # Errors
    ///
    /// As [`Client::stream`].
    pub fn stream_timeout<A: Serialize, T: DeserializeOwned>(
        &self,
        method: StreamMethod<A, T>,
        args: &A,
        timeout: Duration,
    ) -> Result<Stream<T>> {
        let params = postcard::to_stdvec(args).map_err(|e| Error::Decode(e.to_string()))?;
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        self.inner.register(id)?;
        let frame = wire::encode(&Frame::Stream {
            id,
            method: method.name().to_owned(),
            timeout_us: micros(timeout),
            params,
        });
        if let Err(e) = frame.and_then(|f| self.inner.send(&f, Deadline::after(timeout))) {
            self.inner.forget(id);
            return Err(e);
        }
        Ok(Stream {
            inner: self.inner.clone(),
            id,
            timeout,
            unacknowledged: 0,
            done: false,
            items: PhantomData,
        })
    }

    /// Sends a notification: the server runs the function and answers nothing (its result
    /// and errors are dropped).
    ///
    /// # Errors
    ///
    /// [`Error::Disconnected`] if the server is gone.
    pub fn notify<A: Serialize + ?Sized>(&self, method: &str, args: &A) -> Result<()> {
        let params = postcard::to_stdvec(args).map_err(|e| Error::Decode(e.to_string()))?;
        let frame = wire::encode(&Frame::Notify {
            method: method.to_owned(),
            params,
        })?;
        self.inner.send(&frame, Deadline::after(self.timeout))
    }

    fn call_bytes(&self, method: &str, params: Vec<u8>, timeout: Duration) -> Result<Vec<u8>> {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        self.inner.register(id)?;
        // One deadline for sending the call and waiting for its answer.
        let deadline = Instant::now() + timeout;
        let frame = wire::encode(&Frame::Call {
            id,
            method: method.to_owned(),
            timeout_us: micros(timeout),
            params,
        });
        if let Err(e) = frame.and_then(|f| self.inner.send(&f, Deadline::At(deadline))) {
            self.inner.forget(id);
            return Err(e);
        }
        loop {
            match self.inner.wait(id, deadline) {
                Ok(Msg::End(outcome)) => return outcome.into(),
                // Not a stream: an item for it is dropped.
                Ok(Msg::Item(_)) => {}
                Err(e) => {
                    self.inner.forget(id);
                    return Err(e);
                }
            }
        }
    }
}

/// What is left of `timeout` as sent with a call (at least 1: 0 means none).
fn micros(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl Inner {
    fn send(&self, frame: &[u8], deadline: Deadline) -> Result<()> {
        lock(&self.writer)
            .send_bytes_deadline(frame, deadline)
            .map_err(map_core)
    }

    /// Makes room for what comes for call `id`.
    fn register(&self, id: u64) -> Result<()> {
        let slot = Slot {
            queue: VecDeque::new(),
            waiting: false,
            lead: false,
            wake: None,
        };
        lock(&self.pending)
            .calls
            .as_mut()
            .ok_or(Error::Disconnected)?
            .insert(id, slot);
        Ok(())
    }

    /// Call `id` wants nothing more: what comes for it is dropped.
    fn forget(&self, id: u64) {
        let lead = lock(&self.pending)
            .calls
            .as_mut()
            .and_then(|c| c.remove(&id))
            .is_some_and(|s| s.lead);
        // A turn to read it was handed goes on to another caller.
        if lead {
            self.hand_off();
        }
    }

    /// Waits for what comes next for call `id`: reading the connection itself when nobody
    /// else does (so that a lone caller's answer wakes it directly), else waiting for the
    /// reader to hand it over, or to hand over the reading. An end removes the call.
    fn wait(&self, id: u64, deadline: Instant) -> Result<Msg> {
        let mut p = lock(&self.pending);
        loop {
            let slot = p
                .calls
                .as_mut()
                .and_then(|c| c.get_mut(&id))
                .ok_or(Error::Disconnected)?;
            slot.waiting = false;
            let had_lead = std::mem::take(&mut slot.lead);
            if let Some(msg) = slot.queue.pop_front() {
                let end = matches!(msg, Msg::End(_));
                if end {
                    p.calls.as_mut().map(|c| c.remove(&id));
                }
                drop(p);
                // The turn to read came with the message: it goes on to another caller.
                if had_lead {
                    self.hand_off();
                }
                return Ok(msg);
            }
            // Trying under the pending lock: a reader that stops reading hands the turn on
            // under it too, so it cannot be missed between this try and the wait below.
            if let Ok(mut reader) = self.reader.try_lock() {
                drop(p);
                let result = self.lead(&mut reader, id, deadline);
                drop(reader);
                self.hand_off();
                return result;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drop(p);
                return Err(Error::Timeout);
            }
            slot.waiting = true;
            let wake = slot.wake.get_or_insert_with(Arc::default).clone();
            p = wake
                .wait_timeout(p, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Reads the connection, handing what comes to each call, until something comes for
    /// `id` (or the deadline passes, or the server is gone).
    fn lead(&self, reader: &mut (Reader, Vec<u8>), id: u64, deadline: Instant) -> Result<Msg> {
        let (reader, buf) = reader;
        loop {
            match reader.recv_bytes_into_deadline(buf, Deadline::At(deadline)) {
                Ok(()) => {}
                Err(ipckit_core::Error::Timeout) => return Err(Error::Timeout),
                Err(e) => {
                    self.gone();
                    return Err(map_core(e));
                }
            }
            let (to, msg) = match wire::decode(buf) {
                Ok(Frame::Reply { id, outcome }) => (id, Msg::End(outcome)),
                Ok(Frame::Item { id, item }) => (id, Msg::Item(item)),
                _ => {
                    tracing::debug!("rpc client: the server sent something that is not an answer");
                    self.gone();
                    return Err(Error::Protocol(
                        "the server sent something that is not an answer".into(),
                    ));
                }
            };
            if to == id {
                if matches!(msg, Msg::End(_)) {
                    self.forget(id);
                }
                return Ok(msg);
            }
            let mut p = lock(&self.pending);
            // A caller that timed out or dropped its stream is gone: its answer is dropped.
            if let Some(slot) = p.calls.as_mut().and_then(|c| c.get_mut(&to)) {
                // It will not read: the turn to read goes to another caller.
                slot.waiting = false;
                slot.queue.push_back(msg);
                slot.wake();
            }
        }
    }

    /// Gives the turn to read to one waiting caller, if there is one.
    fn hand_off(&self) {
        let mut p = lock(&self.pending);
        let Some(calls) = p.calls.as_mut() else {
            return;
        };
        if let Some(slot) = calls.values_mut().find(|s| s.waiting && !s.lead) {
            slot.lead = true;
            slot.wake();
        }
    }

    /// The server is gone: every waiting call ends now, and so does every later one.
    fn gone(&self) {
        let mut p = lock(&self.pending);
        if let Some(calls) = p.calls.take() {
            for slot in calls.values() {
                slot.wake();
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // The server sees the end, cancels what it has not started, and closes its side.
        let _ = self.closer.shutdown();
    }
}

/// The items of a streaming call, as they come: made by [`Client::stream`].
///
/// An iterator of `Result<T>`: `Ok` per item, and it ends (`None`) when the server ends the
/// stream. An error is yielded once, then it ends: the function's error mid-stream
/// ([`Error::Remote`], [`Error::Panicked`]), [`Error::UnknownMethod`],
/// [`Error::BadParams`], [`Error::WrongKind`] (the method does not stream),
/// [`Error::Timeout`] (no item within the timeout of one wait; the stream is then
/// cancelled), [`Error::Disconnected`] (the server is gone: at once, whether it closed or
/// its process died), [`Error::Decode`] (an item is not a `T`; the stream goes on).
///
/// Dropping it before the end cancels the stream on the server, which stops taking items
/// from the function's iterator and drops it. It holds the client's connection: it may be
/// moved to another thread; after the [`Client`] is dropped it gives
/// [`Error::Disconnected`].
pub struct Stream<T> {
    inner: Arc<Inner>,
    id: u64,
    timeout: Duration,
    /// Items taken since the last acknowledgement.
    unacknowledged: u32,
    done: bool,
    items: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Stream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id)
            .field("done", &self.done)
            .finish()
    }
}

impl<T: DeserializeOwned> Iterator for Stream<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        if self.done {
            return None;
        }
        match self.inner.wait(self.id, Instant::now() + self.timeout) {
            Ok(Msg::Item(bytes)) => {
                self.unacknowledged += 1;
                if self.unacknowledged >= ACK_EVERY {
                    self.unacknowledged = 0;
                    let ack = wire::encode(&Frame::Ack {
                        id: self.id,
                        n: ACK_EVERY,
                    });
                    if let Err(e) =
                        ack.and_then(|f| self.inner.send(&f, Deadline::after(self.timeout)))
                    {
                        self.done = true;
                        self.inner.forget(self.id);
                        return Some(Err(e));
                    }
                }
                Some(postcard::from_bytes(&bytes).map_err(|e| Error::Decode(e.to_string())))
            }
            Ok(Msg::End(outcome)) => {
                self.done = true;
                match crate::Result::<Vec<u8>>::from(outcome) {
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                }
            }
            Err(e) => {
                // A timeout ends the stream here: the drop cancels it on the server.
                if !matches!(e, Error::Timeout) {
                    self.done = true;
                }
                let _ = self.close();
                Some(Err(e))
            }
        }
    }
}

impl<T> Stream<T> {
    /// Cancels the stream on the server unless it ended.
    fn close(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.done, true) {
            return Ok(());
        }
        self.inner.forget(self.id);
        let frame = wire::encode(&Frame::Cancel { id: self.id })?;
        self.inner.send(&frame, Deadline::after(self.timeout))
    }
}

impl<T> Drop for Stream<T> {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::debug!("rpc stream not cancelled: {e}");
        }
    }
}
