// An associated function without `self` can be a job too: it is reached
// through its type, and registered under its module path and name.
use procpool::{Pool, pool_job};

struct Task;

impl Task {
    #[pool_job]
    fn run(id: u32) -> u32 {
        id + 1
    }
}

fn main() {
    let pool = Pool::with_processes(1).unwrap();
    assert_eq!(pool.map(Task::run, [1, 2]).unwrap(), vec![2, 3]);
    assert_eq!(Task::run(1), 2);
    assert!(Task::run.name().ends_with("::run"));
}
