//! Python's `multiprocessing.Pool` for Rust.
//!
//! Mark a function with [`#[pool_job]`](pool_job) and a [`Pool`] runs it in
//! worker processes, forked from a copy of the current executable started
//! once per program (a fork server), each connected to the caller by a
//! private socket pair. Arguments and results cross
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
//! The calls mirror Python's: [`Pool::map`], [`Pool::starmap`],
//! [`Pool::apply`], their `_async` forms returning an [`AsyncResult`]
//! (also a `Future`; dropping one without a callback cancels the call's
//! queued tasks),
//! [`Pool::imap`] and [`Pool::imap_unordered`] (lazy iterators, or async
//! streams with [`Imap::into_stream`]), and [`Process`] for a single job.
//! `map`-like calls take items or references to them:
//! `pool.map(square, &numbers)`.
//!
//! # What types cross
//!
//! A job's arguments and result are serialized with serde to cross the
//! process boundary, so each must be owned (no references or lifetimes),
//! implement `Serialize` and `Deserialize`, and be `Send`: numbers,
//! `String`, `Vec`, maps, tuples, `Option`, `Result<T, E>` with such `T` and
//! `E`, and your own types with `#[derive(Serialize, Deserialize)]`. A type
//! that does not is a compile error on that type in the job's signature.
//! A job's error type must cross too: return `Result<T, String>` (e.g.
//! `.map_err(|e| e.to_string())`) rather than `Box<dyn Error>`. A value
//! arrives as it was sent, or the call fails with
//! [`Error::Serialization`]: never a different value.
//!
//! Values travel in a self-describing format of procpool's own, so all of
//! serde works: `skip_serializing_if`, `default`, `rename`, `flatten`,
//! internally, adjacently tagged and untagged enums, `serde_json::Value`,
//! `i128`, maps with non-string keys, `Option<Option<T>>`, floats bit for
//! bit (NaN payloads, `-0.0`). Plain items (numbers, `bool`, `char`,
//! `String`, `Vec<u8>`, tuples of those) travel in bulk, without a tag per
//! value.
//!
//! - A `Serialize`/`Deserialize` impl that returns an error fails the call
//!   with [`Error::Serialization`], which names the type and keeps the
//!   impl's own message.
//! - One that panics in a worker fails it with [`Error::Panicked`]; the
//!   worker survives, and `retries` does not re-run it.
//! - Values nested deeper than 512 levels are refused with
//!   [`Error::Serialization`] before they are sent or decoded, so decoding
//!   never overflows a thread's stack.
//!
//! Every case, tested, is in [`guide::what_crosses`].
//!
//! # When things fail
//!
//! A job's panic, a worker's death (abort, segfault, `kill -9`, OOM kill),
//! a task past its timeout, a value that cannot cross: each is an [`Err`]
//! for the call ([`Error::Panicked`], [`Error::WorkerDied`],
//! [`Error::TaskTimedOut`], [`Error::Serialization`]), never a hang, and the
//! pool replaces what it lost and goes on. The full table, with what
//! happens next in each case, is [`guide::failures`].
//!
//! Nothing hangs: every wait has a bound or ends when a worker dies, but
//! one: an initializer that never returns blocks `build()` for ever
//! unless [`PoolBuilder::initializer_timeout`] bounds it.
//!
//! # Options
//!
//! [`Pool::builder`] sets them; each is a method of [`PoolBuilder`]:
//! `processes`, `initializer`, `initializer_timeout`, `max_tasks_per_child`, `task_timeout`,
//! `retries`, `max_memory_per_child`, `spawn_timeout`, and with cargo
//! features, `progress`, `cluster` and `dashboard` (a live page and
//! Prometheus `/metrics` for the pool: [the guide's page](guide::dashboard)).
//!
//! ```
//! use std::sync::OnceLock;
//! use std::time::Duration;
//!
//! use procpool::{pool_job, Error, Pool};
//!
//! /// Per-worker state, built once in each worker by the initializer.
//! static TABLE: OnceLock<Vec<u64>> = OnceLock::new();
//!
//! #[pool_job]
//! fn load_table(size: u64) {
//!     TABLE.get_or_init(|| (0..size).map(|i| i * i).collect());
//! }
//!
//! #[pool_job]
//! fn lookup(i: usize) -> u64 {
//!     TABLE.get().expect("loaded by the initializer")[i]
//! }
//!
//! #[pool_job]
//! fn sleep_ms(ms: u64) -> u64 {
//!     std::thread::sleep(Duration::from_millis(ms));
//!     ms
//! }
//!
//! #[pool_job]
//! fn crash(_: u8) -> u8 {
//!     std::process::abort()
//! }
//!
//! # fn main() -> Result<(), Error> {
//! let pool = Pool::builder()
//!     .processes(2)
//!     .initializer(load_table, 100) // runs in every new worker
//!     .task_timeout(Duration::from_secs(1)) // kills an item that runs longer
//!     .retries(1) // re-runs a task whose worker died, once
//!     .build()?;
//! assert_eq!(pool.map(lookup, [3, 9])?, vec![9, 81]);
//!
//! match pool.apply(sleep_ms, 5_000) {
//!     Err(Error::TaskTimedOut { job, timeout, .. }) => {
//!         assert!(job.ends_with("sleep_ms"));
//!         assert_eq!(timeout, Duration::from_secs(1));
//!     }
//!     other => panic!("expected a timeout, got {other:?}"),
//! }
//! match pool.apply(crash, 1) {
//!     // Run once, retried once: 2 attempts, each on a fresh worker.
//!     Err(Error::WorkerDied { attempts, cause, .. }) => {
//!         assert_eq!(attempts, 2);
//!         println!("the worker {cause}");
//!     }
//!     other => panic!("expected a dead worker, got {other:?}"),
//! }
//! // The pool replaced its workers and goes on.
//! assert_eq!(pool.apply(lookup, 2)?, 4);
//! # Ok(())
//! # }
//! ```
//!
//! # Scaling out
//!
//! With the cargo feature `cluster`, the same `Pool` sends its tasks
//! through Redis to workers on any number of hosts:
//! `Pool::builder().cluster("redis://host/0").build()`, and workers that
//! call `procpool::cluster::run_workers(url, n)` (see the `cluster` module).
//!
//! # Guide
//!
//! The [`guide`] module holds the rest of the documentation, page by page:
//! [usage](guide::usage), [what crosses the process
//! boundary](guide::what_crosses), [worker state](guide::worker_state),
//! [when things fail](guide::failures), [the Python
//! correspondence](guide::python) and [how workers
//! start](guide::how_workers_start). The `cluster` module's page is the
//! guide to scaling out.

// Module map, for contributors. Edges go one way (a module imports only
// those listed after its arrow; none imports one that imports it back):
//
//   pool      the public Pool: cuts calls into tasks -> call, imap, local, cluster,
//                                                       dashboard, stats
//   dashboard the live page, its JSON and /metrics (feature `dashboard`):
//             an HTTP server over snapshots the pool hands it -> stats, error
//   progress  a call's bar and its line on a dashboard's board -> stats
//   call      one call's results and AsyncResult     -> backend, codec
//   imap      the Imap iterator                      -> call, backend
//   backend   the Backend/Sink seam between the pool and where tasks run
//   stats     PoolStats: counters a backend keeps, the calls in flight
//             (imports nothing of the crate)
//   local/    the local backend                      -> backend, worker, reply_log, sys,
//                                                       codec, exchange
//     mod       the task queue and the backend
//     driver    one per worker: its state machine; a waiting caller may
//               drive an idle worker from its own thread
//     launch    start a worker, handshake, wait on its channel and pidfd,
//               its shared regions, reap
//     template  the worker template (fork server): one process per program
//               that forks new workers; its loop runs in that process
//     channel   the socket pair: one datagram per message, descriptors only
//               where a message expects them
//     messages  what parent and worker say over the channel, Payload
//     worker_loop the worker's loop (runs in the worker process)
//   cluster/  the Redis backend and its workers      -> backend, worker, failure, sys,
//                                                       exchange (its refusal of handles),
//                                                       dashboard (the fleet's page)
//   process   the public Process (one job, one process) -> local, codec
//   bootstrap the constructor that diverts a worker before main -> local, cluster
//   worker    inside a worker process (both loops): becoming one, running
//             a chunk of a job             -> codec, job, reply_log, failure
//   reply_log a chunk's outcomes streamed into a worker's reply region per
//             item, read back whole or after a crash -> codec, sys, failure
//   failure   why an item failed in a worker, and the Error it becomes -> error
//   exchange/ Queue, Pipe, Event, Shared: handles made of descriptors that
//             travel beside a task's bytes -> codec, backend, worker, sys, error
//   codec     the encoding of items and outcomes      -> failure, backend
//     attach    handles' descriptors collected while encoding, taken back
//               by index while decoding
//   job       the registry #[pool_job] fills, Job handles, typed item
//             encoders and result decoders -> codec, reply_log, failure
//   sys/      the OS layer (rustix; libc only where rustix has no call;
//             imports nothing of the crate)
//     mod       the command that starts a worker and its variables,
//               tokens, error texts that say what to do
//     process   fork as a sibling, watch/signal/reap a child by its pidfd,
//               signal names, parent-death signal, the fork guard, the
//               spawner thread, what a child inherits
//     region    the memfd regions a worker and its parent share, and
//               their access and memory-ordering contract
//     fd        passing a descriptor beside a datagram, fds above stdio
//     shm       sealed memfds, shared pages of atomics and futexes,
//               datagrams with descriptors, process liveness (exchange)
//   error     Error, ExitCause, IoCause, ClusterCause -> sys (error texts)
//   deadline  the one place a user's duration becomes an Instant:
//             Duration::MAX is no deadline (imports nothing of the crate)

#[cfg(not(target_os = "linux"))]
compile_error!(
    "procpool supports Linux only: it relies on pidfds, memfds, SOCK_SEQPACKET socket \
     pairs, /proc/self/exe and the parent-death signal (see the Platform section of the README)"
);

// Lets `#[pool_job]`'s `::procpool::...` paths resolve inside this crate's own tests.
extern crate self as procpool;

mod backend;
mod bootstrap;
mod call;
#[cfg(feature = "cluster")]
pub mod cluster;
mod codec;
#[cfg(feature = "dashboard")]
mod dashboard;
mod deadline;
mod error;
mod exchange;
mod failure;
#[cfg(test)]
mod fake_backend;
pub mod guide;
mod imap;
mod job;
#[cfg(test)]
mod layout_tests;
mod local;
mod pool;
mod process;
mod progress;
mod reply_log;
mod stats;
mod sys;
#[cfg(test)]
mod test_alloc;
mod worker;

/// Not public API, and not compiled in a normal build: the codec's
/// decoders fed arbitrary bytes, for procpool's fuzz targets (`fuzz/` in
/// the repository, built by cargo-fuzz with `--cfg fuzzing`).
#[cfg(fuzzing)]
#[doc(hidden)]
pub use codec::fuzz as __fuzz;

pub use call::AsyncResult;
pub use error::{ClusterCause, Error, ExitCause, IoCause};
pub use exchange::{Connection, Event, Pipe, Plain, Queue, Shared};
pub use imap::{Imap, ImapStream};
pub use job::{IntoJob, ItemFor, Job, JobArgs};
pub use pool::{Pool, PoolBuilder};
pub use process::{Process, ProcessBuilder};
pub use progress::ShowProgress;
pub use stats::{PoolStats, WorkerStats};

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
///
/// # How a job's types are checked
///
/// Each argument and result type `T` of a job is checked once, on the user's
/// own span, by
/// `require::<T, _>((&&&&&Probe::<T>::new()).verdict())`. The method call
/// picks the first of these impls whose bounds hold (autoref specialization:
/// each level is one reference further from the receiver):
///
/// | level | bounds on `T`                                   | verdict         |
/// |-------|-------------------------------------------------|-----------------|
/// | 4     | `Serialize + DeserializeOwned + Send + 'static` | `Transferable`  |
/// | 3     | `Serialize + DeserializeOwned`                  | `NotSend`       |
/// | 2     | `Serialize`                                     | `NoDeserialize` |
/// | 1     | `DeserializeOwned`                              | `NoSerialize`   |
/// | 0     | none                                            | `NoSerde`       |
///
/// `require` then asks for four marker traits, each missing for exactly one
/// bad verdict and carrying that case's `#[diagnostic::on_unimplemented]`
/// message. So a bad type gets exactly one error, which names the type and
/// says what to add, instead of one error per unsatisfied serde bound
/// pointing into generated code.
///
/// The worker-side entry point (`Run`), the item encoder (`EncodeItem`)
/// and the result decoders (`DecodeResult`) go through the same kind of
/// probe: when a type is not transferable they resolve to stubs
/// (`NeverRun`, `NeverEncode`, `NeverDecode`) instead of failing a second
/// time inside the expansion. They are typed function pointers
/// ([`ItemEncoder`](crate::job::ItemEncoder) and the decoders), so a job's
/// encoder can only ever be called with its own item type.
#[doc(hidden)]
#[forbid(unsafe_code)]
pub mod __private {
    use std::marker::PhantomData;

    use serde::Serialize;
    use serde::de::DeserializeOwned;

    // Everything generated code names or meets in a signature, re-exported
    // under this hidden module only (as thiserror does): the items live in
    // private modules, so this is the one path to them, and none of it is
    // in the public docs.
    #[doc(hidden)]
    pub use crate::codec::{ChunkWriter, Problem};
    #[doc(hidden)]
    pub use crate::failure::Failure;
    #[doc(hidden)]
    pub use crate::job::{
        InvokeFn, ItemEncoder, JOBS, JobEntry, OutcomesDecoder, ValuesDecoder, new_job,
    };
    #[doc(hidden)]
    pub use crate::reply_log::Output;
    #[doc(hidden)]
    pub use linkme;

    /// The receiver of the checks' method calls; see the module docs.
    pub struct Probe<T>(PhantomData<fn() -> T>);

    // No `Default`: only generated code makes probes, through `new`.
    #[allow(clippy::new_without_default)]
    impl<T> Probe<T> {
        /// The probe for `T`.
        pub const fn new() -> Self {
            Probe(PhantomData)
        }
    }

    /// Verdict: `T` can be a job's argument or result.
    pub struct Transferable;
    /// Verdict: `T` is `Serialize + DeserializeOwned` but not `Send`.
    pub struct NotSend;
    /// Verdict: `T` is `Serialize` but not `DeserializeOwned`.
    pub struct NoDeserialize;
    /// Verdict: `T` is `DeserializeOwned` but not `Serialize`.
    pub struct NoSerialize;
    /// Verdict: `T` implements neither serde trait.
    pub struct NoSerde;

    /// Level 4 of the probe.
    pub trait ViaTransferable {
        /// The verdict on `T`.
        fn verdict(&self) -> Transferable {
            Transferable
        }
    }
    impl<T: Serialize + DeserializeOwned + Send + 'static> ViaTransferable for &&&&Probe<T> {}

    /// Level 3 of the probe.
    pub trait ViaNotSend {
        /// The verdict on `T`.
        fn verdict(&self) -> NotSend {
            NotSend
        }
    }
    impl<T: Serialize + DeserializeOwned> ViaNotSend for &&&Probe<T> {}

    /// Level 2 of the probe.
    pub trait ViaNoDeserialize {
        /// The verdict on `T`.
        fn verdict(&self) -> NoDeserialize {
            NoDeserialize
        }
    }
    impl<T: Serialize> ViaNoDeserialize for &&Probe<T> {}

    /// Level 1 of the probe.
    pub trait ViaNoSerialize {
        /// The verdict on `T`.
        fn verdict(&self) -> NoSerialize {
            NoSerialize
        }
    }
    impl<T: DeserializeOwned> ViaNoSerialize for &Probe<T> {}

    /// Level 0 of the probe.
    pub trait ViaNoSerde {
        /// The verdict on `T`.
        fn verdict(&self) -> NoSerde {
            NoSerde
        }
    }
    impl<T> ViaNoSerde for Probe<T> {}

    /// Missing only for the verdict [`NoSerde`].
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be sent to a worker process: it does not implement serde's `Serialize` and `Deserialize`",
        label = "the arguments and result of a #[pool_job] function must implement `Serialize` and `Deserialize`",
        note = "job arguments and results are serialized to cross the process boundary",
        note = "add `#[derive(serde::Serialize, serde::Deserialize)]` to `{Self}`, or use a type that implements both; for a type from another crate, enable its `serde` feature or convert it to a type of your own"
    )]
    pub trait ImplementsSerde<Verdict> {}

    /// Missing only for the verdict [`NoSerialize`].
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be sent to a worker process: it implements serde's `Deserialize` but not `Serialize`",
        label = "the arguments and result of a #[pool_job] function must implement `Serialize` and `Deserialize`",
        note = "job arguments and results are serialized to cross the process boundary",
        note = "add `#[derive(serde::Serialize)]` to `{Self}`, or use a type that implements both"
    )]
    pub trait ImplementsSerialize<Verdict> {}

    /// Missing only for the verdict [`NoDeserialize`].
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be sent to a worker process: it implements serde's `Serialize` but not `Deserialize`",
        label = "the arguments and result of a #[pool_job] function must implement `Serialize` and `Deserialize`",
        note = "job arguments and results are deserialized on the other side of the process boundary, so they must own their data (`DeserializeOwned`)",
        note = "add `#[derive(serde::Deserialize)]` to `{Self}`, or use an owned type that implements both"
    )]
    pub trait ImplementsDeserialize<Verdict> {}

    /// Missing only for the verdict [`NotSend`].
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be sent to a worker process: it is not `Send`",
        label = "the arguments and result of a #[pool_job] function must be `Send`",
        note = "the pool encodes and decodes job arguments and results on its own threads",
        note = "use a `Send` type instead, e.g. `Arc` or a plain owned value instead of `Rc`"
    )]
    pub trait IsSend<Verdict> {}

    macro_rules! verdicts {
        ($($verdict:ident: $($trait:ident)*;)*) => {$($(
            #[diagnostic::do_not_recommend]
            impl<T> $trait<$verdict> for T {}
        )*)*};
    }

    verdicts! {
        Transferable: ImplementsSerde ImplementsSerialize ImplementsDeserialize IsSend;
        NotSend: ImplementsSerde ImplementsSerialize ImplementsDeserialize;
        NoDeserialize: ImplementsSerde ImplementsSerialize IsSend;
        NoSerialize: ImplementsSerde ImplementsDeserialize IsSend;
        NoSerde: ImplementsSerialize ImplementsDeserialize IsSend;
    }

    /// Fails to compile, with the verdict's message, unless `verdict` is [`Transferable`].
    pub fn require<T, V>(verdict: V)
    where
        T: ImplementsSerde<V> + ImplementsSerialize<V> + ImplementsDeserialize<V> + IsSend<V>,
    {
        let _ = verdict;
    }

    /// Missing for every verdict but [`Transferable`]: the error type of a
    /// job's `Result` cannot cross.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a job's error type: a job's `Result` crosses the process boundary whole, so its error type must implement serde's `Serialize` and `Deserialize` and be `Send`",
        label = "this error type cannot be sent back from a worker process",
        note = "return the error as text: `Result<T, String>`, with `.map_err(|e| e.to_string())` (or `format!(\"{{e:#}}\")` to keep its causes), or use an error type of your own that derives `Serialize` and `Deserialize`",
        note = "a panic inside the job also reaches the caller, as `Error::Panicked` with its message"
    )]
    pub trait CrossesAsError<Verdict> {}

    /// Never a probe's verdict. Its impl of [`CrossesAsError`] keeps the
    /// verdict of `require_error` inferred from its argument, so a wrong one
    /// is reported with that trait's message, not as mismatched types.
    pub enum Unreachable {}

    #[diagnostic::do_not_recommend]
    impl<T> CrossesAsError<Transferable> for T {}
    #[diagnostic::do_not_recommend]
    impl<T> CrossesAsError<Unreachable> for T {}

    /// Fails to compile, with advice for error types, unless `verdict` is
    /// [`Transferable`].
    pub fn require_error<T, V>(verdict: V)
    where
        T: CrossesAsError<V>,
    {
        let _ = verdict;
    }

    /// What [`JobEntry::invoke`] returns.
    pub type InvokeOutput = <crate::job::InvokeFn as Returns>::Output;

    /// Names the return type of a function pointer.
    pub trait Returns {
        /// The return type.
        type Output;
    }

    impl<O> Returns for fn(usize, &[u8], &mut crate::reply_log::Output<'_>) -> O {
        type Output = O;
    }

    /// The worker-side entry point of a job whose item type `T` and result
    /// type `R` are transferable: decodes, runs and encodes one chunk.
    pub trait Run<T, R> {
        /// Runs `f` on the `count` items encoded in `input`.
        fn run<F: Fn(T) -> R>(
            &self,
            count: usize,
            input: &[u8],
            output: &mut crate::reply_log::Output<'_>,
            f: F,
        ) -> InvokeOutput;
    }

    impl<T: DeserializeOwned + 'static, R: Serialize + 'static> Run<T, R> for &Probe<(T, R)> {
        fn run<F: Fn(T) -> R>(
            &self,
            count: usize,
            input: &[u8],
            output: &mut crate::reply_log::Output<'_>,
            f: F,
        ) -> InvokeOutput {
            crate::worker::invoke(count, input, output, f)
        }
    }

    /// The item encoder of a job whose item type `T` is serializable.
    pub trait EncodeItem<T> {
        /// Appends `item` to `chunk` (see [`ItemEncoder`]).
        fn encode(&self, item: &T, chunk: &mut ChunkWriter) -> Result<(), Problem>;
    }

    impl<T: Serialize + 'static> EncodeItem<T> for &Probe<T> {
        #[inline(always)]
        fn encode(&self, item: &T, chunk: &mut ChunkWriter) -> Result<(), Problem> {
            chunk.push(item)
        }
    }

    /// The result decoders of a job whose result type `R` is deserializable.
    pub trait DecodeResult<R> {
        /// Appends a reply's values to `out` (see [`ValuesDecoder`]).
        fn decode_values(
            &self,
            job: &str,
            first: usize,
            count: usize,
            bytes: &[u8],
            out: &mut Vec<R>,
        ) -> Result<(), crate::Error>;

        /// Appends each item's outcome to `out` (see [`OutcomesDecoder`]).
        fn decode_outcomes(
            &self,
            job: &str,
            first: usize,
            count: usize,
            bytes: &[u8],
            out: &mut Vec<Result<R, crate::Error>>,
        ) -> Result<(), crate::Error>;
    }

    impl<R: DeserializeOwned + 'static> DecodeResult<R> for &Probe<R> {
        fn decode_values(
            &self,
            job: &str,
            first: usize,
            count: usize,
            bytes: &[u8],
            out: &mut Vec<R>,
        ) -> Result<(), crate::Error> {
            crate::call::decode_values_of(job, first, count, bytes, out)
        }

        fn decode_outcomes(
            &self,
            job: &str,
            first: usize,
            count: usize,
            bytes: &[u8],
            out: &mut Vec<Result<R, crate::Error>>,
        ) -> Result<(), crate::Error> {
            crate::call::decode_outcomes_of(job, first, count, bytes, out)
        }
    }

    /// The decoders chosen when `R` cannot be deserialized. Such a job has
    /// already failed to compile with a clear message, so they never run.
    pub trait NeverDecode<R> {
        /// Never called: the crate does not compile.
        fn decode_values(
            &self,
            _: &str,
            _: usize,
            _: usize,
            _: &[u8],
            _: &mut Vec<R>,
        ) -> Result<(), crate::Error> {
            Err(never_decoded())
        }

        /// Never called: the crate does not compile.
        fn decode_outcomes(
            &self,
            _: &str,
            _: usize,
            _: usize,
            _: &[u8],
            _: &mut Vec<Result<R, crate::Error>>,
        ) -> Result<(), crate::Error> {
            Err(never_decoded())
        }
    }

    impl<R> NeverDecode<R> for Probe<R> {}

    fn never_decoded() -> crate::Error {
        crate::Error::Misuse(
            "a #[pool_job] whose result cannot be deserialized does not compile".into(),
        )
    }

    /// The encoder chosen when `T` is not serializable. Such a job has
    /// already failed to compile with a clear message, so this never runs.
    pub trait NeverEncode<T> {
        /// Never called: the crate does not compile.
        fn encode(&self, _: &T, _: &mut ChunkWriter) -> Result<(), Problem> {
            Err(Problem::never_encoded())
        }
    }

    impl<T> NeverEncode<T> for Probe<T> {}

    /// The entry point chosen when a type is not transferable. Such a job has
    /// already failed to compile with a clear message, so this never runs.
    pub trait NeverRun<T, R> {
        /// Never called: the crate does not compile.
        fn run<F: Fn(T) -> R>(
            &self,
            count: usize,
            input: &[u8],
            output: &mut crate::reply_log::Output<'_>,
            f: F,
        ) -> InvokeOutput;
    }

    impl<T, R> NeverRun<T, R> for Probe<(T, R)> {
        fn run<F: Fn(T) -> R>(
            &self,
            _: usize,
            _: &[u8],
            _: &mut crate::reply_log::Output<'_>,
            _: F,
        ) -> InvokeOutput {
            unreachable!("a #[pool_job] with a non-transferable type does not compile")
        }
    }
}
