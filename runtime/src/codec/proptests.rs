//! Property tests of the codec: arbitrary values round-trip exactly, and
//! arbitrary or corrupted bytes are an error or a value, never a panic, a
//! read past the input, a value from a cut encoding, or an allocation
//! larger than the input justifies.
//!
//! Case counts are bounded ([`cases`]: 256 a property) so `cargo test`
//! stays fast on a slow machine; `PROPTEST_CASES=100000` asks for a long
//! run, and the fuzz targets in `fuzz/` (which call the same oracle,
//! [`super::fuzz`]) for longer ones. No failure persistence files are
//! written: a case proptest finds becomes a unit test in `tests.rs`.

use std::collections::BTreeMap;

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use super::fuzz::{self, decode_chunk, decode_one, encode_chunk, encode_one, encode_reply};
use super::{ChunkReader, ReplyReader, SHAPED, TAGGED, chunk_rest, format};
use crate::failure::{Failure, FailureKind};

/// Runs `f` on `input`, failing if any single allocation meanwhile was
/// larger than the input can justify: each decoded element takes at least
/// one byte of input and at most a [`Value`] (or a few words) of memory,
/// plus a fixed allowance for error messages. A decoder that trusted a
/// lying length (2^60 elements) would abort or fail here; serde's own
/// preallocation cap (1 MiB) is above this bound, so it is not what
/// passes the test.
fn bounded_allocations(input: &[u8], f: impl FnOnce()) {
    let largest = crate::test_alloc::largest_during(f);
    let bound = 64 * 1024 + input.len() * std::mem::size_of::<Value>().max(64);
    assert!(
        largest <= bound,
        "decoding {} bytes allocated {largest} bytes at once (bound {bound})",
        input.len()
    );
}

// ---------------------------------------------------------------------------
// Arbitrary values.

/// An `f32` compared bit for bit (NaN payloads, -0.0).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(transparent)]
struct F32(f32);

impl PartialEq for F32 {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

/// An `f64` compared bit for bit.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(transparent)]
struct F64(f64);

impl PartialEq for F64 {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

/// Map keys that are not strings.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Key {
    Unit,
    Int(i64),
    Big(u128),
    Pair(u8, bool),
    Text(String),
}

/// A value of every shape serde has, nested.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Value {
    Unit,
    Bool(bool),
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    U128(u128),
    I8(i8),
    I16(i16),
    I32(i32),
    I64(i64),
    I128(i128),
    F32(F32),
    F64(F64),
    Char(char),
    Str(String),
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    Marker(Marker),
    Internal(Internal),
    Untagged(Untagged),
    Option(Option<Box<Value>>),
    Nested(Option<Option<Box<Value>>>),
    Seq(Vec<Value>),
    Map(BTreeMap<Key, Value>),
    Tuple(Box<Value>, i16, Box<Value>),
    Struct {
        first: Box<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        skipped: Option<u32>,
        rest: Vec<Value>,
    },
    Newtype(Newtype),
    Pair(Pair),
    Record(Record),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Marker;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Newtype(Box<Value>);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Pair(Box<Value>, Key);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    value: Box<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    key: Key,
}

/// Read through `deserialize_any` (serde buffers it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
enum Internal {
    A { x: u32, text: String },
    B { f: F64, flag: Option<bool> },
}

/// Read through `deserialize_any`, trying each variant in turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Untagged {
    Number(i64),
    Text(String),
    List(Vec<i8>),
}

/// Read through `deserialize_any`: floats and integers in one sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Number {
    Int(i64),
    Float(F64),
}

/// A struct of float sequences (tagged: a struct's fields go by name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Floats {
    doubles: Vec<F64>,
    singles: Vec<F32>,
    optional: Vec<Option<F64>>,
    mixed: Vec<Number>,
    nested: Vec<Vec<F64>>,
    pair: (F64, F32),
}

fn text() -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..12).prop_map(String::from_iter)
}

fn f32s() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => any::<u32>().prop_map(f32::from_bits),
        1 => Just(-0.0f32),
        1 => Just(f32::from_bits(0x7fc0_0001)),
        1 => Just(f32::from_bits(0xff80_0001)),
    ]
}

fn f64s() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => any::<u64>().prop_map(f64::from_bits),
        1 => Just(-0.0f64),
        1 => Just(f64::from_bits(0x7ff8_0000_0000_0001)),
        1 => Just(f64::from_bits(0xfff0_0000_dead_beef)),
    ]
}

fn key() -> impl Strategy<Value = Key> {
    prop_oneof![
        Just(Key::Unit),
        any::<i64>().prop_map(Key::Int),
        any::<u128>().prop_map(Key::Big),
        (any::<u8>(), any::<bool>()).prop_map(|(a, b)| Key::Pair(a, b)),
        text().prop_map(Key::Text),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Unit),
        any::<bool>().prop_map(Value::Bool),
        any::<u8>().prop_map(Value::U8),
        any::<u16>().prop_map(Value::U16),
        any::<u32>().prop_map(Value::U32),
        any::<u64>().prop_map(Value::U64),
        any::<u128>().prop_map(Value::U128),
        any::<i8>().prop_map(Value::I8),
        any::<i16>().prop_map(Value::I16),
        any::<i32>().prop_map(Value::I32),
        any::<i64>().prop_map(Value::I64),
        any::<i128>().prop_map(Value::I128),
        f32s().prop_map(|f| Value::F32(F32(f))),
        f64s().prop_map(|f| Value::F64(F64(f))),
        any::<char>().prop_map(Value::Char),
        text().prop_map(Value::Str),
        vec(any::<u8>(), 0..24).prop_map(Value::Bytes),
        Just(Value::Marker(Marker)),
        (any::<u32>(), text()).prop_map(|(x, text)| Value::Internal(Internal::A { x, text })),
        (f64s(), option::of(any::<bool>()))
            .prop_map(|(f, flag)| Value::Internal(Internal::B { f: F64(f), flag })),
        prop_oneof![
            any::<i64>().prop_map(Untagged::Number),
            text().prop_map(Untagged::Text),
            vec(any::<i8>(), 0..6).prop_map(Untagged::List),
        ]
        .prop_map(Value::Untagged),
    ]
}

/// Values nested up to 4 levels, up to 48 leaves.
fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        let boxed = inner.clone().prop_map(Box::new);
        prop_oneof![
            option::of(boxed.clone()).prop_map(Value::Option),
            prop_oneof![
                Just(None),
                Just(Some(None)),
                boxed.clone().prop_map(|v| Some(Some(v))),
            ]
            .prop_map(Value::Nested),
            vec(inner.clone(), 0..6).prop_map(Value::Seq),
            btree_map(key(), inner.clone(), 0..6).prop_map(Value::Map),
            (boxed.clone(), any::<i16>(), boxed.clone())
                .prop_map(|(a, n, b)| Value::Tuple(a, n, b)),
            (
                boxed.clone(),
                option::of(any::<u32>()),
                vec(inner.clone(), 0..3)
            )
                .prop_map(|(first, skipped, rest)| Value::Struct {
                    first,
                    skipped,
                    rest
                }),
            boxed.clone().prop_map(|v| Value::Newtype(Newtype(v))),
            (boxed.clone(), key()).prop_map(|(v, k)| Value::Pair(Pair(v, k))),
            (boxed, option::of(text()), key())
                .prop_map(|(value, note, key)| { Value::Record(Record { value, note, key }) }),
        ]
    })
}

fn failure() -> impl Strategy<Value = Failure> {
    (
        prop_oneof![
            Just(FailureKind::Panicked),
            Just(FailureKind::DecodeArguments),
            Just(FailureKind::EncodeResult),
            Just(FailureKind::UnknownJob),
        ],
        text(),
    )
        .prop_map(|(kind, message)| Failure::new(kind, message))
}

fn outcomes() -> impl Strategy<Value = Vec<Result<Value, Failure>>> {
    vec(
        prop_oneof![3 => value().prop_map(Ok), 1 => failure().prop_map(Err)],
        0..8,
    )
}

/// An item the chunk writer writes plain (no tag per value).
type PlainItem = (u64, String, F64, bool, serde_bytes::ByteBuf, char);

fn plain_items() -> impl Strategy<Value = Vec<PlainItem>> {
    vec(
        (
            any::<u64>(),
            text(),
            f64s(),
            any::<bool>(),
            vec(any::<u8>(), 0..8),
            any::<char>(),
        )
            .prop_map(|(n, s, f, b, bytes, c)| (n, s, F64(f), b, bytes.into(), c)),
        1..6,
    )
}

/// A change to a valid encoding.
#[derive(Debug, Clone)]
enum Mutation {
    /// XOR the byte at (the index modulo the length) with a nonzero mask.
    Flip(usize, u8),
    /// Keep the first bytes (modulo the length).
    Truncate(usize),
    Insert(usize, u8),
    Remove(usize),
    /// Replace a byte with a varint claiming a huge length.
    Lie(usize, u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 1..=255u8).prop_map(|(at, mask)| Mutation::Flip(at, mask)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert(at, byte)),
        1 => any::<usize>().prop_map(Mutation::Remove),
        2 => (
            any::<usize>(),
            prop_oneof![
                Just(1u64 << 60),
                Just(u64::MAX),
                Just(1 << 32),
                Just(1 << 20),
                any::<u64>()
            ]
        )
            .prop_map(|(at, len)| Mutation::Lie(at, len)),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for mutation in mutations {
        let len = bytes.len();
        if len == 0 {
            return;
        }
        match *mutation {
            Mutation::Flip(at, mask) => bytes[at % len] ^= mask,
            Mutation::Truncate(keep) => bytes.truncate(keep % len),
            Mutation::Insert(at, byte) => bytes.insert(at % (len + 1), byte),
            Mutation::Remove(at) => {
                bytes.remove(at % len);
            }
            Mutation::Lie(at, claim) => {
                let mut varint = Vec::new();
                format::push_varint(&mut varint, claim);
                let at = at % len;
                bytes.splice(at..at + 1, varint);
            }
        }
    }
}

/// Bytes shaped like the codec's, to reach past the first checks more
/// often than uniform noise: small tag values, short varints.
fn codec_like_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![3 => 0..0x1au8, 1 => any::<u8>(), 1 => Just(0x80u8)],
        0..max,
    )
}

/// `values` read back from a chunk the writer made of them, one by one
/// and in bulk.
fn chunk_round_trip(values: &[Value]) -> Result<(), TestCaseError> {
    let chunk = encode_chunk(values);
    let read = decode_chunk::<Value>(&chunk, values.len())
        .map_err(|problem| TestCaseError::fail(problem.message))?;
    prop_assert_eq!(&read, values);
    let mut reader = ChunkReader::new(&chunk).map_err(|p| TestCaseError::fail(p.message))?;
    let mut bulk = Vec::new();
    reader
        .read_into::<Value>(values.len(), &mut bulk)
        .map_err(|p| TestCaseError::fail(p.message))?;
    prop_assert_eq!(&bulk, values);
    prop_assert!(reader.finish().is_ok());
    // One more byte is an error at the end, not part of the last value.
    let mut longer = chunk.clone();
    longer.push(format::UNIT);
    let mut reader = ChunkReader::new(&longer).map_err(|p| TestCaseError::fail(p.message))?;
    for value in values {
        prop_assert_eq!(&reader.next::<Value>().ok(), &Some(value.clone()));
    }
    prop_assert!(reader.finish().is_err());
    Ok(())
}

/// `cases` cases of a property, unless `PROPTEST_CASES` asks for another
/// number (a long local run); nothing is written to disk.
fn cases(cases: u32) -> ProptestConfig {
    // The default reads `PROPTEST_CASES` (and the other PROPTEST_ variables).
    let default = ProptestConfig::default();
    ProptestConfig {
        cases: std::env::var_os("PROPTEST_CASES").map_or(cases, |_| default.cases),
        failure_persistence: None,
        ..default
    }
}

proptest! {
    #![proptest_config(cases(256))]

    /// Every value decodes to itself, bit for bit, alone and in a chunk.
    #[test]
    fn values_round_trip(values in vec(value(), 1..8)) {
        for value in &values {
            let bytes = encode_one(value);
            let (read, used) = decode_one::<Value>(&bytes).map_err(TestCaseError::fail)?;
            prop_assert_eq!(&read, value);
            prop_assert_eq!(used, bytes.len());
        }
        chunk_round_trip(&values)?;
    }

    /// A reply holds each value and each failure in its place.
    #[test]
    fn replies_round_trip(outcomes in outcomes()) {
        let reply = encode_reply(&outcomes);
        let mut reader = ReplyReader::new(&reply).map_err(|p| TestCaseError::fail(p.message))?;
        for outcome in &outcomes {
            let read = reader.next::<Value>().map_err(|p| TestCaseError::fail(p.message))?;
            prop_assert_eq!(&read, outcome);
        }
        prop_assert!(reader.finish().is_ok());
    }

    /// The rest of a chunk after any cut holds exactly the items after it.
    #[test]
    fn the_rest_of_a_chunk_is_its_tail(values in vec(value(), 1..8), skip in 0..9usize) {
        let chunk = encode_chunk(&values);
        match chunk_rest(&chunk, skip) {
            Ok(rest) => {
                prop_assert!(skip <= values.len());
                let read = decode_chunk::<Value>(&rest, values.len() - skip)
                    .map_err(|p| TestCaseError::fail(p.message))?;
                prop_assert_eq!(&read[..], &values[skip..]);
            }
            Err(_) => prop_assert!(skip > values.len()),
        }
    }

    /// Plain items (no tag per value) round-trip, in the plain format.
    #[test]
    fn plain_items_round_trip(
        numbers in vec(any::<u64>(), 1..20),
        small in vec(any::<i32>(), 1..20),
        floats in vec(f64s(), 1..20),
        flags in vec(any::<bool>(), 1..20),
        chars in vec(any::<char>(), 1..20),
        texts in vec(text(), 1..8),
        blobs in vec(vec(any::<u8>(), 0..16), 1..8),
        tuples in vec((any::<u64>(), text(), f64s(), any::<bool>()), 1..8),
        wide in vec((any::<i8>(), any::<u128>(), any::<char>(), vec(any::<u8>(), 0..8)), 1..8),
    ) {
        fn check<T>(items: &[T]) -> Result<(), TestCaseError>
        where
            T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug + 'static,
        {
            let chunk = encode_chunk(items);
            prop_assert_eq!(chunk[0], SHAPED, "{:?}", items);
            let read = decode_chunk::<T>(&chunk, items.len())
                .map_err(|p| TestCaseError::fail(p.message))?;
            prop_assert_eq!(&read[..], items);
            let mut bulk = Vec::new();
            let mut reader = ChunkReader::new(&chunk).map_err(|p| TestCaseError::fail(p.message))?;
            reader.read_into::<T>(items.len(), &mut bulk).map_err(|p| TestCaseError::fail(p.message))?;
            prop_assert_eq!(&bulk[..], items);
            prop_assert!(reader.finish().is_ok());
            Ok(())
        }
        check(&numbers)?;
        check(&small)?;
        check(&floats.into_iter().map(F64).collect::<Vec<_>>())?;
        check(&flags)?;
        check(&chars)?;
        check(&texts)?;
        check(&blobs)?;
        check(&tuples.into_iter().map(|(a, b, c, d)| (a, b, F64(c), d)).collect::<Vec<_>>())?;
        check(&wide
            .into_iter()
            .map(|(a, b, c, d)| (a, b, c, serde_bytes::ByteBuf::from(d)))
            .collect::<Vec<_>>())?;
    }

    /// Sequences of floats in tagged values (packed as they are written,
    /// unpacked where another value comes) read back bit for bit: plain
    /// and newtype floats, both widths, optional ones, and sequences that
    /// mix floats with integers at any position.
    #[test]
    fn packed_float_sequences_round_trip(
        doubles in vec(f64s(), 0..40),
        singles in vec(f32s(), 0..40),
        optional in vec(proptest::option::of(f64s()), 0..10),
        mixed in vec(prop_oneof![
            3 => f64s().prop_map(|f| Number::Float(F64(f))),
            1 => any::<i64>().prop_map(Number::Int),
        ], 0..20),
        nested in vec(vec(f64s(), 0..4), 0..4),
    ) {
        let frame = Floats {
            doubles: doubles.into_iter().map(F64).collect(),
            singles: singles.into_iter().map(F32).collect(),
            optional: optional.into_iter().map(|f| f.map(F64)).collect(),
            mixed,
            nested: nested.into_iter().map(|v| v.into_iter().map(F64).collect()).collect(),
            pair: (F64(1.5), F32(-0.5)),
        };
        let chunk = encode_chunk(std::slice::from_ref(&frame));
        let read = decode_chunk::<Floats>(&chunk, 1).map_err(|p| TestCaseError::fail(p.message))?;
        prop_assert_eq!(&read[0], &frame);
        let packed = !frame.doubles.is_empty();
        prop_assert!(!packed || chunk.contains(&format::SEQ_F64));
    }

    /// A chunk whose items change shape part way (plain, then tagged:
    /// the items written so far are rewritten) reads back whole.
    #[test]
    fn chunks_that_change_format_round_trip(items in vec(prop_oneof![
        any::<i64>().prop_map(Untagged::Number),
        text().prop_map(Untagged::Text),
        vec(any::<i8>(), 0..4).prop_map(Untagged::List),
    ], 1..12)) {
        let chunk = encode_chunk(&items);
        let read = decode_chunk::<Untagged>(&chunk, items.len())
            .map_err(|p| TestCaseError::fail(p.message))?;
        prop_assert_eq!(read, items);
    }
}

proptest! {
    #![proptest_config(cases(256))]

    /// Bytes from nowhere: every decoder returns an error or values that
    /// survive the oracle of `codec::fuzz`, within bounded allocations.
    #[test]
    fn arbitrary_bytes_never_break_a_decoder(
        noise in vec(any::<u8>(), 0..512),
        like in codec_like_bytes(512),
        header in prop_oneof![Just(TAGGED), Just(SHAPED)],
    ) {
        for bytes in [&noise, &like] {
            bounded_allocations(bytes, || {
                fuzz::chunk_reader(bytes);
                fuzz::plain_reader(bytes);
                fuzz::reply_reader(bytes);
                fuzz::decode_value(bytes);
                value_oracle(bytes);
            });
            // Past the first byte's check.
            let mut chunk = vec![header];
            chunk.extend_from_slice(bytes);
            bounded_allocations(&chunk, || {
                fuzz::chunk_reader(&chunk);
                value_oracle(&chunk);
            });
        }
    }

    /// Replies with a consistent trailer around arbitrary values and
    /// failures, so the reader gets past its first checks.
    #[test]
    fn arbitrary_replies_never_break_the_reply_reader(
        header in prop_oneof![Just(TAGGED), Just(SHAPED)],
        values in codec_like_bytes(128),
        log in codec_like_bytes(128),
    ) {
        let mut reply = vec![header];
        reply.extend_from_slice(&values);
        let values_len = reply.len() as u64;
        reply.extend_from_slice(&log);
        reply.extend_from_slice(&values_len.to_le_bytes());
        bounded_allocations(&reply, || fuzz::reply_reader(&reply));
    }

    /// Valid encodings, corrupted: flipped, cut, with bytes inserted or
    /// removed, with huge lengths spliced in.
    #[test]
    fn corrupted_encodings_are_errors_or_consistent_values(
        values in vec(value(), 1..6),
        plain in plain_items(),
        outcomes in outcomes(),
        mutations in vec(mutation(), 1..4),
    ) {
        let mut plain = encode_chunk(&plain);
        mutate(&mut plain, &mutations);
        bounded_allocations(&plain, || fuzz::chunk_reader(&plain));
        let mut chunk = encode_chunk(&values);
        mutate(&mut chunk, &mutations);
        let mut one = encode_one(&values[0]);
        mutate(&mut one, &mutations);
        let mut reply = encode_reply(&outcomes);
        mutate(&mut reply, &mutations);
        bounded_allocations(&chunk, || {
            fuzz::chunk_reader(&chunk);
            value_oracle(&chunk);
        });
        bounded_allocations(&one, || {
            fuzz::decode_value(&one);
            value_oracle_one(&one);
        });
        bounded_allocations(&reply, || {
            fuzz::reply_reader(&reply);
            value_oracle_reply(&reply);
        });
    }

    /// A valid encoding cut anywhere is an error: never a shorter value,
    /// never fewer items, never a reply with an outcome missing.
    #[test]
    fn every_cut_of_a_valid_encoding_is_an_error(
        values in vec(value(), 1..5),
        plain in plain_items(),
        outcomes in outcomes(),
    ) {
        let chunk = encode_chunk(&plain);
        prop_assert_eq!(chunk[0], SHAPED);
        for cut in 0..chunk.len() {
            prop_assert!(
                decode_chunk::<PlainItem>(&chunk[..cut], plain.len()).is_err(),
                "a plain chunk cut at {} of {} bytes read whole", cut, chunk.len()
            );
        }
        let chunk = encode_chunk(&values);
        for cut in 0..chunk.len() {
            prop_assert!(
                decode_chunk::<Value>(&chunk[..cut], values.len()).is_err(),
                "a chunk cut at {} of {} bytes read whole", cut, chunk.len()
            );
        }
        let one = encode_one(&values[0]);
        for cut in 0..one.len() {
            prop_assert!(decode_one::<Value>(&one[..cut]).is_err());
        }
        let reply = encode_reply(&outcomes);
        for cut in 0..reply.len() {
            let whole = ReplyReader::new(&reply[..cut]).and_then(|mut reader| {
                for _ in &outcomes {
                    let _outcome = reader.next::<Value>()?;
                }
                reader.finish()
            });
            prop_assert!(whole.is_err(), "a reply cut at {} of {} bytes read whole", cut, reply.len());
        }
    }
}

/// [`Value`]s read from `bytes` as a chunk (up to a few): whatever is read
/// re-encodes to a chunk that reads back as the same values.
fn value_oracle(bytes: &[u8]) {
    let Ok(mut reader) = ChunkReader::new(bytes) else {
        return;
    };
    let mut values = Vec::new();
    while values.len() < 16 {
        match reader.next::<Value>() {
            Ok(value) => values.push(value),
            Err(problem) => {
                assert!(!problem.panicked(), "{}", problem.message);
                break;
            }
        }
    }
    let chunk = encode_chunk(&values);
    let again = decode_chunk::<Value>(&chunk, values.len()).expect("a written chunk reads back");
    assert_eq!(again, values);
}

/// One [`Value`] read from `bytes`: it round-trips.
fn value_oracle_one(bytes: &[u8]) {
    if let Ok((value, _)) = decode_one::<Value>(bytes) {
        let encoded = encode_one(&value);
        let (again, used) = decode_one::<Value>(&encoded).expect("a written value reads back");
        assert_eq!(used, encoded.len());
        assert_eq!(again, value);
    }
}

/// The outcomes read from `bytes` as a reply of [`Value`]s round-trip.
fn value_oracle_reply(bytes: &[u8]) {
    let Ok(mut reader) = ReplyReader::new(bytes) else {
        return;
    };
    let mut outcomes = Vec::new();
    while outcomes.len() < 16 {
        match reader.next::<Value>() {
            Ok(outcome) => outcomes.push(outcome),
            Err(problem) => {
                assert!(!problem.panicked(), "{}", problem.message);
                break;
            }
        }
    }
    let reply = encode_reply(&outcomes);
    let mut again = ReplyReader::new(&reply).expect("a written reply opens");
    for outcome in &outcomes {
        assert_eq!(&again.next::<Value>().expect("reads back"), outcome);
    }
    assert!(again.finish().is_ok());
}

/// Every length and count field of the format, claiming 2^60 (and
/// `u64::MAX`), is an error, and no allocation is attempted for it.
#[test]
fn lying_lengths_are_errors_without_allocating() {
    for claim in [1u64 << 60, u64::MAX, 1 << 40, 1 << 30] {
        let mut varint = Vec::new();
        format::push_varint(&mut varint, claim);
        let tagged = |prefix: &[u8], suffix: &[u8]| {
            let mut bytes = vec![TAGGED];
            bytes.extend_from_slice(prefix);
            bytes.extend_from_slice(&varint);
            bytes.extend_from_slice(suffix);
            bytes
        };
        let chunks = [
            tagged(&[format::STR], b"abc"),
            tagged(&[format::BYTES], b"abc"),
            tagged(&[format::SEQ], &[format::UNIT; 8]),
            tagged(&[format::SEQ_U8], &[1, 2, 3]),
            tagged(&[format::SEQ_F64], &[0; 16]),
            tagged(&[format::SEQ_F32], &[0; 16]),
            tagged(&[format::MAP], &[format::UNIT; 8]),
            tagged(&[format::STRUCT], &[1, b'a', format::UNIT]),
            tagged(&[format::TUPLE_VARIANT, 0, 1, b'A'], &[format::UNIT; 8]),
            tagged(
                &[format::STRUCT_VARIANT, 0, 1, b'A'],
                &[1, b'a', format::UNIT],
            ),
            // A shape's length, then a string's length in a plain chunk.
            [&[SHAPED][..], &varint, &[5, 5, 5]].concat(),
            [
                &[SHAPED, 1, super::plain::Kind::Str as u8][..],
                &varint,
                b"abc",
            ]
            .concat(),
            [
                &[SHAPED, 1, super::plain::Kind::Bytes as u8][..],
                &varint,
                b"abc",
            ]
            .concat(),
            // A plain tuple's length, in its shape.
            [
                &[SHAPED, 12, super::plain::Kind::Tuple as u8][..],
                &varint,
                &[0; 8],
            ]
            .concat(),
        ];
        for chunk in &chunks {
            bounded_allocations(chunk, || {
                for result in [
                    ChunkReader::new(chunk).and_then(|mut r| r.next::<Vec<Value>>().map(drop)),
                    ChunkReader::new(chunk).and_then(|mut r| r.next::<Value>().map(drop)),
                    ChunkReader::new(chunk).and_then(|mut r| r.next::<String>().map(drop)),
                    ChunkReader::new(chunk).and_then(|mut r| r.next::<Vec<u8>>().map(drop)),
                    ChunkReader::new(chunk)
                        .and_then(|mut r| r.next::<BTreeMap<u8, u8>>().map(drop)),
                    ChunkReader::new(chunk)
                        .and_then(|mut r| r.next::<serde::de::IgnoredAny>().map(drop)),
                ] {
                    assert!(result.is_err(), "{claim}: {chunk:x?}");
                }
                fuzz::chunk_reader(chunk);
            });
        }
        // A reply's failure count, and a values chunk longer than the reply.
        let mut reply = vec![TAGGED];
        reply.extend_from_slice(&varint);
        reply.extend_from_slice(&1u64.to_le_bytes());
        bounded_allocations(&reply, || {
            assert!(ReplyReader::new(&reply).is_err());
            fuzz::reply_reader(&reply);
        });
        let mut reply = vec![TAGGED, 0];
        reply.extend_from_slice(&claim.to_le_bytes());
        assert!(ReplyReader::new(&reply).is_err());
    }
}
