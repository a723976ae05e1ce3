//! The functions a server offers, by name.

use std::{
    collections::BTreeMap,
    fmt,
    marker::PhantomData,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value as Json;

use crate::{Error, Fault, Result, Value};

/// A method's name with its parameter type `A` and result type `R`, declared once and shared
/// by server and client, so that a call with the wrong types does not compile.
///
/// ```
/// use ipckit_rpc::Method;
/// const ADD: Method<(i64, i64), i64> = Method::new("add");
/// ```
///
/// A call with other types is refused by the compiler:
///
/// ```compile_fail
/// # use ipckit_rpc::{Client, Method};
/// # const ADD: Method<(i64, i64), i64> = Method::new("add");
/// # fn f(client: &Client) -> ipckit_rpc::Result<()> {
/// let sum: i64 = client.call(ADD, &(5, "3"))?;
/// # Ok(()) }
/// ```
///
/// The server registers a function for it with [`Registry::method`]; a client calls it with
/// [`Client::call`](crate::Client::call). Several parameters are a tuple; XML-RPC and
/// JSON-RPC callers pass them as a list (`add(5, 3)`, `"params": [5, 3]`).
pub struct Method<A, R> {
    name: &'static str,
    types: PhantomData<fn(A) -> R>,
}

impl<A, R> Method<A, R> {
    /// A method called `name`.
    pub const fn new(name: &'static str) -> Self {
        Method {
            name,
            types: PhantomData,
        }
    }

    /// Its name.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<A, R> Clone for Method<A, R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A, R> Copy for Method<A, R> {}
impl<A, R> fmt::Debug for Method<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Method({:?})", self.name)
    }
}

/// A method whose function returns a stream of items: its name, parameter type `A` and item
/// type `T`, declared once and shared by server and client, like a [`Method`].
///
/// The server registers an iterator for it with [`Registry::stream`]; a client calls it
/// with [`Client::stream`](crate::Client::stream), which gives an iterator of
/// `Result<T>`. Streams go over the typed transport only: XML-RPC and JSON-RPC have none,
/// and answer a call of it with a fault ([`Error::WrongKind`]).
///
/// ```
/// use ipckit_rpc::StreamMethod;
/// const COUNT: StreamMethod<u32, u64> = StreamMethod::new("count");
/// ```
///
/// Items of another type are refused by the compiler:
///
/// ```compile_fail
/// # use ipckit_rpc::{Client, StreamMethod};
/// # const COUNT: StreamMethod<u32, u64> = StreamMethod::new("count");
/// # fn f(client: &Client) -> ipckit_rpc::Result<()> {
/// for item in client.stream(COUNT, &3)? {
///     let text: String = item?;
/// }
/// # Ok(()) }
/// ```
pub struct StreamMethod<A, T> {
    name: &'static str,
    types: PhantomData<fn(A) -> T>,
}

impl<A, T> StreamMethod<A, T> {
    /// A stream method called `name`.
    pub const fn new(name: &'static str) -> Self {
        StreamMethod {
            name,
            types: PhantomData,
        }
    }

    /// Its name.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<A, T> Clone for StreamMethod<A, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A, T> Copy for StreamMethod<A, T> {}
impl<A, T> fmt::Debug for StreamMethod<A, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamMethod({:?})", self.name)
    }
}

type BytesFn = dyn Fn(&[u8]) -> Result<Vec<u8>> + Send + Sync;
/// A stream's function: takes the parameters and a sink for each item's bytes, which says
/// `false` once nobody wants more.
type StreamFn = dyn Fn(&[u8], &mut dyn FnMut(Vec<u8>) -> bool) -> Result<()> + Send + Sync;
type JsonFn = dyn Fn(Json) -> Result<Json> + Send + Sync;
type ValuesFn = dyn Fn(Vec<Value>) -> Result<Value> + Send + Sync;

pub(crate) struct Entry {
    /// `None` for a stream.
    bytes: Option<Box<BytesFn>>,
    /// `Some` for a stream only.
    stream: Option<Box<StreamFn>>,
    json: Box<JsonFn>,
    values: Box<ValuesFn>,
    help: String,
    /// How long its last typed call ran, in microseconds (0: not yet called).
    last_us: AtomicU64,
}

/// A function whose last typed call ran shorter than this is run by the thread that read
/// the call, without waking another to read meanwhile.
const QUICK_US: u64 = 50;

/// The functions a server offers, each under a name: built once, then served over any
/// ipckit transport ([`Server`](crate::Server), [`serve_connection`](crate::serve_connection))
/// and over HTTP as XML-RPC and JSON-RPC ([`HttpServer`](crate::HttpServer)); one registry
/// serves all of them (it is cheap to clone).
///
/// ```
/// use ipckit_rpc::{Fault, Registry};
/// let registry = Registry::new()
///     .register("add", |(a, b): (i64, i64)| Ok(a + b))
///     .register("div", |(a, b): (i64, i64)| {
///         a.checked_div(b).ok_or_else(|| Fault::new(1, "division by zero"))
///     });
/// assert_eq!(registry.names(), ["add", "div"]);
/// ```
///
/// A function takes one serde type (several parameters are a tuple) and returns
/// `Result<R, Fault>`; a [`Fault`] reaches the caller as [`Error::Remote`]. A function that
/// panics gives the caller [`Error::Panicked`] and the server serves on. Functions run on
/// several threads at once, hence `Send + Sync`.
#[derive(Clone, Default)]
pub struct Registry {
    methods: BTreeMap<String, Arc<Entry>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("methods", &self.names())
            .finish()
    }
}

fn decode_json<A: DeserializeOwned>(params: Json) -> std::result::Result<A, String> {
    match serde_json::from_value::<A>(params.clone()) {
        Ok(a) => Ok(a),
        Err(e) => {
            if let Json::Array(items) = &params {
                // One parameter passed as a list of one; none as an empty list.
                let alt = match items.as_slice() {
                    [one] => Some(one.clone()),
                    [] => Some(Json::Null),
                    _ => None,
                };
                if let Some(Ok(a)) = alt.map(serde_json::from_value::<A>) {
                    return Ok(a);
                }
            }
            Err(e.to_string())
        }
    }
}

/// Decodes the whole of `bytes` as an `A`: bytes left over mean another type was sent.
fn decode_postcard<A: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<A, String> {
    match postcard::take_from_bytes(bytes) {
        Ok((a, [])) => Ok(a),
        Ok((_, rest)) => Err(format!(
            "{} bytes left over: not the type the function takes",
            rest.len()
        )),
        Err(e) => Err(e.to_string()),
    }
}

fn values_to_json(params: Vec<Value>) -> Json {
    Json::Array(params.iter().map(Value::to_json).collect())
}

fn json_to_values(params: Json) -> Vec<Value> {
    match params {
        Json::Null => Vec::new(),
        Json::Array(a) => a.iter().map(Value::from_json).collect(),
        other => vec![Value::from_json(&other)],
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Registers `f` under `name`; a later registration of the same name replaces it.
    pub fn register<A, R, F>(mut self, name: &str, f: F) -> Self
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
        F: Fn(A) -> Result<R, Fault> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let (method, f1, f2) = (name.to_owned(), f.clone(), f.clone());
        let m1 = method.clone();
        let bytes = move |params: &[u8]| -> Result<Vec<u8>> {
            let a: A = decode_postcard(params).map_err(|reason| Error::BadParams {
                method: m1.clone(),
                reason,
            })?;
            let r = f1(a).map_err(Error::Remote)?;
            postcard::to_stdvec(&r).map_err(|e| Error::Decode(e.to_string()))
        };
        let m2 = method.clone();
        let json = move |params: Json| -> Result<Json> {
            let a: A = decode_json(params).map_err(|reason| Error::BadParams {
                method: m2.clone(),
                reason,
            })?;
            let r = f2(a).map_err(Error::Remote)?;
            serde_json::to_value(&r).map_err(|e| Error::Decode(e.to_string()))
        };
        let json = Arc::new(json);
        let j2 = json.clone();
        let values = move |params: Vec<Value>| -> Result<Value> {
            j2(values_to_json(params)).map(|j| Value::from_json(&j))
        };
        self.insert(
            name,
            Some(Box::new(bytes)),
            Box::new(move |p| json(p)),
            Box::new(values),
        );
        self
    }

    /// Registers the function of a [`StreamMethod`]: it returns an iterator (or a fault
    /// before the first item), and each item it yields goes to the caller as it comes. An
    /// `Err` item reaches the caller as [`Error::Remote`] and ends the stream. The function
    /// runs on a server thread until its iterator ends; when the caller drops its end (or
    /// goes away), the server stops taking items and drops the iterator. The server takes
    /// an item only when the caller has room for it (a window of 32 items not yet
    /// consumed), so a slow caller slows the iterator down rather than filling memory.
    ///
    /// ```
    /// use ipckit_rpc::{Fault, Registry, StreamMethod};
    /// const COUNT: StreamMethod<u32, u64> = StreamMethod::new("count");
    /// let registry = Registry::new().stream(COUNT, |n| Ok((0..u64::from(n)).map(Ok)));
    /// ```
    ///
    /// Over XML-RPC and JSON-RPC, the method answers a fault: those protocols have no
    /// streams.
    pub fn stream<A, T, I, F>(mut self, method: StreamMethod<A, T>, f: F) -> Self
    where
        A: DeserializeOwned + 'static,
        T: Serialize + 'static,
        I: IntoIterator<Item = Result<T, Fault>>,
        F: Fn(A) -> Result<I, Fault> + Send + Sync + 'static,
    {
        let name = method.name;
        let stream = move |params: &[u8], sink: &mut dyn FnMut(Vec<u8>) -> bool| -> Result<()> {
            let a: A = decode_postcard(params).map_err(|reason| Error::BadParams {
                method: name.to_owned(),
                reason,
            })?;
            for item in f(a).map_err(Error::Remote)? {
                let item = item.map_err(Error::Remote)?;
                let bytes = postcard::to_stdvec(&item).map_err(|e| Error::Decode(e.to_string()))?;
                if !sink(bytes) {
                    break;
                }
            }
            Ok(())
        };
        let refuse = move || Error::WrongKind {
            method: name.to_owned(),
            streams: true,
        };
        self.insert(
            name,
            None,
            Box::new(move |_| Err(refuse())),
            Box::new(move |_| Err(refuse())),
        );
        if let Some(e) = self.methods.get_mut(name).and_then(Arc::get_mut) {
            e.stream = Some(Box::new(stream));
        }
        self
    }

    /// Registers the function of a typed [`Method`], so that its types are the ones the
    /// clients call it with.
    pub fn method<A, R, F>(self, method: Method<A, R>, f: F) -> Self
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
        F: Fn(A) -> Result<R, Fault> + Send + Sync + 'static,
    {
        self.register(method.name, f)
    }

    /// Registers `f` under `name`, receiving the XML-RPC values as they came (for a
    /// JSON-RPC call, converted from JSON; for a typed call, a `Vec<Value>`), returning one.
    pub fn register_values<F>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(Vec<Value>) -> Result<Value, Fault> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let (f1, f2) = (f.clone(), f.clone());
        let method = name.to_owned();
        let bytes = move |params: &[u8]| -> Result<Vec<u8>> {
            let a: Vec<Value> = decode_postcard(params).map_err(|reason| Error::BadParams {
                method: method.clone(),
                reason,
            })?;
            let r = f1(a).map_err(Error::Remote)?;
            postcard::to_stdvec(&r).map_err(|e| Error::Decode(e.to_string()))
        };
        let json = move |params: Json| -> Result<Json> {
            f2(json_to_values(params))
                .map(|v| v.to_json())
                .map_err(Error::Remote)
        };
        let values = move |params: Vec<Value>| f(params).map_err(Error::Remote);
        self.insert(
            name,
            Some(Box::new(bytes)),
            Box::new(json),
            Box::new(values),
        );
        self
    }

    /// Sets the help text of `name`, which `system.methodHelp` returns.
    pub fn help(mut self, name: &str, text: &str) -> Self {
        if let Some(e) = self.methods.get_mut(name).and_then(Arc::get_mut) {
            e.help = text.to_owned();
        }
        self
    }

    /// The names registered, in order.
    pub fn names(&self) -> Vec<&str> {
        self.methods.keys().map(String::as_str).collect()
    }

    fn insert(
        &mut self,
        name: &str,
        bytes: Option<Box<BytesFn>>,
        json: Box<JsonFn>,
        values: Box<ValuesFn>,
    ) {
        let entry = Entry {
            bytes,
            stream: None,
            json,
            values,
            help: String::new(),
            last_us: AtomicU64::new(0),
        };
        self.methods.insert(name.to_owned(), Arc::new(entry));
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.methods
            .get(name)
            .map(|e| &**e)
            .ok_or_else(|| Error::UnknownMethod(name.to_owned()))
    }

    pub(crate) fn help_of(&self, name: &str) -> Result<String> {
        self.entry(name).map(|e| e.help.clone())
    }

    /// Calls `name` with postcard-encoded parameters (the typed transport).
    pub(crate) fn call_bytes(&self, name: &str, params: &[u8]) -> Result<Vec<u8>> {
        let e = self.entry(name)?;
        let Some(bytes) = &e.bytes else {
            return Err(Error::WrongKind {
                method: name.to_owned(),
                streams: true,
            });
        };
        let start = Instant::now();
        let result = guarded(name, || bytes(params));
        let took = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        e.last_us.store(took, Ordering::Relaxed);
        result
    }

    /// Whether typed calls of `name` are expected to be quick: its last one was (or it was
    /// never called, or it does not exist). Streams never are.
    pub(crate) fn is_quick(&self, name: &str) -> bool {
        self.methods
            .get(name)
            .is_none_or(|e| e.stream.is_none() && e.last_us.load(Ordering::Relaxed) < QUICK_US)
    }

    /// Runs stream `name` with postcard-encoded parameters, giving each item's bytes to
    /// `sink` until it says `false`.
    pub(crate) fn call_stream(
        &self,
        name: &str,
        params: &[u8],
        sink: &mut dyn FnMut(Vec<u8>) -> bool,
    ) -> Result<()> {
        let e = self.entry(name)?;
        let Some(stream) = &e.stream else {
            return Err(Error::WrongKind {
                method: name.to_owned(),
                streams: false,
            });
        };
        guarded(name, || stream(params, sink))
    }

    /// Calls `name` with JSON parameters (JSON-RPC).
    pub(crate) fn call_json(&self, name: &str, params: Json) -> Result<Json> {
        let e = self.entry(name)?;
        guarded(name, || (e.json)(params))
    }

    /// Calls `name` with XML-RPC values.
    pub(crate) fn call_values(&self, name: &str, params: Vec<Value>) -> Result<Value> {
        let e = self.entry(name)?;
        guarded(name, || (e.values)(params))
    }
}

/// Runs a function, turning its panic into [`Error::Panicked`].
fn guarded<T>(method: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        Err(Error::Panicked {
            method: method.to_owned(),
            message,
        })
    })
}
