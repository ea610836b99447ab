//! The same `Pool` over Redis: workers on any number of hosts.
//!
//! Start Redis, then workers on each host, then the program:
//!
//! ```sh
//! redis-server --port 6379 &
//! cargo run --release --features cluster --example cluster -- worker redis://127.0.0.1:6379/0      # one per CPU; Ctrl-C stops
//! cargo run --release --features cluster --example cluster -- worker redis://127.0.0.1:6379/0 2    # or 2 processes
//! cargo run --release --features cluster --example cluster -- redis://127.0.0.1:6379/0             # the program
//! ```
//!
//! The program counts the primes below 2 000 000 in 40 ranges and says
//! which workers did the work.

use std::collections::BTreeMap;
use std::process::ExitCode;

use procpool::{Pool, pool_job};

/// The primes in `lo..hi`, and the worker that counted them.
#[pool_job]
fn count_primes(lo: u64, hi: u64) -> (u64, String) {
    let count = (lo..hi).filter(|&n| is_prime(n)).count() as u64;
    (count, procpool::current_process().name().to_owned())
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

const USAGE: &str = "usage: cluster worker <redis-url> [processes]   (serve tasks)\n       \
                     cluster <redis-url>                        (run the program)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["worker", url] => serve(url, procpool::cpu_count()),
        ["worker", url, processes] => match processes.parse() {
            Ok(processes) => serve(url, processes),
            Err(_) => return usage(),
        },
        [url] if !url.starts_with('-') => run(url),
        _ => return usage(),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn serve(url: &str, processes: usize) -> Result<(), procpool::Error> {
    // Not the URL itself: it may hold a password.
    println!("serving with {processes} worker processes; Ctrl-C stops");
    procpool::cluster::run_workers(url, processes)?;
    println!("workers stopped");
    Ok(())
}

fn run(url: &str) -> Result<(), procpool::Error> {
    let pool = Pool::builder().cluster(url).build()?;
    let step = 50_000;
    let ranges = (0..40u64).map(|i| (i * step, (i + 1) * step));
    let counts = pool.chunksize(1).starmap(count_primes, ranges)?;
    let total: u64 = counts.iter().map(|(count, _)| count).sum();
    println!("primes below 2000000: {total}");
    let mut per_worker: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, worker) in &counts {
        *per_worker.entry(worker).or_default() += 1;
    }
    for (worker, ranges) in per_worker {
        println!("{worker}: {ranges} ranges");
    }
    Ok(())
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}
