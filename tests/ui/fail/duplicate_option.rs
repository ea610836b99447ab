use procpool::pool_job;

#[pool_job(name = "square", name = "sq")]
fn square(x: u64) -> u64 {
    x * x
}

fn main() {}
