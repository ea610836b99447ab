//! `Pool::stats`: tasks done and failed, workers started, replaced and why
//! they left, and each slot's busy and idle time.

use std::time::Duration;

use procpool::{Error, Pool, pool_job};
use procpool_tests::eventually;

#[pool_job]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[pool_job]
fn abort(_: u8) -> u8 {
    std::process::abort()
}

#[test]
fn tasks_and_busy_time_are_counted_per_worker() {
    let pool = Pool::with_processes(2).unwrap();
    pool.chunksize(1).map(nap, vec![20; 10]).unwrap();
    let stats = pool.stats();
    assert_eq!(stats.tasks_done, 10, "{stats:?}");
    assert_eq!(stats.tasks_failed, 0);
    assert_eq!(stats.workers_started, 2);
    assert_eq!(stats.workers_replaced, 0);
    assert_eq!(stats.workers.len(), 2);
    assert_eq!(stats.workers.iter().map(|w| w.tasks).sum::<u64>(), 10);
    // 10 naps of 20 ms: at least 200 ms of busy time between the slots.
    let busy: Duration = stats.workers.iter().map(|w| w.busy).sum();
    assert!(busy >= Duration::from_millis(200), "{busy:?}");
    for worker in &stats.workers {
        assert!(worker.pid.is_some());
        assert!(worker.utilization() > 0.0 && worker.utilization() <= 1.0);
    }
}

#[test]
fn deaths_timeouts_retirements_and_retries_are_told_apart() {
    let pool = Pool::builder()
        .processes(1)
        .retries(1)
        .max_tasks_per_child(3)
        .task_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    // A crash, run twice (retries(1)): two deaths, one retry, one failure.
    assert!(matches!(
        pool.apply(abort, 0),
        Err(Error::WorkerDied { attempts: 2, .. })
    ));
    // A timeout.
    assert!(matches!(
        pool.apply(nap, 5_000),
        Err(Error::TaskTimedOut { .. })
    ));
    // Three tasks on one worker: it retires after the third.
    for _ in 0..3 {
        pool.apply(nap, 0).unwrap();
    }
    eventually("the retired worker's replacement", || {
        pool.stats().workers_started == 5
    });
    let stats = pool.stats();
    assert_eq!(stats.workers_died, 2, "{stats:?}");
    assert_eq!(stats.workers_timed_out, 1, "{stats:?}");
    assert_eq!(stats.workers_retired, 1, "{stats:?}");
    assert_eq!(stats.tasks_retried, 1, "{stats:?}");
    assert_eq!(stats.tasks_failed, 2, "{stats:?}");
    assert_eq!(stats.tasks_done, 3, "{stats:?}");
    // 1 first worker, then one after each of 2 deaths, the timeout and the retirement.
    assert_eq!(stats.workers_replaced, 4, "{stats:?}");
}

#[pool_job]
fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

/// Panics on multiples of 1000: failed items count as done too.
#[pool_job]
fn picky(x: u64) -> u64 {
    assert!(x % 1000 != 999, "refused {x}");
    x
}

#[test]
fn items_done_is_exact_when_the_caller_has_seen_the_items() {
    let pool = Pool::with_processes(2).unwrap();
    // Odd sizes, adaptive and fixed chunks, ordered and not: right after
    // the last result is taken, every item is counted (the outside run
    // this answers read 4 049, 4 032 and 3 458 of 4 079).
    for round in 0..20u64 {
        let n = 4_079 + round;
        let before = pool.stats().items_done;
        let seen = match round % 3 {
            0 => pool.imap_unordered(square, 0..n).count(),
            1 => pool.chunksize(7).imap(picky, 0..n).count(),
            _ => pool.map(square, 0..n).unwrap().len(),
        };
        assert_eq!(seen as u64, n);
        let counted = pool.stats().items_done - before;
        assert_eq!(counted, n, "round {round}: {counted} of {n} items counted");
    }
}

#[test]
fn a_departure_is_counted_when_its_error_is_seen() {
    let pool = Pool::builder()
        .processes(1)
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    for expected in 1..=3 {
        assert!(matches!(
            pool.apply(nap, 5_000),
            Err(Error::TaskTimedOut { .. })
        ));
        // No waiting: the caller has seen the timeout, so it is counted.
        assert_eq!(pool.stats().workers_timed_out, expected);
        assert!(matches!(
            pool.apply(abort, 0),
            Err(Error::WorkerDied { .. })
        ));
        assert_eq!(pool.stats().workers_died, expected);
    }
    // Replacements catch up (see PoolStats' "When the counts are exact").
    eventually("every replacement", || pool.stats().workers_replaced == 6);
    assert!(pool.stats().workers.iter().all(|w| w.pid.is_some()));
}
