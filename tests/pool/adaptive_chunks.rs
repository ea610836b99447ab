//! `imap` and `imap_unordered` without a chunk size: chunks start at one
//! item and grow while they come back quickly, so many tiny items travel in
//! few tasks, slow items one per task, and an endless or slow input still
//! yields at once. Task counts come from `Pool::stats`; no assertion here
//! depends on how fast the machine is, beyond bounds of many seconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use procpool::{Pool, pool_job};

#[pool_job]
fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

#[pool_job]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// The number in a blob's first 8 bytes, so each result names its item.
#[pool_job]
fn number(blob: Vec<u8>) -> u64 {
    blob.get(..8)
        .and_then(|head| head.try_into().ok())
        .map_or(u64::MAX, u64::from_le_bytes)
}

fn pool() -> Pool {
    Pool::with_processes(2).unwrap()
}

/// Tasks the pool has finished so far.
fn tasks(pool: &Pool) -> u64 {
    pool.stats().tasks_done
}

#[test]
fn many_tiny_items_travel_in_few_tasks_and_keep_their_order() {
    let pool = pool();
    let n = 100_000u64;
    let before = tasks(&pool);
    let ordered: Vec<u64> = pool.imap(square, 0..n).collect::<Result<_, _>>().unwrap();
    assert_eq!(ordered, (0..n).map(|x| x * x).collect::<Vec<_>>());
    let used = tasks(&pool) - before;
    // One item per task would be 100 000 tasks; doubling from 1 needs
    // about 20. The bound leaves room for chunks shrunk by a busy machine.
    assert!(used <= 2_000, "imap of {n} tiny items used {used} tasks");

    let before = tasks(&pool);
    let mut unordered: Vec<u64> = pool
        .imap_unordered(square, 0..n)
        .collect::<Result<_, _>>()
        .unwrap();
    let used = tasks(&pool) - before;
    assert!(
        used <= 2_000,
        "imap_unordered of {n} tiny items used {used} tasks"
    );
    unordered.sort_unstable();
    assert_eq!(unordered, (0..n).map(|x| x * x).collect::<Vec<_>>());
}

#[test]
fn chunks_of_large_items_are_cut_by_their_bytes() {
    let pool = pool();
    let n = 4_000u64;
    // 16 KiB each, 62.5 MiB in all: cut at 512 KiB, so at least 121
    // chunks, where the time per item alone (a few µs) would allow hundreds
    // of items per chunk.
    let items = (0..n).map(|i| {
        let mut blob = vec![0u8; 16 << 10];
        blob[..8].copy_from_slice(&i.to_le_bytes());
        blob
    });
    let before = tasks(&pool);
    let got: Vec<u64> = pool.imap(number, items).collect::<Result<_, _>>().unwrap();
    assert_eq!(got, (0..n).collect::<Vec<_>>());
    let used = tasks(&pool) - before;
    assert!(
        (121..2_000).contains(&used),
        "{n} items of 16 KiB used {used} tasks"
    );
}

#[test]
fn slow_items_stay_one_per_task_and_run_on_both_workers() {
    let pool = pool();
    let before = pool.stats();
    let got: Vec<u64> = pool
        .imap(nap, vec![20; 8])
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(got, vec![20; 8]);
    let after = pool.stats();
    assert_eq!(after.tasks_done - before.tasks_done, 8, "{after:?}");
    // Both workers took some: the items did not queue behind one another.
    for (slot, (old, new)) in before.workers.iter().zip(&after.workers).enumerate() {
        assert!(
            new.tasks > old.tasks,
            "worker {slot} ran nothing: {after:?}"
        );
    }

    // Items of 5 ms or more each never share a chunk, whatever the order.
    let before = tasks(&pool);
    let got: Vec<u64> = pool
        .imap_unordered(nap, vec![5; 24])
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(got, vec![5; 24]);
    assert_eq!(tasks(&pool) - before, 24);
}

#[test]
fn an_explicit_chunksize_is_kept_exactly() {
    let pool = pool();
    let before = tasks(&pool);
    let got: Vec<u64> = pool
        .chunksize(7)
        .imap(square, 0..100u64)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(got, (0..100).map(|x| x * x).collect::<Vec<_>>());
    assert_eq!(tasks(&pool) - before, 15, "ceil(100 / 7) tasks");

    let before = tasks(&pool);
    let count = pool
        .chunksize(1)
        .imap_unordered(square, 0..300u64)
        .map(Result::unwrap)
        .count();
    assert_eq!(count, 300);
    assert_eq!(tasks(&pool) - before, 300);
}

#[test]
fn an_optional_chunksize_takes_no_branch_and_none_lets_the_pool_choose() {
    let pool = pool();
    // What a command-line flag gives: one expression for both cases.
    // Without one, map's own rule for 100 items on 2 workers:
    // max(ceil(100 / 32), min(ceil(100 / 8), 256)) = 13 items, 8 tasks.
    for (flag, expected_tasks) in [(Some(7), 15), (None, 8)] {
        let before = tasks(&pool);
        let got = pool.chunksize(flag).map(square, 0..100u64).unwrap();
        assert_eq!(got, (0..100).map(|x| x * x).collect::<Vec<_>>());
        assert_eq!(tasks(&pool) - before, expected_tasks, "chunksize {flag:?}");
    }
    // A handle with a chunk size shares the workers: the chosen size
    // applies to its calls only.
    let coarse = pool.chunksize(50);
    let before = tasks(&pool);
    coarse.map(square, 0..100u64).unwrap();
    assert_eq!(tasks(&pool) - before, 2);
    let before = tasks(&pool);
    pool.map(square, 0..100u64).unwrap();
    assert_eq!(tasks(&pool) - before, 8);
}

#[test]
fn a_chunksize_of_zero_fails_each_kind_of_call_with_a_config_error() {
    let pool = pool();
    let zero = pool.chunksize(0);
    let said = |result: Result<Vec<u64>, procpool::Error>, call: &str| match result {
        Err(procpool::Error::Config(message)) => {
            assert!(
                message.contains("chunksize must be at least 1"),
                "{call}: {message}"
            )
        }
        other => panic!("{call}: {other:?}"),
    };
    said(zero.map(square, 0..4u64), "map");
    said(zero.starmap(square, vec![(1u64,)]), "starmap");
    said(
        zero.map_async(square, 0..4u64).map(|_| Vec::new()),
        "map_async",
    );
    said(zero.imap(square, 0..4u64).collect(), "imap");
    said(
        zero.imap_unordered(square, 0..4u64).collect(),
        "imap_unordered",
    );
    // The pool itself is untouched.
    assert_eq!(pool.map(square, 0..3u64).unwrap(), vec![0, 1, 4]);
}

#[test]
fn a_task_timeout_leaves_adaptive_chunks_on() {
    // The limit is per item (tests/pool/timeouts.rs), so a pool with one
    // sizes chunks as any other: 20 000 trivial items go in few tasks,
    // not one task each.
    let pool = Pool::builder()
        .processes(2)
        .task_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let before = tasks(&pool);
    let got: Vec<u64> = pool
        .imap(square, 0..20_000u64)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(got, (0..20_000).map(|x| x * x).collect::<Vec<_>>());
    let used = tasks(&pool) - before;
    assert!(used < 2_000, "{used} tasks for 20 000 items");
}

#[test]
fn an_endless_input_yields_at_once() {
    let pool = pool();
    let first: Vec<u64> = pool
        .imap(square, 0u64..)
        .take(4)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(first, vec![0, 1, 4, 9]);
    let many: Vec<u64> = pool
        .imap(square, 0u64..)
        .take(200_000)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(many, (0..200_000).map(|x| x * x).collect::<Vec<_>>());
    let count = pool
        .imap_unordered(square, 0u64..)
        .take(50_000)
        .map(Result::unwrap)
        .count();
    assert_eq!(count, 50_000);
}

/// An endless input that counts the items pulled from it and sleeps
/// `slow_ms` before each item from `fast_items` on.
fn counted_input(fast_items: u64, slow_ms: u64) -> (Arc<AtomicUsize>, impl Iterator<Item = u64>) {
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&pulled);
    let input = (0u64..).inspect(move |&i| {
        counter.fetch_add(1, Ordering::SeqCst);
        if i >= fast_items {
            std::thread::sleep(Duration::from_millis(slow_ms));
        }
    });
    (pulled, input)
}

#[test]
fn a_slow_input_is_not_waited_on() {
    let pool = pool();
    // 20 ms per input item: its time counts as the items' time, so chunks
    // stay at one item and each result comes as soon as its item is read.
    let (pulled, input) = counted_input(0, 20);
    let mut results = pool.imap(square, input);
    for taken in 1..=30 {
        assert!(results.next().unwrap().is_ok());
        let read = pulled.load(Ordering::SeqCst);
        // Two chunks per worker are in flight: 4 items, if of one item each.
        assert!(
            read <= taken + 8,
            "read {read} input items for {taken} results"
        );
    }
}

#[test]
fn an_input_that_turns_slow_sends_what_it_has() {
    let pool = pool();
    // Large chunks first; then 20 ms per item. A chunk being filled is
    // sent once filling it took a few ms, instead of waiting for thousands
    // of slow items (minutes).
    let (_, input) = counted_input(30_000, 20);
    let started = Instant::now();
    let got = pool
        .imap(square, input)
        .take(30_050)
        .map(Result::unwrap)
        .count();
    assert_eq!(got, 30_050);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "{took:?}");
}
