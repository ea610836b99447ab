//! A reply decoded where its worker wrote it: each value copied once, from
//! the worker's shared region straight into the value's own storage (a
//! result vector of numbers, a `Vec<u8>`'s, a `String`'s or a `Vec<f64>`'s
//! buffer), with no private copy of the whole reply first.
//!
//! Only the replies whose decoding is a copy take this path: values of a
//! type with a [`direct_header`] (plain numbers, `()`, byte vectors,
//! strings, vectors of numbers) and no failed item. Anything else, a reply that does not hold
//! up included, is left untouched, to be copied out whole and decoded the
//! usual way ([`super::ReplyReader`]), which also says what is wrong.
//!
//! The region stays writable by the worker meanwhile (see
//! [`crate::sys::InPlace`]): every length is read once into private memory
//! and checked before it is used, and a string is checked for UTF-8 after
//! its bytes are in their own buffer.

use std::any::Any;

use super::chunk::{direct_header, raw_kind};
use super::error::out_of_memory;
use super::format::{MAX_VARINT, read_varint};
use super::problem::Problem;
use crate::sys::{CopyFailed, InPlace, Word};

/// Bytes after a reply's values when no item failed: the failure count (a
/// one-byte varint 0), then where the values end (8 bytes).
const NO_FAILURES_TAIL: usize = 1 + 8;

/// Appends the `count` values of `reply` to `out`, each copied once out of
/// the region into its own storage: `Ok(true)`. `Ok(false)`, with nothing
/// appended, for a reply this path does not take (see the module's docs).
/// `Err` only when memory for the values cannot be had.
pub(crate) fn values_in_place<R: 'static>(
    reply: &InPlace<'_>,
    count: usize,
    out: &mut Vec<R>,
) -> Result<bool, Problem> {
    let Some(header) = direct_header::<R>() else {
        return Ok(false);
    };
    let Some(end) = values_end(reply) else {
        return Ok(false);
    };
    let (head, got) = reply.peek::<4>(0);
    if end < header.len() || got < header.len() || head[..header.len()] != *header {
        return Ok(false);
    }
    let body = Body {
        reply,
        start: header.len(),
        end,
        count,
    };
    let start = out.len();
    let taken = body.take(out);
    if !matches!(taken, Ok(true)) {
        out.truncate(start);
    }
    taken
}

/// Where the values of a reply without failures end; `None` for any other
/// reply.
fn values_end(reply: &InPlace<'_>) -> Option<usize> {
    let end = reply.len().checked_sub(NO_FAILURES_TAIL)?;
    let (tail, _) = reply.peek::<NO_FAILURES_TAIL>(end);
    let mut word = [0u8; 8];
    word.copy_from_slice(&tail[1..]);
    (tail[0] == 0 && u64::from_le_bytes(word) == end as u64).then_some(end)
}

/// The values of a reply, between its header and its tail.
struct Body<'r, 'a> {
    reply: &'r InPlace<'a>,
    start: usize,
    end: usize,
    count: usize,
}

impl Body<'_, '_> {
    fn take<R: 'static>(&self, out: &mut Vec<R>) -> Result<bool, Problem> {
        out.try_reserve(self.count)
            .map_err(|_| no_memory::<R>(self.count.saturating_mul(std::mem::size_of::<R>())))?;
        let any = out as &mut dyn Any;
        if let Some(out) = any.downcast_mut::<Vec<()>>() {
            if self.end != self.start {
                return Ok(false);
            }
            out.resize(out.len() + self.count, ());
            return Ok(true);
        }
        if let Some(out) = any.downcast_mut::<Vec<Vec<u8>>>() {
            return self.each_prefixed(out, 1, |at, len| self.byte_string(at, len, Some));
        }
        if let Some(out) = any.downcast_mut::<Vec<String>>() {
            return self.each_prefixed(out, 1, |at, len| {
                self.byte_string(at, len, |bytes| String::from_utf8(bytes).ok())
            });
        }
        // The numbers a reply holds raw, each as wide as its wire kind
        // (`raw_kind`, which the writer used).
        macro_rules! try_words {
            ($($ty:ty)*) => {$(
                if let (Some(out), Some(kind)) =
                    (any.downcast_mut::<Vec<$ty>>(), raw_kind::<$ty>())
                {
                    return self.words(out, kind.width());
                }
            )*};
        }
        try_words!(u64 usize i64 isize u32 i32 f64 f32);
        // Vectors of those numbers, each its count and its numbers raw.
        macro_rules! try_vectors {
            ($($ty:ty)*) => {$(
                if let (Some(out), Some(kind)) =
                    (any.downcast_mut::<Vec<Vec<$ty>>>(), raw_kind::<$ty>())
                {
                    let width = kind.width();
                    return self.each_prefixed(out, width, |at, count| self.vector(at, count, width));
                }
            )*};
        }
        try_vectors!(u64 usize i64 isize u32 i32 f64 f32);
        Ok(false)
    }

    /// Raw numbers, `width` bytes each on the wire.
    fn words<W: Word>(&self, out: &mut Vec<W>, width: usize) -> Result<bool, Problem> {
        if Some(self.end - self.start) != self.count.checked_mul(width) {
            return Ok(false);
        }
        match self.reply.append_words(self.start, self.count, width, out) {
            None | Some(Err(CopyFailed::Outside(_))) => Ok(false),
            Some(Err(CopyFailed::NoMemory(bytes))) => Err(no_memory::<Vec<W>>(bytes)),
            Some(Ok(())) => Ok(true),
        }
    }

    /// Values that are each a varint count, then that many elements of
    /// `width` bytes, made into a value by `make` (from where its elements
    /// start and their count; `None`: not taken).
    fn each_prefixed<T>(
        &self,
        out: &mut Vec<T>,
        width: usize,
        make: impl Fn(usize, usize) -> Result<Option<T>, Problem>,
    ) -> Result<bool, Problem> {
        let mut at = self.start;
        for _ in 0..self.count {
            let (prefix, available) = self.reply.peek::<MAX_VARINT>(at);
            let Ok((count, prefix_len)) = read_varint(&prefix[..available]) else {
                return Ok(false);
            };
            let room = (self.end - at).checked_sub(prefix_len);
            let Some((count, len)) = usize::try_from(count)
                .ok()
                .and_then(|count| Some((count, count.checked_mul(width)?)))
                .filter(|&(_, len)| room.is_some_and(|room| len <= room))
            else {
                return Ok(false);
            };
            at += prefix_len;
            let Some(value) = make(at, count)? else {
                return Ok(false);
            };
            at += len;
            out.push(value);
        }
        Ok(at == self.end)
    }

    /// The `len` bytes at `at` made into a `T` by `make` (`None`: not a
    /// valid `T`).
    fn byte_string<T: 'static>(
        &self,
        at: usize,
        len: usize,
        make: fn(Vec<u8>) -> Option<T>,
    ) -> Result<Option<T>, Problem> {
        let mut bytes = Vec::new();
        bytes
            .try_reserve_exact(len)
            .map_err(|_| no_memory::<T>(len))?;
        match self.reply.append(at, len, &mut bytes) {
            Ok(()) => Ok(make(bytes)),
            Err(CopyFailed::Outside(_)) => Ok(None),
            Err(CopyFailed::NoMemory(len)) => Err(no_memory::<T>(len)),
        }
    }

    /// The `count` numbers of `width` bytes at `at`, as a vector.
    fn vector<W: Word>(
        &self,
        at: usize,
        count: usize,
        width: usize,
    ) -> Result<Option<Vec<W>>, Problem> {
        let mut vector = Vec::new();
        vector
            .try_reserve_exact(count)
            .map_err(|_| no_memory::<Vec<W>>(count.saturating_mul(width)))?;
        match self.reply.append_words(at, count, width, &mut vector) {
            None | Some(Err(CopyFailed::Outside(_))) => Ok(None),
            Some(Err(CopyFailed::NoMemory(bytes))) => Err(no_memory::<Vec<W>>(bytes)),
            Some(Ok(())) => Ok(Some(vector)),
        }
    }
}

fn no_memory<T: ?Sized>(bytes: usize) -> Problem {
    Problem::decode::<T>(out_of_memory(bytes))
}

#[cfg(test)]
mod tests {
    use std::any::TypeId;
    use std::fmt::Debug;

    use proptest::collection::vec;
    use proptest::prelude::*;
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use super::values_in_place;
    use crate::codec::{ReplyReader, ReplyWriter};
    use crate::failure::{Failure, FailureKind};
    use crate::sys::{InPlace, Region};

    /// `bytes` in a region, at an offset as a reply would be.
    fn region_with(bytes: &[u8]) -> Region {
        let mut region = Region::create().unwrap();
        region.reserve(64 + bytes.len()).unwrap();
        region.write_at(64, bytes).unwrap();
        region
    }

    /// Decodes `reply` in place (`None`: not taken) and, to compare, the
    /// usual way from a private copy (`None`: not a reply of values only).
    fn both_ways<R: DeserializeOwned + 'static>(
        reply: &[u8],
        count: usize,
    ) -> (Option<Vec<R>>, Option<Vec<R>>) {
        let region = region_with(reply);
        let in_place = InPlace::new(&region, 64, reply.len()).unwrap();
        let mut taken = vec![];
        let in_place = match values_in_place(&in_place, count, &mut taken) {
            Ok(true) => Some(taken),
            Ok(false) => {
                assert!(taken.is_empty(), "a reply not taken left values behind");
                None
            }
            Err(problem) => panic!("{problem:?}"),
        };
        let mut usual = vec![];
        let usual = ReplyReader::new(reply)
            .ok()
            .and_then(|mut reader| {
                let all = reader.values_into(count, &mut usual).ok()?;
                (all && reader.finish().is_ok()).then_some(())
            })
            .map(|()| usual);
        (in_place, usual)
    }

    /// A reply of `values`, with the items at `failed` failing instead.
    fn reply_of<R: Serialize + 'static>(values: &[R], failed: &[usize]) -> Vec<u8> {
        let mut writer = ReplyWriter::<R>::default();
        for (index, value) in values.iter().enumerate() {
            if failed.contains(&index) {
                writer.failure(Failure::new(FailureKind::Panicked, "boom"));
            } else {
                writer.value(value).unwrap();
            }
        }
        writer.finish()
    }

    /// Every reply of values only is taken, with exactly the values the
    /// usual decoder reads; a reply with a failed item is not taken. So is
    /// a reply of `usize` or `isize` (or of vectors of them) where they are
    /// narrower than on the wire (8 bytes): the usual decoder reads it, and
    /// says if a value does not fit.
    fn check<R>(values: Vec<R>, failed: Option<usize>) -> Result<(), TestCaseError>
    where
        R: Serialize + DeserializeOwned + PartialEq + Debug + 'static,
    {
        let failed: Vec<usize> = failed
            .map(|at| at % values.len().max(1))
            .into_iter()
            .collect();
        let reply = reply_of(&values, &failed);
        let (in_place, usual) = both_ways::<R>(&reply, values.len());
        let narrow = [
            TypeId::of::<usize>(),
            TypeId::of::<isize>(),
            TypeId::of::<Vec<usize>>(),
            TypeId::of::<Vec<isize>>(),
        ]
        .contains(&TypeId::of::<R>())
            && size_of::<usize>() != 8;
        if failed.is_empty() && !values.is_empty() {
            let expected = (!narrow).then_some(&values);
            prop_assert_eq!(in_place.as_ref(), expected);
            prop_assert_eq!(usual.as_ref(), Some(&values));
        } else if !values.is_empty() {
            prop_assert_eq!(in_place, None);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn replies_of_values_are_taken_in_place_exactly(
            numbers in vec(any::<u64>(), 1..40),
            small in vec(any::<i32>(), 1..40),
            floats in vec(any::<u64>(), 1..40),
            blobs in vec(vec(any::<u8>(), 0..300), 1..8),
            texts in vec(".{0,40}", 1..8),
            failed in proptest::option::of(any::<usize>()),
        ) {
            check(numbers.clone(), failed)?;
            check(numbers.iter().map(|&n| n as i64).collect::<Vec<i64>>(), failed)?;
            check(numbers.iter().map(|&n| n as usize).collect::<Vec<usize>>(), failed)?;
            check(small.clone(), failed)?;
            check(small.iter().map(|&n| n as u32).collect::<Vec<u32>>(), failed)?;
            // Bit patterns of every kind, NaNs too, compared bit for bit.
            let bits = |v: &Vec<f64>| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            let reply = reply_of(&floats.iter().map(|&b| f64::from_bits(b)).collect::<Vec<_>>(), &[]);
            let (in_place, usual) = both_ways::<f64>(&reply, floats.len());
            prop_assert_eq!(in_place.as_ref().map(bits), Some(floats.clone()));
            prop_assert_eq!(usual.as_ref().map(bits), Some(floats.clone()));
            check(vec![(); small.len()], failed)?;
            check(blobs.clone(), failed)?;
            check(texts, failed)?;
            // Vectors of numbers, empty ones too.
            let vectors = |n: u64| blobs.iter().map(move |b| b.iter().map(move |&x| n.wrapping_mul(u64::from(x))).collect());
            check::<Vec<u64>>(vectors(1 << 56).collect(), failed)?;
            check::<Vec<usize>>(vectors(3).map(|v: Vec<u64>| v.into_iter().map(|x| x as usize).collect()).collect(), failed)?;
            check::<Vec<i32>>(vectors(1).map(|v: Vec<u64>| v.into_iter().map(|x| -(x as i32)).collect()).collect(), failed)?;
            let vector_bits = |v: &Vec<Vec<f32>>| v.iter().map(|v| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>()).collect::<Vec<_>>();
            let floats32: Vec<Vec<f32>> = numbers.chunks(3).map(|c| c.iter().map(|&b| f32::from_bits(b as u32)).collect()).collect();
            let reply = reply_of(&floats32, &[]);
            let (in_place, usual) = both_ways::<Vec<f32>>(&reply, floats32.len());
            prop_assert_eq!(in_place.as_ref().map(vector_bits), Some(vector_bits(&floats32)));
            prop_assert_eq!(usual.as_ref().map(vector_bits), Some(vector_bits(&floats32)));
        }

        /// A worker's bytes are untrusted: whatever the region holds behind
        /// a plausible header and tail, the in-place path takes nothing or
        /// exactly what the usual decoder reads, and never allocates more
        /// than the reply's length justifies.
        #[test]
        fn arbitrary_bytes_in_a_region_are_taken_exactly_or_left(
            kind in prop_oneof![Just(5u8), Just(4), Just(15), Just(16), Just(0), any::<u8>()],
            body in vec(prop_oneof![3 => 0..0x20u8, 1 => any::<u8>(), 1 => Just(0x80u8)], 0..200),
            count in 0..12usize,
            tail_ok in any::<bool>(),
            vectors in any::<bool>(),
        ) {
            let mut reply = match vectors {
                false => vec![crate::codec::chunk::SHAPED, 1, kind],
                true => vec![crate::codec::chunk::SHAPED, 2, crate::codec::plain::Kind::Seq as u8, kind],
            };
            reply.extend_from_slice(&body);
            let values_len = reply.len() as u64;
            reply.push(if tail_ok { 0 } else { 1 });
            reply.extend_from_slice(&values_len.to_le_bytes());
            let limit = 64 * 1024 + reply.len() * 64;
            let largest = crate::test_alloc::largest_during(|| {
                let (a, b) = both_ways::<u64>(&reply, count);
                if a.is_some() { assert_eq!(a, b) }
                let (a, b) = both_ways::<u32>(&reply, count);
                if a.is_some() { assert_eq!(a, b) }
                let (a, b) = both_ways::<()>(&reply, count);
                if a.is_some() { assert_eq!(a, b) }
                let (a, b) = both_ways::<Vec<u8>>(&reply, count);
                if a.is_some() { assert_eq!(a, b) }
                let (a, b) = both_ways::<String>(&reply, count);
                if a.is_some() { assert_eq!(a, b) }
                let (a, b) = both_ways::<Vec<u64>>(&reply, count);
                if a.is_some() { assert_eq!(a, b) }
                let (a, b) = both_ways::<Vec<i32>>(&reply, count);
                if a.is_some() { assert_eq!(a, b) }
            });
            prop_assert!(largest <= limit, "{} bytes allocated for a reply of {}", largest, reply.len());
        }
    }

    /// A string whose bytes are not UTF-8 is left for the usual decoder,
    /// which says so; nothing of it stays in the output.
    #[test]
    fn a_string_that_is_not_utf8_is_left_for_the_usual_decoder() {
        let mut reply = reply_of(&[String::from("ok"), String::from("yes")], &[]);
        let at = reply.iter().position(|&b| b == b'y').unwrap();
        reply[at] = 0xff;
        let (in_place, usual) = both_ways::<String>(&reply, 2);
        assert_eq!(in_place, None);
        assert_eq!(usual, None);
    }

    /// A length claiming more than the reply holds is not believed: nothing
    /// is allocated for it.
    #[test]
    fn a_lying_length_allocates_nothing() {
        let mut reply = vec![crate::codec::chunk::SHAPED, 1, 16];
        crate::codec::format::push_varint(&mut reply, 1 << 40);
        reply.extend_from_slice(b"abc");
        let values_len = reply.len() as u64;
        reply.push(0);
        reply.extend_from_slice(&values_len.to_le_bytes());
        let largest = crate::test_alloc::largest_during(|| {
            assert_eq!(both_ways::<Vec<u8>>(&reply, 1).0, None);
        });
        assert!(largest < 64 * 1024, "{largest}");
    }
}
