//! The cluster example (`examples/cluster.rs`): its workers and its program
//! against a redis-server of the test's own.
//!
//! It is built as this package's binary `procpool-cluster-example` because
//! procpool-examples enables `cluster` only on request (so that the other
//! examples build without redis, rustls and ring), while this package has it
//! in every `cargo test --workspace`: the example is never skipped.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use procpool_tests::RedisServer;

const EXAMPLE: &str = env!("CARGO_BIN_EXE_procpool-cluster-example");

/// An example process that runs longer than this is killed and the test fails.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Reads a whole pipe on its own thread; the text arrives on the returned
/// channel once every process sharing the pipe has closed it.
fn read_all(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    rx
}

/// Waits at most [`TIMEOUT`] for `child` to exit, killing it on expiry.
fn wait(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} ran longer than {TIMEOUT:?} and was killed");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("cannot wait for {what}: {e}"),
        }
    }
}

#[test]
fn cluster_example_counts_primes_on_its_workers_and_stops_on_ctrl_c() {
    let redis = RedisServer::start();
    let url = redis.url("queue=example");
    let mut workers = Command::new(EXAMPLE)
        .args(["worker", &url, "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the cluster example's workers");
    let worker_stdout = read_all(workers.stdout.take().expect("piped stdout"));
    let worker_stderr = read_all(workers.stderr.take().expect("piped stderr"));

    let mut program = Command::new(EXAMPLE)
        .arg(&url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the cluster example's program");
    let stdout = read_all(program.stdout.take().expect("piped stdout"));
    let stderr = read_all(program.stderr.take().expect("piped stderr"));
    let status = wait(&mut program, "the cluster example's program");
    let stdout = stdout.recv_timeout(TIMEOUT).expect("the program's stdout");
    let stderr = stderr.recv_timeout(TIMEOUT).expect("the program's stderr");
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    assert!(stderr.is_empty(), "{stderr}");

    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "primes below 2000000: 148933", "{lines:#?}");
    // Each line names a worker of this host and how many of the 40 ranges it counted.
    let mut ranges = 0;
    for line in &lines[1..] {
        let (worker, count) = line
            .strip_prefix("ClusterWorker-")
            .and_then(|rest| rest.split_once(": "))
            .unwrap_or_else(|| panic!("bad worker line: {line:?}"));
        assert!(!worker.is_empty());
        ranges += count
            .strip_suffix(" ranges")
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("bad worker line: {line:?}"));
    }
    assert_eq!(ranges, 40, "{lines:#?}");
    assert!(
        (2..=3).contains(&lines.len()),
        "one or two workers: {lines:#?}"
    );

    // Ctrl-C (SIGINT) stops the workers cleanly: exit code 0, and every
    // worker process gone (the pipes they share close).
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(workers.id() as i32, libc::SIGINT) };
    let status = wait(&mut workers, "the cluster example's workers after SIGINT");
    let stdout = worker_stdout
        .recv_timeout(Duration::from_secs(10))
        .expect("a worker process outlived the example");
    let stderr = worker_stderr
        .recv_timeout(Duration::from_secs(10))
        .expect("a worker process outlived the example");
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "serving with 2 worker processes; Ctrl-C stops",
            "workers stopped"
        ]
    );
}
