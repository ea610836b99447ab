// The jobs live in a crate that depends on procpool as `procpool2` and use
// `#[procpool2::pool_job(crate = "procpool2")]`; a pool built here runs them.
use procpool::Pool;
use procpool_test_renamed::{double, text};

fn main() {
    let pool = Pool::with_processes(1).unwrap();
    assert_eq!(pool.map(double, [1, 2, 3]).unwrap(), vec![2, 4, 6]);
    assert_eq!(
        pool.apply(text::join, ("hello".to_owned(), "world".to_owned()))
            .unwrap(),
        "hello world"
    );
    assert_eq!(text::join.name(), "renamed.join");
    assert_eq!(pool.map(text::length, ["abc".to_owned()]).unwrap(), vec![3]);
    assert_eq!(double(21), 42);
}
