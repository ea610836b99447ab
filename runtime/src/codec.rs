//! How values become bytes: postcard, appended in place, with useful error text.
//!
//! postcard drops the message a failing `Serialize` impl gives to
//! `Error::custom`, and users need that message to fix their type. On that
//! (rare) path the value is serialized a second time into [`Capture`], a
//! serializer that writes nothing and keeps the message.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde::ser;
use std::any::{Any, TypeId};
use std::fmt::{self, Display};

use crate::wire::Failure;

/// Appends postcard output to an existing buffer, so a chunk of items is
/// encoded into one allocation.
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Appends the encoding of `value` to `out`. On failure `out` is left as it
/// was and the error text includes the message of a failing `Serialize` impl.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let start = out.len();
    match postcard::serialize_with_flavor(value, Append(out)) {
        Ok(()) => Ok(()),
        Err(err) => {
            out.truncate(start);
            Err(match err {
                postcard::Error::SerdeSerCustom => match value.serialize(Capture) {
                    Err(CaptureError(message)) => message,
                    Ok(()) => err.to_string(),
                },
                other => other.to_string(),
            })
        }
    }
}

/// Encodes one value into a fresh buffer.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Decodes one value from the front of `input`, returning the rest.
pub(crate) fn decode_one<T: DeserializeOwned>(input: &[u8]) -> Result<(T, &[u8]), String> {
    postcard::take_from_bytes(input).map_err(|err| match err {
        postcard::Error::WontImplement => format!(
            "{} needs a self-describing format (it calls deserialize_any), which procpool's \
             compact encoding is not: serde_json::Value, #[serde(untagged)] enums and \
             #[serde(flatten)] cannot cross the channel; pass a concrete type, or the JSON \
             text as a String",
            std::any::type_name::<T>()
        ),
        postcard::Error::SerdeDeCustom => format!(
            "the Deserialize impl of {} rejected the data",
            std::any::type_name::<T>()
        ),
        other => format!(
            "{} could not be decoded: {other}",
            std::any::type_name::<T>()
        ),
    })
}

// A fast path for byte vectors. serde sends `Vec<u8>` as a sequence, one
// `serialize_u8` call per byte (seconds for 256 MiB); postcard writes a
// sequence of `u8` and a byte string identically (length, then the bytes),
// so a `Vec<u8>` item or result is written and read as a byte string:
// one copy, and the other side may use either path.

/// Appends one job item (argument or result value) to `out`.
pub(crate) fn encode_item<T: Serialize + 'static>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    match (value as &dyn Any).downcast_ref::<Vec<u8>>() {
        Some(bytes) => encode_into(serde_bytes::Bytes::new(bytes), out),
        None => encode_into(value, out),
    }
}

/// Decodes one job item from the front of `input`.
pub(crate) fn decode_item<T: DeserializeOwned + 'static>(
    input: &[u8],
) -> Result<(T, &[u8]), String> {
    if TypeId::of::<T>() == TypeId::of::<Vec<u8>>() {
        let (bytes, rest) = decode_one::<serde_bytes::ByteBuf>(input)?;
        return Ok((cast(bytes.into_vec())?, rest));
    }
    decode_one(input)
}

/// Appends an item's outcome, `Result<R, Failure>`, to `out`.
pub(crate) fn encode_outcome<R: Serialize + 'static>(
    outcome: Result<&R, &Failure>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    match outcome.map(|value| (value as &dyn Any).downcast_ref::<Vec<u8>>()) {
        Ok(Some(bytes)) => encode_into(&Ok::<_, &Failure>(serde_bytes::Bytes::new(bytes)), out),
        _ => encode_into(&outcome, out),
    }
}

/// Decodes an item's outcome, `Result<R, Failure>`, from the front of `input`.
pub(crate) fn decode_outcome<R: DeserializeOwned + 'static>(
    input: &[u8],
) -> Result<(Result<R, Failure>, &[u8]), String> {
    if TypeId::of::<R>() == TypeId::of::<Vec<u8>>() {
        let (outcome, rest) = decode_one::<Result<serde_bytes::ByteBuf, Failure>>(input)?;
        return match outcome {
            Ok(bytes) => Ok((Ok(cast(bytes.into_vec())?), rest)),
            Err(failure) => Ok((Err(failure), rest)),
        };
    }
    decode_one(input)
}

/// `Vec<u8>` as `T`, once the caller has checked `T` is `Vec<u8>`.
fn cast<T: 'static>(bytes: Vec<u8>) -> Result<T, String> {
    let boxed: Box<dyn Any> = Box::new(bytes);
    boxed
        .downcast::<T>()
        .map(|value| *value)
        .map_err(|_| "internal error: byte fast path used for another type".to_owned())
}

#[derive(Debug)]
struct CaptureError(String);

impl Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CaptureError {}

impl ser::Error for CaptureError {
    fn custom<T: Display>(msg: T) -> Self {
        CaptureError(msg.to_string())
    }
}

/// A serializer that writes nothing; it exists to catch `Error::custom` text.
#[derive(Clone, Copy)]
struct Capture;

macro_rules! capture_ok {
    ($($method:ident($($arg:ty),*);)*) => {
        $(fn $method(self, $(_: $arg),*) -> Result<(), CaptureError> { Ok(()) })*
    };
}

macro_rules! capture_compound {
    ($($trait:ident :: $method:ident),* $(,)?) => {
        $(impl ser::$trait for Capture {
            type Ok = ();
            type Error = CaptureError;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CaptureError> {
                value.serialize(Capture)
            }
            fn end(self) -> Result<(), CaptureError> {
                Ok(())
            }
        })*
    };
}

capture_compound!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
);

impl ser::SerializeMap for Capture {
    type Ok = ();
    type Error = CaptureError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), CaptureError> {
        key.serialize(Capture)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CaptureError> {
        value.serialize(Capture)
    }
    fn end(self) -> Result<(), CaptureError> {
        Ok(())
    }
}

impl ser::SerializeStruct for Capture {
    type Ok = ();
    type Error = CaptureError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        _: &'static str,
        value: &T,
    ) -> Result<(), CaptureError> {
        value.serialize(Capture)
    }
    fn end(self) -> Result<(), CaptureError> {
        Ok(())
    }
}

impl ser::SerializeStructVariant for Capture {
    type Ok = ();
    type Error = CaptureError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        _: &'static str,
        value: &T,
    ) -> Result<(), CaptureError> {
        value.serialize(Capture)
    }
    fn end(self) -> Result<(), CaptureError> {
        Ok(())
    }
}

impl ser::Serializer for Capture {
    type Ok = ();
    type Error = CaptureError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    capture_ok! {
        serialize_bool(bool); serialize_i8(i8); serialize_i16(i16); serialize_i32(i32);
        serialize_i64(i64); serialize_i128(i128); serialize_u8(u8); serialize_u16(u16);
        serialize_u32(u32); serialize_u64(u64); serialize_u128(u128); serialize_f32(f32);
        serialize_f64(f64); serialize_char(char); serialize_str(&str); serialize_bytes(&[u8]);
        serialize_none(); serialize_unit(); serialize_unit_struct(&'static str);
        serialize_unit_variant(&'static str, u32, &'static str);
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), CaptureError> {
        value.serialize(self)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), CaptureError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> Result<(), CaptureError> {
        value.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self, CaptureError> {
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, CaptureError> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, CaptureError> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, CaptureError> {
        Ok(self)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self, CaptureError> {
        Ok(self)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, CaptureError> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, CaptureError> {
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serializer;

    struct Refuses;
    impl Serialize for Refuses {
        fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(ser::Error::custom("refuses to be serialized: file handle"))
        }
    }

    #[test]
    fn failing_serialize_message_is_kept_and_buffer_untouched() {
        let mut out = vec![1, 2, 3];
        let err = encode_into(&(1u8, Refuses), &mut out).unwrap_err();
        assert_eq!(err, "refuses to be serialized: file handle");
        assert_eq!(out, vec![1, 2, 3]);
    }

    #[test]
    fn byte_fast_path_matches_the_generic_encoding() {
        let data: Vec<u8> = (0..=255).collect();
        let (mut fast, mut generic) = (Vec::new(), Vec::new());
        encode_item(&data, &mut fast).unwrap();
        encode_into(&data, &mut generic).unwrap();
        assert_eq!(fast, generic);
        let (back, rest) = decode_item::<Vec<u8>>(&generic).unwrap();
        assert_eq!((back, rest.len()), (data.clone(), 0));

        let (mut fast, mut generic) = (Vec::new(), Vec::new());
        encode_outcome::<Vec<u8>>(Ok(&data), &mut fast).unwrap();
        encode_into(&Ok::<&Vec<u8>, Failure>(&data), &mut generic).unwrap();
        assert_eq!(fast, generic);
        let (back, _) = decode_outcome::<Vec<u8>>(&fast).unwrap();
        assert_eq!(back, Ok(data));
    }

    #[test]
    fn values_round_trip_back_to_back() {
        let mut out = Vec::new();
        encode_into(&7u64, &mut out).unwrap();
        encode_into(&"hi".to_string(), &mut out).unwrap();
        let (a, rest) = decode_one::<u64>(&out).unwrap();
        let (b, rest) = decode_one::<String>(rest).unwrap();
        assert_eq!((a, b.as_str(), rest.len()), (7, "hi", 0));
    }
}
