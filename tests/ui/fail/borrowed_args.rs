use procpool::pool_job;

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

fn main() {}
