//! Runs every example and checks its output line by line.
//!
//! `cargo test -p procpool-examples` builds the examples before it runs this
//! test; they sit next to it, in `target/<profile>/examples/`. A run
//! filtered by test name does not rebuild them, so each run first checks
//! that its binary is newer than every source it was built from. Each check
//! asserts only what the example guarantees by construction: lines that
//! worker processes print concurrently may come in any order, so those are
//! checked as a set, never by position.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// An example that runs longer than this is killed and the test fails.
const TIMEOUT: Duration = Duration::from_secs(60);

struct Run {
    /// The example's own process id.
    pid: u32,
    lines: Vec<String>,
    elapsed: Duration,
}

fn example_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/examples_output-<hash> -> target/<profile>/examples/<name>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test executable lives in target/<profile>/deps");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.is_file(),
        "example binary {} not found. {REBUILD}",
        path.display()
    );
    assert_fresh(&path);
    path
}

const REBUILD: &str = "`cargo test -p procpool-examples` builds the examples, but a run \
    with a test name filter or --test does not (rust-lang/cargo#6683): run \
    `cargo build -p procpool-examples --examples` (with the same --release or \
    --profile) first";

/// Fails if a source file the example was built from changed after the
/// build, so that a filtered `cargo test` run never checks a stale binary.
/// The sources are listed in the dep-info file cargo writes next to it.
fn assert_fresh(binary: &Path) {
    let Ok(dep_info) = std::fs::read_to_string(binary.with_extension("d")) else {
        return; // not built by cargo: nothing to compare with
    };
    let built = std::fs::metadata(binary)
        .and_then(|meta| meta.modified())
        .expect("the example binary's modification time");
    let sources = dep_info
        .lines()
        .next()
        .and_then(|line| line.split_once(": "))
        .map_or("", |(_, sources)| sources);
    for source in split_dep_info(sources) {
        let changed = std::fs::metadata(&source).and_then(|meta| meta.modified());
        assert!(
            changed.is_ok_and(|changed| changed <= built),
            "example binary {} is older than {source} (or that file is gone). {REBUILD}",
            binary.display()
        );
    }
}

/// The paths of a dep-info line: separated by spaces, with `\ ` for a space in a path.
fn split_dep_info(sources: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut current = String::new();
    let mut chars = sources.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&' ') => current.extend(chars.next()),
            ' ' => paths.extend(Some(std::mem::take(&mut current)).filter(|p| !p.is_empty())),
            c => current.push(c),
        }
    }
    paths.extend(Some(current).filter(|p| !p.is_empty()));
    paths
}

/// Reads a whole pipe on its own thread; the text arrives on the returned channel.
fn read_all(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    rx
}

/// Runs an example to completion (at most [`TIMEOUT`]), checks that it
/// succeeded quietly, and returns its stdout lines.
fn run(name: &str) -> Run {
    let start = Instant::now();
    let deadline = start + TIMEOUT;
    let mut child = Command::new(example_path(name))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start example {name}: {e}"));
    let pid = child.id();
    let stdout = read_all(child.stdout.take().expect("piped stdout"));
    let stderr = read_all(child.stderr.take().expect("piped stderr"));

    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("example {name} ran longer than {TIMEOUT:?} and was killed");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("cannot wait for example {name}: {e}"),
        }
    };
    let elapsed = start.elapsed();

    // Worker processes share the example's pipes: the pipes reach end of
    // file only once every one of them has exited too.
    let collect = |rx: mpsc::Receiver<String>, which: &str| {
        let left = deadline.saturating_duration_since(Instant::now());
        rx.recv_timeout(left.max(Duration::from_secs(5)))
            .unwrap_or_else(|_| {
                panic!(
                    "example {name} exited, but its {which} stayed open: a worker \
                     process outlived it"
                )
            })
    };
    let stdout = collect(stdout, "stdout");
    let stderr = collect(stderr, "stderr");

    assert!(
        status.success(),
        "example {name} failed with {status}\n--- stdout:\n{stdout}--- stderr:\n{stderr}"
    );
    assert!(
        stderr.is_empty(),
        "example {name} wrote to stderr:\n{stderr}--- stdout:\n{stdout}"
    );
    Run {
        pid,
        lines: stdout.lines().map(str::to_owned).collect(),
        elapsed,
    }
}

/// `[In Pool]: {x}` -> `x`.
fn worker_item(line: &str) -> Option<u64> {
    line.strip_prefix("[In Pool]: ")?.parse().ok()
}

/// `Process_{i}, Name: {name}, PID: {pid}` -> `(i, name, pid)`.
fn parse_process_line(line: &str) -> Option<(u32, &str, u32)> {
    let rest = line.strip_prefix("Process_")?;
    let (i, rest) = rest.split_once(", Name: ")?;
    let (name, pid) = rest.split_once(", PID: ")?;
    Some((i.parse().ok()?, name, pid.parse().ok()?))
}

/// The output of `process_basic` and `process_struct`: the main line first,
/// `All Done.` last, one line per process in between in any order.
fn check_three_processes(name: &str) {
    let run = run(name);
    let lines = &run.lines;
    assert_eq!(lines.len(), 5, "{name} output:\n{lines:#?}");

    let main_pid = lines[0]
        .strip_prefix("Main process, Name: MainProcess, PID: ")
        .and_then(|pid| pid.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("bad main line: {:?}", lines[0]));
    assert_eq!(main_pid, run.pid, "the main line reports the example's pid");

    let mut seen = HashSet::new();
    let mut pids = HashSet::new();
    for line in &lines[1..4] {
        let (i, process_name, pid) =
            parse_process_line(line).unwrap_or_else(|| panic!("bad process line: {line:?}"));
        // The processes are spawned in order, so Process_i is the (i+1)-th
        // process this program started.
        assert_eq!(process_name, format!("Process-{}", i + 1), "in {line:?}");
        assert!(seen.insert(i), "Process_{i} printed twice: {lines:#?}");
        assert_ne!(pid, main_pid, "a process line shows the main pid: {line:?}");
        assert!(
            pids.insert(pid),
            "two processes share pid {pid}: {lines:#?}"
        );
    }
    assert_eq!(seen, HashSet::from([0, 1, 2]), "{lines:#?}");
    assert_eq!(lines[4], "All Done.");
    // Every process sleeps one second before it prints; join waits for it.
    assert!(run.elapsed >= Duration::from_secs(1), "{:?}", run.elapsed);
}

#[test]
fn pool_map() {
    let run = run("pool_map");
    assert_eq!(run.lines, ["[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]"]);
}

#[test]
fn process_basic() {
    check_three_processes("process_basic");
}

#[test]
fn process_struct() {
    check_three_processes("process_struct");
}

#[test]
fn pool_map_blocking() {
    let run = run("pool_map_blocking");
    let lines = &run.lines;
    assert_eq!(lines.len(), 7, "{lines:#?}");
    // Workers print in any order, but all before map returns.
    let items: HashSet<u64> = lines[..6]
        .iter()
        .map(|line| worker_item(line).unwrap_or_else(|| panic!("bad worker line: {line:?}")))
        .collect();
    assert_eq!(items, (0..6).collect(), "{lines:#?}");
    assert_eq!(lines[6], "[Main]: map returned [0, 1, 4, 9, 16, 25]");
    // Six half-second jobs on two workers: at least three rounds.
    assert!(
        run.elapsed >= Duration::from_millis(1500),
        "{:?}",
        run.elapsed
    );
}

#[test]
fn pool_map_async() {
    let run = run("pool_map_async");
    let lines = &run.lines;
    let (last, rest) = lines.split_last().expect("some output");
    assert_eq!(last, "[Main]: results [0, 1, 4, 9, 16, 25]", "{lines:#?}");
    // The main process's lines and the workers' interleave in any order. The
    // main loop prints before its first ready() check, so there is at least one.
    let mut items = Vec::new();
    let mut main_lines = 0;
    for line in rest {
        if line == "[Main]: working on other things..." {
            main_lines += 1;
        } else {
            items.push(worker_item(line).unwrap_or_else(|| panic!("unexpected line: {line:?}")));
        }
    }
    items.sort_unstable();
    assert_eq!(items, [0, 1, 2, 3, 4, 5], "{lines:#?}");
    assert!(main_lines >= 1, "{lines:#?}");
}

#[test]
fn async_result() {
    let run = run("async_result");
    let lines = &run.lines;
    assert_eq!(lines.len(), 4, "{lines:#?}");
    // The job sleeps a second, so this is `false` unless the main process
    // stalled for that long; nothing guarantees it, so either is accepted.
    assert!(
        lines[0] == "false" || lines[0] == "true",
        "first ready(): {:?}",
        lines[0]
    );
    assert_eq!(lines[1], "true true 49");
    assert_eq!(lines[2], "false");
    // The panic message is followed by its source location.
    let expected = "error: job `async_result::fail` panicked on item 0: something went wrong";
    assert!(lines[3].starts_with(expected), "{:?}", lines[3]);
}

#[test]
fn worker_state() {
    let run = run("worker_state");
    let lines = &run.lines;
    assert_eq!(lines.len(), 2, "{lines:#?}");
    // sum of (x % 1000) * 0.5 for x in 0..100
    assert_eq!(lines[0], "sum of predictions: 2475");
    // One or two workers ran the tasks; each built its model exactly once.
    assert!(
        lines[1] == "100 tasks, model loads per worker: [1, 1]"
            || lines[1] == "100 tasks, model loads per worker: [1]",
        "{:?}",
        lines[1]
    );
}

#[test]
fn queue_progress() {
    let run = run("queue_progress");
    let mut expected: Vec<String> = (1..=5)
        .map(|step| format!("[Main]: progress {step}/5"))
        .collect();
    expected.push("[Main]: done, total 15".to_owned());
    assert_eq!(run.lines, expected);
}

#[test]
fn shared_table() {
    let run = run("shared_table");
    let square_sum = |n: u64| (n - 1) * n * (2 * n - 1) / 6;
    let mut expected: Vec<String> = (0..4u64)
        .map(|i| {
            let part =
                square_sum((i + 1) * 250_000) - if i == 0 { 0 } else { square_sum(i * 250_000) };
            format!("[Main]: part {i}: {part}")
        })
        .collect();
    expected.push(format!("[Main]: total {}", square_sum(1_000_000)));
    assert_eq!(run.lines, expected);
}
