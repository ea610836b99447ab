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
        // Varints arrive as slices of 1 to 10 bytes: a byte loop beats a
        // call to memcpy for each.
        if data.len() <= 16 {
            self.0.reserve(data.len());
            for &byte in data {
                self.0.push(byte);
            }
        } else {
            self.0.extend_from_slice(data);
        }
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

/// Encodes one job item into a fresh buffer, with the same fast paths as
/// a chunk (a `Process` argument or an initializer's is an item too).
// The pool encodes through each job's type-erased encoder (job::Encode).
#[cfg(test)]
pub(crate) fn encode<T: Serialize + 'static>(value: &T) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    encode_item(value, &mut out)?;
    Ok(out)
}

/// What went wrong decoding a `T`, in words a user can act on.
fn decode_error<T>(err: postcard::Error) -> String {
    let name = std::any::type_name::<T>();
    match err {
        postcard::Error::WontImplement => format!(
            "{name} needs a self-describing format (it calls deserialize_any), which procpool's \
             compact encoding is not: serde_json::Value, #[serde(untagged)] enums and \
             #[serde(flatten)] cannot cross the channel; pass a concrete type, or the JSON \
             text as a String"
        ),
        postcard::Error::SerdeDeCustom => {
            format!("the Deserialize impl of {name} rejected the data")
        }
        other => format!("{name} could not be decoded: {other}"),
    }
}

/// Reads values written back to back by [`encode_item`] / [`encode_outcome`].
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Self {
        Reader { rest: input }
    }

    fn value<T: DeserializeOwned>(&mut self) -> Result<T, String> {
        let (value, rest) = postcard::take_from_bytes(self.rest).map_err(decode_error::<T>)?;
        self.rest = rest;
        Ok(value)
    }

    /// A varint of at most `max_bytes` bytes, as postcard writes unsigned integers.
    #[inline]
    fn varint(&mut self, max_bytes: usize) -> Result<u64, String> {
        let rest = self.rest;
        // Up to 8 bytes at once: one load, then the 7-bit groups are
        // squeezed together with shifts instead of a loop per byte.
        if let Some(word) = rest.first_chunk::<8>().map(|w| u64::from_le_bytes(*w)) {
            let stops = !word & 0x8080_8080_8080_8080;
            if stops != 0 {
                let len = (stops.trailing_zeros() / 8 + 1) as usize;
                if len <= max_bytes {
                    let kept = if len == 8 {
                        word
                    } else {
                        word & ((1u64 << (8 * len)) - 1)
                    };
                    self.rest = &rest[len..];
                    return Ok(squeeze(kept & 0x7f7f_7f7f_7f7f_7f7f));
                }
            }
        }
        let mut value = 0u64;
        let mut i = 0;
        while i < max_bytes && i < rest.len() {
            let byte = rest[i];
            if i == 9 && byte > 1 {
                break; // more than 64 bits
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            i += 1;
            if byte < 0x80 {
                self.rest = &rest[i..];
                return Ok(value);
            }
        }
        Err(bad_varint())
    }

    /// The next job item (argument or result value).
    #[inline]
    pub(crate) fn item<T: DeserializeOwned + 'static>(&mut self) -> Result<T, String> {
        let id = TypeId::of::<T>();
        let fast = if id == TypeId::of::<u64>() || id == TypeId::of::<usize>() {
            let v = self.varint(10)?;
            cast(v).or_else(|| cast(v as usize))
        } else if id == TypeId::of::<i64>() {
            let v = self.varint(10)?;
            cast(((v >> 1) as i64) ^ -((v & 1) as i64))
        } else if id == TypeId::of::<u32>() {
            let v = u32::try_from(self.varint(5)?).map_err(|_| "u32 out of range".to_owned())?;
            cast(v)
        } else if id == TypeId::of::<i32>() {
            let v = u32::try_from(self.varint(5)?).map_err(|_| "i32 out of range".to_owned())?;
            cast(((v >> 1) as i32) ^ -((v & 1) as i32))
        } else if id == TypeId::of::<Vec<u8>>() {
            let bytes: serde_bytes::ByteBuf = self.value()?;
            cast(bytes.into_vec())
        } else {
            return self.value();
        };
        fast.ok_or_else(|| "internal error: fast path used for another type".to_owned())
    }

    /// The next item outcome, `Result<R, Failure>`.
    #[inline]
    pub(crate) fn outcome<R: DeserializeOwned + 'static>(
        &mut self,
    ) -> Result<Result<R, Failure>, String> {
        // postcard writes an enum as its variant index, then the payload.
        if let [0, rest @ ..] = self.rest {
            self.rest = rest;
            return self.item().map(Ok);
        }
        match self.varint(5)? {
            0 => self.item().map(Ok),
            1 => self.value().map(Err),
            other => Err(format!("invalid result tag {other}")),
        }
    }

    /// Fails if anything is left after the last value.
    pub(crate) fn finish(self) -> Result<(), String> {
        match self.rest {
            [] => Ok(()),
            rest => Err(format!(
                "{} unexpected bytes after the last item",
                rest.len()
            )),
        }
    }
}

// Fast paths, byte for byte what postcard writes, so either side may use
// the generic path:
// - `Vec<u8>`: serde sends it as a sequence, one `serialize_u8` call per
//   byte (seconds for 256 MiB); postcard writes a sequence of `u8` and a
//   byte string identically (length, then the bytes), so it goes as a byte
//   string: one copy.
// - the integers that most numeric jobs take and return: varints written
//   inline rather than through the serializer, a few times faster.

/// Packs the low 7 bits of each of 8 bytes into 56 contiguous bits.
#[inline]
fn squeeze(v: u64) -> u64 {
    let v = (v & 0x007f_007f_007f_007f) | ((v & 0x7f00_7f00_7f00_7f00) >> 1);
    let v = (v & 0x0000_3fff_0000_3fff) | ((v & 0x3fff_0000_3fff_0000) >> 2);
    (v & 0x0000_0000_0fff_ffff) | ((v & 0x0fff_ffff_0000_0000) >> 4)
}

/// The inverse of [`squeeze`]: spreads 56 bits over 8 bytes, 7 bits each.
#[inline]
fn spread(v: u64) -> u64 {
    let v = (v & 0x0000_0000_0fff_ffff) | ((v << 4) & 0x0fff_ffff_0000_0000);
    let v = (v & 0x0000_3fff_0000_3fff) | ((v << 2) & 0x3fff_0000_3fff_0000);
    (v & 0x007f_007f_007f_007f) | ((v << 1) & 0x7f00_7f00_7f00_7f00)
}

#[inline]
fn push_varint(mut value: u64, out: &mut Vec<u8>) {
    if value < 1 << 56 {
        // 1 to 8 bytes: all written at once, continuation bits by mask.
        let bits = 64 - value.leading_zeros() as usize;
        let len = bits.div_ceil(7).max(1);
        let continuation = 0x8080_8080_8080_8080u64 & ((1u64 << (8 * (len - 1))) - 1);
        let word = (spread(value) | continuation).to_le_bytes();
        out.reserve(8);
        let at = out.len();
        let spare = out.spare_capacity_mut();
        for (slot, byte) in spare[..8].iter_mut().zip(word) {
            slot.write(byte);
        }
        // SAFETY: 8 bytes after the length were written just above (room
        // made by `reserve(8)`); the first `len` of them are the varint.
        unsafe { out.set_len(at + len) };
        return;
    }
    out.reserve(10);
    let spare = out.spare_capacity_mut();
    let mut n = 0;
    while value >= 0x80 && n < 9 {
        spare[n].write((value as u8) | 0x80);
        value >>= 7;
        n += 1;
    }
    spare[n].write(value as u8);
    // SAFETY: the `n + 1` bytes after the length were just written, and
    // `reserve(10)` made room for them (a u64 takes at most 10).
    unsafe { out.set_len(out.len() + n + 1) };
}

#[cold]
fn bad_varint() -> String {
    "a number was cut short or is too long".to_owned()
}

/// Appends one job item (argument or result value) to `out`.
#[inline]
pub(crate) fn encode_item<T: Serialize + 'static>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let any = value as &dyn Any;
    if let Some(&v) = any.downcast_ref::<u64>() {
        push_varint(v, out);
    } else if let Some(&v) = any.downcast_ref::<usize>() {
        push_varint(v as u64, out);
    } else if let Some(&v) = any.downcast_ref::<i64>() {
        push_varint(((v << 1) ^ (v >> 63)) as u64, out);
    } else if let Some(&v) = any.downcast_ref::<u32>() {
        push_varint(u64::from(v), out);
    } else if let Some(&v) = any.downcast_ref::<i32>() {
        push_varint(u64::from(((v << 1) ^ (v >> 31)) as u32), out);
    } else if let Some(bytes) = any.downcast_ref::<Vec<u8>>() {
        return encode_into(serde_bytes::Bytes::new(bytes), out);
    } else {
        return encode_into(value, out);
    }
    Ok(())
}

/// Appends an item's outcome, `Result<R, Failure>`, to `out`.
#[inline]
pub(crate) fn encode_outcome<R: Serialize + 'static>(
    outcome: Result<&R, &Failure>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    // The variant index, as postcard writes it for `Result`, then the payload.
    match outcome {
        Ok(value) => {
            out.push(0);
            encode_item(value, out).inspect_err(|_| {
                out.pop();
            })
        }
        Err(failure) => {
            out.push(1);
            encode_into(failure, out).inspect_err(|_| {
                out.pop();
            })
        }
    }
}

/// `value` as a `T`, when `U` is `T` (checked by the caller through `TypeId`).
fn cast<T: 'static, U: 'static>(value: U) -> Option<T> {
    let mut slot = Some(value);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<T>>()
        .and_then(Option::take)
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
        assert_eq!(encode(&data).unwrap(), generic);
        let mut reader = Reader::new(&generic);
        assert_eq!(reader.item::<Vec<u8>>().unwrap(), data);
        reader.finish().unwrap();

        let (mut fast, mut generic) = (Vec::new(), Vec::new());
        encode_outcome::<Vec<u8>>(Ok(&data), &mut fast).unwrap();
        encode_into(&Ok::<&Vec<u8>, Failure>(&data), &mut generic).unwrap();
        assert_eq!(fast, generic);
        assert_eq!(Reader::new(&fast).outcome::<Vec<u8>>().unwrap(), Ok(data));
    }

    #[test]
    fn word_at_a_time_varints_match_postcard() {
        let mut values = vec![0u64, 1, 127, 128, 16_383, 16_384, u64::MAX, u64::MAX - 1];
        for shift in 0..64 {
            values.extend([1u64 << shift, (1u64 << shift) - 1, (1u64 << shift) + 1]);
        }
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(x >> (x % 64));
        }
        let mut all = Vec::new();
        for &v in &values {
            let mut ours = Vec::new();
            push_varint(v, &mut ours);
            assert_eq!(ours, postcard::to_allocvec(&v).unwrap(), "{v}");
            all.extend(ours);
        }
        // Read back to back (word loads near the end of the buffer too).
        let mut reader = Reader::new(&all);
        for &v in &values {
            assert_eq!(reader.item::<u64>().unwrap(), v);
        }
        reader.finish().unwrap();
    }

    #[test]
    fn integer_fast_paths_match_postcard() {
        fn check<T>(values: &[T])
        where
            T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug + 'static,
        {
            for value in values {
                let mut fast = Vec::new();
                encode_item(value, &mut fast).unwrap();
                assert_eq!(fast, postcard::to_allocvec(value).unwrap(), "{value:?}");
                let mut reader = Reader::new(&fast);
                assert_eq!(&reader.item::<T>().unwrap(), value);
                reader.finish().unwrap();
            }
        }
        check(&[0u64, 1, 127, 128, 300, u64::MAX]);
        check(&[0usize, 1 << 40, usize::MAX]);
        check(&[0i64, -1, 1, -64, 64, i64::MIN, i64::MAX]);
        check(&[0u32, 127, 128, u32::MAX]);
        check(&[0i32, -1, i32::MIN, i32::MAX]);
        // Cut short, and too long for a u32:
        assert!(Reader::new(&[0x80]).item::<u64>().is_err());
        let too_big = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(Reader::new(&too_big).item::<u64>().is_err());
        assert!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff, 0x7f])
                .item::<u32>()
                .is_err()
        );
    }

    #[test]
    fn values_round_trip_back_to_back() {
        let mut out = Vec::new();
        encode_into(&7u64, &mut out).unwrap();
        encode_into(&"hi".to_string(), &mut out).unwrap();
        let mut reader = Reader::new(&out);
        assert_eq!(reader.item::<u64>().unwrap(), 7);
        assert_eq!(reader.item::<String>().unwrap(), "hi");
        reader.finish().unwrap();
    }
}
