//! Plain items: the input's first byte is the length of the shape that follows, the rest are the items.
//! `procpool::__fuzz::plain_reader` panics if the codec misbehaves.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| procpool::__fuzz::plain_reader(data));
