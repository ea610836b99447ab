//! The worker template (fork server): workers are forked from one process
//! started per program, yet each is a fresh process of its own, and the
//! template is replaced when it dies, bounded when it stops answering, and
//! given up for exec where the system refuses its `clone`.
//!
//! A constructor in this binary records the pid of the process it ran in:
//! an exec'd worker runs it itself, a forked worker inherits the template's.
//! Three constructors count their runs and record their order: a `ctor`
//! that the linker places before procpool's, one placed after it
//! (`priority = late`) and a raw `.init_array` entry (after it too, as a
//! C library's `__attribute__((constructor))` would be).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use procpool::{Error, ExitCause, Pool, Process, pool_job};
use procpool_tests::{eventually, own_sockets, running, zombie_children};

/// The pid of the process in which this binary's constructors ran.
static CONSTRUCTED_IN: AtomicU32 = AtomicU32::new(0);

#[ctor::ctor(unsafe)]
fn record_constructor_pid() {
    CONSTRUCTED_IN.store(std::process::id(), Ordering::Relaxed);
    constructed(0);
    answer_garbage_once();
    // Runs before procpool's constructor (both have the default priority,
    // and this binary's objects come first), so the template starts with a
    // second thread.
    start_thread_in_template("early");
}

/// Runs after procpool's constructor: `ctor` places `late` after every
/// default-priority constructor.
#[ctor::ctor(unsafe, priority = late)]
fn late_constructor() {
    constructed(1);
    start_thread_in_template("late");
}

/// A raw `.init_array` entry: after every prioritised one (procpool's
/// included), with lld and GNU ld alike.
#[used]
#[unsafe(link_section = ".init_array")]
static RAW_CONSTRUCTOR: extern "C" fn() = raw_constructor;

extern "C" fn raw_constructor() {
    constructed(2);
}

/// How many times each of the three constructors ran in this process.
static CONSTRUCTOR_RUNS: [AtomicU32; 3] = [AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)];
/// The order they ran in: one decimal digit (1 + which) per run.
static CONSTRUCTOR_ORDER: AtomicU64 = AtomicU64::new(0);
/// Which of them saw the worker marker: bit `which`.
static CONSTRUCTOR_SAW_MARKER: AtomicU32 = AtomicU32::new(0);

fn constructed(which: usize) {
    CONSTRUCTOR_RUNS[which].fetch_add(1, Ordering::Relaxed);
    let order = CONSTRUCTOR_ORDER.load(Ordering::Relaxed);
    CONSTRUCTOR_ORDER.store(order * 10 + which as u64 + 1, Ordering::Relaxed);
    if std::env::var_os("__PROCPOOL_WORKER").is_some() {
        CONSTRUCTOR_SAW_MARKER.fetch_or(1 << which, Ordering::Relaxed);
    }
}

/// Starts a long thread in the template when [`THREAD_IN_TEMPLATE`] names `when`.
fn start_thread_in_template(when: &str) {
    if std::env::var_os(THREAD_IN_TEMPLATE).is_some_and(|value| value == when)
        && std::env::var_os("__PROCPOOL_WORKER").is_some_and(|marker| marker == "template")
    {
        std::thread::spawn(|| std::thread::sleep(Duration::from_secs(600)));
    }
}

/// Set for a helper to `<length>:<path>`: the first template (the one that
/// finds no file at `path`, which it creates) writes `length` bytes of
/// garbage to its socket to the parent before it serves, so the parent
/// reads them as the answer to its first request.
const TEMPLATE_GARBAGE: &str = "PROCPOOL_TEST_TEMPLATE_GARBAGE";

fn answer_garbage_once() {
    let Some(setting) = std::env::var(TEMPLATE_GARBAGE).ok() else {
        return;
    };
    let Some((length, path)) = setting.split_once(':') else {
        return;
    };
    let in_template =
        std::env::var_os("__PROCPOOL_WORKER").is_some_and(|marker| marker == "template");
    if !in_template || std::fs::File::create_new(path).is_err() {
        return;
    }
    // 0x80 last: as a 4-byte answer, i32::MIN, neither a pid nor an errno.
    let garbage = [0x80u8; 16];
    let length = length.parse::<usize>().unwrap_or(16).min(16);
    // SAFETY: writes a buffer we own to stdin, the template's socket.
    unsafe { libc::write(0, garbage.as_ptr().cast(), length) };
}

/// Set for a helper: its template starts a thread in the constructor that
/// runs before procpool's (`early`) or in the one after it (`late`).
const THREAD_IN_TEMPLATE: &str = "PROCPOOL_TEST_THREAD_IN_TEMPLATE";

/// What the constructors did in the process that runs this job: how many
/// times each ran, their order, and which saw the worker marker.
#[pool_job]
fn constructors() -> (Vec<u32>, u64, u32) {
    constructors_here()
}

fn constructors_here() -> (Vec<u32>, u64, u32) {
    let runs = CONSTRUCTOR_RUNS
        .iter()
        .map(|runs| runs.load(Ordering::Relaxed));
    (
        runs.collect(),
        CONSTRUCTOR_ORDER.load(Ordering::Relaxed),
        CONSTRUCTOR_SAW_MARKER.load(Ordering::Relaxed),
    )
}

/// What a worker's constructors should have done: as in this process,
/// where the loader ran each once (whatever order the linker chose), and
/// each saw the worker marker.
fn constructors_in_a_worker() -> (Vec<u32>, u64, u32) {
    let (runs, order, saw_marker) = constructors_here();
    assert_eq!((&runs[..], saw_marker), (&[1, 1, 1][..], 0));
    (runs, order, 0b111)
}

/// What a worker knows of itself, read while it runs a job.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Origin {
    pid: u32,
    parent: u32,
    constructed_in: u32,
    threads: usize,
}

#[pool_job]
fn whoami() -> Origin {
    Origin {
        pid: std::process::id(),
        parent: std::os::unix::process::parent_id(),
        constructed_in: CONSTRUCTED_IN.load(Ordering::Relaxed),
        threads: std::fs::read_dir("/proc/self/task").map_or(0, |tasks| tasks.count()),
    }
}

#[pool_job]
fn sleep_then_origin(ms: u64) -> Origin {
    std::thread::sleep(Duration::from_millis(ms));
    whoami()
}

/// Threads started inside a forked worker (libc's thread bookkeeping came
/// from the template with the fork): their sum, and the worker's thread
/// count while they run.
#[pool_job]
fn threads_in_job(n: u64) -> (u64, usize) {
    let barrier = std::sync::Barrier::new(n as usize + 1);
    let total = std::sync::Mutex::new(0);
    let mut threads = 0;
    std::thread::scope(|scope| {
        for i in 0..n {
            let (barrier, total) = (&barrier, &total);
            scope.spawn(move || {
                *total.lock().unwrap() += i;
                // Alive until the worker's thread has counted them.
                barrier.wait();
            });
        }
        threads = std::fs::read_dir("/proc/self/task").map_or(0, |tasks| tasks.count());
        barrier.wait();
    });
    (total.into_inner().unwrap(), threads)
}

#[pool_job]
fn env_and_cwd(name: String) -> (Option<String>, String) {
    let cwd = std::env::current_dir().map_or_else(|e| e.to_string(), |d| d.display().to_string());
    (std::env::var(name).ok(), cwd)
}

#[pool_job]
fn write_to_null() -> u32 {
    // SAFETY: deliberately faulting to test crash reporting.
    unsafe { std::ptr::write_volatile(std::ptr::null_mut::<u32>(), 1) };
    0
}

/// The template's pid, as the workers of a new pool report it.
fn template_pid() -> u32 {
    let pool = Pool::with_processes(1).unwrap();
    let origin = pool.apply(whoami, ()).unwrap();
    assert_ne!(origin.constructed_in, origin.pid, "not forked: {origin:?}");
    origin.constructed_in
}

#[test]
fn workers_are_forked_from_the_template_as_fresh_processes() {
    let pool = Pool::with_processes(2).unwrap();
    // Overlapping tasks: two workers, both busy at once.
    let origins = pool.map(sleep_then_origin, vec![300, 300]).unwrap();
    assert_ne!(origins[0].pid, origins[1].pid, "{origins:?}");
    for origin in &origins {
        assert_ne!(origin.pid, std::process::id());
        // A child of this process, not of the template, so that this
        // process reaps it and its death signal follows this process.
        assert_eq!(origin.parent, std::process::id(), "{origin:?}");
        // Forked: the constructors ran once, in the template.
        assert_ne!(origin.constructed_in, origin.pid, "{origin:?}");
        assert_eq!(origin.constructed_in, origins[0].constructed_in);
        assert_ne!(origin.constructed_in, std::process::id());
        // None of the caller's threads (drivers, the test harness's).
        assert_eq!(origin.threads, 1, "{origin:?}");
    }
    // A forked worker starts threads of its own as any process does.
    assert_eq!(pool.apply(threads_in_job, 8).unwrap(), ((0..8).sum(), 9));
    // A replacement worker and a Process come from the same template.
    let first = origins[0].constructed_in;
    let process = Process::spawn(whoami, ()).unwrap().join().unwrap();
    assert_eq!(process.constructed_in, first, "{process:?}");
    assert_eq!(process.parent, std::process::id());
    assert_eq!(process.threads, 1);
}

#[test]
fn a_real_segfault_in_a_forked_worker_is_signal_11() {
    let pool = Pool::with_processes(1).unwrap();
    assert_ne!(pool.apply(whoami, ()).unwrap().constructed_in, 0);
    match pool.apply(write_to_null, ()) {
        Err(Error::WorkerDied { cause, .. }) => assert_eq!(cause, ExitCause::Signal(11)),
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    let replaced = pool.apply(whoami, ()).unwrap();
    assert_ne!(replaced.constructed_in, replaced.pid);
}

/// Not a test on its own (it kills this process's template, which would
/// change which template other tests' workers come from): kills the
/// template in three ways, reporting after each whether a new pool's
/// workers come from a new template.
#[test]
#[ignore = "helper process for a_killed_template_is_replaced_on_the_next_start"]
fn helper_killed_template() {
    let new_pool_works = |old: u32| {
        let pool = Pool::with_processes(2).unwrap();
        let origins = pool.map(sleep_then_origin, vec![100, 100]).unwrap();
        origins
            .iter()
            .all(|o| o.constructed_in != old && o.constructed_in != o.pid)
    };
    let old = template_pid();
    // SAFETY: plain kill(2) on the template, a child of this process;
    // no memory is involved (the same for the kill calls below).
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    eventually("the template to die", || !running(old));
    println!("AFTER DEATH {}", new_pool_works(old));

    // Asked at once: the request may reach it while it dies.
    let old = template_pid();
    // SAFETY: as above.
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    println!("AT ONCE {}", new_pool_works(old));

    // Killed with a request in its queue: whether it forked is unknown.
    let old = template_pid();
    // SAFETY: as above.
    unsafe { libc::kill(old as i32, libc::SIGSTOP) };
    let starting = std::thread::spawn(move || new_pool_works(old));
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: as above.
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    println!("HOLDING A REQUEST {}", starting.join().unwrap());
}

#[test]
fn a_killed_template_is_replaced_on_the_next_start() {
    let stdout = run_helper("helper_killed_template");
    for case in ["AFTER DEATH", "AT ONCE", "HOLDING A REQUEST"] {
        assert!(stdout.contains(&format!("{case} true")), "{case}: {stdout}");
    }
}

/// Not a test on its own: stops the template, then reports how a start
/// bounded by a short `spawn_timeout` ends, and whether the next works.
#[test]
#[ignore = "helper process for a_stopped_template_is_bounded_by_spawn_timeout"]
fn helper_stopped_template() {
    let stopped = template_pid();
    // SAFETY: plain kill(2) on the template, a child of this process.
    unsafe { libc::kill(stopped as i32, libc::SIGSTOP) };
    let started = Instant::now();
    let outcome = Pool::builder()
        .processes(2)
        .spawn_timeout(Duration::from_millis(500))
        .build();
    println!("ELAPSED {}", started.elapsed().as_millis());
    match outcome {
        Ok(_) => println!("FIRST OK"),
        Err(err) => println!("FIRST ERR {err:?}"),
    }
    println!("STOPPED RUNNING {}", running(stopped));
    let pool = Pool::with_processes(1).unwrap();
    let origin = pool.apply(whoami, ()).unwrap();
    println!(
        "THEN OK {}",
        origin.constructed_in != stopped && origin.constructed_in != origin.pid
    );
}

#[test]
fn a_stopped_template_is_bounded_by_spawn_timeout() {
    let stdout = run_helper("helper_stopped_template");
    assert!(stdout.contains("FIRST ERR Spawn("), "{stdout}");
    assert!(
        stdout.contains("did not connect back within 500ms"),
        "{stdout}"
    );
    assert!(stdout.contains("STOPPED RUNNING false"), "{stdout}");
    assert!(stdout.contains("THEN OK true"), "{stdout}");
    let elapsed: u64 = stdout
        .lines()
        .find_map(|line| line.strip_prefix("ELAPSED ")?.parse().ok())
        .unwrap();
    assert!(elapsed < 5_000, "{elapsed} ms");
}

/// Not a test on its own: starts a `Process` (and so the template and the
/// thread that starts it), forks without exec as a program may, and reports
/// whether the forked copy can start a `Process` of its own within 10 s.
#[test]
#[ignore = "helper process for a_program_forked_without_exec_starts_workers_of_its_own"]
fn helper_forked_program() {
    use std::io::Write;
    let first = Process::spawn(whoami, ()).unwrap().join().unwrap();
    // SAFETY: the child runs a Process start and leaves with `_exit`; the
    // other threads of this process (procpool's spawner) hold no lock
    // while idle.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let outcome = Process::spawn(whoami, ()).and_then(|mut process| process.join());
        let own = matches!(&outcome, Ok(o) if o.parent == std::process::id()
            && o.constructed_in != first.constructed_in);
        println!("CHILD {own} {outcome:?}");
        let _ = std::io::stdout().flush();
        // SAFETY: ends the forked copy without running anything of the parent's.
        unsafe { libc::_exit(0) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut status = 0;
        // SAFETY: waitpid on the child forked above.
        if unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } == child {
            break;
        }
        if Instant::now() > deadline {
            println!("CHILD HUNG");
            // SAFETY: kill(2) and waitpid on the child forked above.
            unsafe {
                libc::kill(child, libc::SIGKILL);
                libc::waitpid(child, &mut status, 0);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_program_forked_without_exec_starts_workers_of_its_own() {
    let stdout = run_helper("helper_forked_program");
    assert!(stdout.contains("CHILD true"), "{stdout}");
}

#[test]
fn a_forged_template_marker_runs_neither_main_nor_a_template() {
    // Started with the template's marker but a stdin that is no socket,
    // the program must not run its `main` (here: the test harness, which
    // would print test names) and must not wait for requests: it exits.
    let output = Command::new(std::env::current_exe().unwrap())
        .arg("--list")
        .env("__PROCPOOL_WORKER", "template")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(86), "{output:?}");
    assert!(output.stdout.is_empty(), "main ran: {output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not the channel to the parent"), "{stderr}");
}

#[pool_job]
fn exit_now() -> u32 {
    std::process::exit(3)
}

/// Not a test on its own: a pool whose worker died starts its replacement
/// through a stopped template; reports how long dropping the pool then takes.
#[test]
#[ignore = "helper process for dropping_a_pool_does_not_wait_for_a_stopped_template"]
fn helper_dropped_while_the_template_is_stopped() {
    let pool = Pool::with_processes(1).unwrap();
    let template = pool.apply(whoami, ()).unwrap().constructed_in;
    // SAFETY: plain kill(2) on the template, a child of this process.
    unsafe { libc::kill(template as i32, libc::SIGSTOP) };
    assert!(pool.apply(exit_now, ()).is_err());
    // A task for the replacement, whose start now waits on the template
    // (spawn_timeout: 10 s).
    let pending = pool.apply_async(whoami, ()).unwrap();
    std::thread::sleep(Duration::from_millis(350));
    let started = Instant::now();
    drop(pool);
    drop(pending);
    println!("DROPPED IN {}", started.elapsed().as_millis());
    let pool = Pool::with_processes(1).unwrap();
    println!(
        "THEN OK {}",
        pool.apply(whoami, ()).unwrap().constructed_in != template
    );
}

#[test]
fn dropping_a_pool_does_not_wait_for_a_stopped_template() {
    let stdout = run_helper("helper_dropped_while_the_template_is_stopped");
    let dropped: u64 = stdout
        .lines()
        .find_map(|line| line.strip_prefix("DROPPED IN ")?.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(dropped < 5_000, "{dropped} ms: {stdout}");
    assert!(stdout.contains("THEN OK true"), "{stdout}");
}

/// Not a test on its own: changes the environment and the working
/// directory between pools, reporting what a worker sees each time.
#[test]
#[ignore = "helper process for workers_see_the_environment_of_their_start"]
fn helper_changing_environment() {
    let var = "PROCPOOL_TEST_TEMPLATE_VAR";
    let report = |label: &str| {
        let pool = Pool::with_processes(1).unwrap();
        let (value, cwd) = pool.apply(env_and_cwd, var.to_owned()).unwrap();
        let template = pool.apply(whoami, ()).unwrap().constructed_in;
        println!("{label} {value:?} {cwd} {template}");
    };
    report("BEFORE");
    // SAFETY: this helper process runs one test, on one thread of its own;
    // no pool runs while the environment changes.
    unsafe { std::env::set_var(var, "first") };
    report("SET");
    // SAFETY: as above.
    unsafe { std::env::set_var(var, "second") };
    report("CHANGED");
    std::env::set_current_dir("/").unwrap();
    report("MOVED");
    report("AGAIN");
}

#[test]
fn workers_see_the_environment_of_their_start() {
    let stdout = run_helper("helper_changing_environment");
    let line = |label: &str| -> Vec<String> {
        let line = stdout
            .lines()
            .find(|line| line.starts_with(&format!("{label} ")))
            .unwrap_or_else(|| panic!("no {label} line in {stdout}"));
        line.split(' ').skip(1).map(str::to_owned).collect()
    };
    let here = std::env::current_dir().unwrap().display().to_string();
    assert_eq!(line("BEFORE")[..2], ["None".to_owned(), here.clone()]);
    assert_eq!(
        line("SET")[..2],
        ["Some(\"first\")".to_owned(), here.clone()]
    );
    assert_eq!(line("CHANGED")[..2], ["Some(\"second\")".to_owned(), here]);
    assert_eq!(
        line("MOVED")[..2],
        ["Some(\"second\")".to_owned(), "/".to_owned()]
    );
    // A template is replaced when what it inherited changed, and only then.
    let templates: Vec<String> = ["BEFORE", "SET", "CHANGED", "MOVED", "AGAIN"]
        .iter()
        .map(|label| line(label)[2].clone())
        .collect();
    for pair in templates[..4].windows(2) {
        assert_ne!(pair[0], pair[1], "{stdout}");
    }
    assert_eq!(templates[3], templates[4], "{stdout}");
}

/// Not a test on its own: refuses `clone` with `CLONE_PARENT` to this
/// process and its children (a seccomp filter, as a sandbox might), then
/// reports where its workers come from.
#[test]
#[ignore = "helper process for workers_start_by_exec_where_clone_parent_is_refused"]
fn helper_without_clone_parent() {
    refuse_clone_parent();
    report_whether_pool_workers_were_execd();
    let process = Process::spawn(whoami, ()).unwrap().join().unwrap();
    println!("PROCESS EXEC {}", process.constructed_in == process.pid);
}

#[test]
fn workers_start_by_exec_where_clone_parent_is_refused() {
    let stdout = run_helper("helper_without_clone_parent");
    assert!(stdout.contains("EXEC true"), "{stdout}");
    assert!(stdout.contains("PROCESS EXEC true"), "{stdout}");
}

/// Not a test on its own: run with [`THREAD_IN_TEMPLATE`] set, reports
/// where its workers come from.
#[test]
#[ignore = "helper process for a_template_with_threads_forks_nothing"]
fn helper_threaded_template() {
    report_whether_pool_workers_were_execd();
}

/// Prints `EXEC true` when both workers of a new pool ran their own
/// constructors (started by exec) as children of this process.
fn report_whether_pool_workers_were_execd() {
    let pool = Pool::with_processes(2).unwrap();
    let origins = pool.map(sleep_then_origin, vec![100, 100]).unwrap();
    let exec = origins
        .iter()
        .all(|o| o.constructed_in == o.pid && o.parent == std::process::id());
    println!("EXEC {exec}");
}

#[test]
fn a_template_with_threads_forks_nothing() {
    // A fork would copy the thread's locks without the thread: workers
    // start by exec instead, whichever constructor started it.
    for when in ["early", "late"] {
        let stdout = run_helper_with("helper_threaded_template", &[(THREAD_IN_TEMPLATE, when)]);
        assert!(stdout.contains("EXEC true"), "{when}: {stdout}");
    }
}

#[test]
fn every_constructor_runs_once_in_order_in_forked_workers() {
    let expected = constructors_in_a_worker();
    let pool = Pool::with_processes(2).unwrap();
    let origin = pool.apply(whoami, ()).unwrap();
    assert_ne!(origin.constructed_in, origin.pid, "not forked: {origin:?}");
    for _ in 0..2 {
        assert_eq!(pool.apply(constructors, ()).unwrap(), expected);
    }
    let process = Process::spawn(constructors, ()).unwrap().join().unwrap();
    assert_eq!(process, expected);
}

/// Not a test on its own: with the template's `clone` refused, reports
/// what the constructors did in exec'd pool workers and `Process`es.
#[test]
#[ignore = "helper process for every_constructor_runs_once_in_order_in_execd_workers"]
fn helper_constructors_in_execd_workers() {
    refuse_clone_parent();
    report_whether_pool_workers_were_execd();
    let pool = Pool::with_processes(1).unwrap();
    println!("POOL {:?}", pool.apply(constructors, ()).unwrap());
    let process = Process::spawn(constructors, ()).unwrap().join().unwrap();
    println!("PROCESS {process:?}");
}

#[test]
fn every_constructor_runs_once_in_order_in_execd_workers() {
    let stdout = run_helper("helper_constructors_in_execd_workers");
    assert!(stdout.contains("EXEC true"), "{stdout}");
    let expected = constructors_in_a_worker();
    for line in [
        format!("POOL {expected:?}"),
        format!("PROCESS {expected:?}"),
    ] {
        assert!(stdout.contains(&line), "{line}: {stdout}");
    }
}

/// Not a test on its own (it kills this process's template): kills the
/// template of an idle pool, then reports whether it was reaped without
/// any worker start, and whether pools work after.
#[test]
#[ignore = "helper process for a_killed_template_is_reaped_at_once"]
fn helper_template_reaped_at_once() {
    let pool = Pool::with_processes(1).unwrap();
    let first = pool.apply(whoami, ()).unwrap();
    let template = first.constructed_in;
    // SAFETY: plain kill(2) on the template, a child of this process.
    unsafe { libc::kill(template as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let reaped = loop {
        if !running(template) && !zombie_children().contains(&template) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    println!("REAPED {reaped}");
    // No worker started meanwhile: the pool's worker is the same.
    println!(
        "SAME WORKER {}",
        pool.apply(whoami, ()).unwrap().pid == first.pid
    );
    let pool = Pool::with_processes(1).unwrap();
    let origin = pool.apply(whoami, ()).unwrap();
    println!(
        "NEW POOL {}",
        origin.constructed_in != template && origin.constructed_in != origin.pid
    );
}

#[test]
fn a_killed_template_is_reaped_at_once() {
    let stdout = run_helper("helper_template_reaped_at_once");
    for line in ["REAPED true", "SAME WORKER true", "NEW POOL true"] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
}

/// Not a test on its own (it damages this process's template): writes 16
/// bytes of garbage into every socket of this process (all of them
/// procpool's: the template's and the workers' channels), then reports how
/// the running pool, a new pool and a `Process` fare.
#[test]
#[ignore = "helper process for garbage_in_procpools_own_sockets_recovers"]
fn helper_garbage_in_own_sockets() {
    let pool = Pool::with_processes(2).unwrap();
    pool.map(sleep_then_origin, vec![100, 100]).unwrap();
    let sockets = own_sockets();
    println!("SOCKETS {}", sockets.len());
    let garbage = [0xa5u8; 16];
    for fd in sockets {
        // SAFETY: writes a buffer we own to a descriptor of this process.
        unsafe { libc::write(fd, garbage.as_ptr().cast(), garbage.len()) };
    }
    // The old pool: each call works or fails with an error of its own;
    // its workers are replaced.
    for _ in 0..3 {
        match pool.apply(whoami, ()) {
            Ok(_) => println!("OLD POOL CALL OK"),
            Err(err) => println!("OLD POOL CALL ERR {err}"),
        }
    }
    println!("OLD POOL THEN {}", pool.apply(whoami, ()).is_ok());
    for round in 0..3 {
        let fresh =
            Pool::with_processes(2).and_then(|pool| pool.map(sleep_then_origin, vec![50, 50]));
        match fresh {
            Ok(_) => println!("NEW POOL {round} OK"),
            Err(err) => println!("NEW POOL {round} ERR {err}"),
        }
        match Process::spawn(whoami, ()).and_then(|mut process| process.join()) {
            Ok(_) => println!("PROCESS {round} OK"),
            Err(err) => println!("PROCESS {round} ERR {err}"),
        }
    }
    drop(pool);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !zombie_children().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("ZOMBIES {:?}", zombie_children());
}

/// Not a test on its own (run with [`TEMPLATE_GARBAGE`] set): reports
/// whether pools and a `Process` work when the first template answers
/// garbage, and whether any zombie is left.
#[test]
#[ignore = "helper process for a_template_answering_garbage_is_replaced"]
fn helper_template_answers_garbage() {
    let pool = Pool::with_processes(2).and_then(|pool| pool.map(sleep_then_origin, vec![50, 50]));
    match pool {
        Ok(origins) => println!(
            "POOL OK {}",
            origins.iter().all(|o| o.constructed_in != o.pid)
        ),
        Err(err) => println!("POOL ERR {err}"),
    }
    match Process::spawn(whoami, ()).and_then(|mut process| process.join()) {
        Ok(_) => println!("PROCESS OK"),
        Err(err) => println!("PROCESS ERR {err}"),
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !zombie_children().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("ZOMBIES {:?}", zombie_children());
}

#[test]
fn a_template_answering_garbage_is_replaced() {
    // A 16-byte answer (malformed), and a 4-byte one that is neither a pid
    // nor an errno.
    for length in [16, 4] {
        let marker = std::env::temp_dir().join(format!(
            "procpool-template-garbage-{}-{length}",
            std::process::id()
        ));
        let setting = format!("{length}:{}", marker.display());
        let stdout = run_helper_with(
            "helper_template_answers_garbage",
            &[(TEMPLATE_GARBAGE, &setting)],
        );
        let garbage_sent = marker.exists();
        let _ = std::fs::remove_file(&marker);
        assert!(garbage_sent, "{length}: no template sent garbage: {stdout}");
        for line in ["POOL OK true", "PROCESS OK", "ZOMBIES []"] {
            assert!(stdout.contains(line), "{length}: {line}: {stdout}");
        }
    }
}

#[test]
fn garbage_in_procpools_own_sockets_recovers() {
    let stdout = run_helper("helper_garbage_in_own_sockets");
    // The template's socket and the two workers' channels at least.
    let sockets: usize = stdout
        .lines()
        .find_map(|line| line.strip_prefix("SOCKETS ")?.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(sockets >= 3, "{stdout}");
    assert!(stdout.contains("OLD POOL THEN true"), "{stdout}");
    for round in 0..3 {
        for line in [
            format!("NEW POOL {round} OK"),
            format!("PROCESS {round} OK"),
        ] {
            assert!(stdout.contains(&line), "{line}: {stdout}");
        }
    }
    assert!(stdout.contains("ZOMBIES []"), "{stdout}");
}

/// Installs a seccomp filter on this process (inherited by its children)
/// that fails `clone` with `EPERM` when its flags hold `CLONE_PARENT`.
fn refuse_clone_parent() {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    // seccomp_data: nr at 0, arch at 4, args[0] at 16 (low half first on
    // little-endian machines).
    let mut filter = [
        stmt(BPF_LD | BPF_W | BPF_ABS, 0),
        jump(BPF_JMP | BPF_JEQ | BPF_K, libc::SYS_clone as u32, 0, 3),
        stmt(BPF_LD | BPF_W | BPF_ABS, 16),
        jump(BPF_JMP | BPF_JSET | BPF_K, libc::CLONE_PARENT as u32, 0, 1),
        stmt(
            BPF_RET | BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: prctl calls with a valid filter program that outlives them.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &program as *const libc::sock_fprog,
            ),
            0,
            "{}",
            std::io::Error::last_os_error()
        );
    }
}

/// Runs one ignored helper test of this binary in a child process; its stdout.
fn run_helper(name: &str) -> String {
    run_helper_with(name, &[])
}

/// [`run_helper`] with these variables added to the helper's environment.
fn run_helper_with(name: &str, env: &[(&str, &str)]) -> String {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--ignored", "--nocapture"])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{name}: {stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    stdout
}
