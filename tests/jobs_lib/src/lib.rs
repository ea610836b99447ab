//! Jobs that live in a library crate and run in pools built by other crates.

use procpool::pool_job;
use serde::{Deserialize, Serialize};

/// A value type defined next to the jobs that use it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Horizontal coordinate.
    pub x: i64,
    /// Vertical coordinate.
    pub y: i64,
}

/// Manhattan length of a point.
///
/// ```
/// use procpool_test_jobs::{Point, manhattan};
///
/// assert_eq!(manhattan(Point { x: 3, y: -4 }), 7);
/// ```
#[pool_job]
pub fn manhattan(p: Point) -> i64 {
    p.x.abs() + p.y.abs()
}

/// The process id of the worker running the job.
#[pool_job]
pub fn worker_pid() -> u32 {
    std::process::id()
}
