//! Workers that fail before connecting back: a clean `Error::Spawn`, never a hang.
//!
//! A worker that never greets its parent must not hold up `build()`: these
//! tests prove the handshake is bounded by `spawn_timeout` and by the
//! worker's exit. They run in their own binary because they steer the
//! workers' start-up through an inherited environment variable.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use procpool::{Error, Pool, Process, pool_job};

const HOOK: &str = "PROCPOOL_TEST_STARTUP";

/// Runs before procpool's own start-up hook (the binary's objects come
/// first in `.init_array`), so it can break a worker's start-up.
#[ctor::ctor(unsafe)]
fn break_worker_startup() {
    if std::env::var_os("__PROCPOOL_WORKER").is_none() {
        return;
    }
    match std::env::var(HOOK).as_deref() {
        Ok("abort") => std::process::abort(),
        Ok("exit") => std::process::exit(7),
        Ok("hang") => std::thread::sleep(Duration::from_secs(600)),
        _ => {}
    }
}

#[pool_job]
fn ident(x: u32) -> u32 {
    x
}

/// The hook variable is process-wide: one test at a time sets it.
static ENV: Mutex<()> = Mutex::new(());

fn with_hook<T>(mode: &str, f: impl FnOnce() -> T) -> T {
    let _guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: tests touching the environment are serialized by ENV, and the
    // pool reads it only while spawning, inside `f`.
    unsafe { std::env::set_var(HOOK, mode) };
    let result = f();
    // SAFETY: as above, still under ENV.
    unsafe { std::env::remove_var(HOOK) };
    result
}

#[test]
fn crash_during_startup_is_a_spawn_error() {
    for (mode, text) in [("abort", "signal 6"), ("exit", "exited with code 7")] {
        let started = Instant::now();
        let err = with_hook(mode, || Pool::with_processes(2)).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{mode}: {:?}",
            started.elapsed()
        );
        match &err {
            Error::Spawn(message) => {
                assert!(message.contains(text), "{mode}: {message}");
                assert!(message.contains("before connecting"), "{mode}: {message}");
            }
            other => panic!("{mode}: expected Spawn, got {other:?}"),
        }
        let err = with_hook(mode, || Process::spawn(ident, 1)).unwrap_err();
        assert!(matches!(err, Error::Spawn(_)), "{mode}: {err:?}");
    }
}

#[test]
fn worker_that_never_connects_times_out() {
    let started = Instant::now();
    let err = with_hook("hang", || {
        Pool::builder()
            .processes(1)
            .spawn_timeout(Duration::from_millis(500))
            .build()
    })
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    match &err {
        Error::Spawn(message) => assert!(message.contains("did not connect back"), "{message}"),
        other => panic!("expected Spawn, got {other:?}"),
    }
}

#[test]
fn pools_start_normally_without_the_hook() {
    let _guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let pool = Pool::with_processes(1).unwrap();
    assert_eq!(pool.apply(ident, 5).unwrap(), 5);
}
