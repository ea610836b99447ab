//! `imap(..).into_stream()` and `imap_unordered(..).into_stream()`:
//! results as a `futures_core::Stream`, consumed on a single-threaded tokio
//! runtime that keeps running its other tasks while results are pending.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_core::Stream;
use procpool::{Error, Pool, pool_job};

#[pool_job]
fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(150));
    x * x
}

#[pool_job]
fn fail_on_three(x: u64) -> u64 {
    assert_ne!(x, 3, "three is refused");
    x
}

/// `StreamExt::next`, without a dependency for it.
async fn next<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

/// Collects `stream` on a current-thread runtime next to a task that ticks
/// every 10 ms, and returns the items and the number of ticks.
fn collect_with_ticker<S: Stream + Unpin>(stream: S) -> (Vec<S::Item>, usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");
    let ticks = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&ticks);
    let items = runtime.block_on(async move {
        // Shares the one runtime thread with the stream below.
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        let mut stream = stream;
        let mut items = Vec::new();
        // A result the pool forgot to wake the task for would hang here.
        let all = async {
            while let Some(item) = next(&mut stream).await {
                items.push(item);
            }
        };
        tokio::time::timeout(Duration::from_secs(30), all)
            .await
            .expect("the stream ended within 30 s");
        ticker.abort();
        items
    });
    (items, ticks.load(Ordering::SeqCst))
}

#[test]
fn imap_stream_yields_in_order_without_blocking_the_runtime_thread() {
    let pool = Pool::with_processes(2).expect("a pool");
    // 8 tasks of 150 ms on 2 workers: about 600 ms of waiting.
    let (items, ticks) = collect_with_ticker(pool.imap(slow_square, 0..8).into_stream());
    let values: Vec<u64> = items.into_iter().map(Result::unwrap).collect();
    assert_eq!(values, (0..8).map(|x| x * x).collect::<Vec<u64>>());
    // A blocked thread would show (almost) no ticks.
    assert!(ticks >= 10, "the runtime thread was blocked: {ticks} ticks");
}

#[test]
fn imap_unordered_stream_yields_every_result() {
    let pool = Pool::with_processes(2).expect("a pool");
    let (items, ticks) = collect_with_ticker(
        pool.chunksize(2)
            .imap_unordered(slow_square, 0..8)
            .into_stream(),
    );
    let mut values: Vec<u64> = items.into_iter().map(Result::unwrap).collect();
    values.sort_unstable();
    assert_eq!(values, (0..8).map(|x| x * x).collect::<Vec<u64>>());
    assert!(ticks >= 10, "the runtime thread was blocked: {ticks} ticks");
}

#[test]
fn a_failed_item_is_an_error_in_its_place_and_the_rest_still_arrive() {
    let pool = Pool::with_processes(2).expect("a pool");
    let (items, _) = collect_with_ticker(pool.imap(fail_on_three, 0..6).into_stream());
    assert_eq!(items.len(), 6);
    for (index, item) in items.into_iter().enumerate() {
        match item {
            Ok(value) => assert_eq!(value, index as u64),
            Err(Error::Panicked {
                index: 3, message, ..
            }) => {
                assert!(message.contains("three is refused"), "{message}")
            }
            Err(other) => panic!("item {index}: {other:?}"),
        }
    }
}

#[test]
fn an_empty_input_ends_the_stream_at_once() {
    let pool = Pool::with_processes(1).expect("a pool");
    let (items, _) = collect_with_ticker(pool.imap(slow_square, Vec::<u64>::new()).into_stream());
    assert!(items.is_empty());
}
