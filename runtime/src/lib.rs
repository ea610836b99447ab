//! Python's `multiprocessing.Pool` for Rust.
//!
//! Mark a function with [`#[pool_job]`](pool_job) and a [`Pool`] runs it in
//! worker processes: the current executable started again, connected over
//! [`ipc-channel`](https://docs.rs/ipc-channel). Arguments and results cross
//! the process boundary with serde; you write no serialization code and no
//! set-up line. It works in binaries, examples and tests alike.
//!
//! ```
//! use procpool::{pool_job, Pool};
//!
//! #[pool_job]
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! #[pool_job]
//! fn add(a: i64, b: i64) -> i64 {
//!     a + b
//! }
//!
//! fn main() -> Result<(), procpool::Error> {
//!     let pool = Pool::with_processes(2)?;
//!     assert_eq!(pool.map(square, 0..10)?, vec![0, 1, 4, 9, 16, 25, 36, 49, 64, 81]);
//!     assert_eq!(pool.starmap(add, vec![(1, 2), (3, 4)])?, vec![3, 7]);
//!     assert_eq!(pool.apply(add, (20, 22))?, 42);
//!     assert_eq!(square(3), 9); // still an ordinary function
//!     pool.close();
//!     pool.join()?;
//!     Ok(())
//! }
//! ```
//!
//! A job that panics fails the call with [`Error::Panicked`]; a worker that
//! crashes or is killed fails it with [`Error::WorkerDied`] and is replaced.
//! Nothing hangs.

#![deny(missing_docs)]

// Lets `#[pool_job]`'s `::procpool::...` paths resolve inside this crate's own tests.
extern crate self as procpool;

mod call;
mod codec;
mod error;
mod job;
mod local;
mod pool;
mod process;
mod spawn;
mod transport;
mod wire;
mod worker;

pub use call::AsyncResult;
pub use error::{Error, ExitCause};
pub use job::{Job, JobArgs};
pub use pool::{Pool, PoolBuilder};
pub use spawn::{Process, ProcessBuilder};

/// Registers a function as a job that a [`Pool`] can run in worker processes.
///
/// The function must be a free, non-generic, non-`async` function whose
/// arguments and result are owned and implement serde's `Serialize` and
/// `Deserialize`. It stays callable with its own signature. A one-argument
/// job maps over values of that argument's type; a job with several
/// arguments takes them as a tuple; a job without arguments takes `()`.
///
/// The job is registered as `module::path::function`. Options:
/// - `name = "..."`: register under another name.
/// - `crate = "..."`: the path of the procpool crate, when it is renamed in
///   `Cargo.toml`.
///
/// ```
/// use procpool::pool_job;
///
/// /// Adds two numbers.
/// #[pool_job(name = "math.add")]
/// pub fn add(a: i64, b: i64) -> i64 {
///     a + b
/// }
///
/// assert_eq!(add(2, 3), 5);
/// assert_eq!(add.name(), "math.add");
/// ```
pub use procpool_macros::pool_job;

/// The number of CPUs this process may use: [`std::thread::available_parallelism`],
/// or 1 when that cannot be determined.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism()
        .map(std::num::NonZeroUsize::get)
        .unwrap_or(1)
}

/// The process this code runs in, as Python's `multiprocessing.current_process()` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentProcess {
    name: &'static str,
    pid: u32,
}

impl CurrentProcess {
    /// `"MainProcess"` in the program that started the pool; the worker's
    /// name (`"PoolWorker-3"`) inside a job.
    pub fn name(&self) -> &str {
        self.name
    }

    /// The operating system's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// Describes the process this code runs in.
///
/// ```
/// assert_eq!(procpool::current_process().name(), "MainProcess");
/// assert_eq!(procpool::current_process().pid(), std::process::id());
/// ```
pub fn current_process() -> CurrentProcess {
    CurrentProcess {
        name: worker::process_name().unwrap_or("MainProcess"),
        pid: std::process::id(),
    }
}

/// Items used by the code `#[pool_job]` generates. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::job::{JOBS, JobEntry};
    pub use crate::wire::Failure;
    pub use crate::worker::invoke;
    pub use linkme;

    /// Compile-time check that a job's argument or result type can cross the channel.
    pub const fn assert_transferable<T>()
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
    {
    }
}
