//! Per-worker state with `initializer` and a `static OnceLock` (the guide's
//! page `procpool::guide::worker_state`): built once in every worker
//! process, replacements included, and shared by every task that worker
//! runs.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use procpool::{Error, Pool, pool_job};

/// The state: which process built it, from which argument.
struct State {
    built_by: u32,
    seed: u64,
}

static STATE: OnceLock<State> = OnceLock::new();
static BUILDS: AtomicUsize = AtomicUsize::new(0);

#[pool_job]
fn build_state(seed: u64) {
    STATE.get_or_init(|| {
        BUILDS.fetch_add(1, Ordering::SeqCst);
        State {
            built_by: std::process::id(),
            seed,
        }
    });
}

/// `(x + seed, this worker's pid, the pid that built its state, builds so far)`.
#[pool_job]
fn use_state(x: u64) -> (u64, u32, u32, usize) {
    let state = STATE
        .get()
        .expect("the initializer builds the state in every worker");
    (
        x + state.seed,
        std::process::id(),
        state.built_by,
        BUILDS.load(Ordering::SeqCst),
    )
}

#[test]
fn state_is_built_once_per_worker_and_again_in_replacements() {
    let pool = Pool::builder()
        .processes(2)
        .initializer(build_state, 100)
        .max_tasks_per_child(3)
        .build()
        .expect("a pool");
    let results = pool.chunksize(1).map(use_state, 0..12).expect("the map");
    let mut tasks_per_worker: HashMap<u32, usize> = HashMap::new();
    for (x, (value, pid, built_by, builds)) in results.into_iter().enumerate() {
        assert_eq!(value, x as u64 + 100, "the initializer's argument");
        assert_ne!(pid, std::process::id(), "ran in a worker");
        assert_eq!(built_by, pid, "the state is the worker's own");
        assert_eq!(builds, 1, "built once in worker {pid}");
        *tasks_per_worker.entry(pid).or_default() += 1;
    }
    // 12 tasks, at most 3 per worker: at least 4 workers, each of which
    // built its own state once and used it for all its tasks.
    assert!(tasks_per_worker.len() >= 4, "{tasks_per_worker:?}");
    assert!(
        tasks_per_worker.values().all(|&n| n <= 3),
        "{tasks_per_worker:?}"
    );
    // The caller's own copy was never touched.
    assert!(STATE.get().is_none());
}

#[test]
fn without_the_initializer_a_job_says_what_is_missing() {
    let pool = Pool::with_processes(1).expect("a pool");
    match pool.apply(use_state, 1) {
        Err(Error::Panicked { message, .. }) => assert!(
            message.contains("the initializer builds the state in every worker"),
            "{message}"
        ),
        other => panic!("expected a panic, got {other:?}"),
    }
    // The worker survived the panic, still without state.
    assert_ne!(
        pool.apply(use_state_or_none, ())
            .expect("the worker has no state"),
        std::process::id()
    );
}

/// Fails unless this worker has no state; returns its pid.
#[pool_job]
fn use_state_or_none() -> u32 {
    assert!(STATE.get().is_none());
    std::process::id()
}
