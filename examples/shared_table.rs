//! A large lookup table that every worker reads without its own copy:
//! what Python programs do with `shared_memory` (and a name to unlink),
//! or by loading the table in an initializer in every worker.
//!
//! `Shared::from_slice` writes the table once into sealed shared memory;
//! each task carries only a descriptor, and workers read the table in
//! place, so 8 MiB of table costs the workers page tables, not 8 MiB each.

use procpool::{Pool, Shared, pool_job};

/// The sum of the squares in `table[from..to]`.
#[pool_job]
fn sum_slice(table: Shared<[u64]>, from: usize, to: usize) -> u64 {
    table[from..to].iter().sum()
}

fn main() -> Result<(), procpool::Error> {
    let squares: Vec<u64> = (0..1_000_000u64).map(|i| i * i).collect();
    let table = Shared::from_slice(&squares)?;
    let pool = Pool::with_processes(2)?;
    let parts = pool.starmap(
        sum_slice,
        (0..4).map(|i| (table.clone(), i * 250_000, (i + 1) * 250_000)),
    )?;
    for (i, part) in parts.iter().enumerate() {
        println!("[Main]: part {i}: {part}");
    }
    let total: u64 = parts.iter().sum();
    assert_eq!(total, squares.iter().sum::<u64>());
    println!("[Main]: total {total}");
    Ok(())
}
