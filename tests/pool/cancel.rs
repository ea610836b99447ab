//! Cancelling an `AsyncResult`: by dropping it, by `cancel()`, and by
//! dropping a future that awaits it (`tokio::time::timeout`).
//!
//! Each case queues 8 tasks of 1.5 s on 2 workers, one task per item, then
//! cancels. Left to run, they would hold the workers for 6 s, so an
//! `apply` submitted next would wait at least 4.5 s behind the 6 queued
//! ones; cancelled, it waits only for the 2 running ones (1.5 s). The bound
//! checked, 4 s, tells the two apart on a busy machine.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use procpool::{Error, Pool, pool_job};

/// How long each queued task runs.
const TASK_MS: u64 = 1500;
/// What the next `apply` may take once the queue is cancelled.
const BOUND: Duration = Duration::from_secs(4);

#[pool_job]
fn sleepy(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[pool_job]
fn square(x: u64) -> u64 {
    x * x
}

fn pool() -> Pool {
    Pool::with_processes(2).expect("a pool of 2")
}

/// Runs an `apply` and returns how long it took.
fn next_apply(pool: &Pool) -> Duration {
    let started = Instant::now();
    assert_eq!(pool.apply(square, 7).expect("the next apply"), 49);
    started.elapsed()
}

fn queue_slow_tasks(pool: &Pool) -> procpool::AsyncResult<Vec<u64>> {
    let pending = pool
        .chunksize(1)
        .map_async(sleepy, vec![TASK_MS; 8])
        .expect("map_async");
    // Let the two workers take their first tasks.
    std::thread::sleep(Duration::from_millis(200));
    pending
}

#[test]
fn dropping_an_async_result_skips_its_queued_tasks() {
    let pool = pool();
    drop(queue_slow_tasks(&pool));
    let waited = next_apply(&pool);
    assert!(waited < BOUND, "the next apply waited {waited:?}");
}

#[test]
fn cancel_skips_queued_tasks_and_the_call_fails_with_cancelled() {
    let pool = pool();
    let pending = queue_slow_tasks(&pool);
    pending.cancel();
    assert_eq!(pending.successful(), Some(false));
    let waited = next_apply(&pool);
    assert!(waited < BOUND, "the next apply waited {waited:?}");
    match pending.get() {
        Err(Error::Cancelled { job }) => assert_eq!(job, "pool::cancel::sleepy"),
        other => panic!("expected Cancelled, got {other:?}"),
    }
}

#[test]
fn cancel_after_the_result_arrived_keeps_it() {
    let pool = pool();
    let pending = pool.map_async(square, 0..4).expect("map_async");
    pending.wait();
    pending.cancel();
    assert_eq!(pending.get().expect("the result"), vec![0, 1, 4, 9]);
}

#[test]
fn a_timed_out_future_cancels_its_call() {
    let pool = pool();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");
    let outcome = runtime.block_on(async {
        let pending = queue_slow_tasks(&pool);
        tokio::time::timeout(Duration::from_millis(100), pending).await
    });
    assert!(outcome.is_err(), "the call cannot finish in 100 ms");
    let waited = next_apply(&pool);
    assert!(waited < BOUND, "the next apply waited {waited:?}");
}

#[test]
fn a_dropped_handle_with_a_callback_still_runs_its_call() {
    // Python's fire-and-forget `apply_async(f, callback=cb)`.
    let pool = pool();
    let (tx, rx) = mpsc::channel();
    drop(
        pool.map_async(square, 0..4)
            .expect("map_async")
            .on_success(move |values| {
                let _ = tx.send(values.clone());
            }),
    );
    let values = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the callback ran");
    assert_eq!(values, vec![0, 1, 4, 9]);
}
