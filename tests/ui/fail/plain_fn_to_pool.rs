use procpool::Pool;

fn square(x: u64) -> u64 {
    x * x
}

fn add(a: i64, b: i64) -> i64 {
    a + b
}

fn main() -> Result<(), procpool::Error> {
    let pool = Pool::with_processes(1)?;
    let _ = pool.map(square, 0..10)?;
    let _ = pool.apply(add, (1, 2))?;
    let _ = pool.starmap(add, vec![(1, 2)])?;
    Ok(())
}
