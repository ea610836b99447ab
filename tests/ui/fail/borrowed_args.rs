use procpool::{Pool, pool_job};

#[derive(serde::Serialize, serde::Deserialize)]
struct Config {
    verbose: bool,
}

#[pool_job]
fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

#[pool_job]
fn total(values: &[u64]) -> u64 {
    values.iter().sum()
}

#[pool_job]
fn describe(config: &Config) -> String {
    format!("verbose: {}", config.verbose)
}

#[pool_job]
fn first_word(text: String) -> &'static str {
    if text.is_empty() { "" } else { "word" }
}

// The attribute's errors are the only ones: the calls below add none.
fn main() -> Result<(), procpool::Error> {
    let pool = Pool::with_processes(1)?;
    let counts: Vec<usize> = pool.map(word_count, ["a b", "c"])?;
    assert_eq!(counts, [2, 1]);
    assert_eq!(pool.apply(total, &[1, 2][..])?, 3);
    assert_eq!(word_count("a b c"), 3);
    Ok(())
}
