use super::*;
use crate::failure::Failure;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

fn round_trip<T>(values: &[T]) -> Vec<T>
where
    T: Serialize + DeserializeOwned + 'static,
{
    let mut writer = ChunkWriter::default();
    for value in values {
        writer.push(value).unwrap();
    }
    let bytes = writer.finish();
    let mut reader = ChunkReader::new(&bytes).unwrap();
    let mut out = Vec::new();
    reader.read_into(values.len(), &mut out).unwrap();
    reader.finish().unwrap();
    out
}

#[test]
fn plain_items_carry_no_tags() {
    let bytes = encode(&(7u64, -1i32, true)).unwrap();
    // Header, shape (tuple of 3: u64, i32, bool), then 8 + 4 + 1 raw bytes.
    assert_eq!(bytes[0], SHAPED);
    assert_eq!(bytes.len(), 1 + 1 + 5 + 13);
    let mut writer = ChunkWriter::default();
    for i in 0..1000u64 {
        writer.push(&i).unwrap();
    }
    assert_eq!(writer.finish().len(), 1 + 2 + 8 * 1000);
    assert_eq!(round_trip(&[1u64, u64::MAX]), vec![1, u64::MAX]);
    assert_eq!(round_trip(&[-1i64, i64::MIN]), vec![-1, i64::MIN]);
    assert_eq!(round_trip(&[usize::MAX]), vec![usize::MAX]);
}

#[test]
fn unit_items_take_the_raw_path_with_no_bytes_each() {
    // A map of a job without arguments, or returning nothing, goes
    // through the same store-and-count path as numbers, not serde.
    let mut writer = ChunkWriter::default();
    writer.push(&()).unwrap();
    for _ in 0..1000 {
        assert!(writer.push_raw(&()), "a unit item took the serde path");
    }
    let bytes = writer.finish();
    assert_eq!(bytes.len(), 1 + 2, "header and shape only");
    let mut out: Vec<()> = Vec::new();
    assert!(matches!(
        chunk::take_raw(&bytes[3..], 1001, &mut out),
        Some(Ok(0))
    ));
    assert_eq!(out.len(), 1001);
    assert_eq!(round_trip(&[(); 5]), vec![(); 5]);
}

#[test]
fn every_type_with_a_direct_header_has_a_direct_value() {
    // A worker takes the direct path for a result type with a header and
    // then needs each value's bytes: a type with one but not the other
    // failed every item ("not a raw value", seen for `()` results).
    fn both<T: 'static>(value: T) {
        let name = std::any::type_name::<T>();
        assert!(chunk::direct_header::<T>().is_some(), "{name}: no header");
        assert!(chunk::direct_value(&value).is_some(), "{name}: no value");
    }
    both(());
    both(1u64);
    both(1usize);
    both(-1i64);
    both(-1isize);
    both(1u32);
    both(-1i32);
    both(1.5f64);
    both(1.5f32);
    both(vec![1u8]);
    both(String::from("x"));
    both(vec![1u64]);
    both(vec![-1i64]);
    both(vec![1u32]);
    both(vec![-1i32]);
    both(vec![1.5f64]);
    both(vec![1.5f32]);
    assert!(chunk::direct_header::<u8>().is_none());
    assert!(chunk::direct_header::<Vec<u16>>().is_none());
    assert!(chunk::direct_header::<Vec<Vec<u64>>>().is_none());
    // A `usize` is 8 bytes on the wire: its vector is its own memory only
    // where it is 8 bytes in memory too.
    assert_eq!(
        chunk::direct_header::<Vec<usize>>().is_some(),
        cfg!(all(target_pointer_width = "64", target_endian = "little"))
    );
}

/// A vector of numbers is its count and its numbers raw, with no tag per
/// element (it was a tag and a value each, 9 bytes per `f64`), and reads
/// back bit for bit: NaN payloads, -0.0, the extremes, empty vectors first.
#[test]
fn vectors_of_numbers_travel_raw() {
    let floats = vec![1.5f64; 1000];
    let bytes = encode(&floats).unwrap();
    // Header, the shape's length and shape (sequence of f64), the count (a
    // 2-byte varint), then 8 bytes each.
    assert_eq!(
        &bytes[..4],
        &[SHAPED, 2, plain::Kind::Seq as u8, plain::Kind::F64 as u8]
    );
    assert_eq!(bytes.len(), 4 + 2 + 8 * 1000);
    let odd = [
        f64::NAN,
        -0.0,
        f64::from_bits(0x7ff0_0000_0000_0001),
        f64::MIN,
        f64::MAX,
    ];
    let back = round_trip(&[vec![], odd.to_vec(), vec![2.0; 3]]);
    assert_eq!(back.len(), 3);
    assert!(back[0].is_empty());
    let bits = |v: &[f64]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&back[1]), bits(&odd));
    assert_eq!(back[2], vec![2.0; 3]);
    assert_eq!(
        round_trip(&[vec![u64::MAX, 0], vec![]]),
        vec![vec![u64::MAX, 0], vec![]]
    );
    assert_eq!(
        round_trip(&[vec![i64::MIN], vec![-1]]),
        vec![vec![i64::MIN], vec![-1]]
    );
    assert_eq!(round_trip(&[vec![usize::MAX]]), vec![vec![usize::MAX]]);
    assert_eq!(
        round_trip(&[vec![-7i32, i32::MAX]]),
        vec![vec![-7, i32::MAX]]
    );
    assert_eq!(round_trip(&[vec![u32::MAX]]), vec![vec![u32::MAX]]);
    assert_eq!(
        round_trip(&[vec![f32::MIN_POSITIVE]]),
        vec![vec![f32::MIN_POSITIVE]]
    );
    // Through serde too: vectors in a tuple, other element types, sets,
    // slices of bytes, each plain.
    let items = [(vec![1u16, 2], 3u8, vec![-1i8]), (vec![], 4, vec![i8::MIN])];
    assert_eq!(encode(&items[0]).unwrap()[0], SHAPED);
    assert_eq!(round_trip(&items), items.to_vec());
    let sets = [
        std::collections::BTreeSet::from([3u128, 1]),
        Default::default(),
    ];
    assert_eq!(encode(&sets[0]).unwrap()[0], SHAPED);
    assert_eq!(round_trip(&sets), sets.to_vec());
    let nested = [(vec![7u8; 3], 1u64)];
    assert_eq!(round_trip(&nested), nested.to_vec());
}

/// A sequence is plain only while every element of every item is a number
/// of one kind, with its count known; otherwise the chunk goes tagged
/// (the items before rewritten) and reads back whole.
#[test]
fn sequences_that_are_not_plain_numbers_go_tagged() {
    #[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
    #[serde(untagged)]
    enum Number {
        Int(u64),
        Float(f64),
    }
    use Number::{Float, Int};
    // The second item's elements are of another kind.
    let items = vec![
        vec![Int(1), Int(2)],
        vec![Float(0.5)],
        vec![Int(3), Float(2.5)],
    ];
    let bytes = {
        let mut writer = ChunkWriter::default();
        for item in &items {
            writer.push(item).unwrap();
        }
        writer.finish()
    };
    assert_eq!(bytes[0], TAGGED);
    assert_eq!(round_trip(&items), items);
    // Mixed within the first item.
    assert_eq!(encode(&items[2]).unwrap()[0], TAGGED);
    // A sequence of anything but numbers.
    assert_eq!(encode(&vec![true]).unwrap()[0], TAGGED);
    assert_eq!(encode(&vec![String::new()]).unwrap()[0], TAGGED);
    assert_eq!(encode(&vec![vec![1u64]]).unwrap()[0], TAGGED);
    assert_eq!(
        round_trip(&[vec![vec![1u64], vec![]]]),
        vec![vec![vec![1u64], vec![]]]
    );
    // The first item's sequence is empty: no element says its kind.
    assert_eq!(encode(&(Vec::<u16>::new(), 1u8)).unwrap()[0], TAGGED);
}

/// A `Serialize` impl that writes fewer or more elements than it announced
/// is an error, in the plain path as in the tagged one: never a count that
/// shifts the next value.
#[test]
fn a_sequence_with_another_count_than_announced_is_an_error() {
    struct Liar(usize, usize);
    impl Serialize for Liar {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeSeq;
            let mut seq = s.serialize_seq(Some(self.0))?;
            for n in 0..self.1 {
                seq.serialize_element(&(n as u32))?;
            }
            seq.end()
        }
    }
    for (announced, written) in [(3, 1), (1, 3), (0, 1)] {
        let mut writer = ChunkWriter::default();
        let problem = writer.push(&Liar(announced, written)).unwrap_err();
        assert!(problem.message.contains("announced"), "{}", problem.message);
        // As the second item of a plain chunk, too.
        let mut writer = ChunkWriter::default();
        writer.push(&Liar(2, 2)).unwrap();
        assert!(writer.push(&Liar(announced, written)).is_err());
        let bytes = writer.finish();
        let mut reader = ChunkReader::new(&bytes).unwrap();
        let mut out: Vec<Vec<u32>> = Vec::new();
        reader.read_into(1, &mut out).unwrap();
        assert_eq!(out, vec![vec![0, 1]]);
        reader.finish().unwrap();
    }
    // A value that is plain first, then fails once the chunk went tagged
    // part way through it: the chunk is cut back to the items before, in
    // the tagged bytes (it was cut at the item's plain offset, leaving
    // bytes behind).
    struct Sometimes(bool);
    impl Serialize for Sometimes {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            match self.0 {
                true => s.serialize_u64(1 << 40),
                false => Some(Liar(3, 1)).serialize(s),
            }
        }
    }
    let mut writer = ChunkWriter::default();
    writer.push(&Sometimes(true)).unwrap();
    writer.push(&Sometimes(true)).unwrap();
    assert!(writer.push(&Sometimes(false)).is_err());
    let bytes = writer.finish();
    assert_eq!(bytes[0], TAGGED);
    let mut reader = ChunkReader::new(&bytes).unwrap();
    let mut out: Vec<u64> = Vec::new();
    reader.read_into(2, &mut out).unwrap();
    assert_eq!(out, vec![1 << 40; 2]);
    reader.finish().unwrap();
}

/// A forged sequence in a plain chunk: a count the data cannot hold, or
/// elements of a kind that is not a number, is an error, and nothing is
/// allocated for the count.
#[test]
fn a_forged_sequence_is_an_error_without_allocating() {
    use plain::Kind;
    for (shape, data) in [
        (
            vec![Kind::Seq as u8, Kind::F64 as u8],
            vec![0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2],
        ),
        (vec![Kind::Seq as u8, Kind::U8 as u8], vec![9, 1, 2]),
        (vec![Kind::Seq as u8, Kind::Str as u8], vec![1, 1, b'a']),
        (vec![Kind::Seq as u8, Kind::Seq as u8], vec![1, 1, 1]),
        (vec![Kind::Seq as u8], vec![1, 1]),
    ] {
        let mut chunk = vec![SHAPED, shape.len() as u8];
        chunk.extend(&shape);
        chunk.extend(&data);
        let largest = crate::test_alloc::largest_during(|| {
            let read = ChunkReader::new(&chunk);
            assert!(
                read.and_then(|mut r| r.next::<Vec<f64>>()).is_err(),
                "{chunk:?}"
            );
            let read = ChunkReader::new(&chunk);
            assert!(
                read.and_then(|mut r| r.next::<Vec<u8>>()).is_err(),
                "{chunk:?}"
            );
            let read = ChunkReader::new(&chunk);
            let problem = read.and_then(|mut r| r.next::<Vec<u64>>()).unwrap_err();
            assert!(!problem.panicked());
        });
        assert!(largest < 4096, "{largest} bytes allocated for {chunk:?}");
    }
}

#[test]
fn structs_are_never_plain() {
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Point {
        x: u8,
        y: u8,
    }
    let bytes = encode(&Point { x: 1, y: 2 }).unwrap();
    assert_eq!(bytes[0], TAGGED);
    assert_eq!(
        round_trip(&[Point { x: 1, y: 2 }]),
        vec![Point { x: 1, y: 2 }]
    );
}

#[test]
fn byte_sequences_are_packed() {
    let data: Vec<u8> = (0..=255).collect();
    // As a byte string (the Vec<u8> item path) and nested (packed sequence).
    let bytes = encode(&data).unwrap();
    assert!(bytes.len() < 256 + 8, "{}", bytes.len());
    let nested = encode(&Some(data.clone())).unwrap();
    assert!(nested.len() < 256 + 8, "{}", nested.len());
    assert_eq!(round_trip(&[Some(data.clone())]), vec![Some(data)]);
}

/// Floats in a struct (tagged: the fields travel by name) are packed as
/// they are written: a sequence of `f64` or `f32` is its count and raw
/// values (it was a tag and a value each), and reads back bit for bit,
/// newtypes around floats too. A sequence that turns out mixed is
/// unpacked; other sequences are never packed.
#[test]
fn float_sequences_in_tagged_values_are_packed() {
    #[derive(Serialize, Deserialize, PartialEq, Debug, Clone, Copy)]
    struct Meters(f64);
    #[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
    struct Frame {
        positions: Vec<f64>,
        weights: Vec<f32>,
        pair: (f64, f64),
        maybe: Vec<Option<f64>>,
        lengths: Vec<Meters>,
        empty: Vec<f64>,
    }
    let n = 1000;
    let frame = Frame {
        positions: (0..n).map(|i| i as f64 / 3.0).collect(),
        weights: (0..n).map(|i| i as f32 * 0.5).collect(),
        pair: (f64::NAN, -0.0),
        maybe: vec![Some(1.0), None],
        lengths: vec![Meters(2.5), Meters(-1.0)],
        empty: vec![],
    };
    let bytes = encode(&frame).unwrap();
    assert_eq!(bytes[0], TAGGED);
    assert!(bytes.len() < 12 * n + 200, "{} bytes", bytes.len());
    let back = round_trip(std::slice::from_ref(&frame)).remove(0);
    assert_eq!(back.positions, frame.positions);
    assert_eq!(back.weights, frame.weights);
    assert_eq!(back.pair.0.to_bits(), frame.pair.0.to_bits());
    assert_eq!(back.pair.1.to_bits(), frame.pair.1.to_bits());
    assert_eq!(back.maybe, frame.maybe);
    assert_eq!(back.lengths, frame.lengths);
    assert!(back.empty.is_empty());
    let odd = vec![
        f64::from_bits(0x7ff0_0000_0000_0001),
        f64::MIN_POSITIVE / 2.0,
    ];
    let mut packed = Vec::new();
    ser::encode_into(&Some(odd.clone()), &mut packed).unwrap();
    assert_eq!(packed[1], format::SEQ_F64);
    assert_eq!(packed.len(), 1 + 1 + 1 + 16);
    let (back, _) = fuzz::decode_one::<Option<Vec<f64>>>(&packed).unwrap();
    let bits = |v: &[f64]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&back.unwrap()), bits(&odd));
    #[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
    #[serde(untagged)]
    enum Number {
        Int(u64),
        Float(f64),
        Single(f32),
    }
    use Number::{Float, Int, Single};
    for mixed in [
        vec![Float(1.5), Float(2.5), Int(2)],
        vec![Int(2), Float(1.5)],
        vec![Float(1.5), Single(0.5)],
    ] {
        let mut out = Vec::new();
        ser::encode_into(&Some(&mixed), &mut out).unwrap();
        assert_eq!(out[1], format::SEQ, "{mixed:?}");
        // (Untagged, an `f32` reads back as the first variant that takes
        // it: `Float`.)
        let back = fuzz::decode_one::<Option<Vec<Number>>>(&out).unwrap().0;
        let widen = |n: &Number| match *n {
            Single(f) => Float(f64::from(f)),
            ref other => other.clone(),
        };
        assert_eq!(back, Some(mixed.iter().map(widen).collect()));
    }
    // A packed count the data cannot hold is an error; so is a
    // `Deserialize` impl that stops early.
    let forged = [format::SEQ_F64, 3, 0, 0, 0, 0, 0, 0, 0, 0];
    assert!(fuzz::decode_one::<Vec<f64>>(&forged).is_err());
    let two = [format::SEQ_F32, 2, 0, 0, 0, 0, 0, 0, 0, 0];
    assert!(fuzz::decode_one::<(f32,)>(&two).is_err());
    assert_eq!(fuzz::decode_one::<(f32, f32)>(&two).unwrap().0, (0.0, 0.0));
}

#[test]
fn a_lying_length_is_an_error_not_a_shift() {
    struct Liar;
    impl Serialize for Liar {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeSeq;
            let mut seq = s.serialize_seq(Some(3))?;
            seq.serialize_element(&1u32)?;
            seq.end()
        }
    }
    let mut out = Vec::new();
    let error = ser::encode_into(&Liar, &mut out).unwrap_err();
    assert!(error.message.contains("announced 3"), "{error}");
}

#[test]
fn garbage_is_an_error() {
    for garbage in [
        &[][..],
        &[9],
        &[TAGGED, 0xff],
        &[SHAPED, 200, 1],
        &[TAGGED, format::STR, 100],
    ] {
        let result = ChunkReader::new(garbage).and_then(|mut r| r.next::<String>());
        assert!(result.is_err(), "{garbage:?}");
    }
    assert!(ReplyReader::new(&[1, 2, 3]).is_err());
    assert!(ReplyReader::new(&u64::MAX.to_le_bytes()).is_err());
}

#[test]
fn replies_keep_failures_in_place() {
    let mut reply = ReplyWriter::<u64>::default();
    reply.value(&1).unwrap();
    reply.failure(Failure::new(crate::failure::FailureKind::Panicked, "boom"));
    reply.value(&3).unwrap();
    let bytes = reply.finish();
    let mut reader = ReplyReader::new(&bytes).unwrap();
    assert!(!reader.all_succeeded());
    assert_eq!(reader.next::<u64>().unwrap(), Ok(1));
    assert_eq!(reader.next::<u64>().unwrap().unwrap_err().message, "boom");
    assert_eq!(reader.next::<u64>().unwrap(), Ok(3));
    reader.finish().unwrap();

    let mut reply = ReplyWriter::<u64>::default();
    for i in 0..100 {
        reply.value(&i).unwrap();
    }
    let bytes = reply.finish();
    let mut reader = ReplyReader::new(&bytes).unwrap();
    let mut out: Vec<u64> = Vec::new();
    assert!(reader.values_into(100, &mut out).unwrap());
    assert_eq!(out, (0..100).collect::<Vec<_>>());
    reader.finish().unwrap();
}

#[derive(Serialize, Deserialize)]
enum Nest {
    Leaf,
    Node(Box<Nest>),
}

fn nest(levels: usize) -> Nest {
    let mut value = Nest::Leaf;
    for _ in 0..levels {
        value = Nest::Node(Box::new(value));
    }
    value
}

#[test]
fn deepest_value_decodes_on_a_small_stack() {
    let bytes = encode(&nest(format::MAX_DEPTH - 1)).unwrap();
    let too_deep = encode(&nest(format::MAX_DEPTH + 1)).unwrap_err();
    assert!(
        too_deep.message.contains("deeper than"),
        "{}",
        too_deep.message
    );
    // Half of the smallest thread stack procpool decodes on (2 MiB),
    // whatever the build's optimisation level.
    let decoded = std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(move || {
            let value = ChunkReader::new(&bytes).and_then(|mut r| r.next::<Nest>());
            let ok = value.is_ok();
            // Dropping recursively is the test's business, not the codec's.
            std::mem::forget(value);
            ok
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(decoded);
}

#[test]
fn a_deep_value_forged_past_the_encoder_is_refused_by_the_decoder() {
    // SOME SOME SOME ... : each level one byte, far past the limit.
    let mut bytes = vec![TAGGED];
    bytes.extend(std::iter::repeat_n(format::SOME, 100_000));
    bytes.push(format::UNIT);
    let error = ChunkReader::new(&bytes)
        .and_then(|mut r| r.next::<serde::de::IgnoredAny>())
        .unwrap_err();
    assert!(error.message.contains("deeper than"), "{}", error.message);
}

/// Garbage never panics the decoder nor makes it allocate wildly: every
/// byte string is a value or an error.
#[test]
fn random_bytes_are_values_or_errors() {
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Record {
        id: u64,
        name: Option<String>,
        tags: Vec<(u8, char)>,
        nested: Option<Box<Record>>,
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Valid chunks, cut and flipped, and pure noise.
    let seed = encode(&("text".to_string(), vec![Some(1u64), None], (1.5f64, 'x'))).unwrap();
    for round in 0..20_000 {
        let mut bytes = if round % 2 == 0 {
            seed.clone()
        } else {
            (0..(next() % 64)).map(|_| next() as u8).collect()
        };
        if !bytes.is_empty() {
            let at = (next() as usize) % bytes.len();
            bytes[at] ^= next() as u8;
            bytes.truncate(1 + (next() as usize) % bytes.len());
        }
        // The codec catches panics of Deserialize impls; none may come
        // from the codec itself.
        let no_panic = |result: Result<(), Problem>| {
            if let Err(problem) = result {
                assert!(!problem.panicked(), "{bytes:?}: {}", problem.message);
            }
        };
        let read = |f: &dyn Fn(&mut ChunkReader<'_>) -> Result<(), Problem>| {
            ChunkReader::new(&bytes).and_then(|mut reader| f(&mut reader))
        };
        no_panic(read(&|r| r.next::<Record>().map(drop)));
        no_panic(read(&|r| {
            r.next::<(String, Vec<Option<u64>>, (f64, char))>()
                .map(drop)
        }));
        no_panic(read(&|r| r.next::<serde::de::IgnoredAny>().map(drop)));
        no_panic(ReplyReader::new(&bytes).and_then(|mut r| r.next::<u64>().map(drop)));
    }
}

#[test]
fn the_last_item_can_be_taken_back_in_every_format() {
    // Raw, shaped, tagged, and an item that turned the chunk tagged.
    fn check<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + 'static>(items: &[T]) {
        let mut writer = ChunkWriter::default();
        for item in items {
            writer.push(item).unwrap();
        }
        writer.undo_last();
        assert_eq!(writer.len(), items.len() - 1);
        let bytes = writer.finish();
        let mut reader = ChunkReader::new(&bytes).unwrap();
        let mut out = Vec::new();
        reader.read_into::<T>(items.len() - 1, &mut out).unwrap();
        reader.finish().unwrap();
        assert_eq!(out, items[..items.len() - 1]);
    }
    check(&[1u64, 2, 3]);
    check(&[(1u8, "a".to_string()), (2, "b".to_string())]);
    check(&[Some(1u8), None]);
    /// A `u8` while small, a `u64` after: the third item changes the format.
    #[derive(PartialEq, Debug)]
    struct Flexible(u64);
    impl Serialize for Flexible {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            match u8::try_from(self.0) {
                Ok(small) => s.serialize_u8(small),
                Err(_) => s.serialize_u64(self.0),
            }
        }
    }
    impl<'de> Deserialize<'de> for Flexible {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            u64::deserialize(d).map(Flexible)
        }
    }
    check(&[Flexible(1), Flexible(2), Flexible(1000)]);
}

/// A chunk of `values`, and the chunk of the values after the first `skip`
/// cut from it, read back.
fn rest_of<T>(values: &[T], skip: usize) -> Vec<T>
where
    T: Serialize + DeserializeOwned + 'static,
{
    let mut chunk = ChunkWriter::default();
    for value in values {
        chunk.push(value).unwrap();
    }
    let rest = chunk_rest(&chunk.finish(), skip).unwrap();
    let mut reader = ChunkReader::new(&rest).unwrap();
    let mut out = Vec::new();
    reader.read_into(values.len() - skip, &mut out).unwrap();
    reader.finish().unwrap();
    out
}

#[test]
fn the_rest_of_a_chunk_holds_exactly_the_items_after_the_cut() {
    let numbers: Vec<u64> = (0..50).collect();
    assert_eq!(rest_of(&numbers, 17), numbers[17..]);
    assert_eq!(rest_of(&numbers, 0), numbers);
    let pairs: Vec<(String, Vec<u8>, f64)> = (0..20)
        .map(|i| ("x".repeat(i), vec![i as u8; i], i as f64 / 3.0))
        .collect();
    assert_eq!(rest_of(&pairs, 7), pairs[7..]);
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Tagged {
        #[serde(skip_serializing_if = "Option::is_none")]
        flag: Option<u8>,
        name: String,
    }
    let structs: Vec<Tagged> = (0..10)
        .map(|i| Tagged {
            flag: (i % 2 == 0).then_some(i),
            name: i.to_string(),
        })
        .collect();
    assert_eq!(rest_of(&structs, 3), structs[3..]);
    // More items to skip than the chunk holds is an error, not a short chunk.
    let mut chunk = ChunkWriter::default();
    chunk.push(&1).unwrap();
    assert!(chunk_rest(&chunk.finish(), 2).is_err());
}

#[test]
fn a_buffer_that_cannot_be_allocated_is_the_systems_refusal_not_a_bad_value() {
    // What a `try_reserve` beyond the address space gives (on 32-bit
    // targets too, where half of it may still be granted).
    let mut out = Vec::new();
    let error = super::error::reserve(&mut out, usize::MAX).unwrap_err();
    let problem = Problem::encode::<Vec<u8>>(error);
    assert!(problem.is_out_of_memory(), "{problem:?}");
    match super::error_for("j", "serialize argument 0".into(), problem) {
        crate::Error::System { context, cause } => {
            assert!(context.contains("not enough memory"), "{context}");
            assert_eq!(
                cause.io_error().kind(),
                std::io::ErrorKind::OutOfMemory,
                "{cause}"
            );
        }
        other => panic!("expected Error::System, got {other:?}"),
    }
    // A user's own message stays a serialization error, even one that
    // reads like the codec's: memory is told by the error's kind, not text.
    for text in ["evil", &super::error::out_of_memory(8).message] {
        let problem = Problem::encode::<u8>(super::error::CodecError::new(text));
        let user = super::error_for("j", "serialize argument 0".into(), problem);
        assert!(
            matches!(user, crate::Error::Serialization { .. }),
            "{user:?}"
        );
    }
    // Strings and byte strings decoded into owned values go through the
    // fallible copies and arrive whole.
    let text = "x".repeat(100_000);
    let bytes = serde_bytes::ByteBuf::from(vec![5u8; 100_000]);
    let plain = [
        (text.clone(), bytes.clone()),
        (String::new(), bytes.clone()),
    ];
    assert_eq!(round_trip(&plain), plain);
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Tagged {
        text: String,
        bytes: serde_bytes::ByteBuf,
        none: Option<String>,
    }
    let tagged = [Tagged {
        text,
        bytes,
        none: None,
    }];
    assert_eq!(round_trip(&tagged), tagged);
}

#[test]
fn usize_and_isize_are_written_as_serde_writes_them_on_every_target() {
    // serde writes a `usize` as a `u64` and an `isize` as an `i64`, also
    // where they are 4 bytes in memory: the raw path (every item after
    // the first) must write the same 8 bytes, and read them back.
    let sizes = [1usize, 2, usize::MAX];
    let mut raw = ChunkWriter::default();
    let mut wide = ChunkWriter::default();
    for size in sizes {
        raw.push(&size).unwrap();
        wide.push(&(size as u64)).unwrap();
    }
    let raw = raw.finish();
    assert_eq!(raw, wide.finish());
    let mut out = Vec::<usize>::new();
    ChunkReader::new(&raw)
        .unwrap()
        .read_into(3, &mut out)
        .unwrap();
    assert_eq!(out, sizes);

    let offsets = [-1isize, 0, isize::MIN];
    let mut raw = ChunkWriter::default();
    let mut wide = ChunkWriter::default();
    for offset in offsets {
        raw.push(&offset).unwrap();
        wide.push(&(offset as i64)).unwrap();
    }
    let raw = raw.finish();
    assert_eq!(raw, wide.finish());
    let mut out = Vec::<isize>::new();
    ChunkReader::new(&raw)
        .unwrap()
        .read_into(3, &mut out)
        .unwrap();
    assert_eq!(out, offsets);
}

/// The one varint rule (`format::read_varint`): exactly what `push_varint`
/// writes, nothing longer, nothing wider than 64 bits.
#[test]
fn varints_are_read_exactly_as_written() {
    use format::{MAX_VARINT, VarintError, push_varint, read_varint};
    let mut edges = vec![0, 1, 0x7f, 0x80, 0x3fff, 0x4000, u64::MAX - 1, u64::MAX];
    edges.extend((0..64).map(|bit| 1u64 << bit));
    edges.extend((1..64).map(|bit| (1u64 << bit) - 1));
    for value in edges {
        let mut bytes = Vec::new();
        push_varint(&mut bytes, value);
        assert!(bytes.len() <= MAX_VARINT);
        assert_eq!(read_varint(&bytes), Ok((value, bytes.len())), "{value}");
        // What follows is not read.
        bytes.push(0xff);
        assert_eq!(read_varint(&bytes), Ok((value, bytes.len() - 1)), "{value}");
        bytes.pop();
        // Every proper prefix is cut short, never a smaller number.
        for cut in 0..bytes.len() {
            assert_eq!(
                read_varint(&bytes[..cut]),
                Err(VarintError::CutShort),
                "{value} cut at {cut}"
            );
        }
    }
    // u64::MAX: nine bytes of 0xff, then bit 63 alone.
    let mut max = vec![0xff; 9];
    max.push(0x01);
    assert_eq!(read_varint(&max), Ok((u64::MAX, 10)));
    // A 10th byte carrying bits past 64 is refused, not truncated.
    for tenth in [0x02, 0x03, 0x7f] {
        let mut wide = vec![0xff; 9];
        wide.push(tenth);
        assert_eq!(
            read_varint(&wide),
            Err(VarintError::Malformed),
            "{tenth:#x}"
        );
    }
    // An 11-byte run (the 10th byte continues) is refused where it breaks
    // the rule, whatever follows.
    for run in [vec![0x80; 11], vec![0xff; 11], vec![0xff; 64]] {
        assert_eq!(read_varint(&run), Err(VarintError::Malformed));
    }
    let mut continued = vec![0x80; 9];
    continued.extend([0x81, 0x00]);
    assert_eq!(read_varint(&continued), Err(VarintError::Malformed));
    // Non-minimal encodings: a trailing zero byte.
    for padded in [
        &[0x80, 0x00][..],
        &[0x81, 0x00],
        &[0xff, 0x80, 0x00],
        &[0x80; 9],
    ] {
        let expected = if padded.len() == 9 {
            // Nine continuation bytes and nothing after: may still grow.
            Err(VarintError::CutShort)
        } else {
            Err(VarintError::Malformed)
        };
        assert_eq!(read_varint(padded), expected, "{padded:x?}");
    }
    let mut zero_tenth = vec![0x80; 9];
    zero_tenth.push(0x00);
    assert_eq!(read_varint(&zero_tenth), Err(VarintError::Malformed));
    assert_eq!(read_varint(&[]), Err(VarintError::CutShort));
}

/// Both decoders go through that reader and refuse the same varints (the
/// plain one used to read `0x80 0x00` as 0 and drop a 10th byte's bits
/// past 64).
#[test]
fn tagged_and_plain_decoders_refuse_the_same_varints() {
    let mut wide = vec![0xff; 9];
    wide.push(0x03);
    // Tagged: a u64 item.
    let mut tagged = vec![TAGGED, format::U64];
    tagged.extend(&wide);
    let error = ChunkReader::new(&tagged)
        .and_then(|mut r| r.next::<u64>())
        .unwrap_err();
    assert!(
        error.message.contains("not a valid varint"),
        "{}",
        error.message
    );
    // Plain: a string item's length, here `0x80 0x00` (0 in two bytes).
    let plain = [SHAPED, 1, plain::Kind::Str as u8, 0x80, 0x00];
    let error = ChunkReader::new(&plain)
        .and_then(|mut r| r.next::<String>())
        .unwrap_err();
    assert!(
        error.message.contains("not a valid varint"),
        "{}",
        error.message
    );
    let plain = [SHAPED, 1, plain::Kind::Str as u8, 0x00];
    assert_eq!(
        ChunkReader::new(&plain).and_then(|mut r| r.next::<String>()),
        Ok(String::new())
    );
    // A chunk header's shape length and a reply's failure count too.
    assert!(ChunkReader::new(&[SHAPED, 0x81, 0x00, 5]).is_err());
    let mut reply = vec![TAGGED, 0x80, 0x00];
    reply.extend(1u64.to_le_bytes());
    assert!(ReplyReader::new(&reply).is_err());
    let mut reply = vec![TAGGED, 0x00];
    reply.extend(1u64.to_le_bytes());
    assert!(ReplyReader::new(&reply).is_ok());
}

/// A shape deeper than any the writer makes (it keeps shapes to
/// `MAX_SHAPE` bytes) is refused before the decoder recurses into it: a
/// forged header of 100 000 nested one-element tuples used to overflow the
/// decoding thread's stack (a crash, not an error).
#[test]
fn a_forged_deep_shape_is_an_error_not_a_stack_overflow() {
    let mut shape = Vec::new();
    for _ in 0..100_000 {
        shape.extend([plain::Kind::Tuple as u8, 1]);
    }
    shape.push(plain::Kind::Unit as u8);
    let mut chunk = vec![SHAPED];
    format::push_varint(&mut chunk, shape.len() as u64);
    chunk.extend(&shape);
    let outcome = std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(move || {
            ChunkReader::new(&chunk)
                .and_then(|mut r| r.next::<serde::de::IgnoredAny>())
                .map(drop)
        })
        .unwrap()
        .join()
        .unwrap();
    let error = outcome.unwrap_err();
    assert!(error.message.contains("shape"), "{}", error.message);
}

/// A plain tuple's length comes from the chunk's shape, which is input
/// like any other: it is checked against what is left of the shape (each
/// element takes a byte of it) before a `Deserialize` impl sees it as a
/// size hint. It used to reach the impl unchecked: 2^60 made serde's
/// `Vec` preallocate 1 MiB, and an impl that trusts the hint panicked.
#[test]
fn a_plain_tuples_length_is_checked_before_it_is_a_size_hint() {
    struct Trusting;
    impl<'de> Deserialize<'de> for Trusting {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Trusting;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a tuple")
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<Trusting, A::Error> {
                    let mut all: Vec<u64> = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                    while let Some(item) = seq.next_element()? {
                        all.push(item);
                    }
                    Ok(Trusting)
                }
            }
            d.deserialize_tuple(2, Visit)
        }
    }
    let mut shape = vec![plain::Kind::Tuple as u8];
    format::push_varint(&mut shape, 1 << 60);
    shape.push(plain::Kind::U64 as u8);
    let mut chunk = vec![SHAPED];
    format::push_varint(&mut chunk, shape.len() as u64);
    chunk.extend(&shape);
    chunk.extend(7u64.to_le_bytes());
    let error = ChunkReader::new(&chunk)
        .and_then(|mut r| r.next::<Trusting>().map(drop))
        .unwrap_err();
    assert!(!error.panicked(), "{}", error.message);
    assert!(error.message.contains("shape"), "{}", error.message);
}

/// Inputs the fuzz targets (`fuzz/`) stopped on, kept passing through
/// their checks.
#[test]
fn fuzz_finds_stay_fixed() {
    // A shape of one-element tuples of `()`: items of no bytes, which
    // `Vec<Option<u64>>` reads as `[None]` forever (serde takes a unit
    // for `None`). Not a decoder bug: the check took it for a read past
    // the end.
    fuzz::chunk_reader(&[
        SHAPED,
        3,
        plain::Kind::Tuple as u8,
        1,
        plain::Kind::Unit as u8,
    ]);
    fuzz::plain_reader(&[0x43, plain::Kind::Tuple as u8, 1, plain::Kind::Unit as u8]);
}

/// The room reserved for a string or byte string is exactly what is
/// written: `varint_len` agrees with `push_varint` at every width.
#[test]
fn varint_len_is_what_push_varint_writes() {
    let mut values = vec![0u64, 1, u64::MAX];
    values.extend((0..64).map(|bit| 1u64 << bit));
    values.extend((1..64).map(|bit| (1u64 << bit) - 1));
    for value in values {
        let mut bytes = Vec::new();
        format::push_varint(&mut bytes, value);
        assert_eq!(format::varint_len(value), bytes.len(), "{value}");
    }
}

/// A byte string's borrowed chunk is, head and value together, exactly the
/// chunk the writer makes of it, at every length a varint changes width;
/// other items have none.
#[test]
fn a_borrowed_chunk_is_the_chunk_the_writer_makes() {
    for len in [0usize, 1, 127, 128, 16383, 16384, 70_000] {
        let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let (head, tail) = super::borrowed_chunk(&bytes).unwrap();
        assert_eq!(
            [head.as_slice(), tail].concat(),
            super::encode(&bytes).unwrap()
        );
        let text = "é".repeat(len / 2);
        let (head, tail) = super::borrowed_chunk(&text).unwrap();
        assert_eq!(
            [head.as_slice(), tail].concat(),
            super::encode(&text).unwrap()
        );
    }
    assert!(super::borrowed_chunk(&5u64).is_none());
    // A vector of numbers: its count, then its memory.
    for len in [0usize, 1, 127, 128, 16384] {
        let floats: Vec<f64> = (0..len).map(|i| i as f64 / 3.0).collect();
        let (head, tail) = super::borrowed_chunk(&floats).unwrap();
        assert_eq!(tail.len(), 8 * len);
        assert_eq!(
            [head.as_slice(), tail].concat(),
            super::encode(&floats).unwrap()
        );
        let small: Vec<i32> = (0..len as i32).map(|i| -i).collect();
        let (head, tail) = super::borrowed_chunk(&small).unwrap();
        assert_eq!(
            [head.as_slice(), tail].concat(),
            super::encode(&small).unwrap()
        );
    }
    assert!(super::borrowed_chunk(&vec![1u16]).is_none());
}

/// A run of plain numbers is taken only once the chunk has its shape,
/// stops at the item and byte limits without taking an item more, and
/// writes the bytes pushing one at a time writes.
#[test]
fn a_raw_run_takes_exactly_what_fits_and_writes_what_pushes_write() {
    let mut items = 0..100u64;
    let mut run = ChunkWriter::default();
    // No shape yet: nothing taken.
    assert_eq!(run.extend_raw(&mut items, |x| x, 50, usize::MAX), 0);
    run.push(&items.next().unwrap()).unwrap();
    assert_eq!(run.extend_raw(&mut items, |x| x, 50, usize::MAX), 49);
    assert_eq!(run.len(), 50);
    assert_eq!(
        items.clone().next(),
        Some(50),
        "an item taken and not written"
    );
    // Full: nothing more.
    assert_eq!(run.extend_raw(&mut items, |x| x, 50, usize::MAX), 0);
    let mut pushed = ChunkWriter::default();
    for i in 0..50u64 {
        pushed.push(&i).unwrap();
    }
    assert_eq!(run.written(), pushed.written());
    // A byte limit: items until the chunk holds at least that many bytes.
    let mut small = ChunkWriter::default();
    small.push(&1i32).unwrap();
    let header = small.byte_len() - 4;
    let mut more = [2i32, 3, 4, 5, 6].into_iter();
    assert_eq!(small.extend_raw(&mut more, |x| x, 100, header + 10), 2);
    assert_eq!(more.next(), Some(4));
    // Other items are never taken.
    let mut texts = vec![String::from("a"); 3].into_iter();
    let mut chunk = ChunkWriter::default();
    chunk.push(&String::new()).unwrap();
    assert_eq!(chunk.extend_raw(&mut texts, |x| x, 10, usize::MAX), 0);
    assert_eq!(texts.len(), 3);
    // A unit has no bytes: the item limit alone.
    let mut units = std::iter::repeat_n((), 10);
    let mut chunk = ChunkWriter::default();
    chunk.push(&()).unwrap();
    assert_eq!(chunk.extend_raw(&mut units, |x| x, 4, 0), 3);
    assert_eq!(units.count(), 7);
    // A chunk size far beyond the input reserves for the input only.
    let mut few = 0..10u64;
    let mut chunk = ChunkWriter::default();
    chunk.push(&few.next().unwrap()).unwrap();
    let largest = crate::test_alloc::largest_during(|| {
        assert_eq!(chunk.extend_raw(&mut few, |x| x, 1 << 40, usize::MAX), 9);
    });
    assert!(largest < 4096, "{largest} bytes allocated for 9 numbers");
}

/// A newtype around a `u8` in a sequence reads back from the packed
/// bytes, as it does from a tagged value (serde's own deserializer of a
/// byte took only the byte: `Vec<Level>` in a struct failed to decode).
#[test]
fn packed_bytes_read_back_as_newtypes() {
    #[derive(Serialize, Deserialize, PartialEq, Debug, Clone, Copy)]
    struct Level(u8);
    #[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
    struct Image {
        levels: Vec<Level>,
    }
    let image = Image {
        levels: vec![Level(1), Level(200)],
    };
    assert_eq!(round_trip(std::slice::from_ref(&image)), vec![image]);
}
