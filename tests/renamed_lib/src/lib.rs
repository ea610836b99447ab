//! Jobs declared through a renamed dependency: `procpool2 = { package = "procpool" }`.

use procpool2::pool_job;

/// Doubles a number.
#[pool_job(crate = "procpool2")]
pub fn double(x: i32) -> i32 {
    x * 2
}

/// Jobs in a nested module, called through the full attribute path.
pub mod text {
    /// Joins two words.
    #[procpool2::pool_job(crate = "procpool2", name = "renamed.join")]
    pub fn join(a: String, b: String) -> String {
        format!("{a} {b}")
    }

    /// A leading `::` is accepted too.
    #[procpool2::pool_job(crate = "::procpool2")]
    pub fn length(s: String) -> usize {
        s.len()
    }
}
