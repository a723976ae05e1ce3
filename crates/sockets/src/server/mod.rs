//! [`Server`]: many clients of one [`Listener`] at once, typed.
//!
//! - `mod.rs`: the public types and the calls the application makes.
//! - `hub.rs`: the shared state, the accept thread, sending, leaving, shutting down.
//! - `client.rs`: one client's reader and writer threads and its bounded outbox.
//! - `events.rs`: the bounded event queue between the client threads and [`Events`].
//! - `format.rs`: [`Format`], how messages become bytes ([`Raw`] for bytes as they are).

mod client;
mod events;
mod format;
mod hub;

use std::{
    fmt,
    marker::PhantomData,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    thread::JoinHandle,
    time::Duration,
};

use ipckit_core::{
    DEFAULT_MAX_MESSAGE, Deadline, Error, Framing, PeerCredentials, Postcard, RecvTimeoutError,
    Result, TryRecvError,
};

pub use self::format::{Format, Raw};
use self::{events::Decoding, hub::Hub};
use crate::{Address, Listener};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state stays consistent across a panic in a holder: every update is one step.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a [`Server`] treats its clients.
///
/// Made with [`ServerOptions::new`] (or `Default`) and chained setters:
///
/// ```
/// use std::time::Duration;
/// use ipckit_sockets::ServerOptions;
///
/// let opts = ServerOptions::new().outbox(64).linger(Duration::from_millis(500));
/// ```
#[derive(Debug, Clone)]
pub struct ServerOptions {
    outbox: usize,
    events: usize,
    event_bytes: usize,
    max_message: usize,
    stall_limit: Duration,
    linger: Duration,
    framing: Framing,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            outbox: 1024,
            events: 1024,
            event_bytes: 64 << 20,
            max_message: DEFAULT_MAX_MESSAGE,
            stall_limit: Duration::from_secs(30),
            linger: Duration::from_secs(2),
            framing: Framing::Length,
        }
    }
}

impl ServerOptions {
    /// The defaults: outboxes of 1024 messages, room for 1024 messages and 64 MiB in the
    /// events, messages up to 64 MiB, a stall limit of 30 s, a linger of 2 s, messages
    /// framed as Python's `multiprocessing.connection` frames them.
    pub fn new() -> Self {
        ServerOptions::default()
    }

    /// Messages waiting for one client before it counts as too slow and is disconnected
    /// (default 1024; at least 1).
    #[must_use]
    pub fn outbox(mut self, messages: usize) -> Self {
        self.outbox = messages.max(1);
        self
    }

    /// Messages from clients waiting in [`Events`] before the readers stop reading until
    /// the application takes some (default 1024; at least 1). Joins and leaves are never
    /// held back.
    #[must_use]
    pub fn events(mut self, messages: usize) -> Self {
        self.events = messages.max(1);
        self
    }

    /// Bytes of clients' messages (as they came over the wire) waiting in [`Events`] before
    /// the readers stop reading until the application takes some (default 64 MiB). A
    /// message larger than this is let in alone, when nothing else waits.
    #[must_use]
    pub fn event_bytes(mut self, bytes: usize) -> Self {
        self.event_bytes = bytes;
        self
    }

    /// The largest message received or sent (default 64 MiB); a client announcing more is
    /// dropped.
    #[must_use]
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// How long a client may send nothing in the middle of a message (default 30 s):
    /// then it is dropped with [`LeaveReason::Stalled`]. A client idle *between* messages
    /// is never dropped.
    #[must_use]
    pub fn stall_limit(mut self, limit: Duration) -> Self {
        self.stall_limit = limit;
        self
    }

    /// How messages are delimited on the wire, both ways (default [`Framing::Length`],
    /// Python's `multiprocessing.connection`). [`Framing::Lines`] serves people at a
    /// terminal (`nc host port`): each line is a message, and each message sent is a line;
    /// [`Framing::Raw`] serves plain `socket` programs: a message is whatever bytes
    /// arrived, and a send writes its bytes as they are.
    #[must_use]
    pub fn framing(mut self, framing: Framing) -> Self {
        self.framing = framing;
        self
    }

    /// How long a leaving client has to take what is still queued for it and close its
    /// end, before its connection is closed for it (default 2 s). [`Server::shutdown`]
    /// takes at most about this long.
    #[must_use]
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
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
    /// It sent a message that does not decode as the server's message type. The error.
    Undecodable(String),
    /// It sent nothing for [`ServerOptions::stall_limit`] in the middle of a message.
    Stalled,
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
            LeaveReason::Undecodable(e) => write!(f, "sent a message that does not decode: {e}"),
            LeaveReason::Stalled => f.write_str("stalled in the middle of a message"),
            LeaveReason::Failed(e) => write!(f, "connection failed: {e}"),
            LeaveReason::Shutdown => f.write_str("server shutdown"),
        }
    }
}

/// What happens on a [`Server`] whose clients send `T`; see [`Events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<T> {
    /// A client connected (and passed the authkey handshake, if the listener asks for one).
    Joined {
        /// Which.
        client: ClientId,
        /// Who it is.
        peer: Peer,
    },
    /// A client sent a message.
    Message {
        /// Which client.
        from: ClientId,
        /// What it said.
        msg: T,
    },
    /// A client is gone: nothing more comes from it and nothing more can be sent to it.
    Left {
        /// Which.
        client: ClientId,
        /// Why.
        reason: LeaveReason,
    },
}

/// Serves many clients of one [`Listener`] at once (a chat room, a pub/sub hub), sending
/// them messages of `T` encoded with `C`.
///
/// # Creating one
///
/// [`Server::start`] takes a bound [`Listener`] and gives the server and its [`Events`]:
/// the server sends messages of `T`, the events deliver what clients send, of their own
/// type (often the same). Messages are postcard-encoded; [`start_with_format`] takes
/// another [`Format`] (any [`Codec`](crate::Codec)), and [`start_raw`] makes a byte-level
/// server whose messages are `Vec<u8>` as they are ([`Raw`]). A client is any
/// [`Connection`](crate::Connection) to the listener's address ([`connect`](crate::connect)),
/// or a Python `multiprocessing.connection.Client`: it sends and receives the same frames.
///
/// A server stays in the process that started it (it is not a
/// [`Handle`](crate::Handle)); client processes connect to its [`address`](Server::address).
///
/// # How it serves
///
/// One thread accepts; every client has a reader thread, a writer thread and a bounded
/// outbox ([`ServerOptions::outbox`], 1024 messages by default). A message is encoded once
/// and shared by every outbox it goes to. [`send_to`](Server::send_to) and
/// [`broadcast`](Server::broadcast) only put it in outboxes and never wait, so a slow or
/// dead client never holds up the others: a client whose outbox is full is disconnected
/// with [`LeaveReason::OutboxOverflow`].
///
/// What clients say arrives on [`Events`], in order per client: its
/// [`Joined`](Event::Joined), its [`Message`](Event::Message)s, then its
/// [`Left`](Event::Left), always last. When the application takes events slower than
/// clients send, the readers stop reading (at [`ServerOptions::events`] messages or
/// [`ServerOptions::event_bytes`] bytes waiting) and the kernel pushes back on the clients.
///
/// Messages are framed as Python's `multiprocessing.connection` frames them, or as lines,
/// or not at all ([`ServerOptions::framing`]): a line server serves people with `nc`.
///
/// # Dead and misbehaving clients
///
/// A client that closes its connection or whose process dies leaves with
/// [`LeaveReason::Closed`] once what it sent has been delivered. One that breaks the framing
/// (garbage, a header announcing more than [`ServerOptions::max_message`]) leaves with
/// [`LeaveReason::Protocol`]; one whose message does not decode as the events' type leaves
/// with [`LeaveReason::Undecodable`]; one that stops in the middle of a message for
/// [`ServerOptions::stall_limit`] leaves with [`LeaveReason::Stalled`]. Each is cut off
/// at once and the reason is logged (`tracing`, level warn); the others are served on.
///
/// Memory follows what clients really send: a header announcing a large message costs
/// only the bytes that came (a client that announces 64 MiB and sends five bytes costs a
/// few KiB, and is dropped at the stall limit).
///
/// With a listener that asks for an [`authkey`](Listener::authkey), clients' handshakes run
/// side by side on the accept thread: a client that connects and says nothing holds up
/// nobody's join, and is dropped after 10 s.
///
/// # Threads and shutdown
///
/// Every thread has a way out: accepting polls the shutdown flag, blocked reads and writes
/// are woken by `shutdown(2)` of their socket, and a client that does not close its end in
/// time is closed for it ([`ServerOptions::linger`]). A client costs three descriptors and
/// two threads; a client in its handshake, one descriptor.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use ipckit_sockets::{Address, Event, Events, Listener, RecvBytes, SendBytes, Server};
///
/// let addr: Address = format!("unix-abstract://{}", ipckit_core::unique_name("doc")).parse()?;
/// let (server, events): (Server<String>, Events<String>) =
///     Server::start(Listener::bind(&addr)?)?;
/// let patience = Duration::from_secs(10);
///
/// // A client: its connection split, each half typed.
/// let (reader, writer) = ipckit_sockets::connect(&addr)?.split()?;
/// let (mut hear, mut say) = (reader.into_receiver::<String>(), writer.into_sender());
/// let Event::Joined { client: id, .. } = events.recv_timeout(patience)? else { panic!() };
///
/// say.send(&"hello".to_string())?;
/// assert_eq!(events.recv_timeout(patience)?, Event::Message { from: id, msg: "hello".into() });
/// server.broadcast(&"welcome, everyone".to_string())?;
/// assert_eq!(hear.recv_timeout(patience)?, "welcome, everyone");
///
/// drop((hear, say));
/// assert!(matches!(events.recv_timeout(patience)?, Event::Left { client, .. } if client == id));
/// server.shutdown();
/// assert!(events.recv().is_err()); // Disconnected: the server has stopped.
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// [`start_with_format`]: Server::start_with_format
/// [`start_raw`]: Server::start_raw
pub struct Server<T, C = Postcard> {
    hub: Arc<Hub>,
    format: C,
    /// The accept thread; `None` once shut down.
    acceptor: Mutex<Option<JoinHandle<()>>>,
    _t: PhantomData<fn(&T)>,
}

/// The events of a [`Server`] (who joins, says what, and leaves), whose clients send
/// messages of `T` encoded with `C`.
///
/// Made with the server by [`Server::start`]. It has the four forms of every ipckit
/// receiver: [`recv`](Events::recv), [`try_recv`](Events::try_recv),
/// [`recv_timeout`](Events::recv_timeout) and [`iter`](Events::iter). They report
/// [`Error::Disconnected`] (or its `TryRecvError`/`RecvTimeoutError` form) once the server
/// has shut down and every event was taken; the iteration ends there.
///
/// It stays in the server's process; it may be moved to, or shared by, other threads.
/// Dropping it discards clients' messages from then on (the server serves on).
pub struct Events<T, C = Postcard> {
    inbox: Arc<Decoding<T, C>>,
    addr: Address,
}

impl<T> Server<T, Postcard> {
    /// Serves the clients of `listener` with the default [`ServerOptions`], postcard-encoded;
    /// clients send messages of `In`.
    ///
    /// # Errors
    /// [`Error::Io`] if the accept thread cannot be started.
    pub fn start<In>(listener: Listener) -> Result<(Self, Events<In, Postcard>)>
    where
        Postcard: Format<T> + Format<In>,
        In: Send + 'static,
    {
        Self::start_with_format(listener, &ServerOptions::default(), Postcard)
    }

    /// Serves the clients of `listener` as `opts` say, postcard-encoded; clients send
    /// messages of `In`.
    ///
    /// # Errors
    /// [`Error::Io`] if the accept thread cannot be started.
    pub fn start_with<In>(
        listener: Listener,
        opts: &ServerOptions,
    ) -> Result<(Self, Events<In, Postcard>)>
    where
        Postcard: Format<T> + Format<In>,
        In: Send + 'static,
    {
        Self::start_with_format(listener, opts, Postcard)
    }
}

impl Server<Vec<u8>, Raw> {
    /// A byte-level server: messages both ways are `Vec<u8>`, sent and delivered as they
    /// are, with the default [`ServerOptions`]. For clients that speak no ipckit codec (a
    /// Python `Connection`'s `send_bytes`), or an application that decodes itself.
    ///
    /// # Errors
    /// [`Error::Io`] if the accept thread cannot be started.
    pub fn start_raw(listener: Listener) -> Result<(Self, Events<Vec<u8>, Raw>)> {
        Self::start_with_format(listener, &ServerOptions::default(), Raw)
    }

    /// A byte-level server, as `opts` say; see [`start_raw`](Server::start_raw).
    ///
    /// # Errors
    /// [`Error::Io`] if the accept thread cannot be started.
    pub fn start_raw_with(
        listener: Listener,
        opts: &ServerOptions,
    ) -> Result<(Self, Events<Vec<u8>, Raw>)> {
        Self::start_with_format(listener, opts, Raw)
    }
}

impl<T, C: Format<T> + Clone> Server<T, C> {
    /// Serves the clients of `listener` as `opts` say, with messages encoded by `format`
    /// both ways; clients send messages of `In`.
    ///
    /// # Errors
    /// [`Error::Io`] if the accept thread cannot be started.
    pub fn start_with_format<In>(
        listener: Listener,
        opts: &ServerOptions,
        format: C,
    ) -> Result<(Self, Events<In, C>)>
    where
        C: Format<In>,
        In: Send + 'static,
    {
        let addr = listener.address().clone();
        let inbox = Arc::new(Decoding::<In, C>::new(
            opts.events,
            opts.event_bytes,
            format.clone(),
        ));
        let hub = Arc::new(Hub::new(opts.clone(), addr.clone(), inbox.clone()));
        let acceptor = {
            let hub = Arc::clone(&hub);
            std::thread::Builder::new()
                .name("ipckit-accept".into())
                .spawn(move || hub.accept_loop(listener))?
        };
        tracing::debug!(addr = %addr, "server started");
        Ok((
            Server {
                hub,
                format,
                acceptor: Mutex::new(Some(acceptor)),
                _t: PhantomData,
            },
            Events { inbox, addr },
        ))
    }

    /// The address served (with the real port for `tcp://…:0`).
    pub fn address(&self) -> &Address {
        &self.hub.addr
    }

    /// The clients connected now, in the order they came.
    pub fn clients(&self) -> Vec<ClientId> {
        self.hub.clients()
    }

    /// Who client `id` is, while it is connected.
    pub fn peer(&self, id: ClientId) -> Option<Peer> {
        self.hub.peer(id)
    }

    fn encode(&self, msg: &T) -> Result<Arc<[u8]>> {
        let mut buf = Vec::new();
        self.format.encode(msg, &mut buf)?;
        self.hub.message(buf)
    }

    /// Queues `msg` for client `id`. If its outbox is full, the client is disconnected
    /// ([`LeaveReason::OutboxOverflow`]) instead. Never waits.
    ///
    /// # Errors
    /// [`Error::Disconnected`] if `id` is not connected (or was just disconnected for
    /// overflowing), [`Error::TooLarge`] above [`ServerOptions::max_message`],
    /// [`Error::Codec`] if `msg` cannot be encoded, [`Error::Malformed`] for a message with
    /// a newline on a line-framed server.
    pub fn send_to(&self, id: ClientId, msg: &T) -> Result<()> {
        self.hub.send_to(id, self.encode(msg)?)
    }

    /// Queues `msg` for every client; gives how many. Never waits: a client whose outbox is
    /// full is disconnected ([`LeaveReason::OutboxOverflow`]).
    ///
    /// # Errors
    /// [`Error::TooLarge`] above [`ServerOptions::max_message`], [`Error::Codec`] if `msg`
    /// cannot be encoded, [`Error::Malformed`] for a message with a newline on a
    /// line-framed server.
    pub fn broadcast(&self, msg: &T) -> Result<usize> {
        Ok(self.hub.broadcast(self.encode(msg)?, None))
    }

    /// As [`broadcast`](Server::broadcast), to every client but `except` (the sender of
    /// what is relayed, usually).
    ///
    /// # Errors
    /// As [`broadcast`](Server::broadcast).
    pub fn broadcast_except(&self, except: ClientId, msg: &T) -> Result<usize> {
        Ok(self.hub.broadcast(self.encode(msg)?, Some(except)))
    }

    /// Sends client `id` away: what is already queued for it still goes out, then its
    /// connection closes; what it sends from now on is dropped. Its
    /// [`Left`](Event::Left) says [`LeaveReason::Disconnected`] with `reason`. Whether it
    /// was connected.
    pub fn disconnect(&self, id: ClientId, reason: &str) -> bool {
        self.hub.disconnect(id, reason)
    }
}

impl<T, C> Server<T, C> {
    /// Stops accepting (a Unix socket file is removed), sends every client what is queued
    /// for it and closes it ([`LeaveReason::Shutdown`]), and joins every thread; takes at
    /// most about [`ServerOptions::linger`]. [`Events`] ends after the last
    /// [`Left`](Event::Left). Calling it again does nothing; dropping the server calls it.
    pub fn shutdown(&self) {
        let Some(acceptor) = lock(&self.acceptor).take() else {
            return;
        };
        self.hub.shutdown(acceptor);
    }
}

impl<T, C> Drop for Server<T, C> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl<T, C> fmt::Debug for Server<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.hub.addr)
            .field("clients", &self.hub.clients().len())
            .finish_non_exhaustive()
    }
}

impl<T, C> Events<T, C> {
    /// The next event, waiting no later than `deadline`; the form the others use.
    ///
    /// # Errors
    /// [`Error::Timeout`] if none came in time, [`Error::Disconnected`] once the server has
    /// shut down and every event was taken.
    pub fn recv_deadline(&self, deadline: Deadline) -> Result<Event<T>> {
        self.inbox.queue.pop(deadline)
    }

    /// The next event, waiting as long as it takes.
    ///
    /// # Errors
    /// [`Error::Disconnected`] once the server has shut down and every event was taken.
    pub fn recv(&self) -> Result<Event<T>> {
        self.recv_deadline(Deadline::Never)
    }

    /// The next event if there is one now.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] if there is none, [`TryRecvError::Disconnected`] once the
    /// server has shut down and every event was taken.
    pub fn try_recv(&self) -> Result<Event<T>, TryRecvError> {
        Ok(self.recv_deadline(Deadline::Now)?)
    }

    /// The next event, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`RecvTimeoutError::Timeout`] if none came, [`RecvTimeoutError::Disconnected`] once
    /// the server has shut down and every event was taken.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event<T>, RecvTimeoutError> {
        Ok(self.recv_deadline(Deadline::after(timeout))?)
    }

    /// Every event until the server has shut down: `Ok` per event; the iteration ends at
    /// [`Error::Disconnected`] (any other error would be yielded once, then it ends).
    pub fn iter(&self) -> EventsIter<'_, T, C> {
        EventsIter {
            events: self,
            done: false,
        }
    }
}

/// The next item of an iteration: an event, the end, or one error and then the end.
fn step<T>(done: &mut bool, r: Result<Event<T>>) -> Option<Result<Event<T>>> {
    if *done {
        return None;
    }
    match r {
        Ok(e) => Some(Ok(e)),
        Err(Error::Disconnected) => {
            *done = true;
            None
        }
        Err(e) => {
            *done = true;
            Some(Err(e))
        }
    }
}

/// Iterator over a server's [`Events`]; see [`Events::iter`].
pub struct EventsIter<'a, T, C> {
    events: &'a Events<T, C>,
    done: bool,
}

impl<T, C> Iterator for EventsIter<'_, T, C> {
    type Item = Result<Event<T>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        step(&mut self.done, self.events.recv())
    }
}

/// Owning iterator over a server's [`Events`]; as [`Events::iter`].
pub struct EventsIntoIter<T, C> {
    events: Events<T, C>,
    done: bool,
}

impl<T, C> Iterator for EventsIntoIter<T, C> {
    type Item = Result<Event<T>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        step(&mut self.done, self.events.recv())
    }
}

impl<T, C> IntoIterator for Events<T, C> {
    type Item = Result<Event<T>>;
    type IntoIter = EventsIntoIter<T, C>;

    fn into_iter(self) -> Self::IntoIter {
        EventsIntoIter {
            events: self,
            done: false,
        }
    }
}

impl<'a, T, C> IntoIterator for &'a Events<T, C> {
    type Item = Result<Event<T>>;
    type IntoIter = EventsIter<'a, T, C>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<T, C> Drop for Events<T, C> {
    fn drop(&mut self) {
        self.inbox.queue.abandon();
    }
}

impl<T, C> fmt::Debug for Events<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl<T, C> fmt::Debug for EventsIter<'_, T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventsIter").finish_non_exhaustive()
    }
}

impl<T, C> fmt::Debug for EventsIntoIter<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventsIntoIter").finish_non_exhaustive()
    }
}
