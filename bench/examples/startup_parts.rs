//! Where a pool's start-up time goes (the benchmark's `startup_ms`: two
//! workers, a map of 10, close, join), part by part, medians of many runs.
//!
//! ```sh
//! cargo run --release -p procpool-bench --example startup_parts
//! ```

use std::time::Instant;

use procpool::{Pool, pool_job};

#[pool_job]
fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

fn main() {
    let rounds = 50;
    let mut parts: [Vec<f64>; 4] = Default::default();
    for _ in 0..rounds {
        let t0 = Instant::now();
        let pool = Pool::with_processes(2).expect("pool");
        let t1 = Instant::now();
        pool.map(square, 0..10).expect("map");
        let t2 = Instant::now();
        pool.close();
        pool.join().expect("join");
        let t3 = Instant::now();
        for (part, (a, b)) in parts
            .iter_mut()
            .zip([(t0, t1), (t1, t2), (t2, t3), (t0, t3)])
        {
            part.push((b - a).as_secs_f64() * 1e3);
        }
    }
    for (name, mut times) in ["build", "first map", "close+join", "total"]
        .into_iter()
        .zip(parts)
    {
        times.sort_by(f64::total_cmp);
        println!("{name:>10}: median {:.3} ms", times[times.len() / 2]);
    }
}
