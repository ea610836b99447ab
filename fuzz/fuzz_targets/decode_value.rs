//! One value of the tagged format (`de::Decoder`), as several types.
//! `procpool::__fuzz::decode_value` panics if the codec misbehaves.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| procpool::__fuzz::decode_value(data));
