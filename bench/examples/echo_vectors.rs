//! What a vector of numbers costs to cross: an `apply` that echoes a
//! `Vec<f64>` (1 MiB and 16 MiB), the same inside a struct, and a `map`
//! whose results are vectors, medians of many runs.
//!
//! ```sh
//! cargo run --release -p procpool-bench --example echo_vectors
//! ```

use std::time::Instant;

use procpool::{Pool, pool_job};

#[pool_job]
fn echo(floats: Vec<f64>) -> Vec<f64> {
    floats
}

/// Floats in a struct travel in the tagged format (fields by name).
#[derive(serde::Serialize, serde::Deserialize)]
struct Frame {
    step: u64,
    positions: Vec<f64>,
}

#[pool_job]
fn echo_frame(frame: Frame) -> Frame {
    frame
}

#[pool_job]
fn row(i: u32) -> Vec<f64> {
    (0..4096).map(|j| f64::from(i) + f64::from(j)).collect()
}

fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

fn main() {
    let pool = Pool::with_processes(2).expect("pool");
    for len in [128 << 10, 2 << 20] {
        let floats: Vec<f64> = (0..len).map(|i| i as f64).collect();
        let ms = median_ms(15, || {
            let back = pool.apply(echo, &floats).expect("apply");
            assert_eq!(back.len(), len);
        });
        println!(
            "echo of {:>5} KiB of f64: median {ms:.3} ms",
            (len * 8) >> 10
        );
    }
    let frame = Frame {
        step: 7,
        positions: (0..2 << 20).map(|i| i as f64).collect(),
    };
    let ms = median_ms(15, || {
        let back = pool.apply(echo_frame, &frame).expect("apply");
        assert_eq!((back.step, back.positions.len()), (7, 2 << 20));
    });
    println!("echo of a struct with 16384 KiB of f64: median {ms:.3} ms");
    let ms = median_ms(15, || {
        let rows = pool.map(row, 0..1000).expect("map");
        assert_eq!(rows.len(), 1000);
    });
    println!("map of 1000 rows of 4096 f64: median {ms:.3} ms");
}
