//! `Pool.map_async` returns at once: the main process keeps printing while
//! the workers run, then collects the results.
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
//!         r = pool.map_async(work, range(6))
//!         while not r.ready():
//!             print("[Main]: working on other things...")
//!             time.sleep(0.3)
//!         print("[Main]: results", r.get())
//! ```
//!
//! The loop prints before it checks `ready()`, so the main process shows
//! that it was free at least once however fast the pool is. To wait without
//! polling, `AsyncResult::wait_timeout` returns as soon as the results are in.

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
    let result = pool.map_async(work, 0..6)?; // returns at once
    loop {
        println!("[Main]: working on other things...");
        std::thread::sleep(Duration::from_millis(300));
        if result.ready() {
            break;
        }
    }
    println!("[Main]: results {:?}", result.get()?);
    pool.close();
    pool.join()?;
    Ok(())
}
