//! The guide: how to use procpool, page by page. It holds documentation
//! only, no items.
//!
//! - [`usage`]: jobs, order and chunks, lazy iteration, background and
//!   async calls, options, progress, shutting down, insights, single
//!   processes.
//! - [`what_crosses`]: which types cross the process boundary, exactly as
//!   sent, and what you get for the ones that do not.
//! - [`worker_state`]: load something expensive once in each worker.
//! - [`failures`]: what happens when things fail, the full table.
//! - [`python`]: Python's `multiprocessing` calls and their counterparts.
//! - [`exchange`]: queues, pipes, events and shared memory between processes.
//! - [`how_workers_start`]: the worker template, and what a worker inherits.
//! - [`dashboard`]: a live page of a pool's workers and calls, and
//!   Prometheus `/metrics` (cargo feature `dashboard`).
//!
//! Pools whose workers run on other hosts, through Redis (cargo feature
//! `cluster`), have their guide in the
//! [`cluster` module](https://docs.rs/procpool/latest/procpool/cluster/index.html).
//! The benchmark, its figures and how to run it are in
//! [`bench/README.md`](https://github.com/procpool/procpool/blob/main/bench/README.md).
//!
//! The pages' text lives in `runtime/src/guide/*.md`, and every Rust code
//! block in them is a doctest.

pub mod usage {
    #![doc = include_str!("guide/usage.md")]
}

pub mod what_crosses {
    #![doc = include_str!("guide/what_crosses.md")]
}

pub mod worker_state {
    #![doc = include_str!("guide/worker_state.md")]
}

pub mod failures {
    #![doc = include_str!("guide/failures.md")]
}

pub mod python {
    #![doc = include_str!("guide/python.md")]
}

pub mod exchange {
    #![doc = include_str!("guide/exchange.md")]
}

pub mod how_workers_start {
    #![doc = include_str!("guide/how_workers_start.md")]
}

pub mod dashboard {
    #![doc = include_str!("guide/dashboard.md")]
}
