use procpool::pool_job;

#[pool_job(name = square)]
fn square(x: u64) -> u64 {
    x * x
}

#[pool_job(name = 7)]
fn cube(x: u64) -> u64 {
    x * x * x
}

fn main() {}
