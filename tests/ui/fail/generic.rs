use procpool::{Pool, pool_job};

#[pool_job]
fn largest<T: PartialOrd>(items: Vec<T>) -> Option<T> {
    items.into_iter().reduce(|a, b| if b > a { b } else { a })
}

// The attribute's error is the only one: the pool call and the direct call
// below add none.
fn main() -> Result<(), procpool::Error> {
    let pool = Pool::with_processes(1)?;
    let found: Vec<Option<u32>> = pool.map(largest, vec![vec![1u32, 3, 2]])?;
    assert_eq!(found, [Some(3)]);
    assert_eq!(largest(vec![1, 2]), Some(2));
    Ok(())
}
