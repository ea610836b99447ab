//! The decoder: the tagged format of [`super::format`] into any
//! `Deserialize` type, with `deserialize_any` answered truthfully.

use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Visitor};

use super::error::{CodecError, owned_bytes, owned_str, too_deep};
use super::format::{self as tag, MAX_DEPTH, VarintError, describe, read_varint, unzigzag};

type Result<T> = std::result::Result<T, CodecError>;

/// Reads one value at a time from a byte slice.
pub(crate) struct Decoder<'de> {
    input: &'de [u8],
    pos: usize,
    depth: usize,
}

fn cut_short() -> CodecError {
    CodecError::new("the data ends in the middle of a value")
}

/// The error of a varint [`read_varint`] refused, as the decoders say it.
pub(crate) fn varint_error(error: VarintError) -> CodecError {
    match error {
        VarintError::CutShort => cut_short(),
        VarintError::Malformed => CodecError::new(
            "a number is not a valid varint (longer than 64 bits, or not in its shortest form): \
             the data is corrupt",
        ),
    }
}

impl<'de> Decoder<'de> {
    pub(crate) fn new(input: &'de [u8]) -> Self {
        Decoder {
            input,
            pos: 0,
            depth: 0,
        }
    }

    /// What is left after the values read so far.
    pub(crate) fn rest(&self) -> &'de [u8] {
        &self.input[self.pos..]
    }

    #[inline]
    fn peek(&self) -> Result<u8> {
        self.input.get(self.pos).copied().ok_or_else(cut_short)
    }

    #[inline]
    fn byte(&mut self) -> Result<u8> {
        let byte = self.peek()?;
        self.pos += 1;
        Ok(byte)
    }

    #[inline]
    fn take(&mut self, len: usize) -> Result<&'de [u8]> {
        let end = self.pos.checked_add(len).ok_or_else(cut_short)?;
        let bytes = self.input.get(self.pos..end).ok_or_else(cut_short)?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let bytes = self.take(N)?;
        let mut array = [0; N];
        array.copy_from_slice(bytes);
        Ok(array)
    }

    /// A varint, as [`tag::read_varint`] accepts it.
    #[inline]
    pub(crate) fn varint(&mut self) -> Result<u64> {
        let (value, len) = read_varint(self.rest()).map_err(varint_error)?;
        self.pos += len;
        Ok(value)
    }

    /// A length or count, checked against what is left (each element takes
    /// at least a byte), so garbage cannot make us allocate terabytes.
    fn length(&mut self) -> Result<usize> {
        let len = self.varint()?;
        match usize::try_from(len) {
            Ok(len) if len <= self.input.len() - self.pos => Ok(len),
            _ => Err(cut_short()),
        }
    }

    /// Visits a packed sequence ([`tag::SEQ_U8`], [`tag::SEQ_F64`],
    /// [`tag::SEQ_F32`]) of numbers `N`: its count (never more than the
    /// data left can hold), then their bytes.
    fn visit_packed<N: PackedNumber, V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value> {
        let count = self.varint()?;
        let left = self.input.len() - self.pos;
        let bytes = match usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(N::WIDTH))
        {
            Some(len) if len <= left => self.take(len)?,
            _ => return Err(cut_short()),
        };
        let mut access = PackedAccess::<N> {
            values: bytes.chunks_exact(N::WIDTH),
            number: PhantomData,
        };
        let value = visitor.visit_seq(&mut access)?;
        match access.values.len() {
            0 => Ok(value),
            left => Err(CodecError::new(format!(
                "a Deserialize impl stopped {left} elements before the end of a sequence"
            ))),
        }
    }

    fn str(&mut self) -> Result<&'de str> {
        let len = self.length()?;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| CodecError::new("a string is not valid UTF-8"))
    }

    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(too_deep());
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn unexpected(&self, tag: u8, expected: &str) -> CodecError {
        CodecError::new(format!("expected {expected}, found {}", describe(tag)))
    }

    /// Runs `f` one level deeper.
    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.enter()?;
        let value = f(self)?;
        self.leave();
        Ok(value)
    }

    /// After a compound's tag: visits its elements or entries.
    fn visit_compound<V: Visitor<'de>>(&mut self, tag: u8, visitor: V) -> Result<V::Value> {
        self.nested(|de| match tag {
            tag::SEQ => {
                let count = de.length()?;
                de.visit_seq_counted(count, visitor)
            }
            tag::SEQ_OPEN => {
                let value = visitor.visit_seq(Open { de: &mut *de })?;
                de.expect_end()?;
                Ok(value)
            }
            tag::SEQ_U8 => de.visit_packed::<u8, V>(visitor),
            tag::SEQ_F64 => de.visit_packed::<f64, V>(visitor),
            tag::SEQ_F32 => de.visit_packed::<f32, V>(visitor),
            tag::MAP => {
                let count = de.length()?;
                let mut access = Counted { de, left: count };
                let value = visitor.visit_map(&mut access)?;
                access.finish()?;
                Ok(value)
            }
            tag::MAP_OPEN => {
                let value = visitor.visit_map(Open { de: &mut *de })?;
                de.expect_end()?;
                Ok(value)
            }
            tag::STRUCT => {
                let count = de.length()?;
                de.visit_fields(count, visitor)
            }
            other => Err(de.unexpected(other, "a sequence or a map")),
        })
    }

    fn visit_seq_counted<V: Visitor<'de>>(&mut self, count: usize, visitor: V) -> Result<V::Value> {
        let mut access = Counted {
            de: self,
            left: count,
        };
        let value = visitor.visit_seq(&mut access)?;
        access.finish()?;
        Ok(value)
    }

    fn visit_fields<V: Visitor<'de>>(&mut self, count: usize, visitor: V) -> Result<V::Value> {
        let mut access = Fields {
            de: self,
            left: count,
        };
        let value = visitor.visit_map(&mut access)?;
        if access.left > 0 {
            return Err(CodecError::new(
                "a Deserialize impl stopped before the last field of a struct",
            ));
        }
        Ok(value)
    }

    fn expect_end(&mut self) -> Result<()> {
        match self.byte()? {
            tag::END => Ok(()),
            other => Err(CodecError::new(format!(
                "a Deserialize impl stopped before the end of a sequence or map (found {})",
                describe(other)
            ))),
        }
    }

    /// Reads an enum variant's header after its tag: index and name.
    fn variant_header(&mut self) -> Result<(u32, &'de str)> {
        let index = u32::try_from(self.varint()?)
            .map_err(|_| CodecError::new("an enum variant index is out of range"))?;
        Ok((index, self.str()?))
    }

    /// An enum variant seen by `deserialize_any`: as serde's own buffered
    /// representation expects it (and JSON writes it), a unit variant is its
    /// name and any other is a map of one entry, name to payload.
    fn visit_variant_as_any<V: Visitor<'de>>(&mut self, tag: u8, visitor: V) -> Result<V::Value> {
        let (_, name) = self.variant_header()?;
        if tag == tag::UNIT_VARIANT {
            return visitor.visit_borrowed_str(name);
        }
        self.nested(|de| {
            visitor.visit_map(OneEntry {
                de,
                tag,
                name: Some(name),
            })
        })
    }
}

impl<'de> de::Deserializer<'de> for &mut Decoder<'de> {
    type Error = CodecError;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let tag = self.byte()?;
        match tag {
            tag::UNIT => visitor.visit_unit(),
            tag::NONE => visitor.visit_none(),
            tag::SOME => self.nested(|de| visitor.visit_some(de)),
            tag::FALSE => visitor.visit_bool(false),
            tag::TRUE => visitor.visit_bool(true),
            tag::U64 => visitor.visit_u64(self.varint()?),
            tag::I64 => visitor.visit_i64(unzigzag(self.varint()?)),
            tag::U8 => visitor.visit_u8(self.byte()?),
            tag::U128 => visitor.visit_u128(u128::from_le_bytes(self.array()?)),
            tag::I128 => visitor.visit_i128(i128::from_le_bytes(self.array()?)),
            tag::F32 => visitor.visit_f32(f32::from_bits(u32::from_le_bytes(self.array()?))),
            tag::F64 => visitor.visit_f64(f64::from_bits(u64::from_le_bytes(self.array()?))),
            tag::CHAR => {
                let code = self.varint()?;
                let c = u32::try_from(code)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or_else(|| CodecError::new("a char is not a Unicode scalar value"))?;
                visitor.visit_char(c)
            }
            tag::STR => visitor.visit_borrowed_str(self.str()?),
            tag::BYTES => {
                let len = self.length()?;
                visitor.visit_borrowed_bytes(self.take(len)?)
            }
            tag::SEQ
            | tag::SEQ_OPEN
            | tag::SEQ_U8
            | tag::SEQ_F64
            | tag::SEQ_F32
            | tag::MAP
            | tag::MAP_OPEN
            | tag::STRUCT => self.visit_compound(tag, visitor),
            tag::UNIT_VARIANT | tag::NEWTYPE_VARIANT | tag::TUPLE_VARIANT | tag::STRUCT_VARIANT => {
                self.visit_variant_as_any(tag, visitor)
            }
            other => Err(CodecError::new(format!(
                "unknown tag {other:#04x}: the data is corrupt"
            ))),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.byte()? {
            tag::NONE => visitor.visit_none(),
            tag::SOME => self.nested(|de| visitor.visit_some(de)),
            other => Err(self.unexpected(other, "an Option")),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        self.nested(|de| visitor.visit_newtype_struct(de))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        let tag = self.byte()?;
        match tag {
            tag::UNIT_VARIANT | tag::NEWTYPE_VARIANT | tag::TUPLE_VARIANT | tag::STRUCT_VARIANT => {
                let (index, name) = self.variant_header()?;
                self.nested(|de| {
                    visitor.visit_enum(Variant {
                        de,
                        tag,
                        index,
                        name,
                    })
                })
            }
            // A unit variant written as its name by a hand-written Serialize.
            tag::STR => visitor.visit_enum(de::value::BorrowedStrDeserializer::<CodecError>::new(
                self.str()?,
            )),
            other => Err(self.unexpected(other, "an enum")),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        de::Deserializer::deserialize_any(&mut *self, de::IgnoredAny)?;
        visitor.visit_unit()
    }

    // An owned string or byte string is copied here, where its allocation
    // can fail with an error (`String`'s own visitor would abort).
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        if self.peek()? == tag::STR {
            self.pos += 1;
            let text = self.str()?;
            return visitor.visit_string(owned_str(text)?);
        }
        de::Deserializer::deserialize_any(self, visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        if self.peek()? == tag::BYTES {
            self.pos += 1;
            let len = self.length()?;
            return visitor.visit_byte_buf(owned_bytes(self.take(len)?)?);
        }
        de::Deserializer::deserialize_any(self, visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str
        bytes unit unit_struct seq tuple tuple_struct map struct identifier
    }
}

/// Elements or entries of a compound with a count.
struct Counted<'a, 'de> {
    de: &'a mut Decoder<'de>,
    left: usize,
}

impl Counted<'_, '_> {
    fn finish(&mut self) -> Result<()> {
        if self.left == 0 {
            Ok(())
        } else {
            Err(CodecError::new(format!(
                "a Deserialize impl stopped with {} elements left",
                self.left
            )))
        }
    }
}

impl<'de> de::SeqAccess<'de> for Counted<'_, 'de> {
    type Error = CodecError;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> de::MapAccess<'de> for Counted<'_, 'de> {
    type Error = CodecError;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.de)
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// Elements or entries until [`tag::END`].
struct Open<'a, 'de> {
    de: &'a mut Decoder<'de>,
}

impl<'de> de::SeqAccess<'de> for Open<'_, 'de> {
    type Error = CodecError;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if self.de.peek()? == tag::END {
            return Ok(None);
        }
        seed.deserialize(&mut *self.de).map(Some)
    }
}

impl<'de> de::MapAccess<'de> for Open<'_, 'de> {
    type Error = CodecError;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if self.de.peek()? == tag::END {
            return Ok(None);
        }
        seed.deserialize(&mut *self.de).map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.de)
    }
}

/// A struct's fields: untagged names, each followed by a value.
struct Fields<'a, 'de> {
    de: &'a mut Decoder<'de>,
    left: usize,
}

impl<'de> de::MapAccess<'de> for Fields<'_, 'de> {
    type Error = CodecError;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let name = self.de.str()?;
        seed.deserialize(de::value::BorrowedStrDeserializer::new(name))
            .map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.de)
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// A non-unit enum variant seen through `deserialize_any`: `{name: payload}`.
struct OneEntry<'a, 'de> {
    de: &'a mut Decoder<'de>,
    tag: u8,
    name: Option<&'de str>,
}

impl<'de> de::MapAccess<'de> for OneEntry<'_, 'de> {
    type Error = CodecError;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        match self.name.take() {
            Some(name) => seed
                .deserialize(de::value::BorrowedStrDeserializer::new(name))
                .map(Some),
            None => Ok(None),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(Payload {
            de: &mut *self.de,
            tag: self.tag,
        })
    }
}

/// A variant's payload, as a value of its own (for [`OneEntry`]).
struct Payload<'a, 'de> {
    de: &'a mut Decoder<'de>,
    tag: u8,
}

impl<'de> de::Deserializer<'de> for Payload<'_, 'de> {
    type Error = CodecError;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.tag {
            tag::NEWTYPE_VARIANT => de::Deserializer::deserialize_any(self.de, visitor),
            tag::TUPLE_VARIANT => {
                let count = self.de.length()?;
                self.de.visit_seq_counted(count, visitor)
            }
            _ => {
                let count = self.de.length()?;
                self.de.visit_fields(count, visitor)
            }
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

/// A variant for `deserialize_enum`.
struct Variant<'a, 'de> {
    de: &'a mut Decoder<'de>,
    tag: u8,
    index: u32,
    name: &'de str,
}

/// A variant's identifier: its name, or its index to a visitor that asks
/// for an integer.
struct Identifier<'de> {
    index: u32,
    name: &'de str,
}

impl<'de> de::Deserializer<'de> for Identifier<'de> {
    type Error = CodecError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_borrowed_str(self.name)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u32(self.index)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u32(self.index)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u32(self.index)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u64(u64::from(self.index))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

impl<'a, 'de> de::EnumAccess<'de> for Variant<'a, 'de> {
    type Error = CodecError;
    type Variant = Self;
    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        let identifier = Identifier {
            index: self.index,
            name: self.name,
        };
        Ok((seed.deserialize(identifier)?, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'_, 'de> {
    type Error = CodecError;

    fn unit_variant(self) -> Result<()> {
        match self.tag {
            tag::UNIT_VARIANT => Ok(()),
            other => Err(self.de.unexpected(other, "a unit variant")),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        match self.tag {
            tag::NEWTYPE_VARIANT => seed.deserialize(&mut *self.de),
            other => Err(self.de.unexpected(other, "a newtype variant")),
        }
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value> {
        match self.tag {
            tag::TUPLE_VARIANT => {
                let count = self.de.length()?;
                self.de.visit_seq_counted(count, visitor)
            }
            other => Err(self.de.unexpected(other, "a tuple variant")),
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        match self.tag {
            tag::STRUCT_VARIANT => {
                let count = self.de.length()?;
                self.de.visit_fields(count, visitor)
            }
            other => Err(self.de.unexpected(other, "a struct variant")),
        }
    }
}

/// A number of a packed sequence: `WIDTH` little-endian bytes, handed to
/// a `Deserialize` impl as the tagged decoder hands it (so a newtype
/// around it reads it too).
trait PackedNumber: Copy {
    const WIDTH: usize;
    fn read(bytes: &[u8]) -> Self;
    fn visit<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value>;
}

macro_rules! packed_numbers {
    ($($ty:ty: $width:literal, $read:expr, $visit:ident;)*) => {$(
        impl PackedNumber for $ty {
            const WIDTH: usize = $width;
            #[inline]
            fn read(bytes: &[u8]) -> Self {
                let mut word = [0u8; $width];
                word.copy_from_slice(bytes);
                let read: fn([u8; $width]) -> $ty = $read;
                read(word)
            }
            fn visit<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
                visitor.$visit(self)
            }
        }
    )*};
}

packed_numbers! {
    u8: 1, |[b]| b, visit_u8;
    f64: 8, |w| f64::from_bits(u64::from_le_bytes(w)), visit_f64;
    f32: 4, |w| f32::from_bits(u32::from_le_bytes(w)), visit_f32;
}

struct PackedAccess<'b, N> {
    values: std::slice::ChunksExact<'b, u8>,
    number: PhantomData<N>,
}

impl<'de, N: PackedNumber> de::SeqAccess<'de> for PackedAccess<'_, N> {
    type Error = CodecError;
    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>> {
        match self.values.next() {
            Some(bytes) => seed.deserialize(PackedValue(N::read(bytes))).map(Some),
            None => Ok(None),
        }
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.values.len())
    }
}

/// One number of a packed sequence.
struct PackedValue<N>(N);

impl<'de, N: PackedNumber> de::Deserializer<'de> for PackedValue<N> {
    type Error = CodecError;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.0.visit(visitor)
    }

    // Transparent, as the tagged decoder reads a newtype.
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct seq tuple tuple_struct map struct
        enum identifier ignored_any
    }
}
