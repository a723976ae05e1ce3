//! Codecs turn typed values into message bytes and back.

use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, Result};

/// Turns values into bytes and back. Implement it to plug in another format.
pub trait Codec {
    /// Appends the encoding of `value` to `out` (which the caller has cleared).
    ///
    /// # Errors
    /// [`Error::Codec`] when the value cannot be encoded.
    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<()>;

    /// Decodes one value from `bytes`.
    ///
    /// # Errors
    /// [`Error::Codec`] when the bytes are not a valid encoding of `T`.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T>;
}

/// The default codec: [postcard](https://docs.rs/postcard), compact and fast.
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

impl Codec for Postcard {
    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<()> {
        let buf = std::mem::take(out);
        *out = postcard::to_extend(value, buf).map_err(|e| Error::Codec(e.to_string()))?;
        Ok(())
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        postcard::from_bytes(bytes).map_err(|e| Error::Codec(e.to_string()))
    }
}

/// JSON (serde_json): readable, and what other languages speak. Feature `json`.
#[cfg(feature = "json")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

#[cfg(feature = "json")]
impl Codec for Json {
    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<()> {
        serde_json::to_writer(out, value).map_err(|e| Error::Codec(e.to_string()))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes).map_err(|e| Error::Codec(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn postcard_round_trips(v in proptest::collection::vec(any::<(u32, String, Option<i64>)>(), 0..20)) {
            let mut buf = Vec::new();
            Postcard.encode(&v, &mut buf).unwrap();
            let back: Vec<(u32, String, Option<i64>)> = Postcard.decode(&buf).unwrap();
            prop_assert_eq!(back, v);
        }

        #[test]
        fn postcard_rejects_garbage_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Postcard.decode::<Vec<String>>(&bytes);
        }
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_round_trips() {
        let mut buf = Vec::new();
        Json.encode(&("a", 1u8), &mut buf).unwrap();
        assert_eq!(buf, br#"["a",1]"#);
        let back: (String, u8) = Json.decode(&buf).unwrap();
        assert_eq!(back, ("a".to_string(), 1));
    }
}
