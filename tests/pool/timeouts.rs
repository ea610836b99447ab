//! `task_timeout` limits each item, not each chunk: an item that runs over
//! fails alone with `Error::TaskTimedOut`, the items of its chunk that
//! finished before it keep their results, the rest of the chunk runs on
//! another worker, and chunk sizes stay as they are without a limit.

use std::time::Duration;

use procpool::{Error, Pool, pool_job};

/// The item that hangs in [`hangs_on_one`].
const HUNG: u64 = 1234;

/// Returns `x`, except that item [`HUNG`] never finishes.
#[pool_job]
fn hangs_on_one(x: u64) -> u64 {
    if x == HUNG {
        std::thread::sleep(Duration::from_secs(3600));
    }
    x
}

/// Sleeps `ms` milliseconds and returns it.
#[pool_job]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn pool_with_limit(limit: Duration) -> Pool {
    Pool::builder()
        .processes(2)
        .task_timeout(limit)
        .build()
        .unwrap()
}

/// Checks the results of 0..2000 through [`hangs_on_one`]: every item its
/// value, and the hung one exactly a `TaskTimedOut` of its own.
fn exactly_the_hung_item_failed(results: Vec<(u64, Result<u64, Error>)>, how: &str) {
    assert_eq!(results.len(), 2000, "{how}: one result per item");
    let mut failed = Vec::new();
    for (item, result) in results {
        match result {
            Ok(value) => assert_eq!(value, item, "{how}"),
            Err(Error::TaskTimedOut { first, count, .. }) => {
                assert_eq!((first, count), (item as usize, 1), "{how}");
                failed.push(item);
            }
            Err(other) => panic!("{how}: item {item}: {other}"),
        }
    }
    assert_eq!(failed, vec![HUNG], "{how}: only the hung item fails");
}

#[test]
fn one_hung_item_among_2000_costs_exactly_that_item_at_any_chunk_size() {
    let pool = pool_with_limit(Duration::from_secs(1));
    for chunksize in [Some(1), Some(500), None] {
        let how = format!("imap, chunksize {chunksize:?}");
        let results: Vec<(u64, Result<u64, Error>)> = (0..2000u64)
            .zip(pool.chunksize(chunksize).imap(hangs_on_one, 0..2000u64))
            .collect();
        exactly_the_hung_item_failed(results, &how);
    }
    // Unordered: the results name their items by value, and the error by
    // its index.
    let mut results: Vec<(u64, Result<u64, Error>)> = pool
        .chunksize(500)
        .imap_unordered(hangs_on_one, 0..2000u64)
        .map(|result| match result {
            Ok(value) => (value, Ok(value)),
            Err(Error::TaskTimedOut {
                first,
                count,
                job,
                timeout,
            }) => (
                first as u64,
                Err(Error::TaskTimedOut {
                    first,
                    count,
                    job,
                    timeout,
                }),
            ),
            Err(other) => panic!("imap_unordered: {other}"),
        })
        .collect();
    results.sort_by_key(|(item, _)| *item);
    exactly_the_hung_item_failed(results, "imap_unordered, chunksize 500");
    let stats = pool.stats();
    assert_eq!(
        stats.workers_timed_out, 4,
        "one worker per hung item: {stats:?}"
    );
}

#[test]
fn a_map_with_a_hung_item_fails_naming_that_item_alone() {
    let pool = pool_with_limit(Duration::from_secs(1));
    match pool.map(hangs_on_one, 0..2000u64) {
        Err(Error::TaskTimedOut { first, count, .. }) => {
            assert_eq!((first, count), (HUNG as usize, 1))
        }
        other => panic!("{other:?}"),
    }
    // The pool goes on.
    assert_eq!(pool.map(hangs_on_one, 0..3u64).unwrap(), vec![0, 1, 2]);
}

#[test]
fn the_limit_is_per_item_so_a_chunk_may_run_longer_than_it() {
    // Five items of 400 ms in one chunk: 2 s in all, against a limit of
    // 1 s per item. None is over; none fails.
    let pool = pool_with_limit(Duration::from_secs(1));
    let naps = pool.chunksize(5).map(nap, vec![400u64; 5]).unwrap();
    assert_eq!(naps, vec![400; 5]);
    assert_eq!(pool.stats().workers_timed_out, 0);
}
