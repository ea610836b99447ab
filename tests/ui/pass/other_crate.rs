// Jobs defined in a library crate run in a pool built by this crate.
use procpool::Pool;
use procpool_test_jobs::{Point, manhattan, worker_pid};

fn main() {
    let pool = Pool::with_processes(1).unwrap();
    let points = vec![Point { x: 1, y: -2 }, Point { x: -3, y: 4 }];
    assert_eq!(pool.map(manhattan, points).unwrap(), vec![3, 7]);
    assert_ne!(pool.apply(worker_pid, ()).unwrap(), std::process::id());
    assert_eq!(manhattan.name(), "procpool_test_jobs::manhattan");
}
