use super::*;
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
    reply.failure(Failure::new(crate::wire::FailureKind::Panicked, "boom"));
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
    // What a `try_reserve` beyond the address space gives.
    let mut out = Vec::new();
    let error = super::error::reserve(&mut out, usize::MAX / 2).unwrap_err();
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
