//! Helpers shared by the integration tests in this package.
//!
//! "No hang" checks poll with generous bounds (seconds), never tight timing.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::time::{Duration, Instant};

/// Polls `condition` every few milliseconds; fails the test after 10 seconds.
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether `pid` is a running process (a zombie does not count).
pub fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

/// Reads the child's stdout up to a line `PIDS <pid> <pid> ...` and returns the pids.
pub fn read_reported_pids(child: &mut Child) -> Vec<u32> {
    let stdout = child
        .stdout
        .take()
        .expect("the child's stdout must be piped");
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("reading the child's stdout");
        if let Some(rest) = line.strip_prefix("PIDS ") {
            return rest.split(' ').map(|p| p.parse().expect("a pid")).collect();
        }
    }
    panic!("the child exited without reporting its workers' pids");
}
