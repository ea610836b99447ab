//! `Pool.map` blocks: the workers print as they go, and the main process
//! continues only once every result is in.
//!
//! Python:
//! ```python
//! import time
//! from multiprocessing import Pool
//!
//! def work(x):
//!     print(f"[In Pool]: {x}")
//!     time.sleep(0.5)
//!     return x * x
//!
//! if __name__ == "__main__":
//!     with Pool(2) as pool:
//!         result = pool.map(work, range(6))   # blocks
//!         print("[Main]: map returned", result)
//! ```
//!
//! The workers inherit the program's stdout, so their `println!` lines show
//! up in its output, in whatever order the two workers reach them.

use std::time::Duration;

use procpool::{Pool, pool_job};

#[pool_job]
fn work(x: u64) -> u64 {
    println!("[In Pool]: {x}");
    std::thread::sleep(Duration::from_millis(500));
    x * x
}

fn main() -> Result<(), procpool::Error> {
    let pool = Pool::with_processes(2)?;
    let result = pool.map(work, 0..6)?; // blocks until all six are done
    println!("[Main]: map returned {result:?}");
    pool.close();
    pool.join()?;
    Ok(())
}
