//! Doc comments, `#[inline]` and lint attributes on a job are kept: this
//! crate denies warnings and missing docs, so a lost doc comment or `allow`
//! would fail the build.
#![deny(warnings, missing_docs)]

/// Jobs with attributes.
pub mod jobs {
    use procpool::pool_job;

    /// Squares a number. (Without this doc comment, `missing_docs` fails.)
    #[pool_job]
    #[inline]
    pub fn square(x: u64) -> u64 {
        x * x
    }

    /// Ignores its second argument; the `allow` keeps that from warning.
    #[pool_job]
    #[allow(unused_variables)]
    #[inline(never)]
    pub fn first(a: u64, ignored: u64) -> u64 {
        a
    }

    /// A job still usable while deprecated, under an `allow`.
    #[pool_job]
    #[deprecated(note = "use `square`")]
    pub fn old_square(x: u64) -> u64 {
        x * x
    }
}

#[allow(deprecated)]
fn main() {
    let pool = procpool::Pool::with_processes(1).unwrap();
    assert_eq!(pool.map(jobs::square, 1..4).unwrap(), vec![1, 4, 9]);
    assert_eq!(pool.apply(jobs::first, (7, 8)).unwrap(), 7);
    assert_eq!(pool.apply(jobs::old_square, 5).unwrap(), 25);
}
