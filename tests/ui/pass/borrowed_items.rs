// Items are only serialized, so calls over many items take references to
// the job's argument type as well as values, and the caller keeps its data.
use procpool::{Pool, pool_job};

#[pool_job]
fn square(x: u64) -> u64 {
    x * x
}

#[pool_job]
fn shout(s: String) -> String {
    s.to_uppercase()
}

#[pool_job]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

fn main() {
    let pool = Pool::with_processes(1).unwrap();
    let nums: Vec<u64> = vec![1, 2, 3];
    assert_eq!(pool.map(square, &nums).unwrap(), vec![1, 4, 9]);
    assert_eq!(pool.map(square, nums.iter()).unwrap(), vec![1, 4, 9]);
    assert_eq!(pool.map(square, &[4u64, 5]).unwrap(), vec![16, 25]);
    assert_eq!(pool.chunksize(2).map(square, &nums).unwrap(), vec![1, 4, 9]);
    assert_eq!(pool.map_async(square, &nums).unwrap().get().unwrap(), vec![1, 4, 9]);
    let lazy: Vec<u64> = pool.imap(square, &nums).map(Result::unwrap).collect();
    assert_eq!(lazy, vec![1, 4, 9]);
    let mut unordered: Vec<u64> = pool
        .imap_unordered(square, nums.iter())
        .map(Result::unwrap)
        .collect();
    unordered.sort_unstable();
    assert_eq!(unordered, vec![1, 4, 9]);

    let words = vec!["a".to_owned(), "b".to_owned()];
    assert_eq!(pool.map(shout, &words).unwrap(), ["A", "B"]);

    let pairs = vec![(1, 2), (3, 4)];
    assert_eq!(pool.starmap(add, &pairs).unwrap(), vec![3, 7]);
    assert_eq!(pool.chunksize(1).starmap(add, &pairs).unwrap(), vec![3, 7]);
    assert_eq!(pool.starmap_async(add, &pairs).unwrap().get().unwrap(), vec![3, 7]);
    assert_eq!(pool.starmap(square, &[(6,)]).unwrap(), vec![36]);

    // The inputs are still the caller's.
    assert_eq!(nums, [1, 2, 3]);
    assert_eq!(words, ["a", "b"]);
    assert_eq!(pairs.len(), 2);
}
