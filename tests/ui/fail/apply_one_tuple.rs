// A one-argument job takes its argument as is: `(7,)` is a tuple, and the
// error says to pass `7`.
use procpool::{Pool, pool_job};

#[pool_job]
fn double(x: u64) -> u64 {
    x * 2
}

fn main() -> Result<(), procpool::Error> {
    let pool = Pool::with_processes(1)?;
    let doubled = pool.apply(double, (7,))?;
    assert_eq!(doubled, 14);
    Ok(())
}
