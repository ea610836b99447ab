//! Steady-state loop for `perf record`: the benchmark's 10⁶-item map and
//! its 10⁵-item `imap_unordered` (`imap`: `chunksize(1000)`; `untuned`:
//! adaptive chunks), many times on one pool, so a profile
//! shows the per-item path rather than pool start-up or calibration.
//!
//! ```sh
//! cargo build --release -p procpool-bench --example profile_map
//! perf record -F 20000 -g target/release/examples/profile_map map 30
//! ```
//!
//! With `PROFILE_MAP_EACH` set, each round's time is printed too (the first
//! rounds of a fresh process pay for pages its later rounds reuse).

use std::time::Instant;

use procpool::{Pool, pool_job};

#[pool_job]
fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args.first().map_or("map", String::as_str);
    let rounds: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(30);
    // `fresh-map` / `fresh-imap`: a new pool each round, as the benchmark
    // does, so first-use costs (pages of fresh regions) are in the profile.
    let fresh = what.starts_with("fresh-");
    let what = what.trim_start_matches("fresh-");
    let mut pool = Pool::with_processes(2).expect("pool");
    pool.map(square, 0..100).expect("map");
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        if fresh {
            pool = Pool::with_processes(2).expect("pool");
            pool.map(square, 0..100).expect("map");
        }
        let start = Instant::now();
        match what {
            "untuned" => {
                let sum: u64 = pool
                    .imap_unordered(square, 0..100_000u64)
                    .map(|r| r.expect("item"))
                    .sum();
                assert_eq!(sum, (0..100_000u64).map(|x| x * x).sum::<u64>());
            }
            "imap" => {
                let sum: u64 = pool
                    .chunksize(1000)
                    .imap_unordered(square, 0..100_000u64)
                    .map(|r| r.expect("item"))
                    .sum();
                assert_eq!(sum, (0..100_000u64).map(|x| x * x).sum::<u64>());
            }
            _ => {
                let r = pool.map(square, 0..1_000_000u64).expect("map");
                assert_eq!(r[999_999], 999_999 * 999_999);
            }
        }
        times.push(start.elapsed().as_secs_f64());
        if std::env::var_os("PROFILE_MAP_EACH").is_some() {
            eprintln!(
                "round {}: {:.2} ms",
                times.len(),
                start.elapsed().as_secs_f64() * 1e3
            );
        }
    }
    times.sort_by(f64::total_cmp);
    let items = if what == "map" { 1e6 } else { 1e5 };
    println!(
        "{what}: median {:.2} ms, {:.1} ns/item over {rounds} rounds",
        times[rounds / 2] * 1e3,
        times[rounds / 2] * 1e9 / items
    );
}
