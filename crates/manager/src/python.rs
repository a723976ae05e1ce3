//! Python's `multiprocessing.managers` protocol, served beside ipckit's own: a
//! `BaseManager`/`SyncManager` client reaches the same objects as the Rust proxies.
//!
//! A Python connection carries pickled `(ident, method, args, kwds)` requests and gets
//! `('#RETURN', value)`, `('#ERROR', exception)`, `('#TRACEBACK', text)` or
//! `('#PROXY', (exposed, token))`. Each connection is its own client of the store (Python
//! gives each thread its own connection), so a lock is held by the thread that took it
//! and given back when that connection ends.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
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

/// What the Python side keeps beyond the store: iterators handed out by `__iter__`.
#[derive(Debug, Default)]
pub(crate) struct PyState {
    iters: Mutex<HashMap<String, VecDeque<Value>>>,
    next: AtomicU64,
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
    "setdefault",
    "update",
    "values",
];
const LIST: &[&str] = &[
    "__contains__",
    "__delitem__",
    "__getitem__",
    "__len__",
    "__setitem__",
    "append",
    "count",
    "extend",
    "index",
    "insert",
    "pop",
    "remove",
];
const VALUE: &[&str] = &["get", "set"];
const ACQUIRER: &[&str] = &["acquire", "release", "__enter__", "__exit__"];
const EVENT: &[&str] = &["is_set", "set", "clear", "wait"];
const QUEUE: &[&str] = &[
    "empty",
    "full",
    "get",
    "get_nowait",
    "put",
    "put_nowait",
    "qsize",
];
const BARRIER: &[&str] = &["__getattribute__", "wait"];
const NAMESPACE: &[&str] = &["__getattribute__", "__setattr__", "__delattr__"];
const ITERATOR: &[&str] = &["__next__"];

fn exposed(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Dict => DICT,
        Kind::List => LIST,
        Kind::Value => VALUE,
        Kind::Lock | Kind::RLock | Kind::Semaphore | Kind::Condition => ACQUIRER,
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
                            Some((_, kind)) => Return(Pickle::Tuple(
                                exposed(kind)
                                    .iter()
                                    .map(|s| Pickle::Str((*s).into()))
                                    .collect(),
                            )),
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
            "Event" => Some(Kind::Event),
            "Queue" | "JoinableQueue" => Some(Kind::Queue),
            "Barrier" => Some(Kind::Barrier),
            "Namespace" => Some(Kind::Namespace),
            _ => None,
        };
        let Some(kind) = kind else {
            // A registered name: the object of that name (`get_scores` or `scores`).
            let name = typeid.strip_prefix("get_").unwrap_or(typeid);
            let st = lock(self.ctx.store);
            let found = st.find(typeid).or_else(|| st.find(name));
            return Ok(
                match found.and_then(|h| st.describe(h).map(|(k, _, _)| (h, k))) {
                    Some((h, k)) => Return(Pickle::Tuple(vec![
                        Pickle::Str(format!("{h:x}")),
                        Pickle::Tuple(
                            exposed(k)
                                .iter()
                                .map(|s| Pickle::Str((*s).into()))
                                .collect(),
                        ),
                    ])),
                    None => Traceback(format!(
                        "KeyError: the ipckit manager has no object named '{name}' for typeid '{typeid}' (a Rust process opens it first)"
                    )),
                },
            );
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
            _ => 0,
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
            Pickle::Tuple(
                exposed(kind)
                    .iter()
                    .map(|s| Pickle::Str((*s).into()))
                    .collect(),
            ),
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
        if !exposed(kind).contains(&method) {
            return Ok(Traceback(format!(
                "AttributeError: method '{method}' of {} object is not in exposed={:?}",
                kind.name(),
                exposed(kind)
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
            (Kind::Queue, "full") => Return(Pickle::Bool(false)),
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
                Ok(Answer::Many(keys)) => {
                    let n = self.ctx.py.next.fetch_add(1, Ordering::Relaxed);
                    let ident = format!("it{n:x}");
                    lock(&self.ctx.py.iters).insert(ident.clone(), keys.into());
                    Reply2::Proxy(ITERATOR.to_vec(), "Iterator".into(), ident)
                }
                other => answer(other, "ValueError"),
            },
            (Kind::List, "__getitem__") => match a.need(0, "index") {
                Ok(Pickle::Int(i)) => answer(self.on(h, Call::Index(*i), None)?, "IndexError"),
                Ok(Pickle::Reduce(f, args)) if matches!(f.as_ref(), Pickle::Global(m, n) if m == "builtins" && n == "slice") =>
                {
                    let Pickle::Tuple(t) = args.as_ref() else {
                        return Ok(Err(msg("TypeError", "a bad slice")));
                    };
                    match t.as_slice() {
                        [start, stop, Pickle::None] => {
                            let s = match start {
                                Pickle::Int(i) => *i,
                                _ => 0,
                            };
                            let e = match stop {
                                Pickle::Int(i) => *i,
                                _ => i64::MAX,
                            };
                            answer(self.on(h, Call::Slice(s, e), None)?, "IndexError")
                        }
                        _ => msg("ValueError", "the ipckit manager slices without a step"),
                    }
                }
                Ok(_) => msg("TypeError", "list indices must be integers or slices"),
                Err(e) => e,
            },
            (Kind::List, "__setitem__") => {
                let i = v!(a.int(0, "index")).unwrap_or(0);
                let x = v!(a.value(1, "value"));
                match self.on(h, Call::SetIndex(i, x), None)? {
                    Ok(_) => Return(Pickle::None),
                    Err(f) => fault(f, "IndexError"),
                }
            }
            (Kind::List, "__delitem__") => {
                let i = v!(a.int(0, "index")).unwrap_or(0);
                match self.on(h, Call::RemoveAt(i), None)? {
                    Ok(_) => Return(Pickle::None),
                    Err(f) => fault(f, "IndexError"),
                }
            }
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
            (Kind::List, "__contains__" | "count" | "index" | "remove") => {
                let x = v!(a.value(0, "value"));
                let items = match self.on(h, Call::Snapshot, None)? {
                    Ok(Answer::Snapshot {
                        value: Value::List(v),
                        ..
                    }) => v,
                    other => return Ok(Err(answer(other, "ValueError"))),
                };
                let at = items.iter().position(|v| *v == x);
                match (method, at) {
                    ("__contains__", at) => Return(Pickle::Bool(at.is_some())),
                    ("count", _) => {
                        Return(Pickle::Int(items.iter().filter(|v| **v == x).count() as i64))
                    }
                    (_, None) => msg("ValueError", format!("{} is not in list", repr(&x))),
                    ("index", Some(i)) => Return(Pickle::Int(i as i64)),
                    (_, Some(i)) => match self.on(h, Call::RemoveAt(i as i64), None)? {
                        Ok(_) => Return(Pickle::None),
                        Err(f) => fault(f, "ValueError"),
                    },
                }
            }
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
                    Err(Fault::Invalid { .. }) if kind == Kind::RLock => {
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
            (Kind::Queue, "put" | "put_nowait") => {
                let x = v!(a.value(0, "item"));
                match self.on(h, Call::Put(x), None)? {
                    Ok(_) => Return(Pickle::None),
                    Err(f) => fault(f, "ValueError"),
                }
            }
            (Kind::Queue, "get" | "get_nowait") => {
                let block = method == "get" && a.flag(0, "block", true);
                let got = if block {
                    let timeout = v!(a.timeout(1));
                    self.on(h, Call::Take, timeout)?
                } else {
                    self.on(h, Call::TryTake, None)?
                };
                match got {
                    Ok(Answer::Value(v) | Answer::Maybe(Some(v))) => Return(from_value(&v)),
                    Ok(Answer::Maybe(None)) | Err(Fault::Cancelled) => {
                        PyErr(Pickle::call("_queue", "Empty", vec![]))
                    }
                    other => answer(other, "ValueError"),
                }
            }
            (Kind::Barrier, "wait") => {
                let timeout = v!(a.timeout(0));
                match self.on(h, Call::Wait, timeout)? {
                    Ok(Answer::Len(n)) => Return(Pickle::Int(n as i64)),
                    Err(Fault::Cancelled) => {
                        PyErr(Pickle::call("threading", "BrokenBarrierError", vec![]))
                    }
                    other => answer(other, "RuntimeError"),
                }
            }
            (Kind::Barrier, "__getattribute__") => {
                let parties = lock(self.ctx.store).describe(h).map_or(0, |d| d.2);
                match a.get(0, "name") {
                    Some(Pickle::Str(s)) if s == "parties" => Return(Pickle::Int(parties as i64)),
                    Some(Pickle::Str(s)) if s == "broken" => Return(Pickle::Bool(false)),
                    Some(p) => msg(
                        "AttributeError",
                        format!("'Barrier' object has no attribute {}", py_str(p)),
                    ),
                    None => msg("TypeError", "missing argument 'name'"),
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
