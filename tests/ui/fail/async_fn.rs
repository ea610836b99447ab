use procpool::{Pool, pool_job};

#[pool_job]
async fn fetch(url: String) -> usize {
    url.len()
}

// The attribute's error is the only one: the pool call adds none.
fn main() -> Result<(), procpool::Error> {
    let pool = Pool::with_processes(1)?;
    let sizes: Vec<usize> = pool.map(fetch, vec!["https://example.com".to_owned()])?;
    assert_eq!(sizes, [19]);
    Ok(())
}
