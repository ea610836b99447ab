//! What an `AsyncResult` offers: `ready`, `wait`, `successful` and `get`,
//! for a call that succeeds and for one whose job fails.
//!
//! Python:
//! ```python
//! import time
//! from multiprocessing import Pool
//!
//! def square(x):
//!     time.sleep(1)
//!     return x * x
//!
//! def fail():
//!     raise ValueError("something went wrong")
//!
//! if __name__ == "__main__":
//!     with Pool(2) as pool:
//!         r = pool.apply_async(square, (7,))
//!         print(r.ready())
//!         r.wait()
//!         print(r.ready(), r.successful(), r.get())
//!
//!         bad = pool.apply_async(fail, ())
//!         bad.wait()
//!         print(bad.successful())
//!         try:
//!             bad.get()
//!         except Exception as e:
//!             print("error:", e)
//! ```
//!
//! A Python exception in the job is a panic here: `get` returns it as
//! `Error::Panicked`, with the panic message, and the pool carries on.
//! `successful()` is `None` while the call runs, where Python raises.

use std::time::Duration;

use procpool::{Pool, pool_job};

#[pool_job]
fn square(x: u64) -> u64 {
    // Slow enough that the first `ready()` below almost surely says false.
    std::thread::sleep(Duration::from_secs(1));
    x * x
}

#[pool_job]
fn fail() -> u64 {
    panic!("something went wrong");
}

fn main() -> Result<(), procpool::Error> {
    let pool = Pool::with_processes(2)?;

    let r = pool.apply_async(square, 7)?;
    println!("{}", r.ready());
    r.wait();
    let (ready, successful) = (r.ready(), r.successful() == Some(true));
    println!("{ready} {successful} {}", r.get()?);

    let bad = pool.apply_async(fail, ())?;
    bad.wait();
    println!("{}", bad.successful() == Some(true));
    if let Err(e) = bad.get() {
        println!("error: {e}");
    }

    pool.close();
    pool.join()?;
    Ok(())
}
