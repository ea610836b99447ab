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

/// Compiles only for values that can go to another thread or a `'static`
/// task (a response body, `tokio::spawn`).
fn owned<T: Send + 'static>(value: T) -> T {
    value
}

/// A stream built where the pool is, returned after the `Pool` variable is
/// gone, as an axum handler returns `Body::from_stream(...)`.
fn squares_stream(n: u64) -> impl Stream<Item = Result<u64, Error>> + Send + Unpin + 'static {
    let pool = Pool::with_processes(2).expect("a pool");
    owned(pool.imap(slow_square, 0..n).into_stream())
}

#[test]
fn imap_iterators_and_streams_outlive_the_pool_variable_and_move_between_threads() {
    // The stream, built and its pool variable dropped on this thread, then
    // moved to another thread and into a `tokio::spawn`ed task there
    // (which demands `Send + 'static`).
    let stream = squares_stream(6);
    let items = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a tokio runtime");
        runtime.block_on(async move {
            let task = tokio::spawn(async move {
                let mut stream = stream;
                let mut items = Vec::new();
                while let Some(item) = next(&mut stream).await {
                    items.push(item.expect("a square"));
                }
                items
            });
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("the stream ended within 30 s")
                .expect("the task did not panic")
        })
    })
    .join()
    .expect("the thread did not panic");
    assert_eq!(items, vec![0, 1, 4, 9, 16, 25]);

    // The iterator, moved to a thread after the pool variable was dropped:
    // its own handle keeps the workers until it has yielded every item.
    let pool = Pool::with_processes(2).expect("a pool");
    let iterator = owned(pool.imap_unordered(slow_square, 0..6u64));
    drop(pool);
    let mut values: Vec<u64> =
        std::thread::spawn(move || iterator.map(|item| item.expect("a square")).collect())
            .join()
            .expect("the thread did not panic");
    values.sort_unstable();
    assert_eq!(values, vec![0, 1, 4, 9, 16, 25]);
}

#[test]
fn a_pool_handle_clone_shares_the_workers_and_their_close() {
    let pool = Pool::with_processes(1).expect("a pool");
    let other = owned(pool.clone());
    let worker = std::thread::spawn(move || other.map(slow_square, 0..2u64));
    assert_eq!(worker.join().expect("no panic").expect("map"), vec![0, 1]);
    assert_eq!(
        pool.stats().tasks_done,
        2,
        "the clone ran on the same worker"
    );
    let closer = pool.clone();
    closer.close();
    assert!(
        matches!(pool.apply(slow_square, 2), Err(Error::Closed)),
        "close on one handle closes the pool for every handle"
    );
    drop(closer);
    pool.join().expect("join");
}
