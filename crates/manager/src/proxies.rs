//! Typed proxies: cheap handles on the server's objects.

use std::{
    any::type_name,
    borrow::Borrow,
    fmt,
    marker::PhantomData,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Serialize, de::DeserializeOwned};

use crate::{
    Error, Manager, Result, Value,
    client::Conn,
    protocol::{Answer, Call, Kind, Op, Update},
    watch::Watch,
};

/// What every proxy holds: the connection, the object's handle and name, and a timeout
/// for its calls.
#[derive(Clone)]
struct Object {
    conn: Arc<Conn>,
    handle: u32,
    name: Arc<str>,
    timeout: Option<Duration>,
}

impl fmt::Debug for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Object")
            .field("name", &self.name)
            .field("handle", &self.handle)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Object {
    /// The deadline of a call made now under this proxy's timeout (`None`: no limit).
    fn deadline(&self) -> Option<Instant> {
        self.timeout.map(|t| Instant::now() + t)
    }

    fn open(m: &Manager, name: &str, kind: Kind, types: String, init: u64) -> Result<Object> {
        let op = Op::Open {
            name: name.to_string(),
            kind,
            types,
            init,
        };
        match m.conn.call(op, None)? {
            Answer::Handle(handle) => Ok(Object {
                conn: Arc::clone(&m.conn),
                handle,
                name: name.into(),
                timeout: None,
            }),
            other => Err(unexpected(&other)),
        }
    }

    fn call_until(&self, call: Call, deadline: Option<Instant>) -> Result<Answer> {
        self.conn.call(
            Op::On {
                obj: self.handle,
                call,
            },
            deadline,
        )
    }

    fn call(&self, call: Call) -> Result<Answer> {
        self.call_until(call, self.deadline())
    }

    /// Sends `call` without waiting for its answer, which `read` makes a `T` of.
    fn later<T>(&self, call: Call, read: fn(Answer) -> Result<T>) -> Result<Pending<T>> {
        let op = Op::On {
            obj: self.handle,
            call,
        };
        Ok(Pending {
            id: self.conn.submit(op, self.deadline())?,
            conn: Arc::clone(&self.conn),
            timeout: self.timeout,
            read,
            waited: false,
        })
    }

    fn watch(&self) -> Result<Watch> {
        Watch::start(&self.conn, self.handle)
    }
}

/// The answer, still to come, of a call sent without waiting for it — made by a proxy's
/// `_later` methods ([`Dict::incr_later`], [`Dict::insert_later`], [`List::push_later`] …)
/// and taken with [`wait`](Pending::wait).
///
/// A caller that sends many calls before it waits for the first answer pays one round
/// trip for all of them rather than one each, as a Redis pipeline does. The calls of one
/// [`Manager`] are applied in the order they were sent, so a later call, waited for or
/// not, sees what an earlier one did. While 32 calls of the connection await their
/// answers, sending another first reads answers, which wait for their `Pending`s.
///
/// Dropping a `Pending` drops its answer, not its call: the server applies it all the
/// same.
///
/// ```no_run
/// # fn main() -> ipckit_manager::Result<()> {
/// let m = ipckit_manager::Manager::connect(&"unix:///tmp/scores.sock".parse()?, None)?;
/// let hits = m.dict::<String, i64>("hits")?;
/// let sent = (0..1000)
///     .map(|_| hits.incr_later("/", 1))
///     .collect::<Result<Vec<_>, _>>()?;
/// let last = sent.into_iter().map(|p| p.wait()).last().transpose()?;
/// println!("{last:?}");
/// # Ok(()) }
/// ```
#[must_use = "the call is sent; only `wait` gives its answer"]
pub struct Pending<T> {
    conn: Arc<Conn>,
    id: u64,
    timeout: Option<Duration>,
    read: fn(Answer) -> Result<T>,
    waited: bool,
}

impl<T> fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending").field("id", &self.id).finish()
    }
}

impl<T> Pending<T> {
    /// Waits for the answer, under the timeout of the proxy that sent the call.
    ///
    /// # Errors
    /// What the call itself would give; [`Error::Timeout`] past the proxy's timeout.
    pub fn wait(self) -> Result<T> {
        let deadline = self.timeout.map(|t| Instant::now() + t);
        self.wait_until(deadline)
    }

    /// Waits for the answer at most `timeout`; past it, the answer is given up (the call
    /// is applied all the same).
    ///
    /// # Errors
    /// As [`wait`](Pending::wait); [`Error::Timeout`] past `timeout`.
    pub fn wait_timeout(self, timeout: Duration) -> Result<T> {
        self.wait_until(Some(Instant::now() + timeout))
    }

    fn wait_until(mut self, deadline: Option<Instant>) -> Result<T> {
        self.waited = true;
        (self.read)(self.conn.collect(self.id, deadline)?)
    }
}

impl<T> Drop for Pending<T> {
    fn drop(&mut self) {
        if !self.waited {
            self.conn.forget(self.id);
        }
    }
}

fn unexpected(a: &Answer) -> Error {
    Error::Protocol(format!("unexpected answer {a:?}"))
}

fn to_value<T: Serialize + ?Sized>(v: &T) -> Result<Value> {
    Ok(Value::from_typed(v)?)
}

fn typed<T: DeserializeOwned>(a: Answer) -> Result<T> {
    match a {
        Answer::Value(v) => Ok(v.into_typed()?),
        other => Err(unexpected(&other)),
    }
}

fn maybe<T: DeserializeOwned>(a: Answer) -> Result<Option<T>> {
    match a {
        Answer::Maybe(v) => Ok(v.map(Value::into_typed).transpose()?),
        other => Err(unexpected(&other)),
    }
}

fn many<T: DeserializeOwned>(a: Answer) -> Result<Vec<T>> {
    match a {
        Answer::Many(v) => Ok(v
            .into_iter()
            .map(Value::into_typed)
            .collect::<Result<_, _>>()?),
        other => Err(unexpected(&other)),
    }
}

fn unit(a: Answer) -> Result<()> {
    match a {
        Answer::Unit => Ok(()),
        other => Err(unexpected(&other)),
    }
}

fn boolean(a: Answer) -> Result<bool> {
    match a {
        Answer::Bool(b) => Ok(b),
        other => Err(unexpected(&other)),
    }
}

/// What an [`Update`] gives.
fn updated(a: Answer) -> Result<Value> {
    match a {
        Answer::Value(v) => Ok(v),
        Answer::Len(n) => Ok(Value::Int(i64::try_from(n).unwrap_or(i64::MAX))),
        Answer::Many(v) => Ok(Value::List(v)),
        other => Err(unexpected(&other)),
    }
}

/// What an [`Update::Add`] gives: the new number.
fn added<T: DeserializeOwned>(a: Answer) -> Result<T> {
    Ok(updated(a)?.into_typed()?)
}

fn length(a: Answer) -> Result<usize> {
    match a {
        Answer::Len(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        other => Err(unexpected(&other)),
    }
}

/// One operation of a [`Manager::transaction`], made by a proxy's `tx_` methods.
#[derive(Debug, Clone)]
pub struct Step {
    handle: u32,
    call: Call,
}

macro_rules! common {
    ($t:ident $(<$($p:ident),*>)?) => {
        impl$(<$($p),*>)? $t$(<$($p),*>)? {
            /// The object's name on the server.
            pub fn name(&self) -> &str {
                &self.obj.name
            }

            /// A proxy on the same object whose every call gives up after `timeout`
            /// ([`Error::Timeout`]); a call that waits for others (a lock, a queue's
            /// `get`) is withdrawn from the server then.
            #[must_use]
            pub fn with_timeout(&self, timeout: Duration) -> Self {
                let mut p = self.clone();
                p.obj.timeout = Some(timeout);
                p
            }
        }

        impl$(<$($p),*>)? Clone for $t$(<$($p),*>)? {
            fn clone(&self) -> Self {
                $t { obj: self.obj.clone(), _t: PhantomData }
            }
        }

        impl$(<$($p),*>)? fmt::Debug for $t$(<$($p),*>)? {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($t)).field("name", &self.obj.name).finish()
            }
        }
    };
}

/// A dict held by the manager (Python's `manager.dict()`), from keys `K` to values `V`.
///
/// Made by [`Manager::dict`]: get-or-create by name, so every process that opens the same
/// name reaches the same dict. Keys are kept in order (of their [`Value`] form), not in
/// insertion order. Every call is one round trip and atomic; [`incr`](Dict::incr) and
/// [`update`](Dict::update) change a value on the server, so concurrent updates from many
/// processes are never lost. When the server is gone, every call is
/// [`Error::Disconnected`].
pub struct Dict<K, V> {
    obj: Object,
    _t: PhantomData<fn() -> (K, V)>,
}

common!(Dict<K, V>);

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> Dict<K, V> {
    /// The value at `key`, if any.
    ///
    /// # Errors
    /// [`Error::Disconnected`], [`Error::Timeout`] (with [`with_timeout`](Dict::with_timeout)),
    /// [`Error::Value`] if the value there does not convert to `V`: so every call.
    pub fn get<Q: Serialize + ?Sized>(&self, key: &Q) -> Result<Option<V>>
    where
        K: Borrow<Q>,
    {
        maybe(self.obj.call(Call::Get(to_value(key)?))?)
    }

    /// Sets `key` to `value`; gives the value it replaced.
    ///
    /// # Errors
    /// As [`get`](Dict::get); [`Error::TooLarge`] for a value above the server's maximum.
    pub fn insert<Q: Serialize + ?Sized>(&self, key: &Q, value: &V) -> Result<Option<V>>
    where
        K: Borrow<Q>,
    {
        maybe(
            self.obj
                .call(Call::Insert(to_value(key)?, to_value(value)?))?,
        )
    }

    /// [`insert`](Dict::insert), sent without waiting for its answer (see [`Pending`]).
    ///
    /// # Errors
    /// As [`incr_later`](Dict::incr_later).
    pub fn insert_later<Q: Serialize + ?Sized>(
        &self,
        key: &Q,
        value: &V,
    ) -> Result<Pending<Option<V>>>
    where
        K: Borrow<Q>,
    {
        let call = Call::Insert(to_value(key)?, to_value(value)?);
        self.obj.later(call, maybe)
    }

    /// Removes `key`; gives its value.
    ///
    /// # Errors
    /// As [`get`](Dict::get).
    pub fn remove<Q: Serialize + ?Sized>(&self, key: &Q) -> Result<Option<V>>
    where
        K: Borrow<Q>,
    {
        maybe(self.obj.call(Call::Remove(to_value(key)?))?)
    }

    /// Whether `key` is there.
    ///
    /// # Errors
    /// As [`get`](Dict::get).
    pub fn contains<Q: Serialize + ?Sized>(&self, key: &Q) -> Result<bool>
    where
        K: Borrow<Q>,
    {
        boolean(self.obj.call(Call::Contains(to_value(key)?))?)
    }

    /// How many keys there are.
    ///
    /// # Errors
    /// As [`get`](Dict::get).
    pub fn len(&self) -> Result<usize> {
        length(self.obj.call(Call::Len)?)
    }

    /// Whether the dict is empty.
    ///
    /// # Errors
    /// As [`get`](Dict::get).
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Every key, in order.
    ///
    /// # Errors
    /// As [`get`](Dict::get).
    pub fn keys(&self) -> Result<Vec<K>> {
        many(self.obj.call(Call::Keys)?)
    }

    /// Every value, in the order of their keys.
    ///
    /// # Errors
    /// As [`get`](Dict::get).
    pub fn values(&self) -> Result<Vec<V>> {
        many(self.obj.call(Call::Values)?)
    }

    /// Every key and value, in order: a snapshot of the whole dict.
    ///
    /// # Errors
    /// As [`get`](Dict::get).
    pub fn items(&self) -> Result<Vec<(K, V)>> {
        match self.obj.call(Call::Items)? {
            Answer::Pairs(p) => p
                .into_iter()
                .map(|(k, v)| Ok((k.into_typed()?, v.into_typed()?)))
                .collect(),
            other => Err(unexpected(&other)),
        }
    }

    /// Sets every pair, atomically.
    ///
    /// # Errors
    /// As [`insert`](Dict::insert).
    pub fn extend<'a>(&self, pairs: impl IntoIterator<Item = (&'a K, &'a V)>) -> Result<()>
    where
        K: 'a,
        V: 'a,
    {
        let pairs = pairs
            .into_iter()
            .map(|(k, v)| Ok((to_value(k)?, to_value(v)?)))
            .collect::<Result<Vec<_>>>()?;
        unit(self.obj.call(Call::UpdateMany(pairs))?)
    }

    /// Empties the dict.
    ///
    /// # Errors
    /// As [`get`](Dict::get).
    pub fn clear(&self) -> Result<()> {
        unit(self.obj.call(Call::Clear)?)
    }

    /// The value at `key`, inserting `default` first if there is none (Python's
    /// `setdefault`).
    ///
    /// # Errors
    /// As [`insert`](Dict::insert).
    pub fn get_or_insert<Q: Serialize + ?Sized>(&self, key: &Q, default: &V) -> Result<V>
    where
        K: Borrow<Q>,
    {
        typed(
            self.obj
                .call(Call::GetOrInsert(to_value(key)?, to_value(default)?))?,
        )
    }

    /// Adds `by` to the number at `key` (a missing key counts as zero), on the server, in
    /// one round trip: `scores[p] += 1` that never loses an update. Gives the new value.
    ///
    /// # Errors
    /// [`Error::Invalid`] if the value there is not a number (or overflows); as
    /// [`get`](Dict::get).
    pub fn incr<Q: Serialize + ?Sized>(&self, key: &Q, by: V) -> Result<V>
    where
        K: Borrow<Q>,
    {
        added(
            self.obj
                .call(Call::Apply(to_value(key)?, Update::Add(to_value(&by)?)))?,
        )
    }

    /// [`incr`](Dict::incr), sent without waiting for its answer (see [`Pending`]).
    ///
    /// # Errors
    /// [`Error::Disconnected`], [`Error::Value`], [`Error::TooLarge`]; [`Error::Timeout`]
    /// past the proxy's timeout while 32 calls await their answers.
    pub fn incr_later<Q: Serialize + ?Sized>(&self, key: &Q, by: V) -> Result<Pending<V>>
    where
        K: Borrow<Q>,
    {
        let call = Call::Apply(to_value(key)?, Update::Add(to_value(&by)?));
        self.obj.later(call, added)
    }

    /// [`update`](Dict::update), sent without waiting for its answer (see [`Pending`]).
    ///
    /// # Errors
    /// As [`incr_later`](Dict::incr_later).
    pub fn update_later<Q: Serialize + ?Sized>(&self, key: &Q, op: Update) -> Result<Pending<Value>>
    where
        K: Borrow<Q>,
    {
        self.obj.later(Call::Apply(to_value(key)?, op), updated)
    }

    /// Applies `op` to the value at `key` on the server, atomically, and gives its answer
    /// as [`Update`] describes (the new value; `[swapped, current]` for compare-and-swap;
    /// a list's length for `Push`).
    ///
    /// # Errors
    /// [`Error::Invalid`] if `op` does not apply to the value there; as
    /// [`get`](Dict::get).
    pub fn update<Q: Serialize + ?Sized>(&self, key: &Q, op: Update) -> Result<Value>
    where
        K: Borrow<Q>,
    {
        updated(self.obj.call(Call::Apply(to_value(key)?, op))?)
    }

    /// Sets `key` to `new` if its value is `expected` (`None`: absent); gives `Ok` with
    /// the new value, or `Err` with what is there.
    ///
    /// # Errors
    /// As [`insert`](Dict::insert).
    pub fn compare_and_swap<Q: Serialize + ?Sized>(
        &self,
        key: &Q,
        expected: Option<&V>,
        new: &V,
    ) -> Result<Result<V, Option<V>>>
    where
        K: Borrow<Q>,
    {
        let expected = match expected {
            Some(v) => to_value(v)?,
            None => Value::None,
        };
        let op = Update::CompareAndSwap {
            expected,
            new: to_value(new)?,
        };
        match self.update(key, op)? {
            Value::List(mut v) if v.len() == 2 => {
                let now = v.pop().unwrap_or(Value::None);
                if v[0] == Value::Bool(true) {
                    Ok(Ok(now.into_typed()?))
                } else if now == Value::None {
                    Ok(Err(None))
                } else {
                    Ok(Err(Some(now.into_typed()?)))
                }
            }
            other => Err(Error::Protocol(format!("unexpected answer {other}"))),
        }
    }

    /// A step of a [`Manager::transaction`]: `op` on the value at `key`.
    ///
    /// # Errors
    /// [`Error::Value`] if the key does not convert.
    pub fn tx_update<Q: Serialize + ?Sized>(&self, key: &Q, op: Update) -> Result<Step>
    where
        K: Borrow<Q>,
    {
        Ok(Step {
            handle: self.obj.handle,
            call: Call::Apply(to_value(key)?, op),
        })
    }

    /// A step of a [`Manager::transaction`]: sets `key` to `value`.
    ///
    /// # Errors
    /// [`Error::Value`] if the key or value does not convert.
    pub fn tx_insert<Q: Serialize + ?Sized>(&self, key: &Q, value: &V) -> Result<Step>
    where
        K: Borrow<Q>,
    {
        Ok(Step {
            handle: self.obj.handle,
            call: Call::Insert(to_value(key)?, to_value(value)?),
        })
    }

    /// Watches every change of the dict ([`Change::Set`](crate::Change::Set) with the key,
    /// `Removed`, `Cleared`).
    ///
    /// # Errors
    /// [`Error::Disconnected`] if the server is gone.
    pub fn watch(&self) -> Result<Watch> {
        self.obj.watch()
    }
}

/// A list held by the manager (Python's `manager.list()`) of `T`.
///
/// Made by [`Manager::list`], get-or-create by name. Negative indices count from the end,
/// as in Python. Every call is one round trip and atomic.
pub struct List<T> {
    obj: Object,
    _t: PhantomData<fn() -> T>,
}

common!(List<T>);

impl<T: Serialize + DeserializeOwned> List<T> {
    /// Appends `item`; gives the new length.
    ///
    /// # Errors
    /// [`Error::Disconnected`], [`Error::Timeout`], [`Error::TooLarge`], [`Error::Value`].
    pub fn push(&self, item: &T) -> Result<usize> {
        length(self.obj.call(Call::Push(to_value(item)?))?)
    }

    /// [`push`](List::push), sent without waiting for its answer (see [`Pending`]).
    ///
    /// # Errors
    /// [`Error::Disconnected`], [`Error::Value`], [`Error::TooLarge`]; [`Error::Timeout`]
    /// past the proxy's timeout while 32 calls await their answers.
    pub fn push_later(&self, item: &T) -> Result<Pending<usize>> {
        self.obj.later(Call::Push(to_value(item)?), length)
    }

    /// Appends every item, atomically; gives the new length.
    ///
    /// # Errors
    /// As [`push`](List::push).
    pub fn extend<'a>(&self, items: impl IntoIterator<Item = &'a T>) -> Result<usize>
    where
        T: 'a,
    {
        let items = items
            .into_iter()
            .map(to_value)
            .collect::<Result<Vec<_>>>()?;
        length(self.obj.call(Call::Extend(items))?)
    }

    /// The item at `index`.
    ///
    /// # Errors
    /// [`Error::Index`] out of range; as [`push`](List::push).
    pub fn get(&self, index: i64) -> Result<T> {
        typed(self.obj.call(Call::Index(index))?)
    }

    /// Replaces the item at `index`.
    ///
    /// # Errors
    /// [`Error::Index`] out of range; as [`push`](List::push).
    pub fn set(&self, index: i64, item: &T) -> Result<()> {
        unit(self.obj.call(Call::SetIndex(index, to_value(item)?))?)
    }

    /// Inserts `item` before `index` (clamped to the list, as Python's `insert`).
    ///
    /// # Errors
    /// As [`push`](List::push).
    pub fn insert(&self, index: i64, item: &T) -> Result<()> {
        unit(self.obj.call(Call::InsertAt(index, to_value(item)?))?)
    }

    /// Removes and gives the item at `index`.
    ///
    /// # Errors
    /// [`Error::Index`] out of range; as [`push`](List::push).
    pub fn remove(&self, index: i64) -> Result<T> {
        typed(self.obj.call(Call::RemoveAt(index))?)
    }

    /// Removes and gives the last item.
    ///
    /// # Errors
    /// As [`push`](List::push).
    pub fn pop(&self) -> Result<Option<T>> {
        maybe(self.obj.call(Call::Pop)?)
    }

    /// The length.
    ///
    /// # Errors
    /// As [`push`](List::push).
    pub fn len(&self) -> Result<usize> {
        length(self.obj.call(Call::Len)?)
    }

    /// Whether the list is empty.
    ///
    /// # Errors
    /// As [`push`](List::push).
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The items from `start` up to `end` (Python's `l[start:end]`, clamped).
    ///
    /// # Errors
    /// As [`push`](List::push).
    pub fn slice(&self, start: i64, end: i64) -> Result<Vec<T>> {
        many(self.obj.call(Call::Slice(start, end))?)
    }

    /// Every item.
    ///
    /// # Errors
    /// As [`push`](List::push).
    pub fn snapshot(&self) -> Result<Vec<T>> {
        self.slice(0, i64::MAX)
    }

    /// Empties the list.
    ///
    /// # Errors
    /// As [`push`](List::push).
    pub fn clear(&self) -> Result<()> {
        unit(self.obj.call(Call::Clear)?)
    }

    /// A step of a [`Manager::transaction`]: appends `item`.
    ///
    /// # Errors
    /// [`Error::Value`] if the item does not convert.
    pub fn tx_push(&self, item: &T) -> Result<Step> {
        Ok(Step {
            handle: self.obj.handle,
            call: Call::Push(to_value(item)?),
        })
    }

    /// Watches every change ([`Change::Inserted`](crate::Change::Inserted) for pushes,
    /// `Set` and `Removed` with the index, `Cleared`).
    ///
    /// # Errors
    /// [`Error::Disconnected`] if the server is gone.
    pub fn watch(&self) -> Result<Watch> {
        self.obj.watch()
    }
}

/// One value held by the manager (Python's `manager.Value`), of `T`.
///
/// Made by [`Manager::value`], get-or-create by name; it holds nothing until set.
pub struct Shared<T> {
    obj: Object,
    _t: PhantomData<fn() -> T>,
}

common!(Shared<T>);

impl<T: Serialize + DeserializeOwned> Shared<T> {
    /// The value, or `None` if none was set.
    ///
    /// # Errors
    /// [`Error::Disconnected`], [`Error::Timeout`], [`Error::Value`].
    pub fn get(&self) -> Result<Option<T>> {
        match self.obj.call(Call::Load)? {
            Answer::Value(Value::None) => Ok(None),
            Answer::Value(v) => Ok(Some(v.into_typed()?)),
            other => Err(unexpected(&other)),
        }
    }

    /// Sets the value.
    ///
    /// # Errors
    /// As [`get`](Shared::get); [`Error::TooLarge`].
    pub fn set(&self, value: &T) -> Result<()> {
        unit(self.obj.call(Call::Store(to_value(value)?))?)
    }

    /// Adds `by` on the server (nothing set counts as zero); gives the new value.
    ///
    /// # Errors
    /// [`Error::Invalid`] if the value is not a number; as [`get`](Shared::get).
    pub fn incr(&self, by: T) -> Result<T> {
        added(
            self.obj
                .call(Call::ApplyValue(Update::Add(to_value(&by)?)))?,
        )
    }

    /// [`incr`](Shared::incr), sent without waiting for its answer (see [`Pending`]).
    ///
    /// # Errors
    /// [`Error::Disconnected`], [`Error::Value`]; [`Error::Timeout`] past the proxy's
    /// timeout while 32 calls await their answers.
    pub fn incr_later(&self, by: T) -> Result<Pending<T>> {
        self.obj
            .later(Call::ApplyValue(Update::Add(to_value(&by)?)), added)
    }

    /// Applies `op` on the server, atomically; gives its answer (see [`Update`]).
    ///
    /// # Errors
    /// [`Error::Invalid`] if `op` does not apply; as [`get`](Shared::get).
    pub fn update(&self, op: Update) -> Result<Value> {
        updated(self.obj.call(Call::ApplyValue(op))?)
    }

    /// A step of a [`Manager::transaction`]: sets the value.
    ///
    /// # Errors
    /// [`Error::Value`] if the value does not convert.
    pub fn tx_set(&self, value: &T) -> Result<Step> {
        Ok(Step {
            handle: self.obj.handle,
            call: Call::Store(to_value(value)?),
        })
    }

    /// Watches every change ([`Change::Set`](crate::Change::Set) with key `None`).
    ///
    /// # Errors
    /// [`Error::Disconnected`] if the server is gone.
    pub fn watch(&self) -> Result<Watch> {
        self.obj.watch()
    }
}

/// A lock held by the manager (Python's `manager.Lock()`), for many processes.
///
/// Made by [`Manager::lock`]. It is held by a process (its connection): a thread that
/// acquires it waits while another thread or process holds it. When its holder's process
/// dies, or its connection ends, the server releases it at once and the next waiter gets
/// it.
pub struct Lock {
    obj: Object,
    _t: PhantomData<()>,
}

common!(Lock);

/// A held [`Lock`] (or [`Semaphore`] permit); released when dropped.
#[derive(Debug)]
#[must_use = "the lock is released when the guard is dropped"]
pub struct Guard {
    obj: Option<Object>,
}

impl Guard {
    /// Releases now, reporting a failure (the guard's drop ignores it).
    ///
    /// # Errors
    /// [`Error::Disconnected`] if the server is gone (which released it anyway).
    pub fn release(mut self) -> Result<()> {
        match self.obj.take() {
            Some(o) => unit(o.call_until(Call::Release, None)?),
            None => Ok(()),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(o) = self.obj.take() {
            let _ = o.call_until(Call::Release, None);
        }
    }
}

fn acquire(obj: &Object, deadline: Option<Instant>) -> Result<Guard> {
    unit(obj.call_until(Call::Acquire, deadline)?)?;
    Ok(Guard {
        obj: Some(obj.clone()),
    })
}

fn try_acquire(obj: &Object) -> Result<Option<Guard>> {
    Ok(boolean(obj.call(Call::TryAcquire)?)?.then(|| Guard {
        obj: Some(obj.clone()),
    }))
}

impl Lock {
    /// Waits for the lock (as long as it takes, or the proxy's timeout).
    ///
    /// # Errors
    /// [`Error::Disconnected`] when the server dies, even while waiting;
    /// [`Error::Timeout`] with [`with_timeout`](Lock::with_timeout).
    pub fn acquire(&self) -> Result<Guard> {
        acquire(&self.obj, self.obj.deadline())
    }

    /// Waits at most `timeout` for the lock.
    ///
    /// # Errors
    /// [`Error::Timeout`]; as [`acquire`](Lock::acquire).
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<Guard> {
        acquire(&self.obj, Some(Instant::now() + timeout))
    }

    /// Takes the lock if it is free.
    ///
    /// # Errors
    /// As [`acquire`](Lock::acquire).
    pub fn try_acquire(&self) -> Result<Option<Guard>> {
        try_acquire(&self.obj)
    }
}

/// A re-entrant lock held by the manager (Python's `manager.RLock()`).
///
/// Made by [`Manager::rlock`]. It is held by one thread of one process, which may acquire
/// it again (each acquire needs its release); other threads and processes wait. When its
/// holder's process dies, it is released at once.
pub struct RLock {
    obj: Object,
    _t: PhantomData<()>,
}

common!(RLock);

/// A held [`RLock`]; released (once) when dropped, from the thread that acquired it.
#[derive(Debug)]
#[must_use = "the lock is released when the guard is dropped"]
pub struct RGuard {
    obj: Option<Object>,
    token: u64,
    /// Released by the thread that holds it: not `Send`.
    _thread: PhantomData<*const ()>,
}

impl RGuard {
    /// Releases now, reporting a failure (the guard's drop ignores it).
    ///
    /// # Errors
    /// [`Error::Disconnected`] if the server is gone (which released it anyway).
    pub fn release(mut self) -> Result<()> {
        match self.obj.take() {
            Some(o) => unit(o.call_until(Call::ReleaseAs(self.token), None)?),
            None => Ok(()),
        }
    }
}

impl Drop for RGuard {
    fn drop(&mut self) {
        if let Some(o) = self.obj.take() {
            let _ = o.call_until(Call::ReleaseAs(self.token), None);
        }
    }
}

/// This thread's token, naming it to the server as an [`RLock`]'s holder.
fn thread_token() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static TOKEN: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    TOKEN.with(|t| *t)
}

impl RLock {
    fn guard(&self, token: u64) -> RGuard {
        RGuard {
            obj: Some(self.obj.clone()),
            token,
            _thread: PhantomData,
        }
    }

    /// Waits for the lock; at once if this thread holds it already.
    ///
    /// # Errors
    /// As [`Lock::acquire`].
    pub fn acquire(&self) -> Result<RGuard> {
        let token = thread_token();
        let deadline = self.obj.deadline();
        unit(self.obj.call_until(Call::AcquireAs(token), deadline)?)?;
        Ok(self.guard(token))
    }

    /// Waits at most `timeout` for the lock.
    ///
    /// # Errors
    /// As [`Lock::acquire_timeout`].
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<RGuard> {
        let token = thread_token();
        let deadline = Some(Instant::now() + timeout);
        unit(self.obj.call_until(Call::AcquireAs(token), deadline)?)?;
        Ok(self.guard(token))
    }

    /// Takes the lock if it is free or this thread holds it.
    ///
    /// # Errors
    /// As [`Lock::acquire`].
    pub fn try_acquire(&self) -> Result<Option<RGuard>> {
        let token = thread_token();
        Ok(boolean(self.obj.call(Call::TryAcquireAs(token))?)?.then(|| self.guard(token)))
    }
}

/// A condition variable held by the manager (Python's `manager.Condition()`), with its own
/// lock.
///
/// Made by [`Manager::condition`]. [`acquire`](Condition::acquire) its lock, then
/// [`wait`](Condition::wait) (which gives the lock up while waiting and takes it back
/// before returning) or [`notify`](Condition::notify). The lock is held per process, as
/// [`Lock`]'s; a holder that dies gives it back, a waiter that dies is forgotten.
pub struct Condition {
    obj: Object,
    _t: PhantomData<()>,
}

common!(Condition);

impl Condition {
    /// Waits for the condition's lock.
    ///
    /// # Errors
    /// As [`Lock::acquire`].
    pub fn acquire(&self) -> Result<Guard> {
        acquire(&self.obj, self.obj.deadline())
    }

    /// Takes the lock if it is free.
    ///
    /// # Errors
    /// As [`Lock::acquire`].
    pub fn try_acquire(&self) -> Result<Option<Guard>> {
        try_acquire(&self.obj)
    }

    /// Gives the lock up, waits to be notified, and takes the lock back.
    ///
    /// # Errors
    /// [`Error::Invalid`] without the lock; [`Error::Disconnected`] when the server dies,
    /// even while waiting.
    pub fn wait(&self) -> Result<()> {
        match self.obj.call_until(Call::Wait, None)? {
            Answer::Bool(_) => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// As [`wait`](Condition::wait), for at most `timeout`: `false` if it timed out. Either
    /// way the lock is held again when it returns.
    ///
    /// # Errors
    /// As [`wait`](Condition::wait).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        match self
            .obj
            .call_until(Call::Wait, Some(Instant::now() + timeout))?
        {
            Answer::Bool(b) => Ok(b),
            other => Err(unexpected(&other)),
        }
    }

    /// Wakes up to `n` waiters (they run once they get the lock); gives how many.
    ///
    /// # Errors
    /// [`Error::Invalid`] without the lock; [`Error::Disconnected`].
    pub fn notify(&self, n: usize) -> Result<usize> {
        length(self.obj.call(Call::Notify(n as u64))?)
    }

    /// Wakes every waiter; gives how many.
    ///
    /// # Errors
    /// As [`notify`](Condition::notify).
    pub fn notify_all(&self) -> Result<usize> {
        length(self.obj.call(Call::Notify(u64::MAX))?)
    }
}

/// A barrier held by the manager (Python's `manager.Barrier(n)`): `n` parties wait until
/// all have come, then all go on, and it is ready for the next round.
///
/// Made by [`Manager::barrier`]. A waiting party whose process dies frees its place: the
/// barrier then waits for another.
pub struct Barrier {
    obj: Object,
    _t: PhantomData<()>,
}

common!(Barrier);

impl Barrier {
    /// Waits until every party has come; gives this party's place in the round (0 for the
    /// first to come, `n - 1` for the last).
    ///
    /// # Errors
    /// [`Error::Disconnected`] when the server dies, even while waiting;
    /// [`Error::Timeout`] with [`with_timeout`](Barrier::with_timeout) (this party then
    /// leaves the round).
    pub fn wait(&self) -> Result<usize> {
        length(self.obj.call(Call::Wait)?)
    }

    /// Waits at most `timeout` for every party.
    ///
    /// # Errors
    /// [`Error::Timeout`]; as [`wait`](Barrier::wait).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize> {
        length(
            self.obj
                .call_until(Call::Wait, Some(Instant::now() + timeout))?,
        )
    }
}

/// A namespace held by the manager (Python's `manager.Namespace()`): named attributes of
/// any type.
///
/// Made by [`Manager::namespace`]. Each attribute is read and written with its type
/// ([`get`](Namespace::get), [`set`](Namespace::set)); a read with another type than was
/// written is [`Error::Value`].
pub struct Namespace {
    obj: Object,
    _t: PhantomData<()>,
}

common!(Namespace);

impl Namespace {
    /// The attribute `attr`, if set.
    ///
    /// # Errors
    /// [`Error::Value`] if it holds another type; [`Error::Disconnected`], [`Error::Timeout`].
    pub fn get<T: DeserializeOwned>(&self, attr: &str) -> Result<Option<T>> {
        maybe(self.obj.call(Call::Get(Value::Str(attr.to_string())))?)
    }

    /// Sets the attribute `attr`.
    ///
    /// # Errors
    /// As [`get`](Namespace::get); [`Error::TooLarge`].
    pub fn set<T: Serialize + ?Sized>(&self, attr: &str, value: &T) -> Result<()> {
        let call = Call::Insert(Value::Str(attr.to_string()), to_value(value)?);
        self.obj.call(call).map(|_| ())
    }

    /// Removes the attribute `attr`; whether it was there.
    ///
    /// # Errors
    /// As [`get`](Namespace::get).
    pub fn remove(&self, attr: &str) -> Result<bool> {
        match self.obj.call(Call::Remove(Value::Str(attr.to_string())))? {
            Answer::Maybe(v) => Ok(v.is_some()),
            other => Err(unexpected(&other)),
        }
    }

    /// Applies `op` to the attribute on the server, atomically (see [`Update`]).
    ///
    /// # Errors
    /// [`Error::Invalid`] if `op` does not apply; as [`get`](Namespace::get).
    pub fn update(&self, attr: &str, op: Update) -> Result<Value> {
        updated(
            self.obj
                .call(Call::Apply(Value::Str(attr.to_string()), op))?,
        )
    }

    /// Watches every change ([`Change::Set`](crate::Change::Set) with the attribute's
    /// name).
    ///
    /// # Errors
    /// [`Error::Disconnected`] if the server is gone.
    pub fn watch(&self) -> Result<Watch> {
        self.obj.watch()
    }
}

/// A counting semaphore held by the manager (Python's `manager.Semaphore(n)`).
///
/// Made by [`Manager::semaphore`]. Permits taken by a process that dies are given back at
/// once.
pub struct Semaphore {
    obj: Object,
    _t: PhantomData<()>,
}

common!(Semaphore);

impl Semaphore {
    /// Waits for a permit.
    ///
    /// # Errors
    /// As [`Lock::acquire`].
    pub fn acquire(&self) -> Result<Guard> {
        acquire(&self.obj, self.obj.deadline())
    }

    /// Waits at most `timeout` for a permit.
    ///
    /// # Errors
    /// As [`Lock::acquire_timeout`].
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<Guard> {
        acquire(&self.obj, Some(Instant::now() + timeout))
    }

    /// Takes a permit if one is free.
    ///
    /// # Errors
    /// As [`Lock::acquire`].
    pub fn try_acquire(&self) -> Result<Option<Guard>> {
        try_acquire(&self.obj)
    }
}

/// An event flag held by the manager (Python's `manager.Event()`).
///
/// Made by [`Manager::event`]; [`wait`](SharedEvent::wait) blocks until some process
/// [`set`](SharedEvent::set)s it.
pub struct SharedEvent {
    obj: Object,
    _t: PhantomData<()>,
}

common!(SharedEvent);

impl SharedEvent {
    /// Sets the flag and wakes every waiter.
    ///
    /// # Errors
    /// [`Error::Disconnected`], [`Error::Timeout`].
    pub fn set(&self) -> Result<()> {
        unit(self.obj.call(Call::Set)?)
    }

    /// Clears the flag.
    ///
    /// # Errors
    /// As [`set`](SharedEvent::set).
    pub fn clear(&self) -> Result<()> {
        unit(self.obj.call(Call::Unset)?)
    }

    /// Whether the flag is set.
    ///
    /// # Errors
    /// As [`set`](SharedEvent::set).
    pub fn is_set(&self) -> Result<bool> {
        boolean(self.obj.call(Call::IsSet)?)
    }

    /// Waits until the flag is set.
    ///
    /// # Errors
    /// [`Error::Disconnected`] when the server dies, even while waiting.
    pub fn wait(&self) -> Result<()> {
        unit(self.obj.call(Call::Wait)?)
    }

    /// Waits at most `timeout` for the flag.
    ///
    /// # Errors
    /// [`Error::Timeout`]; as [`wait`](SharedEvent::wait).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<()> {
        unit(
            self.obj
                .call_until(Call::Wait, Some(Instant::now() + timeout))?,
        )
    }
}

/// A FIFO queue of `T` held by the manager (Python's `manager.Queue()`), unbounded.
///
/// Made by [`Manager::queue`]. `get` waits for an item; items go to waiting getters in the
/// order they asked.
pub struct Queue<T> {
    obj: Object,
    _t: PhantomData<fn() -> T>,
}

common!(Queue<T>);

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// Appends `item`.
    ///
    /// # Errors
    /// [`Error::Disconnected`], [`Error::Timeout`], [`Error::TooLarge`], [`Error::Value`].
    pub fn put(&self, item: &T) -> Result<()> {
        unit(self.obj.call(Call::Put(to_value(item)?))?)
    }

    /// Takes the first item, waiting for one.
    ///
    /// # Errors
    /// [`Error::Disconnected`] when the server dies, even while waiting; as
    /// [`put`](Queue::put).
    pub fn get(&self) -> Result<T> {
        typed(self.obj.call(Call::Take)?)
    }

    /// Takes the first item, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`]; as [`get`](Queue::get).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        typed(
            self.obj
                .call_until(Call::Take, Some(Instant::now() + timeout))?,
        )
    }

    /// Takes the first item if there is one.
    ///
    /// # Errors
    /// As [`put`](Queue::put).
    pub fn try_get(&self) -> Result<Option<T>> {
        maybe(self.obj.call(Call::TryTake)?)
    }

    /// How many items wait.
    ///
    /// # Errors
    /// As [`put`](Queue::put).
    pub fn len(&self) -> Result<usize> {
        length(self.obj.call(Call::Len)?)
    }

    /// Whether no item waits.
    ///
    /// # Errors
    /// As [`put`](Queue::put).
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

fn types2<A, B>() -> String {
    format!("{}, {}", type_name::<A>(), type_name::<B>())
}

impl Manager {
    /// The dict `name` from `K` to `V`, created empty if there is none.
    ///
    /// # Errors
    /// [`Error::WrongType`] if `name` is another kind of object or a dict of other types
    /// (naming both); [`Error::Disconnected`] if the server is gone.
    pub fn dict<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Dict<K, V>> {
        let obj = Object::open(self, name, Kind::Dict, types2::<K, V>(), 0)?;
        Ok(Dict {
            obj,
            _t: PhantomData,
        })
    }

    /// The list `name` of `T`, created empty if there is none.
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    pub fn list<T: Serialize + DeserializeOwned>(&self, name: &str) -> Result<List<T>> {
        let obj = Object::open(self, name, Kind::List, type_name::<T>().to_string(), 0)?;
        Ok(List {
            obj,
            _t: PhantomData,
        })
    }

    /// The value `name` of `T`, created unset if there is none.
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    pub fn value<T: Serialize + DeserializeOwned>(&self, name: &str) -> Result<Shared<T>> {
        let obj = Object::open(self, name, Kind::Value, type_name::<T>().to_string(), 0)?;
        Ok(Shared {
            obj,
            _t: PhantomData,
        })
    }

    /// The lock `name`, created free if there is none.
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    pub fn lock(&self, name: &str) -> Result<Lock> {
        let obj = Object::open(self, name, Kind::Lock, String::new(), 0)?;
        Ok(Lock {
            obj,
            _t: PhantomData,
        })
    }

    /// The semaphore `name`, created with `permits` if there is none.
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    pub fn semaphore(&self, name: &str, permits: u64) -> Result<Semaphore> {
        let obj = Object::open(self, name, Kind::Semaphore, String::new(), permits)?;
        Ok(Semaphore {
            obj,
            _t: PhantomData,
        })
    }

    /// The re-entrant lock `name`, created free if there is none.
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    pub fn rlock(&self, name: &str) -> Result<RLock> {
        let obj = Object::open(self, name, Kind::RLock, String::new(), 0)?;
        Ok(RLock {
            obj,
            _t: PhantomData,
        })
    }

    /// The barrier `name` for `parties`, created if there is none.
    ///
    /// # Errors
    /// [`Error::Invalid`] for 0 parties; as [`dict`](Manager::dict) (a barrier of another
    /// number of parties is [`Error::WrongType`]).
    pub fn barrier(&self, name: &str, parties: u64) -> Result<Barrier> {
        let obj = Object::open(self, name, Kind::Barrier, parties.to_string(), parties)?;
        Ok(Barrier {
            obj,
            _t: PhantomData,
        })
    }

    /// The condition `name` (with its lock), created if there is none.
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    pub fn condition(&self, name: &str) -> Result<Condition> {
        let obj = Object::open(self, name, Kind::Condition, String::new(), 0)?;
        Ok(Condition {
            obj,
            _t: PhantomData,
        })
    }

    /// The namespace `name`, created empty if there is none.
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    pub fn namespace(&self, name: &str) -> Result<Namespace> {
        let obj = Object::open(self, name, Kind::Namespace, String::new(), 0)?;
        Ok(Namespace {
            obj,
            _t: PhantomData,
        })
    }

    /// The event `name`, created clear if there is none.
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    pub fn event(&self, name: &str) -> Result<SharedEvent> {
        let obj = Object::open(self, name, Kind::Event, String::new(), 0)?;
        Ok(SharedEvent {
            obj,
            _t: PhantomData,
        })
    }

    /// The queue `name` of `T`, created empty if there is none.
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    pub fn queue<T: Serialize + DeserializeOwned>(&self, name: &str) -> Result<Queue<T>> {
        let obj = Object::open(self, name, Kind::Queue, type_name::<T>().to_string(), 0)?;
        Ok(Queue {
            obj,
            _t: PhantomData,
        })
    }

    /// Applies every step (made by the proxies' `tx_` methods, on any objects) atomically:
    /// all of them, or none if one fails. Gives each step's answer.
    ///
    /// # Errors
    /// The first failing step's error (nothing was changed then); [`Error::Disconnected`].
    pub fn transaction(&self, steps: impl IntoIterator<Item = Step>) -> Result<Vec<Value>> {
        let calls = steps.into_iter().map(|s| (s.handle, s.call)).collect();
        match self.conn.call(Op::Transaction(calls), None)? {
            Answer::Results(r) => Ok(r
                .into_iter()
                .map(|a| match a {
                    Answer::Value(v) => v,
                    Answer::Maybe(v) => v.unwrap_or(Value::None),
                    Answer::Len(n) => Value::Int(i64::try_from(n).unwrap_or(i64::MAX)),
                    Answer::Many(v) => Value::List(v),
                    Answer::Bool(b) => Value::Bool(b),
                    _ => Value::None,
                })
                .collect()),
            other => Err(unexpected(&other)),
        }
    }
}
