//! A worker's reply (`ReplyReader`): values, failures and the trailer.
//! `procpool::__fuzz::reply_reader` panics if the codec misbehaves.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| procpool::__fuzz::reply_reader(data));
