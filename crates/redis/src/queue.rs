//! The queue on a Redis stream: keys, scripts, the byte ends and the typed handle.

use std::{
    collections::VecDeque,
    fmt,
    marker::PhantomData,
    sync::{Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use ipckit_core::{
    Codec, Deadline, Error, Handle, Handoff, Postcard, Receiver, RecvBytes, Result, SendBytes,
    Sender,
};
use redis::Value;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::conn::{Conn, shown_url};

/// The consumer group every receiver of a queue belongs to.
const GROUP: &str = "ipckit";
/// How long a producer counts as alive after its last heartbeat.
const PRODUCER_TTL: Duration = Duration::from_millis(1500);
/// How often a producer's heartbeat thread renews it.
const BEAT: Duration = Duration::from_millis(400);
/// How long a sender handed to a child keeps counting before the child takes it over.
const HANDOVER_GRACE: Duration = Duration::from_secs(30);
/// The longest server-side block of one receive: between two, a receiver checks whether
/// the queue has ended.
const SLICE: Duration = Duration::from_millis(100);

/// `put` of the messages ARGV[2..], all or none: refuses (0) when the stream has no room
/// for them all under the capacity ARGV[1], -1 once closed.
const PUT: &str = r"
if redis.call('HGET', KEYS[2], 'closed') then return -1 end
if redis.call('XLEN', KEYS[1]) + #ARGV - 1 > tonumber(ARGV[1]) then return 0 end
for i = 2, #ARGV do redis.call('XADD', KEYS[1], '*', 'd', ARGV[i]) end
return 1
";

/// Whether the queue has ended for consumers: 1 when nothing is left and it was closed or
/// every producer left; 2 when nothing is left and every producer's heartbeat expired; 0
/// otherwise. Acknowledged entries are deleted, so an empty stream means nothing waits
/// and nothing is being processed.
const ENDED: &str = r"
if redis.call('XLEN', KEYS[1]) > 0 then return 0 end
if redis.call('HGET', KEYS[2], 'closed') then return 1 end
if not redis.call('HGET', KEYS[2], 'ever') then return 0 end
if redis.call('ZCARD', KEYS[3]) == 0 then return 1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZCOUNT', KEYS[3], now, '+inf') == 0 then return 2 end
return 0
";

/// A producer's heartbeat: alive until the broker's clock passes now + ARGV[2] ms.
const BEAT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[1], 'ever', '1')
return 1
";

/// When a consumer acknowledges what it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AckMode {
    /// A message is acknowledged by the consumer's next receive (or when the consumer is
    /// dropped): "I am back for more, so I am done with the last one". The default.
    #[default]
    OnNextGet,
    /// Only [`RedisReceiver::ack`] acknowledges. Unacknowledged messages stay pending and
    /// are claimed by another consumer once idle for
    /// [`claim_idle`](RedisOptions::claim_idle), even while this consumer lives.
    Manual,
}

/// The options of a [`RedisQueue`]: `RedisOptions::new(capacity)` and chained setters; a
/// plain capacity converts into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisOptions {
    capacity: usize,
    max_message: usize,
    claim_idle: Duration,
    ack: AckMode,
    io_timeout: Duration,
    prefetch: usize,
}

impl RedisOptions {
    /// A queue of at most `capacity` messages (waiting or delivered and not yet
    /// acknowledged), each up to 64 MiB, claimed from a dead consumer after 5 s, each
    /// exchange with the broker bounded by 5 s.
    pub fn new(capacity: usize) -> RedisOptions {
        RedisOptions {
            capacity,
            max_message: ipckit_core::DEFAULT_MAX_MESSAGE,
            claim_idle: Duration::from_secs(5),
            ack: AckMode::OnNextGet,
            io_timeout: Duration::from_secs(5),
            prefetch: 1,
        }
    }

    /// The largest message, in bytes (the broker's own limit is 512 MiB).
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// How long a message delivered and not acknowledged stays with its consumer before
    /// another consumer claims it (`XAUTOCLAIM`): the time after which a consumer is taken
    /// for dead. Shorter means faster recovery and more duplicates from slow consumers.
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle;
        self
    }

    /// When receivers acknowledge ([`AckMode`]).
    pub fn ack(mut self, mode: AckMode) -> Self {
        self.ack = mode;
        self
    }

    /// The longest one exchange with the broker may take, whatever the call's deadline:
    /// an unreachable broker makes a blocking call fail after this long.
    pub fn io_timeout(mut self, timeout: Duration) -> Self {
        self.io_timeout = timeout;
        self
    }

    /// How many messages a receiver takes from the broker in one round trip (`COUNT` of
    /// its reads), 1 by default. The ones it has not returned yet wait in the receiver,
    /// delivered to it as far as the broker knows: if its process dies they are claimed by
    /// another consumer after [`claim_idle`](RedisOptions::claim_idle), like any message
    /// it held. With [`AckMode::OnNextGet`], what it returned is acknowledged when it next
    /// reaches the broker, so a dead consumer may leave up to `prefetch` messages it had
    /// already processed to be delivered again. Worth it when consumers are few and busy:
    /// see the crate documentation for what it buys.
    pub fn prefetch(mut self, messages: usize) -> Self {
        self.prefetch = messages;
        self
    }

    /// The capacity, in messages.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn check(&self) -> Result<()> {
        if self.capacity == 0 || self.prefetch == 0 {
            return Err(Error::InvalidOptions(
                "capacity and prefetch must be at least 1".into(),
            ));
        }
        if self.max_message > 512 << 20 {
            return Err(Error::InvalidOptions(format!(
                "max_message {} exceeds the broker's 512 MiB",
                self.max_message
            )));
        }
        if self.io_timeout.is_zero() || self.claim_idle.is_zero() {
            return Err(Error::InvalidOptions(
                "io_timeout and claim_idle must be above zero".into(),
            ));
        }
        Ok(())
    }
}

impl From<usize> for RedisOptions {
    fn from(capacity: usize) -> Self {
        RedisOptions::new(capacity)
    }
}

/// How one received message was delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The stream entry's id (`1700000000000-0`): the same on every delivery of the message.
    pub id: String,
    /// How many times the message was delivered: 1 the first time; more when it was
    /// claimed from a consumer taken for dead (it may have processed it already).
    pub count: u64,
}

/// What a queue handle, a sender and a receiver share, and what travels to a child.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Spec {
    url: String,
    name: String,
    opts: RedisOptions,
    /// A sender's producer id, kept alive across the handover.
    producer: Option<String>,
}

impl Spec {
    fn key(&self, what: &str) -> String {
        format!("ipckit:{{{}}}:{what}", self.name)
    }

    fn to_handoff(&self) -> Handoff {
        // A Spec of strings and numbers always serialises.
        Handoff::Name(serde_json::to_string(self).unwrap_or_default())
    }

    fn from_handoff(h: Handoff) -> Result<Spec> {
        match h {
            Handoff::Name(s) => serde_json::from_str(&s)
                .map_err(|e| Error::RoleInput(format!("Redis queue handoff: {e}"))),
            Handoff::Fd(_) => Err(Error::RoleInput(
                "a Redis queue travels by name, not as a descriptor".into(),
            )),
        }
    }
}

struct Keys {
    stream: String,
    meta: String,
    producers: String,
}

impl Keys {
    fn of(spec: &Spec) -> Keys {
        Keys {
            stream: spec.key("stream"),
            meta: spec.key("meta"),
            producers: spec.key("producers"),
        }
    }
}

fn server_code(e: &Error) -> Option<String> {
    let Error::Os { source, .. } = e else {
        return None;
    };
    source
        .get_ref()
        .and_then(|s| s.downcast_ref::<redis::RedisError>())
        .and_then(|r| r.code().map(str::to_string))
}

/// Creates the stream and the group if missing; stores the options of a new queue.
fn ensure(conn: &mut Conn, spec: &Spec, keys: &Keys) -> Result<()> {
    let r = conn.run(Deadline::Never, Duration::ZERO, |c| {
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&keys.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .exec(c)
    });
    match r {
        Ok(()) => {}
        Err(e) if server_code(&e).as_deref() == Some("BUSYGROUP") => {}
        Err(e) => return Err(e),
    }
    conn.run(Deadline::Never, Duration::ZERO, |c| {
        redis::pipe()
            .cmd("HSETNX")
            .arg(&keys.meta)
            .arg("capacity")
            .arg(spec.opts.capacity)
            .cmd("HSETNX")
            .arg(&keys.meta)
            .arg("max_message")
            .arg(spec.opts.max_message)
            .exec(c)
    })
}

fn unique_id(kind: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}@{}", ipckit_core::unique_name(kind), host.trim())
}

/// A queue of `T` on a Redis stream, shared by every process (on any machine) that reaches
/// the broker: `put` and `get` with `try_` and `_timeout` forms, typed ends
/// [`sender`](RedisQueue::sender) / [`receiver`](RedisQueue::receiver), `close`.
///
/// Create one with [`RedisQueue::create`] (a fresh name) or [`RedisQueue::create_at`] (a
/// name of yours, joined if it exists); [`RedisQueue::open`] joins an existing one by name
/// from any process. Share it with a child by handing it a byte end (or the queue) with
/// `Command::handle`: it travels as its URL, name and options (the URL's password
/// included), and the child connects on its own.
///
/// Delivery is at-least-once: see the crate documentation for acknowledgements, what a
/// dead consumer or producer does, and what a broker restart does. The queue's keys stay
/// on the broker until [`destroy`](RedisQueue::destroy).
pub struct RedisQueue<T, C = Postcard> {
    spec: Spec,
    keys: Keys,
    codec: C,
    conn: Mutex<Conn>,
    tx: Mutex<Option<RedisSender>>,
    rx: Mutex<Option<RedisReceiver>>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T: Serialize + DeserializeOwned> RedisQueue<T, Postcard> {
    /// A new queue under a fresh unique name on the broker at `url`
    /// (`redis://[:password@]host[:port][/db]`).
    ///
    /// # Errors
    /// [`Error::InvalidAddress`] for a URL that is not one, [`Error::InvalidOptions`],
    /// [`Error::Os`] naming the broker when it cannot be reached or refuses.
    pub fn create(url: &str, opts: impl Into<RedisOptions>) -> Result<Self> {
        Self::create_at_with(url, &ipckit_core::unique_name("redisq"), opts, Postcard)
    }

    /// The queue `name` on the broker at `url`, created with `opts` if it does not exist
    /// (an existing queue keeps its capacity and largest message).
    ///
    /// # Errors
    /// As [`create`](RedisQueue::create).
    pub fn create_at(url: &str, name: &str, opts: impl Into<RedisOptions>) -> Result<Self> {
        Self::create_at_with(url, name, opts, Postcard)
    }

    /// Joins the existing queue `name` on the broker at `url`, with its stored capacity
    /// and largest message and this handle's default receiving options.
    ///
    /// # Errors
    /// [`Error::NotA`] when no queue of that name exists; otherwise as
    /// [`create`](RedisQueue::create).
    pub fn open(url: &str, name: &str) -> Result<Self> {
        let probe = Spec {
            url: url.to_string(),
            name: name.to_string(),
            opts: RedisOptions::new(1),
            producer: None,
        };
        let keys = Keys::of(&probe);
        let mut conn = Conn::new(url, probe.opts.io_timeout)?;
        let (cap, max): (Option<usize>, Option<usize>) =
            conn.run(Deadline::Never, Duration::ZERO, |c| {
                redis::cmd("HMGET")
                    .arg(&keys.meta)
                    .arg("capacity")
                    .arg("max_message")
                    .query(c)
            })?;
        let (Some(cap), Some(max)) = (cap, max) else {
            return Err(Error::NotA {
                expected: "an ipckit Redis queue",
                name: name.to_string(),
                reason: format!("no key {} on {}", keys.meta, shown_url(url)),
            });
        };
        Self::create_at_with(url, name, RedisOptions::new(cap).max_message(max), Postcard)
    }
}

impl<T: Serialize + DeserializeOwned, C: Codec + Clone> RedisQueue<T, C> {
    /// As [`create_at`](RedisQueue::create_at), encoding with `codec`.
    ///
    /// # Errors
    /// As [`create`](RedisQueue::create).
    pub fn create_at_with(
        url: &str,
        name: &str,
        opts: impl Into<RedisOptions>,
        codec: C,
    ) -> Result<Self> {
        let opts = opts.into();
        opts.check()?;
        let spec = Spec {
            url: url.to_string(),
            name: name.to_string(),
            opts,
            producer: None,
        };
        Self::from_spec(spec, codec)
    }

    fn from_spec(spec: Spec, codec: C) -> Result<Self> {
        let keys = Keys::of(&spec);
        let mut conn = Conn::new(&spec.url, spec.opts.io_timeout)?;
        ensure(&mut conn, &spec, &keys)?;
        Ok(RedisQueue {
            spec,
            keys,
            codec,
            conn: Mutex::new(conn),
            tx: Mutex::new(None),
            rx: Mutex::new(None),
            _t: PhantomData,
        })
    }

    /// The queue's name on the broker (what [`open`](RedisQueue::open) takes).
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The broker's URL, its password hidden.
    pub fn url(&self) -> String {
        shown_url(&self.spec.url)
    }

    /// This handle's options.
    pub fn options(&self) -> &RedisOptions {
        &self.spec.opts
    }

    /// Another handle on the same queue, with its own connection.
    ///
    /// # Errors
    /// As [`create`](RedisQueue::create).
    pub fn try_clone(&self) -> Result<Self> {
        Self::from_spec(self.spec.clone(), self.codec.clone())
    }

    /// A new producer: registered (and counted by consumers) from now until it is dropped
    /// or its process dies (then within 1.5 s).
    ///
    /// # Errors
    /// [`Error::Os`] naming the broker when it cannot be reached.
    pub fn byte_sender(&self) -> Result<RedisSender> {
        RedisSender::new(self.spec.clone())
    }

    /// A new consumer, with a fresh consumer name in the queue's group.
    ///
    /// # Errors
    /// [`Error::Os`] naming the broker when it cannot be reached.
    pub fn byte_receiver(&self) -> Result<RedisReceiver> {
        RedisReceiver::new(self.spec.clone())
    }

    /// A typed producer over [`byte_sender`](RedisQueue::byte_sender).
    ///
    /// # Errors
    /// As [`byte_sender`](RedisQueue::byte_sender).
    pub fn sender(&self) -> Result<Sender<T, RedisSender, C>> {
        Ok(Sender::with_codec(self.byte_sender()?, self.codec.clone()))
    }

    /// A typed consumer over [`byte_receiver`](RedisQueue::byte_receiver).
    ///
    /// # Errors
    /// As [`byte_receiver`](RedisQueue::byte_receiver).
    pub fn receiver(&self) -> Result<Receiver<T, RedisReceiver, C>> {
        Ok(Receiver::with_codec(
            self.byte_receiver()?,
            self.codec.clone(),
        ))
    }

    /// Puts `msg`, waiting for room no later than `deadline`. The queue handle puts
    /// through a producer of its own, made on the first put and counted until the handle
    /// is dropped.
    ///
    /// # Errors
    /// [`Error::Timeout`] if the queue stayed full, [`Error::Disconnected`] once it is
    /// closed, [`Error::TooLarge`], [`Error::Codec`], [`Error::Os`] naming the broker when
    /// it cannot be reached within the deadline (or the I/O timeout).
    pub fn put_deadline(&self, msg: &T, deadline: Deadline) -> Result<()> {
        self.put_all_deadline(std::slice::from_ref(msg), deadline)
    }

    ipckit_core::put_forms!();

    /// Puts every message of `msgs`, in order, in one round trip, waiting as long as it
    /// takes for room for them all.
    ///
    /// # Errors
    /// As [`put_all_deadline`](RedisQueue::put_all_deadline).
    pub fn put_all(&self, msgs: &[T]) -> Result<()> {
        self.put_all_deadline(msgs, Deadline::Never)
    }

    /// Puts every message of `msgs`, in order, in one round trip (see
    /// [`RedisSender::send_all_deadline`]): all of them or, if the queue has no room for
    /// them all before `deadline`, none.
    ///
    /// # Errors
    /// As [`put_deadline`](RedisQueue::put_deadline); [`Error::LimitReached`] when there
    /// are more messages than the queue's capacity.
    pub fn put_all_deadline(&self, msgs: &[T], deadline: Deadline) -> Result<()> {
        let mut encoded = Vec::with_capacity(msgs.len());
        for msg in msgs {
            let mut bytes = Vec::new();
            self.codec.encode(msg, &mut bytes)?;
            encoded.push(bytes);
        }
        let mut tx = self.tx.lock().map_err(|_| poisoned())?;
        if tx.is_none() {
            *tx = Some(RedisSender::new(self.spec.clone())?);
        }
        match tx.as_mut() {
            Some(tx) => tx.send_all_deadline(&encoded, deadline),
            None => Err(poisoned()),
        }
    }

    /// Gets a message, waiting no later than `deadline`. The queue handle gets through a
    /// consumer of its own, made on the first get.
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::Disconnected`] once the queue ended and is drained,
    /// [`Error::Codec`], [`Error::Os`] naming the broker when it cannot be reached.
    pub fn get_deadline(&self, deadline: Deadline) -> Result<T> {
        let mut rx = self.rx.lock().map_err(|_| poisoned())?;
        if rx.is_none() {
            *rx = Some(RedisReceiver::new(self.spec.clone())?);
        }
        let mut buf = Vec::new();
        match rx.as_mut() {
            Some(rx) => rx.recv_bytes_into_deadline(&mut buf, deadline)?,
            None => return Err(poisoned()),
        }
        self.codec.decode(&buf)
    }

    ipckit_core::get_forms!();

    /// Entries in the stream: messages waiting plus those delivered and not yet
    /// acknowledged (what the capacity bounds).
    ///
    /// # Errors
    /// [`Error::Os`] naming the broker when it cannot be reached.
    pub fn len(&self) -> Result<usize> {
        let mut conn = self.conn.lock().map_err(|_| poisoned())?;
        conn.run(Deadline::Never, Duration::ZERO, |c| {
            redis::cmd("XLEN").arg(&self.keys.stream).query(c)
        })
    }

    /// Messages delivered to a consumer and not yet acknowledged (the group's pending
    /// entries), a dead consumer's included until another claims them.
    ///
    /// # Errors
    /// [`Error::Os`] naming the broker when it cannot be reached.
    pub fn pending(&self) -> Result<usize> {
        let mut conn = self.conn.lock().map_err(|_| poisoned())?;
        let summary: Value = conn.run(Deadline::Never, Duration::ZERO, |c| {
            redis::cmd("XPENDING")
                .arg(&self.keys.stream)
                .arg(GROUP)
                .query(c)
        })?;
        match summary {
            Value::Array(parts) => match parts.first() {
                Some(Value::Int(n)) => Ok(*n as usize),
                _ => Ok(0),
            },
            _ => Ok(0),
        }
    }

    /// Whether [`len`](RedisQueue::len) is zero.
    ///
    /// # Errors
    /// As [`len`](RedisQueue::len).
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Ends the queue for everyone: puts fail with `Disconnected` from now on, consumers
    /// drain what is left (acknowledged), then get `Disconnected`.
    ///
    /// # Errors
    /// [`Error::Os`] naming the broker when it cannot be reached.
    pub fn close(&self) -> Result<()> {
        let mut conn = self.conn.lock().map_err(|_| poisoned())?;
        conn.run(Deadline::Never, Duration::ZERO, |c| {
            redis::cmd("HSET")
                .arg(&self.keys.meta)
                .arg("closed")
                .arg(1)
                .exec(c)
        })
    }

    /// Removes the queue's keys from the broker (its messages, group and producers);
    /// handles still open on it fail or see an empty, unclosed queue.
    ///
    /// # Errors
    /// [`Error::Os`] naming the broker when it cannot be reached.
    pub fn destroy(self) -> Result<()> {
        let mut conn = self.conn.lock().map_err(|_| poisoned())?;
        conn.run(Deadline::Never, Duration::ZERO, |c| {
            redis::cmd("DEL")
                .arg(&self.keys.stream)
                .arg(&self.keys.meta)
                .arg(&self.keys.producers)
                .exec(c)
        })
    }
}

fn poisoned() -> Error {
    Error::Malformed("a thread panicked while using this queue handle".into())
}

impl<T, C: Codec + Clone + Default> Handle for RedisQueue<T, C>
where
    T: Serialize + DeserializeOwned,
{
    fn into_handoff(self) -> Handoff {
        self.spec.to_handoff()
    }

    fn from_handoff(h: Handoff) -> Result<Self> {
        let mut spec = Spec::from_handoff(h)?;
        spec.producer = None;
        Self::from_spec(spec, C::default())
    }
}

impl<T, C> fmt::Debug for RedisQueue<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisQueue")
            .field("url", &shown_url(&self.spec.url))
            .field("name", &self.spec.name)
            .finish_non_exhaustive()
    }
}

/// How a producer's heartbeat thread is told to stop.
enum Farewell {
    /// Dropped: deregister now.
    Leave,
    /// Handed to a child: stay registered for the handover grace.
    HandOver,
}

/// A producer's registration: its id in the queue's producer set, renewed by a thread.
struct Registration {
    id: String,
    stop: Option<mpsc::Sender<Farewell>>,
    thread: Option<thread::JoinHandle<()>>,
}

fn beat(conn: &mut Conn, keys: &Keys, id: &str, ttl: Duration) -> Result<()> {
    conn.run(Deadline::Never, Duration::ZERO, |c| {
        redis::cmd("EVAL")
            .arg(BEAT_SCRIPT)
            .arg(2)
            .arg(&keys.meta)
            .arg(&keys.producers)
            .arg(id)
            .arg(ttl.as_millis() as u64)
            .exec(c)
    })
}

impl Registration {
    fn start(spec: &Spec, id: String) -> Result<Registration> {
        let keys = Keys::of(spec);
        let mut conn = Conn::new(&spec.url, spec.opts.io_timeout.min(Duration::from_secs(1)))?;
        beat(&mut conn, &keys, &id, PRODUCER_TTL)?;
        let (stop, stopped) = mpsc::channel();
        let thread_id = id.clone();
        let thread = thread::Builder::new()
            .name("ipckit-redis-heartbeat".into())
            .spawn(move || {
                let farewell = loop {
                    match stopped.recv_timeout(BEAT) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            // A broker away now is retried at the next beat.
                            let _ = beat(&mut conn, &keys, &thread_id, PRODUCER_TTL);
                        }
                        Ok(f) => break f,
                        Err(mpsc::RecvTimeoutError::Disconnected) => break Farewell::Leave,
                    }
                };
                let _ = match farewell {
                    Farewell::Leave => conn.run(Deadline::Never, Duration::ZERO, |c| {
                        redis::cmd("ZREM")
                            .arg(&keys.producers)
                            .arg(&thread_id)
                            .exec(c)
                    }),
                    Farewell::HandOver => beat(&mut conn, &keys, &thread_id, HANDOVER_GRACE),
                };
            })
            .map_err(Error::Io)?;
        Ok(Registration {
            id,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn end(&mut self, how: Farewell) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(how);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.end(Farewell::Leave);
    }
}

/// A producer of a [`RedisQueue`], at the byte level: [`SendBytes`] puts one message
/// (`XADD`, refused while the stream holds `capacity` entries). Typed as
/// `Sender<T, RedisSender, C>` by [`RedisQueue::sender`] or `into_sender`.
///
/// Take one with [`RedisQueue::byte_sender`]; hand it to a child with `Command::handle`
/// (it travels as URL, name and options; the child connects and keeps its registration).
/// While it exists a thread renews its registration every 400 ms; consumers take the
/// producer for gone 1.5 s after the last renewal, so a SIGKILLed producer stops counting
/// within 2 s. A sender handed to a child keeps counting for 30 s or until the child takes
/// it.
pub struct RedisSender {
    spec: Spec,
    keys: Keys,
    conn: Conn,
    registration: Registration,
}

impl RedisSender {
    fn new(mut spec: Spec) -> Result<RedisSender> {
        let id = spec
            .producer
            .take()
            .unwrap_or_else(|| unique_id("producer"));
        let keys = Keys::of(&spec);
        let conn = Conn::new(&spec.url, spec.opts.io_timeout)?;
        let registration = Registration::start(&spec, id)?;
        Ok(RedisSender {
            spec,
            keys,
            conn,
            registration,
        })
    }

    /// The queue's name on the broker.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Puts every message of `msgs`, in order, in one round trip to the broker: all of
    /// them or, if the queue has no room for them all before `deadline`, none.
    ///
    /// # Errors
    /// As [`SendBytes::send_bytes_deadline`]; [`Error::LimitReached`] when there are more
    /// messages than the queue's capacity.
    pub fn send_all_deadline<M: AsRef<[u8]>>(
        &mut self,
        msgs: &[M],
        deadline: Deadline,
    ) -> Result<()> {
        if msgs.len() > self.spec.opts.capacity {
            return Err(Error::LimitReached {
                what: "messages in one put (the queue's capacity)",
                limit: self.spec.opts.capacity,
            });
        }
        let max = self.spec.opts.max_message;
        if let Some(big) = msgs.iter().find(|m| m.as_ref().len() > max) {
            return Err(Error::TooLarge {
                len: big.as_ref().len() as u64,
                max,
            });
        }
        let mut pause = Duration::from_millis(1);
        loop {
            let put: i64 = self.conn.run(deadline, Duration::ZERO, |c| {
                let mut eval = redis::cmd("EVAL");
                eval.arg(PUT)
                    .arg(2)
                    .arg(&self.keys.stream)
                    .arg(&self.keys.meta)
                    .arg(self.spec.opts.capacity);
                for m in msgs {
                    eval.arg(m.as_ref());
                }
                eval.query(c)
            })?;
            match put {
                1 => return Ok(()),
                -1 => return Err(Error::Disconnected),
                _ => {}
            }
            // Full: the broker cannot wake a producer, so poll, backing off to 20 ms.
            let wait = match deadline.remaining() {
                None => pause,
                Some(r) if r.is_zero() => return Err(Error::Timeout),
                Some(r) => pause.min(r),
            };
            thread::sleep(wait);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

impl SendBytes for RedisSender {
    fn send_bytes_deadline(&mut self, msg: &[u8], deadline: Deadline) -> Result<()> {
        self.send_all_deadline(&[msg], deadline)
    }
}

impl Handle for RedisSender {
    fn into_handoff(mut self) -> Handoff {
        self.registration.end(Farewell::HandOver);
        let mut spec = self.spec.clone();
        spec.producer = Some(self.registration.id.clone());
        spec.to_handoff()
    }

    fn from_handoff(h: Handoff) -> Result<Self> {
        RedisSender::new(Spec::from_handoff(h)?)
    }
}

impl fmt::Debug for RedisSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSender")
            .field("name", &self.spec.name)
            .field("producer", &self.registration.id)
            .finish_non_exhaustive()
    }
}

/// A consumer of a [`RedisQueue`], at the byte level: one consumer of the queue's group.
/// [`RecvBytes`] gets one message; [`last_delivery`](RedisReceiver::last_delivery) says
/// its id and delivery count. Typed as `Receiver<T, RedisReceiver, C>` by
/// [`RedisQueue::receiver`] or `into_receiver`.
///
/// Take one with [`RedisQueue::byte_receiver`]; hand it to a child with `Command::handle`
/// (the child joins the group under a new consumer name). If its process dies, the
/// messages it was given and had not acknowledged are claimed by the other consumers
/// after [`claim_idle`](RedisOptions::claim_idle) and delivered again, with a higher
/// delivery count.
pub struct RedisReceiver {
    spec: Spec,
    keys: Keys,
    conn: Conn,
    consumer: String,
    unacked: Vec<String>,
    /// Messages read from the broker ([`RedisOptions::prefetch`]) and not returned yet.
    prefetched: VecDeque<(String, Vec<u8>)>,
    last: Option<Delivery>,
    next_claim: Instant,
    claim_cursor: String,
}

/// One entry of a stream reply: its id and payload.
fn entries(v: &Value) -> Vec<(String, Vec<u8>)> {
    let Value::Array(list) = v else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|e| {
            let Value::Array(parts) = e else { return None };
            let (Some(Value::BulkString(id)), Some(Value::Array(fields))) =
                (parts.first(), parts.get(1))
            else {
                return None;
            };
            let payload = fields.chunks(2).find_map(|kv| match kv {
                [Value::BulkString(k), Value::BulkString(v)] if k == b"d" => Some(v.clone()),
                _ => None,
            })?;
            Some((String::from_utf8_lossy(id).into_owned(), payload))
        })
        .collect()
}

impl RedisReceiver {
    fn new(spec: Spec) -> Result<RedisReceiver> {
        let keys = Keys::of(&spec);
        let mut conn = Conn::new(&spec.url, spec.opts.io_timeout)?;
        ensure(&mut conn, &spec, &keys)?;
        Ok(RedisReceiver {
            spec,
            keys,
            conn,
            consumer: unique_id("consumer"),
            unacked: Vec::new(),
            prefetched: VecDeque::new(),
            last: None,
            next_claim: Instant::now(),
            claim_cursor: "0-0".into(),
        })
    }

    /// This consumer's name in the group.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// How the last message received was delivered (its id and delivery count).
    pub fn last_delivery(&self) -> Option<&Delivery> {
        self.last.as_ref()
    }

    /// Acknowledges every message received and not yet acknowledged: they leave the
    /// queue for good. With [`AckMode::OnNextGet`] the next receive does this itself.
    ///
    /// # Errors
    /// [`Error::Os`] naming the broker when it cannot be reached (the messages stay
    /// unacknowledged and may be delivered again).
    pub fn ack(&mut self) -> Result<()> {
        if self.unacked.is_empty() {
            return Ok(());
        }
        let ids = &self.unacked;
        let keys = &self.keys;
        self.conn.run(Deadline::Never, Duration::ZERO, |c| {
            redis::pipe()
                .cmd("XACK")
                .arg(&keys.stream)
                .arg(GROUP)
                .arg(ids)
                .cmd("XDEL")
                .arg(&keys.stream)
                .arg(ids)
                .exec(c)
        })?;
        self.unacked.clear();
        Ok(())
    }

    /// Claims one message idle for `claim_idle` from a consumer taken for dead.
    fn claim(&mut self, deadline: Deadline) -> Result<Option<(String, Vec<u8>, u64)>> {
        let idle = self.spec.opts.claim_idle.as_millis() as u64;
        let keys = &self.keys;
        let (consumer, cursor) = (&self.consumer, &self.claim_cursor);
        let reply: Value = self.conn.run(deadline, Duration::ZERO, |c| {
            redis::cmd("XAUTOCLAIM")
                .arg(&keys.stream)
                .arg(GROUP)
                .arg(consumer)
                .arg(idle)
                .arg(cursor)
                .arg("COUNT")
                .arg(1)
                .query(c)
        })?;
        let Value::Array(parts) = &reply else {
            return Ok(None);
        };
        self.claim_cursor = match parts.first() {
            Some(Value::BulkString(c)) => String::from_utf8_lossy(c).into_owned(),
            _ => "0-0".into(),
        };
        let Some((id, payload)) = parts.get(1).and_then(|v| entries(v).into_iter().next()) else {
            return Ok(None);
        };
        let pending: Value = self.conn.run(deadline, Duration::ZERO, |c| {
            redis::cmd("XPENDING")
                .arg(&keys.stream)
                .arg(GROUP)
                .arg(&id)
                .arg(&id)
                .arg(1)
                .query(c)
        })?;
        let count = match &pending {
            Value::Array(rows) => match rows.first() {
                Some(Value::Array(row)) => match row.get(3) {
                    Some(Value::Int(n)) => *n as u64,
                    _ => 2,
                },
                _ => 2,
            },
            _ => 2,
        };
        Ok(Some((id, payload, count)))
    }

    fn deliver(&mut self, id: String, payload: Vec<u8>, count: u64, buf: &mut Vec<u8>) {
        *buf = payload;
        self.unacked.push(id.clone());
        self.last = Some(Delivery { id, count });
    }

    /// One read: acknowledges the previous messages (in [`AckMode::OnNextGet`]) and asks
    /// for a new one, blocking on the broker for at most `block`, in one round trip.
    fn read(&mut self, deadline: Deadline, block: Option<Duration>) -> Result<Value> {
        let ack = self.spec.opts.ack == AckMode::OnNextGet && !self.unacked.is_empty();
        let keys = &self.keys;
        let ids = &self.unacked;
        let consumer = &self.consumer;
        let prefetch = self.spec.opts.prefetch;
        let extra = block.unwrap_or(Duration::ZERO);
        let mut replies: Vec<Value> = self.conn.run(deadline, extra, |c| {
            let mut p = redis::pipe();
            if ack {
                p.cmd("XACK").arg(&keys.stream).arg(GROUP).arg(ids);
                p.cmd("XDEL").arg(&keys.stream).arg(ids);
            }
            let read = p
                .cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(consumer)
                .arg("COUNT")
                .arg(prefetch);
            if let Some(b) = block {
                read.arg("BLOCK").arg((b.as_millis() as u64).max(1));
            }
            read.arg("STREAMS").arg(&keys.stream).arg(">");
            p.query(c)
        })?;
        if ack {
            self.unacked.clear();
        }
        Ok(replies.pop().unwrap_or(Value::Nil))
    }

    /// Whether the queue has ended (closed or every producer gone) and nothing is left.
    fn ended(&mut self, deadline: Deadline) -> Result<bool> {
        let keys = &self.keys;
        let state: i64 = self.conn.run(deadline, Duration::ZERO, |c| {
            redis::cmd("EVAL")
                .arg(ENDED)
                .arg(3)
                .arg(&keys.stream)
                .arg(&keys.meta)
                .arg(&keys.producers)
                .query(c)
        })?;
        // An expired heartbeat means a dead producer only once live producers had the
        // time to renew theirs on this connection (after a broker restart, they had not).
        Ok(state == 1 || (state == 2 && self.conn.age() >= PRODUCER_TTL + BEAT))
    }

    fn recv_once(&mut self, buf: &mut Vec<u8>, deadline: Deadline) -> Result<()> {
        if let Some((id, payload)) = self.prefetched.pop_front() {
            self.deliver(id, payload, 1, buf);
            return Ok(());
        }
        loop {
            if Instant::now() >= self.next_claim {
                let idle = self.spec.opts.claim_idle;
                self.next_claim = Instant::now() + (idle / 4).max(Duration::from_millis(50));
                // Acknowledge first: a consumer slower than `claim_idle` would otherwise
                // claim back the message it has just finished with.
                if self.spec.opts.ack == AckMode::OnNextGet {
                    self.ack()?;
                }
                if let Some((id, payload, count)) = self.claim(deadline)? {
                    // A claimed message leaves the previous ones to be acknowledged next.
                    self.deliver(id, payload, count, buf);
                    return Ok(());
                }
            }
            let block = match deadline {
                Deadline::Now => None,
                Deadline::Never => Some(SLICE),
                Deadline::At(_) => deadline
                    .remaining()
                    .map(|r| r.min(SLICE))
                    .filter(|r| r.as_millis() >= 1),
            };
            let reply = self.read(deadline, block)?;
            if let Value::Array(streams) = &reply {
                for s in streams {
                    if let Value::Array(parts) = s
                        && let Some(list) = parts.get(1)
                    {
                        self.prefetched.extend(entries(list));
                    }
                }
            }
            if let Some((id, payload)) = self.prefetched.pop_front() {
                self.deliver(id, payload, 1, buf);
                return Ok(());
            }
            if self.ended(deadline)? {
                return Err(Error::Disconnected);
            }
            if deadline.has_passed() || matches!(deadline, Deadline::Now) {
                return Err(Error::Timeout);
            }
        }
    }
}

impl RecvBytes for RedisReceiver {
    fn recv_bytes_into_deadline(&mut self, buf: &mut Vec<u8>, deadline: Deadline) -> Result<()> {
        match self.recv_once(buf, deadline) {
            Err(e) if server_code(&e).as_deref() == Some("NOGROUP") => {
                // The broker lost the group (restarted without persistence): make it
                // again and go on with what the stream holds now.
                ensure(&mut self.conn, &self.spec, &self.keys)?;
                self.recv_once(buf, deadline)
            }
            r => r,
        }
    }
}

impl Handle for RedisReceiver {
    fn into_handoff(mut self) -> Handoff {
        if self.spec.opts.ack == AckMode::OnNextGet {
            // Best effort: what is not acknowledged is claimed by others later.
            let _ = self.ack();
        }
        self.spec.to_handoff()
    }

    fn from_handoff(h: Handoff) -> Result<Self> {
        RedisReceiver::new(Spec::from_handoff(h)?)
    }
}

impl Drop for RedisReceiver {
    fn drop(&mut self) {
        if self.spec.opts.ack == AckMode::OnNextGet {
            let _ = self.ack();
        }
        // A consumer deleted with pending messages would lose them: one that still holds
        // some stays in the group, and the others claim them once idle.
        if self.unacked.is_empty() && self.prefetched.is_empty() {
            let keys = &self.keys;
            let consumer = &self.consumer;
            let _ = self.conn.run(Deadline::Now, Duration::ZERO, |c| {
                redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&keys.stream)
                    .arg(GROUP)
                    .arg(consumer)
                    .exec(c)
            });
        }
    }
}

impl fmt::Debug for RedisReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisReceiver")
            .field("name", &self.spec.name)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}
