//! The encoder: any `Serialize` value into the tagged format of [`super::format`].

use serde::ser::{self, Serialize};

use super::error::{CodecError, reserve, too_deep};
use super::format::{self as tag, MAX_DEPTH, push_varint, varint_len, zigzag};

type Result<T = ()> = std::result::Result<T, CodecError>;

/// Appends the encoding of `value` to `out`; on error `out` may hold a
/// partial value, which the caller cuts off.
pub(crate) fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result {
    value.serialize(&mut Encoder {
        out,
        depth: 0,
        raw: 0,
        raw_written: 0,
    })
}

pub(crate) struct Encoder<'a> {
    out: &'a mut Vec<u8>,
    depth: usize,
    /// [`tag::F64`] or [`tag::F32`]: a float of that kind, written next and
    /// before any tag, goes without its tag (an element of a packed
    /// sequence, see [`Floats`]); 0 otherwise. Any tag written ends it.
    raw: u8,
    /// Floats written without their tag so far.
    raw_written: usize,
}

impl<'b> Encoder<'b> {
    #[inline]
    fn tag(&mut self, tag: u8) {
        self.raw = 0;
        self.out.push(tag);
    }

    /// Writes a float's bytes without its tag, if the packed sequence being
    /// written asks for one of kind `kind` (see [`Encoder::raw`]).
    #[inline(always)]
    fn raw_float(&mut self, kind: u8, bytes: &[u8]) -> bool {
        if self.raw != kind {
            return false;
        }
        self.raw = 0;
        self.raw_written += 1;
        self.out.extend_from_slice(bytes);
        true
    }

    /// A string or byte string: its size is the user's, so its room is
    /// reserved fallibly, exactly (see `plain`'s `room` for why no slack).
    #[inline]
    fn bytes(&mut self, tag: u8, bytes: &[u8]) -> Result {
        let len = bytes.len();
        reserve(self.out, len.saturating_add(1 + varint_len(len as u64)))?;
        self.tag(tag);
        push_varint(self.out, bytes.len() as u64);
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    fn name(&mut self, name: &str) {
        push_varint(self.out, name.len() as u64);
        self.out.extend_from_slice(name.as_bytes());
    }

    fn enter(&mut self) -> Result {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(too_deep());
        }
        Ok(())
    }

    /// Starts a compound value: its tag, and its count when known.
    fn compound(&mut self, tag: u8, len: Option<usize>) -> Result<Compound<'_, 'b>> {
        self.enter()?;
        let header = self.out.len();
        self.tag(tag);
        if let Some(len) = len {
            push_varint(self.out, len as u64);
        }
        Ok(Compound {
            header,
            declared: len,
            written: 0,
            all_u8: true,
            floats: Floats::Unknown,
            enc: self,
        })
    }

    /// A tuple or struct variant: its header and count; fields follow.
    fn variant_compound(
        &mut self,
        tag: u8,
        index: u32,
        name: &str,
        len: usize,
    ) -> Result<Compound<'_, 'b>> {
        self.variant(tag, index, name)?;
        push_varint(self.out, len as u64);
        Ok(Compound {
            // Never packed: a variant's fields are not a byte sequence.
            header: usize::MAX,
            declared: Some(len),
            written: 0,
            all_u8: false,
            floats: Floats::No,
            enc: self,
        })
    }

    fn variant(&mut self, tag: u8, index: u32, name: &str) -> Result {
        self.enter()?;
        self.tag(tag);
        push_varint(self.out, u64::from(index));
        self.name(name);
        Ok(())
    }
}

/// Room for any scalar value with its tag (an `i128` takes 17 bytes) and a
/// count: reserved before each element, field or entry.
const SCALAR_ROOM: usize = 32;

/// Gives each packed float from `start` to `end` its tag `element` back,
/// and the sequence at `header` its usual tag: an element that is not such
/// a float came (rare: a sequence of mixed values).
#[cold]
fn unpack(out: &mut Vec<u8>, header: usize, element: u8, start: usize, end: usize) {
    let width = packed_float(element).map_or(8, |(width, _)| width);
    let mut tagged = Vec::with_capacity((end - start) / width * (width + 1));
    for value in out[start..end].chunks_exact(width) {
        tagged.push(element);
        tagged.extend_from_slice(value);
    }
    out.splice(start..end, tagged);
    out[header] = tag::SEQ;
}

/// A sequence, tuple, map or struct being written.
pub(crate) struct Compound<'a, 'b> {
    enc: &'a mut Encoder<'b>,
    /// Where the tag is, to pack a sequence of bytes afterwards.
    header: usize,
    declared: Option<usize>,
    written: usize,
    all_u8: bool,
    floats: Floats,
}

/// Whether a sequence's elements are floats packed as they are written:
/// at the first, the sequence's tag becomes [`tag::SEQ_F64`] or
/// [`tag::SEQ_F32`] and the element's tag is dropped; the next ones are
/// written without one ([`Encoder::raw`]). Read back without a tag check
/// per number: half the time to decode a `Vec<f64>` in a struct.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Floats {
    /// No element yet.
    Unknown,
    /// Every element so far was a float of this tag, packed from `start`.
    Packed {
        tag: u8,
        start: usize,
    },
    No,
}

/// The raw width of a float tag packed in a sequence, and the sequence's tag.
fn packed_float(element: u8) -> Option<(usize, u8)> {
    match element {
        tag::F64 => Some((8, tag::SEQ_F64)),
        tag::F32 => Some((4, tag::SEQ_F32)),
        _ => None,
    }
}

impl Compound<'_, '_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        // A long sequence grows the buffer one small value at a time: the
        // growth is what may not fit (see `SCALAR_ROOM`).
        reserve(self.enc.out, SCALAR_ROOM)?;
        let at = self.enc.out.len();
        let raw_before = self.enc.raw_written;
        if let Floats::Packed { tag, .. } = self.floats {
            self.enc.raw = tag;
        }
        let written = value.serialize(&mut *self.enc);
        self.enc.raw = 0;
        written?;
        self.all_u8 &= self.enc.out.len() == at + 2 && self.enc.out[at] == tag::U8;
        if self.floats != Floats::No {
            self.pack_float(at, self.enc.raw_written != raw_before);
        }
        self.written += 1;
        Ok(())
    }

    /// Keeps the sequence packed after its element at `at`: the first
    /// element, a tagged float, loses its tag and the sequence gets its
    /// packed tag; a later one was written raw (`raw`) or, being something
    /// else, unpacks the ones before it (see [`Floats`]).
    #[inline]
    fn pack_float(&mut self, at: usize, raw: bool) {
        let out = &mut *self.enc.out;
        match self.floats {
            Floats::Packed { .. } if raw => {}
            Floats::Packed { tag, start } => {
                unpack(out, self.header, tag, start, at);
                self.floats = Floats::No;
            }
            Floats::Unknown => {
                let element = out[at];
                match packed_float(element) {
                    Some((width, packed))
                        if out.len() == at + 1 + width && out[self.header] == tag::SEQ =>
                    {
                        out[self.header] = packed;
                        out.remove(at);
                        self.floats = Floats::Packed {
                            tag: element,
                            start: at,
                        };
                    }
                    _ => self.floats = Floats::No,
                }
            }
            Floats::No => {}
        }
    }

    fn field<T: Serialize + ?Sized>(&mut self, name: &str, value: &T) -> Result {
        reserve(self.enc.out, name.len().saturating_add(SCALAR_ROOM))?;
        self.enc.name(name);
        value.serialize(&mut *self.enc)?;
        self.written += 1;
        Ok(())
    }

    /// Checks the count, packs a sequence of `u8` into raw bytes (each was
    /// written as tag + byte), and closes an open-ended one.
    fn end(self, what: &str) -> Result {
        self.enc.depth -= 1;
        match self.declared {
            Some(declared) if declared != self.written => Err(CodecError::new(format!(
                "a Serialize impl announced {declared} {what} and wrote {}",
                self.written
            ))),
            Some(_) => {
                let out = &mut *self.enc.out;
                if self.all_u8 && self.written > 0 && out[self.header] == tag::SEQ {
                    out[self.header] = tag::SEQ_U8;
                    let start = out.len() - 2 * self.written;
                    for i in 0..self.written {
                        out[start + i] = out[start + 2 * i + 1];
                    }
                    out.truncate(start + self.written);
                }
                Ok(())
            }
            None => {
                self.enc.tag(tag::END);
                Ok(())
            }
        }
    }
}

impl<'a, 'b> ser::Serializer for &'a mut Encoder<'b> {
    type Ok = ();
    type Error = CodecError;
    type SerializeSeq = Compound<'a, 'b>;
    type SerializeTuple = Compound<'a, 'b>;
    type SerializeTupleStruct = Compound<'a, 'b>;
    type SerializeTupleVariant = Compound<'a, 'b>;
    type SerializeMap = Compound<'a, 'b>;
    type SerializeStruct = Compound<'a, 'b>;
    type SerializeStructVariant = Compound<'a, 'b>;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn serialize_bool(self, v: bool) -> Result {
        self.tag(if v { tag::TRUE } else { tag::FALSE });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result {
        self.serialize_i64(i64::from(v))
    }
    #[inline]
    fn serialize_i64(self, v: i64) -> Result {
        self.tag(tag::I64);
        push_varint(self.out, zigzag(v));
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result {
        self.tag(tag::I128);
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    #[inline]
    fn serialize_u8(self, v: u8) -> Result {
        self.raw = 0;
        self.out.extend_from_slice(&[tag::U8, v]);
        Ok(())
    }
    fn serialize_u16(self, v: u16) -> Result {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result {
        self.serialize_u64(u64::from(v))
    }
    #[inline]
    fn serialize_u64(self, v: u64) -> Result {
        self.tag(tag::U64);
        push_varint(self.out, v);
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Result {
        self.tag(tag::U128);
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    #[inline]
    fn serialize_f32(self, v: f32) -> Result {
        let bytes = v.to_bits().to_le_bytes();
        if !self.raw_float(tag::F32, &bytes) {
            self.tag(tag::F32);
            self.out.extend_from_slice(&bytes);
        }
        Ok(())
    }
    #[inline]
    fn serialize_f64(self, v: f64) -> Result {
        let bytes = v.to_bits().to_le_bytes();
        if !self.raw_float(tag::F64, &bytes) {
            self.tag(tag::F64);
            self.out.extend_from_slice(&bytes);
        }
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result {
        self.tag(tag::CHAR);
        push_varint(self.out, u64::from(v));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result {
        self.bytes(tag::STR, v.as_bytes())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result {
        self.bytes(tag::BYTES, v)
    }
    fn serialize_none(self) -> Result {
        self.tag(tag::NONE);
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result {
        self.enter()?;
        self.tag(tag::SOME);
        value.serialize(&mut *self)?;
        self.depth -= 1;
        Ok(())
    }
    fn serialize_unit(self) -> Result {
        self.tag(tag::UNIT);
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result {
        self.serialize_unit()
    }
    fn serialize_unit_variant(self, _: &'static str, index: u32, variant: &'static str) -> Result {
        self.variant(tag::UNIT_VARIANT, index, variant)?;
        self.depth -= 1;
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Result {
        // Transparent, as in JSON: a newtype's Deserialize accepts its content.
        self.enter()?;
        value.serialize(&mut *self)?;
        self.depth -= 1;
        Ok(())
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result {
        self.variant(tag::NEWTYPE_VARIANT, index, variant)?;
        value.serialize(&mut *self)?;
        self.depth -= 1;
        Ok(())
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Compound<'a, 'b>> {
        let tag = if len.is_some() {
            tag::SEQ
        } else {
            tag::SEQ_OPEN
        };
        self.compound(tag, len)
    }
    fn serialize_tuple(self, len: usize) -> Result<Compound<'a, 'b>> {
        self.compound(tag::SEQ, Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Compound<'a, 'b>> {
        self.compound(tag::SEQ, Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Compound<'a, 'b>> {
        self.variant_compound(tag::TUPLE_VARIANT, index, variant, len)
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Compound<'a, 'b>> {
        let tag = if len.is_some() {
            tag::MAP
        } else {
            tag::MAP_OPEN
        };
        self.compound(tag, len)
    }
    fn serialize_struct(self, _: &'static str, len: usize) -> Result<Compound<'a, 'b>> {
        self.compound(tag::STRUCT, Some(len))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Compound<'a, 'b>> {
        self.variant_compound(tag::STRUCT_VARIANT, index, variant, len)
    }
}

/// The four sequence-like compounds: each element is a value, counted.
macro_rules! elements {
    ($($trait:ident::$method:ident, $what:literal;)*) => {$(
        impl ser::$trait for Compound<'_, '_> {
            type Ok = ();
            type Error = CodecError;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
                self.element(value)
            }
            fn end(self) -> Result {
                Compound::end(self, $what)
            }
        }
    )*};
}

elements! {
    SerializeSeq::serialize_element, "elements";
    SerializeTuple::serialize_element, "elements";
    SerializeTupleStruct::serialize_field, "fields";
    SerializeTupleVariant::serialize_field, "fields";
}

impl ser::SerializeMap for Compound<'_, '_> {
    type Ok = ();
    type Error = CodecError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result {
        reserve(self.enc.out, SCALAR_ROOM)?;
        key.serialize(&mut *self.enc)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        reserve(self.enc.out, SCALAR_ROOM)?;
        value.serialize(&mut *self.enc)?;
        self.written += 1;
        Ok(())
    }
    fn end(self) -> Result {
        Compound::end(self, "entries")
    }
}

impl ser::SerializeStruct for Compound<'_, '_> {
    type Ok = ();
    type Error = CodecError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result {
        self.field(key, value)
    }
    fn end(self) -> Result {
        Compound::end(self, "fields")
    }
}

impl ser::SerializeStructVariant for Compound<'_, '_> {
    type Ok = ();
    type Error = CodecError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result {
        self.field(key, value)
    }
    fn end(self) -> Result {
        Compound::end(self, "fields")
    }
}
