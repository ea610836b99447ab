// A job without arguments takes `()` as its item.
use procpool::{Pool, pool_job};

#[pool_job]
fn worker_pid() -> u32 {
    std::process::id()
}

#[pool_job]
fn greeting() -> String {
    "hello".to_owned()
}

fn main() {
    let pool = Pool::with_processes(1).unwrap();
    let pid = pool.apply(worker_pid, ()).unwrap();
    assert_ne!(pid, std::process::id());
    assert_eq!(
        pool.map(greeting, [(), ()]).unwrap(),
        vec!["hello", "hello"]
    );
    assert_eq!(pool.starmap(greeting, vec![()]).unwrap(), vec!["hello"]);
    assert_eq!(greeting(), "hello");
}
