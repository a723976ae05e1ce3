//! The typed client: many calls in flight on one connection.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError, channel},
    },
    time::{Duration, Instant},
};

use ipckit_core::{Connection, Deadline, Reader, RecvBytes, SendBytes, Writer};
use ipckit_sockets::{Address, ConnectOptions};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    Error, Method, Result,
    wire::{self, Frame, Outcome},
};

/// What a waiting call receives: its answer, or the turn to read the connection.
enum Msg {
    Reply(Outcome),
    Lead,
}

type Waiting = Sender<Msg>;

struct Pending {
    /// `None` once the connection is gone: no call may wait any more.
    calls: Option<HashMap<u64, Waiting>>,
}

struct Inner {
    writer: Mutex<Writer>,
    /// Whoever holds it reads the connection for every waiting call (the leader).
    reader: Mutex<(Reader, Vec<u8>)>,
    pending: Mutex<Pending>,
    next: AtomicU64,
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
/// Dropping the client closes its side; the server drops what it had not started.
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
        self.send(&frame, self.timeout)
    }

    fn send(&self, frame: &[u8], timeout: Duration) -> Result<()> {
        let mut w = self.inner.writer.lock().map_err(|_| Error::Disconnected)?;
        w.send_bytes_deadline(frame, Deadline::after(timeout))
            .map_err(map_core)
    }

    fn forget(&self, id: u64) {
        if let Ok(mut p) = self.inner.pending.lock() {
            if let Some(calls) = p.calls.as_mut() {
                calls.remove(&id);
            }
        }
    }

    fn call_bytes(&self, method: &str, params: Vec<u8>, timeout: Duration) -> Result<Vec<u8>> {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        // Unbounded: turns to lead must never take the answer's room.
        let (tx, rx) = channel();
        {
            let mut p = self.inner.pending.lock().map_err(|_| Error::Disconnected)?;
            p.calls.as_mut().ok_or(Error::Disconnected)?.insert(id, tx);
        }
        let frame = wire::encode(&Frame::Call {
            id,
            method: method.to_owned(),
            timeout_us: u64::try_from(timeout.as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
            params,
        });
        if let Err(e) = frame.and_then(|f| self.send(&f, timeout)) {
            self.forget(id);
            return Err(e);
        }
        let deadline = Instant::now() + timeout;
        let result = self.wait(id, &rx, deadline);
        if result.is_err() {
            self.forget(id);
        }
        // A turn to lead that came with (or after) the answer goes on to another caller.
        if matches!(rx.try_recv(), Ok(Msg::Lead)) {
            self.inner.hand_off();
        }
        result
    }

    /// Waits for the answer to call `id`: reading the connection itself when nobody else
    /// does (so that a lone caller's answer wakes it directly), else waiting for the reader
    /// to hand it over, or to hand over the reading.
    fn wait(&self, id: u64, rx: &Receiver<Msg>, deadline: Instant) -> Result<Vec<u8>> {
        loop {
            if let Ok(mut reader) = self.inner.reader.try_lock() {
                // The answer may have come while another caller was reading.
                let result = match rx.try_recv() {
                    Ok(Msg::Reply(o)) => Some(o.into()),
                    Ok(Msg::Lead) | Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => Some(Err(Error::Disconnected)),
                };
                let result = result.unwrap_or_else(|| self.inner.lead(&mut reader, id, deadline));
                drop(reader);
                self.inner.hand_off();
                return result;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Msg::Reply(o)) => return o.into(),
                Ok(Msg::Lead) => {}
                Err(RecvTimeoutError::Timeout) => return Err(Error::Timeout),
                Err(RecvTimeoutError::Disconnected) => return Err(Error::Disconnected),
            }
        }
    }
}

impl Inner {
    /// Reads answers, handing each to its caller, until the one of `id` comes (or the
    /// deadline passes, or the server is gone).
    fn lead(&self, reader: &mut (Reader, Vec<u8>), id: u64, deadline: Instant) -> Result<Vec<u8>> {
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
            let Ok(Frame::Reply {
                id: answered,
                outcome,
            }) = wire::decode(buf)
            else {
                tracing::debug!("rpc client: the server sent something that is not a reply");
                self.gone();
                return Err(Error::Protocol(
                    "the server sent something that is not a reply".into(),
                ));
            };
            if answered == id {
                self.take(id);
                return outcome.into();
            }
            if let Some(tx) = self.take(answered) {
                // The caller may have timed out and gone: its answer is dropped.
                let _ = tx.send(Msg::Reply(outcome));
            }
        }
    }

    fn take(&self, id: u64) -> Option<Waiting> {
        self.pending
            .lock()
            .ok()
            .and_then(|mut p| p.calls.as_mut().and_then(|c| c.remove(&id)))
    }

    /// Gives the turn to read to one waiting caller, if there is one.
    fn hand_off(&self) {
        if let Ok(p) = self.pending.lock() {
            if let Some(calls) = p.calls.as_ref() {
                for tx in calls.values() {
                    if tx.send(Msg::Lead).is_ok() {
                        return;
                    }
                }
            }
        }
    }

    /// The server is gone: every waiting call ends now (its sender is dropped), and so does
    /// every later one.
    fn gone(&self) {
        if let Ok(mut p) = self.pending.lock() {
            p.calls = None;
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // The server sees the end, cancels what it has not started, and closes its side.
        let _ = self.closer.shutdown();
    }
}
