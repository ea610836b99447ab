//! Faults inside jobs and around the pool: each is a clean error, never a hang.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use procpool::{Error, ExitCause, Pool, pool_job};
use procpool_tests::{eventually, read_reported_pids, running};

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
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{how}: {:?}",
        started.elapsed()
    );
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
    let _running = pool
        .map_async(sleep_then_pid, vec![600_000, 600_000])
        .unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn parent_killed_with_sigkill_takes_workers_with_it() {
    let exe = std::env::current_exe().unwrap();
    let mut parent = Command::new(exe)
        .args([
            "--exact",
            "helper_parent_that_gets_killed",
            "--ignored",
            "--nocapture",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pids = read_reported_pids(&mut parent);
    assert_eq!(pids.len(), 2, "the helper did not report its workers");
    // SAFETY: plain kill(2) on the child we started.
    unsafe { libc::kill(parent.id() as i32, libc::SIGKILL) };
    parent.wait().unwrap();
    // Workers are reparented after the kill; they must not keep running.
    eventually("the workers to exit with their parent", || {
        !pids.iter().any(|&pid| running(pid))
    });
}

/// Kills its own worker while `marker` has fewer than `deaths` lines, appending one each time.
#[pool_job]
fn die_n_times(marker: String, deaths: usize) -> usize {
    use std::io::Write;
    let seen = std::fs::read_to_string(&marker)
        .map(|s| s.lines().count())
        .unwrap_or(0);
    if seen < deaths {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&marker)
            .unwrap();
        writeln!(file, "died").unwrap();
        // SAFETY: plain libc calls; the process dies here.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    seen
}

fn marker(name: &str) -> String {
    let path = std::env::temp_dir().join(format!("procpool-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path.to_string_lossy().into_owned()
}

#[test]
fn retries_rerun_a_task_whose_worker_died() {
    let pool = Pool::builder().processes(1).retries(2).build().unwrap();
    let once = marker("retry-once");
    assert_eq!(pool.apply(die_n_times, (once.clone(), 1)).unwrap(), 1);
    let always = marker("retry-always");
    let err = pool.apply(die_n_times, (always.clone(), 100)).unwrap_err();
    assert!(matches!(err, Error::WorkerDied { .. }), "{err:?}");
    // One first run plus two retries.
    assert_eq!(std::fs::read_to_string(&always).unwrap().lines().count(), 3);

    let no_retry = Pool::with_processes(1).unwrap();
    let fresh = marker("retry-none");
    assert!(matches!(
        no_retry.apply(die_n_times, (fresh.clone(), 1)),
        Err(Error::WorkerDied { .. })
    ));
    for path in [once, always, fresh] {
        let _ = std::fs::remove_file(path);
    }
}

/// Leaks `mib` MiB (touched, so it is resident) and returns the worker's pid.
#[pool_job]
fn leak(mib: usize) -> u32 {
    let block = vec![1u8; mib << 20];
    std::mem::forget(block);
    std::process::id()
}

#[test]
fn max_memory_per_child_replaces_a_bloated_worker() {
    let pool = Pool::builder()
        .processes(1)
        .max_memory_per_child(48 << 20)
        .build()
        .unwrap();
    let small = pool.apply(leak, 0).unwrap();
    assert_eq!(pool.apply(leak, 0).unwrap(), small, "a lean worker is kept");
    let bloated = pool.apply(leak, 64).unwrap();
    assert_eq!(bloated, small);
    assert_ne!(
        pool.apply(leak, 0).unwrap(),
        bloated,
        "the bloated worker was replaced"
    );
}

/// The "program" for the Ctrl-C test: a long map, then waits.
#[test]
#[ignore = "helper process for ctrl_c_stops_program_and_workers"]
fn helper_long_map() {
    let pool = Pool::with_processes(2).unwrap();
    let pids = pool.map(sleep_then_pid, vec![200, 200]).unwrap();
    println!("PIDS {} {}", pids[0], pids[1]);
    let _ = pool.map(sleep_then_pid, vec![600_000; 4]);
}

#[test]
fn ctrl_c_stops_program_and_workers() {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().unwrap();
    // Its own process group, as a shell gives a foreground job.
    let mut program = Command::new(exe)
        .args(["--exact", "helper_long_map", "--ignored", "--nocapture"])
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pids = read_reported_pids(&mut program);
    assert_eq!(pids.len(), 2);
    std::thread::sleep(Duration::from_millis(100));
    let group = program.id() as i32;
    // SAFETY: SIGINT to the process group we created, like a terminal's Ctrl-C.
    unsafe { libc::kill(-group, libc::SIGINT) };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = program.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the program ignored Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut program.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.lines().count() <= 3, "stderr flooded:\n{stderr}");
    eventually("every worker to stop", || {
        !pids.iter().any(|&pid| running(pid))
    });
}

#[pool_job]
fn stdin_target() -> String {
    std::fs::read_link("/proc/self/fd/0")
        .map(|path| path.to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("no stdin: {e}"))
}

#[test]
fn workers_do_not_inherit_stdin() {
    let pool = Pool::with_processes(1).unwrap();
    assert_eq!(pool.apply(stdin_target, ()).unwrap(), "/dev/null");
}

#[test]
fn worker_marker_cannot_run_main_or_anything_else() {
    // A forged marker pointing nowhere: the program must neither run its
    // `main` (here: the test harness, which would print test names) nor
    // anything else; it exits at once.
    let output = Command::new(std::env::current_exe().unwrap())
        .arg("--list")
        .env("__PROCPOOL_WORKER_SOCKET", "/nonexistent/socket")
        .env("__PROCPOOL_WORKER_TOKEN", "forged")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(86), "{output:?}");
    assert!(
        output.stdout.is_empty(),
        "main ran: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot connect to the parent"), "{stderr}");
}

#[pool_job]
fn json_keys(value: serde_json::Value) -> usize {
    value.as_object().map_or(0, |o| o.len())
}

#[test]
fn undecodable_argument_is_a_serialization_error() {
    let pool = Pool::with_processes(1).unwrap();
    let err = pool
        .apply(json_keys, serde_json::json!({"a": 1}))
        .unwrap_err();
    match &err {
        Error::Serialization { job, message, .. } => {
            assert_eq!(job, "faults::json_keys");
            assert!(message.contains("self-describing"), "{message}");
        }
        other => panic!("expected Serialization, got {other:?}"),
    }
    assert_ne!(
        pool.apply(crash, "none".to_string()).unwrap(),
        std::process::id()
    );
}

#[pool_job]
fn byte_len(data: Vec<u8>) -> usize {
    data.len()
}

#[pool_job]
fn make_bytes(len: usize) -> Vec<u8> {
    vec![7; len]
}

#[pool_job]
fn echo_bytes(data: Vec<u8>) -> Vec<u8> {
    data
}

#[test]
fn large_argument_and_result() {
    let pool = Pool::with_processes(1).unwrap();
    let started = Instant::now();
    assert_eq!(
        pool.apply(byte_len, vec![1u8; 256 << 20]).unwrap(),
        256 << 20
    );
    let arg_time = started.elapsed();
    let started = Instant::now();
    let big = pool.apply(make_bytes, 128 << 20).unwrap();
    assert_eq!(big.len(), 128 << 20);
    assert!(big.iter().all(|&b| b == 7));
    eprintln!(
        "256 MiB argument: {arg_time:?}, 128 MiB result: {:?}",
        started.elapsed()
    );
}

#[test]
fn many_megabyte_items_both_ways_do_not_deadlock() {
    let pool = Pool::with_processes(4).unwrap();
    let items: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; 1 << 20]).collect();
    let back = pool.chunksize(1).map(echo_bytes, items.clone()).unwrap();
    assert_eq!(back, items);
    let lens: Vec<usize> = pool
        .imap_unordered(echo_bytes, items)
        .map(|r| r.unwrap().len())
        .collect();
    assert_eq!(lens, vec![1 << 20; 64]);
}

#[pool_job]
fn panic_or_pid(panic: bool) -> u32 {
    if panic {
        panic!("deliberate");
    }
    std::process::id()
}

#[test]
fn a_panic_does_not_cost_the_worker() {
    let pool = Pool::with_processes(1).unwrap();
    let before = pool.apply(panic_or_pid, false).unwrap();
    for _ in 0..3 {
        assert!(matches!(
            pool.apply(panic_or_pid, true),
            Err(Error::Panicked { .. })
        ));
    }
    assert_eq!(pool.apply(panic_or_pid, false).unwrap(), before);
}

/// Adds, after forking a child that returns from the job too, into the
/// worker's loop, as a careless job would (a fork without exec).
#[pool_job]
fn fork_then_add(a: u64, b: u64) -> u64 {
    // SAFETY: the child runs only this function's return path (the worker
    // has one thread); the test is about what the worker does next.
    unsafe { libc::fork() };
    a + b
}

#[pool_job]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[test]
fn a_job_whose_fork_returns_never_shifts_later_results() {
    let pool = Pool::with_processes(1).unwrap();
    assert_eq!(pool.apply(fork_then_add, (1, 2)).unwrap(), 3);
    for i in 0..50 {
        let mut call = pool.apply_async(add, (i, 1000)).unwrap();
        assert_eq!(call.get_timeout(Duration::from_secs(10)).unwrap(), i + 1000);
    }
}

/// A result whose `Deserialize` panics on 13: it decodes in the caller.
#[derive(Debug, serde::Serialize)]
struct Touchy(u32);

impl<'de> serde::Deserialize<'de> for Touchy {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = u32::deserialize(deserializer)?;
        assert_ne!(value, 13, "Touchy cannot stand 13");
        Ok(Touchy(value))
    }
}

#[pool_job]
fn touchy(value: u32) -> Touchy {
    Touchy(value)
}

#[test]
fn a_panicking_result_decoder_fails_the_call_and_keeps_every_worker() {
    let pool = Pool::with_processes(2).unwrap();
    for _ in 0..4 {
        let mut call = pool.apply_async(touchy, 13).unwrap();
        match call.get_timeout(Duration::from_secs(10)) {
            Err(Error::Serialization { message, .. }) => {
                assert!(message.contains("Touchy cannot stand 13"), "{message}")
            }
            other => panic!("expected a Serialization error, got {other:?}"),
        }
    }
    let mut call = pool.apply_async(touchy, 7).unwrap();
    assert_eq!(call.get_timeout(Duration::from_secs(10)).unwrap().0, 7);
    // Both workers still serve: two tasks that overlap run in two processes.
    let mut call = pool.map_async(sleep_then_pid, vec![300, 300]).unwrap();
    let pids = call.get_timeout(Duration::from_secs(10)).unwrap();
    assert_ne!(pids[0], pids[1], "{pids:?}");
}
