//! The workloads, and how each system runs them.

use std::collections::HashMap;
use std::hint::black_box;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use procpool::{Pool, pool_job};
use rayon::prelude::*;

use crate::{Measured, since, three};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum System {
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
    pub(crate) const ALL: [System; 7] = [
        System::Procpool,
        System::Cluster,
        System::Python,
        System::Procspawn,
        System::Rayon,
        System::Sequential,
        System::Pipe,
    ];

    pub(crate) fn name(self) -> &'static str {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Workload {
    Startup,
    ApplyRtt,
    MapTrivial,
    CpuBound,
    Bytes,
    /// With `chunksize(1000)`, as `python_pool.py` runs it.
    ImapUnordered,
    /// The same without a chunk size: the pool's adaptive chunks. Not in
    /// `python_pool.py` (Python's default is one item per task).
    ImapUnorderedUntuned,
    /// Peak memory the caller gains during a map of 10^7 `u64`, over the
    /// result's size.
    MapPeakMemory,
    /// Mean round trip of an `apply` of a 1 MiB `Vec<u8>` that returns it.
    Echo1MiB,
    /// The same with 16 MiB.
    Echo16MiB,
    /// `imap_unordered` of 2 × 10^5 trivial items without a chunk size in a
    /// pool with a `task_timeout`, over the same without one: what a time
    /// limit costs (a ratio, procpool only).
    ImapTimeoutCost,
    /// 1 000 applies that each read a 64 MiB `Shared<[u64]>`, over 1 000
    /// plain applies (a ratio). procpool only.
    SharedApply,
}

impl Workload {
    pub(crate) const ALL: [Workload; 12] = [
        Workload::Startup,
        Workload::ApplyRtt,
        Workload::MapTrivial,
        Workload::CpuBound,
        Workload::Bytes,
        Workload::ImapUnordered,
        Workload::ImapUnorderedUntuned,
        Workload::MapPeakMemory,
        Workload::Echo1MiB,
        Workload::Echo16MiB,
        Workload::ImapTimeoutCost,
        Workload::SharedApply,
    ];

    /// The name `python_pool.py` reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::Startup => "startup_ms",
            Workload::ApplyRtt => "apply_rtt_us",
            Workload::MapTrivial => "map_trivial_1e6_s",
            Workload::CpuBound => "cpu_bound_s",
            Workload::Bytes => "bytes_50x10MiB_MBps",
            Workload::ImapUnordered => "imap_unordered_1e5_s",
            Workload::ImapUnorderedUntuned => "imap_unordered_1e5_untuned_s",
            Workload::MapPeakMemory => "map_1e7_peak_x_result",
            Workload::Echo1MiB => "echo_1MiB_ms",
            Workload::Echo16MiB => "echo_16MiB_ms",
            Workload::ImapTimeoutCost => "imap_2e5_timeout_x_untimed",
            Workload::SharedApply => "shared_64MiB_apply_x_plain",
        }
    }

    /// The payload of an echo workload, in bytes.
    fn echo_bytes(self) -> Option<usize> {
        match self {
            Workload::Echo1MiB => Some(1 << 20),
            Workload::Echo16MiB => Some(16 << 20),
            _ => None,
        }
    }

    pub(crate) fn unit(self) -> &'static str {
        match self {
            Workload::Startup | Workload::Echo1MiB | Workload::Echo16MiB => "ms",
            Workload::ApplyRtt => "us",
            Workload::Bytes => "MiB/s",
            Workload::MapPeakMemory | Workload::ImapTimeoutCost | Workload::SharedApply => "x",
            _ => "s",
        }
    }

    /// The goal for procpool in this row (issue 20's last column), procpool's ratios to the
    /// systems the goal names, and whether it was met. `median` gives any
    /// cell of the run (the untuned imap row is judged against the tuned one).
    pub(crate) fn verdict(self, median: &dyn Fn(Workload, System) -> Option<f64>) -> Verdict {
        let cell = |system| median(self, system);
        let ours = cell(System::Procpool);
        let python = cell(System::Python);
        let mut ratios = Vec::new();
        // Within `factor` of `other` (a time: at most; a throughput: at least).
        let mut within = |other: Option<f64>, name: &str, factor: f64| {
            let (a, b) = (ours?, other?);
            ratios.push(format!("{} x {name}", format_ratio(a / b)));
            Some(if self == Workload::Bytes {
                a >= factor * b
            } else {
                a <= factor * b
            })
        };
        let both = |a: Option<bool>, b: Option<bool>| match (a, b) {
            (Some(x), Some(y)) => Some(x && y),
            _ => None,
        };
        let (goal, ok) = match self {
            Workload::MapPeakMemory => ("<= 1.05", ours.map(|ratio| ratio <= 1.05)),
            Workload::ImapTimeoutCost => ("<= 2", ours.map(|ratio| ratio <= 2.0)),
            Workload::SharedApply => ("<= 3 x plain apply", ours.map(|ratio| ratio <= 3.0)),
            Workload::Startup => ("<= 0.05 x python", within(python, "python", 0.05)),
            Workload::ApplyRtt => {
                let vs_python = within(python, "python", 0.04);
                let vs_pipe = within(cell(System::Pipe), "raw_pipe", 1.25);
                (
                    "<= 0.04 x python, <= 1.25 x raw_pipe",
                    both(vs_python, vs_pipe),
                )
            }
            Workload::MapTrivial => ("<= 0.05 x python", within(python, "python", 0.05)),
            Workload::CpuBound => (
                "<= 1.02 x rayon",
                within(cell(System::Rayon), "rayon", 1.02),
            ),
            Workload::Bytes => (">= 8 x python", within(python, "python", 8.0)),
            Workload::ImapUnordered => ("<= 0.1 x python", within(python, "python", 0.1)),
            Workload::ImapUnorderedUntuned => (
                "<= 1.2 x tuned",
                within(
                    median(Workload::ImapUnordered, System::Procpool),
                    "tuned",
                    1.2,
                ),
            ),
            Workload::Echo1MiB => {
                let vs_python = within(python, "python", 0.15);
                // The copy floor, for the record: no goal.
                let _ = within(cell(System::Pipe), "raw_pipe", f64::INFINITY);
                ("<= 0.15 x python", vs_python)
            }
            Workload::Echo16MiB => {
                let vs_python = within(python, "python", 0.12);
                let _ = within(cell(System::Pipe), "raw_pipe", f64::INFINITY);
                ("<= 0.12 x python", vs_python)
            }
        };
        let beats_procspawn = match (ours, cell(System::Procspawn)) {
            (Some(a), Some(b)) if self == Workload::Bytes => Some(a >= b),
            (Some(a), Some(b)) => Some(a <= b),
            _ => Some(true),
        };
        let met = match both(ok, beats_procspawn) {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "?",
        };
        Verdict {
            goal: goal.to_owned(),
            ratios: ratios.join(", "),
            met: met.to_owned(),
        }
    }
}

/// One row's goal, procpool's measured ratios, and whether the goal was met.
pub(crate) struct Verdict {
    pub goal: String,
    pub ratios: String,
    pub met: String,
}

fn format_ratio(ratio: f64) -> String {
    if ratio >= 10.0 {
        format!("{ratio:.0}")
    } else if ratio >= 0.1 {
        format!("{ratio:.2}")
    } else {
        format!("{ratio:.3}")
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
pub(crate) fn spin(n: u64) -> u64 {
    spin_plain(n)
}

#[pool_job]
fn blob_len(blob: Vec<u8>) -> usize {
    blob.len()
}

#[pool_job]
pub(crate) fn echo(blob: Vec<u8>) -> Vec<u8> {
    blob
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
pub(crate) fn spin_iterations() -> u64 {
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

pub(crate) fn machine_description() -> String {
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

/// An echo workload's payload, as `python_pool.py` makes it:
/// `bytes(range(256)) * (size // 256)`.
fn echo_blob(size: usize) -> Vec<u8> {
    (0..size).map(|i| i as u8).collect()
}

/// Echo round trips per measurement (after 3 unmeasured ones), as in
/// `python_pool.py`.
fn echo_rounds(size: usize) -> usize {
    if size > 1 << 20 { 10 } else { 50 }
}

/// Mean milliseconds of `round(blob)` (which must give `blob` back) over
/// [`echo_rounds`], after 3 unmeasured rounds.
fn echo_ms(blob: &[u8], mut round: impl FnMut(Vec<u8>) -> Vec<u8>) -> f64 {
    for _ in 0..3 {
        round(blob.to_vec());
    }
    let rounds = echo_rounds(blob.len());
    let mut total = 0.0;
    let mut last = Vec::new();
    for _ in 0..rounds {
        // The copy is the caller's, as Python's `apply` does not consume
        // its argument either; it is not timed.
        let arg = blob.to_vec();
        let start = Instant::now();
        last = round(arg);
        total += since(start);
    }
    assert!(last == blob, "the echo came back different");
    total * 1e3 / rounds as f64
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

pub(crate) fn run(system: System, workload: Workload) -> Result<Measured, String> {
    match system {
        System::Procpool => Ok(procpool_run(workload, &|| {
            let builder = Pool::builder().processes(2);
            // With the feature `dashboard`, every pool serves one.
            #[cfg(feature = "dashboard")]
            let builder = builder.dashboard("127.0.0.1:0");
            builder.build().expect("pool")
        })),
        // A cluster pool refuses a Shared (descriptors of this host).
        System::Cluster if workload == Workload::SharedApply => na("-"),
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
            Workload::Echo1MiB | Workload::Echo16MiB => {
                let blob = echo_blob(workload.echo_bytes().unwrap_or(0));
                Ok(three(|| pipe_echo_ms(&blob)))
            }
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
        Workload::ImapUnordered | Workload::ImapUnorderedUntuned => three(|| {
            let pool = new_pool();
            pool.map(square, 0..10).expect("map");
            let start = Instant::now();
            let results = if workload == Workload::ImapUnordered {
                pool.chunksize(1000).imap_unordered(square, 0..100_000u64)
            } else {
                pool.imap_unordered(square, 0..100_000u64)
            };
            let sum: u64 = results.map(|r| r.expect("item")).sum();
            let dt = since(start);
            assert_eq!(sum, (0..100_000u64).map(|x| x * x).sum::<u64>());
            dt
        }),
        Workload::Echo1MiB | Workload::Echo16MiB => {
            let blob = echo_blob(workload.echo_bytes().unwrap_or(0));
            three(|| {
                let pool = new_pool();
                echo_ms(&blob, |arg| pool.apply(echo, arg).expect("apply"))
            })
        }
        Workload::ImapTimeoutCost => {
            let limited = Pool::builder()
                .processes(2)
                .task_timeout(Duration::from_secs(60))
                .build()
                .expect("pool");
            let free = new_pool();
            let run = |pool: &Pool| {
                pool.map(square, 0..10).expect("map");
                let start = Instant::now();
                let sum: u64 = pool
                    .imap_unordered(square, 0..200_000u64)
                    .map(|r| r.expect("item"))
                    .sum();
                let dt = since(start);
                assert_eq!(sum, (0..200_000u64).map(|x| x.wrapping_mul(x)).sum::<u64>());
                dt
            };
            // Alternating, so both see the same machine.
            three(|| run(&limited) / run(&free))
        }
        Workload::SharedApply => {
            let items: Vec<u64> = (0..(64u64 << 20) / 8).collect();
            let table = procpool::Shared::from_slice(&items).expect("shared");
            drop(items);
            three(|| {
                let pool = new_pool();
                for i in 0..50 {
                    pool.apply(ident, 1).expect("apply");
                    pool.apply(read_shared, (table.clone(), i)).expect("apply");
                }
                let start = Instant::now();
                for _ in 0..1000 {
                    pool.apply(ident, 1).expect("apply");
                }
                let plain = since(start);
                let len = table.len();
                let start = Instant::now();
                for i in 0..1000 {
                    // Spread over the whole table.
                    let at = i * (len / 1000) + i % 7;
                    let got = pool.apply(read_shared, (table.clone(), at)).expect("apply");
                    assert_eq!(got, at as u64);
                }
                since(start) / plain
            })
        }
    }
}

/// One item of a shared table, read in place by the worker.
#[pool_job]
fn read_shared(table: procpool::Shared<[u64]>, at: usize) -> u64 {
    table[at]
}

// ---- procpool over Redis --------------------------------------------------

pub(crate) mod cluster {
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
    pub(crate) fn url() -> Result<String, String> {
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
    pub(crate) fn finish() {
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
        Workload::Echo1MiB | Workload::Echo16MiB => {
            let blob = echo_blob(workload.echo_bytes().unwrap_or(0));
            three(|| {
                let pool = PsPool::new(2).expect("procspawn pool");
                let dt = echo_ms(&blob, |arg| {
                    pool.spawn(arg, |b: Vec<u8>| b).join().expect("join")
                });
                pool.shutdown();
                dt
            })
        }
        Workload::ImapUnordered | Workload::ImapUnorderedUntuned => {
            return na("no lazy iteration");
        }
        Workload::MapPeakMemory => return na("no map"),
        Workload::ImapTimeoutCost => return na("no per-item time limit"),
        Workload::SharedApply => return na("procpool only"),
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
        Workload::SharedApply => return na("procpool only"),
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
        Workload::Bytes | Workload::MapPeakMemory | Workload::Echo1MiB | Workload::Echo16MiB => {
            return na("nothing crosses a process");
        }
        Workload::ImapTimeoutCost => return na("no time limit"),
        // In-process, there is no chunk size to tune: the same bound for both rows.
        Workload::ImapUnordered | Workload::ImapUnorderedUntuned => {
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
        Workload::ImapUnordered | Workload::ImapUnorderedUntuned => three(|| {
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
pub(crate) fn pong() {
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

/// The child side of the echo floor: reads a message (an 8-byte length,
/// then the bytes) whole, then writes it back, until stdin closes.
pub(crate) fn echo_child() {
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let mut header = [0u8; 8];
    let mut buf = Vec::new();
    while stdin.read_exact(&mut header).is_ok() {
        buf.resize(u64::from_le_bytes(header) as usize, 0);
        if stdin.read_exact(&mut buf).is_err() {
            break;
        }
        let sent = stdout
            .write_all(&header)
            .and_then(|()| stdout.write_all(&buf))
            .and_then(|()| stdout.flush());
        if sent.is_err() {
            break;
        }
    }
}

/// The floor for the echo rows: `blob` to a child process and back through
/// pipes, in milliseconds per round trip. The child reads a whole message
/// before answering, so neither side blocks on a full pipe.
fn pipe_echo_ms(blob: &[u8]) -> f64 {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .arg("--echo")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("echo child");
    let mut to = child.stdin.take().expect("stdin");
    let mut from = child.stdout.take().expect("stdout");
    let dt = echo_ms(blob, |arg| {
        to.write_all(&(arg.len() as u64).to_le_bytes())
            .and_then(|()| to.write_all(&arg))
            .expect("write");
        let mut header = [0u8; 8];
        from.read_exact(&mut header).expect("read");
        let mut back = vec![0u8; u64::from_le_bytes(header) as usize];
        from.read_exact(&mut back).expect("read");
        back
    });
    drop(to);
    let _ = child.wait();
    dt
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
pub(crate) fn python(workloads: &[Workload]) -> HashMap<&'static str, Result<Measured, String>> {
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
