//! [`Value`]: the self-describing form the server keeps every value in, and the serde
//! serializer and deserializer that convert typed values to and from it.

use std::{cmp::Ordering, fmt};

use serde::{
    Deserialize, Serialize,
    de::{self, DeserializeOwned, IntoDeserializer, Visitor},
    ser,
};

/// A value as the manager's server holds it: self-describing, so that server-side
/// operations (`incr`, `max`, compare-and-swap, a push to a list at a key) can read it.
///
/// Typed proxies convert to and from it through serde ([`Value::from_typed`],
/// [`Value::to_typed`]): structs become maps keyed by field name, sequences and tuples
/// lists, `Option::None` and `()` become [`Value::None`], an enum's unit variant its name,
/// and a variant with data a one-entry map from its name. Unsigned integers above
/// `i64::MAX` and 128-bit integers do not fit (a codec error).
///
/// Values order totally (floats by `total_cmp`), so any value can be a dict key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Value {
    /// Nothing: `None`, `()`.
    None,
    /// A boolean.
    Bool(bool),
    /// An integer (every Rust integer type up to `i64`/`u64::MAX >> 1`).
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A string (and a `char`).
    Str(String),
    /// Bytes (`serde_bytes`-style byte buffers).
    Bytes(Vec<u8>),
    /// A sequence, a tuple, a tuple struct.
    List(Vec<Value>),
    /// A map or a struct, in order.
    Map(Vec<(Value, Value)>),
    /// An object only Python knows (a class instance, a set, a `datetime`), stored by a
    /// Python client: its pickle (protocol 4), kept and given back unchanged. Rust reads
    /// it as bytes.
    Python(Vec<u8>),
}

impl Value {
    /// Converts a typed value into a `Value`.
    ///
    /// # Errors
    /// [`ValueError`] if `T` holds what a `Value` cannot (a `u64` above `i64::MAX`, an
    /// `i128`), or its `Serialize` fails.
    pub fn from_typed<T: Serialize + ?Sized>(v: &T) -> Result<Value, ValueError> {
        v.serialize(ToValue)
    }

    /// Converts this value into `T`.
    ///
    /// # Errors
    /// [`ValueError`] if the value does not have `T`'s shape.
    pub fn to_typed<T: DeserializeOwned>(&self) -> Result<T, ValueError> {
        T::deserialize(self.clone())
    }

    /// Converts this value into `T`, consuming it.
    ///
    /// # Errors
    /// As [`to_typed`](Value::to_typed).
    pub fn into_typed<T: DeserializeOwned>(self) -> Result<T, ValueError> {
        T::deserialize(self)
    }

    /// The name of this value's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "none",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Map(_) => "map",
            Value::Python(_) => "python object",
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Value::None => 0,
            Value::Bool(_) => 1,
            Value::Int(_) => 2,
            Value::Float(_) => 3,
            Value::Str(_) => 4,
            Value::Bytes(_) => 5,
            Value::List(_) => 6,
            Value::Map(_) => 7,
            Value::Python(_) => 8,
        }
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Value {}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Value {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::Float(a), Value::Float(b)) => a.total_cmp(b),
            (Value::Str(a), Value::Str(b)) => a.cmp(b),
            (Value::Bytes(a), Value::Bytes(b)) => a.cmp(b),
            (Value::List(a), Value::List(b)) => a.cmp(b),
            (Value::Map(a), Value::Map(b)) => a.cmp(b),
            (Value::Python(a), Value::Python(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::None => f.write_str("None"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Bytes(b) => write!(f, "<{} bytes>", b.len()),
            Value::Python(b) => write!(f, "<python object, {} bytes>", b.len()),
            Value::List(items) => {
                f.write_str("[")?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            Value::Map(entries) => {
                f.write_str("{")?;
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

/// A typed value that does not convert to or from a [`Value`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(String);

impl ser::Error for ValueError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ValueError(msg.to_string())
    }
}

impl de::Error for ValueError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ValueError(msg.to_string())
    }
}

/// The serde serializer that builds a [`Value`].
struct ToValue;

/// Collects a sequence, a tuple or a map being serialized.
struct Collect {
    items: Vec<Value>,
    entries: Vec<(Value, Value)>,
    key: Option<Value>,
    /// The variant name of a tuple or struct variant: the result is wrapped in a map.
    variant: Option<&'static str>,
}

impl Collect {
    fn new(variant: Option<&'static str>) -> Self {
        Collect {
            items: Vec::new(),
            entries: Vec::new(),
            key: None,
            variant,
        }
    }

    fn wrap(variant: Option<&'static str>, v: Value) -> Value {
        match variant {
            Some(name) => Value::Map(vec![(Value::Str(name.to_string()), v)]),
            None => v,
        }
    }
}

impl ser::Serializer for ToValue {
    type Ok = Value;
    type Error = ValueError;
    type SerializeSeq = Collect;
    type SerializeTuple = Collect;
    type SerializeTupleStruct = Collect;
    type SerializeTupleVariant = Collect;
    type SerializeMap = Collect;
    type SerializeStruct = Collect;
    type SerializeStructVariant = Collect;

    fn serialize_bool(self, v: bool) -> Result<Value, ValueError> {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i16(self, v: i16) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i32(self, v: i32) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i64(self, v: i64) -> Result<Value, ValueError> {
        Ok(Value::Int(v))
    }
    fn serialize_u8(self, v: u8) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_u16(self, v: u16) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_u32(self, v: u32) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_u64(self, v: u64) -> Result<Value, ValueError> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| ValueError(format!("{v} does not fit a 64-bit signed integer")))
    }
    fn serialize_f32(self, v: f32) -> Result<Value, ValueError> {
        Ok(Value::Float(v.into()))
    }
    fn serialize_f64(self, v: f64) -> Result<Value, ValueError> {
        Ok(Value::Float(v))
    }
    fn serialize_char(self, v: char) -> Result<Value, ValueError> {
        Ok(Value::Str(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Value, ValueError> {
        Ok(Value::Str(v.to_string()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value, ValueError> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn serialize_none(self) -> Result<Value, ValueError> {
        Ok(Value::None)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<Value, ValueError> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, ValueError> {
        Ok(Value::None)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Value, ValueError> {
        Ok(Value::None)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<Value, ValueError> {
        Ok(Value::Str(variant.to_string()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<Value, ValueError> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<Value, ValueError> {
        Ok(Collect::wrap(Some(variant), v.serialize(self)?))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Collect, ValueError> {
        Ok(Collect::new(None))
    }
    fn serialize_tuple(self, _: usize) -> Result<Collect, ValueError> {
        Ok(Collect::new(None))
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Collect, ValueError> {
        Ok(Collect::new(None))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Collect, ValueError> {
        Ok(Collect::new(Some(variant)))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Collect, ValueError> {
        Ok(Collect::new(None))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Collect, ValueError> {
        Ok(Collect::new(None))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Collect, ValueError> {
        Ok(Collect::new(Some(variant)))
    }
}

impl ser::SerializeSeq for Collect {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ValueError> {
        self.items.push(v.serialize(ToValue)?);
        Ok(())
    }
    fn end(self) -> Result<Value, ValueError> {
        Ok(Collect::wrap(self.variant, Value::List(self.items)))
    }
}

impl ser::SerializeTuple for Collect {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ValueError> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<Value, ValueError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for Collect {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ValueError> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<Value, ValueError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleVariant for Collect {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ValueError> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<Value, ValueError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeMap for Collect {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), ValueError> {
        self.key = Some(k.serialize(ToValue)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ValueError> {
        let k = self
            .key
            .take()
            .ok_or_else(|| ValueError("a map value came without its key".into()))?;
        self.entries.push((k, v.serialize(ToValue)?));
        Ok(())
    }
    fn end(self) -> Result<Value, ValueError> {
        Ok(Collect::wrap(self.variant, Value::Map(self.entries)))
    }
}

impl ser::SerializeStruct for Collect {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), ValueError> {
        self.entries
            .push((Value::Str(key.to_string()), v.serialize(ToValue)?));
        Ok(())
    }
    fn end(self) -> Result<Value, ValueError> {
        ser::SerializeMap::end(self)
    }
}

impl ser::SerializeStructVariant for Collect {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), ValueError> {
        ser::SerializeStruct::serialize_field(self, key, v)
    }
    fn end(self) -> Result<Value, ValueError> {
        ser::SerializeMap::end(self)
    }
}

impl<'de> IntoDeserializer<'de, ValueError> for Value {
    type Deserializer = Value;
    fn into_deserializer(self) -> Value {
        self
    }
}

/// Walks a list or a map for a visitor.
struct Items<I> {
    iter: I,
    value: Option<Value>,
}

impl<'de, I: Iterator<Item = Value>> de::SeqAccess<'de> for Items<I> {
    type Error = ValueError;
    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, ValueError> {
        self.iter.next().map(|v| seed.deserialize(v)).transpose()
    }
}

impl<'de, I: Iterator<Item = (Value, Value)>> de::MapAccess<'de> for Items<I> {
    type Error = ValueError;
    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ValueError> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(k).map(Some)
            }
            None => Ok(None),
        }
    }
    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ValueError> {
        let v = self
            .value
            .take()
            .ok_or_else(|| ValueError("a map key came without its value".into()))?;
        seed.deserialize(v)
    }
}

/// An enum being deserialized: its variant name and what it carries.
struct Variant {
    name: Value,
    data: Option<Value>,
}

/// What an enum variant carries.
struct Data(Option<Value>);

impl<'de> de::EnumAccess<'de> for Variant {
    type Error = ValueError;
    type Variant = Data;
    fn variant_seed<V: de::DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Data), ValueError> {
        Ok((seed.deserialize(self.name)?, Data(self.data)))
    }
}

impl<'de> de::VariantAccess<'de> for Data {
    type Error = ValueError;
    fn unit_variant(self) -> Result<(), ValueError> {
        Ok(())
    }
    fn newtype_variant_seed<T: de::DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, ValueError> {
        seed.deserialize(self.0.unwrap_or(Value::None))
    }
    fn tuple_variant<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, ValueError> {
        de::Deserializer::deserialize_any(self.0.unwrap_or(Value::None), visitor)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        de::Deserializer::deserialize_any(self.0.unwrap_or(Value::None), visitor)
    }
}

impl<'de> de::Deserializer<'de> for Value {
    type Error = ValueError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self {
            Value::None => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(b),
            Value::Int(i) => visitor.visit_i64(i),
            Value::Float(x) => visitor.visit_f64(x),
            Value::Str(s) => visitor.visit_string(s),
            Value::Bytes(b) | Value::Python(b) => visitor.visit_byte_buf(b),
            Value::List(items) => visitor.visit_seq(Items {
                iter: items.into_iter(),
                value: None,
            }),
            Value::Map(entries) => visitor.visit_map(Items {
                iter: entries.into_iter(),
                value: None,
            }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self {
            Value::None => visitor.visit_none(),
            v => visitor.visit_some(v),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        match self {
            Value::Str(_) => visitor.visit_enum(Variant {
                name: self,
                data: None,
            }),
            Value::Map(mut entries) if entries.len() == 1 => {
                let (name, data) = entries.remove(0);
                visitor.visit_enum(Variant {
                    name,
                    data: Some(data),
                })
            }
            other => Err(ValueError(format!(
                "expected an enum variant, found a {}",
                other.kind()
            ))),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    use super::Value;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Dot,
        Circle(f64),
        Rect { w: u32, h: u32 },
        Pair(i8, i8),
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Player {
        name: String,
        score: u32,
        tags: Vec<String>,
        best: Option<i64>,
        shapes: Vec<Shape>,
        map: BTreeMap<u8, (bool, char)>,
    }

    #[test]
    fn typed_values_round_trip() {
        let p = Player {
            name: "ana".into(),
            score: 7,
            tags: vec!["a".into()],
            best: None,
            shapes: vec![
                Shape::Dot,
                Shape::Circle(1.5),
                Shape::Rect { w: 2, h: 3 },
                Shape::Pair(-1, 1),
            ],
            map: [(1, (true, 'x'))].into(),
        };
        let v = Value::from_typed(&p).unwrap();
        assert_eq!(v.to_typed::<Player>().unwrap(), p);
        assert_eq!(Value::from_typed(&5u8).unwrap(), Value::Int(5));
        assert!(Value::from_typed(&u64::MAX).is_err());
        assert!(Value::Str("x".into()).to_typed::<i64>().is_err());
    }

    #[test]
    fn values_order_totally() {
        let mut v = [
            Value::Float(1.0),
            Value::Int(2),
            Value::None,
            Value::Str("a".into()),
        ];
        v.sort();
        assert_eq!(v[0], Value::None);
        assert_eq!(v[1], Value::Int(2));
    }
}
