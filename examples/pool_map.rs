//! Squares of 0..10 computed in worker processes: the `Pool.map` program of
//! the Python tutorial.
//!
//! Python:
//! ```python
//! def square(x):
//!     return x * x
//!
//! if __name__ == "__main__":
//!     with Pool() as pool:
//!         print(pool.map(square, range(10)))
//! ```

use procpool::{Pool, pool_job};

#[pool_job]
fn square(x: u64) -> u64 {
    x * x
}

fn main() -> Result<(), procpool::Error> {
    let pool = Pool::new()?;
    let squares = pool.map(square, 0..10)?;
    println!("{squares:?}");
    pool.close();
    pool.join()?;
    Ok(())
}
