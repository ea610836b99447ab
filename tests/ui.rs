//! Compile-time checks of `#[pool_job]` and the `Pool` API, with trybuild.
//!
//! - `ui/fail/*.rs` must not compile; the compiler's output must match the
//!   `.stderr` file next to each case, so every message is reviewed.
//! - `ui/pass/*.rs` must compile and run: each `main` starts a one-process
//!   pool and checks the job's results, so they prove the job works in a
//!   worker, not only that it type-checks.
//!
//! After changing a message, refresh the expected output with
//! `TRYBUILD=overwrite cargo test -p procpool-tests --test ui` and review the diff.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("ui/pass/*.rs");
    cases.compile_fail("ui/fail/*.rs");
}
