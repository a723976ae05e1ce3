//! The server's objects, and every operation on them. One `Store` behind one mutex: a call
//! is applied whole while it is held, which makes every call (and a transaction of several)
//! atomic. Nothing here blocks or does I/O: answers and watch events go into the clients'
//! outboxes, written by their writer threads.

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap, VecDeque},
    os::fd::{AsFd, AsRawFd},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
};

use ipckit_core::{MAX_HEADER, SendBytes, TrySendError, Writer};
use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::socket::{Shutdown, shutdown},
};

/// The most bytes a thread writes to another client's socket (see [`Outbox::kick`]).
const KICK_BUDGET: usize = 4096;

use crate::{
    Value,
    protocol::{Answer, Call, Change, Fault, Kind, Op, Reply, Update},
};

pub(crate) type ClientId = u64;

/// A client's outgoing frames and the writing half of its connection. Its own answers are
/// written by its reader thread ([`flush`](Outbox::flush)); what other clients' calls
/// queue (grants, watch events) is written by the thread that queued it if that does not
/// block ([`kick`](Outbox::kick)), else by the client's writer thread.
#[derive(Debug)]
pub(crate) struct Outbox {
    writer: Option<Mutex<Writer>>,
    state: Mutex<OutState>,
    cv: Condvar,
    /// How many watch events may wait here before the watch lags.
    event_cap: usize,
    /// How many frames may wait before the client's requests are no longer read.
    answer_cap: usize,
}

#[derive(Debug, Default)]
struct OutState {
    frames: VecDeque<(Vec<u8>, bool)>,
    events: usize,
    closed: bool,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic under the lock leaves plain data: go on with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Outbox {
    pub(crate) fn new(event_cap: usize, answer_cap: usize, writer: Option<Writer>) -> Self {
        Outbox {
            writer: writer.map(Mutex::new),
            state: Mutex::default(),
            cv: Condvar::new(),
            event_cap,
            answer_cap,
        }
    }

    /// Queues a frame (written by `flush` or `kick`, which wakes the writer thread when it
    /// cannot write); `false` if it is a watch event and the backlog is full.
    fn push(&self, frame: Vec<u8>, event: bool) -> bool {
        let mut s = lock(&self.state);
        if s.closed {
            return true;
        }
        if event {
            if s.events >= self.event_cap {
                return false;
            }
            s.events += 1;
        }
        s.frames.push_back((frame, event));
        true
    }

    pub(crate) fn push_answer(&self, frame: Vec<u8>) {
        self.push(frame, false);
    }

    /// Waits until fewer than `cap` frames wait (the client reads its answers), or the
    /// outbox is closed. Only the client's own reader thread waits here.
    pub(crate) fn wait_room(&self) {
        let mut s = lock(&self.state);
        while s.frames.len() >= self.answer_cap && !s.closed {
            s = self.cv.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Waits until a frame is queued; `false` once closed.
    pub(crate) fn wait_frame(&self) -> bool {
        let mut s = lock(&self.state);
        loop {
            if s.closed {
                return false;
            }
            if !s.frames.is_empty() {
                return true;
            }
            s = self.cv.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The next queued frame, if any. Taken only under the client's writer lock, so that
    /// frames leave in the order they were queued.
    fn try_pop(&self) -> Option<(Vec<u8>, bool)> {
        let mut s = lock(&self.state);
        let (frame, event) = s.frames.pop_front()?;
        if event {
            s.events -= 1;
        }
        if s.frames.len() + 1 >= self.answer_cap {
            // The reader thread may wait for room (`wait_room`).
            self.cv.notify_all();
        }
        Some((frame, event))
    }

    /// Puts back a frame that could not be written yet.
    fn unpop(&self, frame: Vec<u8>, event: bool) {
        let mut s = lock(&self.state);
        if event {
            s.events += 1;
        }
        s.frames.push_front((frame, event));
    }

    /// Ends the client: its connection is shut down, so that its reader thread sees the
    /// end and releases what it held.
    fn fail(&self, w: &Writer) {
        self.close();
        let _ = shutdown(w.as_fd().as_raw_fd(), Shutdown::Both);
    }

    /// Writes every queued frame, in order, waiting for room; `false` once the client is
    /// gone. Only the client's own threads call it.
    pub(crate) fn flush(&self) -> bool {
        let Some(writer) = &self.writer else {
            return true;
        };
        let mut w = lock(writer);
        while let Some((frame, _)) = self.try_pop() {
            if w.send_bytes(&frame).is_err() {
                self.fail(&w);
                return false;
            }
        }
        true
    }

    /// Writes what is queued if that needs no waiting (the socket has room, no other
    /// thread is writing); otherwise wakes the client's writer thread to do it. Called by
    /// other clients' threads, which must never wait for this client.
    ///
    /// A frame that is begun is finished whatever it takes, so this writes only while the
    /// socket says it is writable (Linux: a quarter or more of its buffer free, far more
    /// than [`KICK_BUDGET`]) and at most that budget: it never waits.
    fn kick(&self) {
        let Some(Ok(mut w)) = self.writer.as_ref().map(Mutex::try_lock) else {
            self.wake();
            return;
        };
        let mut fds = [PollFd::new(w.as_fd(), PollFlags::POLLOUT)];
        let writable = matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1))
            && fds[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLOUT));
        let mut budget = if writable { KICK_BUDGET } else { 0 };
        while let Some((frame, event)) = self.try_pop() {
            if frame.len() + MAX_HEADER > budget {
                self.unpop(frame, event);
                drop(w);
                self.wake();
                return;
            }
            budget -= frame.len() + MAX_HEADER;
            match w.try_send_bytes(&frame) {
                Ok(()) => {}
                Err(TrySendError::Full(())) => {
                    self.unpop(frame, event);
                    drop(w);
                    self.wake();
                    return;
                }
                Err(_) => {
                    self.fail(&w);
                    return;
                }
            }
        }
    }

    fn wake(&self) {
        let _s = lock(&self.state);
        self.cv.notify_all();
    }

    /// Takes the next queued frame, waiting for one until `deadline`; `None` at the
    /// deadline or once closed. For a client served without a writer (a Python client),
    /// whose thread reads its own answers here.
    pub(crate) fn next_frame(&self, deadline: Option<std::time::Instant>) -> Option<Vec<u8>> {
        let mut s = lock(&self.state);
        loop {
            if let Some((frame, event)) = s.frames.pop_front() {
                if event {
                    s.events -= 1;
                }
                return Some(frame);
            }
            if s.closed {
                return None;
            }
            match deadline {
                None => s = self.cv.wait(s).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    s = self
                        .cv
                        .wait_timeout(s, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
    }

    pub(crate) fn close(&self) {
        lock(&self.state).closed = true;
        self.cv.notify_all();
    }
}

#[derive(Debug)]
struct Watcher {
    client: ClientId,
    watch: u64,
    missed: u64,
}

type Waiters = VecDeque<(ClientId, u64)>;

#[derive(Debug, Clone)]
enum Obj {
    Dict(BTreeMap<Value, Value>),
    List(Vec<Value>),
    Value(Value),
    Lock {
        holder: Option<ClientId>,
        waiters: Waiters,
    },
    Semaphore {
        permits: u64,
        held: HashMap<ClientId, u64>,
        waiters: Waiters,
    },
    Event {
        set: bool,
        waiters: Waiters,
    },
    Queue {
        items: VecDeque<Value>,
        waiters: Waiters,
    },
    /// Held by one thread (`token`) of one client, `count` times.
    RLock {
        holder: Option<(ClientId, u64)>,
        count: u64,
        /// Each waiter's client, call id and thread token.
        waiters: VecDeque<(ClientId, u64, u64)>,
    },
    Barrier {
        parties: u64,
        waiters: Waiters,
    },
    /// A lock, and the callers waiting to be notified (who gave the lock up to wait).
    Condition {
        holder: Option<ClientId>,
        lock_waiters: VecDeque<(ClientId, u64, Regain)>,
        waiting: Waiters,
    },
}

/// Why a caller waits for a condition's lock, and so what it is answered when it gets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Regain {
    /// `acquire`: nothing.
    Acquire,
    /// `wait`, notified: true.
    Notified,
    /// `wait`, timed out: false.
    TimedOut,
}

#[derive(Debug)]
struct Entry {
    name: String,
    kind: Kind,
    types: String,
    seq: u64,
    obj: Obj,
    watchers: Vec<Watcher>,
}

/// Every object of a server, and its clients' outboxes.
#[derive(Debug, Default)]
pub(crate) struct Store {
    names: HashMap<String, u32>,
    objects: Vec<Entry>,
    clients: HashMap<ClientId, Arc<Outbox>>,
    /// Watches with dropped events still to report.
    lagging: bool,
}

type Outcome = Result<(Answer, Vec<Change>), Fault>;

fn encode(reply: &Reply) -> Vec<u8> {
    // Every type on the wire encodes: postcard fails only on unsupported serde shapes.
    postcard::to_stdvec(reply).unwrap_or_default()
}

thread_local! {
    /// The outboxes this thread queued frames in for other clients, under the store lock:
    /// written by [`kick_pending`] once the lock is released.
    static KICKS: RefCell<Vec<Arc<Outbox>>> = const { RefCell::new(Vec::new()) };
}

/// Queues a frame for another client (a grant, a wake-up, a watch event), to be written
/// by [`kick_pending`] after the store lock; `false` if a watch event found no room.
fn push_other(out: &Arc<Outbox>, frame: Vec<u8>, event: bool) -> bool {
    let queued = out.push(frame, event);
    if queued {
        KICKS.with(|k| {
            let mut k = k.borrow_mut();
            if !k.iter().any(|o| Arc::ptr_eq(o, out)) {
                k.push(Arc::clone(out));
            }
        });
    }
    queued
}

/// Writes what this thread queued for other clients while it held the store lock: called
/// after every use of the store (see `server::with_store`).
pub(crate) fn kick_pending() {
    for out in KICKS.with(|k| std::mem::take(&mut *k.borrow_mut())) {
        out.kick();
    }
}

/// Answers call `id` of `client` later (a grant, a wake-up).
fn send(
    clients: &HashMap<ClientId, Arc<Outbox>>,
    client: ClientId,
    id: u64,
    result: Result<Answer, Fault>,
) {
    if let Some(out) = clients.get(&client) {
        push_other(out, encode(&Reply::Done { id, result }), false);
    }
}

/// Answers the call being handled: the client's reader thread sends it.
fn answer(
    clients: &HashMap<ClientId, Arc<Outbox>>,
    client: ClientId,
    id: u64,
    result: Result<Answer, Fault>,
) {
    if let Some(out) = clients.get(&client) {
        out.push_answer(encode(&Reply::Done { id, result }));
    }
}

fn invalid(name: &str, reason: impl Into<String>) -> Fault {
    Fault::Invalid {
        name: name.to_string(),
        reason: reason.into(),
    }
}

fn index(name: &str, i: i64, len: usize, end_ok: bool) -> Result<usize, Fault> {
    let n = i64::try_from(len).unwrap_or(i64::MAX);
    let j = if i < 0 { i + n } else { i };
    let limit = if end_ok { n } else { n - 1 };
    if j < 0 || j > limit {
        return Err(Fault::Index {
            name: name.to_string(),
            index: i,
            len: len as u64,
        });
    }
    usize::try_from(j).map_err(|_| invalid(name, "index out of range"))
}

fn clamp(i: i64, len: usize) -> usize {
    let n = i64::try_from(len).unwrap_or(i64::MAX);
    let j = if i < 0 { (i + n).max(0) } else { i.min(n) };
    usize::try_from(j).unwrap_or(0)
}

/// Applies an atomic update to `cur` (`None`: absent); gives the new value to store (or
/// `None` to leave it) and the answer.
fn update(name: &str, cur: Option<&Value>, op: Update) -> Result<(Option<Value>, Answer), Fault> {
    let arith =
        |a: &Value, b: &Value, f: &dyn Fn(i64, i64) -> Option<i64>, g: &dyn Fn(f64, f64) -> f64| {
            match (a, b) {
                (Value::Int(x), Value::Int(y)) => f(*x, *y)
                    .map(Value::Int)
                    .ok_or_else(|| invalid(name, "integer overflow")),
                (Value::Float(x), Value::Float(y)) => Ok(Value::Float(g(*x, *y))),
                (Value::Int(x), Value::Float(y)) => Ok(Value::Float(g(*x as f64, *y))),
                (Value::Float(x), Value::Int(y)) => Ok(Value::Float(g(*x, *y as f64))),
                _ => Err(invalid(
                    name,
                    format!("cannot combine a {} with a {}", a.kind(), b.kind()),
                )),
            }
        };
    match op {
        Update::Add(by) => {
            let zero = match by {
                Value::Float(_) => Value::Float(0.0),
                _ => Value::Int(0),
            };
            let new = arith(
                cur.unwrap_or(&zero),
                &by,
                &|a, b| a.checked_add(b),
                &|a, b| a + b,
            )?;
            Ok((Some(new.clone()), Answer::Value(new)))
        }
        Update::Min(v) => {
            let new = match cur {
                Some(c) if !less(&v, c) => c.clone(),
                _ => v,
            };
            Ok((Some(new.clone()), Answer::Value(new)))
        }
        Update::Max(v) => {
            let new = match cur {
                Some(c) if !less(c, &v) => c.clone(),
                _ => v,
            };
            Ok((Some(new.clone()), Answer::Value(new)))
        }
        Update::SetIfAbsent(v) => match cur {
            Some(c) => Ok((None, Answer::Value(c.clone()))),
            None => Ok((Some(v.clone()), Answer::Value(v))),
        },
        Update::CompareAndSwap { expected, new } => {
            let now = cur.cloned().unwrap_or(Value::None);
            if now == expected {
                Ok((
                    Some(new.clone()),
                    Answer::Many(vec![Value::Bool(true), new]),
                ))
            } else {
                Ok((None, Answer::Many(vec![Value::Bool(false), now])))
            }
        }
        Update::Push(v) => {
            let mut list = match cur {
                None | Some(Value::None) => Vec::new(),
                Some(Value::List(l)) => l.clone(),
                Some(other) => {
                    return Err(invalid(name, format!("cannot push to a {}", other.kind())));
                }
            };
            list.push(v);
            let n = list.len() as u64;
            Ok((Some(Value::List(list)), Answer::Len(n)))
        }
    }
}

/// `a < b`, numbers compared as numbers across int and float.
fn less(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Int(x), Value::Float(y)) => (*x as f64) < *y,
        (Value::Float(x), Value::Int(y)) => *x < (*y as f64),
        _ => a < b,
    }
}

impl Store {
    /// The handle of the object named `name`, if there is one.
    pub(crate) fn find(&self, name: &str) -> Option<u32> {
        self.names.get(name).copied()
    }

    /// The kind and name of the object with handle `h`, and a barrier's parties.
    pub(crate) fn describe(&self, h: u32) -> Option<(Kind, &str, u64)> {
        let e = self.objects.get(h as usize)?;
        let parties = match e.obj {
            Obj::Barrier { parties, .. } => parties,
            _ => 0,
        };
        Some((e.kind, &e.name, parties))
    }

    /// The parties waiting at barrier `h`; with `release`, they are sent away (their wait
    /// fails as cancelled: Python's `BrokenBarrierError`).
    pub(crate) fn barrier_waiting(&mut self, h: u32, release: bool) -> usize {
        let Some(Entry {
            obj: Obj::Barrier { waiters, .. },
            ..
        }) = self.objects.get_mut(h as usize)
        else {
            return 0;
        };
        let n = waiters.len();
        if release {
            for (c, id) in waiters.drain(..) {
                send(&self.clients, c, id, Err(Fault::Cancelled));
            }
        }
        n
    }

    /// The free permits of semaphore `h`.
    pub(crate) fn semaphore_free(&self, h: u32) -> u64 {
        match self.objects.get(h as usize) {
            Some(Entry {
                obj: Obj::Semaphore { permits, .. },
                ..
            }) => *permits,
            _ => 0,
        }
    }

    /// How many objects the server holds.
    pub(crate) fn len(&self) -> usize {
        self.objects.len()
    }

    pub(crate) fn add_client(&mut self, client: ClientId, out: Arc<Outbox>) {
        self.clients.insert(client, out);
    }

    /// Handles one request of `client`: its answer (now, or later for a blocked call)
    /// goes to the client's outbox. `Err` is a request that makes no sense.
    pub(crate) fn call(&mut self, client: ClientId, id: u64, op: Op) {
        let result = match op {
            Op::Open {
                name,
                kind,
                types,
                init,
            } => self.open(name, kind, types, init).map(Answer::Handle),
            Op::On { obj, call } => {
                let Some(entry) = self.objects.get_mut(obj as usize) else {
                    return answer(
                        &self.clients,
                        client,
                        id,
                        Err(Fault::Protocol(format!("no object with handle {obj}"))),
                    );
                };
                if call.blocks() {
                    match Self::blocking(entry, &self.clients, client, id, call) {
                        Some(r) => r,
                        None => return,
                    }
                } else {
                    match apply(entry, &self.clients, client, call) {
                        Ok((answer, changes)) => {
                            self.emit(obj, changes);
                            Ok(answer)
                        }
                        Err(f) => Err(f),
                    }
                }
            }
            Op::Transaction(calls) => self.transaction(client, calls),
            Op::Watch { obj } => match self.objects.get_mut(obj as usize) {
                None => Err(Fault::Protocol(format!("no object with handle {obj}"))),
                Some(e) => match snapshot(e) {
                    Some(value) => {
                        e.watchers.push(Watcher {
                            client,
                            watch: id,
                            missed: 0,
                        });
                        Ok(Answer::Snapshot { seq: e.seq, value })
                    }
                    None => Err(invalid(
                        &e.name,
                        format!("a {} cannot be watched", e.kind.name()),
                    )),
                },
            },
            Op::Unwatch { obj, watch } => {
                if let Some(e) = self.objects.get_mut(obj as usize) {
                    e.watchers
                        .retain(|w| !(w.client == client && w.watch == watch));
                }
                Ok(Answer::Unit)
            }
        };
        answer(&self.clients, client, id, result);
    }

    fn open(&mut self, name: String, kind: Kind, types: String, init: u64) -> Result<u32, Fault> {
        if let Some(&h) = self.names.get(&name) {
            let e = &self.objects[h as usize];
            if e.kind != kind || e.types != types {
                return Err(Fault::WrongType {
                    name,
                    expected: format!("{}<{types}>", kind.name()),
                    found: format!("{}<{}>", e.kind.name(), e.types),
                });
            }
            return Ok(h);
        }
        let obj = match kind {
            Kind::Dict => Obj::Dict(BTreeMap::new()),
            Kind::List => Obj::List(Vec::new()),
            Kind::Value => Obj::Value(Value::None),
            Kind::Lock => Obj::Lock {
                holder: None,
                waiters: VecDeque::new(),
            },
            Kind::Semaphore => Obj::Semaphore {
                permits: init,
                held: HashMap::new(),
                waiters: VecDeque::new(),
            },
            Kind::Event => Obj::Event {
                set: false,
                waiters: VecDeque::new(),
            },
            Kind::Queue => Obj::Queue {
                items: VecDeque::new(),
                waiters: VecDeque::new(),
            },
            Kind::RLock => Obj::RLock {
                holder: None,
                count: 0,
                waiters: VecDeque::new(),
            },
            Kind::Barrier => {
                if init == 0 {
                    return Err(invalid(&name, "a barrier needs at least one party"));
                }
                Obj::Barrier {
                    parties: init,
                    waiters: VecDeque::new(),
                }
            }
            Kind::Namespace => Obj::Dict(BTreeMap::new()),
            Kind::Condition => Obj::Condition {
                holder: None,
                lock_waiters: VecDeque::new(),
                waiting: VecDeque::new(),
            },
        };
        let h = u32::try_from(self.objects.len())
            .map_err(|_| Fault::Protocol("too many objects".into()))?;
        self.names.insert(name.clone(), h);
        self.objects.push(Entry {
            name,
            kind,
            types,
            seq: 0,
            obj,
            watchers: Vec::new(),
        });
        Ok(h)
    }

    /// A call that may wait: `None` if it waits (answered later).
    fn blocking(
        e: &mut Entry,
        clients: &HashMap<ClientId, Arc<Outbox>>,
        client: ClientId,
        id: u64,
        call: Call,
    ) -> Option<Result<Answer, Fault>> {
        match (&mut e.obj, call) {
            (Obj::Lock { holder, waiters }, Call::Acquire) => {
                if holder.is_none() {
                    *holder = Some(client);
                    return Some(Ok(Answer::Unit));
                }
                waiters.push_back((client, id));
                None
            }
            (
                Obj::Semaphore {
                    permits,
                    held,
                    waiters,
                },
                Call::Acquire,
            ) => {
                if *permits > 0 {
                    *permits -= 1;
                    *held.entry(client).or_default() += 1;
                    return Some(Ok(Answer::Unit));
                }
                waiters.push_back((client, id));
                None
            }
            (Obj::Event { set, waiters }, Call::Wait) => {
                if *set {
                    return Some(Ok(Answer::Unit));
                }
                waiters.push_back((client, id));
                None
            }
            (Obj::Queue { items, waiters }, Call::Take) => {
                if let Some(v) = items.pop_front() {
                    return Some(Ok(Answer::Value(v)));
                }
                waiters.push_back((client, id));
                None
            }
            (
                Obj::RLock {
                    holder,
                    count,
                    waiters,
                },
                Call::AcquireAs(token),
            ) => {
                match holder {
                    None => {
                        *holder = Some((client, token));
                        *count = 1;
                    }
                    Some(h) if *h == (client, token) => *count += 1,
                    Some(_) => {
                        waiters.push_back((client, id, token));
                        return None;
                    }
                }
                Some(Ok(Answer::Unit))
            }
            (Obj::Barrier { parties, waiters }, Call::Wait) => {
                if waiters.len() as u64 + 1 < *parties {
                    waiters.push_back((client, id));
                    return None;
                }
                // The last party: everyone goes, each told its place (0 for the first).
                for (place, (c, wid)) in waiters.drain(..).enumerate() {
                    send(clients, c, wid, Ok(Answer::Len(place as u64)));
                }
                Some(Ok(Answer::Len(*parties - 1)))
            }
            (
                Obj::Condition {
                    holder,
                    lock_waiters,
                    ..
                },
                Call::Acquire,
            ) => {
                if holder.is_none() {
                    *holder = Some(client);
                    return Some(Ok(Answer::Unit));
                }
                lock_waiters.push_back((client, id, Regain::Acquire));
                None
            }
            (
                Obj::Condition {
                    holder,
                    lock_waiters,
                    waiting,
                },
                Call::Wait,
            ) => {
                if *holder != Some(client) {
                    return Some(Err(invalid(&e.name, "wait without holding its lock")));
                }
                *holder = None;
                waiting.push_back((client, id));
                grant_condition(holder, lock_waiters, clients);
                None
            }
            (_, call) => Some(Err(wrong_call(e, &call))),
        }
    }

    fn transaction(&mut self, client: ClientId, calls: Vec<(u32, Call)>) -> Result<Answer, Fault> {
        let mut saved: Vec<(u32, Obj)> = Vec::new();
        let mut answers = Vec::new();
        let mut changes: Vec<(u32, Vec<Change>)> = Vec::new();
        let mut failed = None;
        for (obj, call) in calls {
            let Some(e) = self.objects.get_mut(obj as usize) else {
                failed = Some(Fault::Protocol(format!("no object with handle {obj}")));
                break;
            };
            if !matches!(
                e.kind,
                Kind::Dict | Kind::List | Kind::Value | Kind::Namespace
            ) {
                failed = Some(invalid(
                    &e.name,
                    "a transaction takes only dict, list and value calls",
                ));
                break;
            }
            if !saved.iter().any(|(o, _)| *o == obj) {
                saved.push((obj, e.obj.clone()));
            }
            match apply(e, &self.clients, client, call) {
                Ok((a, c)) => {
                    answers.push(a);
                    changes.push((obj, c));
                }
                Err(f) => {
                    failed = Some(f);
                    break;
                }
            }
        }
        if let Some(f) = failed {
            for (obj, o) in saved {
                self.objects[obj as usize].obj = o;
            }
            return Err(f);
        }
        for (obj, c) in changes {
            self.emit(obj, c);
        }
        Ok(Answer::Results(answers))
    }

    /// Numbers and sends the changes of one object to its watchers.
    fn emit(&mut self, obj: u32, changes: Vec<Change>) {
        let Some(e) = self.objects.get_mut(obj as usize) else {
            return;
        };
        for change in changes {
            e.seq += 1;
            if e.watchers.is_empty() {
                continue;
            }
            for w in &mut e.watchers {
                let Some(out) = self.clients.get(&w.client) else {
                    continue;
                };
                if w.missed > 0 {
                    let lag = encode(&Reply::Lagged {
                        watch: w.watch,
                        missed: w.missed,
                    });
                    if push_other(out, lag, true) {
                        w.missed = 0;
                    }
                }
                let frame = encode(&Reply::Changed {
                    watch: w.watch,
                    seq: e.seq,
                    change: change.clone(),
                });
                if w.missed > 0 || !push_other(out, frame, true) {
                    w.missed += 1;
                    self.lagging = true;
                }
            }
        }
    }

    /// Tells lagging watchers (whose events were dropped) that they lag, once their
    /// outbox has room: called on a timer, so a watcher hears of it without a new change.
    pub(crate) fn report_lag(&mut self) {
        if !self.lagging {
            return;
        }
        let mut still = false;
        for e in &mut self.objects {
            for w in &mut e.watchers {
                if w.missed == 0 {
                    continue;
                }
                let Some(out) = self.clients.get(&w.client) else {
                    continue;
                };
                let lag = encode(&Reply::Lagged {
                    watch: w.watch,
                    missed: w.missed,
                });
                if push_other(out, lag, true) {
                    w.missed = 0;
                } else {
                    still = true;
                }
            }
        }
        self.lagging = still;
    }

    /// Withdraws the blocked call `id` of `client`, if it still waits.
    pub(crate) fn cancel(&mut self, client: ClientId, id: u64) {
        for e in &mut self.objects {
            if let Obj::Condition {
                holder,
                lock_waiters,
                waiting,
            } = &mut e.obj
            {
                if let Some(at) = waiting.iter().position(|w| *w == (client, id)) {
                    // A timed-out wait takes the lock back before it returns (false).
                    waiting.remove(at);
                    lock_waiters.push_back((client, id, Regain::TimedOut));
                    grant_condition(holder, lock_waiters, &self.clients);
                    return;
                }
                if let Some(at) = lock_waiters
                    .iter()
                    .position(|w| *w == (client, id, Regain::Acquire))
                {
                    lock_waiters.remove(at);
                    send(&self.clients, client, id, Err(Fault::Cancelled));
                    return;
                }
                continue;
            }
            if let Obj::RLock { waiters, .. } = &mut e.obj {
                if let Some(at) = waiters.iter().position(|w| (w.0, w.1) == (client, id)) {
                    waiters.remove(at);
                    send(&self.clients, client, id, Err(Fault::Cancelled));
                    return;
                }
                continue;
            }
            let waiters = match &mut e.obj {
                Obj::Lock { waiters, .. }
                | Obj::Semaphore { waiters, .. }
                | Obj::Event { waiters, .. }
                | Obj::Queue { waiters, .. }
                | Obj::Barrier { waiters, .. } => waiters,
                _ => continue,
            };
            if let Some(at) = waiters.iter().position(|w| *w == (client, id)) {
                waiters.remove(at);
                send(&self.clients, client, id, Err(Fault::Cancelled));
                return;
            }
        }
    }

    /// Forgets a client that left or died: its locks and permits are released (and given
    /// to the next waiters), its waits and watches dropped.
    pub(crate) fn remove_client(&mut self, client: ClientId) {
        self.clients.remove(&client);
        for e in &mut self.objects {
            e.watchers.retain(|w| w.client != client);
            match &mut e.obj {
                Obj::Lock { holder, waiters } => {
                    waiters.retain(|w| w.0 != client);
                    if *holder == Some(client) {
                        tracing::info!(lock = %e.name, client, "lock released: its holder left");
                        *holder = None;
                        grant_lock(holder, waiters, &self.clients);
                    }
                }
                Obj::Semaphore {
                    permits,
                    held,
                    waiters,
                } => {
                    waiters.retain(|w| w.0 != client);
                    if let Some(n) = held.remove(&client) {
                        *permits += n;
                        grant_permits(permits, held, waiters, &self.clients);
                    }
                }
                Obj::RLock {
                    holder,
                    count,
                    waiters,
                } => {
                    waiters.retain(|w| w.0 != client);
                    if holder.is_some_and(|h| h.0 == client) {
                        tracing::info!(lock = %e.name, client, "rlock released: its holder left");
                        *holder = None;
                        *count = 0;
                        grant_rlock(holder, count, waiters, &self.clients);
                    }
                }
                Obj::Condition {
                    holder,
                    lock_waiters,
                    waiting,
                } => {
                    waiting.retain(|w| w.0 != client);
                    lock_waiters.retain(|w| w.0 != client);
                    if *holder == Some(client) {
                        tracing::info!(lock = %e.name, client, "condition's lock released: its holder left");
                        *holder = None;
                        grant_condition(holder, lock_waiters, &self.clients);
                    }
                }
                // A party that leaves frees its place: the barrier waits for another.
                Obj::Event { waiters, .. }
                | Obj::Queue { waiters, .. }
                | Obj::Barrier { waiters, .. } => {
                    waiters.retain(|w| w.0 != client);
                }
                _ => {}
            }
        }
    }
}

fn grant_lock(
    holder: &mut Option<ClientId>,
    waiters: &mut Waiters,
    clients: &HashMap<ClientId, Arc<Outbox>>,
) {
    while holder.is_none() {
        let Some((c, id)) = waiters.pop_front() else {
            return;
        };
        if clients.contains_key(&c) {
            *holder = Some(c);
            send(clients, c, id, Ok(Answer::Unit));
        }
    }
}

fn grant_condition(
    holder: &mut Option<ClientId>,
    lock_waiters: &mut VecDeque<(ClientId, u64, Regain)>,
    clients: &HashMap<ClientId, Arc<Outbox>>,
) {
    while holder.is_none() {
        let Some((c, id, why)) = lock_waiters.pop_front() else {
            return;
        };
        if clients.contains_key(&c) {
            *holder = Some(c);
            let answer = match why {
                Regain::Acquire => Answer::Unit,
                Regain::Notified => Answer::Bool(true),
                Regain::TimedOut => Answer::Bool(false),
            };
            send(clients, c, id, Ok(answer));
        }
    }
}

fn grant_rlock(
    holder: &mut Option<(ClientId, u64)>,
    count: &mut u64,
    waiters: &mut VecDeque<(ClientId, u64, u64)>,
    clients: &HashMap<ClientId, Arc<Outbox>>,
) {
    while holder.is_none() {
        let Some((c, id, token)) = waiters.pop_front() else {
            return;
        };
        if clients.contains_key(&c) {
            *holder = Some((c, token));
            *count = 1;
            send(clients, c, id, Ok(Answer::Unit));
        }
    }
}

fn grant_permits(
    permits: &mut u64,
    held: &mut HashMap<ClientId, u64>,
    waiters: &mut Waiters,
    clients: &HashMap<ClientId, Arc<Outbox>>,
) {
    while *permits > 0 {
        let Some((c, id)) = waiters.pop_front() else {
            return;
        };
        if clients.contains_key(&c) {
            *permits -= 1;
            *held.entry(c).or_default() += 1;
            send(clients, c, id, Ok(Answer::Unit));
        }
    }
}

fn wrong_call(e: &Entry, call: &Call) -> Fault {
    invalid(
        &e.name,
        format!("a {} has no operation {call:?}", e.kind.name()),
    )
}

fn snapshot(e: &Entry) -> Option<Value> {
    match &e.obj {
        Obj::Dict(d) => Some(Value::Map(
            d.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        )),
        Obj::List(l) => Some(Value::List(l.clone())),
        Obj::Value(v) => Some(v.clone()),
        Obj::Event { set, .. } => Some(Value::Bool(*set)),
        _ => None,
    }
}

/// Applies a call that never waits.
fn apply(
    e: &mut Entry,
    clients: &HashMap<ClientId, Arc<Outbox>>,
    client: ClientId,
    call: Call,
) -> Outcome {
    let name = e.name.as_str();
    let no_change = |a: Answer| Ok((a, Vec::new()));
    if matches!(call, Call::Snapshot) {
        return match snapshot(e) {
            Some(value) => no_change(Answer::Snapshot { seq: e.seq, value }),
            None => Err(wrong_call(e, &call)),
        };
    }
    match (&mut e.obj, call) {
        (Obj::Dict(d), Call::Get(k)) => no_change(Answer::Maybe(d.get(&k).cloned())),
        (Obj::Dict(d), Call::Insert(k, v)) => {
            let old = d.insert(k.clone(), v.clone());
            Ok((Answer::Maybe(old), vec![Change::Set { key: k, value: v }]))
        }
        (Obj::Dict(d), Call::Remove(k)) => match d.remove(&k) {
            Some(v) => Ok((Answer::Maybe(Some(v)), vec![Change::Removed { key: k }])),
            None => no_change(Answer::Maybe(None)),
        },
        (Obj::Dict(d), Call::Contains(k)) => no_change(Answer::Bool(d.contains_key(&k))),
        (Obj::Dict(d), Call::Len) => no_change(Answer::Len(d.len() as u64)),
        (Obj::Dict(d), Call::Keys) => no_change(Answer::Many(d.keys().cloned().collect())),
        (Obj::Dict(d), Call::Values) => no_change(Answer::Many(d.values().cloned().collect())),
        (Obj::Dict(d), Call::Items) => no_change(Answer::Pairs(
            d.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        )),
        (Obj::Dict(d), Call::UpdateMany(pairs)) => {
            let mut changes = Vec::with_capacity(pairs.len());
            for (k, v) in pairs {
                d.insert(k.clone(), v.clone());
                changes.push(Change::Set { key: k, value: v });
            }
            Ok((Answer::Unit, changes))
        }
        (Obj::Dict(d), Call::Clear) => {
            d.clear();
            Ok((Answer::Unit, vec![Change::Cleared]))
        }
        (Obj::Dict(d), Call::GetOrInsert(k, v)) => match d.get(&k) {
            Some(cur) => no_change(Answer::Value(cur.clone())),
            None => {
                d.insert(k.clone(), v.clone());
                Ok((
                    Answer::Value(v.clone()),
                    vec![Change::Set { key: k, value: v }],
                ))
            }
        },
        (Obj::Dict(d), Call::Apply(k, op)) => {
            let (new, answer) = update(name, d.get(&k), op)?;
            match new {
                Some(v) => {
                    d.insert(k.clone(), v.clone());
                    Ok((answer, vec![Change::Set { key: k, value: v }]))
                }
                None => no_change(answer),
            }
        }
        (Obj::List(l), Call::Push(v)) => {
            l.push(v.clone());
            Ok((
                Answer::Len(l.len() as u64),
                vec![Change::Inserted {
                    index: l.len() as u64 - 1,
                    value: v,
                }],
            ))
        }
        (Obj::List(l), Call::Extend(vs)) => {
            let mut changes = Vec::with_capacity(vs.len());
            for v in vs {
                l.push(v.clone());
                changes.push(Change::Inserted {
                    index: l.len() as u64 - 1,
                    value: v,
                });
            }
            Ok((Answer::Len(l.len() as u64), changes))
        }
        (Obj::List(l), Call::Index(i)) => {
            let at = index(name, i, l.len(), false)?;
            no_change(Answer::Value(l[at].clone()))
        }
        (Obj::List(l), Call::SetIndex(i, v)) => {
            let at = index(name, i, l.len(), false)?;
            l[at] = v.clone();
            Ok((
                Answer::Unit,
                vec![Change::Set {
                    key: Value::Int(at as i64),
                    value: v,
                }],
            ))
        }
        (Obj::List(l), Call::InsertAt(i, v)) => {
            let at = clamp(i, l.len());
            l.insert(at, v.clone());
            Ok((
                Answer::Unit,
                vec![Change::Inserted {
                    index: at as u64,
                    value: v,
                }],
            ))
        }
        (Obj::List(l), Call::RemoveAt(i)) => {
            let at = index(name, i, l.len(), false)?;
            let v = l.remove(at);
            Ok((
                Answer::Value(v),
                vec![Change::Removed {
                    key: Value::Int(at as i64),
                }],
            ))
        }
        (Obj::List(l), Call::Pop) => match l.pop() {
            Some(v) => Ok((
                Answer::Maybe(Some(v)),
                vec![Change::Removed {
                    key: Value::Int(l.len() as i64),
                }],
            )),
            None => no_change(Answer::Maybe(None)),
        },
        (Obj::List(l), Call::Slice(a, b)) => {
            let (a, b) = (clamp(a, l.len()), clamp(b, l.len()));
            no_change(Answer::Many(if a < b {
                l[a..b].to_vec()
            } else {
                Vec::new()
            }))
        }
        (Obj::List(l), Call::Len) => no_change(Answer::Len(l.len() as u64)),
        (Obj::List(l), Call::Clear) => {
            l.clear();
            Ok((Answer::Unit, vec![Change::Cleared]))
        }
        (Obj::Value(v), Call::Load) => no_change(Answer::Value(v.clone())),
        (Obj::Value(v), Call::Store(new)) => {
            *v = new.clone();
            Ok((
                Answer::Unit,
                vec![Change::Set {
                    key: Value::None,
                    value: new,
                }],
            ))
        }
        (Obj::Value(v), Call::ApplyValue(op)) => {
            let cur = (*v != Value::None).then_some(&*v);
            let (new, answer) = update(name, cur, op)?;
            match new {
                Some(n) => {
                    *v = n.clone();
                    Ok((
                        answer,
                        vec![Change::Set {
                            key: Value::None,
                            value: n,
                        }],
                    ))
                }
                None => no_change(answer),
            }
        }
        (Obj::Lock { holder, .. }, Call::TryAcquire) => {
            if holder.is_none() {
                *holder = Some(client);
                return no_change(Answer::Bool(true));
            }
            no_change(Answer::Bool(false))
        }
        (Obj::Lock { holder, waiters }, Call::Release) => {
            if *holder != Some(client) {
                return Err(invalid(name, "released by a client that does not hold it"));
            }
            *holder = None;
            grant_lock(holder, waiters, clients);
            no_change(Answer::Unit)
        }
        (Obj::Condition { holder, .. }, Call::TryAcquire) => {
            if holder.is_none() {
                *holder = Some(client);
                return no_change(Answer::Bool(true));
            }
            no_change(Answer::Bool(false))
        }
        (
            Obj::Condition {
                holder,
                lock_waiters,
                ..
            },
            Call::Release,
        ) => {
            if *holder != Some(client) {
                return Err(invalid(name, "released by a client that does not hold it"));
            }
            *holder = None;
            grant_condition(holder, lock_waiters, clients);
            no_change(Answer::Unit)
        }
        (
            Obj::Condition {
                holder,
                lock_waiters,
                waiting,
            },
            Call::Notify(n),
        ) => {
            if *holder != Some(client) {
                return Err(invalid(name, "notify without holding its lock"));
            }
            let k = waiting.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            for (c, id) in waiting.drain(..k) {
                lock_waiters.push_back((c, id, Regain::Notified));
            }
            no_change(Answer::Len(k as u64))
        }
        (Obj::RLock { holder, count, .. }, Call::TryAcquireAs(token)) => match holder {
            None => {
                *holder = Some((client, token));
                *count = 1;
                no_change(Answer::Bool(true))
            }
            Some(h) if *h == (client, token) => {
                *count += 1;
                no_change(Answer::Bool(true))
            }
            Some(_) => no_change(Answer::Bool(false)),
        },
        (
            Obj::RLock {
                holder,
                count,
                waiters,
            },
            Call::ReleaseAs(token),
        ) => {
            if *holder != Some((client, token)) {
                return Err(invalid(name, "released by a thread that does not hold it"));
            }
            *count -= 1;
            if *count == 0 {
                *holder = None;
                grant_rlock(holder, count, waiters, clients);
            }
            no_change(Answer::Unit)
        }
        (Obj::Semaphore { permits, held, .. }, Call::TryAcquire) => {
            if *permits > 0 {
                *permits -= 1;
                *held.entry(client).or_default() += 1;
                return no_change(Answer::Bool(true));
            }
            no_change(Answer::Bool(false))
        }
        (
            Obj::Semaphore {
                permits,
                held,
                waiters,
            },
            Call::Release,
        ) => {
            match held.get_mut(&client) {
                Some(n) if *n > 1 => *n -= 1,
                Some(_) => {
                    held.remove(&client);
                }
                // A permit released by a process that took none: it adds one, as
                // Python's Semaphore does.
                None => {}
            }
            *permits += 1;
            grant_permits(permits, held, waiters, clients);
            no_change(Answer::Unit)
        }
        (Obj::Event { set, waiters }, Call::Set) => {
            *set = true;
            for (c, id) in waiters.drain(..) {
                send(clients, c, id, Ok(Answer::Unit));
            }
            Ok((
                Answer::Unit,
                vec![Change::Set {
                    key: Value::None,
                    value: Value::Bool(true),
                }],
            ))
        }
        (Obj::Event { set, .. }, Call::Unset) => {
            *set = false;
            Ok((
                Answer::Unit,
                vec![Change::Set {
                    key: Value::None,
                    value: Value::Bool(false),
                }],
            ))
        }
        (Obj::Event { set, .. }, Call::IsSet) => no_change(Answer::Bool(*set)),
        (Obj::Queue { items, waiters }, Call::Put(v)) => {
            while let Some((c, id)) = waiters.pop_front() {
                if clients.contains_key(&c) {
                    send(clients, c, id, Ok(Answer::Value(v)));
                    return no_change(Answer::Unit);
                }
            }
            items.push_back(v);
            no_change(Answer::Unit)
        }
        (Obj::Queue { items, .. }, Call::TryTake) => no_change(Answer::Maybe(items.pop_front())),
        (Obj::Queue { items, .. }, Call::Len) => no_change(Answer::Len(items.len() as u64)),
        (_, call) => Err(wrong_call(e, &call)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{Outbox, Store};
    use crate::protocol::{Answer, Call, Fault, Kind, Op, Reply};

    fn answers(out: &Outbox) -> Vec<Result<Answer, Fault>> {
        let mut got = Vec::new();
        let mut s = super::lock(&out.state);
        while let Some((frame, _)) = s.frames.pop_front() {
            if let Ok(Reply::Done { result, .. }) = postcard::from_bytes(&frame) {
                got.push(result);
            }
        }
        got
    }

    #[test]
    fn unknown_objects_and_operations_are_refused() {
        let mut store = Store::default();
        let out = Arc::new(Outbox::new(8, 64, None));
        store.add_client(1, Arc::clone(&out));
        store.call(
            1,
            1,
            Op::On {
                obj: 99,
                call: Call::Len,
            },
        );
        store.call(
            1,
            2,
            Op::Open {
                name: "q".into(),
                kind: Kind::Queue,
                types: "i32".into(),
                init: 0,
            },
        );
        store.call(
            1,
            3,
            Op::On {
                obj: 0,
                call: Call::Keys,
            },
        );
        store.call(1, 4, Op::Watch { obj: 0 });
        let got = answers(&out);
        assert!(matches!(got[0], Err(Fault::Protocol(_))));
        assert!(matches!(got[1], Ok(Answer::Handle(0))));
        assert!(matches!(&got[2], Err(Fault::Invalid { name, .. }) if name == "q"));
        assert!(matches!(got[3], Err(Fault::Invalid { .. })));
    }

    #[test]
    fn a_lock_released_by_a_leaving_client_goes_to_the_next_waiter() {
        let mut store = Store::default();
        let (a, b) = (
            Arc::new(Outbox::new(8, 64, None)),
            Arc::new(Outbox::new(8, 64, None)),
        );
        store.add_client(1, Arc::clone(&a));
        store.add_client(2, Arc::clone(&b));
        let open = || Op::Open {
            name: "l".into(),
            kind: Kind::Lock,
            types: String::new(),
            init: 0,
        };
        store.call(1, 1, open());
        store.call(2, 1, open());
        store.call(
            1,
            2,
            Op::On {
                obj: 0,
                call: Call::Acquire,
            },
        );
        store.call(
            2,
            2,
            Op::On {
                obj: 0,
                call: Call::Acquire,
            },
        );
        assert_eq!(answers(&b).len(), 1, "b waits");
        store.remove_client(1);
        assert!(matches!(answers(&b)[..], [Ok(Answer::Unit)]));
    }
}
