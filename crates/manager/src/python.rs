//! Python's `multiprocessing.managers` protocol, served beside ipckit's own: a
//! `BaseManager`/`SyncManager` client reaches the same objects as the Rust proxies.
//!
//! A Python connection carries pickled `(ident, method, args, kwds)` requests and gets
//! `('#RETURN', value)`, `('#ERROR', exception)`, `('#TRACEBACK', text)` or
//! `('#PROXY', (exposed, token))`. Each connection is its own client of the store (Python
//! gives each thread its own connection), so a lock is held by the thread that took it
//! and given back when that connection ends.
//!
//! Python methods the store has no call for are made of store calls here. Those that read
//! a list and write it back (`sort`, `reverse`, `remove`, slice assignment and `del`,
//! `*=`; `popitem`) run under one hold of the store's lock ([`Tx`]), so no other client's
//! call comes between the read and the write, as in Python's own single-threaded object.
//! What Python's `queue.Queue` has beyond the store's queue (a `maxsize` and the
//! unfinished tasks `join` waits for) is kept here per queue, counting what Python
//! clients put; a full queue's `put` and a `join` wait on a condition variable, woken by
//! Python's `get` and `task_done` and looking again every [`PROBE`] (a Rust client's
//! `get` wakes no one here).

use std::{
    cmp::Ordering as Order,
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ipckit_core::{Reader, RecvBytes, SendBytes, Writer};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::{
    Value,
    pickle::{Pickle, dumps, loads},
    protocol::{Answer, Call, Fault, Kind, Op, Reply},
    store::{ClientId, Outbox, Store, kick_pending, lock},
};

/// What the Python side keeps beyond the store: iterators handed out by `__iter__`, the
/// bound and unfinished tasks of queues, the type codes of arrays.
#[derive(Debug, Default)]
pub(crate) struct PyState {
    iters: Mutex<HashMap<String, VecDeque<Value>>>,
    next: AtomicU64,
    queues: Mutex<HashMap<u32, QueueState>>,
    /// Notified when a queue's unfinished tasks reach zero or a Python client takes an
    /// item (room for a bounded put).
    queue_changed: Condvar,
    arrays: Mutex<HashMap<u32, String>>,
    /// The initial value of each `BoundedSemaphore`.
    bounded: Mutex<HashMap<u32, u64>>,
    /// Barriers broken by `abort` (until `reset`).
    broken: Mutex<HashSet<u32>>,
}

/// What Python's `queue.Queue` has beyond the store's queue: a bound on what Python
/// clients put (0: none), and the items Python clients put that no `task_done` has
/// answered yet (what `join` waits for).
#[derive(Debug, Default)]
struct QueueState {
    maxsize: u64,
    unfinished: u64,
    /// How many items Python clients took: a full queue's `put` waits for it to change.
    taken: u64,
}

/// What a Python connection needs of its server.
pub(crate) struct Ctx<'a> {
    pub(crate) store: &'a Mutex<Store>,
    pub(crate) stop: &'a AtomicBool,
    pub(crate) py: &'a PyState,
    pub(crate) client: ClientId,
    pub(crate) out: Arc<Outbox>,
    pub(crate) address: String,
}

/// How long a blocked call waits between looks at whether its Python client is gone.
const PROBE: Duration = Duration::from_millis(100);

enum Reply2 {
    Return(Pickle),
    Error(Pickle),
    Traceback(String),
    Proxy(Vec<&'static str>, String, String),
}

use Reply2::{Error as PyErr, Return, Traceback};

/// The client is gone (its connection ended while a call waited).
struct Gone;

fn exc(name: &str, args: Vec<Pickle>) -> Reply2 {
    PyErr(Pickle::call("builtins", name, args))
}

fn msg(name: &str, text: impl Into<String>) -> Reply2 {
    exc(name, vec![Pickle::Str(text.into())])
}

/// Python's value as the manager's [`Value`]; an int beyond 64 bits is an error, what
/// is not plain data is kept as its pickle.
fn to_value(p: &Pickle) -> Result<Value, Reply2> {
    Ok(match p {
        Pickle::None => Value::None,
        Pickle::Bool(b) => Value::Bool(*b),
        Pickle::Int(i) => Value::Int(*i),
        Pickle::BigInt(_) => {
            return Err(msg(
                "OverflowError",
                "the ipckit manager holds ints of at most 64 bits",
            ));
        }
        Pickle::Float(x) => Value::Float(*x),
        Pickle::Str(s) => Value::Str(s.clone()),
        Pickle::Bytes(b) => Value::Bytes(b.clone()),
        Pickle::List(v) | Pickle::Tuple(v) => {
            Value::List(v.iter().map(to_value).collect::<Result<_, _>>()?)
        }
        Pickle::Dict(v) => Value::Map(
            v.iter()
                .map(|(k, x)| Ok((to_value(k)?, to_value(x)?)))
                .collect::<Result<_, _>>()?,
        ),
        other => Value::Python(dumps(other)),
    })
}

/// The manager's [`Value`] as Python's.
fn from_value(v: &Value) -> Pickle {
    match v {
        Value::None => Pickle::None,
        Value::Bool(b) => Pickle::Bool(*b),
        Value::Int(i) => Pickle::Int(*i),
        Value::Float(x) => Pickle::Float(*x),
        Value::Str(s) => Pickle::Str(s.clone()),
        Value::Bytes(b) => Pickle::Bytes(b.clone()),
        Value::List(v) => Pickle::List(v.iter().map(from_value).collect()),
        Value::Map(v) => Pickle::Dict(
            v.iter()
                .map(|(k, x)| (from_value(k), from_value(x)))
                .collect(),
        ),
        Value::Python(b) => loads(b).unwrap_or_else(|_| Pickle::Bytes(b.clone())),
    }
}

/// Python's `repr` of a value, for `str(proxy)`.
fn repr(v: &Value) -> String {
    match v {
        Value::None => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Int(i) => i.to_string(),
        Value::Float(x) => format!("{x:?}"),
        Value::Str(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        Value::Bytes(b) => format!("b'{}'", b.escape_ascii()),
        Value::List(v) => format!("[{}]", v.iter().map(repr).collect::<Vec<_>>().join(", ")),
        Value::Map(v) => format!(
            "{{{}}}",
            v.iter()
                .map(|(k, x)| format!("{}: {}", repr(k), repr(x)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Python(b) => format!("<python object, {} bytes>", b.len()),
    }
}

const DICT: &[&str] = &[
    "__contains__",
    "__delitem__",
    "__getitem__",
    "__iter__",
    "__len__",
    "__setitem__",
    "clear",
    "copy",
    "get",
    "items",
    "keys",
    "pop",
    "popitem",
    "setdefault",
    "update",
    "values",
];
const LIST: &[&str] = &[
    "__add__",
    "__contains__",
    "__delitem__",
    "__getitem__",
    "__len__",
    "__mul__",
    "__reversed__",
    "__rmul__",
    "__setitem__",
    "append",
    "count",
    "extend",
    "index",
    "insert",
    "pop",
    "remove",
    "reverse",
    "sort",
    "__imul__",
];
const ARRAY: &[&str] = &["__len__", "__getitem__", "__setitem__"];
const VALUE: &[&str] = &["get", "set"];
const ACQUIRER: &[&str] = &["acquire", "release", "__enter__", "__exit__"];
const CONDITION: &[&str] = &[
    "acquire",
    "release",
    "wait",
    "notify",
    "notify_all",
    "__enter__",
    "__exit__",
];
const EVENT: &[&str] = &["is_set", "set", "clear", "wait"];
const QUEUE: &[&str] = &[
    "empty",
    "full",
    "get",
    "get_nowait",
    "join",
    "put",
    "put_nowait",
    "qsize",
    "task_done",
];
const BARRIER: &[&str] = &["__getattribute__", "wait", "abort", "reset"];
const NAMESPACE: &[&str] = &["__getattribute__", "__setattr__", "__delattr__"];
const ITERATOR: &[&str] = &["__next__"];

fn exposed(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Dict => DICT,
        Kind::List => LIST,
        Kind::Value => VALUE,
        Kind::Lock | Kind::RLock | Kind::Semaphore => ACQUIRER,
        Kind::Condition => CONDITION,
        Kind::Event => EVENT,
        Kind::Queue => QUEUE,
        Kind::Barrier => BARRIER,
        Kind::Namespace => NAMESPACE,
    }
}

/// A request's arguments.
struct Args<'p> {
    pos: &'p [Pickle],
    kw: &'p [(Pickle, Pickle)],
}

impl<'p> Args<'p> {
    fn get(&self, i: usize, name: &str) -> Option<&'p Pickle> {
        self.pos.get(i).or_else(|| {
            self.kw
                .iter()
                .find(|(k, _)| matches!(k, Pickle::Str(s) if s == name))
                .map(|(_, v)| v)
        })
    }

    fn need(&self, i: usize, name: &str) -> Result<&'p Pickle, Reply2> {
        self.get(i, name)
            .ok_or_else(|| msg("TypeError", format!("missing argument '{name}'")))
    }

    fn value(&self, i: usize, name: &str) -> Result<Value, Reply2> {
        to_value(self.need(i, name)?)
    }

    fn flag(&self, i: usize, name: &str, default: bool) -> bool {
        match self.get(i, name) {
            None => default,
            Some(Pickle::Bool(b)) => *b,
            Some(Pickle::Int(n)) => *n != 0,
            Some(Pickle::None) => false,
            Some(_) => true,
        }
    }

    /// A `timeout` argument: `None` waits for ever.
    fn timeout(&self, i: usize) -> Result<Option<Duration>, Reply2> {
        match self.get(i, "timeout") {
            None | Some(Pickle::None) => Ok(None),
            Some(Pickle::Int(n)) => Ok(Some(Duration::from_secs(u64::try_from(*n).unwrap_or(0)))),
            Some(Pickle::Float(x)) => Ok(Some(
                Duration::try_from_secs_f64(x.max(0.0)).unwrap_or(Duration::MAX),
            )),
            Some(_) => Err(msg("TypeError", "a timeout must be a number")),
        }
    }

    /// A keyword argument.
    fn keyword(&self, name: &str) -> Option<&'p Pickle> {
        self.kw
            .iter()
            .find(|(k, _)| matches!(k, Pickle::Str(s) if s == name))
            .map(|(_, v)| v)
    }

    fn int(&self, i: usize, name: &str) -> Result<Option<i64>, Reply2> {
        match self.get(i, name) {
            None | Some(Pickle::None) => Ok(None),
            Some(Pickle::Int(n)) => Ok(Some(*n)),
            Some(Pickle::Bool(b)) => Ok(Some(i64::from(*b))),
            Some(_) => Err(msg("TypeError", format!("'{name}' must be an int"))),
        }
    }
}

impl Ctx<'_> {
    /// Serves a Python connection whose first request frame is `first`, until it ends.
    pub(crate) fn serve(mut self, first: Vec<u8>, mut reader: Reader, mut writer: Writer) {
        let mut frame = first;
        let mut next_id = 1u64;
        loop {
            let reply = match loads(&frame) {
                Ok(req) => match self.request(&req, &reader, &mut next_id) {
                    Ok(r) => r,
                    Err(Gone) => break,
                },
                Err(e) => Traceback(format!("ipckit manager: {e}")),
            };
            if writer.send_bytes(&dumps(&self.encode(reply))).is_err() {
                break;
            }
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            if reader.recv_bytes_into(&mut frame).is_err() {
                break;
            }
        }
        self.out.close();
    }

    fn encode(&self, r: Reply2) -> Pickle {
        let (tag, v) = match r {
            Return(v) => ("#RETURN", v),
            PyErr(e) => ("#ERROR", e),
            Traceback(t) => ("#TRACEBACK", Pickle::Str(t)),
            Reply2::Proxy(exposed, typeid, ident) => {
                let token = Pickle::Build(
                    Box::new(Pickle::NewObj(
                        Box::new(Pickle::Global(
                            "multiprocessing.managers".into(),
                            "Token".into(),
                        )),
                        Box::new(Pickle::Tuple(vec![])),
                    )),
                    Box::new(Pickle::Tuple(vec![
                        Pickle::Str(typeid),
                        Pickle::Str(self.address.clone()),
                        Pickle::Str(ident),
                    ])),
                );
                let ex = Pickle::Tuple(exposed.iter().map(|s| Pickle::Str((*s).into())).collect());
                ("#PROXY", Pickle::Tuple(vec![ex, token]))
            }
        };
        Pickle::Tuple(vec![Pickle::Str(tag.into()), v])
    }

    fn request(
        &mut self,
        req: &Pickle,
        reader: &Reader,
        next_id: &mut u64,
    ) -> Result<Reply2, Gone> {
        let Pickle::Tuple(parts) = req else {
            return Ok(Traceback("a request is (ident, method, args, kwds)".into()));
        };
        let [ident, Pickle::Str(method), Pickle::Tuple(pos), kwds] = parts.as_slice() else {
            return Ok(Traceback("a request is (ident, method, args, kwds)".into()));
        };
        let kw: &[(Pickle, Pickle)] = match kwds {
            Pickle::Dict(kw) => kw,
            _ => &[],
        };
        let args = Args { pos, kw };
        let mut call = Caller {
            ctx: self,
            reader,
            next_id,
        };
        match ident {
            Pickle::None => call.server_method(method, &args),
            Pickle::Str(ident) => call.object_method(ident, method, &args),
            _ => Ok(Traceback("an ident is a string".into())),
        }
    }
}

struct Caller<'c, 'a> {
    ctx: &'c Ctx<'a>,
    reader: &'c Reader,
    next_id: &'c mut u64,
}

impl Caller<'_, '_> {
    /// Runs one store call, waiting for its answer (for at most `timeout`, then the call
    /// is withdrawn); `Err(Gone)` if the client's connection ends meanwhile.
    fn call(&mut self, op: Op, timeout: Option<Duration>) -> Result<Result<Answer, Fault>, Gone> {
        let id = *self.next_id;
        *self.next_id += 1;
        lock(self.ctx.store).call(self.ctx.client, id, op);
        kick_pending();
        let deadline = timeout.map(|t| {
            Instant::now()
                .checked_add(t)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1 << 30))
        });
        let mut cancelled = false;
        loop {
            let tick = Instant::now() + PROBE;
            let until = match deadline {
                Some(d) if !cancelled => d.min(tick),
                _ => tick,
            };
            if let Some(frame) = self.ctx.out.next_frame(Some(until)) {
                if let Ok(Reply::Done { id: got, result }) = postcard::from_bytes::<Reply>(&frame) {
                    if got == id {
                        return Ok(result);
                    }
                }
                continue;
            }
            if !cancelled && deadline.is_some_and(|d| Instant::now() >= d) {
                cancelled = true;
                lock(self.ctx.store).cancel(self.ctx.client, id);
                kick_pending();
                continue;
            }
            if self.peer_gone() {
                return Err(Gone);
            }
        }
    }

    /// Whether the client's connection ended (it sends nothing while it waits).
    fn peer_gone(&self) -> bool {
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(self.reader),
            PollFlags::POLLIN,
        )];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1))
    }

    fn on(
        &mut self,
        h: u32,
        call: Call,
        timeout: Option<Duration>,
    ) -> Result<Result<Answer, Fault>, Gone> {
        self.call(Op::On { obj: h, call }, timeout)
    }

    fn server_method(&mut self, method: &str, args: &Args<'_>) -> Result<Reply2, Gone> {
        Ok(match method {
            "dummy" | "incref" | "decref" | "accept_connection" => Return(Pickle::None),
            "create" => match args.pos.split_first() {
                Some((Pickle::Str(typeid), rest)) => {
                    let inner = Args {
                        pos: rest,
                        kw: args.kw,
                    };
                    self.create(typeid, &inner)?
                }
                _ => Traceback("create needs a typeid".into()),
            },
            "get_methods" => match args.get(0, "token") {
                Some(Pickle::Build(_, state)) => match state.as_ref() {
                    Pickle::Tuple(t) => match t.get(2) {
                        Some(Pickle::Str(ident)) => match self.resolve(ident) {
                            Some((h, kind)) => Return(names(&auto_exposed(self.exposed(h, kind)))),
                            None => Traceback(format!("KeyError: {ident:?}")),
                        },
                        _ => Traceback("not a token".into()),
                    },
                    _ => Traceback("not a token".into()),
                },
                _ => Traceback("get_methods needs a token".into()),
            },
            "shutdown" => {
                self.ctx.stop.store(true, Ordering::SeqCst);
                Return(Pickle::None)
            }
            "number_of_objects" => Return(Pickle::Int(lock(self.ctx.store).len() as i64)),
            "debug_info" => Return(Pickle::Str(format!(
                "ipckit manager: {} objects",
                lock(self.ctx.store).len()
            ))),
            other => Traceback(format!("AssertionError: '{other}' unrecognized")),
        })
    }

    /// Whether object `h` was made by a `SyncManager` client (whose proxies know the
    /// typeid "Iterator"), not opened by name.
    fn made_by_sync_manager(&self, h: u32) -> bool {
        lock(self.ctx.store)
            .describe(h)
            .is_some_and(|(_, name, _)| name.starts_with("python:"))
    }

    /// The methods a Python proxy of object `h` calls.
    fn exposed(&self, h: u32, kind: Kind) -> &'static [&'static str] {
        if kind == Kind::List && lock(&self.ctx.py.arrays).contains_key(&h) {
            ARRAY
        } else {
            exposed(kind)
        }
    }

    /// The store handle and kind of an ident.
    fn resolve(&self, ident: &str) -> Option<(u32, Kind)> {
        let h = u32::from_str_radix(ident, 16).ok()?;
        let st = lock(self.ctx.store);
        st.describe(h).map(|(k, _, _)| (h, k))
    }

    fn create(&mut self, typeid: &str, args: &Args<'_>) -> Result<Reply2, Gone> {
        let kind = match typeid {
            "dict" => Some(Kind::Dict),
            "list" => Some(Kind::List),
            "Value" => Some(Kind::Value),
            "Lock" => Some(Kind::Lock),
            "RLock" => Some(Kind::RLock),
            "Semaphore" | "BoundedSemaphore" => Some(Kind::Semaphore),
            "Condition" => Some(Kind::Condition),
            "Event" => Some(Kind::Event),
            "Queue" | "JoinableQueue" => Some(Kind::Queue),
            "Array" => Some(Kind::List),
            "Barrier" => Some(Kind::Barrier),
            "Namespace" => Some(Kind::Namespace),
            _ => None,
        };
        let Some(kind) = kind else {
            // A registered name: the object of that name (`get_scores` or `scores`).
            let name = typeid.strip_prefix("get_").unwrap_or(typeid);
            let found = {
                let st = lock(self.ctx.store);
                st.find(typeid)
                    .or_else(|| st.find(name))
                    .and_then(|h| st.describe(h).map(|(k, _, _)| (h, k)))
            };
            return Ok(match found {
                Some((h, k)) => Return(Pickle::Tuple(vec![
                    Pickle::Str(format!("{h:x}")),
                    names(&auto_exposed(self.exposed(h, k))),
                ])),
                None => Traceback(format!(
                    "KeyError: the ipckit manager has no object named '{name}' for typeid '{typeid}' (a Rust process opens it first)"
                )),
            });
        };
        let init = match kind {
            Kind::Semaphore => match args.int(0, "value") {
                Ok(n) => u64::try_from(n.unwrap_or(1)).unwrap_or(0),
                Err(e) => return Ok(e),
            },
            Kind::Barrier => match args.int(0, "parties") {
                Ok(n) => u64::try_from(n.unwrap_or(0)).unwrap_or(0),
                Err(e) => return Ok(e),
            },
            Kind::Condition => {
                if !matches!(args.get(0, "lock"), None | Some(Pickle::None)) {
                    return Ok(msg(
                        "TypeError",
                        "a Condition of the ipckit manager has its own lock: make it without one",
                    ));
                }
                0
            }
            _ => 0,
        };
        let maxsize = match kind {
            Kind::Queue => match args.int(0, "maxsize") {
                Ok(n) => u64::try_from(n.unwrap_or(0)).unwrap_or(0),
                Err(e) => return Ok(e),
            },
            _ => 0,
        };
        let array = if typeid == "Array" {
            match (args.get(0, "typecode"), args.get(1, "sequence")) {
                (Some(Pickle::Str(code)), Some(seq)) if ARRAY_CODES.contains(&code.as_str()) => {
                    match to_value(seq) {
                        Ok(Value::List(items)) => {
                            if let Some(bad) = items.iter().find(|v| !fits(code, v)) {
                                return Ok(array_type_error(code, bad));
                            }
                            Some((code.clone(), items))
                        }
                        Ok(_) => {
                            return Ok(msg(
                                "TypeError",
                                "the ipckit manager makes an Array from a list or a tuple",
                            ));
                        }
                        Err(e) => return Ok(e),
                    }
                }
                (Some(Pickle::Str(_)), Some(_)) => {
                    return Ok(msg(
                        "ValueError",
                        format!(
                            "bad typecode (the ipckit manager's arrays take {})",
                            ARRAY_CODES.join(", ")
                        ),
                    ));
                }
                _ => return Ok(msg("TypeError", "Array takes a typecode and a sequence")),
            }
        } else {
            None
        };
        let n = self.ctx.py.next.fetch_add(1, Ordering::Relaxed);
        let name = format!("python:{typeid}:{n}");
        let h = match self.call(
            Op::Open {
                name,
                kind,
                types: "python".into(),
                init,
            },
            None,
        )? {
            Ok(Answer::Handle(h)) => h,
            Ok(_) => return Ok(Traceback("unexpected answer".into())),
            Err(f) => return Ok(fault(f, "ValueError")),
        };
        if kind == Kind::Queue {
            lock(&self.ctx.py.queues).entry(h).or_default().maxsize = maxsize;
        }
        if typeid == "BoundedSemaphore" {
            lock(&self.ctx.py.bounded).insert(h, init);
        }
        if let Some((code, items)) = array {
            lock(&self.ctx.py.arrays).insert(h, code);
            if let Err(f) = self.on(h, Call::Extend(items), None)? {
                return Ok(fault(f, "ValueError"));
            }
        }
        // Initial contents.
        let first = match kind {
            Kind::Dict | Kind::Namespace => {
                let mut pairs = match args.get(0, "") {
                    Some(p) => match pairs_of(p) {
                        Ok(p) => p,
                        Err(e) => return Ok(e),
                    },
                    None => Vec::new(),
                };
                for (k, v) in args.kw {
                    match (to_value(k), to_value(v)) {
                        (Ok(k), Ok(v)) => pairs.push((k, v)),
                        (Err(e), _) | (_, Err(e)) => return Ok(e),
                    }
                }
                (!pairs.is_empty()).then_some(Call::UpdateMany(pairs))
            }
            Kind::List if typeid == "Array" => None,
            Kind::List => match args.get(0, "") {
                Some(p) => match to_value(p) {
                    Ok(Value::List(v)) => Some(Call::Extend(v)),
                    Ok(_) => return Ok(msg("TypeError", "a list is made from a list")),
                    Err(e) => return Ok(e),
                },
                None => None,
            },
            Kind::Value => match args.value(1, "value") {
                Ok(v) => Some(Call::Store(v)),
                Err(e) => return Ok(e),
            },
            _ => None,
        };
        if let Some(c) = first {
            if let Err(f) = self.on(h, c, None)? {
                return Ok(fault(f, "ValueError"));
            }
        }
        Ok(Return(Pickle::Tuple(vec![
            Pickle::Str(format!("{h:x}")),
            names(self.exposed(h, kind)),
        ])))
    }

    fn object_method(
        &mut self,
        ident: &str,
        method: &str,
        args: &Args<'_>,
    ) -> Result<Reply2, Gone> {
        if ident.starts_with("it") {
            return Ok(self.iterator(ident, method));
        }
        let Some((h, kind)) = self.resolve(ident) else {
            return Ok(Traceback(format!("KeyError: '{ident}'")));
        };
        if method == "__repr__" || method == "__str__" {
            let call = match kind {
                Kind::Value => Call::Load,
                Kind::Dict | Kind::List | Kind::Namespace => Call::Snapshot,
                _ => return Ok(Return(Pickle::Str(format!("<{} {ident}>", kind.name())))),
            };
            return Ok(match self.on(h, call, None)? {
                Ok(Answer::Value(v) | Answer::Snapshot { value: v, .. }) => {
                    Return(Pickle::Str(repr(&v)))
                }
                Ok(_) => Traceback("unexpected answer".into()),
                Err(f) => fault(f, "ValueError"),
            });
        }
        let exposed = self.exposed(h, kind);
        if !exposed.contains(&method) {
            return Ok(Traceback(format!(
                "AttributeError: method '{method}' of {} object is not in exposed={exposed:?}",
                kind.name(),
            )));
        }
        Ok(match self.method(h, kind, method, args)? {
            Ok(r) | Err(r) => r,
        })
    }

    fn iterator(&mut self, ident: &str, method: &str) -> Reply2 {
        if method != "__next__" {
            return Traceback(format!("AttributeError: iterator has no '{method}'"));
        }
        let mut its = lock(&self.ctx.py.iters);
        let next = its.get_mut(ident).and_then(VecDeque::pop_front);
        match next {
            Some(v) => Return(from_value(&v)),
            None => {
                its.remove(ident);
                exc("StopIteration", vec![])
            }
        }
    }

    /// One call on a store object: `Err` is the reply of a failed call.
    #[expect(
        clippy::too_many_lines,
        reason = "one arm per Python method, read as a table"
    )]
    fn method(
        &mut self,
        h: u32,
        kind: Kind,
        method: &str,
        a: &Args<'_>,
    ) -> Result<Result<Reply2, Reply2>, Gone> {
        macro_rules! v {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => return Ok(Err(e)),
                }
            };
        }
        let special = match kind {
            Kind::List => self.list_method(h, method, a)?,
            Kind::Queue => self.queue_method(h, method, a)?,
            Kind::Condition => self.condition_method(h, method, a)?,
            Kind::Barrier | Kind::Semaphore | Kind::Dict => {
                self.other_method(h, kind, method, a)?
            }
            _ => None,
        };
        if let Some(r) = special {
            return Ok(Ok(r));
        }
        let key_error = |k: &Pickle| exc("KeyError", vec![k.clone()]);
        let r = match (kind, method) {
            (Kind::Dict, "__getitem__" | "get" | "pop" | "__delitem__")
            | (Kind::Namespace, "__getattribute__" | "__delattr__") => {
                let kp = v!(a.need(0, "key"));
                let k = v!(to_value(kp));
                let removes = matches!(method, "pop" | "__delitem__" | "__delattr__");
                let got = self.on(
                    h,
                    if removes {
                        Call::Remove(k)
                    } else {
                        Call::Get(k)
                    },
                    None,
                )?;
                match got {
                    Ok(Answer::Maybe(Some(v)))
                        if method == "__delitem__" || method == "__delattr__" =>
                    {
                        let _ = v;
                        Return(Pickle::None)
                    }
                    Ok(Answer::Maybe(Some(v))) => Return(from_value(&v)),
                    Ok(Answer::Maybe(None)) => match (method, a.get(1, "default")) {
                        ("get", d) => Return(d.cloned().unwrap_or(Pickle::None)),
                        ("pop", Some(d)) => Return(d.clone()),
                        ("__getattribute__" | "__delattr__", _) => msg(
                            "AttributeError",
                            format!("'Namespace' object has no attribute {}", py_str(kp)),
                        ),
                        _ => key_error(kp),
                    },
                    other => answer(other, "KeyError"),
                }
            }
            (Kind::Dict, "__setitem__") | (Kind::Namespace, "__setattr__") => {
                let k = v!(a.value(0, "key"));
                let x = v!(a.value(1, "value"));
                match self.on(h, Call::Insert(k, x), None)? {
                    Ok(_) => Return(Pickle::None),
                    Err(f) => fault(f, "ValueError"),
                }
            }
            (Kind::Dict, "__contains__") => {
                let k = v!(a.value(0, "key"));
                answer(self.on(h, Call::Contains(k), None)?, "ValueError")
            }
            (Kind::Dict | Kind::List, "__len__") | (Kind::Queue, "qsize") => {
                answer(self.on(h, Call::Len, None)?, "ValueError")
            }
            (Kind::Queue, "empty") => match self.on(h, Call::Len, None)? {
                Ok(Answer::Len(n)) => Return(Pickle::Bool(n == 0)),
                other => answer(other, "ValueError"),
            },
            (Kind::Dict, "keys") => answer(self.on(h, Call::Keys, None)?, "ValueError"),
            (Kind::Dict, "values") => answer(self.on(h, Call::Values, None)?, "ValueError"),
            (Kind::Dict, "items") => match self.on(h, Call::Items, None)? {
                Ok(Answer::Pairs(p)) => Return(Pickle::List(
                    p.iter()
                        .map(|(k, v)| Pickle::Tuple(vec![from_value(k), from_value(v)]))
                        .collect(),
                )),
                other => answer(other, "ValueError"),
            },
            (Kind::Dict, "copy") => match self.on(h, Call::Items, None)? {
                Ok(Answer::Pairs(p)) => Return(from_value(&Value::Map(p))),
                other => answer(other, "ValueError"),
            },
            (Kind::Dict, "clear") => answer(self.on(h, Call::Clear, None)?, "ValueError"),
            (Kind::Dict, "update") => {
                let mut pairs = match a.pos.first() {
                    Some(p) => v!(pairs_of(p)),
                    None => Vec::new(),
                };
                for (k, x) in a.kw {
                    pairs.push((v!(to_value(k)), v!(to_value(x))));
                }
                match self.on(h, Call::UpdateMany(pairs), None)? {
                    Ok(_) => Return(Pickle::None),
                    Err(f) => fault(f, "ValueError"),
                }
            }
            (Kind::Dict, "setdefault") => {
                let k = v!(a.value(0, "key"));
                let d = match a.get(1, "default") {
                    Some(p) => v!(to_value(p)),
                    None => Value::None,
                };
                answer(self.on(h, Call::GetOrInsert(k, d), None)?, "ValueError")
            }
            (Kind::Dict, "__iter__") => match self.on(h, Call::Keys, None)? {
                Ok(Answer::Many(keys)) if !self.made_by_sync_manager(h) => {
                    // A registered name's proxy (an AutoProxy, or a DictProxy of a
                    // BaseManager that registers no "Iterator") takes an iterator by
                    // value, as Python's own server gives it for a registered dict.
                    Return(Pickle::call(
                        "builtins",
                        "iter",
                        vec![from_value(&Value::List(keys))],
                    ))
                }
                Ok(Answer::Many(keys)) => {
                    let n = self.ctx.py.next.fetch_add(1, Ordering::Relaxed);
                    let ident = format!("it{n:x}");
                    lock(&self.ctx.py.iters).insert(ident.clone(), keys.into());
                    Reply2::Proxy(ITERATOR.to_vec(), "Iterator".into(), ident)
                }
                other => answer(other, "ValueError"),
            },
            (Kind::List, "append") => {
                let x = v!(a.value(0, "object"));
                match self.on(h, Call::Push(x), None)? {
                    Ok(_) => Return(Pickle::None),
                    Err(f) => fault(f, "ValueError"),
                }
            }
            (Kind::List, "extend") => match v!(a.value(0, "iterable")) {
                Value::List(xs) => match self.on(h, Call::Extend(xs), None)? {
                    Ok(_) => Return(Pickle::None),
                    Err(f) => fault(f, "ValueError"),
                },
                _ => msg("TypeError", "extend takes a list or a tuple"),
            },
            (Kind::List, "insert") => {
                let i = v!(a.int(0, "index")).unwrap_or(0);
                let x = v!(a.value(1, "object"));
                match self.on(h, Call::InsertAt(i, x), None)? {
                    Ok(_) => Return(Pickle::None),
                    Err(f) => fault(f, "IndexError"),
                }
            }
            (Kind::List, "pop") => match v!(a.int(0, "index")) {
                None => match self.on(h, Call::Pop, None)? {
                    Ok(Answer::Maybe(None)) => msg("IndexError", "pop from empty list"),
                    other => answer(other, "IndexError"),
                },
                Some(i) => match self.on(h, Call::RemoveAt(i), None)? {
                    Err(Fault::Index { .. }) => msg("IndexError", "pop index out of range"),
                    other => answer(other, "IndexError"),
                },
            },
            (Kind::Value, "get") => answer(self.on(h, Call::Load, None)?, "ValueError"),
            (Kind::Value, "set") => {
                let x = v!(a.value(0, "value"));
                match self.on(h, Call::Store(x), None)? {
                    Ok(_) => Return(Pickle::None),
                    Err(f) => fault(f, "ValueError"),
                }
            }
            (
                Kind::Lock | Kind::Semaphore | Kind::Condition | Kind::RLock,
                "acquire" | "__enter__",
            ) => {
                let rl = kind == Kind::RLock;
                let timeout = if method == "acquire" {
                    v!(a.timeout(1))
                } else {
                    None
                };
                let got = if method == "__enter__" || a.flag(0, "blocking", true) {
                    self.on(
                        h,
                        if rl {
                            Call::AcquireAs(0)
                        } else {
                            Call::Acquire
                        },
                        timeout,
                    )?
                } else {
                    self.on(
                        h,
                        if rl {
                            Call::TryAcquireAs(0)
                        } else {
                            Call::TryAcquire
                        },
                        None,
                    )?
                };
                match got {
                    Ok(Answer::Bool(b)) => Return(Pickle::Bool(b)),
                    Ok(_) => Return(Pickle::Bool(true)),
                    Err(Fault::Cancelled) => Return(Pickle::Bool(false)),
                    Err(f) => fault(f, "RuntimeError"),
                }
            }
            (
                Kind::Lock | Kind::Semaphore | Kind::Condition | Kind::RLock,
                "release" | "__exit__",
            ) => {
                let call = if kind == Kind::RLock {
                    Call::ReleaseAs(0)
                } else {
                    Call::Release
                };
                match self.on(h, call, None)? {
                    Ok(_) => Return(Pickle::None),
                    Err(Fault::Invalid { .. }) if matches!(kind, Kind::RLock | Kind::Condition) => {
                        msg("RuntimeError", "cannot release un-acquired lock")
                    }
                    Err(Fault::Invalid { .. }) => msg("RuntimeError", "release unlocked lock"),
                    Err(f) => fault(f, "RuntimeError"),
                }
            }
            (Kind::Event, "is_set") => answer(self.on(h, Call::IsSet, None)?, "ValueError"),
            (Kind::Event, "set") => answer(self.on(h, Call::Set, None)?, "ValueError"),
            (Kind::Event, "clear") => answer(self.on(h, Call::Unset, None)?, "ValueError"),
            (Kind::Event, "wait") => {
                let timeout = v!(a.timeout(0));
                match self.on(h, Call::Wait, timeout)? {
                    Ok(_) => Return(Pickle::Bool(true)),
                    Err(Fault::Cancelled) => Return(Pickle::Bool(false)),
                    Err(f) => fault(f, "RuntimeError"),
                }
            }
            _ => Traceback(format!(
                "NotImplementedError: the ipckit manager has no {method} on a {}",
                kind.name()
            )),
        };
        Ok(Ok(r))
    }
}

/// The methods an `AutoProxy` (a registered name without a proxy type) may call: not
/// `__getattribute__` and the like, which an `AutoProxy` would turn on itself. (Register
/// a barrier or a namespace with `proxytype=BarrierProxy` or `NamespaceProxy` to read
/// its attributes.)
fn auto_exposed(methods: &[&'static str]) -> Vec<&'static str> {
    methods
        .iter()
        .copied()
        .filter(|m| !matches!(*m, "__getattribute__" | "__setattr__" | "__delattr__"))
        .collect()
}

/// Method names as the tuple Python's `create` and `get_methods` answer.
fn names(methods: &[&str]) -> Pickle {
    Pickle::Tuple(methods.iter().map(|s| Pickle::Str((*s).into())).collect())
}

fn py_str(p: &Pickle) -> String {
    match p {
        Pickle::Str(s) => format!("'{s}'"),
        other => format!("{other:?}"),
    }
}

/// A dict's items from a dict or a list of pairs.
fn pairs_of(p: &Pickle) -> Result<Vec<(Value, Value)>, Reply2> {
    match to_value(p)? {
        Value::Map(pairs) => Ok(pairs),
        Value::List(items) => items
            .into_iter()
            .map(|kv| match kv {
                Value::List(mut kv) if kv.len() == 2 => {
                    let v = kv.pop().unwrap_or(Value::None);
                    let k = kv.pop().unwrap_or(Value::None);
                    Ok((k, v))
                }
                _ => Err(msg(
                    "ValueError",
                    "dictionary update sequence element is not a pair",
                )),
            })
            .collect(),
        _ => Err(msg("TypeError", "a dict is updated from a dict or pairs")),
    }
}

/// A store answer as Python's return value, a fault as `default_exc`.
fn answer(r: Result<Answer, Fault>, default_exc: &str) -> Reply2 {
    match r {
        Ok(a) => Return(answer_value(a)),
        Err(f) => fault(f, default_exc),
    }
}

fn answer_value(a: Answer) -> Pickle {
    match a {
        Answer::Unit | Answer::Handle(_) | Answer::Maybe(None) => Pickle::None,
        Answer::Value(v) | Answer::Maybe(Some(v)) | Answer::Snapshot { value: v, .. } => {
            from_value(&v)
        }
        Answer::Bool(b) => Pickle::Bool(b),
        Answer::Len(n) => Pickle::Int(i64::try_from(n).unwrap_or(i64::MAX)),
        Answer::Many(v) => Pickle::List(v.iter().map(from_value).collect()),
        Answer::Pairs(p) => Pickle::List(
            p.iter()
                .map(|(k, v)| Pickle::Tuple(vec![from_value(k), from_value(v)]))
                .collect(),
        ),
        Answer::Results(r) => Pickle::List(r.into_iter().map(answer_value).collect()),
    }
}

fn fault(f: Fault, default_exc: &str) -> Reply2 {
    match f {
        Fault::Index { .. } => msg("IndexError", "list index out of range"),
        Fault::WrongType {
            name,
            expected,
            found,
        } => msg(
            "TypeError",
            format!("'{name}' is a {found}, not a {expected}"),
        ),
        Fault::Invalid { name, reason } => msg(default_exc, format!("{name}: {reason}")),
        Fault::TooLarge { len, max } => msg(
            "ValueError",
            format!("a value of {len} bytes is above the manager's largest, {max}"),
        ),
        Fault::Protocol(s) => Traceback(s),
        Fault::Cancelled => msg("TimeoutError", "timed out"),
    }
}

/// Calls run under one hold of the store's lock: no other client's call comes between
/// them (what makes `sort`, `remove` or a slice assignment one step, as in Python's own
/// manager). Only calls that do not wait.
struct Tx<'t> {
    st: MutexGuard<'t, Store>,
    out: &'t Outbox,
    client: ClientId,
    next_id: &'t mut u64,
}

impl Tx<'_> {
    fn op(&mut self, op: Op) -> Result<Answer, Fault> {
        let id = *self.next_id;
        *self.next_id += 1;
        self.st.call(self.client, id, op);
        // A call that does not wait is answered at once, into this client's outbox.
        while let Some(frame) = self.out.next_frame(Some(Instant::now())) {
            if let Ok(Reply::Done { id: got, result }) = postcard::from_bytes::<Reply>(&frame) {
                if got == id {
                    return result;
                }
            }
        }
        Err(Fault::Protocol(
            "a call that does not wait was not answered".into(),
        ))
    }

    fn on(&mut self, h: u32, call: Call) -> Result<Answer, Fault> {
        self.op(Op::On { obj: h, call })
    }

    /// A list's items.
    fn items(&mut self, h: u32) -> Result<Vec<Value>, Fault> {
        match self.on(h, Call::Snapshot)? {
            Answer::Snapshot {
                value: Value::List(v),
                ..
            } => Ok(v),
            _ => Err(Fault::Protocol("a list's snapshot is not a list".into())),
        }
    }

    /// Replaces a list's items, all or none (its watchers see it cleared and refilled).
    fn replace(&mut self, h: u32, items: Vec<Value>) -> Result<(), Fault> {
        self.op(Op::Transaction(vec![
            (h, Call::Clear),
            (h, Call::Extend(items)),
        ]))
        .map(|_| ())
    }
}

/// What a list method that reads the list and changes it decides.
enum Edit<T> {
    /// Write these items and answer `T`.
    Write(Vec<Value>, T),
    /// Leave the list and answer `T`.
    Keep(T),
    /// Fail with this reply.
    Fail(Reply2),
}

impl Caller<'_, '_> {
    /// Runs `f` with the store locked (see [`Tx`]).
    fn atomically<R>(&mut self, f: impl FnOnce(&mut Tx<'_>) -> R) -> R {
        let r = {
            let mut tx = Tx {
                st: lock(self.ctx.store),
                out: &self.ctx.out,
                client: self.ctx.client,
                next_id: &mut *self.next_id,
            };
            f(&mut tx)
        };
        kick_pending();
        r
    }

    /// Reads list `h` and maybe writes it back, in one step.
    fn edit<T>(&mut self, h: u32, f: impl FnOnce(Vec<Value>) -> Edit<T>) -> Result<T, Reply2> {
        self.atomically(|tx| {
            let items = tx.items(h).map_err(|e| fault(e, "ValueError"))?;
            match f(items) {
                Edit::Write(items, t) => {
                    tx.replace(h, items).map_err(|e| fault(e, "ValueError"))?;
                    Ok(t)
                }
                Edit::Keep(t) => Ok(t),
                Edit::Fail(r) => Err(r),
            }
        })
    }

    /// Waits (at most until `until`, and a probe's time) for a Python client to take an
    /// item from queue `h`, unless one did since it had taken `seen`; `Gone` if the client
    /// left meanwhile.
    fn wait_queue(&self, h: u32, seen: u64, until: Option<Instant>) -> Result<(), Gone> {
        let tick = Instant::now() + PROBE;
        let until = until.map_or(tick, |d| d.min(tick));
        let g = lock(&self.ctx.py.queues);
        if g.get(&h).map_or(0, |q| q.taken) == seen {
            let left = until.saturating_duration_since(Instant::now());
            drop(
                self.ctx
                    .py
                    .queue_changed
                    .wait_timeout(g, left)
                    .unwrap_or_else(PoisonError::into_inner),
            );
        }
        if self.peer_gone() { Err(Gone) } else { Ok(()) }
    }

    /// Python's list methods (and an `Array`'s); `None` for those `method` serves alone.
    #[expect(
        clippy::too_many_lines,
        reason = "one arm per Python method, read as a table"
    )]
    fn list_method(&mut self, h: u32, method: &str, a: &Args<'_>) -> Result<Option<Reply2>, Gone> {
        macro_rules! v {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => return Ok(Some(e)),
                }
            };
        }
        let code = lock(&self.ctx.py.arrays).get(&h).cloned();
        let what = if code.is_some() { "array" } else { "list" };
        let r = match method {
            "__getitem__" => {
                let ix = v!(a.need(0, "index"));
                if let Some(sl) = slice_of(ix) {
                    let sl = v!(sl);
                    let items = v!(self.edit(h, Edit::Keep));
                    let (_, pos) = v!(slice_positions(sl, items.len()));
                    let picked: Vec<Pickle> = pos.iter().map(|&i| from_value(&items[i])).collect();
                    match &code {
                        Some(c) => Return(Pickle::call(
                            "array",
                            "array",
                            vec![Pickle::Str(c.clone()), Pickle::List(picked)],
                        )),
                        None => Return(Pickle::List(picked)),
                    }
                } else {
                    let i = v!(index_of(ix, what));
                    match self.on(h, Call::Index(i), None)? {
                        Err(Fault::Index { .. }) => {
                            msg("IndexError", format!("{what} index out of range"))
                        }
                        other => answer(other, "IndexError"),
                    }
                }
            }
            "__setitem__" => {
                let ix = v!(a.need(0, "index"));
                let x = v!(a.need(1, "value"));
                if let Some(sl) = slice_of(ix) {
                    let sl = v!(sl);
                    if code.is_some() {
                        return Ok(Some(msg(
                            "TypeError",
                            format!(
                                "can only assign array (not \"{}\") to array slice",
                                pickle_type(x)
                            ),
                        )));
                    }
                    let new = match x {
                        Pickle::List(_) | Pickle::Tuple(_) => match v!(to_value(x)) {
                            Value::List(v) => v,
                            _ => Vec::new(),
                        },
                        _ => {
                            return Ok(Some(msg(
                                "TypeError",
                                "the ipckit manager assigns a list or a tuple to a slice",
                            )));
                        }
                    };
                    v!(self.edit(h, |mut items| {
                        let (start, pos) = match slice_positions(sl, items.len()) {
                            Ok(p) => p,
                            Err(e) => return Edit::Fail(e),
                        };
                        if sl.2.unwrap_or(1) == 1 {
                            let end = pos.last().map_or(start, |l| l + 1);
                            items.splice(start..end, new);
                        } else if pos.len() == new.len() {
                            for (i, x) in pos.into_iter().zip(new) {
                                items[i] = x;
                            }
                        } else {
                            return Edit::Fail(msg(
                                "ValueError",
                                format!(
                                    "attempt to assign sequence of size {} to extended slice of size {}",
                                    new.len(),
                                    pos.len()
                                ),
                            ));
                        }
                        Edit::Write(items, ())
                    }));
                    Return(Pickle::None)
                } else {
                    let i = v!(index_of(ix, what));
                    let x = v!(to_value(x));
                    if let Some(c) = &code {
                        if !fits(c, &x) {
                            return Ok(Some(array_type_error(c, &x)));
                        }
                    }
                    match self.on(h, Call::SetIndex(i, x), None)? {
                        Ok(_) => Return(Pickle::None),
                        Err(Fault::Index { .. }) => msg(
                            "IndexError",
                            format!("{what} assignment index out of range"),
                        ),
                        Err(f) => fault(f, "IndexError"),
                    }
                }
            }
            "__delitem__" => {
                let ix = v!(a.need(0, "index"));
                if let Some(sl) = slice_of(ix) {
                    let sl = v!(sl);
                    v!(self.edit(h, |items| {
                        let pos = match slice_positions(sl, items.len()) {
                            Ok((_, p)) => p.into_iter().collect::<HashSet<_>>(),
                            Err(e) => return Edit::Fail(e),
                        };
                        let kept = items
                            .into_iter()
                            .enumerate()
                            .filter(|(i, _)| !pos.contains(i))
                            .map(|(_, v)| v)
                            .collect();
                        Edit::Write(kept, ())
                    }));
                    Return(Pickle::None)
                } else {
                    let i = v!(index_of(ix, what));
                    match self.on(h, Call::RemoveAt(i), None)? {
                        Ok(_) => Return(Pickle::None),
                        Err(Fault::Index { .. }) => {
                            msg("IndexError", "list assignment index out of range")
                        }
                        Err(f) => fault(f, "IndexError"),
                    }
                }
            }
            "__contains__" | "count" => {
                let x = v!(a.value(0, "value"));
                let items = v!(self.edit(h, Edit::Keep));
                let n = items.iter().filter(|v| py_eq(v, &x)).count();
                if method == "count" {
                    Return(Pickle::Int(n as i64))
                } else {
                    Return(Pickle::Bool(n > 0))
                }
            }
            "index" => {
                let x = v!(a.value(0, "value"));
                let start = v!(a.int(1, "start"));
                let stop = v!(a.int(2, "stop"));
                let items = v!(self.edit(h, Edit::Keep));
                let len = items.len();
                let from = start.map_or(0, |s| clamp(s, len));
                let to = stop.map_or(len, |s| clamp(s, len));
                match (from..to.max(from)).find(|&i| py_eq(&items[i], &x)) {
                    Some(i) => Return(Pickle::Int(i as i64)),
                    None => msg("ValueError", format!("{} is not in list", repr(&x))),
                }
            }
            "remove" => {
                let x = v!(a.value(0, "value"));
                v!(self.edit(h, |mut items| {
                    match items.iter().position(|v| py_eq(v, &x)) {
                        Some(i) => {
                            items.remove(i);
                            Edit::Write(items, ())
                        }
                        None => Edit::Fail(msg("ValueError", "list.remove(x): x not in list")),
                    }
                }));
                Return(Pickle::None)
            }
            "__add__" => match v!(a.need(0, "value")) {
                Pickle::List(more) => {
                    let items = v!(self.edit(h, Edit::Keep));
                    let mut all: Vec<Pickle> = items.iter().map(from_value).collect();
                    all.extend(more.iter().cloned());
                    Return(Pickle::List(all))
                }
                other => msg(
                    "TypeError",
                    format!(
                        "can only concatenate list (not \"{}\") to list",
                        pickle_type(other)
                    ),
                ),
            },
            "__mul__" | "__rmul__" | "__imul__" => {
                let n = match v!(a.need(0, "value")) {
                    Pickle::Int(n) => *n,
                    Pickle::Bool(b) => i64::from(*b),
                    other => {
                        return Ok(Some(msg(
                            "TypeError",
                            format!(
                                "'{}' object cannot be interpreted as an integer",
                                pickle_type(other)
                            ),
                        )));
                    }
                };
                let times = usize::try_from(n).unwrap_or(0);
                let repeat = |items: &[Value]| -> Result<Vec<Value>, Reply2> {
                    if items.len().saturating_mul(times) > MAX_REPEAT {
                        return Err(exc("MemoryError", vec![]));
                    }
                    Ok(items
                        .iter()
                        .cloned()
                        .cycle()
                        .take(items.len() * times)
                        .collect())
                };
                if method == "__imul__" {
                    let all = v!(self.edit(h, |items| match repeat(&items) {
                        Ok(all) => Edit::Write(all.clone(), all),
                        Err(e) => Edit::Fail(e),
                    }));
                    Return(from_value(&Value::List(all)))
                } else {
                    let items = v!(self.edit(h, Edit::Keep));
                    Return(from_value(&Value::List(v!(repeat(&items)))))
                }
            }
            "__reversed__" => {
                let items = v!(self.edit(h, Edit::Keep));
                Return(Pickle::call(
                    "builtins",
                    "reversed",
                    vec![from_value(&Value::List(items))],
                ))
            }
            "reverse" => {
                v!(self.edit(h, |mut items| {
                    items.reverse();
                    Edit::Write(items, ())
                }));
                Return(Pickle::None)
            }
            "sort" => {
                if !a.pos.is_empty() {
                    return Ok(Some(msg(
                        "TypeError",
                        "sort() takes no positional arguments",
                    )));
                }
                if !matches!(a.keyword("key"), None | Some(Pickle::None)) {
                    return Ok(Some(msg(
                        "TypeError",
                        "the ipckit manager sorts by the items themselves: key must be None",
                    )));
                }
                let reverse = a.keyword("reverse").is_some_and(truthy);
                v!(self.edit(h, |mut items| {
                    let mut failed = None;
                    items.sort_by(|x, y| {
                        let (p, q) = if reverse { (y, x) } else { (x, y) };
                        match py_cmp(p, q) {
                            Ok(o) => o,
                            Err(e) => {
                                failed.get_or_insert(e);
                                Order::Equal
                            }
                        }
                    });
                    match failed {
                        Some(e) => Edit::Fail(e),
                        None => Edit::Write(items, ()),
                    }
                }));
                Return(Pickle::None)
            }
            _ => return Ok(None),
        };
        Ok(Some(r))
    }

    /// Python's `queue.Queue` methods.
    fn queue_method(&mut self, h: u32, method: &str, a: &Args<'_>) -> Result<Option<Reply2>, Gone> {
        macro_rules! v {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => return Ok(Some(e)),
                }
            };
        }
        let py = self.ctx.py;
        let r = match method {
            "put" | "put_nowait" => {
                let x = v!(a.value(0, "item"));
                let block = method == "put" && a.flag(1, "block", true);
                let deadline = if block {
                    v!(a.timeout(2)).map(later)
                } else {
                    Some(Instant::now())
                };
                loop {
                    let put = self.atomically(|tx| {
                        let mut qs = lock(&py.queues);
                        let q = qs.entry(h).or_default();
                        if q.maxsize > 0 {
                            if let Answer::Len(n) = tx.on(h, Call::Len)? {
                                if n >= q.maxsize {
                                    return Ok(Some(q.taken));
                                }
                            }
                        }
                        tx.on(h, Call::Put(x.clone()))?;
                        q.unfinished += 1;
                        Ok(None)
                    });
                    let seen = match put {
                        Ok(None) => break Return(Pickle::None),
                        Ok(Some(seen)) => seen,
                        Err(f) => break fault(f, "ValueError"),
                    };
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break PyErr(Pickle::call("queue", "Full", vec![]));
                    }
                    self.wait_queue(h, seen, deadline)?;
                }
            }
            "get" | "get_nowait" => {
                let block = method == "get" && a.flag(0, "block", true);
                let got = if block {
                    let timeout = v!(a.timeout(1));
                    self.on(h, Call::Take, timeout)?
                } else {
                    self.on(h, Call::TryTake, None)?
                };
                match got {
                    Ok(Answer::Value(v) | Answer::Maybe(Some(v))) => {
                        lock(&py.queues).entry(h).or_default().taken += 1;
                        py.queue_changed.notify_all();
                        Return(from_value(&v))
                    }
                    Ok(Answer::Maybe(None)) | Err(Fault::Cancelled) => {
                        PyErr(Pickle::call("_queue", "Empty", vec![]))
                    }
                    other => answer(other, "ValueError"),
                }
            }
            "full" => {
                let maxsize = lock(&py.queues).get(&h).map_or(0, |q| q.maxsize);
                if maxsize == 0 {
                    Return(Pickle::Bool(false))
                } else {
                    match self.on(h, Call::Len, None)? {
                        Ok(Answer::Len(n)) => Return(Pickle::Bool(n >= maxsize)),
                        other => answer(other, "ValueError"),
                    }
                }
            }
            "task_done" => {
                let mut qs = lock(&py.queues);
                let q = qs.entry(h).or_default();
                if q.unfinished == 0 {
                    msg("ValueError", "task_done() called too many times")
                } else {
                    q.unfinished -= 1;
                    if q.unfinished == 0 {
                        py.queue_changed.notify_all();
                    }
                    Return(Pickle::None)
                }
            }
            "join" => loop {
                {
                    let qs = lock(&py.queues);
                    if qs.get(&h).map_or(0, |q| q.unfinished) == 0 {
                        break Return(Pickle::None);
                    }
                    drop(
                        py.queue_changed
                            .wait_timeout(qs, PROBE)
                            .unwrap_or_else(PoisonError::into_inner),
                    );
                }
                if self.peer_gone() {
                    return Err(Gone);
                }
            },
            _ => return Ok(None),
        };
        Ok(Some(r))
    }

    /// Python's `threading.Condition` methods beyond its lock's.
    fn condition_method(
        &mut self,
        h: u32,
        method: &str,
        a: &Args<'_>,
    ) -> Result<Option<Reply2>, Gone> {
        let r = match method {
            "wait" => {
                let timeout = match a.timeout(0) {
                    Ok(t) => t,
                    Err(e) => return Ok(Some(e)),
                };
                match self.on(h, Call::Wait, timeout)? {
                    Ok(Answer::Bool(b)) => Return(Pickle::Bool(b)),
                    Ok(_) => Return(Pickle::Bool(true)),
                    Err(Fault::Cancelled) => Return(Pickle::Bool(false)),
                    Err(Fault::Invalid { .. }) => {
                        msg("RuntimeError", "cannot wait on un-acquired lock")
                    }
                    Err(f) => fault(f, "RuntimeError"),
                }
            }
            "notify" | "notify_all" => {
                let n = if method == "notify_all" {
                    u64::MAX
                } else {
                    match a.int(0, "n") {
                        Ok(n) => u64::try_from(n.unwrap_or(1)).unwrap_or(0),
                        Err(e) => return Ok(Some(e)),
                    }
                };
                match self.on(h, Call::Notify(n), None)? {
                    Ok(_) => Return(Pickle::None),
                    Err(Fault::Invalid { .. }) => {
                        msg("RuntimeError", "cannot notify on un-acquired lock")
                    }
                    Err(f) => fault(f, "RuntimeError"),
                }
            }
            _ => return Ok(None),
        };
        Ok(Some(r))
    }

    /// A barrier's methods, a bounded semaphore's release, a dict's `popitem`.
    fn other_method(
        &mut self,
        h: u32,
        kind: Kind,
        method: &str,
        a: &Args<'_>,
    ) -> Result<Option<Reply2>, Gone> {
        let py = self.ctx.py;
        let broken = || PyErr(Pickle::call("threading", "BrokenBarrierError", vec![]));
        let r = match (kind, method) {
            (Kind::Barrier, "wait") => {
                if lock(&py.broken).contains(&h) {
                    return Ok(Some(broken()));
                }
                let timeout = match a.timeout(0) {
                    Ok(t) => t,
                    Err(e) => return Ok(Some(e)),
                };
                match self.on(h, Call::Wait, timeout)? {
                    Ok(Answer::Len(n)) => Return(Pickle::Int(n as i64)),
                    Err(Fault::Cancelled) => {
                        // Timed out (or sent away by `abort`): as Python's, the barrier
                        // breaks for every party until `reset`.
                        let mut b = lock(&py.broken);
                        b.insert(h);
                        lock(self.ctx.store).barrier_waiting(h, true);
                        drop(b);
                        kick_pending();
                        broken()
                    }
                    other => answer(other, "RuntimeError"),
                }
            }
            (Kind::Barrier, "abort" | "reset") => {
                let mut b = lock(&py.broken);
                if method == "abort" {
                    b.insert(h);
                } else {
                    b.remove(&h);
                }
                lock(self.ctx.store).barrier_waiting(h, true);
                drop(b);
                kick_pending();
                Return(Pickle::None)
            }
            (Kind::Barrier, "__getattribute__") => {
                let mut st = lock(self.ctx.store);
                let parties = st.describe(h).map_or(0, |d| d.2);
                let waiting = st.barrier_waiting(h, false);
                drop(st);
                match a.get(0, "name") {
                    Some(Pickle::Str(s)) if s == "parties" => Return(Pickle::Int(parties as i64)),
                    Some(Pickle::Str(s)) if s == "n_waiting" => Return(Pickle::Int(waiting as i64)),
                    Some(Pickle::Str(s)) if s == "broken" => {
                        Return(Pickle::Bool(lock(&py.broken).contains(&h)))
                    }
                    Some(p) => msg(
                        "AttributeError",
                        format!("'Barrier' object has no attribute {}", py_str(p)),
                    ),
                    None => msg("TypeError", "missing argument 'name'"),
                }
            }
            (Kind::Semaphore, "release" | "__exit__") => {
                let Some(&limit) = lock(&py.bounded).get(&h) else {
                    return Ok(None);
                };
                let released = self.atomically(|tx| {
                    if tx.st.semaphore_free(h) >= limit {
                        return Ok(false);
                    }
                    tx.on(h, Call::Release).map(|_| true)
                });
                match released {
                    Ok(true) => Return(Pickle::None),
                    Ok(false) => msg("ValueError", "Semaphore released too many times"),
                    Err(f) => fault(f, "ValueError"),
                }
            }
            (Kind::Dict, "popitem") => {
                let popped = self.atomically(|tx| {
                    let Answer::Many(mut keys) = tx.on(h, Call::Keys)? else {
                        return Ok(None);
                    };
                    let Some(k) = keys.pop() else {
                        return Ok(None);
                    };
                    match tx.on(h, Call::Remove(k.clone()))? {
                        Answer::Maybe(Some(v)) => Ok(Some((k, v))),
                        _ => Ok(None),
                    }
                });
                match popped {
                    Ok(Some((k, v))) => Return(Pickle::Tuple(vec![from_value(&k), from_value(&v)])),
                    Ok(None) => msg("KeyError", "popitem(): dictionary is empty"),
                    Err(f) => fault(f, "KeyError"),
                }
            }
            _ => return Ok(None),
        };
        Ok(Some(r))
    }
}

/// The most items `*` makes (beyond: Python's `MemoryError`).
const MAX_REPEAT: usize = 1 << 24;

/// The array type codes the ipckit manager keeps (numbers).
const ARRAY_CODES: &[&str] = &["b", "B", "h", "H", "i", "I", "l", "L", "q", "Q", "f", "d"];

/// Whether `v` fits an array of type `code`.
fn fits(code: &str, v: &Value) -> bool {
    let n = match v {
        Value::Int(n) => *n,
        Value::Bool(b) => i64::from(*b),
        Value::Float(_) => return matches!(code, "f" | "d"),
        _ => return false,
    };
    match code {
        "b" => i8::try_from(n).is_ok(),
        "B" => u8::try_from(n).is_ok(),
        "h" => i16::try_from(n).is_ok(),
        "H" => u16::try_from(n).is_ok(),
        "i" => i32::try_from(n).is_ok(),
        "I" => u32::try_from(n).is_ok(),
        "L" | "Q" => n >= 0,
        _ => true,
    }
}

/// Python's error for `v` in an array of type `code`.
fn array_type_error(code: &str, v: &Value) -> Reply2 {
    match v {
        Value::Int(_) | Value::Bool(_) => msg(
            "OverflowError",
            format!("the value is out of range for an array of type '{code}'"),
        ),
        _ if matches!(code, "f" | "d") => msg(
            "TypeError",
            format!("must be real number, not {}", type_name(v)),
        ),
        _ => msg(
            "TypeError",
            format!(
                "'{}' object cannot be interpreted as an integer",
                type_name(v)
            ),
        ),
    }
}

/// Python's name of a value's type.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::None => "NoneType",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::Float(_) => "float",
        Value::Str(_) => "str",
        Value::Bytes(_) => "bytes",
        Value::List(_) => "list",
        Value::Map(_) => "dict",
        Value::Python(_) => "object",
    }
}

/// Python's name of a pickled value's type.
fn pickle_type(p: &Pickle) -> String {
    match p {
        Pickle::Tuple(_) => "tuple".into(),
        Pickle::Set(_) => "set".into(),
        Pickle::FrozenSet(_) => "frozenset".into(),
        Pickle::ByteArray(_) => "bytearray".into(),
        Pickle::BigInt(_) => "int".into(),
        Pickle::Reduce(f, _) | Pickle::NewObj(f, _) | Pickle::NewObjEx(f, _, _) => match f.as_ref()
        {
            Pickle::Global(_, n) => n.clone(),
            _ => "object".into(),
        },
        Pickle::Build(o, _) => pickle_type(o),
        other => to_value(other).map_or_else(|_| "object".into(), |v| type_name(&v).into()),
    }
}

/// Python's truth of an argument.
fn truthy(p: &Pickle) -> bool {
    match p {
        Pickle::None | Pickle::Bool(false) | Pickle::Int(0) => false,
        Pickle::Float(x) => *x != 0.0,
        _ => true,
    }
}

/// `later + timeout` from now, or "for ever" when it overflows.
fn later(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(1 << 30))
}

/// Python's `==` on values: numbers equal across bool, int and float.
fn py_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::List(x), Value::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| py_eq(p, q))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.iter().any(|(k2, v2)| py_eq(k, k2) && py_eq(v, v2)))
        }
        _ => match (number(a), number(b)) {
            (Some(x), Some(y)) => num_cmp(&x, &y) == Order::Equal && !nan(a) && !nan(b),
            _ => a == b,
        },
    }
}

/// A number as an exact int or a float, for comparisons across types.
enum Num {
    I(i64),
    F(f64),
}

fn nan(v: &Value) -> bool {
    matches!(v, Value::Float(x) if x.is_nan())
}

fn number(v: &Value) -> Option<Num> {
    match v {
        Value::Bool(b) => Some(Num::I(i64::from(*b))),
        Value::Int(i) => Some(Num::I(*i)),
        Value::Float(x) => Some(Num::F(*x)),
        _ => None,
    }
}

fn num_cmp(a: &Num, b: &Num) -> Order {
    match (a, b) {
        (Num::I(x), Num::I(y)) => x.cmp(y),
        (Num::I(x), Num::F(y)) => (*x as f64).partial_cmp(y).unwrap_or(Order::Equal),
        (Num::F(x), Num::I(y)) => x.partial_cmp(&(*y as f64)).unwrap_or(Order::Equal),
        (Num::F(x), Num::F(y)) => x.partial_cmp(y).unwrap_or(Order::Equal),
    }
}

/// Python's `<` as an ordering, or Python's `TypeError` for values it does not order.
fn py_cmp(a: &Value, b: &Value) -> Result<Order, Reply2> {
    if let (Some(x), Some(y)) = (number(a), number(b)) {
        return Ok(num_cmp(&x, &y));
    }
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => Ok(x.cmp(y)),
        (Value::Bytes(x), Value::Bytes(y)) => Ok(x.cmp(y)),
        (Value::List(x), Value::List(y)) => {
            for (p, q) in x.iter().zip(y) {
                if !py_eq(p, q) {
                    return py_cmp(p, q);
                }
            }
            Ok(x.len().cmp(&y.len()))
        }
        _ => Err(msg(
            "TypeError",
            format!(
                "'<' not supported between instances of '{}' and '{}'",
                type_name(a),
                type_name(b)
            ),
        )),
    }
}

/// A slice's `start`, `stop` and `step`.
type Slice = (Option<i64>, Option<i64>, Option<i64>);

/// A slice, if `p` is one.
fn slice_of(p: &Pickle) -> Option<Result<Slice, Reply2>> {
    let Pickle::Reduce(f, args) = p else {
        return None;
    };
    if !matches!(f.as_ref(), Pickle::Global(m, n) if m == "builtins" && n == "slice") {
        return None;
    }
    let part = |p: &Pickle| match p {
        Pickle::None => Ok(None),
        Pickle::Int(i) => Ok(Some(*i)),
        Pickle::Bool(b) => Ok(Some(i64::from(*b))),
        _ => Err(msg(
            "TypeError",
            "slice indices must be integers or None or have an __index__ method",
        )),
    };
    Some(match args.as_ref() {
        Pickle::Tuple(t) if t.len() == 3 => (|| Ok((part(&t[0])?, part(&t[1])?, part(&t[2])?)))(),
        _ => Err(msg("TypeError", "a bad slice")),
    })
}

/// The positions a slice selects in a sequence of `len` items (Python's
/// `range(*slice.indices(len))`), and its adjusted start.
fn slice_positions((start, stop, step): Slice, len: usize) -> Result<(usize, Vec<usize>), Reply2> {
    let step = step.unwrap_or(1);
    if step == 0 {
        return Err(msg("ValueError", "slice step cannot be zero"));
    }
    let n = i64::try_from(len).unwrap_or(i64::MAX);
    let (lower, upper) = if step < 0 { (-1, n - 1) } else { (0, n) };
    let adjust = |i: Option<i64>, default: i64| match i {
        None => default,
        Some(i) if i < 0 => (i + n).max(lower),
        Some(i) => i.min(upper),
    };
    let start = adjust(start, if step < 0 { upper } else { lower });
    let stop = adjust(stop, if step < 0 { lower } else { upper });
    let mut pos = Vec::new();
    let mut i = start;
    while (step > 0 && i < stop) || (step < 0 && i > stop) {
        pos.push(usize::try_from(i).unwrap_or(0));
        i += step;
    }
    Ok((usize::try_from(start.max(0)).unwrap_or(0), pos))
}

/// Python's `slice.indices`-style clamping of one index (for `list.index`).
fn clamp(i: i64, len: usize) -> usize {
    let n = i64::try_from(len).unwrap_or(i64::MAX);
    let j = if i < 0 { (i + n).max(0) } else { i.min(n) };
    usize::try_from(j).unwrap_or(0)
}

/// An index argument, or Python's `TypeError`.
fn index_of(p: &Pickle, what: &str) -> Result<i64, Reply2> {
    match p {
        Pickle::Int(i) => Ok(*i),
        Pickle::Bool(b) => Ok(i64::from(*b)),
        other => Err(msg(
            "TypeError",
            format!(
                "{what} indices must be integers or slices, not {}",
                pickle_type(other)
            ),
        )),
    }
}
