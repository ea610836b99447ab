//! Plain items in bulk: chunks whose items all have one fixed shape
//! (integers, floats, bools, chars, strings, byte strings, `()`, sequences
//! of numbers, and tuples and newtypes of those) are written without a tag
//! per value.
//!
//! The chunk's header holds the shape once (see [`Kind`]); each item is then
//! only its raw values: a `u64` is 8 little-endian bytes, a string its
//! varint length and bytes, a `Vec<f64>` its varint count and 8 bytes per
//! element (so a vector of numbers is its own memory on a little-endian
//! machine, copied whole both ways). The first item's serializer calls record the
//! shape; every later item must make the same calls, or the chunk falls
//! back to the tagged format (see [`transcode`]). Structs are never plain:
//! their fields must travel by name (a skipped field would otherwise shift
//! the next one into its place).

use serde::de::{self, Visitor};
use serde::ser::{self, Serialize};

use super::de::varint_error;
use super::error::{CodecError, owned_bytes, owned_str, reserve};
use super::format::{self as tag, push_varint, read_varint, varint_len, zigzag};

/// One step of a shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Unit = 0,
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    U128,
    I128,
    F32,
    F64,
    Char,
    Str,
    Bytes,
    /// Followed in the shape by its length (a varint) and its elements.
    Tuple,
    /// A sequence of numbers: followed in the shape by the numbers' kind
    /// (one of the fixed-width integers or floats, see [`Kind::is_number`]);
    /// each value is its count (a varint) and the numbers, raw.
    Seq,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        use Kind::*;
        [
            Unit, Bool, U8, U16, U32, U64, I8, I16, I32, I64, U128, I128, F32, F64, Char, Str,
            Bytes, Tuple, Seq,
        ]
        .get(usize::from(byte))
        .copied()
    }

    /// Bytes of a fixed-width value.
    pub(super) fn width(self) -> usize {
        match self {
            Kind::Unit | Kind::Tuple | Kind::Str | Kind::Bytes | Kind::Seq => 0,
            Kind::Bool | Kind::U8 | Kind::I8 => 1,
            Kind::U16 | Kind::I16 => 2,
            Kind::U32 | Kind::I32 | Kind::F32 | Kind::Char => 4,
            Kind::U64 | Kind::I64 | Kind::F64 => 8,
            Kind::U128 | Kind::I128 => 16,
        }
    }

    /// An integer or float: the kinds a [`Kind::Seq`] holds. Every bit
    /// pattern of its width is a value (unlike a bool or a char), so a
    /// sequence of them is read with no check per element.
    pub(super) fn is_number(self) -> bool {
        !matches!(
            self,
            Kind::Unit
                | Kind::Bool
                | Kind::Char
                | Kind::Str
                | Kind::Bytes
                | Kind::Tuple
                | Kind::Seq
        )
    }
}

/// Longest shape kept plain; longer ones (big arrays) go tagged.
const MAX_SHAPE: usize = 64;

/// Why an item could not be written plain.
#[derive(Debug)]
pub(crate) enum PlainError {
    /// The type is not plain (or not in this shape): write it tagged.
    NotPlain,
    /// The value's own `Serialize` failed: report it.
    User(CodecError),
}

impl std::fmt::Display for PlainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlainError::NotPlain => f.write_str("not a plain value"),
            PlainError::User(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for PlainError {}

impl ser::Error for PlainError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        PlainError::User(CodecError::new(msg.to_string()))
    }
}

/// Writes one item plain, recording the shape (first item) or checking it.
pub(crate) struct PlainEncoder<'a> {
    pub(crate) out: &'a mut Vec<u8>,
    pub(crate) shape: &'a mut Vec<u8>,
    /// Position in `shape`; `None` while recording.
    pub(crate) at: Option<usize>,
    /// Record the shape only, writing nothing (the first item is probed
    /// before the chunk's header, which holds the shape, is written).
    pub(crate) dry: bool,
}

type PResult<T = ()> = Result<T, PlainError>;

impl PlainEncoder<'_> {
    fn step(&mut self, kind: Kind) -> PResult {
        self.shape_byte(kind as u8)
    }

    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        if !self.dry {
            self.out.extend_from_slice(bytes);
        }
    }

    /// Room for a string or byte string of `len` bytes and its length,
    /// reserved fallibly: its size is the user's.
    fn room(&mut self, len: usize) -> PResult {
        if self.dry {
            return Ok(());
        }
        // Exactly the length's varint and the bytes: slack here left the
        // buffer a few bytes off the size glibc had just freed, and every
        // large call then faulted fresh pages in (echo of 16 MiB: 24 ms
        // instead of 17.5 ms after an echo of 1 MiB in the same process).
        reserve(self.out, len.saturating_add(varint_len(len as u64))).map_err(PlainError::User)
    }

    fn put_len(&mut self, len: usize) {
        if !self.dry {
            push_varint(self.out, len as u64);
        }
    }

    fn shape_byte(&mut self, byte: u8) -> PResult {
        match &mut self.at {
            None if self.shape.len() < MAX_SHAPE => {
                self.shape.push(byte);
                Ok(())
            }
            None => Err(PlainError::NotPlain),
            Some(at) if self.shape.get(*at) == Some(&byte) => {
                *at += 1;
                Ok(())
            }
            Some(_) => Err(PlainError::NotPlain),
        }
    }

    /// Whether the item just written used the whole shape.
    pub(crate) fn complete(&self) -> bool {
        self.at.is_none_or(|at| at == self.shape.len())
    }
}

macro_rules! fixed {
    ($($method:ident($ty:ty) => $kind:ident;)*) => {$(
        #[inline]
        fn $method(self, v: $ty) -> PResult {
            self.step(Kind::$kind)?;
            self.put(&v.to_le_bytes());
            Ok(())
        }
    )*};
}

macro_rules! not_plain {
    ($($method:ident($($arg:ty),*) -> $ret:ty;)*) => {$(
        fn $method(self, $(_: $arg),*) -> PResult<$ret> {
            Err(PlainError::NotPlain)
        }
    )*};
}

impl<'a, 'b> ser::Serializer for &'a mut PlainEncoder<'b> {
    type Ok = ();
    type Error = PlainError;
    type SerializeSeq = Numbers<'a, 'b>;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = ser::Impossible<(), PlainError>;
    type SerializeMap = ser::Impossible<(), PlainError>;
    type SerializeStruct = ser::Impossible<(), PlainError>;
    type SerializeStructVariant = ser::Impossible<(), PlainError>;

    fn is_human_readable(&self) -> bool {
        false
    }

    fixed! {
        serialize_u8(u8) => U8; serialize_u16(u16) => U16; serialize_u32(u32) => U32;
        serialize_u64(u64) => U64; serialize_i8(i8) => I8; serialize_i16(i16) => I16;
        serialize_i32(i32) => I32; serialize_i64(i64) => I64; serialize_u128(u128) => U128;
        serialize_i128(i128) => I128;
    }

    fn serialize_bool(self, v: bool) -> PResult {
        self.step(Kind::Bool)?;
        self.put(&[u8::from(v)]);
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> PResult {
        self.step(Kind::F32)?;
        self.put(&v.to_bits().to_le_bytes());
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> PResult {
        self.step(Kind::F64)?;
        self.put(&v.to_bits().to_le_bytes());
        Ok(())
    }
    fn serialize_char(self, v: char) -> PResult {
        self.step(Kind::Char)?;
        self.put(&u32::from(v).to_le_bytes());
        Ok(())
    }
    fn serialize_str(self, v: &str) -> PResult {
        self.step(Kind::Str)?;
        self.room(v.len())?;
        self.put_len(v.len());
        self.put(v.as_bytes());
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> PResult {
        self.step(Kind::Bytes)?;
        self.room(v.len())?;
        self.put_len(v.len());
        self.put(v);
        Ok(())
    }
    fn serialize_unit(self) -> PResult {
        self.step(Kind::Unit)
    }
    fn serialize_unit_struct(self, _: &'static str) -> PResult {
        self.step(Kind::Unit)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> PResult {
        value.serialize(self)
    }
    fn serialize_tuple(self, len: usize) -> PResult<Self> {
        self.step(Kind::Tuple)?;
        let mut len_bytes = Vec::with_capacity(5);
        push_varint(&mut len_bytes, len as u64);
        for byte in len_bytes {
            self.shape_byte(byte)?;
        }
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> PResult<Self> {
        self.serialize_tuple(len)
    }

    fn serialize_none(self) -> PResult {
        Err(PlainError::NotPlain)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> PResult {
        Err(PlainError::NotPlain)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> PResult {
        Err(PlainError::NotPlain)
    }
    /// A sequence of numbers, with its length known up front (a `Vec`, a
    /// slice, a set): any other sequence is not plain.
    fn serialize_seq(self, len: Option<usize>) -> PResult<Numbers<'a, 'b>> {
        let len = len.ok_or(PlainError::NotPlain)?;
        self.step(Kind::Seq)?;
        let kind = match self.at {
            // Recording: the first element gives the kind; with none, the
            // shape cannot be known from this value.
            None if len == 0 => return Err(PlainError::NotPlain),
            None => None,
            Some(at) => {
                let kind = self.shape.get(at).and_then(|&b| Kind::from_byte(b));
                match kind {
                    Some(kind) if kind.is_number() => {
                        self.at = Some(at + 1);
                        Some(kind)
                    }
                    _ => return Err(PlainError::NotPlain),
                }
            }
        };
        // The count is the user's: room for the numbers is reserved
        // fallibly. (A shape is recorded only in a dry run, which writes
        // nothing: a written sequence knows its kind.)
        if let (false, Some(kind)) = (self.dry, kind) {
            let room = len.saturating_mul(kind.width());
            reserve(self.out, room.saturating_add(varint_len(len as u64)))
                .map_err(PlainError::User)?;
        }
        self.put_len(len);
        Ok(Numbers {
            enc: self,
            kind,
            left: len,
        })
    }

    not_plain! {
        serialize_unit_variant(&'static str, u32, &'static str) -> ();
        serialize_tuple_variant(&'static str, u32, &'static str, usize) -> ser::Impossible<(), PlainError>;
        serialize_map(Option<usize>) -> ser::Impossible<(), PlainError>;
        serialize_struct(&'static str, usize) -> ser::Impossible<(), PlainError>;
        serialize_struct_variant(&'static str, u32, &'static str, usize) -> ser::Impossible<(), PlainError>;
    }
}

impl ser::SerializeTuple for &mut PlainEncoder<'_> {
    type Ok = ();
    type Error = PlainError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> PResult {
        value.serialize(&mut **self)
    }
    fn end(self) -> PResult {
        Ok(())
    }
}

impl ser::SerializeTupleStruct for &mut PlainEncoder<'_> {
    type Ok = ();
    type Error = PlainError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> PResult {
        value.serialize(&mut **self)
    }
    fn end(self) -> PResult {
        Ok(())
    }
}

/// A sequence of numbers being written plain ([`Kind::Seq`]): every
/// element must be a number of one kind, and as many as announced.
pub(crate) struct Numbers<'a, 'b> {
    enc: &'a mut PlainEncoder<'b>,
    /// The elements' kind: from the shape, or from the first element while
    /// the shape is recorded.
    kind: Option<Kind>,
    left: usize,
}

impl ser::SerializeSeq for Numbers<'_, '_> {
    type Ok = ();
    type Error = PlainError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> PResult {
        let (kind, bytes) = value.serialize(Number)?;
        match self.kind {
            Some(expected) if expected != kind => return Err(PlainError::NotPlain),
            Some(_) => {}
            None => {
                // The first element while recording: its kind goes into
                // the shape after the sequence's own byte.
                if !kind.is_number() {
                    return Err(PlainError::NotPlain);
                }
                self.enc.shape_byte(kind as u8)?;
                self.kind = Some(kind);
            }
        }
        self.left = self.left.checked_sub(1).ok_or(PlainError::NotPlain)?;
        self.enc.put(&bytes[..kind.width()]);
        Ok(())
    }
    fn end(self) -> PResult {
        // Fewer elements than announced: the count written is wrong, so
        // the value goes tagged, where the encoder says so.
        if self.left == 0 {
            Ok(())
        } else {
            Err(PlainError::NotPlain)
        }
    }
}

/// Takes one number: its kind and its little-endian bytes. Anything else
/// is not plain.
struct Number;

type Raw = (Kind, [u8; 16]);

fn raw(kind: Kind, bytes: &[u8]) -> PResult<Raw> {
    let mut word = [0u8; 16];
    word[..bytes.len()].copy_from_slice(bytes);
    Ok((kind, word))
}

macro_rules! number {
    ($($method:ident($ty:ty) => $kind:ident, $conv:expr;)*) => {$(
        #[inline]
        fn $method(self, v: $ty) -> PResult<Raw> {
            let conv: fn($ty) -> _ = $conv;
            raw(Kind::$kind, &conv(v).to_le_bytes())
        }
    )*};
}

impl ser::Serializer for Number {
    type Ok = Raw;
    type Error = PlainError;
    type SerializeSeq = ser::Impossible<Raw, PlainError>;
    type SerializeTuple = ser::Impossible<Raw, PlainError>;
    type SerializeTupleStruct = ser::Impossible<Raw, PlainError>;
    type SerializeTupleVariant = ser::Impossible<Raw, PlainError>;
    type SerializeMap = ser::Impossible<Raw, PlainError>;
    type SerializeStruct = ser::Impossible<Raw, PlainError>;
    type SerializeStructVariant = ser::Impossible<Raw, PlainError>;

    fn is_human_readable(&self) -> bool {
        false
    }

    number! {
        serialize_u8(u8) => U8, |v| v; serialize_u16(u16) => U16, |v| v;
        serialize_u32(u32) => U32, |v| v; serialize_u64(u64) => U64, |v| v;
        serialize_i8(i8) => I8, |v| v; serialize_i16(i16) => I16, |v| v;
        serialize_i32(i32) => I32, |v| v; serialize_i64(i64) => I64, |v| v;
        serialize_u128(u128) => U128, |v| v; serialize_i128(i128) => I128, |v| v;
        serialize_f32(f32) => F32, f32::to_bits; serialize_f64(f64) => F64, f64::to_bits;
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> PResult<Raw> {
        value.serialize(self)
    }

    not_plain! {
        serialize_bool(bool) -> Raw;
        serialize_char(char) -> Raw;
        serialize_str(&str) -> Raw;
        serialize_bytes(&[u8]) -> Raw;
        serialize_none() -> Raw;
        serialize_unit() -> Raw;
        serialize_unit_struct(&'static str) -> Raw;
        serialize_unit_variant(&'static str, u32, &'static str) -> Raw;
        serialize_seq(Option<usize>) -> ser::Impossible<Raw, PlainError>;
        serialize_tuple(usize) -> ser::Impossible<Raw, PlainError>;
        serialize_tuple_struct(&'static str, usize) -> ser::Impossible<Raw, PlainError>;
        serialize_tuple_variant(&'static str, u32, &'static str, usize) -> ser::Impossible<Raw, PlainError>;
        serialize_map(Option<usize>) -> ser::Impossible<Raw, PlainError>;
        serialize_struct(&'static str, usize) -> ser::Impossible<Raw, PlainError>;
        serialize_struct_variant(&'static str, u32, &'static str, usize) -> ser::Impossible<Raw, PlainError>;
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> PResult<Raw> {
        Err(PlainError::NotPlain)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> PResult<Raw> {
        Err(PlainError::NotPlain)
    }
}

/// Reads raw values in the order a shape gives.
pub(crate) struct PlainDecoder<'de, 's> {
    pub(crate) input: &'de [u8],
    pub(crate) pos: usize,
    pub(crate) shape: &'s [u8],
    pub(crate) at: usize,
}

type DResult<T> = Result<T, CodecError>;

fn bad_shape() -> CodecError {
    CodecError::new("the chunk's shape does not match its data: the data is corrupt")
}

impl<'de> PlainDecoder<'de, '_> {
    fn kind(&mut self) -> DResult<Kind> {
        // The writer keeps shapes to MAX_SHAPE bytes; a longer one is forged.
        // Refusing it bounds the recursion into nested tuples (each level
        // takes two shape bytes) on the decoding thread's stack.
        if self.shape.len() > MAX_SHAPE {
            return Err(bad_shape());
        }
        let byte = *self.shape.get(self.at).ok_or_else(bad_shape)?;
        self.at += 1;
        Kind::from_byte(byte).ok_or_else(bad_shape)
    }

    /// A tuple's length, from the shape. Each element takes at least one
    /// more byte of the shape, so a length beyond what is left of it is
    /// refused here, before a `Deserialize` impl takes it as a size hint
    /// (and perhaps preallocates by it).
    fn tuple_len(&mut self) -> DResult<usize> {
        let rest = self.shape.get(self.at..).unwrap_or_default();
        let (value, len) = read_varint(rest).map_err(|_| bad_shape())?;
        self.at += len;
        match usize::try_from(value) {
            Ok(value) if value <= self.shape.len() - self.at => Ok(value),
            _ => Err(bad_shape()),
        }
    }

    #[inline]
    fn take(&mut self, len: usize) -> DResult<&'de [u8]> {
        let end = self.pos.checked_add(len).ok_or_else(bad_shape)?;
        let bytes = self
            .input
            .get(self.pos..end)
            .ok_or_else(|| CodecError::new("the data ends in the middle of a value"))?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> DResult<[u8; N]> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    /// A sequence of numbers' header, after its [`Kind::Seq`]: where in the
    /// shape its elements' kind is, and its count. Each number takes at
    /// least a byte, so a count beyond the data left is refused here,
    /// before a `Deserialize` impl takes it as a size hint.
    fn numbers(&mut self) -> DResult<(usize, usize)> {
        let kind_at = self.at;
        let kind = self.kind()?;
        if !kind.is_number() {
            return Err(bad_shape());
        }
        let len = self.varint()?;
        let left = self.input.len().saturating_sub(self.pos);
        if len.checked_mul(kind.width()).is_none_or(|size| size > left) {
            return Err(CodecError::new("the data ends in the middle of a value"));
        }
        Ok((kind_at, len))
    }

    /// A varint of the data (a string's or byte string's length).
    fn varint(&mut self) -> DResult<usize> {
        let rest = self.input.get(self.pos..).unwrap_or_default();
        let (value, len) = read_varint(rest).map_err(varint_error)?;
        self.pos += len;
        usize::try_from(value).map_err(|_| bad_shape())
    }
}

impl<'de> de::Deserializer<'de> for &mut PlainDecoder<'de, '_> {
    type Error = CodecError;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> DResult<V::Value> {
        match self.kind()? {
            Kind::Unit => visitor.visit_unit(),
            Kind::Bool => match self.take(1)?[0] {
                0 => visitor.visit_bool(false),
                1 => visitor.visit_bool(true),
                _ => Err(CodecError::new("a bool is neither 0 nor 1")),
            },
            Kind::U8 => visitor.visit_u8(self.take(1)?[0]),
            Kind::U16 => visitor.visit_u16(u16::from_le_bytes(self.array()?)),
            Kind::U32 => visitor.visit_u32(u32::from_le_bytes(self.array()?)),
            Kind::U64 => visitor.visit_u64(u64::from_le_bytes(self.array()?)),
            Kind::I8 => visitor.visit_i8(i8::from_le_bytes(self.array()?)),
            Kind::I16 => visitor.visit_i16(i16::from_le_bytes(self.array()?)),
            Kind::I32 => visitor.visit_i32(i32::from_le_bytes(self.array()?)),
            Kind::I64 => visitor.visit_i64(i64::from_le_bytes(self.array()?)),
            Kind::U128 => visitor.visit_u128(u128::from_le_bytes(self.array()?)),
            Kind::I128 => visitor.visit_i128(i128::from_le_bytes(self.array()?)),
            Kind::F32 => visitor.visit_f32(f32::from_bits(u32::from_le_bytes(self.array()?))),
            Kind::F64 => visitor.visit_f64(f64::from_bits(u64::from_le_bytes(self.array()?))),
            Kind::Char => char::from_u32(u32::from_le_bytes(self.array()?))
                .ok_or_else(|| CodecError::new("a char is not a Unicode scalar value"))
                .and_then(|c| visitor.visit_char(c)),
            Kind::Str => {
                let len = self.varint()?;
                let bytes = self.take(len)?;
                let text = std::str::from_utf8(bytes)
                    .map_err(|_| CodecError::new("a string is not valid UTF-8"))?;
                visitor.visit_borrowed_str(text)
            }
            Kind::Bytes => {
                let len = self.varint()?;
                visitor.visit_borrowed_bytes(self.take(len)?)
            }
            Kind::Tuple => {
                let len = self.tuple_len()?;
                let mut access = Elements {
                    de: self,
                    left: len,
                    each_at: None,
                };
                let value = visitor.visit_seq(&mut access)?;
                if access.left > 0 {
                    return Err(CodecError::new(
                        "a Deserialize impl stopped before the last element of a tuple",
                    ));
                }
                Ok(value)
            }
            Kind::Seq => {
                let (kind_at, len) = self.numbers()?;
                let mut access = Elements {
                    de: self,
                    left: len,
                    each_at: Some(kind_at),
                };
                let value = visitor.visit_seq(&mut access)?;
                if access.left > 0 {
                    return Err(CodecError::new(
                        "a Deserialize impl stopped before the last element of a sequence",
                    ));
                }
                self.at = kind_at + 1;
                Ok(value)
            }
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> DResult<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    // An owned string or byte string is copied here, where its allocation
    // can fail with an error (`String`'s own visitor would abort).
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> DResult<V::Value> {
        if self.shape.get(self.at) == Some(&(Kind::Str as u8)) {
            self.at += 1;
            let len = self.varint()?;
            let bytes = self.take(len)?;
            let text = std::str::from_utf8(bytes)
                .map_err(|_| CodecError::new("a string is not valid UTF-8"))?;
            return visitor.visit_string(owned_str(text)?);
        }
        de::Deserializer::deserialize_any(self, visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> DResult<V::Value> {
        if self.shape.get(self.at) == Some(&(Kind::Bytes as u8)) {
            self.at += 1;
            let len = self.varint()?;
            return visitor.visit_byte_buf(owned_bytes(self.take(len)?)?);
        }
        de::Deserializer::deserialize_any(self, visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str
        bytes option unit unit_struct seq tuple tuple_struct map struct
        enum identifier ignored_any
    }
}

struct Elements<'a, 'de, 's> {
    de: &'a mut PlainDecoder<'de, 's>,
    left: usize,
    /// For a sequence: where in the shape each element's kind is (every
    /// element has the same); a tuple's elements follow one another.
    each_at: Option<usize>,
}

impl<'de> de::SeqAccess<'de> for Elements<'_, 'de, '_> {
    type Error = CodecError;
    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> DResult<Option<T::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        if let Some(at) = self.each_at {
            self.de.at = at;
        }
        seed.deserialize(&mut *self.de).map(Some)
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// Rewrites `count` plain items in the tagged format, value for value (used
/// when a later item of a chunk does not fit the shape of the first).
pub(crate) fn transcode(
    shape: &[u8],
    items: &[u8],
    count: usize,
    out: &mut Vec<u8>,
) -> DResult<()> {
    let mut de = PlainDecoder {
        input: items,
        pos: 0,
        shape,
        at: 0,
    };
    for _ in 0..count {
        de.at = 0;
        transcode_one(&mut de, out)?;
    }
    Ok(())
}

fn transcode_one(de: &mut PlainDecoder<'_, '_>, out: &mut Vec<u8>) -> DResult<()> {
    let kind = de.kind()?;
    let raw = de.take(kind.width())?;
    let le = |n: usize| {
        let mut word = [0u8; 16];
        word[..n].copy_from_slice(&raw[..n]);
        u128::from_le_bytes(word)
    };
    match kind {
        Kind::Unit => out.push(tag::UNIT),
        Kind::Bool => out.push(if raw[0] == 0 { tag::FALSE } else { tag::TRUE }),
        Kind::U8 => out.extend_from_slice(&[tag::U8, raw[0]]),
        Kind::U16 | Kind::U32 | Kind::U64 => {
            out.push(tag::U64);
            push_varint(out, le(kind.width()) as u64);
        }
        Kind::I8 => {
            out.push(tag::I64);
            push_varint(out, zigzag(i64::from(raw[0] as i8)));
        }
        Kind::I16 => {
            out.push(tag::I64);
            push_varint(out, zigzag(i64::from(le(2) as u16 as i16)));
        }
        Kind::I32 => {
            out.push(tag::I64);
            push_varint(out, zigzag(i64::from(le(4) as u32 as i32)));
        }
        Kind::I64 => {
            out.push(tag::I64);
            push_varint(out, zigzag(le(8) as u64 as i64));
        }
        Kind::U128 | Kind::I128 => {
            out.push(if kind == Kind::U128 {
                tag::U128
            } else {
                tag::I128
            });
            out.extend_from_slice(raw);
        }
        Kind::F32 => {
            out.push(tag::F32);
            out.extend_from_slice(raw);
        }
        Kind::F64 => {
            out.push(tag::F64);
            out.extend_from_slice(raw);
        }
        Kind::Char => {
            out.push(tag::CHAR);
            push_varint(out, le(4) as u64);
        }
        Kind::Str | Kind::Bytes => {
            let len = de.varint()?;
            reserve(out, len.saturating_add(1 + varint_len(len as u64)))?;
            out.push(if kind == Kind::Str {
                tag::STR
            } else {
                tag::BYTES
            });
            push_varint(out, len as u64);
            out.extend_from_slice(de.take(len)?);
        }
        Kind::Tuple => {
            let len = de.tuple_len()?;
            out.push(tag::SEQ);
            push_varint(out, len as u64);
            for _ in 0..len {
                transcode_one(de, out)?;
            }
        }
        Kind::Seq => {
            let (kind_at, len) = de.numbers()?;
            // A tagged number takes at most its tag and 16 bytes.
            reserve(out, len.saturating_mul(17).saturating_add(11))?;
            out.push(tag::SEQ);
            push_varint(out, len as u64);
            for _ in 0..len {
                de.at = kind_at;
                transcode_one(de, out)?;
            }
            de.at = kind_at + 1;
        }
    }
    Ok(())
}
