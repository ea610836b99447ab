//! Faults inside jobs and around the pool: each is a clean error, never a hang.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use procpool::{Error, ExitCause, Pool, pool_job};
use procpool_tests::{eventually, own_sockets, read_reported_pids, running};

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
    let seen = std::fs::read_to_string(&marker)
        .map(|s| s.lines().count())
        .unwrap_or(0);
    if seen < deaths {
        procpool_tests::append_line(&marker, "died");
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
    assert!(
        matches!(err, Error::WorkerDied { attempts: 3, .. }),
        "{err:?}"
    );
    // One first run plus two retries.
    assert_eq!(std::fs::read_to_string(&always).unwrap().lines().count(), 3);
    // The message says what was tried, and does not suggest retries again.
    let text = err.to_string();
    assert!(
        text.contains("the last of 3 attempts (1 run and 2 retries"),
        "{text}"
    );
    assert!(!text.contains("retries(n)"), "{text}");

    let no_retry = Pool::with_processes(1).unwrap();
    let fresh = marker("retry-none");
    let err = no_retry.apply(die_n_times, (fresh.clone(), 1)).unwrap_err();
    assert!(
        matches!(err, Error::WorkerDied { attempts: 1, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("retries(n)"), "{err}");
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
    // A forged marker (the real value with a stdin that is no socket, or
    // other values): the program must neither run its `main` (here: the
    // test harness, which would print test names) nor anything else; it
    // exits at once.
    for forged in ["stdin", "99", "/nonexistent/socket"] {
        let output = Command::new(std::env::current_exe().unwrap())
            .arg("--list")
            .env("__PROCPOOL_WORKER", forged)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(86), "{forged}: {output:?}");
        assert!(
            output.stdout.is_empty(),
            "{forged}: main ran: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("not the channel to the parent"),
            "{forged}: {stderr}"
        );
    }
}

#[pool_job]
fn json_keys(value: serde_json::Value) -> usize {
    value.as_object().map_or(0, |o| o.len())
}

#[test]
fn self_describing_values_cross() {
    // serde_json::Value needs `deserialize_any`, which the codec answers.
    let pool = Pool::with_processes(1).unwrap();
    let keys = pool
        .apply(json_keys, serde_json::json!({"a": 1, "b": [null]}))
        .unwrap();
    assert_eq!(keys, 2);
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
    // The copy may be caught before the worker answers (the call fails)
    // or after (the worker's own answer is delivered).
    match pool.apply(fork_then_add, (1, 2)) {
        Ok(sum) => assert_eq!(sum, 3),
        Err(err) => assert!(matches!(err, Error::Ipc(_)), "{err:?}"),
    }
    for i in 0..50 {
        let mut call = pool.apply_async(add, (i, 1000)).unwrap();
        assert_eq!(call.get_timeout(Duration::from_secs(10)).unwrap(), i + 1000);
    }
}

/// Forks; the copy returns another value than the worker, as a careless
/// job's copy would return whatever it computed.
#[pool_job]
fn fork_and_answer_twice(x: u64) -> u64 {
    // SAFETY: the worker has one thread; the copy runs only this
    // function's return path into procpool.
    if unsafe { libc::fork() } == 0 {
        x + 1_000_000
    } else {
        x
    }
}

#[test]
fn a_forked_copy_of_a_worker_never_answers_for_it() {
    let pool = Pool::with_processes(1).unwrap();
    let (mut failed, mut answered) = (0, 0);
    for x in 0..40u64 {
        let mut call = pool.apply_async(fork_and_answer_twice, x).unwrap();
        match call.get_timeout(Duration::from_secs(10)) {
            Ok(value) => {
                assert_eq!(value, x, "the forked copy's value was delivered");
                answered += 1;
            }
            Err(Error::Ipc(message)) => {
                assert!(message.contains("fork"), "{message}");
                assert!(message.contains("a copy of the worker"), "{message}");
                failed += 1;
            }
            Err(other) => panic!("call {x}: {other:?}"),
        }
        // Every other call on the pool returns its own value.
        for y in 0..5 {
            assert_eq!(pool.apply(add, (x, y)).unwrap(), x + y);
        }
    }
    eprintln!("{answered} answered by the worker, {failed} failed");
    // Every copy was seen, sooner or later, and its worker replaced.
    let stats = pool.stats();
    assert!(stats.workers_broke_protocol >= 1, "{stats:?}");
    for i in 0..50 {
        assert_eq!(pool.apply(add, (i, 1)).unwrap(), i + 1);
    }
}

/// The `std::io::Error` found along `err`'s standard `source` chain.
fn io_error(err: &Error) -> Option<&std::io::Error> {
    let mut cause = std::error::Error::source(err);
    while let Some(inner) = cause {
        if let Some(io) = inner.downcast_ref::<procpool::IoCause>() {
            return Some(io.io_error());
        }
        cause = inner.source();
    }
    None
}

/// The OS error number found along `err`'s `source` chain.
fn os_error(err: &Error) -> Option<i32> {
    io_error(err).and_then(std::io::Error::raw_os_error)
}

/// Forks; the copy returns at once, the worker only 300 ms later, so the
/// copy reaches procpool first.
#[pool_job]
fn fork_and_answer_late(x: u64) -> u64 {
    // SAFETY: as in `fork_and_answer_twice`.
    if unsafe { libc::fork() } != 0 {
        std::thread::sleep(Duration::from_millis(300));
    }
    x
}

#[test]
fn a_copy_seen_before_the_workers_answer_fails_that_call_and_says_why() {
    let pool = Pool::with_processes(1).unwrap();
    match pool.apply(fork_and_answer_late, 7) {
        Err(Error::Ipc(message)) => {
            assert!(
                message.contains("a job forked a copy of the worker"),
                "{message}"
            )
        }
        other => panic!("expected Error::Ipc, got {other:?}"),
    }
    assert_eq!(pool.stats().workers_broke_protocol, 1);
    assert_eq!(pool.apply(add, (2, 3)).unwrap(), 5);
}

/// Sets this process's `RLIMIT_FSIZE` (`None`: no limit), with `SIGXFSZ`
/// ignored so that a write past it fails with `EFBIG` instead of killing.
fn limit_file_size(limit: Option<u64>) {
    let limit = limit.unwrap_or(libc::RLIM_INFINITY);
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain signal/getrlimit/setrlimit calls on this process.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        libc::getrlimit(libc::RLIMIT_FSIZE, &mut old);
        let new = libc::rlimit {
            rlim_cur: limit.min(old.rlim_max),
            rlim_max: old.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &new), 0);
    }
}

/// A result of `len` bytes, made in a worker whose file size limit is
/// `limit` (kept for its later tasks until changed again).
#[pool_job]
fn bytes_under_file_limit(limit: Option<u64>, len: usize) -> Vec<u8> {
    limit_file_size(limit);
    vec![9; len]
}

#[test]
fn a_result_over_the_workers_file_limit_fails_that_call_only() {
    let pool = Pool::with_processes(1).unwrap();
    let err = pool
        .apply(bytes_under_file_limit, (Some(1 << 20), 16 << 20))
        .unwrap_err();
    assert!(matches!(err, Error::System { .. }), "{err:?}");
    assert_eq!(os_error(&err), Some(libc::EFBIG), "{err:?}");
    // Small results still fit; large ones again once the limit is gone.
    assert_eq!(
        pool.apply(bytes_under_file_limit, (Some(1 << 20), 10))
            .unwrap(),
        vec![9; 10]
    );
    for _ in 0..3 {
        let big = pool
            .apply(bytes_under_file_limit, (None, 16 << 20))
            .unwrap();
        assert!(big.len() == 16 << 20 && big.iter().all(|&b| b == 9));
    }
}

/// Not a test on its own: with a pool running, limits this process's file
/// size so that a large payload cannot be placed in shared memory, then
/// lifts the limit and sends large payloads again; prints each outcome.
#[test]
#[ignore = "helper process for a_refused_payload_fails_that_call_only"]
fn helper_payload_over_the_file_limit() {
    let pool = Pool::with_processes(1).unwrap();
    assert_eq!(pool.apply(add, (1, 1)).unwrap(), 2);
    limit_file_size(Some(1 << 20));
    match pool.apply(byte_len, vec![1; 16 << 20]) {
        Ok(len) => println!("FIRST OK {len}"),
        Err(err) => println!("FIRST ERR {err:?} SOURCE {:?}", os_error(&err)),
    }
    limit_file_size(None);
    for attempt in 0..3 {
        match pool.apply(byte_len, vec![1; 16 << 20]) {
            Ok(len) => println!("THEN OK {len}"),
            Err(err) => println!("THEN ERR {attempt} {err}"),
        }
    }
}

#[test]
fn a_refused_payload_fails_that_call_only() {
    let (_, stdout, stderr) = run_helper_test("helper_payload_over_the_file_limit");
    assert!(
        stdout.contains("FIRST ERR System")
            && stdout.contains(&format!("SOURCE Some({})", libc::EFBIG)),
        "{stdout}\n{stderr}"
    );
    assert_eq!(
        stdout.matches("THEN OK 16777216").count(),
        3,
        "{stdout}\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Starts a thread that, for `ms` milliseconds, writes random bytes over
/// every shared memory mapping of this worker (its regions), then returns.
#[pool_job]
fn scribble_over_shared_memory(ms: u64) -> u64 {
    std::thread::spawn(move || {
        // Starts once this job's own answer is out.
        std::thread::sleep(Duration::from_millis(50));
        let until = Instant::now() + Duration::from_millis(ms);
        let mut state = u64::from(std::process::id()) | 1;
        while Instant::now() < until {
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
            for line in maps.lines().filter(|line| line.contains("memfd:")) {
                let Some((start, end)) = line
                    .split_whitespace()
                    .next()
                    .and_then(|range| range.split_once('-'))
                else {
                    continue;
                };
                let (Ok(start), Ok(end)) = (
                    usize::from_str_radix(start, 16),
                    usize::from_str_radix(end, 16),
                ) else {
                    continue;
                };
                for _ in 0..4096 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let at = start + (state as usize) % (end - start);
                    // SAFETY: a byte inside a mapping listed just now; this
                    // job is hostile on purpose (the mapping may move away
                    // meanwhile, which would crash this worker: also a fault
                    // the caller must survive).
                    unsafe { std::ptr::write_volatile(at as *mut u8, (state >> 32) as u8) };
                }
            }
        }
    });
    ms
}

#[pool_job]
fn echo_words(words: Vec<u64>) -> Vec<u64> {
    words
}

#[pool_job]
fn echo_blob(blob: Vec<u8>) -> Vec<u8> {
    blob
}

#[pool_job]
fn echo_text(text: String) -> String {
    text
}

#[pool_job]
fn times_three(x: u64) -> u64 {
    x.wrapping_mul(3)
}

/// The calls whose replies the caller reads where the worker wrote them
/// (byte strings, strings, numbers), as well as through a private copy:
/// each checked once the scribbling stopped; meanwhile anything but a hang
/// or a crash of this process.
fn in_place_calls(pool: &Pool, blob: &Vec<u8>, text: &str, numbers: &[u64], strict: bool) -> usize {
    let mut failures = 0;
    let mut check = |ok: bool| {
        assert!(ok || !strict, "a call returned another value");
        failures += usize::from(!ok);
    };
    // Queued, so a copy the task keeps; then borrowed, from this thread.
    let mut call = pool.apply_async(echo_blob, blob.clone()).unwrap();
    let queued = call.get_timeout(Duration::from_secs(20));
    assert!(!matches!(queued, Err(Error::Timeout(_))), "a call hung");
    check(queued.ok().as_ref() == Some(blob));
    check(pool.apply(echo_blob, blob).ok().as_ref() == Some(blob));
    check(pool.apply(echo_text, text.to_owned()).ok().as_deref() == Some(text));
    let expected: Vec<u64> = numbers.iter().map(|x| x.wrapping_mul(3)).collect();
    check(pool.map(times_three, numbers).ok() == Some(expected));
    failures
}

#[test]
fn a_worker_scribbling_over_shared_memory_never_breaks_the_caller() {
    let pool = Pool::with_processes(2).unwrap();
    let inputs: Vec<Vec<u64>> = [1usize, 10, 5_000, 40_000, 300_000]
        .iter()
        .map(|&n| (0..n as u64).map(|i| i * 7).collect())
        .collect();
    // Read where the worker wrote them: large enough to take every path
    // (a borrowed argument, a reply copied straight into the value).
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let text = "é-".repeat(50_000);
    let numbers: Vec<u64> = (0..200_000).collect();
    let scribbling = Instant::now();
    let window = Duration::from_millis(1500);
    // Both workers (most likely) start scribbling; replacements do not.
    assert_eq!(
        pool.chunksize(1)
            .map(scribble_over_shared_memory, vec![1500u64; 2])
            .unwrap(),
        vec![1500; 2]
    );
    let mut failures = 0;
    while scribbling.elapsed() < window {
        for input in &inputs {
            let started = Instant::now();
            let mut call = pool.apply_async(echo_words, input.clone()).unwrap();
            // Anything but a hang or a crash of this process. A value may
            // be wrong: the worker that wrote it is hostile.
            match call.get_timeout(Duration::from_secs(20)) {
                Ok(_) => {}
                Err(Error::Timeout(_)) => panic!("a call hung"),
                Err(_) => failures += 1,
            }
            assert!(started.elapsed() < Duration::from_secs(20));
        }
        let _ = pool.map(echo_words, inputs.clone());
        failures += in_place_calls(&pool, &blob, &text, &numbers, false);
    }
    eprintln!("{failures} calls failed while the workers scribbled");
    std::thread::sleep(Duration::from_millis(300));
    // Once the scribbling stopped, every call returns its own value.
    for _ in 0..20 {
        for input in &inputs {
            assert_eq!(&pool.apply(echo_words, input.clone()).unwrap(), input);
        }
        assert_eq!(pool.map(echo_words, inputs.clone()).unwrap(), inputs);
        in_place_calls(&pool, &blob, &text, &numbers, true);
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

/// Writes garbage into every socket the worker has, then waits long.
#[pool_job]
fn scribble(garbage: Vec<u8>) -> u32 {
    for fd in own_sockets() {
        // SAFETY: writes a buffer we own to a descriptor of this process.
        unsafe { libc::write(fd, garbage.as_ptr().cast(), garbage.len()) };
    }
    std::thread::sleep(Duration::from_secs(60));
    0
}

#[test]
fn garbage_on_the_channel_fails_the_task_within_seconds() {
    let pool = Pool::builder()
        .processes(1)
        .task_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut garbage = vec![0xff; 4];
    garbage.extend_from_slice(b"not a message of procpool's");
    for garbage in [garbage, vec![0x02, 0x00, 0x01], Vec::new()] {
        let started = Instant::now();
        let mut call = pool.apply_async(scribble, garbage).unwrap();
        let err = call.get_timeout(Duration::from_secs(20)).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(err, Error::Ipc(_) | Error::TaskTimedOut { .. }),
            "{err:?}"
        );
        assert_eq!(pool.apply(add, (2, 3)).unwrap(), 5);
    }
}

/// Forks a grandchild that keeps the worker's descriptors for 10 s, then
/// kills its own worker.
#[pool_job]
fn orphan_then_die() -> u32 {
    // SAFETY: the child only sleeps and leaves with `_exit`.
    unsafe {
        if libc::fork() == 0 {
            libc::sleep(10);
            libc::_exit(0);
        }
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    0
}

#[test]
fn a_worker_killed_while_a_grandchild_holds_its_socket_is_seen_at_once() {
    let pool = Pool::with_processes(1).unwrap();
    let started = Instant::now();
    let err = pool.apply(orphan_then_die, ()).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    match err {
        Error::WorkerDied { cause, .. } => assert_eq!(cause, ExitCause::Signal(9)),
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert_eq!(pool.apply(add, (1, 1)).unwrap(), 2);
}

/// How many sockets the worker holds, and how many a shell it starts holds.
#[pool_job]
fn sockets_held() -> (usize, usize) {
    let shell = Command::new("sh")
        .args(["-c", "ls -l /proc/$$/fd"])
        .output()
        .unwrap();
    let in_shell = String::from_utf8_lossy(&shell.stdout)
        .matches("socket:")
        .count();
    (own_sockets().len(), in_shell)
}

#[test]
fn a_worker_holds_only_its_own_channel_and_passes_on_none() {
    let pool = Pool::with_processes(3).unwrap();
    let held = pool.map(sockets_held, vec![(); 30]).unwrap();
    assert!(held.iter().all(|&h| h == (1, 0)), "{held:?}");
    // Nor does a program this process starts while the pool runs.
    let shell = Command::new("sh")
        .args(["-c", "ls -l /proc/$$/fd"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&shell.stdout);
    assert!(!listing.contains("socket:"), "{listing}");
    drop(pool);
}

#[test]
fn a_worker_killed_while_idle_costs_the_next_task_nothing() {
    let pool = Pool::with_processes(1).unwrap();
    let pid = pool.apply(crash, "none".to_string()).unwrap();
    // SAFETY: plain kill(2) on our own worker.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    eventually("the worker to die", || !running(pid));
    let next = pool.apply(crash, "none".to_string()).unwrap();
    assert_ne!(next, pid);
}

/// An initializer that kills its own worker while `path` holds a count
/// above zero, counting down.
#[pool_job]
fn die_while_armed(path: String) {
    let left: u32 = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if left > 0 {
        std::fs::write(&path, (left - 1).to_string()).unwrap();
        // SAFETY: plain kill(2); the worker dies while starting.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

#[test]
fn replacements_killed_while_starting_do_not_use_up_retries() {
    let armed = marker("armed");
    let pool = Pool::builder()
        .processes(1)
        .retries(1)
        .initializer(die_while_armed, armed.clone())
        .build()
        .unwrap();
    // The next two starts die: the replacement started after the task's
    // worker dies, and the one started for the retry.
    std::fs::write(&armed, "2").unwrap();
    let dies_once = marker("dies-once");
    assert_eq!(pool.apply(die_n_times, (dies_once.clone(), 1)).unwrap(), 1);
    assert_eq!(std::fs::read_to_string(&armed).unwrap(), "0");
    for path in [armed, dies_once] {
        let _ = std::fs::remove_file(path);
    }
}

/// Not a test on its own: starts a pool in whatever environment it was
/// given and reports `OK <sum>` or `ERR <error>` on stdout.
#[test]
#[ignore = "helper process for the environment tests"]
fn helper_pool_in_its_environment() {
    let outcome = Pool::with_processes(4).and_then(|pool| {
        let big = pool.apply(echo_bytes, vec![7; 3 << 20])?;
        let small = pool.map(add, (0..100).map(|i| (i, 1)))?;
        Ok(big.len() as u64 + small.iter().sum::<u64>())
    });
    match outcome {
        Ok(sum) => println!("OK {sum}"),
        Err(err) => {
            println!("ERR {err}");
            println!("OS ERROR {:?}", os_error(&err));
        }
    }
}

/// Runs the ignored test `name` of this binary in a child process (a helper
/// that changes process-wide state); its exit status, stdout and stderr.
fn run_helper_test(name: &str) -> (std::process::ExitStatus, String, String) {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--ignored", "--nocapture"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs the helper through `sh -c "<prefix> exec helper"` with `TMPDIR`
/// set to `tmpdir`; its stdout and stderr.
fn run_helper(prefix: &str, tmpdir: &std::path::Path) -> (String, String) {
    let exe = std::env::current_exe().unwrap();
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{prefix} exec \"$0\" --exact helper_pool_in_its_environment --ignored --nocapture"
        ))
        .arg(exe)
        .env("TMPDIR", tmpdir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn tmpdir_missing_read_only_a_file_or_long_does_not_matter() {
    let base = std::env::temp_dir().join(format!("procpool-env-{}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    let read_only = base.join("read-only");
    std::fs::create_dir(&read_only).unwrap();
    std::fs::set_permissions(
        &read_only,
        std::os::unix::fs::PermissionsExt::from_mode(0o500),
    )
    .unwrap();
    let file = base.join("a-file");
    std::fs::write(&file, "").unwrap();
    let long = base.join("l".repeat(120));
    std::fs::create_dir(&long).unwrap();
    let expected = format!("OK {}", (3 << 20) + (1..=100).sum::<u64>());
    for tmpdir in [base.join("missing"), read_only.clone(), file, long.clone()] {
        let (stdout, stderr) = run_helper("", &tmpdir);
        assert!(stdout.contains(&expected), "{tmpdir:?}: {stdout}\n{stderr}");
        assert!(!stderr.contains("panicked"), "{tmpdir:?}: {stderr}");
    }
    // Nothing was left anywhere under the base directory.
    assert_eq!(std::fs::read_dir(&long).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(&base).unwrap().count(), 3);
    std::fs::set_permissions(
        &read_only,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn too_few_file_descriptors_is_a_clear_error() {
    // Each limit runs out at another step (a worker's channel, a task's
    // shared memory, a reply's shared memory arriving, ...); how many
    // descriptors a process starts with differs between machines, so the
    // limits cover every step from too few for one worker to enough.
    let mut refused = 0;
    for limit in 8..=20 {
        let (stdout, stderr) = run_helper(&format!("ulimit -n {limit} &&"), &std::env::temp_dir());
        assert!(!stderr.contains("panicked"), "limit {limit}: {stderr}");
        if stdout.contains("OK ") {
            continue;
        }
        refused += 1;
        assert!(stdout.contains("ERR "), "limit {limit}: {stdout}\n{stderr}");
        assert!(
            stdout.contains("ulimit -n"),
            "limit {limit}: {stdout}\n{stderr}"
        );
        assert!(
            stdout.contains("OS ERROR Some(24)"),
            "limit {limit}: EMFILE as the source: {stdout}"
        );
    }
    assert!(refused > 0, "no limit was low enough to refuse anything");
}

/// Not a test on its own: with a pool running, lowers this process's fd
/// limit to what is open, so a payload that needs shared memory cannot get
/// it; reports the call's outcome, then the next one's with the limit back.
#[test]
#[ignore = "helper process for out_of_fds_for_a_large_payload_fails_that_call_only"]
fn helper_large_payload_without_fds() {
    let pool = Pool::with_processes(1).unwrap();
    assert_eq!(pool.apply(add, (1, 1)).unwrap(), 2);
    // The lowest free descriptor number: a limit there refuses any new one.
    // SAFETY: dup and close of a descriptor this function owns.
    let lowest_free = unsafe {
        let fd = libc::dup(0);
        libc::close(fd);
        fd as u64
    };
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on this (helper) process.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    let tight = libc::rlimit {
        rlim_cur: lowest_free,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: as above.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &tight) };
    let outcome = pool.apply(byte_len, vec![1; 1 << 20]);
    // SAFETY: as above.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    match outcome {
        Ok(len) => println!("FIRST OK {len}"),
        Err(err) => println!("FIRST ERR {err}"),
    }
    match pool.apply(byte_len, vec![1; 1 << 20]) {
        Ok(len) => println!("THEN OK {len}"),
        Err(err) => println!("THEN ERR {err}"),
    }
}

#[test]
fn out_of_fds_for_a_large_payload_fails_that_call_only() {
    let (_, stdout, stderr) = run_helper_test("helper_large_payload_without_fds");
    assert!(
        stdout.contains("FIRST ERR") && stdout.contains("ulimit -n"),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("THEN OK 1048576"), "{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// This process's Unix sockets, each as its line of `/proc/net/unix`
/// split into fields (flags at 3, inode at 6, the address, if bound, at 7).
fn own_unix_sockets() -> Vec<Vec<String>> {
    let ours: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    std::fs::read_to_string("/proc/net/unix")
        .unwrap()
        .lines()
        .skip(1)
        .map(|line| {
            line.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|fields| fields.get(6).is_some_and(|inode| ours.contains(inode)))
        .collect()
}

/// This process's sockets that another process could connect to: bound to
/// a path or listening (flag `__SO_ACCEPTCON`), as their lines.
fn connectable_sockets() -> Vec<String> {
    own_unix_sockets()
        .into_iter()
        .filter(|fields| {
            let listening = fields
                .get(3)
                .and_then(|flags| u32::from_str_radix(flags, 16).ok())
                .is_some_and(|flags| flags & 0x0001_0000 != 0);
            // Bound to a path. The parent's end of a worker's socket pair
            // asks for the sender's pid on every message (SO_PASSCRED), so
            // the kernel binds it to an abstract address (`@xxxxx`) when it
            // first sends; a socket that is not listening refuses every
            // connect there (ECONNREFUSED), as the test below checks.
            let bound_to_path = fields.get(7).is_some_and(|path| path.starts_with('/'));
            listening || bound_to_path
        })
        .map(|fields| fields.join(" "))
        .collect()
}

/// Abstract addresses (without the `@`) of this process's sockets.
fn abstract_names() -> Vec<String> {
    own_unix_sockets()
        .into_iter()
        .filter_map(|fields| Some(fields.get(7)?.strip_prefix('@')?.to_owned()))
        .collect()
}

/// `connect` of a new `SOCK_SEQPACKET` socket to the abstract address
/// `name`: 0 on success, else the errno.
fn connect_seqpacket(name: &str) -> i32 {
    // SAFETY: plain socket/connect/close calls on a sockaddr_un built here.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let mut address: libc::sockaddr_un = std::mem::zeroed();
        address.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (slot, byte) in address.sun_path[1..].iter_mut().zip(name.bytes()) {
            *slot = byte as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sa_family_t>() + 1 + name.len();
        let result = libc::connect(fd, (&raw const address).cast(), len as libc::socklen_t);
        let errno = if result == 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        };
        libc::close(fd);
        errno
    }
}

#[test]
fn starting_workers_opens_nothing_another_process_could_connect_to() {
    // Watch this process's sockets while pools start: no bootstrap socket
    // (a path in TMPDIR that any process could connect to and hold) ever exists.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seen.extend(connectable_sockets());
            }
            seen
        })
    };
    let mut tried = 0;
    for _ in 0..10 {
        let pool = Pool::with_processes(3).unwrap();
        assert_eq!(pool.apply(add, (1, 2)).unwrap(), 3);
        // The abstract addresses the kernel gave the pool's sockets accept
        // no connection.
        for name in abstract_names() {
            assert_ne!(connect_seqpacket(&name), 0, "connected to @{name}");
            tried += 1;
        }
    }
    assert!(tried > 0, "no abstract address to try");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = watcher.join().unwrap();
    assert!(seen.is_empty(), "connectable sockets: {seen:?}");
}

/// An initializer that appends its worker's pid to the file `path`, then,
/// while the file `path.hang` exists, never returns.
#[pool_job]
fn note_pid_then_hang_while_marked(path: String) {
    procpool_tests::append_line(&path, std::process::id());
    while std::path::Path::new(&format!("{path}.hang")).exists() {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pids_in(path: &str) -> Vec<u32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.parse().ok())
        .collect()
}

#[test]
fn a_stuck_initializer_fails_build_within_its_timeout_and_leaves_no_worker() {
    let path = marker("stuck-initializer");
    std::fs::write(format!("{path}.hang"), "").unwrap();
    let started = Instant::now();
    let outcome = Pool::builder()
        .processes(2)
        .initializer(note_pid_then_hang_while_marked, path.clone())
        .initializer_timeout(Duration::from_millis(500))
        .build();
    let took = started.elapsed();
    let _ = std::fs::remove_file(format!("{path}.hang"));
    match outcome {
        Err(Error::InitializerFailed { job, message }) => {
            assert!(job.ends_with("note_pid_then_hang_while_marked"), "{job}");
            assert!(message.contains("500ms"), "{message}");
        }
        other => panic!("expected InitializerFailed, got {other:?}"),
    }
    assert!(took < Duration::from_secs(30), "build took {took:?}");
    let pids = pids_in(&path);
    assert!(!pids.is_empty(), "the initializer never ran");
    for pid in pids {
        eventually(&format!("worker {pid} to be gone"), || !running(pid));
    }
    let _ = std::fs::remove_file(path);
}

#[pool_job]
fn kill_self_or_pid(kill: bool) -> u32 {
    if kill {
        // SAFETY: plain libc calls; the process dies here.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    std::process::id()
}

#[test]
fn a_replacement_whose_initializer_hangs_fails_its_task_and_the_pool_recovers() {
    let path = marker("stuck-replacement");
    let pool = Pool::builder()
        .processes(1)
        .initializer(note_pid_then_hang_while_marked, path.clone())
        .initializer_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    assert_ne!(pool.apply(kill_self_or_pid, false).unwrap(), 0);
    // From now on, new workers' initializers hang.
    std::fs::write(format!("{path}.hang"), "").unwrap();
    let err = pool.apply(kill_self_or_pid, true).unwrap_err();
    assert!(matches!(err, Error::WorkerDied { .. }), "{err:?}");
    let started = Instant::now();
    let err = pool.apply(kill_self_or_pid, false).unwrap_err();
    assert!(
        matches!(&err, Error::InitializerFailed { message, .. } if message.contains("500ms")),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // Not restarted without end: a few starts, each timed out and gone.
    let starts = pids_in(&path).len();
    assert!(starts <= 8, "{starts} workers started");
    for pid in pids_in(&path).into_iter().skip(1) {
        eventually(&format!("worker {pid} to be gone"), || !running(pid));
    }
    // Once initializers return again, the pool serves as before.
    std::fs::remove_file(format!("{path}.hang")).unwrap();
    assert_ne!(pool.apply(kill_self_or_pid, false).unwrap(), 0);
    let _ = std::fs::remove_file(path);
}

/// Not a test on its own: with SIGCHLD ignored (the kernel then reaps
/// children itself), kills a `Process` and a pool worker and reports what
/// each handle says.
#[test]
#[ignore = "helper process for sigchld_ignored_a_dead_worker_does_not_look_alive"]
fn helper_sigchld_ignored() {
    // SAFETY: a signal disposition of this helper process alone.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    let mut process = procpool::Process::spawn(sleep_then_pid, 60_000).unwrap();
    process.kill();
    eventually("the process to end", || !process.is_alive());
    println!("PROCESS ALIVE {}", process.is_alive());
    println!("PROCESS EXIT CODE {:?}", process.exit_code());
    println!("PROCESS EXIT CAUSE {:?}", process.exit_cause());
    match process.join() {
        Ok(pid) => println!("PROCESS JOIN OK {pid}"),
        Err(err) => println!("PROCESS JOIN ERR {err}"),
    }
    let pool = Pool::with_processes(1).unwrap();
    match pool.apply(crash, "abort".to_string()) {
        Ok(pid) => println!("POOL OK {pid}"),
        Err(err) => println!("POOL ERR {err}"),
    }
    match pool.apply(crash, "none".to_string()) {
        Ok(_) => println!("POOL THEN OK"),
        Err(err) => println!("POOL THEN ERR {err}"),
    }
}

#[test]
fn sigchld_ignored_a_dead_worker_does_not_look_alive() {
    let (_, stdout, stderr) = run_helper_test("helper_sigchld_ignored");
    let report = format!("{stdout}\n{stderr}");
    assert!(stdout.contains("PROCESS ALIVE false"), "{report}");
    assert!(
        stdout.contains("PROCESS EXIT CAUSE Some(SigchldIgnored)"),
        "{report}"
    );
    assert!(
        stdout.contains("PROCESS JOIN ERR") && stdout.contains("ignores SIGCHLD"),
        "{report}"
    );
    let pool_line = stdout
        .lines()
        .find(|line| line.starts_with("POOL ERR"))
        .unwrap_or_else(|| panic!("{report}"));
    assert!(pool_line.contains("ignores SIGCHLD"), "{report}");
    assert!(stdout.contains("POOL THEN OK"), "{report}");
    assert!(!stderr.contains("panicked"), "{report}");
}

/// This process's address space in bytes (`VmSize`).
fn address_space() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmSize:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

/// Not a test on its own: with a pool up and a 64 MiB payload in hand,
/// limits this process's address space to what it uses plus 40 MiB, so the
/// payload cannot be encoded; reports that call's outcome and the next one's.
#[test]
#[ignore = "helper process for a_payload_too_large_for_memory_fails_that_call_only"]
fn helper_payload_without_memory() {
    let pool = Pool::with_processes(1).unwrap();
    assert_eq!(pool.apply(add, (1, 1)).unwrap(), 2);
    let payload = vec![7u8; 64 << 20];
    let limit = address_space() + (40 << 20);
    let tight = libc::rlimit {
        rlim_cur: limit,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain setrlimit on this (helper) process.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &tight) }, 0);
    match pool.apply(byte_len, payload) {
        Ok(len) => println!("FIRST OK {len}"),
        Err(err) => {
            println!("FIRST ERR {err}");
            println!(
                "FIRST SOURCE {:?}",
                io_error(&err).map(std::io::Error::kind)
            );
        }
    }
    match pool.apply(add, (2, 3)) {
        Ok(sum) => println!("THEN OK {sum}"),
        Err(err) => println!("THEN ERR {err}"),
    }
}

#[test]
fn a_payload_too_large_for_memory_fails_that_call_only() {
    let (status, stdout, stderr) = run_helper_test("helper_payload_without_memory");
    let report = format!("{status:?}\n{stdout}\n{stderr}");
    assert!(status.success(), "{report}");
    assert!(
        stdout.contains("FIRST ERR") && stdout.contains("memory"),
        "{report}"
    );
    assert!(
        stdout.contains("FIRST SOURCE Some(OutOfMemory)"),
        "{report}"
    );
    assert!(stdout.contains("THEN OK 5"), "{report}");
}

/// Not a test on its own: lowers this process's limit on processes and
/// threads (`RLIMIT_NPROC`) to 1, which its user already uses up, then
/// reports what starting a pool and a `Process` says.
#[test]
#[ignore = "helper process for at_the_process_limit_the_error_says_ulimit_u"]
fn helper_without_processes() {
    let limit = libc::rlimit {
        rlim_cur: 1,
        rlim_max: 1,
    };
    // SAFETY: plain setrlimit on this (helper) process.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NPROC, &limit) }, 0);
    for (what, outcome) in [
        ("POOL", Pool::with_processes(1).map(|_| ())),
        (
            "PROCESS",
            procpool::Process::spawn(sleep_then_pid, 0).map(|_| ()),
        ),
    ] {
        match outcome {
            Ok(()) => println!("{what} OK"),
            Err(err @ Error::System { .. }) => println!("{what} SYSTEM {err}"),
            Err(err) => println!("{what} OTHER {err:?}"),
        }
    }
}

#[test]
fn at_the_process_limit_the_error_says_ulimit_u() {
    // RLIMIT_NPROC binds no process with CAP_SYS_RESOURCE or
    // CAP_SYS_ADMIN: as root, the helper runs as `nobody`, from a copy of
    // this binary that `nobody` may run wherever the original lives.
    let exe = std::env::current_exe().unwrap();
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    let dir =
        std::path::PathBuf::from("/tmp").join(format!("procpool-nproc-{}", std::process::id()));
    let mut command = if root {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.join("faults");
        std::fs::copy(&exe, &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(copy)
            .current_dir(&dir);
        command
    } else {
        Command::new(&exe)
    };
    let output = command
        .args([
            "--exact",
            "helper_without_processes",
            "--ignored",
            "--nocapture",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = format!("{:?}\n{stdout}\n{stderr}", output.status);
    for what in ["POOL", "PROCESS"] {
        let line = stdout
            .lines()
            .find(|line| line.starts_with(what))
            .unwrap_or_else(|| panic!("{report}"));
        assert!(line.starts_with(&format!("{what} SYSTEM")), "{report}");
        assert!(line.contains("ulimit -u"), "{report}");
    }
    assert!(!stderr.contains("panicked at"), "{report}");
}
