//! The workloads, and how each system runs them.

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use procpool::{Pool, pool_job};
use rayon::prelude::*;

use crate::{Measured, since, three};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum System {
    Procpool,
    /// procpool with `.cluster(url)`: 2 cluster workers on this host,
    /// through a redis-server the benchmark starts on loopback.
    Cluster,
    Python,
    Procspawn,
    Rayon,
    Sequential,
    Pipe,
}

impl System {
    pub const ALL: [System; 7] = [
        System::Procpool,
        System::Cluster,
        System::Python,
        System::Procspawn,
        System::Rayon,
        System::Sequential,
        System::Pipe,
    ];

    pub fn name(self) -> &'static str {
        match self {
            System::Procpool => "procpool",
            System::Cluster => "procpool_redis",
            System::Python => "python_fork",
            System::Procspawn => "procspawn",
            System::Rayon => "rayon",
            System::Sequential => "sequential",
            System::Pipe => "raw_pipe",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Startup,
    ApplyRtt,
    MapTrivial,
    CpuBound,
    Bytes,
    ImapUnordered,
    /// Peak memory the caller gains during a map of 10^7 `u64`, over the
    /// result's size.
    MapPeakMemory,
}

impl Workload {
    pub const ALL: [Workload; 7] = [
        Workload::Startup,
        Workload::ApplyRtt,
        Workload::MapTrivial,
        Workload::CpuBound,
        Workload::Bytes,
        Workload::ImapUnordered,
        Workload::MapPeakMemory,
    ];

    /// The name `python_pool.py` reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Startup => "startup_ms",
            Workload::ApplyRtt => "apply_rtt_us",
            Workload::MapTrivial => "map_trivial_1e6_s",
            Workload::CpuBound => "cpu_bound_s",
            Workload::Bytes => "bytes_50x10MiB_MBps",
            Workload::ImapUnordered => "imap_unordered_1e5_s",
            Workload::MapPeakMemory => "map_1e7_peak_x_result",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Workload::Startup => "ms",
            Workload::ApplyRtt => "us",
            Workload::Bytes => "MiB/s",
            Workload::MapPeakMemory => "x",
            _ => "s",
        }
    }

    /// The goal for procpool in this row, and whether it was met.
    pub fn verdict(self, row: &BTreeMap<System, f64>) -> (String, String) {
        let ours = row.get(&System::Procpool).copied();
        let python = row.get(&System::Python).copied();
        let check = |goal: String, ok: Option<bool>| {
            let met = match ok {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "?",
            };
            (goal, met.to_owned())
        };
        let lower_than = |other: Option<f64>, factor: f64| match (ours, other) {
            (Some(a), Some(b)) => Some(a <= factor * b),
            _ => None,
        };
        let beats_procspawn = match (ours, row.get(&System::Procspawn)) {
            (Some(a), Some(&b)) if self == Workload::Bytes => Some(a >= b),
            (Some(a), Some(&b)) => Some(a <= b),
            _ => Some(true),
        };
        let both = |a: Option<bool>, b: Option<bool>| match (a, b) {
            (Some(x), Some(y)) => Some(x && y),
            _ => None,
        };
        match self {
            Workload::MapPeakMemory => check("<= 1.1".into(), ours.map(|ratio| ratio <= 1.1)),
            Workload::Startup => check(
                "<= 0.2 x python".into(),
                both(lower_than(python, 0.2), beats_procspawn),
            ),
            Workload::ApplyRtt => check(
                "<= 0.2 x python, <= 2 x raw_pipe".into(),
                both(
                    both(
                        lower_than(python, 0.2),
                        lower_than(row.get(&System::Pipe).copied(), 2.0),
                    ),
                    beats_procspawn,
                ),
            ),
            Workload::MapTrivial => check(
                "<= 0.05 x python".into(),
                both(lower_than(python, 0.05), beats_procspawn),
            ),
            Workload::CpuBound => check(
                "<= 1.05 x rayon".into(),
                both(
                    lower_than(row.get(&System::Rayon).copied(), 1.05),
                    beats_procspawn,
                ),
            ),
            Workload::Bytes => {
                let ok = match (ours, python) {
                    (Some(a), Some(b)) => Some(a >= 5.0 * b),
                    _ => None,
                };
                check(">= 5 x python".into(), both(ok, beats_procspawn))
            }
            Workload::ImapUnordered => check(
                "<= 0.2 x python".into(),
                both(lower_than(python, 0.2), beats_procspawn),
            ),
        }
    }
}

// ---- the jobs -------------------------------------------------------------

#[pool_job]
pub(crate) fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

#[pool_job]
fn ident(x: u64) -> u64 {
    x
}

#[pool_job]
fn spin(n: u64) -> u64 {
    spin_plain(n)
}

#[pool_job]
fn blob_len(blob: Vec<u8>) -> usize {
    blob.len()
}

/// The same arithmetic as `python_pool.py`'s `spin`.
fn spin_plain(n: u64) -> u64 {
    let mut acc = 0u64;
    for i in 0..n {
        acc = (acc.wrapping_mul(31) + black_box(i)) & 0xFFFF_FFFF;
    }
    acc
}

/// Iterations of `spin` that take about 5 ms here, like Python's calibration.
pub fn spin_iterations() -> u64 {
    static N: OnceLock<u64> = OnceLock::new();
    *N.get_or_init(|| {
        // Median of 5 timings of a ~20 ms run: one short run misjudges
        // (frequency ramp-up, a neighbour's burst).
        let n = 4_000_000;
        let mut times: Vec<f64> = (0..5)
            .map(|_| {
                let start = Instant::now();
                black_box(spin_plain(black_box(n)));
                since(start)
            })
            .collect();
        times.sort_by(f64::total_cmp);
        ((n as f64) * 0.005 / times[2]).max(1000.0) as u64
    })
}

pub fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, Linux {}", kernel.trim())
}

const BLOB: usize = 10 << 20;

fn blobs() -> Vec<Vec<u8>> {
    (0..50u8).map(|i| vec![i; BLOB]).collect()
}

/// Resets this process's peak resident size to its current one (Linux
/// `clear_refs` 5) and returns it, in bytes.
fn reset_peak_rss() -> u64 {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    status_kib("VmRSS:") * 1024
}

/// This process's peak resident size since the last reset, in bytes.
fn peak_rss() -> u64 {
    status_kib("VmHWM:") * 1024
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

fn na(why: &str) -> Result<Measured, String> {
    Err(why.to_owned())
}

pub fn run(system: System, workload: Workload) -> Result<Measured, String> {
    match system {
        System::Procpool => Ok(procpool_run(workload, &|| {
            Pool::with_processes(2).expect("pool")
        })),
        System::Cluster => {
            let url = cluster::url()?;
            Ok(procpool_run(workload, &|| {
                Pool::builder()
                    .cluster(&url)
                    .processes(2)
                    .build()
                    .expect("cluster pool")
            }))
        }
        System::Procspawn => procspawn_run(workload),
        System::Rayon => rayon_run(workload),
        System::Sequential => sequential_run(workload),
        System::Pipe => match workload {
            Workload::ApplyRtt => Ok(three(pipe_rtt_us)),
            _ => na("-"),
        },
        System::Python => na("not run"),
    }
}

// ---- procpool -------------------------------------------------------------

/// The procpool workloads, on pools made by `new_pool` (2 workers, local or
/// in a cluster).
fn procpool_run(workload: Workload, new_pool: &dyn Fn() -> Pool) -> Measured {
    let n = spin_iterations();
    match workload {
        Workload::Startup => three(|| {
            let start = Instant::now();
            let pool = new_pool();
            pool.map(square, 0..10).expect("map");
            pool.close();
            pool.join().expect("join");
            since(start) * 1e3
        }),
        Workload::ApplyRtt => three(|| {
            let pool = new_pool();
            for _ in 0..50 {
                pool.apply(ident, 1).expect("apply");
            }
            let start = Instant::now();
            for _ in 0..2000 {
                pool.apply(ident, 1).expect("apply");
            }
            since(start) * 1e6 / 2000.0
        }),
        Workload::MapPeakMemory => three(|| {
            let pool = new_pool();
            pool.map(ident, 0..100).expect("map");
            let before = reset_peak_rss();
            let r = pool.map(ident, 0..10_000_000u64).expect("map");
            let grown = peak_rss().saturating_sub(before);
            assert_eq!(r[9_999_999], 9_999_999);
            grown as f64 / (r.len() * 8) as f64
        }),
        Workload::MapTrivial => three(|| {
            let pool = new_pool();
            pool.map(square, 0..100).expect("map");
            let start = Instant::now();
            let r = pool.map(square, 0..1_000_000u64).expect("map");
            let dt = since(start);
            assert_eq!(r[999_999], 999_999 * 999_999);
            dt
        }),
        Workload::CpuBound => three(|| {
            let pool = new_pool();
            pool.map(square, 0..10).expect("map");
            let start = Instant::now();
            pool.chunksize(1).map(spin, vec![n; 200]).expect("map");
            since(start)
        }),
        Workload::Bytes => {
            let data = blobs();
            three(|| {
                let pool = new_pool();
                pool.map(ident, 0..10).expect("map");
                let input = data.clone();
                let start = Instant::now();
                let r = pool.chunksize(1).map(blob_len, input).expect("map");
                let dt = since(start);
                assert_eq!(r, vec![BLOB; 50]);
                500.0 / dt
            })
        }
        Workload::ImapUnordered => three(|| {
            let pool = new_pool();
            pool.map(square, 0..10).expect("map");
            let start = Instant::now();
            let sum: u64 = pool
                .chunksize(1000)
                .imap_unordered(square, 0..100_000u64)
                .map(|r| r.expect("item"))
                .sum();
            let dt = since(start);
            assert_eq!(sum, (0..100_000u64).map(|x| x * x).sum::<u64>());
            dt
        }),
    }
}

// ---- procpool over Redis --------------------------------------------------

pub mod cluster {
    use std::process::{Child, Command, Stdio};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use procpool::cluster::Workers;

    struct Cluster {
        url: String,
        workers: Option<Workers>,
        server: Child,
    }

    static CLUSTER: Mutex<Option<Result<Cluster, String>>> = Mutex::new(None);

    /// The URL of a queue served by 2 cluster workers on this host, through
    /// a redis-server started for this run (no persistence, loopback only).
    pub fn url() -> Result<String, String> {
        let mut cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
        cluster
            .get_or_insert_with(start)
            .as_ref()
            .map(|c| c.url.clone())
            .map_err(Clone::clone)
    }

    fn start() -> Result<Cluster, String> {
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let server = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--port", &port.to_string(), "--loglevel", "warning"])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("redis-server did not start".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let url = format!("redis://127.0.0.1:{port}/0?queue=bench");
        let mut cluster = Cluster {
            url,
            workers: None,
            server,
        };
        cluster.workers = Some(Workers::start(&cluster.url, 2).map_err(|e| e.to_string())?);
        Ok(cluster)
    }

    /// Stops the workers and the server, if they were started.
    pub fn finish() {
        let taken = CLUSTER.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(taken);
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            drop(self.workers.take());
            let _ = self.server.kill();
            let _ = self.server.wait();
        }
    }
}

// ---- procspawn ------------------------------------------------------------

fn procspawn_run(workload: Workload) -> Result<Measured, String> {
    use procspawn::Pool as PsPool;
    let n = spin_iterations();
    let join_all = |handles: Vec<procspawn::JoinHandle<u64>>| {
        handles
            .into_iter()
            .map(|h| h.join().expect("procspawn join"))
            .collect::<Vec<u64>>()
    };
    Ok(match workload {
        Workload::Startup => three(|| {
            let start = Instant::now();
            let pool = PsPool::new(2).expect("procspawn pool");
            let handles = (0..10u64).map(|x| pool.spawn(x, |x| x * x)).collect();
            join_all(handles);
            pool.shutdown();
            since(start) * 1e3
        }),
        Workload::ApplyRtt => three(|| {
            let pool = PsPool::new(2).expect("procspawn pool");
            for _ in 0..50 {
                pool.spawn(1u64, |x| x).join().expect("join");
            }
            let start = Instant::now();
            for _ in 0..2000 {
                pool.spawn(1u64, |x| x).join().expect("join");
            }
            let dt = since(start) * 1e6 / 2000.0;
            pool.shutdown();
            dt
        }),
        // No map: the same chunks Python's default makes (8 of 125 000),
        // each sent as one task.
        Workload::MapTrivial => three(|| {
            let pool = PsPool::new(2).expect("procspawn pool");
            let start = Instant::now();
            let handles: Vec<_> = (0..8u64)
                .map(|c| {
                    let chunk: Vec<u64> = (c * 125_000..(c + 1) * 125_000).collect();
                    pool.spawn(chunk, |v| {
                        v.into_iter()
                            .map(|x| x.wrapping_mul(x))
                            .collect::<Vec<u64>>()
                    })
                })
                .collect();
            let mut all = Vec::with_capacity(1_000_000);
            for h in handles {
                all.extend(h.join().expect("join"));
            }
            let dt = since(start);
            assert_eq!(all.len(), 1_000_000);
            pool.shutdown();
            dt
        }),
        Workload::CpuBound => three(|| {
            let pool = PsPool::new(2).expect("procspawn pool");
            let start = Instant::now();
            let handles = (0..200).map(|_| pool.spawn(n, spin_plain)).collect();
            join_all(handles);
            let dt = since(start);
            pool.shutdown();
            dt
        }),
        Workload::Bytes => {
            let data = blobs();
            three(|| {
                let pool = PsPool::new(2).expect("procspawn pool");
                let input = data.clone();
                let start = Instant::now();
                // Submitting all 50 before joining deadlocks procspawn (its
                // `spawn` blocks on a large send while its workers block
                // handing results to handles nobody joins yet), so keep
                // at most one task per worker outstanding.
                let mut lens = Vec::with_capacity(50);
                let mut window = std::collections::VecDeque::new();
                for blob in input {
                    if window.len() == 2 {
                        let handle: procspawn::JoinHandle<u64> =
                            window.pop_front().expect("two handles");
                        lens.push(handle.join().expect("join"));
                    }
                    window.push_back(pool.spawn(blob, |b: Vec<u8>| b.len() as u64));
                }
                lens.extend(window.into_iter().map(|h| h.join().expect("join")));
                let dt = since(start);
                assert_eq!(lens, vec![BLOB as u64; 50]);
                pool.shutdown();
                500.0 / dt
            })
        }
        Workload::ImapUnordered => return na("no lazy iteration"),
        Workload::MapPeakMemory => return na("no map"),
    })
}

// ---- rayon and sequential: the in-process bounds ----------------------------

fn rayon_run(workload: Workload) -> Result<Measured, String> {
    let n = spin_iterations();
    let pool = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("rayon pool")
    };
    Ok(match workload {
        Workload::Startup => three(|| {
            let start = Instant::now();
            let pool = pool(2);
            let v: Vec<u64> = pool.install(|| (0..10u64).into_par_iter().map(|x| x * x).collect());
            black_box(v);
            drop(pool);
            since(start) * 1e3
        }),
        Workload::ApplyRtt => {
            let pool = pool(2);
            three(|| {
                let start = Instant::now();
                for i in 0..2000u64 {
                    black_box(pool.install(|| black_box(i)));
                }
                since(start) * 1e6 / 2000.0
            })
        }
        Workload::MapTrivial => {
            let pool = pool(2);
            three(|| {
                let start = Instant::now();
                let v: Vec<u64> = pool.install(|| {
                    (0..1_000_000u64)
                        .into_par_iter()
                        .map(|x| x.wrapping_mul(x))
                        .collect()
                });
                black_box(v);
                since(start)
            })
        }
        Workload::CpuBound => {
            let pool = pool(2);
            three(|| {
                let start = Instant::now();
                let v: Vec<u64> =
                    pool.install(|| vec![n; 200].into_par_iter().map(spin_plain).collect());
                black_box(v);
                since(start)
            })
        }
        Workload::Bytes | Workload::MapPeakMemory => return na("nothing crosses a process"),
        Workload::ImapUnordered => {
            let pool = pool(2);
            three(|| {
                let start = Instant::now();
                let s: u64 = pool.install(|| (0..100_000u64).into_par_iter().map(|x| x * x).sum());
                black_box(s);
                since(start)
            })
        }
    })
}

fn sequential_run(workload: Workload) -> Result<Measured, String> {
    let n = spin_iterations();
    Ok(match workload {
        Workload::MapTrivial => three(|| {
            let start = Instant::now();
            let v: Vec<u64> = (0..1_000_000u64).map(|x| x.wrapping_mul(x)).collect();
            black_box(v);
            since(start)
        }),
        Workload::CpuBound => three(|| {
            let start = Instant::now();
            for _ in 0..200 {
                black_box(spin_plain(n));
            }
            since(start)
        }),
        Workload::ImapUnordered => three(|| {
            let start = Instant::now();
            let s: u64 = (0..100_000u64).map(|x| black_box(x) * x).sum();
            black_box(s);
            since(start)
        }),
        _ => return na("-"),
    })
}

// ---- the floor: a raw pipe ping-pong with a child process ----------------

/// The child side: echo 8-byte messages until stdin closes.
pub fn pong() {
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let mut buf = [0u8; 8];
    while stdin.read_exact(&mut buf).is_ok() {
        if stdout
            .write_all(&buf)
            .and_then(|()| stdout.flush())
            .is_err()
        {
            break;
        }
    }
}

fn pipe_rtt_us() -> f64 {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .arg("--pong")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("pong child");
    let mut to = child.stdin.take().expect("stdin");
    let mut from = child.stdout.take().expect("stdout");
    let mut buf = [0u8; 8];
    let mut round = |i: u64| {
        to.write_all(&i.to_le_bytes()).expect("write");
        from.read_exact(&mut buf).expect("read");
    };
    for i in 0..50 {
        round(i);
    }
    let start = Instant::now();
    for i in 0..2000 {
        round(i);
    }
    let dt = since(start) * 1e6 / 2000.0;
    drop(to);
    let _ = child.wait();
    dt
}

// ---- Python -----------------------------------------------------------------

/// Runs `python_pool.py fork --json` and reads its medians and runs.
pub fn python(workloads: &[Workload]) -> HashMap<&'static str, Result<Measured, String>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python_pool.py");
    let output = Command::new("python3")
        .args([script, "fork", "--json"])
        .stderr(Stdio::inherit())
        .output();
    let mut found: HashMap<String, Measured> = HashMap::new();
    let failure = match output {
        Ok(output) if output.status.success() => {
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let (Some(name), Some(median), Some(runs)) = (
                    value["workload"].as_str(),
                    value["median"].as_f64(),
                    value["runs"].as_array(),
                ) else {
                    continue;
                };
                let runs = runs.iter().filter_map(serde_json::Value::as_f64).collect();
                found.insert(name.to_owned(), Measured { median, runs });
            }
            None
        }
        Ok(output) => Some(format!("python3 failed: {}", output.status)),
        Err(err) => Some(format!("python3: {err}")),
    };
    workloads
        .iter()
        .map(|w| {
            let cell = match (&failure, found.get(w.name())) {
                (_, Some(m)) => Ok(m.clone()),
                (Some(why), None) => Err(why.clone()),
                (None, None) => Err("not reported".into()),
            };
            (w.name(), cell)
        })
        .collect()
}
