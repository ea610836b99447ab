use procpool::pool_job;

#[pool_job(retries = 3)]
fn square(x: u64) -> u64 {
    x * x
}

#[pool_job(timeout)]
fn cube(x: u64) -> u64 {
    x * x * x
}

fn main() {}
