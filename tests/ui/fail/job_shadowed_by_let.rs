// A job is a constant: `let total = ...` in its module is a pattern against
// it. One error says so; printing the value afterwards adds none.
use procpool::{Pool, pool_job};

#[pool_job]
fn total(xs: Vec<u64>) -> u64 {
    xs.iter().sum()
}

fn main() -> Result<(), procpool::Error> {
    let pool = Pool::with_processes(1)?;
    let total = pool.apply(total, vec![1, 2])?;
    println!("{total}");
    Ok(())
}
