//! `Process`: one job in one new process, with Python's exit-code semantics.

use std::time::Duration;

use procpool::{Error, ExitCause, Process, current_process, pool_job};
use procpool_tests::eventually;

#[pool_job]
fn whoami(sleep_ms: u64) -> (String, u32) {
    std::thread::sleep(Duration::from_millis(sleep_ms));
    let me = current_process();
    (me.name().to_owned(), me.pid())
}

#[pool_job]
fn explode(message: String) -> u8 {
    panic!("{message}");
}

#[pool_job]
fn add(a: i32, b: i32) -> i32 {
    a + b
}

#[test]
fn join_returns_the_value_from_another_process() {
    let mut process = Process::spawn(whoami, 0).unwrap();
    let pid = process.pid();
    let name = process.name().to_owned();
    assert_ne!(pid, std::process::id());
    let (inner_name, inner_pid) = process.join().unwrap();
    assert_eq!((inner_name, inner_pid), (name, pid));
    assert_eq!(Process::spawn(add, (2, 3)).unwrap().join().unwrap(), 5);
}

#[test]
fn names_are_numbered_and_unique_or_chosen() {
    let mut a = Process::spawn(whoami, 0).unwrap();
    let mut b = Process::spawn(whoami, 0).unwrap();
    for process in [&a, &b] {
        let number = process
            .name()
            .strip_prefix("Process-")
            .unwrap_or_else(|| panic!("unexpected name {}", process.name()));
        assert!(number.parse::<u32>().unwrap() >= 1);
    }
    assert_ne!(a.name(), b.name());
    let mut named = Process::builder()
        .name("cruncher")
        .spawn(whoami, 0)
        .unwrap();
    assert_eq!(named.name(), "cruncher");
    assert_eq!(named.join().unwrap().0, "cruncher");
    a.join().unwrap();
    b.join().unwrap();
}

#[test]
fn main_process_and_cpu_count() {
    assert_eq!(current_process().name(), "MainProcess");
    assert_eq!(current_process().pid(), std::process::id());
    assert_eq!(
        procpool::cpu_count(),
        std::thread::available_parallelism().unwrap().get()
    );
}

#[test]
fn alive_then_exit_code_zero() {
    let mut process = Process::spawn(whoami, 300).unwrap();
    assert!(process.is_alive());
    assert_eq!(process.exit_code(), None);
    eventually("the process to exit", || !process.is_alive());
    assert_eq!(process.exit_code(), Some(0));
    // The result is still there after the process exited.
    let name = process.name().to_owned();
    assert_eq!(process.join().unwrap().0, name);
}

#[test]
fn kill_gives_minus_nine_and_worker_died() {
    let mut process = Process::spawn(whoami, 60_000).unwrap();
    process.kill();
    eventually("the process to die", || !process.is_alive());
    assert_eq!(process.exit_code(), Some(-9));
    let err = process.join().unwrap_err();
    match &err {
        Error::WorkerDied { cause, .. } => assert_eq!(*cause, ExitCause::Signal(9)),
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert!(err.to_string().contains("signal 9"), "{err}");
}

#[test]
fn terminate_sends_sigterm() {
    let mut process = Process::spawn(whoami, 60_000).unwrap();
    process.terminate();
    eventually("the process to stop", || !process.is_alive());
    assert_eq!(process.exit_code(), Some(-15));
    assert!(matches!(process.join(), Err(Error::WorkerDied { .. })));
}

#[test]
fn panic_exits_with_one_and_join_reports_it() {
    let mut process = Process::spawn(explode, "kaboom".to_string()).unwrap();
    eventually("the process to exit", || !process.is_alive());
    assert_eq!(process.exit_code(), Some(1));
    match process.join() {
        Err(Error::Panicked { message, .. }) => assert!(message.contains("kaboom"), "{message}"),
        other => panic!("expected Panicked, got {other:?}"),
    }
}

#[test]
fn join_timeout_leaves_the_handle_usable() {
    let mut process = Process::spawn(whoami, 500).unwrap();
    let err = process.join_timeout(Duration::from_millis(20)).unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    assert!(process.is_alive());
    let (name, _) = process.join_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(name, process.name());
}

#[test]
fn dropping_an_unjoined_process_reaps_it() {
    let process = Process::spawn(whoami, 60_000).unwrap();
    let pid = process.pid();
    drop(process);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

/// `Duration::MAX` is "no limit", not an overflow.
#[test]
fn duration_max_means_no_limit() {
    let mut process = Process::builder()
        .spawn_timeout(Duration::MAX)
        .spawn(add, (2, 3))
        .unwrap();
    assert_eq!(process.join_timeout(Duration::MAX).unwrap(), 5);
    let mut slow = Process::spawn(whoami, 200).unwrap();
    assert_eq!(slow.join_timeout(Duration::MAX).unwrap().1, slow.pid());
}

#[test]
fn exit_code_after_join_as_python_reads_it_and_a_second_join_is_misuse() {
    let mut process = Process::spawn(add, (20, 22)).unwrap();
    assert_eq!(process.join().unwrap(), 42);
    // `p.join(); p.exitcode`: the process has exited when join returns.
    assert!(!process.is_alive());
    assert_eq!(process.exit_code(), Some(0));
    match process.join() {
        Err(Error::Misuse(message)) => assert!(message.contains("joined already"), "{message}"),
        other => panic!("expected Misuse, got {other:?}"),
    }
    // A join that timed out leaves the outcome to a later join.
    let mut slow = Process::spawn(whoami, 500).unwrap();
    assert!(matches!(
        slow.join_timeout(Duration::from_millis(10)),
        Err(Error::Timeout(_))
    ));
    assert_eq!(slow.join().unwrap().0, slow.name());
    assert_eq!(slow.exit_code(), Some(0));
}
