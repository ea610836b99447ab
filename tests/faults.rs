//! Faults inside jobs and around the pool: each is a clean error, never a hang.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use procpool::{Error, ExitCause, Pool, pool_job};

#[pool_job]
fn crash(how: String) -> u32 {
    match how.as_str() {
        "abort" => std::process::abort(),
        "exit3" => std::process::exit(3),
        // SAFETY: deliberately raising SIGSEGV to test crash reporting.
        "segv" => unsafe {
            libc::raise(libc::SIGSEGV);
            0
        },
        _ => std::process::id(),
    }
}

#[pool_job]
fn sleep_then_pid(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

fn assert_died(how: &str, expected: ExitCause, text: &str) {
    let pool = Pool::with_processes(1).unwrap();
    let started = Instant::now();
    let err = pool.apply(crash, how.to_string()).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "{how}: {:?}", started.elapsed());
    match &err {
        Error::WorkerDied { cause, .. } => assert_eq!(*cause, expected, "{how}"),
        other => panic!("{how}: expected WorkerDied, got {other:?}"),
    }
    assert!(err.to_string().contains(text), "{how}: {err}");
    // Replaced: the pool keeps working.
    let pid = pool.apply(crash, "none".to_string()).unwrap();
    assert_ne!(pid, std::process::id());
}

#[test]
fn abort_is_signal_6() {
    assert_died("abort", ExitCause::Signal(6), "signal 6 (SIGABRT)");
}

#[test]
fn exit_code_is_reported() {
    assert_died("exit3", ExitCause::Code(3), "exited with code 3");
}

#[test]
fn segfault_is_signal_11() {
    assert_died("segv", ExitCause::Signal(11), "signal 11 (SIGSEGV)");
}

/// Not a test on its own: the "program" that the next test kills. It
/// prints its workers' pids, then waits to be killed.
#[test]
#[ignore = "helper process for parent_killed_workers_exit"]
fn helper_parent_that_gets_killed() {
    let pool = Pool::with_processes(2).unwrap();
    let pids = pool.map(sleep_then_pid, vec![300, 300]).unwrap();
    println!("PIDS {} {}", pids[0], pids[1]);
    let _running = pool.map_async(sleep_then_pid, vec![600_000, 600_000]).unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn parent_killed_with_sigkill_takes_workers_with_it() {
    let exe = std::env::current_exe().unwrap();
    let mut parent = Command::new(exe)
        .args(["--exact", "helper_parent_that_gets_killed", "--ignored", "--nocapture"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = parent.stdout.take().unwrap();
    let mut pids = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("PIDS ") {
            pids = rest.split(' ').map(|p| p.parse::<i32>().unwrap()).collect();
            break;
        }
    }
    assert_eq!(pids.len(), 2, "the helper did not report its workers");
    // SAFETY: plain kill(2) on the child we started.
    unsafe { libc::kill(parent.id() as i32, libc::SIGKILL) };
    parent.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let alive = |pid: i32| {
        // Workers are reparented after the kill; a zombie still has /proc/<pid>/stat.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| !stat.contains(") Z "))
            .unwrap_or(false)
    };
    while pids.iter().any(|&pid| alive(pid)) {
        assert!(Instant::now() < deadline, "workers {pids:?} outlived their parent");
        std::thread::sleep(Duration::from_millis(10));
    }
}
