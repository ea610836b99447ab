use procpool::pool_job;

#[pool_job]
const LIMIT: u32 = 10;

fn main() {
    let _ = LIMIT;
}
