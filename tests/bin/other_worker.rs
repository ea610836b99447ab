//! A cluster worker from another program, as from an older build: one job
//! has the same name as in tests/cluster.rs with other types, another is
//! the same in both, so a rolling deploy can be played.

use procpool::pool_job;

/// Same registered name as a job of tests/cluster.rs, other types.
#[pool_job(name = "cluster::square")]
fn square(x: u32) -> u32 {
    x * x
}

/// The same name and types as in tests/cluster.rs: both builds run it.
#[pool_job(name = "cluster::tagged_add")]
fn tagged_add(a: i64, b: i64) -> (i64, u32) {
    std::thread::sleep(std::time::Duration::from_millis(20));
    (a + b, std::process::id())
}

fn main() -> Result<(), procpool::Error> {
    let url = std::env::args()
        .nth(1)
        .expect("usage: procpool-other-worker <cluster URL>");
    assert_eq!(square(3), 9);
    procpool::cluster::serve(&url)
}
