//! Per-worker state: load something expensive once in each worker process
//! and use it in every task that worker runs (MPIRE's `worker_state`).
//!
//! The pool's initializer runs once in every new worker, replacements
//! included; it stores the state in a `static OnceLock`, which each worker
//! process has its own copy of. Jobs read it from there.
//!
//! Python:
//! ```python
//! model = None
//!
//! def load_model(scale):
//!     global model
//!     model = [i * scale for i in range(1000)]
//!
//! def predict(x):
//!     return model[x % 1000]
//!
//! if __name__ == "__main__":
//!     with Pool(2, initializer=load_model, initargs=(0.5,)) as pool:
//!         print(sum(pool.map(predict, range(100))))
//! ```

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use procpool::{Pool, pool_job};

/// Something expensive to build: loaded once per worker, never per task.
struct Model {
    weights: Vec<f64>,
}

/// Each worker process has its own: the initializer fills it.
static MODEL: OnceLock<Model> = OnceLock::new();
/// How many times this process built the model (to show it is once).
static LOADS: AtomicUsize = AtomicUsize::new(0);

/// The initializer: runs once in every worker, before its first task.
#[pool_job]
fn load_model(scale: f64) {
    MODEL.get_or_init(|| {
        LOADS.fetch_add(1, Ordering::Relaxed);
        Model {
            weights: (0..1000).map(|i| f64::from(i) * scale).collect(),
        }
    });
}

/// Uses the worker's model: returns the prediction, the worker's pid and
/// how many times that worker loaded its model.
#[pool_job]
fn predict(x: u64) -> (f64, u32, usize) {
    let model = MODEL
        .get()
        .expect("the pool's initializer loads the model in every worker");
    (
        model.weights[(x % 1000) as usize],
        std::process::id(),
        LOADS.load(Ordering::Relaxed),
    )
}

fn main() -> Result<(), procpool::Error> {
    let pool = Pool::builder()
        .processes(2)
        .initializer(load_model, 0.5)
        .build()?;
    let results = pool.chunksize(10).map(predict, 0..100)?;
    let total: f64 = results.iter().map(|(value, _, _)| value).sum();
    println!("sum of predictions: {total}");
    let mut loads_by_worker = BTreeMap::new();
    for (_, pid, loads) in &results {
        loads_by_worker.insert(pid, *loads);
    }
    let loads: Vec<usize> = loads_by_worker.into_values().collect();
    println!("{} tasks, model loads per worker: {loads:?}", results.len());
    pool.close();
    pool.join()?;
    Ok(())
}
