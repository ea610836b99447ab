use procpool::pool_job;

#[pool_job]
unsafe extern "C" fn sum(count: usize, mut args: ...) -> i64 {
    let _ = (count, &mut args);
    0
}

fn main() {}
