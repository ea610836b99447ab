use procpool::{Pool, pool_job};

#[pool_job]
fn square(x: u64) -> u64 {
    x * x
}

fn main() -> Result<(), procpool::Error> {
    let pool = Pool::with_processes(1)?;
    let squares: Vec<String> = pool.map(square, 0..10)?;
    assert_eq!(squares.len(), 10);
    Ok(())
}
