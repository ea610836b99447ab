//! The core contract: #[pool_job], Pool::map / starmap / apply, errors, shutdown.
//!
//! Every test builds its own pool; the harness runs them in parallel, so
//! several pools live in this process at once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use procpool::{Error, Pool, pool_job};
use procpool_test_jobs::{Point, manhattan};
use procpool_tests::eventually;
use serde::{Deserialize, Serialize};

#[pool_job]
fn square(x: u64) -> u64 {
    x * x
}

#[pool_job]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[pool_job]
fn answer() -> u32 {
    42
}

#[pool_job]
#[allow(clippy::too_many_arguments)]
fn eight(a: u8, b: u16, c: u32, d: u64, e: i8, f: i16, g: String, h: Vec<u8>) -> String {
    format!("{a}-{b}-{c}-{d}-{e}-{f}-{g}-{}", h.len())
}

#[pool_job]
fn checked_div(a: i32, b: i32) -> Result<i32, String> {
    if b == 0 {
        Err(format!("cannot divide {a} by zero"))
    } else {
        Ok(a / b)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u32,
    items: Vec<String>,
    discount: Option<f64>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Invoice {
    id: u32,
    lines: usize,
}

#[pool_job]
fn invoice(order: Order) -> Invoice {
    Invoice {
        id: order.id,
        lines: order.items.len(),
    }
}

/// Sleeps `ms`, then returns `(item, pid)`: uneven durations and who ran it.
#[pool_job]
fn sleepy(ms: u64) -> (u64, u32) {
    std::thread::sleep(Duration::from_millis(ms));
    (ms, std::process::id())
}

#[pool_job]
fn panics_on_three(x: u64) -> u64 {
    if x == 3 {
        panic!("three is not allowed");
    }
    x
}

#[pool_job]
fn kill_self(x: u64) -> u64 {
    if x == 1 {
        // SAFETY: plain libc calls; the process dies here.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    x
}

mod nested {
    pub(super) mod deeper {
        use procpool::pool_job;

        #[pool_job]
        pub fn shout(s: String) -> String {
            s.to_uppercase()
        }
    }
}

#[pool_job(name = "custom.registered.name")]
fn renamed(x: u8) -> u8 {
    x + 1
}

struct Unserializable;

impl Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "Unserializable holds a file handle",
        ))
    }
}

impl<'de> Deserialize<'de> for Unserializable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Ok(Unserializable)
    }
}

#[pool_job]
fn takes_unserializable(_: Unserializable) -> u8 {
    0
}

/// A number that cannot be serialized when it is 7.
#[derive(Deserialize)]
struct NotSeven(u64);

impl Serialize for NotSeven {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            7 => Err(serde::ser::Error::custom("seven")),
            n => s.serialize_u64(n),
        }
    }
}

#[pool_job]
fn not_seven(n: NotSeven) -> u64 {
    n.0
}

#[pool_job]
fn double(n: u64) -> u64 {
    2 * n
}

/// The item that fails to serialize is named by its index, whatever the
/// chunking; plain numbers written in runs (a chunk at a time) land in
/// their places across every chunk boundary.
#[test]
fn a_maps_items_keep_their_index_and_place_in_every_chunking() {
    let pool = pool(2);
    for chunked in [pool.chunksize(1), pool.chunksize(3), pool.chunksize(None)] {
        let err = chunked.map(not_seven, (0..20).map(NotSeven)).unwrap_err();
        match &err {
            Error::Serialization { direction, .. } => {
                assert_eq!(direction, "serialize argument 7")
            }
            other => panic!("expected Serialization, got {other:?}"),
        }
    }
    for size in [Some(1), Some(7), Some(1000), None] {
        for len in [0u64, 1, 6, 7, 8, 999, 1001, 70_000] {
            if size == Some(1) && len > 1001 {
                continue;
            }
            let got = pool.chunksize(size).map(double, 0..len).unwrap();
            assert!(
                got.iter().copied().eq((0..len).map(|n| 2 * n)),
                "{size:?} {len}"
            );
            let input: Vec<u64> = (0..len).collect();
            let got = pool.chunksize(size).map(double, &input).unwrap();
            assert!(
                got.iter().copied().eq((0..len).map(|n| 2 * n)),
                "{size:?} {len}"
            );
        }
    }
}

/// Yields 1 to 5, then ends, then would yield three more (an iterator
/// may), then ends for good: with a length it claims, so that `map` takes
/// it as it comes.
struct Flicker(u64);

impl Iterator for Flicker {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        self.0 += 1;
        match self.0 {
            1..=5 => Some(self.0),
            7..=9 => Some(1000 + self.0),
            _ => None,
        }
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = 5usize.saturating_sub(self.0 as usize);
        (left, Some(left))
    }
}

/// An input ends at its first `None`, as a `for` loop ends, also where
/// plain numbers are read a run at a time.
#[test]
fn an_input_ends_at_its_first_end() {
    let pool = pool(2);
    for size in [None, Some(1), Some(3), Some(100)] {
        let chunked = pool.chunksize(size);
        assert_eq!(chunked.map(double, Flicker(0)).unwrap(), [2, 4, 6, 8, 10]);
        let lazy: Vec<u64> = chunked
            .imap(double, Flicker(0))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(lazy, [2, 4, 6, 8, 10], "{size:?}");
    }
}

fn pool(n: usize) -> Pool {
    Pool::with_processes(n).unwrap_or_else(|e| panic!("pool start failed: {e}"))
}

/// Children of this process with these pids, zombies included (a zombie keeps its /proc entry).
fn live_children(pids: &HashSet<u32>) -> Vec<u32> {
    let me = std::process::id();
    pids.iter()
        .copied()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let after_comm = &stat[stat.rfind(')')? + 2..];
                    after_comm.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(me)
        })
        .collect()
}

/// The pid of every worker: one slow task per worker, so each takes one.
fn worker_pids(pool: &Pool) -> HashSet<u32> {
    let n = pool.processes();
    let pids: HashSet<u32> = pool
        .map(sleepy, vec![300; n])
        .unwrap()
        .into_iter()
        .map(|(_, pid)| pid)
        .collect();
    assert_eq!(
        pids.len(),
        n,
        "each of {n} workers should take one slow task"
    );
    pids
}

#[test]
fn the_readme_contract() {
    let pool = Pool::new().unwrap();
    assert_eq!(
        pool.processes(),
        std::thread::available_parallelism().unwrap().get()
    );
    assert_eq!(
        pool.map(square, 0..10).unwrap(),
        vec![0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
    );
    assert_eq!(pool.starmap(add, vec![(1, 2), (3, 4)]).unwrap(), vec![3, 7]);
    assert_eq!(pool.apply(square, 7).unwrap(), 49);
    assert_eq!(pool.apply(add, (20, 22)).unwrap(), 42);
    assert_eq!(square(3), 9);
    assert_eq!(add(2, 2), 4);
    pool.close();
    pool.join().unwrap();
}

#[test]
fn map_accepts_tuples_and_unit_items() {
    let pool = pool(2);
    assert_eq!(pool.map(add, vec![(1, 1), (2, 2)]).unwrap(), vec![2, 4]);
    assert_eq!(pool.map(answer, vec![(), ()]).unwrap(), vec![42, 42]);
    assert_eq!(pool.apply(answer, ()).unwrap(), 42);
    assert_eq!(
        pool.starmap(square, vec![(5,), (6,)]).unwrap(),
        vec![25, 36]
    );
}

#[test]
fn builder_sets_process_count_and_zero_is_an_error() {
    let pool = Pool::builder().processes(3).build().unwrap();
    assert_eq!(pool.processes(), 3);
    assert_eq!(worker_pids(&pool).len(), 3);
    let err = Pool::with_processes(0).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(err.to_string().contains("at least one process"), "{err}");
    let err = Pool::builder().processes(0).build().unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
}

#[test]
fn order_is_kept_with_uneven_durations() {
    let pool = pool(2);
    // Early items are the slowest, so later chunks finish first.
    let delays: Vec<u64> = (0..12).map(|i| (12 - i) * 15).collect();
    let got: Vec<u64> = pool
        .map(sleepy, delays.clone())
        .unwrap()
        .into_iter()
        .map(|(ms, _)| ms)
        .collect();
    assert_eq!(got, delays);
}

#[test]
fn empty_and_large_inputs() {
    let pool = pool(2);
    assert_eq!(
        pool.map(square, Vec::<u64>::new()).unwrap(),
        Vec::<u64>::new()
    );
    assert_eq!(
        pool.starmap(add, Vec::<(i64, i64)>::new()).unwrap(),
        Vec::<i64>::new()
    );
    let expected: Vec<u64> = (0..10_000u64).map(|x| x * x).collect();
    assert_eq!(pool.map(square, 0..10_000).unwrap(), expected);
}

#[test]
fn iterators_of_unknown_length() {
    let pool = pool(2);
    let odd = (0..1000u64).filter(|x| x % 2 == 1);
    let expected: Vec<u64> = (0..1000u64).filter(|x| x % 2 == 1).map(|x| x * x).collect();
    assert_eq!(pool.map(square, odd).unwrap(), expected);
    // An iterator that is not Send is fine: items are encoded on the caller's thread.
    let rc = std::rc::Rc::new(5u64);
    let not_send = (0..3u64).map(move |x| x + *rc);
    assert_eq!(pool.map(square, not_send).unwrap(), vec![25, 36, 49]);
}

#[test]
fn structs_results_and_many_arguments() {
    let pool = pool(2);
    let orders = vec![
        Order {
            id: 1,
            items: vec!["a".into(), "b".into()],
            discount: None,
        },
        Order {
            id: 2,
            items: vec![],
            discount: Some(0.5),
        },
    ];
    assert_eq!(
        pool.map(invoice, orders).unwrap(),
        vec![Invoice { id: 1, lines: 2 }, Invoice { id: 2, lines: 0 }]
    );
    assert_eq!(
        pool.starmap(checked_div, vec![(6, 3), (1, 0)]).unwrap(),
        vec![Ok(2), Err("cannot divide 1 by zero".to_string())]
    );
    let out = pool
        .apply(eight, (1, 2, 3, 4, -5, -6, "seven".to_string(), vec![0; 8]))
        .unwrap();
    assert_eq!(out, "1-2-3-4--5--6-seven-8");
}

#[test]
fn jobs_in_nested_modules_and_other_crates() {
    let pool = pool(2);
    assert_eq!(
        pool.map(
            nested::deeper::shout,
            vec!["a".to_string(), "bc".to_string()]
        )
        .unwrap(),
        vec!["A", "BC"]
    );
    assert_eq!(
        nested::deeper::shout.name(),
        "pool::basics::nested::deeper::shout"
    );
    assert_eq!(pool.apply(manhattan, Point { x: -3, y: 4 }).unwrap(), 7);
    assert_eq!(manhattan(Point { x: 1, y: -1 }), 2);
    let pid = pool.apply(procpool_test_jobs::worker_pid, ()).unwrap();
    assert_ne!(pid, std::process::id());
}

#[test]
fn name_option_registers_under_that_name() {
    assert_eq!(renamed.name(), "custom.registered.name");
    assert_eq!(square.name(), "pool::basics::square");
    let pool = pool(1);
    assert_eq!(pool.map(renamed, vec![1, 2]).unwrap(), vec![2, 3]);
}

#[test]
fn jobs_run_in_other_processes_at_most_n() {
    let pool = pool(2);
    let pids = worker_pids(&pool);
    assert!(!pids.contains(&std::process::id()));
    let more: HashSet<u32> = pool
        .map(sleepy, vec![5; 40])
        .unwrap()
        .into_iter()
        .map(|(_, pid)| pid)
        .collect();
    assert!(
        more.len() <= 2 && more.is_subset(&pids),
        "{more:?} vs {pids:?}"
    );
}

#[test]
fn panic_is_reported_and_pool_survives() {
    let pool = pool(2);
    let err = pool.map(panics_on_three, 0..8).unwrap_err();
    match &err {
        Error::Panicked {
            job,
            index,
            message,
        } => {
            assert_eq!(job, "pool::basics::panics_on_three");
            assert_eq!(*index, 3);
            assert!(message.contains("three is not allowed"), "{message}");
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    assert!(err.to_string().contains("panicked on item 3"), "{err}");
    let err = pool.apply(panics_on_three, 3).unwrap_err();
    assert!(matches!(err, Error::Panicked { index: 0, .. }), "{err:?}");
    assert_eq!(pool.map(square, 0..4).unwrap(), vec![0, 1, 4, 9]);
}

#[test]
fn killed_worker_is_reported_and_replaced() {
    let pool = pool(2);
    let before = worker_pids(&pool);
    let started = Instant::now();
    let err = pool.apply(kill_self, 1).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    match &err {
        Error::WorkerDied {
            pid, cause, job, ..
        } => {
            assert!(before.contains(pid), "{pid} not in {before:?}");
            assert_eq!(*cause, procpool::ExitCause::Signal(9));
            assert_eq!(job, "pool::basics::kill_self");
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("signal 9") && text.contains("SIGKILL"),
        "{text}"
    );
    // The pool still has two working processes, one of them new.
    let after = worker_pids(&pool);
    assert_eq!(after.len(), 2);
    assert_eq!(
        after.intersection(&before).count(),
        1,
        "{before:?} -> {after:?}"
    );
    assert_eq!(pool.map(kill_self, vec![0, 2, 3]).unwrap(), vec![0, 2, 3]);
}

#[test]
fn closed_pool_refuses_work() {
    let pool = pool(1);
    pool.close();
    assert!(matches!(pool.map(square, 0..3), Err(Error::Closed)));
    assert!(matches!(
        pool.map(square, Vec::<u64>::new()),
        Err(Error::Closed)
    ));
    assert!(matches!(pool.apply(square, 1), Err(Error::Closed)));
    pool.join().unwrap();
    assert!(matches!(
        pool.starmap(add, vec![(1, 1)]),
        Err(Error::Closed)
    ));
}

#[test]
fn join_waits_for_queued_work() {
    let pool = pool(2);
    let pending = pool.map_async(sleepy, vec![100; 6]).unwrap();
    pool.close();
    pool.join().unwrap();
    assert!(pending.ready());
    assert_eq!(pending.get().unwrap().len(), 6);
}

#[test]
fn terminate_unblocks_a_long_map() {
    let pool = pool(2);
    let returned = AtomicBool::new(false);
    std::thread::scope(|s| {
        let caller = s.spawn(|| {
            let result = pool.map(sleepy, vec![60_000; 4]);
            returned.store(true, Ordering::SeqCst);
            result
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(!returned.load(Ordering::SeqCst));
        let started = Instant::now();
        pool.terminate();
        eventually("the map to return", || returned.load(Ordering::SeqCst));
        assert!(started.elapsed() < Duration::from_secs(5));
        let err = caller.join().unwrap().unwrap_err();
        assert!(matches!(err, Error::Terminated { .. }), "{err:?}");
    });
    assert!(matches!(pool.apply(square, 1), Err(Error::Closed)));
}

#[test]
fn eight_threads_share_one_pool() {
    let pool = pool(2);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8u64)
            .map(|t| {
                let pool = &pool;
                s.spawn(move || {
                    for round in 0..5u64 {
                        let base = t * 1000 + round * 100;
                        let got = pool.map(square, base..base + 50).unwrap();
                        let want: Vec<u64> = (base..base + 50).map(|x| x * x).collect();
                        assert_eq!(got, want);
                        assert_eq!(pool.apply(add, (t as i64, 1)).unwrap(), t as i64 + 1);
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
    });
}

#[test]
fn pool_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Pool>();
    assert_send_sync::<procpool::AsyncResult<Vec<u64>>>();
}

#[test]
fn no_child_left_after_drop() {
    let pool = pool(2);
    let pids = worker_pids(&pool);
    assert_eq!(live_children(&pids).len(), 2);
    drop(pool);
    // Drop reaps before returning: no process and no zombie is left.
    assert_eq!(live_children(&pids), Vec::<u32>::new());
}

#[test]
fn no_child_left_after_close_and_join() {
    let pool = pool(2);
    let pids = worker_pids(&pool);
    pool.close();
    pool.join().unwrap();
    assert_eq!(live_children(&pids), Vec::<u32>::new());
}

#[test]
fn no_child_left_after_terminate() {
    let pool = pool(2);
    let pids = worker_pids(&pool);
    pool.terminate();
    eventually("workers to be reaped", || live_children(&pids).is_empty());
    drop(pool);
    assert_eq!(live_children(&pids), Vec::<u32>::new());
}

#[test]
fn unserializable_argument_is_reported_and_pool_survives() {
    let pool = pool(1);
    let err = pool
        .map(takes_unserializable, vec![Unserializable])
        .unwrap_err();
    match &err {
        Error::Serialization { job, message, .. } => {
            assert_eq!(job, "pool::basics::takes_unserializable");
            // The impl's own words, and the type they are about.
            assert_eq!(
                message,
                "cannot serialize a `pool::basics::Unserializable`: Unserializable holds a file handle"
            );
        }
        other => panic!("expected Serialization, got {other:?}"),
    }
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
}

#[pool_job]
fn record_run(path: String, i: u64) -> u64 {
    procpool_tests::append_line(path, i);
    i
}

#[test]
fn a_blocking_map_encodes_its_input_only_a_few_tasks_ahead() {
    // One worker: at most 2 × 1 + 1 tasks unanswered while submitting.
    let pool = pool(1);
    let path = std::env::temp_dir().join(format!("procpool-window-{}", std::process::id()));
    let path_text = path.to_string_lossy().into_owned();
    let runs = || {
        std::fs::read_to_string(&path)
            .map(|text| text.lines().count())
            .unwrap_or(0)
    };
    let most_ahead = std::cell::Cell::new(0);
    let items = (0..60u64).map(|i| {
        let pulled = i as usize + 1;
        most_ahead.set(most_ahead.get().max(pulled.saturating_sub(runs())));
        (path_text.clone(), i)
    });
    let out = pool.chunksize(1).starmap(record_run, items).unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(out, (0..60).collect::<Vec<_>>());
    // Pulled but not yet run: the window (3) and the item being pulled.
    assert!(most_ahead.get() <= 4, "{} items ahead", most_ahead.get());
}

/// Items are only serialized: references to them send the same values, in
/// every call over many items, and the caller keeps its data.
#[test]
fn calls_over_many_items_take_references() {
    let pool = pool(2);
    let orders: Vec<Order> = (0..7)
        .map(|id| Order {
            id,
            items: vec!["x".to_owned(); id as usize],
            discount: (id % 2 == 0).then_some(0.5),
        })
        .collect();
    let expected: Vec<Invoice> = orders
        .iter()
        .map(|order| Invoice {
            id: order.id,
            lines: order.items.len(),
        })
        .collect();
    assert_eq!(pool.map(invoice, &orders).unwrap(), expected);
    assert_eq!(pool.chunksize(3).map(invoice, &orders).unwrap(), expected);
    assert_eq!(
        pool.map_async(invoice, orders.iter())
            .unwrap()
            .get()
            .unwrap(),
        expected
    );
    let lazy: Vec<Invoice> = pool
        .imap(invoice, &orders)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(lazy, expected);
    let mut unordered: Vec<u32> = pool
        .imap_unordered(invoice, &orders)
        .map(|result| result.unwrap().id)
        .collect();
    unordered.sort_unstable();
    assert_eq!(unordered, (0..7).collect::<Vec<_>>());
    let pairs: Vec<(i64, i64)> = (0..5).map(|i| (i, 10 * i)).collect();
    assert_eq!(pool.starmap(add, &pairs).unwrap(), vec![0, 11, 22, 33, 44]);
    // Still the caller's, unchanged.
    assert_eq!(orders.len(), 7);
    assert_eq!(orders[6].items.len(), 6);
    // A reference whose value cannot be serialized fails as the value does.
    let bad = [Unserializable];
    let err = pool.map(takes_unserializable, &bad).unwrap_err();
    assert!(matches!(err, Error::Serialization { .. }), "{err:?}");
}

/// `Duration::MAX` is "no limit" wherever a duration is taken: nothing adds
/// it to an `Instant` (which would panic on overflow).
#[test]
fn duration_max_means_no_limit() {
    let pool = Pool::builder()
        .processes(1)
        .task_timeout(Duration::MAX)
        .spawn_timeout(Duration::MAX)
        .build()
        .unwrap();
    assert_eq!(pool.apply(square, 7).unwrap(), 49);
    assert_eq!(pool.map(square, 0..4).unwrap(), vec![0, 1, 4, 9]);
    let imap: Vec<u64> = pool.imap(square, 0..3).map(Result::unwrap).collect();
    assert_eq!(imap, vec![0, 1, 4]);
    // A finished call: every wait returns at once.
    let mut finished = pool.apply_async(square, 3).unwrap();
    assert!(finished.wait_timeout(Duration::MAX));
    assert!(finished.ready());
    assert_eq!(finished.get_timeout(Duration::MAX).unwrap(), 9);
    // A running one: the wait ends when the result comes.
    let mut running = pool.apply_async(sleepy, 200).unwrap();
    assert_eq!(running.get_timeout(Duration::MAX).unwrap().0, 200);
    // A task killed by a replacement after a crash still works too.
    assert!(matches!(
        pool.apply(kill_self, 1),
        Err(Error::WorkerDied { .. })
    ));
    assert_eq!(pool.apply(square, 5).unwrap(), 25);
}

/// What `ps`, `top` and `pgrep` call this process.
#[pool_job]
fn process_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .unwrap_or_default()
        .trim_end()
        .to_owned()
}

#[test]
fn workers_carry_the_programs_name() {
    let exe = std::env::current_exe().unwrap();
    let name = exe.file_name().unwrap().to_string_lossy().into_owned();
    let expected: String = name.chars().take(15).collect();
    let pool = Pool::with_processes(2).unwrap();
    for comm in pool.map(process_comm, vec![(); 4]).unwrap() {
        assert_eq!(comm, expected, "a pool worker");
    }
    let mut process = procpool::Process::spawn(process_comm, ()).unwrap();
    assert_eq!(process.join().unwrap(), expected, "a Process");
}
