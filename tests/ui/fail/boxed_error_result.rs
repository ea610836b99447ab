use std::error::Error;

use procpool::pool_job;

#[pool_job]
fn parse(text: String) -> Result<u32, Box<dyn Error + Send + Sync>> {
    Ok(text.trim().parse()?)
}

fn main() {}
