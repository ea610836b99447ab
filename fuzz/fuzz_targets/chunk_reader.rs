//! A chunk of items (`ChunkReader`), tagged or plain, as several types.
//! `procpool::__fuzz::chunk_reader` panics if the codec misbehaves.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| procpool::__fuzz::chunk_reader(data));
