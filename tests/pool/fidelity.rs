//! Exact or an error: every serde type a job takes or returns arrives as
//! sent, through `apply` (one item), a chunked `map` of 10 000 items, and a
//! payload over 1 MiB (the shared-memory path), or the call fails with an
//! error that names the type and keeps the impl's own words.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::process::Command;
use std::time::{Duration, Instant};

use procpool::{Error, Pool, pool_job};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Round-trips `value` through `echo` (apply, and a map of 10 000 copies
/// cut into chunks) and through `padded` with 3 MiB of bytes beside it.
fn check<T, J1, J2>(echo: J1, padded: J2, value: T)
where
    T: Serialize + DeserializeOwned + Clone + PartialEq + Debug + Send + 'static,
    J1: procpool::IntoJob<Args = (T,), Output = T> + Copy,
    J2: procpool::IntoJob<Args = ((Vec<u8>, T),), Output = (Vec<u8>, T)>,
{
    let pool = Pool::with_processes(2).unwrap();
    assert_eq!(pool.apply(echo, value.clone()).unwrap(), value, "apply");
    let many = vec![value.clone(); 10_000];
    let back = pool.map(echo, many.clone()).unwrap();
    assert!(back == many, "map of 10 000: first {:?}", back.first());
    let pad: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    let (pad_back, value_back) = pool.apply(padded, (pad.clone(), value.clone())).unwrap();
    assert!(pad_back == pad, "3 MiB of bytes came back different");
    assert_eq!(value_back, value, "beside 3 MiB");
}

/// One test per type: its echo jobs, and `check` on `value`.
macro_rules! fidelity {
    ($($name:ident: $ty:ty = $value:expr;)*) => {$(
        mod $name {
            use super::*;

            #[pool_job]
            fn echo(x: $ty) -> $ty {
                x
            }

            #[pool_job]
            fn padded(x: (Vec<u8>, $ty)) -> (Vec<u8>, $ty) {
                x
            }

            #[test]
            fn round_trips() {
                check(echo, padded, $value);
            }
        }
    )*};
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Packet {
    #[serde(skip_serializing_if = "Option::is_none")]
    flag: Option<u8>,
    id: u32,
    payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Defaults {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tags: Vec<String>,
    #[serde(default = "seven", skip_serializing_if = "is_seven")]
    level: u8,
    name: String,
}

fn seven() -> u8 {
    7
}

fn is_seven(level: &u8) -> bool {
    *level == 7
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Renamed {
    first_name: String,
    #[serde(rename = "n")]
    number_of_things: i16,
    kind: RenamedKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum RenamedKind {
    BigThing,
    #[serde(rename = "tiny")]
    SmallThing(u8),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
enum Internally {
    Circle {
        radius: u32,
    },
    Rect {
        w: u32,
        h: u32,
        label: Option<String>,
    },
    Empty,
    Wrapped(Inner),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", content = "c")]
enum Adjacently {
    Num(i64),
    Pair(String, bool),
    Named { a: Vec<u16> },
    Nothing,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Untagged {
    Number(u64),
    Text(String),
    Pair(u8, i8),
    Record { key: String, value: Option<i32> },
    List(Vec<Untagged>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Inner {
    x: i32,
    y: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FlattenStruct {
    id: u32,
    #[serde(flatten)]
    inner: Inner,
    after: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FlattenMap {
    name: String,
    #[serde(flatten)]
    extra: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct UnitStruct;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Newtype(u64);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TupleStruct(u8, String, Option<Newtype>, UnitStruct);

/// Floats compared by their bits: NaN payloads and the sign of zero count.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Floats {
    doubles: Vec<f64>,
    singles: Vec<f32>,
    pair: (f64, f32),
}

impl PartialEq for Floats {
    fn eq(&self, other: &Self) -> bool {
        let d = |v: &[f64]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let s = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        d(&self.doubles) == d(&other.doubles)
            && s(&self.singles) == s(&other.singles)
            && self.pair.0.to_bits() == other.pair.0.to_bits()
            && self.pair.1.to_bits() == other.pair.1.to_bits()
    }
}

fn odd_floats() -> Floats {
    Floats {
        doubles: vec![
            f64::NAN,
            -f64::NAN,
            f64::from_bits(0x7ff0_0000_0000_0001), // a signalling NaN with a payload
            f64::from_bits(0x7ff8_dead_beef_0001),
            -0.0,
            0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE / 2.0, // subnormal
            0.1,
        ],
        singles: vec![f32::NAN, f32::from_bits(0x7f80_0001), -0.0, f32::MAX],
        pair: (-0.0, f32::from_bits(0xffc0_0042)),
    }
}

mod as_text {
    use super::*;

    pub(super) fn serialize<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("#{value}"))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.strip_prefix('#')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| serde::de::Error::custom(format!("bad text {text:?}")))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct With {
    #[serde(with = "as_text")]
    count: u64,
    #[serde(with = "serde_bytes")]
    raw: Vec<u8>,
    when: Duration,
}

fn json() -> serde_json::Value {
    serde_json::json!({
        "name": "procpool",
        "n": -3,
        "big": u64::MAX,
        "ratio": 0.25,
        "tags": ["a", null, true, {"deep": [1, [2, [3]]]}],
        "empty": {},
    })
}

type KeyedMaps = (
    BTreeMap<(u8, i64), Vec<u8>>,
    HashMap<u64, String>,
    BTreeMap<Keyed, bool>,
);
type NestedOptions = (
    Vec<Option<Option<u8>>>,
    Option<()>,
    Option<Option<()>>,
    Option<Option<Option<i8>>>,
);

fidelity! {
    skip_serializing_if_absent: Packet = Packet { flag: None, id: 1, payload: vec![2, 2, 9, 9] };
    skip_serializing_if_present: Packet = Packet { flag: Some(4), id: 2, payload: vec![] };
    default_fields: Defaults = Defaults { tags: vec![], level: 7, name: "d".into() };
    default_fields_set: Defaults = Defaults { tags: vec!["x".into()], level: 1, name: "".into() };
    rename_and_rename_all: Vec<Renamed> = vec![
        Renamed { first_name: "Ada".into(), number_of_things: -2, kind: RenamedKind::BigThing },
        Renamed { first_name: "Bo".into(), number_of_things: 9, kind: RenamedKind::SmallThing(3) },
    ];
    internally_tagged: Vec<Internally> = vec![
        Internally::Circle { radius: 3 },
        Internally::Rect { w: 1, h: 2, label: None },
        Internally::Rect { w: 1, h: 2, label: Some("r".into()) },
        Internally::Empty,
        Internally::Wrapped(Inner { x: -1, y: None }),
    ];
    adjacently_tagged: Vec<Adjacently> = vec![
        Adjacently::Num(-5),
        Adjacently::Pair("p".into(), true),
        Adjacently::Named { a: vec![1, 65535] },
        Adjacently::Nothing,
    ];
    untagged: Vec<Untagged> = vec![
        Untagged::Number(u64::MAX),
        Untagged::Text("t".into()),
        Untagged::Pair(255, -128),
        Untagged::Record { key: "k".into(), value: None },
        Untagged::Record { key: "k".into(), value: Some(-7) },
        Untagged::List(vec![Untagged::Number(1), Untagged::List(vec![])]),
    ];
    flatten_struct: FlattenStruct = FlattenStruct { id: 5, inner: Inner { x: 7, y: Some("y".into()) }, after: true };
    flatten_map: FlattenMap = FlattenMap {
        name: "n".into(),
        extra: [("a".to_string(), 1), ("zz".to_string(), u32::MAX)].into_iter().collect(),
    };
    json_value: serde_json::Value = json();
    wide_integers: (i128, u128, i128) = (i128::MIN, u128::MAX, -1);
    non_string_keys: KeyedMaps = (
        [((1, -1), vec![1]), ((0, i64::MIN), vec![])].into_iter().collect(),
        [(7, "seven".to_string()), (u64::MAX, String::new())].into_iter().collect(),
        [(Keyed(3), true)].into_iter().collect(),
    );
    nested_options: NestedOptions = (
        vec![None, Some(None), Some(Some(0)), Some(Some(255))],
        Some(()),
        Some(None),
        Some(Some(None)),
    );
    unit_newtype_tuple_structs: (UnitStruct, Newtype, TupleStruct) = (
        UnitStruct,
        Newtype(u64::MAX),
        TupleStruct(1, "t".into(), Some(Newtype(2)), UnitStruct),
    );
    floats_bit_exact: Floats = odd_floats();
    serde_with: With = With { count: 42, raw: vec![0, 255, 7], when: Duration::new(5, 999_999_999) };
    plain_tuple: (u64, i32, f64, bool, char, String, u8) = (u64::MAX, i32::MIN, -0.0, true, 'é', "s".into(), 200);
    plain_array: [u16; 8] = [0, 1, 2, 3, 65535, 5, 6, 7];
    plain_string: String = "ünïcode ✓".repeat(3);
    plain_bytes: Vec<u8> = (0..=255).collect();
    unit: () = ();
    raw_u64: u64 = u64::MAX - 1;
    raw_i64: i64 = i64::MIN + 1;
    raw_u32: u32 = u32::MAX;
    raw_i32: i32 = -5;
    raw_usize: usize = usize::MAX;
    raw_isize: isize = isize::MIN;
    raw_f64: f64 = -1.5e300;
    raw_f32: f32 = -1.25;
    chars_and_bools: Vec<(char, bool)> = vec![('\0', false), ('\u{10FFFF}', true)];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Keyed(u64);

/// Written as a `u8` when small and a `u64` otherwise: the items of one
/// chunk change shape half way.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Flexible(u64);

impl Serialize for Flexible {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match u8::try_from(self.0) {
            Ok(small) => serializer.serialize_u8(small),
            Err(_) => serializer.serialize_u64(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Flexible {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        u64::deserialize(deserializer).map(Flexible)
    }
}

#[pool_job]
fn flexible_next(x: Flexible) -> Flexible {
    Flexible(x.0 + 1)
}

#[test]
fn items_whose_shape_changes_within_a_chunk() {
    let pool = Pool::with_processes(2).unwrap();
    let input: Vec<Flexible> = (0..10_000).map(Flexible).collect();
    let out = pool.chunksize(10_000).map(flexible_next, input).unwrap();
    assert_eq!(out, (1..=10_000).map(Flexible).collect::<Vec<_>>());
}

#[pool_job]
fn square(x: u64) -> u64 {
    x * x
}

#[pool_job]
fn negate(x: i64) -> i64 {
    -x
}

#[test]
fn raw_items_by_reference_and_by_value() {
    // Items copied as their own bytes in the caller, owned or borrowed,
    // in chunks the pool sizes and in chunks of one.
    let pool = Pool::with_processes(2).unwrap();
    let input: Vec<i64> = (0..50_000).map(|i| i * 7919 - 100_000_000).collect();
    let expected: Vec<i64> = input.iter().map(|x| -x).collect();
    assert_eq!(pool.map(negate, &input).unwrap(), expected);
    assert_eq!(pool.map(negate, input.clone()).unwrap(), expected);
    assert_eq!(
        pool.chunksize(1).map(negate, &input[..50]).unwrap(),
        expected[..50]
    );
    let lazy: Vec<i64> = pool
        .imap(negate, &input[..1000])
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(lazy, expected[..1000]);
}

#[test]
fn plain_integers_in_bulk() {
    let pool = Pool::with_processes(2).unwrap();
    let out = pool.map(square, 0..1_000_000u64).unwrap();
    assert_eq!(out.len(), 1_000_000);
    assert!(
        out.iter()
            .enumerate()
            .all(|(i, &v)| v == (i as u64) * (i as u64))
    );
}

// ---- Errors keep their words ----

/// Refuses to be decoded, with a message of its own.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Evil(u8);

impl<'de> Deserialize<'de> for Evil {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = u8::deserialize(deserializer)?;
        if n == 42 {
            return Err(serde::de::Error::custom("evil-message-42"));
        }
        Ok(Evil(n))
    }
}

#[pool_job]
fn takes_evil(x: Evil) -> u8 {
    x.0
}

#[pool_job]
fn makes_evil(n: u8) -> Evil {
    Evil(n)
}

/// Refuses to be serialized when it holds 13.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Unlucky(u8);

impl Serialize for Unlucky {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0 == 13 {
            return Err(serde::ser::Error::custom("unlucky-13 refuses"));
        }
        serializer.serialize_u8(self.0)
    }
}

#[pool_job]
fn makes_unlucky(n: u8) -> Unlucky {
    Unlucky(n)
}

fn expect_serialization(error: Error, words: &[&str]) {
    match &error {
        Error::Serialization { message, .. } => {
            for word in words {
                assert!(message.contains(word), "{word:?} missing from: {message}");
            }
        }
        other => panic!("expected Error::Serialization, got {other:?}"),
    }
}

#[test]
fn a_custom_deserialize_error_keeps_its_message() {
    let pool = Pool::with_processes(1).unwrap();
    // In the worker, decoding the argument:
    let error = pool.apply(takes_evil, Evil(42)).unwrap_err();
    expect_serialization(error, &["evil-message-42", "fidelity::Evil"]);
    // In the caller, decoding the result:
    let error = pool.apply(makes_evil, 42).unwrap_err();
    expect_serialization(error, &["evil-message-42", "fidelity::Evil"]);
    // Other items and calls are unaffected.
    assert_eq!(
        pool.map(makes_evil, [1, 2]).unwrap(),
        vec![Evil(1), Evil(2)]
    );
}

#[test]
fn a_custom_serialize_error_keeps_its_message() {
    let pool = Pool::with_processes(1).unwrap();
    let error = pool.map(makes_unlucky, [1, 13, 2]).unwrap_err();
    expect_serialization(error, &["unlucky-13 refuses", "fidelity::Unlucky"]);
    // In the caller, serializing the argument:
    let error = pool.apply(makes_unlucky_arg, Unlucky(13)).unwrap_err();
    expect_serialization(error, &["unlucky-13 refuses"]);
    assert_eq!(pool.apply(makes_unlucky, 3).unwrap(), Unlucky(3));
}

#[pool_job]
fn makes_unlucky_arg(x: Unlucky) -> u8 {
    x.0
}

/// Panics while being decoded or encoded.
#[derive(Debug, Clone, PartialEq)]
struct Grenade(u8);

impl Serialize for Grenade {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0 == 1 && procpool::current_process().name() != "MainProcess" {
            panic!("grenade-serialize went off");
        }
        serializer.serialize_u8(self.0)
    }
}

impl<'de> Deserialize<'de> for Grenade {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = u8::deserialize(deserializer)?;
        if n == 2 && procpool::current_process().name() != "MainProcess" {
            panic!("grenade-deserialize went off");
        }
        Ok(Grenade(n))
    }
}

#[pool_job]
fn grenade_in(g: Grenade) -> u32 {
    let _ = g;
    std::process::id()
}

#[pool_job]
fn grenade_out(n: u8) -> Grenade {
    Grenade(n)
}

#[test]
fn a_panic_in_serde_impls_in_the_worker_is_a_panic_error_and_the_worker_survives() {
    // retries(3): a crash would be re-run; a panic must not be.
    let pool = Pool::builder().processes(1).retries(3).build().unwrap();
    let pid = pool.apply(grenade_in, Grenade(0)).unwrap();

    let started = Instant::now();
    match pool.apply(grenade_in, Grenade(2)).unwrap_err() {
        Error::Panicked { message, .. } => {
            assert!(
                message.contains("grenade-deserialize went off"),
                "{message}"
            );
            assert!(message.contains("Deserialize"), "{message}");
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    match pool.apply(grenade_out, 1).unwrap_err() {
        Error::Panicked { message, .. } => {
            assert!(message.contains("grenade-serialize went off"), "{message}");
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    // Same worker: it neither died nor was replaced.
    assert_eq!(pool.apply(grenade_in, Grenade(0)).unwrap(), pid);
}

// ---- Deep values ----

#[derive(Debug, Serialize, Deserialize)]
enum Nest {
    Leaf,
    Node(Box<Nest>),
}

impl Nest {
    fn deep(levels: usize) -> Nest {
        let mut value = Nest::Leaf;
        for _ in 0..levels {
            value = Nest::Node(Box::new(value));
        }
        value
    }

    fn depth(&self) -> usize {
        let mut depth = 0;
        let mut at = self;
        while let Nest::Node(next) = at {
            depth += 1;
            at = next;
        }
        depth
    }
}

impl Drop for Nest {
    // Iterative, so that dropping a deep value cannot overflow the stack.
    fn drop(&mut self) {
        let Nest::Node(child) = self else { return };
        let mut next = std::mem::replace(&mut **child, Nest::Leaf);
        while let Nest::Node(child) = &mut next {
            // The old `next` is dropped here with a leaf inside: one level.
            next = std::mem::replace(&mut **child, Nest::Leaf);
        }
    }
}

#[pool_job]
fn nest(levels: usize) -> Nest {
    Nest::deep(levels)
}

#[pool_job]
fn nest_depth(n: Nest) -> usize {
    n.depth()
}

#[test]
fn moderately_deep_values_cross() {
    let pool = Pool::with_processes(1).unwrap();
    assert_eq!(pool.apply(nest, 200).unwrap().depth(), 200);
    assert_eq!(pool.apply(nest_depth, Nest::deep(200)).unwrap(), 200);
}

/// Run by `a_very_deep_value_fails_cleanly` in a process of its own, so a
/// stack overflow here could not take the test runner down with it.
#[test]
#[ignore = "run by a_very_deep_value_fails_cleanly in a child process"]
fn helper_very_deep_value() {
    let pool = Pool::with_processes(1).unwrap();
    for levels in [60_000, 300_000] {
        let error = pool.apply(nest, levels).unwrap_err();
        println!("RESULT {levels}: {error}");
        expect_serialization(error, &["deeper than"]);
        // The argument side: refused before anything is sent.
        let error = pool.apply(nest_depth, Nest::deep(levels)).unwrap_err();
        expect_serialization(error, &["deeper than"]);
    }
    assert_eq!(pool.apply(nest, 3).unwrap().depth(), 3);
    println!("SURVIVED");
}

#[test]
fn a_very_deep_value_fails_cleanly() {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "fidelity::helper_very_deep_value",
            "--ignored",
            "--nocapture",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("SURVIVED"),
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
