use procpool::pool_job;

#[pool_job]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

fn main() {
    let _ = add(1, 2, 3);
}
