//! The self-describing value that XML-RPC carries, and its conversions to JSON.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// One XML-RPC value: what `xmlrpc.client` sends and receives, each type its own variant.
///
/// A function registered with [`Registry::register`](crate::Registry::register) never sees
/// it: its parameters are converted to the function's serde types (through JSON: integers
/// and doubles to numbers, `base64` to an array of bytes, `dateTime.iso8601` to its
/// text). A function registered with [`Registry::register_values`](crate::Registry::register_values)
/// receives the values as they came, and returns one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// `<nil/>` (Python's `None`, with `allow_none=True`).
    Nil,
    /// `<boolean>`.
    Bool(bool),
    /// `<int>`, `<i4>` or `<i8>` (written as `<int>` when it fits 32 bits, else `<i8>`).
    Int(i64),
    /// `<double>`.
    Double(f64),
    /// `<string>`, or a `<value>` with text only.
    String(String),
    /// `<base64>` (Python's `xmlrpc.client.Binary`, or `bytes`).
    Bytes(Vec<u8>),
    /// `<dateTime.iso8601>`, its text as sent (`20260102T03:04:05`).
    DateTime(String),
    /// `<array>`.
    Array(Vec<Value>),
    /// `<struct>`, members in their order.
    Struct(Vec<(String, Value)>),
}

impl Value {
    /// The value as JSON: what a typed function's parameters are decoded from.
    pub fn to_json(&self) -> Json {
        match self {
            Value::Nil => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Int(i) => Json::from(*i),
            Value::Double(d) => Json::from(*d),
            Value::String(s) | Value::DateTime(s) => Json::String(s.clone()),
            Value::Bytes(b) => Json::Array(b.iter().map(|x| Json::from(*x)).collect()),
            Value::Array(a) => Json::Array(a.iter().map(Value::to_json).collect()),
            Value::Struct(m) => {
                Json::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }

    /// The JSON value as an XML-RPC value: what a typed function's result is sent as.
    /// Integers that fit `i64` are `Int`, other numbers `Double`, `null` is `Nil`.
    pub fn from_json(j: &Json) -> Value {
        match j {
            Json::Null => Value::Nil,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Double(n.as_f64().unwrap_or(f64::NAN)),
            },
            Json::String(s) => Value::String(s.clone()),
            Json::Array(a) => Value::Array(a.iter().map(Value::from_json).collect()),
            Json::Object(m) => Value::Struct(
                m.iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// Converts any serialisable value (through JSON).
    ///
    /// # Errors
    ///
    /// [`Error::Decode`](crate::Error::Decode) if `T`'s serialisation fails (a map with
    /// non-string keys).
    pub fn from_serialize<T: Serialize + ?Sized>(v: &T) -> crate::Result<Value> {
        serde_json::to_value(v)
            .map(|j| Value::from_json(&j))
            .map_err(|e| crate::Error::Decode(e.to_string()))
    }

    /// Decodes the value as `T` (through JSON).
    ///
    /// # Errors
    ///
    /// [`Error::Decode`](crate::Error::Decode) if it is not a `T`.
    pub fn deserialize<T: serde::de::DeserializeOwned>(&self) -> crate::Result<T> {
        serde_json::from_value(self.to_json()).map_err(|e| crate::Error::Decode(e.to_string()))
    }

    /// A struct member by name.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Struct(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value {
                Value::Int(i64::from(v))
            }
        }
    )*};
}
from_int!(i8, i16, i32, i64, u8, u16, u32);

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Double(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::String(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::String(v)
    }
}
impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Value {
        Value::Array(v)
    }
}
