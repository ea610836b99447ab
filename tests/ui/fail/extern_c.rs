use procpool::pool_job;

#[pool_job]
extern "C" fn double(x: i32) -> i32 {
    x * 2
}

fn main() {}
