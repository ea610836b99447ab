//! Chunks of items: [`ChunkWriter`] encodes a task's items back to back
//! (tagged, or plain items in bulk after their shape), [`ChunkReader`]
//! reads them.

use std::any::{Any, TypeId};
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::CodecError;
use super::format::MAX_VARINT;
use super::plain::{Kind, PlainDecoder, PlainEncoder, PlainError};
use super::problem::{Cause, Problem};
use super::{attach, de, error, format, plain, ser};
use crate::sys::{Word, word_bytes};

/// First byte of a chunk: items in the tagged format follow.
pub(super) const TAGGED: u8 = 0;
/// First byte of a chunk: a shape (varint length, bytes), then plain items.
pub(super) const SHAPED: u8 = 1;

/// The shape of a type written as raw little-endian bytes without going
/// through serde (the same bytes serde's calls would produce: serde writes
/// a `usize` as a `u64` and an `isize` as an `i64` on every target, so the
/// shape is the same on 32-bit and 64-bit machines).
pub(super) fn raw_kind<T: 'static>() -> Option<Kind> {
    let id = TypeId::of::<T>();
    [
        // Zero bytes per item: a map over `()` (a job without arguments,
        // or one returning nothing) costs a count, not a serde call each.
        (TypeId::of::<()>(), Kind::Unit),
        (TypeId::of::<u64>(), Kind::U64),
        (TypeId::of::<usize>(), Kind::U64),
        (TypeId::of::<i64>(), Kind::I64),
        (TypeId::of::<isize>(), Kind::I64),
        (TypeId::of::<u32>(), Kind::U32),
        (TypeId::of::<i32>(), Kind::I32),
        (TypeId::of::<f64>(), Kind::F64),
        (TypeId::of::<f32>(), Kind::F32),
    ]
    .into_iter()
    .find_map(|(other, kind)| (other == id).then_some(kind))
}

/// Appends `item` as raw bytes if its type has a [`raw_kind`], converted to
/// that kind's width (a `usize` is 8 bytes on the wire, also where it is 4
/// in memory).
///
/// `TypeId::of::<T>()` is known at compile time, and so is the vtable of
/// `&T as &dyn Any`: after inlining each check folds to a constant and the
/// item costs one store.
#[inline(always)]
pub(super) fn put_raw<T: 'static>(item: &T, out: &mut Vec<u8>) -> bool {
    let any = item as &dyn Any;
    if any.is::<()>() {
        return true;
    }
    macro_rules! try_types {
        ($($ty:ty => $conv:expr;)*) => {$(
            if let Some(&v) = any.downcast_ref::<$ty>() {
                let conv: fn($ty) -> _ = $conv;
                out.extend_from_slice(&conv(v).to_le_bytes());
                return true;
            }
        )*};
    }
    try_types! {
        u64 => |v| v; usize => |v| v as u64; i64 => |v| v; isize => |v| v as i64;
        u32 => |v| v; i32 => |v| v; f64 => f64::to_bits; f32 => f32::to_bits;
    }
    // A vector of numbers: its count, then its memory, copied whole. Its
    // size is the user's: room that cannot be had leaves it to the serde
    // path, which reports it.
    if let Some((count, bytes)) = vector_bytes(any)
        && out
            .try_reserve(bytes.len().saturating_add(MAX_VARINT))
            .is_ok()
    {
        format::push_varint(out, count as u64);
        out.extend_from_slice(bytes);
        return true;
    }
    false
}

/// The element kind of a vector of numbers that travels as a
/// [`Kind::Seq`] of raw numbers (`Vec<f64>`, `Vec<u32>`...: the vectors of
/// the types with a [`raw_kind`], `()` aside): the shape of such items is
/// known from their type, even before a first element says it. With it,
/// whether the vector's memory is those bytes ([`sent_as_is`]).
pub(super) fn vector_kind<T: 'static>() -> Option<(Kind, bool)> {
    let id = TypeId::of::<T>();
    macro_rules! try_types {
        ($($ty:ty)*) => {$(
            if id == TypeId::of::<Vec<$ty>>() {
                return Some((raw_kind::<$ty>()?, sent_as_is::<$ty>()));
            }
        )*};
    }
    try_types!(u64 usize i64 isize u32 i32 f64 f32);
    None
}

/// Whether a vector of `W` is, in memory, the bytes it travels as: on a
/// little-endian machine, where `W` is as wide as its wire kind (a `usize`
/// is 8 bytes on the wire, 4 in memory on 32-bit machines).
fn sent_as_is<W: 'static>() -> bool {
    cfg!(target_endian = "little") && raw_kind::<W>().is_some_and(|k| k.width() == size_of::<W>())
}

/// A vector of numbers as it travels, when its memory is those bytes (see
/// [`sent_as_is`]): its length, then its elements' bytes, borrowed.
#[inline(always)]
fn vector_bytes(any: &dyn Any) -> Option<(usize, &[u8])> {
    fn words<W: Word>(vector: &[W]) -> Option<(usize, &[u8])> {
        sent_as_is::<W>().then(|| (vector.len(), word_bytes(vector)))
    }
    macro_rules! try_types {
        ($($ty:ty)*) => {$(
            if let Some(vector) = any.downcast_ref::<Vec<$ty>>() {
                return words(vector);
            }
        )*};
    }
    try_types!(u64 usize i64 isize u32 i32 f64 f32);
    None
}

/// The width of a value of type `T` written raw (a plain number, or `()`
/// of no bytes; see [`raw_kind`]), as [`direct_value`] gives it.
pub(crate) fn raw_width<T: 'static>() -> Option<usize> {
    raw_kind::<T>().map(Kind::width)
}

/// The header of a chunk of items of one type, as [`ChunkWriter`] writes
/// it before the first item: up to four bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    bytes: [u8; 4],
    len: usize,
}

impl std::ops::Deref for Header {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The header of a chunk whose items of type `T` a worker can write
/// straight into shared memory ([`direct_value`]): plain numbers (see
/// [`raw_kind`]), byte vectors, strings, and vectors of numbers whose
/// memory is what they travel as ([`sent_as_is`]). The same bytes
/// [`ChunkWriter`] writes before its first such item.
pub(crate) fn direct_header<T: 'static>() -> Option<Header> {
    let id = TypeId::of::<T>();
    let kind = if id == TypeId::of::<Vec<u8>>() {
        Kind::Bytes
    } else if id == TypeId::of::<String>() {
        Kind::Str
    } else if let Some(kind) = raw_kind::<T>() {
        kind
    } else {
        // Only where `direct_value` can give the vector's bytes as they are.
        let (element, true) = vector_kind::<T>()? else {
            return None;
        };
        // The shape's length (2, one varint byte), then the shape.
        return Some(Header {
            bytes: [SHAPED, 2, Kind::Seq as u8, element as u8],
            len: 4,
        });
    };
    // The shape is one byte, so its varint length is that byte's count.
    Some(Header {
        bytes: [SHAPED, 1, kind as u8, 0],
        len: 3,
    })
}

/// A chunk of the single item `item`, when that item is a byte string (a
/// `Vec<u8>` or a `String`): the chunk's first bytes (its header and the
/// value's length), then the value's own bytes, borrowed. Together they
/// are the bytes [`ChunkWriter`] writes for a chunk of that one item, so
/// whoever sends the chunk can copy the value once, straight from its
/// storage to where it goes. `None` for any other item.
pub(crate) fn borrowed_chunk<T: 'static>(item: &T) -> Option<(Vec<u8>, &[u8])> {
    let header = direct_header::<T>()?;
    match direct_value(item)? {
        Direct::Bytes { length, len, bytes } => {
            let mut head = Vec::with_capacity(header.len() + len);
            head.extend_from_slice(&header);
            head.extend_from_slice(&length[..len]);
            Some((head, bytes))
        }
        Direct::Word(..) => None,
    }
}

/// [`borrowed_chunk`] for an item given up by its owner: the chunk's first
/// bytes, then the value's own buffer, moved rather than copied. Only for
/// a byte string of at least `min` bytes; gives the value back otherwise.
pub(crate) fn owned_chunk<T: 'static>(value: T, min: usize) -> Result<(Vec<u8>, Vec<u8>), T> {
    let head = match borrowed_chunk(&value) {
        Some((head, bytes)) if bytes.len() >= min => head,
        _ => return Err(value),
    };
    let mut slot = Some(value);
    let any = &mut slot as &mut dyn Any;
    let bytes = if let Some(bytes) = any.downcast_mut::<Option<Vec<u8>>>() {
        bytes.take()
    } else if let Some(text) = any.downcast_mut::<Option<String>>() {
        text.take().map(String::into_bytes)
    } else {
        None
    };
    match (bytes, slot) {
        (Some(bytes), _) => Ok((head, bytes)),
        (None, Some(value)) => Err(value),
        // `slot` is emptied only where `bytes` takes its value.
        (None, None) => unreachable!("a byte string taken out and lost"),
    }
}

/// An item's bytes in a chunk that [`direct_header`] began.
pub(crate) enum Direct<'a> {
    /// A plain number: its raw bytes, in the first `.1` bytes.
    Word([u8; 8], usize),
    /// A byte string, string or vector of numbers: its length (a varint,
    /// in the first `len` bytes of `length`: bytes or elements), then
    /// `bytes`, the value's own storage.
    Bytes {
        length: [u8; 10],
        len: usize,
        bytes: &'a [u8],
    },
}

/// `item` as [`Direct`] bytes, as [`ChunkWriter`] writes it after a
/// [`direct_header`]; `None` if `T` has none.
#[inline(always)]
pub(crate) fn direct_value<T: 'static>(item: &T) -> Option<Direct<'_>> {
    let any = item as &dyn Any;
    // A unit is a raw kind of no bytes (see `raw_kind`).
    if any.is::<()>() {
        return Some(Direct::Word([0; 8], 0));
    }
    macro_rules! try_types {
        ($($ty:ty => $conv:expr;)*) => {$(
            if let Some(&v) = any.downcast_ref::<$ty>() {
                let conv: fn($ty) -> _ = $conv;
                let bytes = conv(v).to_le_bytes();
                let mut word = [0u8; 8];
                word[..bytes.len()].copy_from_slice(&bytes);
                return Some(Direct::Word(word, bytes.len()));
            }
        )*};
    }
    try_types! {
        u64 => |v| v; usize => |v| v as u64; i64 => |v| v; isize => |v| v as i64;
        u32 => |v| v; i32 => |v| v; f64 => f64::to_bits; f32 => f32::to_bits;
    }
    let (count, bytes) = if let Some(bytes) = any.downcast_ref::<Vec<u8>>() {
        (bytes.len(), bytes.as_slice())
    } else if let Some(text) = any.downcast_ref::<String>() {
        (text.len(), text.as_bytes())
    } else {
        vector_bytes(any)?
    };
    let mut prefix = Vec::with_capacity(10);
    format::push_varint(&mut prefix, count as u64);
    let mut length = [0u8; 10];
    length[..prefix.len()].copy_from_slice(&prefix);
    Some(Direct::Bytes {
        length,
        len: prefix.len(),
        bytes,
    })
}

/// Reads `count` raw items of type `T` straight into `out`, if `T` has a
/// [`raw_kind`] whose width is `T`'s own; `None` otherwise (the caller
/// reads them through serde, which rejects a `usize` that does not fit
/// where `usize` is 4 bytes instead of cutting it).
// A `Vec`, not a slice: it is downcast to the concrete `Vec<u64>` (etc.) it is.
#[allow(clippy::ptr_arg)]
pub(super) fn take_raw<T: 'static>(
    bytes: &[u8],
    count: usize,
    out: &mut Vec<T>,
) -> Option<Result<usize, Problem>> {
    let any = out as &mut dyn Any;
    if let Some(out) = any.downcast_mut::<Vec<()>>() {
        // `count` is the caller's own (its call's items): a vector of
        // zero-sized items takes no memory whatever its length.
        out.resize(out.len().saturating_add(count), ());
        return Some(Ok(0));
    }
    macro_rules! try_types {
        ($($ty:ty: $width:literal => $conv:expr;)*) => {$(
            if std::mem::size_of::<$ty>() == $width
                && let Some(out) = any.downcast_mut::<Vec<$ty>>()
            {
                let len = count * $width;
                let Some(data) = bytes.get(..len) else {
                    return Some(Err(Problem::corrupt("the data ends in the middle of a chunk")));
                };
                let conv: fn([u8; $width]) -> $ty = $conv;
                out.extend(data.chunks_exact($width).map(|c| {
                    let mut word = [0u8; $width];
                    word.copy_from_slice(c);
                    conv(word)
                }));
                return Some(Ok(len));
            }
        )*};
    }
    // `as` on `usize`/`isize` only where they are 8 bytes (checked above),
    // so it never cuts a value.
    try_types! {
        u64: 8 => u64::from_le_bytes;
        usize: 8 => |w| u64::from_le_bytes(w) as usize;
        i64: 8 => i64::from_le_bytes;
        isize: 8 => |w| i64::from_le_bytes(w) as isize;
        u32: 4 => u32::from_le_bytes;
        i32: 4 => i32::from_le_bytes;
        f64: 8 => |w| f64::from_bits(u64::from_le_bytes(w));
        f32: 4 => |w| f32::from_bits(u32::from_le_bytes(w));
    }
    None
}

#[derive(Debug, Default)]
pub(super) enum Mode {
    /// Nothing written yet: the first item decides.
    #[default]
    Empty,
    Shaped {
        shape: Vec<u8>,
        items_start: usize,
    },
    Tagged,
}

/// Writes the items of one chunk.
///
/// Not generic over the item type: each push names its own, so the pool
/// holds one writer per chunk whatever the job, and a job's typed encoder
/// ([`crate::job::ItemEncoder`]) writes into it. `pub` (in this private
/// module) because that encoder's type names it.
#[derive(Debug, Default)]
pub struct ChunkWriter {
    out: Vec<u8>,
    mode: Mode,
    count: usize,
    /// Where the last item's bytes begin, for [`ChunkWriter::undo_last`].
    last_start: usize,
    /// Where the item being written begins, in the format the chunk is in
    /// now: what a failed item is cut back to (after the chunk went tagged
    /// part way through it, its start in the tagged bytes).
    item_start: usize,
    /// Counts the times bytes already written were replaced (the chunk
    /// went tagged, or lost its first item), for readers of a prefix.
    generation: u64,
    /// Descriptors of the handles among the items ([`attach`]).
    pub(super) attached: attach::Held,
}

impl ChunkWriter {
    /// Items written so far.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Bytes written so far.
    pub(crate) fn byte_len(&self) -> usize {
        self.out.len()
    }

    /// The bytes written so far, and how many times earlier ones were
    /// replaced: a copy of a prefix is still a prefix while the second
    /// number stays the same.
    pub(crate) fn written(&self) -> (&[u8], u64) {
        (&self.out, self.generation)
    }

    /// Appends `item` as raw bytes if its type is written raw (a plain
    /// number, see [`raw_kind`]) and the chunk has its shape from the
    /// first item; `false` otherwise, with nothing written. Asks nothing of
    /// `T` but `'static`, so the pool tries it before calling a job's
    /// encoder.
    // Always inlined into the caller's loop: for a raw item it is a store
    // and a count (measured: a call per item here was 30 % of a worker's
    // CPU in a map of trivial items).
    #[inline(always)]
    pub(crate) fn push_raw<T: 'static>(&mut self, item: &T) -> bool {
        let start = self.out.len();
        if let Mode::Shaped { .. } = self.mode
            && put_raw(item, &mut self.out)
        {
            self.last_start = start;
            self.count += 1;
            return true;
        }
        false
    }

    /// Appends items taken from `items` (each borrowed as a `T` by
    /// `borrow`) while the chunk holds fewer than `max_items` items and
    /// `max_bytes` bytes: how many. Only for plain numbers (see
    /// [`raw_kind`]) once the chunk has its shape from a first item;
    /// otherwise it takes none, so every item it takes is written.
    ///
    /// One tight loop over the items, with the buffer and counts in
    /// registers: pushed one at a time, with the writer's fields kept in
    /// memory across the pool's loop, a trivial item cost the caller 5 ns
    /// (perf of the map of 10⁶ `u64`: 15 % of all samples).
    #[inline(always)]
    pub(crate) fn extend_raw<X, T: 'static>(
        &mut self,
        items: &mut impl Iterator<Item = X>,
        borrow: impl Fn(&X) -> &T,
        max_items: usize,
        max_bytes: usize,
    ) -> usize {
        let Some(kind) = raw_kind::<T>() else {
            return 0;
        };
        if !matches!(self.mode, Mode::Shaped { .. }) {
            return 0;
        }
        let width = kind.width();
        let mut room = max_items.saturating_sub(self.count);
        if width > 0 {
            room = room.min(max_bytes.saturating_sub(self.out.len()).div_ceil(width));
        }
        // Room for the items the input says it has (a chunk size may be far
        // larger than the input); more grow the buffer as usual.
        let expected = room.min(items.size_hint().0);
        if room == 0
            || self
                .out
                .try_reserve(expected.saturating_mul(width))
                .is_err()
        {
            return 0;
        }
        let mut out = std::mem::take(&mut self.out);
        let mut taken = 0;
        while taken < room {
            let Some(item) = items.next() else {
                break;
            };
            put_raw(borrow(&item), &mut out);
            taken += 1;
        }
        if taken > 0 {
            self.last_start = out.len() - width;
            self.count += taken;
        }
        self.out = out;
        taken
    }

    /// Removes the last item written, if the chunk holds more than one
    /// (the first fixes the chunk's header). The chunk stays in the
    /// format it is in; the items before are untouched.
    pub(crate) fn undo_last(&mut self) {
        if self.count > 1 {
            self.attached.undo_last();
            self.out.truncate(self.last_start);
            self.count -= 1;
        }
    }

    /// A writer whose items may hold no handle (an exchange handle's
    /// `Serialize` fails in it): for values nothing sends descriptors with.
    pub(super) fn refusing_handles() -> ChunkWriter {
        ChunkWriter {
            attached: attach::Held::refusing(),
            ..ChunkWriter::default()
        }
    }

    /// The descriptors of the handles among the items, to send beside the
    /// chunk (see [`attach`]); the chunk keeps none.
    pub(crate) fn take_attached(&mut self) -> attach::Attached {
        std::mem::take(&mut self.attached.all)
    }

    /// The encoded chunk.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        if let Mode::Empty = self.mode {
            self.out.push(TAGGED);
        }
        self.out
    }

    /// Appends one item; on error the chunk is as it was.
    // Always inlined: a raw item is `push_raw`; everything else is out of
    // line in `push_through_serde`.
    #[inline(always)]
    pub(crate) fn push<T: Serialize + 'static>(&mut self, item: &T) -> Result<(), Problem> {
        if self.push_raw(item) {
            return Ok(());
        }
        self.push_through_serde(item)
    }

    #[inline(never)]
    pub(super) fn push_through_serde<T: Serialize + 'static>(
        &mut self,
        item: &T,
    ) -> Result<(), Problem> {
        self.item_start = self.out.len();
        let mut attached = std::mem::take(&mut self.attached.all);
        let kept = attached.len();
        let refuse = self.attached.refuse;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let push = || {
                // A byte vector is a byte string, not a sequence of numbers.
                match (item as &dyn Any).downcast_ref::<Vec<u8>>() {
                    Some(bytes) => self.push_value::<T, _>(serde_bytes::Bytes::new(bytes)),
                    None => self.push_value::<T, _>(item),
                }
            };
            if refuse {
                attach::refusing(push)
            } else {
                attach::collecting(&mut attached, push)
            }
        }));
        if outcome.as_ref().map_or(true, Result::is_err) {
            attach::truncate(&mut attached, kept);
        }
        self.attached.all = attached;
        self.attached.before_last = kept;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(payload) => Err(Problem::panic::<T>("Serialize", &*payload)),
        };
        match outcome {
            Ok(()) => {
                self.count += 1;
                Ok(())
            }
            Err(problem) => {
                if self.count == 0 {
                    self.out.clear();
                    self.mode = Mode::Empty;
                    self.generation += 1;
                } else {
                    self.out.truncate(self.item_start);
                }
                Err(problem)
            }
        }
    }

    /// Appends `value`, an item of type `T` (or its byte string).
    pub(super) fn push_value<T: 'static, S: Serialize + ?Sized>(
        &mut self,
        value: &S,
    ) -> Result<(), Problem> {
        loop {
            match &mut self.mode {
                Mode::Empty => {
                    let mut shape = Vec::new();
                    let probe = if let Some(kind) = raw_kind::<T>() {
                        shape.push(kind as u8);
                        Ok(())
                    } else if let Some((element, _)) = vector_kind::<T>() {
                        // Known from the type, even if the first vector is empty.
                        shape.extend_from_slice(&[Kind::Seq as u8, element as u8]);
                        Ok(())
                    } else {
                        value.serialize(&mut PlainEncoder {
                            out: &mut Vec::new(),
                            shape: &mut shape,
                            at: None,
                            dry: true,
                        })
                    };
                    match probe {
                        Ok(()) => {
                            self.out.push(SHAPED);
                            format::push_varint(&mut self.out, shape.len() as u64);
                            self.out.extend_from_slice(&shape);
                            self.mode = Mode::Shaped {
                                shape,
                                items_start: self.out.len(),
                            };
                        }
                        Err(PlainError::NotPlain) => {
                            self.out.push(TAGGED);
                            self.mode = Mode::Tagged;
                        }
                        Err(PlainError::User(error)) => return Err(Problem::encode::<T>(error)),
                    }
                }
                Mode::Shaped { shape, items_start } => {
                    let start = self.out.len();
                    self.item_start = start;
                    let mut encoder = PlainEncoder {
                        out: &mut self.out,
                        shape,
                        at: Some(0),
                        dry: false,
                    };
                    let written = value.serialize(&mut encoder);
                    let complete = encoder.complete();
                    match written {
                        Ok(()) if complete => {
                            self.last_start = start;
                            return Ok(());
                        }
                        Ok(()) | Err(PlainError::NotPlain) => {
                            // This item has another shape: the chunk goes tagged.
                            self.out.truncate(start);
                            let mut tagged = Vec::new();
                            error::reserve(&mut tagged, self.out.len() * 2 + 16)
                                .map_err(Problem::encode::<T>)?;
                            tagged.push(TAGGED);
                            plain::transcode(
                                shape,
                                &self.out[*items_start..],
                                self.count,
                                &mut tagged,
                            )
                            .map_err(|e| Problem::encode::<T>(e))?;
                            self.out = tagged;
                            self.mode = Mode::Tagged;
                            self.generation += 1;
                        }
                        Err(PlainError::User(error)) => return Err(Problem::encode::<T>(error)),
                    }
                }
                Mode::Tagged => {
                    self.last_start = self.out.len();
                    self.item_start = self.out.len();
                    return ser::encode_into(value, &mut self.out).map_err(Problem::encode::<T>);
                }
            }
        }
    }
}

/// Reads the items of a chunk written by [`ChunkWriter`].
pub(crate) struct ChunkReader<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) pos: usize,
    shape: Option<&'a [u8]>,
}

impl<'a> ChunkReader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Result<Self, Problem> {
        let mut reader = ChunkReader {
            bytes,
            pos: 1,
            shape: None,
        };
        match bytes.first() {
            Some(&TAGGED) => {}
            Some(&SHAPED) => {
                let mut de = de::Decoder::new(&bytes[1..]);
                let len = de
                    .varint()
                    .ok()
                    .and_then(|len| usize::try_from(len).ok())
                    .ok_or_else(|| Problem::corrupt("a chunk's shape is cut short"))?;
                let start = bytes.len() - de.rest().len();
                let shape = bytes
                    .get(start..start.saturating_add(len))
                    .ok_or_else(|| Problem::corrupt("a chunk's shape is cut short"))?;
                reader.shape = Some(shape);
                reader.pos = start + len;
            }
            _ => {
                return Err(Problem::corrupt(
                    "a chunk has an unknown header: the data is corrupt",
                ));
            }
        }
        Ok(reader)
    }

    /// The next item.
    pub(crate) fn next<T: DeserializeOwned + 'static>(&mut self) -> Result<T, Problem> {
        if TypeId::of::<T>() == TypeId::of::<Vec<u8>>() {
            let bytes: serde_bytes::ByteBuf = self.next_value::<T, _>()?;
            return cast(bytes.into_vec())
                .ok_or_else(|| Problem::corrupt("internal error: byte fast path"));
        }
        if let Some(vector) = self.next_vector::<T>() {
            return vector;
        }
        self.next_value::<T, T>()
    }

    /// The next item, a vector of numbers read whole rather than number by
    /// number through serde, where the chunk holds `T`'s own shape;
    /// `None`, with nothing read, where it cannot be (the serde path then
    /// reads it, and says what is wrong with it).
    #[inline]
    fn next_vector<T: 'static>(&mut self) -> Option<Result<T, Problem>> {
        let (element, _) = vector_kind::<T>()?;
        if self.shape != Some(&[Kind::Seq as u8, element as u8][..]) {
            return None;
        }
        macro_rules! try_types {
            ($($ty:ty)*) => {$(
                if TypeId::of::<T>() == TypeId::of::<Vec<$ty>>() {
                    let vector = self.read_vector::<$ty>()?;
                    return Some(vector.and_then(|vector| {
                        cast(vector).ok_or_else(|| Problem::corrupt("internal error: vector fast path"))
                    }));
                }
            )*};
        }
        try_types!(u64 usize i64 isize u32 i32 f64 f32);
        None
    }

    fn read_vector<W: 'static>(&mut self) -> Option<Result<Vec<W>, Problem>> {
        let rest = &self.bytes[self.pos.min(self.bytes.len())..];
        let (count, prefix) = format::read_varint(rest).ok()?;
        let count = usize::try_from(count).ok()?;
        let width = raw_kind::<W>()?.width();
        // A count the data cannot hold is left for serde to report.
        if count.checked_mul(width)? > rest.len() - prefix {
            return None;
        }
        let mut vector = Vec::new();
        if vector.try_reserve_exact(count).is_err() {
            return Some(Err(Problem::decode::<Vec<W>>(error::out_of_memory(
                count.saturating_mul(width),
            ))));
        }
        let read = take_raw(&rest[prefix..], count, &mut vector)?;
        Some(read.map(|read| {
            self.pos += prefix + read;
            vector
        }))
    }

    /// The next value, decoded as `V` (reported as a `T`).
    pub(super) fn next_value<T: 'static, V: DeserializeOwned + 'static>(
        &mut self,
    ) -> Result<V, Problem> {
        let rest = &self.bytes[self.pos.min(self.bytes.len())..];
        let decoded = catch_unwind(AssertUnwindSafe(|| match self.shape {
            Some(shape) => {
                let mut de = PlainDecoder {
                    input: rest,
                    pos: 0,
                    shape,
                    at: 0,
                };
                let value = V::deserialize(&mut de)?;
                if de.at != shape.len() {
                    return Err(CodecError::new(
                        "the Deserialize impl read less than the Serialize impl wrote",
                    ));
                }
                Ok((value, de.pos))
            }
            None => {
                let mut de = de::Decoder::new(rest);
                let value = V::deserialize(&mut de)?;
                Ok((value, rest.len() - de.rest().len()))
            }
        }));
        match decoded {
            Ok(Ok((value, used))) => {
                self.pos += used;
                Ok(value)
            }
            Ok(Err(error)) => Err(Problem::decode::<T>(error)),
            Err(payload) => Err(Problem::panic::<T>("Deserialize", &*payload)),
        }
    }

    /// Appends the next `count` items to `out`.
    pub(crate) fn read_into<T: DeserializeOwned + 'static>(
        &mut self,
        count: usize,
        out: &mut Vec<T>,
    ) -> Result<(), Problem> {
        // `count` items of the caller's own call: its result may still be
        // more than memory allows, which is an error, not an abort.
        out.try_reserve(count).map_err(|_| {
            Problem::decode::<T>(error::out_of_memory(
                count.saturating_mul(std::mem::size_of::<T>()),
            ))
        })?;
        if let (Some(shape), Some(kind)) = (self.shape, raw_kind::<T>())
            && shape == [kind as u8]
            && let Some(read) = take_raw(&self.bytes[self.pos.min(self.bytes.len())..], count, out)
        {
            self.pos += read?;
            return Ok(());
        }
        for _ in 0..count {
            out.push(self.next()?);
        }
        Ok(())
    }

    /// Fails if anything is left after the last item.
    pub(crate) fn finish(self) -> Result<(), Problem> {
        match self.bytes.len().saturating_sub(self.pos) {
            0 => Ok(()),
            left => Err(Problem::corrupt(format!(
                "{left} unexpected bytes after the last item"
            ))),
        }
    }
}

/// The chunk of the items of `chunk` after its first `skip`: the same
/// header, then the remaining items' bytes as they are.
pub(crate) fn chunk_rest(chunk: &[u8], skip: usize) -> Result<Vec<u8>, Problem> {
    let mut reader = ChunkReader::new(chunk)?;
    let header = reader.pos;
    for _ in 0..skip {
        reader.next_value::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?;
    }
    let tail = chunk.get(reader.pos..).unwrap_or_default();
    let mut rest = Vec::new();
    error::reserve(&mut rest, header + tail.len()).map_err(|e| Problem {
        message: format!("cannot copy the items left: {e}"),
        cause: Cause::of(&e),
    })?;
    rest.extend_from_slice(&chunk[..header]);
    rest.extend_from_slice(tail);
    Ok(rest)
}

/// `value` as a `T`, when `U` is `T` (checked by the caller through `TypeId`).
pub(super) fn cast<T: 'static, U: 'static>(value: U) -> Option<T> {
    let mut slot = Some(value);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<T>>()
        .and_then(Option::take)
}

/// Encodes `value` as a chunk of one item. (The pool encodes through each
/// job's encoder, `job::Encode`.)
#[cfg(test)]
pub(crate) fn encode<T: Serialize + 'static>(value: &T) -> Result<Vec<u8>, Problem> {
    let mut chunk = ChunkWriter::default();
    chunk.push(value)?;
    Ok(chunk.finish())
}
