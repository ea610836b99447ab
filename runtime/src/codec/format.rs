//! The byte layout shared by the encoder ([`super::ser`]) and the decoder
//! ([`super::de`]): one tag byte per value, then its payload.
//!
//! The format is self-describing: every value says what it is, so a
//! `Deserialize` impl that asks "what comes next?" (`deserialize_any`:
//! untagged and internally tagged enums, `#[serde(flatten)]`,
//! `serde_json::Value`) gets a true answer, and a struct carries its field
//! names, so a field left out by `skip_serializing_if` is missing rather
//! than replaced by the next field's bytes.
//!
//! Unlike MessagePack or CBOR, `Some(x)` has a tag of its own: there,
//! `Some(None)` and `Some(())` are written as `nil` and read back as `None`
//! (checked with rmp-serde 1.3 and ciborium 0.2), a different value.

/// `()`, unit structs.
pub(crate) const UNIT: u8 = 0x00;
pub(crate) const NONE: u8 = 0x01;
/// Followed by the value.
pub(crate) const SOME: u8 = 0x02;
pub(crate) const FALSE: u8 = 0x03;
pub(crate) const TRUE: u8 = 0x04;
/// Unsigned integer up to 64 bits: a varint.
pub(crate) const U64: u8 = 0x05;
/// Signed integer up to 64 bits: a zigzag varint.
pub(crate) const I64: u8 = 0x06;
/// One raw byte (a `u8`; sequences of them are packed, see [`SEQ_U8`]).
pub(crate) const U8: u8 = 0x07;
/// 16 bytes, little-endian.
pub(crate) const U128: u8 = 0x08;
pub(crate) const I128: u8 = 0x09;
/// The IEEE bits, little-endian: NaN payloads and -0.0 survive.
pub(crate) const F32: u8 = 0x0a;
pub(crate) const F64: u8 = 0x0b;
/// A varint scalar value.
pub(crate) const CHAR: u8 = 0x0c;
/// Varint length, then UTF-8 bytes.
pub(crate) const STR: u8 = 0x0d;
/// Varint length, then the bytes.
pub(crate) const BYTES: u8 = 0x0e;
/// Varint count, then the elements (sequences, tuples, tuple structs).
pub(crate) const SEQ: u8 = 0x0f;
/// Elements until [`END`] (a sequence whose length was not known up front).
pub(crate) const SEQ_OPEN: u8 = 0x10;
/// Varint count, then that many raw bytes: a sequence of `u8`.
pub(crate) const SEQ_U8: u8 = 0x11;
/// Varint count, then key, value, key, value...
pub(crate) const MAP: u8 = 0x12;
/// Keys and values until [`END`].
pub(crate) const MAP_OPEN: u8 = 0x13;
/// Varint count, then per field its name (varint length and UTF-8, no tag)
/// and its value.
pub(crate) const STRUCT: u8 = 0x14;
/// Each variant: varint index, name (varint length and UTF-8), payload.
pub(crate) const UNIT_VARIANT: u8 = 0x15;
/// Payload: one value.
pub(crate) const NEWTYPE_VARIANT: u8 = 0x16;
/// Payload: varint count, then the elements.
pub(crate) const TUPLE_VARIANT: u8 = 0x17;
/// Payload: as [`STRUCT`] without its tag.
pub(crate) const STRUCT_VARIANT: u8 = 0x18;
/// Ends [`SEQ_OPEN`] and [`MAP_OPEN`].
pub(crate) const END: u8 = 0x19;
/// Varint count, then that many raw `f64`s (8 bytes each, little-endian):
/// a sequence of `f64`, packed as [`SEQ_U8`] packs bytes.
pub(crate) const SEQ_F64: u8 = 0x1a;
/// Varint count, then that many raw `f32`s (4 bytes each).
pub(crate) const SEQ_F32: u8 = 0x1b;

/// How deep values may nest (options, sequences, maps, structs, enum
/// payloads). Decoding recurses once per level on the decoding thread's
/// stack; a job's result is decoded on the pool's threads and `Process`
/// results on the caller's, whose stacks may be as small as 2 MiB. At this
/// depth, decoding needs well under 1 MiB of stack even in a debug build
/// (measured by `codec::tests::deepest_value_decodes_on_a_small_stack`).
pub(crate) const MAX_DEPTH: usize = 512;

/// Words for a tag in error messages.
pub(crate) fn describe(tag: u8) -> &'static str {
    match tag {
        UNIT => "a unit value",
        NONE => "None",
        SOME => "Some",
        FALSE | TRUE => "a bool",
        U64 | U8 | U128 => "an unsigned integer",
        I64 | I128 => "a signed integer",
        F32 | F64 => "a float",
        CHAR => "a char",
        STR => "a string",
        BYTES => "bytes",
        SEQ | SEQ_OPEN | SEQ_U8 | SEQ_F64 | SEQ_F32 => "a sequence",
        MAP | MAP_OPEN => "a map",
        STRUCT => "a struct",
        UNIT_VARIANT | NEWTYPE_VARIANT | TUPLE_VARIANT | STRUCT_VARIANT => "an enum variant",
        END => "the end of a sequence",
        _ => "an unknown tag",
    }
}

/// Appends `value` as a varint: unsigned LEB128, seven bits a byte, least
/// significant first, the high bit set on every byte but the last. It is
/// always the shortest encoding (1 to [`MAX_VARINT`] bytes), which
/// [`read_varint`] relies on.
#[inline]
pub(crate) fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// How many bytes [`push_varint`] writes for `value`.
#[inline]
pub(crate) fn varint_len(value: u64) -> usize {
    (u64::BITS - value.leading_zeros()).div_ceil(7).max(1) as usize
}

/// The longest varint: 64 bits at 7 a byte.
pub(crate) const MAX_VARINT: usize = 10;

/// Why [`read_varint`] found no number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VarintError {
    /// The input ends before the varint's last byte (its high bit clear).
    CutShort,
    /// The bytes are not what [`push_varint`] writes for any `u64`: see
    /// [`read_varint`].
    Malformed,
}

/// Reads the varint at the start of `input`: its value and its length in
/// bytes. The one varint reader of the codec (tagged values, plain items,
/// chunk headers, replies), so every decoder agrees on what a varint is.
///
/// Only what [`push_varint`] writes is accepted, so that each `u64` has
/// exactly one encoding and a corrupted varint is an error rather than
/// another spelling of some number:
///
/// - the 10th byte may only carry bit 63 (be 0 or 1): anything more would
///   be bits beyond a `u64`, silently dropped by a lenient reader, and it
///   must end the varint (so an 11-byte run is refused too);
/// - the last byte of a varint longer than one byte is never 0: that would
///   be a non-minimal encoding (`0x80 0x00` for 0), which the writer never
///   produces.
///
/// A run of bytes with the high bit set that reaches the end of `input` is
/// [`VarintError::CutShort`] (it may be a prefix of a valid varint), unless
/// it is already too long to be one.
#[inline]
pub(crate) fn read_varint(input: &[u8]) -> Result<(u64, usize), VarintError> {
    // The common case: one byte, below 128.
    if let Some(&byte) = input.first()
        && byte < 0x80
    {
        return Ok((u64::from(byte), 1));
    }
    let mut value = 0u64;
    for (index, &byte) in input.iter().enumerate().take(MAX_VARINT) {
        let bits = u64::from(byte & 0x7f);
        if index == MAX_VARINT - 1 && byte > 1 {
            return Err(VarintError::Malformed);
        }
        value |= bits << (7 * index);
        if byte < 0x80 {
            if byte == 0 && index > 0 {
                return Err(VarintError::Malformed);
            }
            return Ok((value, index + 1));
        }
    }
    // Fewer than 10 bytes, all with the high bit set (a 10th byte either
    // ends the varint or fails above).
    Err(VarintError::CutShort)
}

#[inline]
pub(crate) fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

#[inline]
pub(crate) fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}
