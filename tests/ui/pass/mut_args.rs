// `mut` arguments are ordinary bindings inside the job.
use procpool::{Pool, pool_job};

#[pool_job]
fn sorted(mut values: Vec<i32>) -> Vec<i32> {
    values.sort_unstable();
    values
}

#[pool_job]
fn count_down(mut from: u32, mut steps: Vec<u32>) -> Vec<u32> {
    while from > 0 {
        steps.push(from);
        from -= 1;
    }
    steps
}

fn main() {
    let pool = Pool::with_processes(1).unwrap();
    assert_eq!(pool.apply(sorted, vec![3, 1, 2]).unwrap(), vec![1, 2, 3]);
    assert_eq!(
        pool.apply(count_down, (3, vec![9])).unwrap(),
        vec![9, 3, 2, 1]
    );
    assert_eq!(sorted(vec![2, 1]), vec![1, 2]);
}
