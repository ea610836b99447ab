//! A worker that dies in the middle of a chunk costs exactly the item it was
//! running: the items it finished keep their results, the items it had not
//! started run on another worker, and no item runs twice.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use procpool::{Error, ExitCause, Pool, pool_job};

/// Records that item `index` ran (a line with this process's pid in a file
/// of its own under `dir`), then crashes the worker as `how` says when
/// `index` is `crash_at`.
#[pool_job]
fn run_item(dir: String, index: u64, crash_at: u64, how: String) -> u64 {
    record_and_maybe_crash(&dir, index, index == crash_at, &how)
}

/// Like [`run_item`], but the item at `crash_at` crashes on its first run
/// only (the marker it leaves tells the second run).
#[pool_job]
fn run_item_once(dir: String, index: u64, crash_at: u64, how: String) -> u64 {
    let first_run = index == crash_at
        && std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(Path::new(&dir).join("crashed-once"))
            .is_ok();
    record_and_maybe_crash(&dir, index, first_run, &how)
}

fn record_and_maybe_crash(dir: &str, index: u64, crash: bool, how: &str) -> u64 {
    procpool_tests::append_line(Path::new(dir).join(index.to_string()), std::process::id());
    if crash {
        match how {
            // SAFETY: deliberately ending this worker process.
            "kill" => unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            },
            // A fault inside C code: glibc's strlen reading address 0.
            // SAFETY: deliberately crashing this worker process.
            "c-segv" => unsafe {
                libc::strlen(std::hint::black_box(std::ptr::null()));
            },
            _ => {}
        }
    }
    index * 3
}

/// A fresh directory for one test's execution records.
fn records(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("procpool-one-item-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The pids that ran item `index`, one per run.
fn runs(dir: &Path, index: u64) -> Vec<u32> {
    std::fs::read_to_string(dir.join(index.to_string()))
        .unwrap_or_default()
        .lines()
        .map(|line| line.parse().unwrap())
        .collect()
}

const ITEMS: u64 = 50;
const CRASH_AT: u64 = 17;

fn items(dir: &Path, how: &str) -> Vec<(String, u64, u64, String)> {
    let dir = dir.to_string_lossy().into_owned();
    (0..ITEMS)
        .map(|i| (dir.clone(), i, CRASH_AT, how.to_owned()))
        .collect()
}

fn crash_in_a_chunk_costs_one_item(how: &str, signal: i32) {
    let dir = records(how);
    let pool = Pool::with_processes(2).unwrap();
    let results: Vec<Result<u64, Error>> = pool
        .chunksize(ITEMS as usize)
        .imap(run_item, items(&dir, how))
        .collect();
    assert_eq!(results.len(), ITEMS as usize);
    for (index, result) in (0..ITEMS).zip(&results) {
        if index == CRASH_AT {
            match result {
                Err(Error::WorkerDied {
                    first,
                    count,
                    cause,
                    attempts,
                    ..
                }) => {
                    assert_eq!((*first, *count, *attempts), (CRASH_AT as usize, 1, 1));
                    assert_eq!(*cause, ExitCause::Signal(signal));
                }
                other => panic!("item {index}: expected WorkerDied, got {other:?}"),
            }
        } else {
            assert_eq!(result.as_ref().ok(), Some(&(index * 3)), "item {index}");
        }
    }
    // Every item ran exactly once: those after the crash on another worker.
    let crashed = runs(&dir, CRASH_AT);
    assert_eq!(crashed.len(), 1);
    for index in 0..ITEMS {
        let pids = runs(&dir, index);
        assert_eq!(pids.len(), 1, "item {index} ran {} times", pids.len());
        if index < CRASH_AT {
            assert_eq!(pids, crashed, "item {index} ran on the worker that died");
        } else if index > CRASH_AT {
            assert_ne!(pids, crashed, "item {index} ran on the worker that died");
        }
    }
    let stats = pool.stats();
    assert_eq!(stats.tasks_retried, 0, "{stats:?}");
    assert_eq!(stats.workers_died, 1, "{stats:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigkill_on_item_k_fails_item_k_only() {
    crash_in_a_chunk_costs_one_item("kill", libc::SIGKILL);
}

#[test]
fn a_segfault_in_c_code_on_item_k_fails_item_k_only() {
    crash_in_a_chunk_costs_one_item("c-segv", libc::SIGSEGV);
}

#[test]
fn a_map_fails_with_the_item_that_crashed() {
    let dir = records("map");
    let pool = Pool::with_processes(2).unwrap();
    let err = pool
        .chunksize(ITEMS as usize)
        .map(run_item, items(&dir, "kill"))
        .unwrap_err();
    match err {
        Error::WorkerDied { first, count, .. } => assert_eq!((first, count), (17, 1)),
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    // Nothing ran twice.
    for index in 0..ITEMS {
        assert!(runs(&dir, index).len() <= 1, "item {index}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_retries_the_crashed_item_runs_again_and_nothing_else_does() {
    let dir = records("retry");
    let pool = Pool::builder().processes(2).retries(1).build().unwrap();
    let results = pool
        .chunksize(ITEMS as usize)
        .map(run_item_once, items(&dir, "kill"))
        .unwrap();
    assert_eq!(results, (0..ITEMS).map(|i| i * 3).collect::<Vec<_>>());
    for index in 0..ITEMS {
        let expected = if index == CRASH_AT { 2 } else { 1 };
        assert_eq!(runs(&dir, index).len(), expected, "item {index}");
    }
    assert_eq!(pool.stats().tasks_retried, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn progress_counts_each_item_as_it_finishes() {
    let dir = records("progress");
    let pool = Pool::with_processes(1).unwrap();
    let items: Vec<_> = (0..10u64)
        .map(|i| {
            (
                dir.to_string_lossy().into_owned(),
                i,
                u64::MAX,
                String::new(),
            )
        })
        .collect();
    // One chunk of ten items of 150 ms each: finished items are counted
    // while the chunk still runs, not all at once at its end.
    let call = pool.chunksize(10).map_async(sleepy, items).unwrap();
    let started = Instant::now();
    let mut seen = Vec::new();
    while !call.ready() && started.elapsed() < Duration::from_secs(30) {
        seen.push(pool.stats().items_done);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut call = call;
    assert_eq!(call.get_timeout(Duration::from_secs(30)).unwrap().len(), 10);
    let midway: Vec<u64> = seen.iter().copied().filter(|&n| n > 0 && n < 10).collect();
    assert!(
        midway.len() >= 3,
        "items were not counted one by one while the chunk ran: {seen:?}"
    );
    assert_eq!(pool.stats().items_done, 10);
    let _ = std::fs::remove_dir_all(&dir);
}

#[pool_job]
fn sleepy(dir: String, index: u64, _crash_at: u64, _how: String) -> u64 {
    let _ = dir;
    std::thread::sleep(Duration::from_millis(150));
    index
}

#[pool_job]
fn triple(x: u64) -> u64 {
    x * 3
}

#[test]
fn callers_that_drive_workers_themselves_and_queued_calls_mix() {
    // Blocking applies run on the caller's thread when a worker is idle,
    // queued ones on the drivers: from many threads at once, with a map
    // and async calls in between, every result is the right one.
    let pool = std::sync::Arc::new(Pool::with_processes(2).unwrap());
    let (done, finished) = std::sync::mpsc::channel();
    for thread in 0..6u64 {
        let (pool, done) = (std::sync::Arc::clone(&pool), done.clone());
        std::thread::spawn(move || {
            for i in 0..300 {
                let x = thread * 1000 + i;
                assert_eq!(pool.apply(triple, x).unwrap(), x * 3);
                if i % 50 == 0 {
                    let call = pool.apply_async(triple, x + 1).unwrap();
                    let tripled = pool.map(triple, 0..100u64).unwrap();
                    assert_eq!(tripled[99], 297);
                    assert_eq!(call.get().unwrap(), (x + 1) * 3);
                }
            }
            done.send(thread).unwrap();
        });
    }
    drop(done);
    // A lost task would leave its caller waiting for ever: bounded here.
    for _ in 0..6 {
        finished
            .recv_timeout(Duration::from_secs(120))
            .expect("a caller is still waiting after 120 s (or panicked)");
    }
    let stats = pool.stats();
    assert_eq!(stats.tasks_failed, 0, "{stats:?}");
}
