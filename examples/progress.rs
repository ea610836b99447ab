//! Progress bars for long calls: `cargo run --release --features progress --example progress`
//! in a terminal. A `map` shows done/total, the rate and an ETA; so does an
//! `imap` over an input that knows its length; an endless `imap` shows a
//! count and the rate. Nothing is drawn when stderr is not a terminal.

use std::time::Duration;

use procpool::{Pool, pool_job};

/// A few milliseconds of work per item.
#[pool_job]
fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(3));
    x * x
}

fn main() -> Result<(), procpool::Error> {
    let pool = Pool::builder().processes(2).progress(true).build()?;
    let squares = pool.chunksize(10).map(slow_square, 0..1_000)?;
    println!("map: {} squares", squares.len());
    let sum = pool.imap(slow_square, 0..1_000).sum::<Result<u64, _>>()?;
    println!("imap: sum {sum}");
    let first: Vec<u64> = pool
        .imap_unordered(slow_square, 0u64..)
        .take(500)
        .collect::<Result<_, _>>()?;
    println!("imap_unordered of an endless input: took {}", first.len());
    Ok(())
}
