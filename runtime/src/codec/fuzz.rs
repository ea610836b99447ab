//! Not public API: the codec's decoders fed arbitrary bytes, with an oracle
//! that panics when one of them misbehaves. The fuzz targets in `fuzz/`
//! call these (through `procpool::__fuzz`, compiled only under cargo-fuzz's
//! `--cfg fuzzing`), and so do the property tests (`codec/proptests.rs`),
//! so `cargo test` checks the same properties on every run.
//!
//! What a decoder may do with bytes from another process or from Redis:
//! return an error, or return values. It may not panic, read past its
//! input, or allocate by a length it has not checked against its input
//! (a panic here, or an abort). Values it returns must be what the encoder
//! writes for them: re-encoded, they decode to the same bytes again (a
//! fixed point; compared as bytes, so NaN payloads and -0.0 count).
//!
//! Each check decodes as several types, from the untyped
//! (`IgnoredAny`, which walks any value) to nested options, maps with
//! non-string keys, enums (`Result`), 128-bit integers and floats.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::{DeserializeOwned, IgnoredAny};

use super::{ChunkReader, ChunkWriter, Problem, ReplyReader, ReplyWriter, SHAPED, chunk_rest};
use super::{de, format, ser};
use crate::failure::Failure;

/// Items read from one chunk at most: enough to cross every format's
/// boundaries, few enough to keep a case fast.
const MAX_ITEMS: usize = 64;

/// A map with non-string keys, nested options and an enum.
type Nested = BTreeMap<(i8, bool), Vec<Option<Option<Result<u8, String>>>>>;

/// Decodes `data` as a chunk ([`ChunkReader`]) of items of several types;
/// panics if the codec misbehaves.
pub fn chunk_reader(data: &[u8]) {
    walk_chunk(data);
    check_chunk::<u64>(data);
    check_chunk::<i32>(data);
    check_chunk::<f64>(data);
    check_chunk::<String>(data);
    check_chunk::<Vec<u8>>(data);
    check_chunk::<(u64, String, f64)>(data);
    check_chunk::<(i8, u128, char, bool, f32)>(data);
    check_chunk::<Vec<Option<u64>>>(data);
    check_chunk::<Nested>(data);
    check_chunk::<(i128, Option<(u16, String)>, serde_bytes::ByteBuf)>(data);
    check_chunk::<Vec<f64>>(data);
    check_chunk::<Vec<u32>>(data);
    check_chunk::<(Vec<i16>, u8)>(data);
    same_as_serde::<Vec<u64>>(data);
    same_as_serde::<Vec<f32>>(data);
    same_as_serde::<Vec<usize>>(data);
}

/// Vectors of numbers are read whole, not through serde
/// (`ChunkReader::next`'s fast path): item for item, it reads what serde
/// reads, and fails where serde fails.
fn same_as_serde<T: Serialize + DeserializeOwned + 'static>(data: &[u8]) {
    let (Ok(mut fast), Ok(mut serde)) = (ChunkReader::new(data), ChunkReader::new(data)) else {
        return;
    };
    for _ in 0..MAX_ITEMS {
        match (fast.next::<T>(), serde.next_value::<T, T>()) {
            (Ok(a), Ok(b)) => {
                assert_eq!(
                    encode_chunk(&[a]),
                    encode_chunk(&[b]),
                    "the fast path read another value"
                );
                assert_eq!(fast.pos, serde.pos, "the fast path read another length");
            }
            (Err(a), Err(_)) => {
                not_a_panic(&a);
                return;
            }
            (a, b) => panic!(
                "the fast path and serde disagree: {:?} / {:?}",
                a.is_ok(),
                b.is_ok()
            ),
        }
    }
}

/// Decodes `data` as plain items: `data`'s first byte says how many of the
/// bytes after it are the chunk's shape, the rest are items. The same
/// checks as [`chunk_reader`], with the fuzzer's effort on the plain
/// decoder.
pub fn plain_reader(data: &[u8]) {
    let Some((&len, rest)) = data.split_first() else {
        return;
    };
    let len = usize::from(len).min(rest.len());
    let mut chunk = vec![SHAPED];
    format::push_varint(&mut chunk, len as u64);
    chunk.extend_from_slice(rest);
    chunk_reader(&chunk);
}

/// Decodes `data` as a worker's reply ([`ReplyReader`]); panics if the
/// codec misbehaves.
pub fn reply_reader(data: &[u8]) {
    check_reply::<u64>(data);
    check_reply::<String>(data);
    check_reply::<(u32, Option<f64>)>(data);
    check_reply::<Nested>(data);
}

/// Decodes `data` as one tagged value ([`de::Decoder`], no chunk header);
/// panics if the codec misbehaves.
pub fn decode_value(data: &[u8]) {
    if let Ok((IgnoredAny, used)) = decode_one::<IgnoredAny>(data) {
        assert_prefix_free::<IgnoredAny>(&data[..used]);
    }
    check_value::<u64>(data);
    check_value::<i64>(data);
    check_value::<char>(data);
    check_value::<String>(data);
    check_value::<(f32, f64)>(data);
    check_value::<Option<Option<i128>>>(data);
    check_value::<Vec<(u128, serde_bytes::ByteBuf)>>(data);
    check_value::<Nested>(data);
}

/// One value of `bytes`, and how many bytes it took. A panic is the
/// caller's to see: no `Deserialize` impl used here panics, so one can
/// only come from the decoder.
pub(crate) fn decode_one<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), String> {
    let mut decoder = de::Decoder::new(bytes);
    let value = T::deserialize(&mut decoder).map_err(String::from)?;
    Ok((value, bytes.len() - decoder.rest().len()))
}

/// `value` in the tagged format.
pub(crate) fn encode_one<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    if let Err(error) = ser::encode_into(value, &mut out) {
        panic!("a decoded value does not encode: {error}");
    }
    out
}

/// `items` as a chunk.
pub(crate) fn encode_chunk<T: Serialize + 'static>(items: &[T]) -> Vec<u8> {
    let mut writer = ChunkWriter::default();
    for item in items {
        if let Err(problem) = writer.push(item) {
            panic!("a decoded item does not encode: {}", problem.message);
        }
    }
    writer.finish()
}

/// The items of a chunk written by [`encode_chunk`]: all `count` of them,
/// and nothing after.
pub(crate) fn decode_chunk<T: DeserializeOwned + 'static>(
    bytes: &[u8],
    count: usize,
) -> Result<Vec<T>, Problem> {
    let mut reader = ChunkReader::new(bytes)?;
    let items = decode_items(&mut reader, count)?;
    reader.finish()?;
    Ok(items)
}

/// The next `count` items of `reader`, one by one.
fn decode_items<T: DeserializeOwned + 'static>(
    reader: &mut ChunkReader<'_>,
    count: usize,
) -> Result<Vec<T>, Problem> {
    let mut items = Vec::new();
    for _ in 0..count {
        items.push(reader.next()?);
    }
    Ok(items)
}

/// A problem the codec reported. Its decoder runs user impls under
/// `catch_unwind` and reports their panics; the impls here never panic,
/// so a caught panic is the codec's own.
fn not_a_panic(problem: &Problem) {
    assert!(
        !problem.panicked(),
        "the decoder panicked: {}",
        problem.message
    );
}

/// Walks every item of the chunk as [`IgnoredAny`], as [`chunk_rest`]
/// does, and cuts the chunk after each.
fn walk_chunk(data: &[u8]) {
    let Ok(mut reader) = ChunkReader::new(data) else {
        return;
    };
    let mut walked = 0;
    while walked < MAX_ITEMS {
        match reader.next::<IgnoredAny>() {
            Ok(IgnoredAny) => walked += 1,
            Err(problem) => {
                not_a_panic(&problem);
                break;
            }
        }
    }
    let header = reader_header(data);
    for skip in 0..=walked + 1 {
        match chunk_rest(data, skip) {
            Ok(rest) => {
                // Past the last item is an error, not a short chunk (unless
                // the walk stopped early: zero-width plain items never end).
                assert!(
                    skip <= walked || walked == MAX_ITEMS,
                    "chunk_rest skipped past the last item"
                );
                // The chunk's header, then its bytes after the cut.
                assert!(rest.len() <= data.len());
                assert_eq!(rest[..header], data[..header]);
                assert!(data.ends_with(&rest[header..]));
            }
            Err(problem) => not_a_panic(&problem),
        }
    }
}

/// How many bytes of `data` its chunk header takes (it opened before).
fn reader_header(data: &[u8]) -> usize {
    ChunkReader::new(data).map_or(0, |reader| reader.pos)
}

/// Reads `data` as a chunk of `T` items; checks what it reads against a
/// second reading in bulk ([`ChunkReader::read_into`]), against the cut
/// [`chunk_rest`] makes, and against its own re-encoding.
fn check_chunk<T: Serialize + DeserializeOwned + 'static>(data: &[u8]) {
    let Ok(mut reader) = ChunkReader::new(data) else {
        return;
    };
    let mut items: Vec<T> = Vec::new();
    // Every byte read, by items that each took some: one more is an error.
    // (A plain item may take none: a shape of `()`s, read as `Option`s by
    // serde, which takes a unit for `None`; those never run out.)
    let mut complete = false;
    while items.len() < MAX_ITEMS {
        let before = reader.pos;
        match reader.next::<T>() {
            Ok(item) => items.push(item),
            Err(problem) => {
                not_a_panic(&problem);
                break;
            }
        }
        if reader.pos == before {
            break;
        }
        if reader.bytes.len() <= reader.pos {
            complete = true;
            break;
        }
    }
    let encoded = encode_chunk(&items);
    // In bulk (the raw path for numbers): the same items, no more.
    let mut bulk = ChunkReader::new(data).expect("it opened once");
    let mut out: Vec<T> = Vec::new();
    match bulk.read_into(items.len(), &mut out) {
        Ok(()) => assert_eq!(encode_chunk(&out), encoded, "read_into disagrees with next"),
        Err(problem) => panic!("read_into failed where next did not: {}", problem.message),
    }
    if complete {
        let mut more = Vec::new();
        match bulk.read_into::<T>(1, &mut more) {
            Ok(()) => panic!("read_into read past the end of the chunk"),
            Err(problem) => not_a_panic(&problem),
        }
    }
    // The chunk of the items after the first: exactly those.
    if let Some(skip) = items.len().checked_sub(1)
        && let Ok(rest) = chunk_rest(data, 1)
    {
        let again = ChunkReader::new(&rest)
            .and_then(|mut reader| decode_items::<T>(&mut reader, skip))
            .unwrap_or_else(|problem| {
                panic!(
                    "the rest of a chunk does not read back: {}",
                    problem.message
                )
            });
        assert_eq!(encode_chunk(&again), encode_chunk(&items[1..]));
    }
    fixed_point_chunk(&items, &encoded);
}

/// `items`, encoded as `encoded`, read back from it as the same bytes.
fn fixed_point_chunk<T: Serialize + DeserializeOwned + 'static>(items: &[T], encoded: &[u8]) {
    let again = decode_chunk::<T>(encoded, items.len()).unwrap_or_else(|problem| {
        panic!(
            "a chunk the writer made does not read back: {}",
            problem.message
        )
    });
    assert_eq!(encode_chunk(&again), encoded, "a value changed on its way");
}

/// Reads `data` as a reply of `T` values; checks it against its own
/// re-encoding.
fn check_reply<T: Serialize + DeserializeOwned + 'static>(data: &[u8]) {
    let Ok(mut reader) = ReplyReader::new(data) else {
        return;
    };
    let mut outcomes: Vec<Result<T, Failure>> = Vec::new();
    while outcomes.len() < MAX_ITEMS {
        match reader.next::<T>() {
            Ok(outcome) => outcomes.push(outcome),
            Err(problem) => {
                not_a_panic(&problem);
                break;
            }
        }
    }
    if let Err(problem) = reader.finish() {
        not_a_panic(&problem);
    }
    let encoded = encode_reply(&outcomes);
    let mut again = ReplyReader::new(&encoded).expect("a reply the writer made opens");
    let mut read = Vec::new();
    for _ in 0..outcomes.len() {
        read.push(
            again
                .next::<T>()
                .expect("a reply the writer made reads back"),
        );
    }
    again
        .finish()
        .expect("a reply the writer made ends where it should");
    assert_eq!(encode_reply(&read), encoded, "a value changed on its way");
}

/// `outcomes` as a worker's reply.
pub(crate) fn encode_reply<T: Serialize + 'static>(outcomes: &[Result<T, Failure>]) -> Vec<u8> {
    let mut writer = ReplyWriter::default();
    for outcome in outcomes {
        match outcome {
            Ok(value) => {
                if let Err(problem) = writer.value(value) {
                    panic!("a decoded value does not encode: {}", problem.message);
                }
            }
            Err(failure) => writer.failure(failure.clone()),
        }
    }
    writer.finish()
}

/// Reads one `T` from `data`; checks that it took bytes the decoder reads
/// alone, that no shorter prefix of them is a value, and that the value
/// re-encodes to bytes that decode to it again.
fn check_value<T: Serialize + DeserializeOwned>(data: &[u8]) {
    let Ok((value, used)) = decode_one::<T>(data) else {
        return;
    };
    assert!(used <= data.len());
    // The value's bytes alone: the decoder did not look past them.
    let (alone, used_alone) =
        decode_one::<T>(&data[..used]).expect("a value's own bytes decode alone");
    assert_eq!(used_alone, used);
    let encoded = encode_one(&value);
    assert_eq!(encode_one(&alone), encoded);
    assert_prefix_free::<T>(&data[..used]);
    let (again, used_again) = decode_one::<T>(&encoded).expect("a value the encoder wrote decodes");
    assert_eq!(used_again, encoded.len());
    assert_eq!(encode_one(&again), encoded, "a value changed on its way");
}

/// No proper prefix of one value's bytes is a value: a cut is an error,
/// never a shorter value. (Checked at a few cuts: all would be quadratic.)
fn assert_prefix_free<T: DeserializeOwned>(bytes: &[u8]) {
    let len = bytes.len();
    for cut in [0, len / 2, len.saturating_sub(1)] {
        if cut < len {
            assert!(
                decode_one::<T>(&bytes[..cut]).is_err(),
                "{cut} of {len} bytes decoded as a whole value"
            );
        }
    }
}
