use procpool::Pool;

fn main() -> Result<(), procpool::Error> {
    let pool = Pool::with_processes(1)?;
    let squares = pool.map(|x: u64| x * x, 0..10)?;
    assert_eq!(squares.len(), 10);
    Ok(())
}
