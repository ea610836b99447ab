// Call shapes: untyped literals take the job's types, jobs stay callable,
// and `name = "..."` sets the registered name.
use procpool::{Pool, pool_job};

#[pool_job]
fn square(x: u64) -> u64 {
    x * x
}

#[pool_job(name = "math.add")]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

fn main() {
    let pool = Pool::with_processes(1).unwrap();
    // `0..5` is a range of u64 because `square` takes u64.
    assert_eq!(pool.map(square, 0..5).unwrap(), vec![0, 1, 4, 9, 16]);
    assert_eq!(pool.map(square, vec![6]).unwrap(), vec![36]);
    assert_eq!(pool.apply(add, (20, 22)).unwrap(), 42);
    assert_eq!(pool.starmap(add, vec![(1, 2), (3, 4)]).unwrap(), vec![3, 7]);
    assert_eq!(pool.starmap(square, [(3,)]).unwrap(), vec![9]);
    // Still an ordinary function, also through a function pointer.
    assert_eq!(square(3), 9);
    let f: fn(i64, i64) -> i64 = *add;
    assert_eq!(f(1, 1), 2);
    assert_eq!(add.name(), "math.add");
    // A job is `Copy`: pass it around and use it again.
    let job = square;
    assert_eq!(pool.map(job, [2]).unwrap(), pool.map(square, [2]).unwrap());
}
