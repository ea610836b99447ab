//! A cluster worker from another program: its jobs differ from those of the
//! test binaries, so callers there must see their tasks refused.

use procpool::pool_job;

/// Same registered name as a job of tests/cluster.rs, other types.
#[pool_job(name = "cluster::square")]
fn square(x: u32) -> u32 {
    x * x
}

fn main() -> Result<(), procpool::Error> {
    let url = std::env::args()
        .nth(1)
        .expect("usage: procpool-other-worker <cluster URL>");
    assert_eq!(square(3), 9);
    procpool::cluster::serve(&url)
}
