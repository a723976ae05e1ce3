//! The wire protocol: postcard-encoded frames of these types, over ipckit's framing
//! (Python's 4-byte length prefix). See the crate README's "Wire protocol" section.

use serde::{Deserialize, Serialize};

use crate::{Error, Value};

/// The protocol's version, sent in [`Hello`].
pub(crate) const VERSION: u32 = 2;

/// An ipckit client's first frame (a Python client's first frame is a pickle, which
/// starts with 0x80): the server answers it with [`Hello`].
pub(crate) const CLIENT_HELLO: &[u8] = b"ipckit-manager";

/// The first frame of an ipckit client on a Unix socket, which asks for the local fast
/// path: the server answers with one byte (carrying the descriptors of the two queues if
/// it offers the fast path) and then [`Hello`]. Calls and answers then pass through the
/// queues, as the same postcard frames as on the socket, each prefixed with a byte that
/// says whether the frame goes on in the next message; watch events stay on the socket.
pub(crate) const CLIENT_HELLO_LOCAL: &[u8] = b"ipckit-manager/local";

/// The server's first frame on every connection.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub(crate) version: u32,
    pub(crate) max_value: u64,
}

/// The kinds of object a server holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Kind {
    Dict,
    List,
    Value,
    Lock,
    Semaphore,
    Event,
    Queue,
    RLock,
    Barrier,
    Namespace,
    Condition,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Dict => "dict",
            Kind::List => "list",
            Kind::Value => "value",
            Kind::Lock => "lock",
            Kind::Semaphore => "semaphore",
            Kind::Event => "event",
            Kind::Queue => "queue",
            Kind::RLock => "rlock",
            Kind::Barrier => "barrier",
            Kind::Namespace => "namespace",
            Kind::Condition => "condition",
        }
    }
}

/// A client's frame.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// A call answered by a [`Reply`] with the same id.
    Call { id: u64, op: Op },
    /// Withdraws a blocked call (lock, semaphore, event wait, queue get) whose caller
    /// timed out; its reply is then `Fault::Cancelled`, or what it got if it was already
    /// served.
    Cancel { id: u64 },
    /// Stops the server.
    Shutdown,
}

/// A call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Op {
    /// Get-or-create the object `name` of `kind` holding `types`; the reply is its
    /// handle. `init` is a semaphore's permits, a barrier's parties.
    Open {
        name: String,
        kind: Kind,
        types: String,
        init: u64,
    },
    /// A call on the object with this handle.
    On { obj: u32, call: Call },
    /// Calls on several objects, applied all or none.
    Transaction(Vec<(u32, Call)>),
    /// Registers a watch (its id is the call's id); the reply is `Snapshot`.
    Watch { obj: u32 },
    /// Ends a watch.
    Unwatch { obj: u32, watch: u64 },
}

/// A server-side atomic operation on one value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Update {
    /// Adds (ints, floats; a missing value counts as zero); the reply is the new value.
    Add(Value),
    /// Keeps the smaller; the reply is the new value.
    Min(Value),
    /// Keeps the larger; the reply is the new value.
    Max(Value),
    /// Sets the value if there is none; the reply is the value now there.
    SetIfAbsent(Value),
    /// Sets `new` if the value is `expected` (`Value::None` for absent); the reply is
    /// `[swapped, current]`.
    CompareAndSwap {
        /// What must be there.
        expected: Value,
        /// What to put.
        new: Value,
    },
    /// Appends to the list there (a missing value is an empty list); the reply is the
    /// list's new length.
    Push(Value),
}

/// One operation on one object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Call {
    // dict
    Get(Value),
    Insert(Value, Value),
    Remove(Value),
    Contains(Value),
    Keys,
    Values,
    Items,
    UpdateMany(Vec<(Value, Value)>),
    GetOrInsert(Value, Value),
    Apply(Value, Update),
    // list
    Push(Value),
    Extend(Vec<Value>),
    Index(i64),
    SetIndex(i64, Value),
    InsertAt(i64, Value),
    RemoveAt(i64),
    Pop,
    Slice(i64, i64),
    // value
    Load,
    Store(Value),
    ApplyValue(Update),
    // common
    Len,
    Clear,
    Snapshot,
    // lock, semaphore
    Acquire,
    TryAcquire,
    Release,
    // rlock: the calling thread's token
    AcquireAs(u64),
    TryAcquireAs(u64),
    ReleaseAs(u64),
    // condition: wake up to n waiters
    Notify(u64),
    // event
    Set,
    Unset,
    IsSet,
    Wait,
    // queue
    Put(Value),
    Take,
    TryTake,
}

impl Call {
    /// Whether the call may wait for another client (and so may be cancelled).
    pub(crate) fn blocks(&self) -> bool {
        matches!(
            self,
            Call::Acquire | Call::AcquireAs(_) | Call::Wait | Call::Take
        )
    }
}

/// A server's frame.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    /// The answer to the call `id`.
    Done {
        id: u64,
        result: Result<Answer, Fault>,
    },
    /// A change on a watched object.
    Changed {
        watch: u64,
        seq: u64,
        change: Change,
    },
    /// Changes were dropped for this watch (the client did not read fast enough).
    Lagged { watch: u64, missed: u64 },
}

/// A successful answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Answer {
    Unit,
    Handle(u32),
    Value(Value),
    Maybe(Option<Value>),
    Bool(bool),
    Len(u64),
    Many(Vec<Value>),
    Pairs(Vec<(Value, Value)>),
    Snapshot { seq: u64, value: Value },
    Results(Vec<Answer>),
}

/// A change to a watched object, as a watcher receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Change {
    /// A dict key or list index (`Value::Int`) was set, or a value was stored (key
    /// `Value::None`).
    Set {
        /// The key, index, or `None` for a value.
        key: Value,
        /// The new value.
        value: Value,
    },
    /// A value was inserted into a list at `index` (pushes included).
    Inserted {
        /// Where.
        index: u64,
        /// What.
        value: Value,
    },
    /// A dict key or list index (`Value::Int`) was removed.
    Removed {
        /// The key or index.
        key: Value,
    },
    /// The object was emptied.
    Cleared,
}

/// A failed call, on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Fault {
    WrongType {
        name: String,
        expected: String,
        found: String,
    },
    Index {
        name: String,
        index: i64,
        len: u64,
    },
    Invalid {
        name: String,
        reason: String,
    },
    TooLarge {
        len: u64,
        max: u64,
    },
    Protocol(String),
    Cancelled,
}

impl From<Fault> for Error {
    fn from(f: Fault) -> Error {
        match f {
            Fault::WrongType {
                name,
                expected,
                found,
            } => Error::WrongType {
                name,
                expected,
                found,
            },
            Fault::Index { name, index, len } => Error::Index {
                name,
                index,
                len: usize::try_from(len).unwrap_or(usize::MAX),
            },
            Fault::Invalid { name, reason } => Error::Invalid { name, reason },
            Fault::TooLarge { len, max } => Error::TooLarge {
                len: usize::try_from(len).unwrap_or(usize::MAX),
                max: usize::try_from(max).unwrap_or(usize::MAX),
            },
            Fault::Protocol(s) => Error::Protocol(s),
            Fault::Cancelled => Error::Timeout,
        }
    }
}
