use procpool::{Pool, pool_job};

#[pool_job]
fn square(x: u64) -> u64 {
    x * x
}

#[pool_job]
fn shout(s: String) -> String {
    s.to_uppercase()
}

fn main() -> Result<(), procpool::Error> {
    let pool = Pool::with_processes(1)?;
    let _ = pool.map(square, vec!["1", "2"])?;
    let _ = pool.apply(shout, 5)?;
    // A reference to another type is still the wrong type.
    let names: Vec<String> = vec!["a".into()];
    let _ = pool.map(square, &names)?;
    let _ = pool.imap(shout, &[1u8, 2]).count();
    Ok(())
}
