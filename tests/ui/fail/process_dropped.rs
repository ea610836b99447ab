//! `Process::spawn(f, x)?;` on its own line would start the process and
//! kill it at once (dropping the handle kills it): a warning says so, made
//! an error here.
#![deny(unused_must_use)]

use procpool::{pool_job, Process};

#[pool_job]
fn square(x: u64) -> u64 {
    x * x
}

fn main() -> Result<(), procpool::Error> {
    Process::spawn(square, 3)?;
    Ok(())
}
