//! Python parity beyond the core: AsyncResult, imap, per-call chunksize,
//! initializer, max_tasks_per_child, task_timeout.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use procpool::{Error, Pool, pool_job};

#[pool_job]
fn square(x: u64) -> u64 {
    x * x
}

#[pool_job]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[pool_job]
fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(x));
    x * x
}

#[pool_job]
fn pid_of(_: u64) -> u32 {
    std::process::id()
}

#[pool_job]
fn fail_on(x: u64) -> u64 {
    if x % 5 == 4 {
        panic!("bad item {x}");
    }
    x
}

/// Initializer: records its argument in the worker's environment.
#[pool_job]
fn set_greeting(text: String) {
    // SAFETY: the worker runs jobs on one thread; nothing reads the
    // environment concurrently.
    unsafe { std::env::set_var("PROCPOOL_TEST_GREETING", text) };
}

#[pool_job]
fn greeting() -> String {
    std::env::var("PROCPOOL_TEST_GREETING").unwrap_or_default()
}

#[pool_job]
fn broken_initializer() {
    panic!("cannot load the model");
}

#[pool_job]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn pool(n: usize) -> Pool {
    Pool::with_processes(n).unwrap_or_else(|e| panic!("pool start failed: {e}"))
}

/// A tiny executor: enough to prove `.await` works without a runtime thread blocking.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::sync::Condvar;
    use std::task::{Context, Poll, Wake, Waker};
    struct Signal(Mutex<bool>, Condvar, AtomicUsize);
    impl Wake for Signal {
        fn wake(self: Arc<Self>) {
            self.2.fetch_add(1, Ordering::SeqCst);
            *self.0.lock().unwrap() = true;
            self.1.notify_one();
        }
    }
    let signal = Arc::new(Signal(
        Mutex::new(false),
        Condvar::new(),
        AtomicUsize::new(0),
    ));
    let waker = Waker::from(Arc::clone(&signal));
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    let mut polls = 0;
    loop {
        polls += 1;
        if let Poll::Ready(value) = future.as_mut().poll(&mut context) {
            // The future was woken, not busy-polled.
            assert!(
                polls <= 2 + signal.2.load(Ordering::SeqCst),
                "polled {polls} times"
            );
            return value;
        }
        let mut woken = signal.0.lock().unwrap();
        while !*woken {
            woken = signal.1.wait(woken).unwrap();
        }
        *woken = false;
    }
}

#[test]
fn async_result_ready_successful_wait_get() {
    let pool = pool(2);
    let pending = pool.apply_async(slow_square, 300).unwrap();
    assert!(!pending.ready());
    assert_eq!(pending.successful(), None);
    assert!(!pending.wait_timeout(Duration::from_millis(10)));
    pending.wait();
    assert!(pending.ready());
    assert_eq!(pending.successful(), Some(true));
    assert_eq!(pending.get().unwrap(), 90_000);

    let failing = pool.map_async(fail_on, 0..10).unwrap();
    failing.wait();
    assert_eq!(failing.successful(), Some(false));
    assert!(matches!(failing.get(), Err(Error::Panicked { .. })));

    let star = pool.starmap_async(add, vec![(1, 2), (3, 4)]).unwrap();
    assert_eq!(star.get().unwrap(), vec![3, 7]);
}

#[test]
fn get_timeout_keeps_the_task_running() {
    let pool = pool(1);
    let mut pending = pool.apply_async(slow_square, 400).unwrap();
    let started = Instant::now();
    let err = pending.get_timeout(Duration::from_millis(20)).unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_millis(390));
    // Same handle, later: the value is there.
    assert_eq!(
        pending.get_timeout(Duration::from_secs(20)).unwrap(),
        160_000
    );
}

#[test]
fn async_result_is_a_future() {
    let pool = pool(2);
    let value = block_on(pool.apply_async(slow_square, 200).unwrap()).unwrap();
    assert_eq!(value, 40_000);
    let all = block_on(async {
        let a = pool.map_async(square, 0..5).unwrap();
        let b = pool.apply_async(add, (2, 3)).unwrap();
        (a.await, b.await)
    });
    assert_eq!(all.0.unwrap(), vec![0, 1, 4, 9, 16]);
    assert_eq!(all.1.unwrap(), 5);
}

#[test]
fn callbacks_run_in_this_process() {
    let pool = pool(2);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (ok, err) = (Arc::clone(&seen), Arc::clone(&seen));
    let pending = pool
        .map_async(square, 0..4)
        .unwrap()
        .on_success(move |values| ok.lock().unwrap().push(format!("ok {values:?}")))
        .on_error(move |e| err.lock().unwrap().push(format!("err {e}")));
    assert_eq!(pending.get().unwrap(), vec![0, 1, 4, 9]);
    let (ok, err) = (Arc::clone(&seen), Arc::clone(&seen));
    let failing = pool
        .apply_async(fail_on, 4)
        .unwrap()
        .on_success(move |v| ok.lock().unwrap().push(format!("ok {v}")))
        .on_error(move |e| err.lock().unwrap().push(format!("err {e}")));
    failing.wait();
    // A callback attached after completion runs at once, on this thread.
    let late = Arc::clone(&seen);
    let failing = failing.on_error(move |_| late.lock().unwrap().push("late".into()));
    assert!(failing.get().is_err());
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0], "ok [0, 1, 4, 9]");
    assert!(
        seen[1].starts_with("err job `parity::fail_on` panicked"),
        "{seen:?}"
    );
    assert_eq!(seen[2], "late");
    assert_eq!(seen.len(), 3);
}

#[test]
fn imap_keeps_order_and_imap_unordered_does_not_wait() {
    let pool = pool(2);
    let got: Vec<u64> = pool.imap(square, 0..50).collect::<Result<_, _>>().unwrap();
    assert_eq!(got, (0..50).map(|x| x * x).collect::<Vec<_>>());
    // One slow item first: unordered yields the fast ones before it.
    let order: Vec<u64> = pool
        .imap_unordered(slow_square, vec![600, 1, 1, 1])
        .map(Result::unwrap)
        .collect();
    assert_eq!(order.len(), 4);
    assert_eq!(*order.last().unwrap(), 360_000, "{order:?}");
    let ordered: Vec<u64> = pool
        .imap(slow_square, vec![300, 1, 1])
        .map(Result::unwrap)
        .collect();
    assert_eq!(ordered, vec![90_000, 1, 1]);
}

#[test]
fn imap_on_an_endless_input() {
    let pool = pool(2);
    let first: Vec<u64> = pool
        .imap(square, 0u64..)
        .take(500)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(first, (0..500u64).map(|x| x * x).collect::<Vec<_>>());
    let chunked: u64 = pool
        .chunksize(100)
        .imap_unordered(square, 0u64..)
        .take(1000)
        .map(Result::unwrap)
        .count() as u64;
    assert_eq!(chunked, 1000);
}

#[test]
fn imap_reads_input_lazily_with_bounded_lookahead() {
    let pool = pool(2);
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&pulled);
    let input = (0u64..).inspect(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let mut results = pool.chunksize(10).imap(square, input);
    assert_eq!(
        pulled.load(Ordering::SeqCst),
        0,
        "nothing is read before iterating"
    );
    assert_eq!(results.next().unwrap().unwrap(), 0);
    let after_first = pulled.load(Ordering::SeqCst);
    // At most 2 chunks per worker are in flight.
    assert!(
        after_first <= 4 * 10,
        "read {after_first} items for one result"
    );
    for _ in 0..99 {
        results.next().unwrap().unwrap();
    }
    let after_hundred = pulled.load(Ordering::SeqCst);
    assert!(
        after_hundred <= 100 + 4 * 10,
        "read {after_hundred} items for 100 results"
    );
}

#[test]
fn imap_yields_per_item_errors_and_continues() {
    let pool = pool(2);
    let results: Vec<Result<u64, Error>> = pool.chunksize(3).imap(fail_on, 0..10).collect();
    assert_eq!(results.len(), 10);
    for (i, result) in results.iter().enumerate() {
        match (i % 5 == 4, result) {
            (true, Err(Error::Panicked { index, .. })) => assert_eq!(*index, i),
            (false, Ok(value)) => assert_eq!(*value, i as u64),
            other => panic!("item {i}: {other:?}"),
        }
    }
}

#[test]
fn chunksize_per_call() {
    let pool = pool(2);
    // With a chunk size of 25, 100 items make 4 tasks; max_tasks_per_child
    // is not involved, so just check results and the zero error.
    assert_eq!(
        pool.chunksize(25).map(square, 0..100).unwrap(),
        (0..100).map(|x| x * x).collect::<Vec<_>>()
    );
    assert_eq!(
        pool.chunksize(7).starmap(add, vec![(1, 1); 20]).unwrap(),
        vec![2; 20]
    );
    let err = pool.chunksize(0).map(square, 0..3).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    let mut lazy = pool.chunksize(0).imap(square, 0..3);
    assert!(matches!(lazy.next(), Some(Err(Error::Config(_)))));
    assert!(lazy.next().is_none());
}

#[test]
fn initializer_runs_in_every_worker_including_replacements() {
    let pool = Pool::builder()
        .processes(2)
        .initializer(set_greeting, "hello from init".to_string())
        .max_tasks_per_child(1)
        .build()
        .unwrap();
    // Every task runs on a fresh worker (max_tasks_per_child = 1), so each
    // answer proves a replacement ran the initializer too.
    let answers = pool.chunksize(1).map(greeting, vec![(); 6]).unwrap();
    assert_eq!(answers, vec!["hello from init".to_string(); 6]);
}

#[test]
fn failing_initializer_fails_build_quickly() {
    let started = Instant::now();
    let err = Pool::builder()
        .processes(2)
        .initializer(broken_initializer, ())
        .build()
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    match &err {
        Error::InitializerFailed { job, message } => {
            assert_eq!(job, "parity::broken_initializer");
            assert!(message.contains("cannot load the model"), "{message}");
        }
        other => panic!("expected InitializerFailed, got {other:?}"),
    }
}

#[test]
fn max_tasks_per_child_replaces_workers() {
    let pool = Pool::builder()
        .processes(2)
        .max_tasks_per_child(2)
        .build()
        .unwrap();
    // 12 one-item tasks, 2 per worker life: at least 6 distinct workers.
    let pids: HashSet<u32> = pool
        .chunksize(1)
        .map(pid_of, 0..12)
        .unwrap()
        .into_iter()
        .collect();
    assert!(
        pids.len() >= 6,
        "only {} distinct workers: {pids:?}",
        pids.len()
    );

    let unlimited = pool_of_two_pids();
    assert!(unlimited <= 2);
    let zero = Pool::builder().max_tasks_per_child(0).build().unwrap_err();
    assert!(matches!(zero, Error::Config(_)));
}

fn pool_of_two_pids() -> usize {
    let pool = pool(2);
    let pids: HashSet<u32> = pool
        .chunksize(1)
        .map(pid_of, 0..12)
        .unwrap()
        .into_iter()
        .collect();
    pids.len()
}

#[test]
fn task_timeout_kills_and_replaces_the_worker() {
    let pool = Pool::builder()
        .processes(1)
        .task_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let before = pool.apply(pid_of, 0).unwrap();
    let started = Instant::now();
    let err = pool.apply(sleep_ms, 60_000).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    match &err {
        Error::TaskTimedOut {
            job,
            first,
            count,
            timeout,
        } => {
            assert_eq!(job, "parity::sleep_ms");
            assert_eq!((*first, *count), (0, 1));
            assert_eq!(*timeout, Duration::from_millis(500));
        }
        other => panic!("expected TaskTimedOut, got {other:?}"),
    }
    assert!(err.to_string().contains("parity::sleep_ms"), "{err}");
    // Replaced: a new worker answers, and fast tasks still fit in the limit.
    let after = pool.apply(pid_of, 0).unwrap();
    assert_ne!(before, after);
    assert_eq!(pool.map(sleep_ms, vec![10, 20]).unwrap(), vec![10, 20]);
}

#[test]
fn progress_bar_option_keeps_results() {
    let pool = Pool::builder().processes(2).progress(true).build().unwrap();
    assert_eq!(pool.map(square, 0..100).unwrap()[99], 9801);
    assert_eq!(pool.imap(square, 0..10).filter(Result::is_ok).count(), 10);
}

#[test]
fn awaiting_on_tokio_does_not_block_the_runtime_thread() {
    let pool = pool(1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let ticks = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&ticks);
    let value = runtime.block_on(async {
        // Shares the one runtime thread with the await below.
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        let value = pool.apply_async(slow_square, 400).unwrap().await;
        ticker.abort();
        value
    });
    assert_eq!(value.unwrap(), 160_000);
    // 400 ms of waiting: a blocked thread would show (almost) no ticks.
    let ticks = ticks.load(Ordering::SeqCst);
    assert!(ticks >= 5, "the runtime thread was blocked: {ticks} ticks");
}

#[test]
fn a_panicking_callback_still_lets_the_call_finish_and_the_pool_work() {
    let pool = pool(1);
    let mut call = pool
        .apply_async(slow_square, 300)
        .unwrap()
        .on_success(|_| panic!("a callback that panics"));
    // The outcome is published although the callback panicked on the
    // pool's thread, and that thread goes on feeding its worker.
    assert_eq!(call.get_timeout(Duration::from_secs(20)).unwrap(), 90_000);
    let mut next = pool.apply_async(square, 5).unwrap();
    assert_eq!(next.get_timeout(Duration::from_secs(20)).unwrap(), 25);
}
