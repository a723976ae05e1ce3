//! The typed client: many calls in flight on one connection.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc::{RecvTimeoutError, SyncSender, sync_channel},
    },
    thread,
    time::Duration,
};

use ipckit_core::{Connection, Deadline, Reader, RecvBytes, SendBytes, Writer};
use ipckit_sockets::{Address, ConnectOptions};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    Error, Method, Result,
    wire::{self, Frame, Outcome},
};

type Waiting = SyncSender<Outcome>;

struct Pending {
    /// `None` once the connection is gone: no call may wait any more.
    calls: Option<HashMap<u64, Waiting>>,
}

struct Inner {
    writer: Mutex<Writer>,
    pending: Mutex<Pending>,
    next: AtomicU64,
}

/// A connection to a [`Server`](crate::Server) (or to [`serve_connection`](crate::serve_connection)),
/// calling its functions by name, typed.
///
/// Create one with [`Client::connect`] / [`Client::connect_with`] (an ipckit-sockets
/// address, with an authkey if the server has one) or [`Client::new`] on any
/// [`Connection`] (a duplex pipe to a child process). It is `Sync`: many threads call
/// through one client at once, each call with its own id; a reader thread hands each answer
/// to its caller. Every call has a deadline (30 s unless [`Client::timeout`] or
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
    /// [`Error::Core`] if the connection cannot be split or the reader thread cannot start.
    pub fn new(conn: Connection) -> Result<Client> {
        let closer = conn.try_clone()?;
        let (reader, writer) = conn.split()?;
        let inner = Arc::new(Inner {
            writer: Mutex::new(writer),
            pending: Mutex::new(Pending {
                calls: Some(HashMap::new()),
            }),
            next: AtomicU64::new(1),
        });
        let inner2 = inner.clone();
        thread::Builder::new()
            .name("ipckit-rpc-replies".into())
            .spawn(move || read_replies(reader, &inner2))
            .map_err(Error::io)?;
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
        let (tx, rx) = sync_channel(1);
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
        let sent = frame.and_then(|f| self.send(&f, timeout));
        if let Err(e) = sent {
            self.forget(id);
            return Err(e);
        }
        match rx.recv_timeout(timeout) {
            Ok(outcome) => outcome.into(),
            Err(RecvTimeoutError::Timeout) => {
                self.forget(id);
                Err(Error::Timeout)
            }
            Err(RecvTimeoutError::Disconnected) => Err(Error::Disconnected),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // The server sees the end, cancels what it has not started, and closes its side,
        // which ends the reader thread.
        let _ = self.closer.shutdown();
    }
}

fn read_replies(mut reader: Reader, inner: &Inner) {
    let mut buf = Vec::new();
    while reader.recv_bytes_into(&mut buf).is_ok() {
        let Ok(Frame::Reply { id, outcome }) = wire::decode(&buf) else {
            tracing::debug!("rpc client: the server sent something that is not a reply");
            break;
        };
        let waiting = inner
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.calls.as_mut().and_then(|c| c.remove(&id)));
        if let Some(tx) = waiting {
            // The caller may have timed out and gone: its answer is dropped.
            let _ = tx.try_send(outcome);
        }
    }
    // The server is gone: every waiting call ends now (its sender is dropped), and so does
    // every later one.
    if let Ok(mut p) = inner.pending.lock() {
        p.calls = None;
    }
}
