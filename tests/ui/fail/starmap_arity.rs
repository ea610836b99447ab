use procpool::{Pool, pool_job};

#[pool_job]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

fn main() -> Result<(), procpool::Error> {
    let pool = Pool::with_processes(1)?;
    let _ = pool.starmap(add, vec![(1, 2, 3), (4, 5, 6)])?;
    Ok(())
}
