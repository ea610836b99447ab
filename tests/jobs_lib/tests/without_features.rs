//! Compile-time errors of procpool built without its optional features
//! (this crate depends on it with none; the `procpool-tests` crate, where
//! the other compile-fail cases are, turns them on).
//!
//! After changing a message, refresh the expected output with
//! `TRYBUILD=overwrite cargo test -p procpool-test-jobs --test without_features`.

#[test]
fn ui() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
