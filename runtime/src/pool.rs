//! The pool: cuts calls into chunks, hands them to a backend, collects results.

// Nothing here touches the OS or shared memory, so nothing here needs
// `unsafe`: types are checked by the compiler, not by contracts. (`deny`,
// not `forbid`: the test jobs below are registered by linkme, whose entry
// is a `link_section` static, which the lint counts as unsafe.)
#![deny(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use crate::Error;
use crate::backend::{Backend, Task};
use crate::call::{All, AsyncResult, Call, Finish, One};
use crate::codec::ChunkWriter;
use crate::imap::{Chunking, Imap};
use crate::job::{
    Decode, Encode, IntoJob, ItemFor, JobArgs, encode_arg_tuples, encode_items, encode_one,
};
use crate::local::launch::Initializer;
use crate::local::{LocalBackend, LocalConfig};
use crate::progress::Progress;

/// A pool of worker processes, like Python's `multiprocessing.Pool`.
///
/// Jobs are functions marked [`#[pool_job]`](crate::pool_job). Results come
/// back in input order. The pool is `Send + Sync`: share it between threads
/// (by reference or in an `Arc`) and submit from all of them at once.
///
/// ```
/// use procpool::{pool_job, Pool};
///
/// #[pool_job]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// # fn main() -> Result<(), procpool::Error> {
/// let pool = Pool::with_processes(2)?;
/// assert_eq!(pool.map(square, 0..5)?, vec![0, 1, 4, 9, 16]);
/// pool.close();
/// pool.join()?;
/// # Ok(())
/// # }
/// ```
///
/// Dropping a pool stops its workers at once (like Python's `terminate`)
/// and reaps them; call [`close`](Pool::close) and [`join`](Pool::join)
/// first to let queued work finish.
pub struct Pool {
    backend: Box<dyn Backend>,
    progress: bool,
    /// Set, it keeps an untuned `imap` at one item per task: a timeout
    /// fails its whole task, and then it fails only the item that hung.
    task_timeout: Option<Duration>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.backend.processes())
            .finish()
    }
}

/// How long a new worker may take to start and connect, unless set.
const DEFAULT_SPAWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Configures a [`Pool`] before starting it. Created by [`Pool::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct PoolBuilder {
    processes: Option<usize>,
    spawn_timeout: Duration,
    initializer: Option<Result<Initializer, Error>>,
    initializer_timeout: Option<Duration>,
    max_tasks_per_child: Option<usize>,
    task_timeout: Option<Duration>,
    retries: usize,
    max_memory_per_child: Option<u64>,
    progress: bool,
    #[cfg(feature = "cluster")]
    cluster: Option<String>,
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder {
            processes: None,
            spawn_timeout: DEFAULT_SPAWN_TIMEOUT,
            initializer: None,
            initializer_timeout: None,
            max_tasks_per_child: None,
            task_timeout: None,
            retries: 0,
            max_memory_per_child: None,
            progress: false,
            #[cfg(feature = "cluster")]
            cluster: None,
        }
    }
}

impl PoolBuilder {
    /// Number of worker processes. Defaults to [`std::thread::available_parallelism`].
    pub fn processes(mut self, processes: usize) -> Self {
        self.processes = Some(processes);
        self
    }

    /// How long a new worker may take to start and connect before the start
    /// fails with [`Error::Spawn`]. Defaults to 10 seconds;
    /// `Duration::MAX` waits without a limit.
    pub fn spawn_timeout(mut self, timeout: Duration) -> Self {
        self.spawn_timeout = timeout;
        self
    }

    /// Runs `job(arg)` once in every worker when it starts, replacement
    /// workers included (Python's `initializer` / `initargs`).
    ///
    /// If it panics, [`build`](PoolBuilder::build) fails with
    /// [`Error::InitializerFailed`] instead of restarting workers forever as
    /// Python does. Only connecting is bounded by the
    /// [`spawn_timeout`](PoolBuilder::spawn_timeout); the initializer itself
    /// may take as long as it needs, unless
    /// [`initializer_timeout`](PoolBuilder::initializer_timeout) bounds it.
    /// Without that, an initializer that never returns blocks `build()`
    /// for ever: the one wait of a pool with no bound.
    pub fn initializer<J, A, R>(mut self, job: J, arg: A::Item) -> Self
    where
        J: IntoJob<Args = A, Output = R>,
        A: JobArgs,
    {
        let encoded = encode_one(&job, &arg).map_err(|problem| {
            crate::codec::error_for(
                job.name(),
                "serialize the initializer's argument".to_owned(),
                problem,
            )
        });
        self.initializer = Some(encoded.map(|arg| Initializer {
            job: job.name(),
            arg,
            timeout: None,
        }));
        self
    }

    /// How long the [`initializer`](PoolBuilder::initializer) may run in
    /// each new worker, replacements included. Past it the worker is
    /// killed and the start fails with [`Error::InitializerFailed`]
    /// saying so: `build()` returns it (stopping the workers that did
    /// start), and for a replacement started after a crash, the task it
    /// was started for fails with it (the next task tries a new worker;
    /// nothing restarts without end). Without it, the initializer may take
    /// as long as it needs. Has no effect without an initializer; zero is
    /// an [`Error::Config`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use procpool::{pool_job, Error, Pool};
    ///
    /// #[pool_job]
    /// fn connect(server: String) {
    ///     // Stands for a connection attempt that never returns.
    ///     let _ = server;
    ///     loop {
    ///         std::thread::sleep(Duration::from_secs(1));
    ///     }
    /// }
    ///
    /// let built = Pool::builder()
    ///     .processes(1)
    ///     .initializer(connect, "db.internal:5432".to_string())
    ///     .initializer_timeout(Duration::from_millis(200))
    ///     .build();
    /// match built {
    ///     Err(Error::InitializerFailed { message, .. }) => {
    ///         assert!(message.contains("ran longer than the initializer_timeout of 200ms"));
    ///     }
    ///     other => panic!("expected InitializerFailed, got {other:?}"),
    /// }
    /// ```
    pub fn initializer_timeout(mut self, timeout: Duration) -> Self {
        self.initializer_timeout = Some(timeout);
        self
    }

    /// Replaces a worker after it has run `n` tasks (Python's
    /// `maxtasksperchild`). A chunk of a `map` counts as one task.
    pub fn max_tasks_per_child(mut self, n: usize) -> Self {
        self.max_tasks_per_child = Some(n);
        self
    }

    /// Kills a worker whose task runs longer than `timeout` and fails that
    /// task with [`Error::TaskTimedOut`]; the pool starts a replacement.
    /// The limit applies to a whole chunk: use small chunks with it. With
    /// a cluster pool, the worker that runs it enforces it, and exits to
    /// be replaced. `Duration::MAX` (or any limit too far away to reach)
    /// is no limit.
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// Re-runs a task whose worker died (crash, `kill -9`, OOM kill) on a
    /// fresh worker, up to `n` times, before the call fails with
    /// [`Error::WorkerDied`]. Tasks are then run *at least once*: a task
    /// that had side effects before its worker died repeats them. Panics
    /// and timeouts are not retried. Defaults to 0.
    pub fn retries(mut self, n: usize) -> Self {
        self.retries = n;
        self
    }

    /// Replaces a worker whose resident memory is above `bytes` after a
    /// task (billiard's and loky's `max_memory_per_child`), before a slow
    /// leak turns into an out-of-memory kill.
    pub fn max_memory_per_child(mut self, bytes: u64) -> Self {
        self.max_memory_per_child = Some(bytes);
        self
    }

    /// Shows a progress bar on stderr for each `map`-like call and `imap`:
    /// items done out of the total, rate and ETA. Drawn only when stderr is a
    /// terminal. Needs the cargo feature `progress`.
    #[cfg(feature = "progress")]
    pub fn progress(mut self, show: bool) -> Self {
        self.progress = show;
        self
    }

    /// Sends this pool's tasks to cluster workers through Redis instead of
    /// starting worker processes here. Needs the cargo feature `cluster`;
    /// see [`crate::cluster`] for how it works and how to start workers.
    ///
    /// `url` is a Redis URL (`redis://[user:password@]host[:port][/db]`, or
    /// `rediss://` for TLS) with optional query parameters, read by callers
    /// and workers alike, so both sides can share one string:
    ///
    /// | parameter | default | meaning |
    /// |---|---|---|
    /// | `queue` | `default` | the queue's name: callers and workers of one queue share it |
    /// | `visibility` | 30 | seconds a worker's heartbeat may be silent (plus one) before its tasks go to another worker (at least 0.3) |
    /// | `max_deliveries` | 3 | how many times a task is handed out before it fails with [`Error::TaskLost`] (workers) |
    /// | `max_payload` | 67108864 | largest task or result in bytes: [`Error::PayloadTooLarge`] |
    /// | `window` | 33554432 | bytes of a caller's tasks that may wait in Redis at once; the rest waits in the caller |
    /// | `presence` | 10 | seconds a caller's presence outlives its last refresh: then workers start none of its tasks; at most `ttl` |
    /// | `ttl` | 120 | seconds a caller's results and task streams outlive its last refresh; more than `reconnect` |
    /// | `reconnect` | 60 | seconds a caller keeps trying to reach Redis before its pending calls fail |
    /// | `tls_ca`, `tls_cert`, `tls_key` | system roots | PEM files: the CA to trust, a client certificate and its key (`rediss://` only) |
    /// | `unserved` | 30 | seconds a call waits while workers are alive but none can run its job, before [`Error::Registry`] |
    /// | `key` | none | a shared secret (16 characters or more; or the environment variable `PROCPOOL_KEY`) that signs every task and result |
    ///
    /// The options that shape local worker processes
    /// ([`initializer`](PoolBuilder::initializer),
    /// [`initializer_timeout`](PoolBuilder::initializer_timeout),
    /// [`max_tasks_per_child`](PoolBuilder::max_tasks_per_child),
    /// [`max_memory_per_child`](PoolBuilder::max_memory_per_child),
    /// [`retries`](PoolBuilder::retries),
    /// [`spawn_timeout`](PoolBuilder::spawn_timeout)) do not apply:
    /// combined with `cluster`, `build` fails with [`Error::Config`].
    /// [`processes`](PoolBuilder::processes) becomes the number of workers
    /// to size chunks for; by default, the workers alive now.
    ///
    /// ```no_run
    /// use procpool::{pool_job, Pool};
    ///
    /// #[pool_job]
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// # fn main() -> Result<(), procpool::Error> {
    /// let pool = Pool::builder().cluster("redis://127.0.0.1:6379/0?queue=squares").build()?;
    /// assert_eq!(pool.map(square, 0..4)?, vec![0, 1, 4, 9]);
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "cluster")]
    pub fn cluster(mut self, url: impl Into<String>) -> Self {
        self.cluster = Some(url.into());
        self
    }

    /// Starts the workers. Returns once every worker is connected.
    pub fn build(self) -> Result<Pool, Error> {
        let processes = match self.processes {
            Some(0) => {
                return Err(Error::Config(
                    "a pool needs at least one process; pass processes >= 1".into(),
                ));
            }
            Some(n) => n,
            None => crate::cpu_count(),
        };
        // Fail on an inconsistent registry here rather than in every task.
        crate::job::registry()?;
        if self.max_tasks_per_child == Some(0) {
            return Err(Error::Config(
                "max_tasks_per_child must be at least 1 (a worker runs n tasks, then is replaced)"
                    .into(),
            ));
        }
        if self.task_timeout == Some(Duration::ZERO) {
            return Err(Error::Config(
                "task_timeout must be longer than zero".into(),
            ));
        }
        if self.initializer_timeout == Some(Duration::ZERO) {
            return Err(Error::Config(
                "initializer_timeout must be longer than zero".into(),
            ));
        }
        let initializer = self.initializer.transpose()?.map(|init| Initializer {
            timeout: self.initializer_timeout,
            ..init
        });
        #[cfg(feature = "cluster")]
        if let Some(url) = &self.cluster {
            let local_only = [
                ("initializer", initializer.is_some()),
                ("initializer_timeout", self.initializer_timeout.is_some()),
                ("max_tasks_per_child", self.max_tasks_per_child.is_some()),
                ("max_memory_per_child", self.max_memory_per_child.is_some()),
                ("retries", self.retries != 0),
                ("spawn_timeout", self.spawn_timeout != DEFAULT_SPAWN_TIMEOUT),
            ];
            if let Some((option, _)) = local_only.iter().find(|(_, set)| *set) {
                return Err(Error::Config(format!(
                    "{option} shapes local worker processes and does not apply to a cluster pool; \
                     remove it (cluster workers redeliver lost tasks up to max_deliveries times, \
                     see procpool::cluster)"
                )));
            }
            let backend =
                crate::cluster::ClusterBackend::start(url, self.processes, self.task_timeout)?;
            return Ok(Pool {
                backend: Box::new(backend),
                progress: self.progress,
                task_timeout: self.task_timeout,
            });
        }
        let backend = LocalBackend::start(LocalConfig {
            processes,
            spawn_timeout: self.spawn_timeout,
            initializer,
            max_tasks_per_child: self.max_tasks_per_child,
            task_timeout: self.task_timeout,
            retries: self.retries,
            max_memory_per_child: self.max_memory_per_child,
        })?;
        Ok(Pool {
            backend: Box::new(backend),
            progress: self.progress,
            task_timeout: self.task_timeout,
        })
    }
}

impl Pool {
    /// A pool over any backend: the in-process fake of the unit tests.
    #[cfg(test)]
    pub(crate) fn from_backend(backend: Box<dyn Backend>) -> Pool {
        Pool {
            backend,
            progress: false,
            task_timeout: None,
        }
    }

    /// Starts one worker per available CPU ([`std::thread::available_parallelism`]).
    pub fn new() -> Result<Pool, Error> {
        Pool::builder().build()
    }

    /// Starts `processes` workers. `0` is an [`Error::Config`].
    pub fn with_processes(processes: usize) -> Result<Pool, Error> {
        Pool::builder().processes(processes).build()
    }

    /// What the pool has done so far: tasks done and failed, workers
    /// started, replaced and why any left, and per worker slot the time
    /// spent running tasks against waiting (like MPIRE's worker insights).
    ///
    /// ```
    /// use procpool::{pool_job, Pool};
    ///
    /// #[pool_job]
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// # fn main() -> Result<(), procpool::Error> {
    /// let pool = Pool::with_processes(2)?;
    /// pool.chunksize(1).map(square, 0..10)?;
    /// let stats = pool.stats();
    /// assert_eq!(stats.tasks_done, 10);
    /// assert_eq!(stats.workers_started, 2);
    /// for worker in &stats.workers {
    ///     println!("{:?}: {} tasks, {:.0} % busy", worker.pid, worker.tasks, 100.0 * worker.utilization());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// A cluster pool's workers are other programs: its counters stay at
    /// zero (see `procpool::cluster::inspect` for a queue's state).
    pub fn stats(&self) -> crate::PoolStats {
        self.backend.stats()
    }

    /// A builder for a pool with more settings.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The number of worker processes; for a cluster pool, the number of
    /// workers its chunks are sized for (see `PoolBuilder::cluster`).
    pub fn processes(&self) -> usize {
        self.backend.processes()
    }

    /// Runs `job` on every item and returns the results in input order.
    ///
    /// Takes any `IntoIterator` of the job's argument type or of references
    /// to it ([`ItemFor`](crate::ItemFor)): `pool.map(square, &numbers)`
    /// leaves `numbers` to the caller. Items travel to the workers in chunks:
    /// about 16 per worker for large calls, Python's `ceil(n / (4 ×
    /// processes))` for small ones (see [`Pool::chunksize`] to choose).
    /// The first error
    /// (a panic, a dead worker, an unserializable value) fails the call, and
    /// chunks not yet started are skipped.
    pub fn map<J, A, R, I>(&self, job: J, items: I) -> Result<Vec<R>, Error>
    where
        J: IntoJob<Args = A, Output = R>,
        A: JobArgs,
        R: Send + 'static,
        I: IntoIterator,
        I::Item: ItemFor<A::Item>,
    {
        self.map_blocking(
            job.name(),
            items,
            None,
            encode_items(&job),
            Decode::of(&job),
        )
    }

    /// A blocking map: input is encoded only a few chunks ahead of the
    /// workers, so the caller never holds the whole input encoded beside
    /// the result.
    fn map_blocking<X, R, I>(
        &self,
        job: &'static str,
        items: I,
        chunksize: Option<usize>,
        encode: impl Encode<X>,
        decode: Decode<R>,
    ) -> Result<Vec<R>, Error>
    where
        R: Send + 'static,
        I: IntoIterator<Item = X>,
    {
        // Two tasks per worker keep every worker busy (drivers send the
        // next task before decoding a reply); one more covers the reply
        // being decoded.
        let window = 2 * self.processes() + 1;
        self.map_encoded(job, items, chunksize, encode, decode, Some(window))?
            .get()
    }

    /// Like [`map`](Pool::map), for jobs whose items are argument tuples.
    /// For a job with several arguments this is the same as `map`; a
    /// one-argument job takes 1-tuples here, as Python's `starmap` does.
    pub fn starmap<J, A, R, I>(&self, job: J, items: I) -> Result<Vec<R>, Error>
    where
        J: IntoJob<Args = A, Output = R>,
        A: JobArgs,
        R: Send + 'static,
        I: IntoIterator,
        I::Item: ItemFor<A>,
    {
        self.map_blocking(
            job.name(),
            items,
            None,
            encode_arg_tuples(&job),
            Decode::of(&job),
        )
    }

    /// Runs `job` once on `item` in a worker and returns its result.
    /// A job with several arguments takes them as a tuple.
    pub fn apply<J, A, R>(&self, job: J, item: A::Item) -> Result<R, Error>
    where
        J: IntoJob<Args = A, Output = R>,
        A: JobArgs,
        R: Send + 'static,
    {
        // The caller waits anyway: its own thread may run the exchange.
        self.apply_call(job, item, true)?.get()
    }

    /// Like [`map`](Pool::map), but returns at once with an [`AsyncResult`].
    ///
    /// The items are serialized before this returns, so `items` need not be
    /// `Send`; an item that fails to serialize is reported here.
    pub fn map_async<J, A, R, I>(&self, job: J, items: I) -> Result<AsyncResult<Vec<R>>, Error>
    where
        J: IntoJob<Args = A, Output = R>,
        A: JobArgs,
        R: Send + 'static,
        I: IntoIterator,
        I::Item: ItemFor<A::Item>,
    {
        self.map_encoded(
            job.name(),
            items,
            None,
            encode_items(&job),
            Decode::of(&job),
            None,
        )
    }

    /// `map_async` over any item type, with the function that encodes one.
    /// `window`: at most that many tasks unanswered while submitting (the
    /// caller waits for room); `None` submits everything at once.
    fn map_encoded<X, R, I>(
        &self,
        job: &'static str,
        items: I,
        chunksize: Option<usize>,
        encode: impl Encode<X>,
        decode: Decode<R>,
        window: Option<usize>,
    ) -> Result<AsyncResult<Vec<R>>, Error>
    where
        R: Send + 'static,
        I: IntoIterator<Item = X>,
    {
        let items = items.into_iter();
        let (low, high) = items.size_hint();
        let waiting = window.map_or(Waiting::Here(false), Waiting::Window);
        let call = if chunksize.is_some() || high == Some(low) {
            self.submit::<_, _, All, _>(job, low, items, chunksize, (encode, decode), waiting)?
        } else {
            // Python's rule needs the length: collect an iterator of unknown size first.
            let items: Vec<X> = items.collect();
            self.submit::<_, _, All, _>(job, items.len(), items, None, (encode, decode), waiting)?
        };
        Ok(AsyncResult::new(call))
    }

    /// Runs `job` over `items` lazily and yields each result in input order.
    ///
    /// Input is pulled only as workers free up (two chunks per worker in
    /// flight), and results are yielded as soon as they are ready, so an
    /// endless input works: `pool.imap(square, 0u64..).take(500)`.
    ///
    /// Without a [`chunksize`](Pool::chunksize), chunk sizes adapt to the
    /// time per item the pool measures (Python's default is one item per
    /// task): the first chunks hold one item each, so the first results
    /// come at once and a slow input is not waited on; then each chunk that
    /// comes back quickly lets the next one double, up to about 1 ms of
    /// work per chunk, 65 536 items or 512 KiB of input. Items of a
    /// millisecond or more stay at one per chunk and so balance across
    /// workers; tiny items travel thousands at a time (10⁵ trivial items
    /// took 1.0 to 1.3 times as long as with `chunksize(1000)`, against
    /// 200 times with one item per task). A chunk is one task: a worker
    /// that dies fails its chunk's items (see
    /// [`retries`](PoolBuilder::retries)). A pool with a
    /// [`task_timeout`](PoolBuilder::task_timeout) keeps one item per
    /// chunk, so that a timeout fails only the item that ran too long.
    /// With [`chunksize(n)`](Pool::chunksize), chunks hold exactly `n`
    /// items (the last one fewer; on a cluster pool, also a chunk that `n`
    /// items would take over its `max_payload`, as in `map`).
    ///
    /// ```
    /// use procpool::{pool_job, Pool};
    ///
    /// #[pool_job]
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// # fn main() -> Result<(), procpool::Error> {
    /// let pool = Pool::with_processes(2)?;
    /// let first: Vec<u64> = pool.imap(square, 0u64..).take(4).collect::<Result<_, _>>()?;
    /// assert_eq!(first, vec![0, 1, 4, 9]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn imap<J, A, R, I>(&self, job: J, items: I) -> Imap<'_, R, I::IntoIter>
    where
        J: IntoJob<Args = A, Output = R>,
        A: JobArgs,
        R: Send + 'static,
        I: IntoIterator,
        I::Item: ItemFor<A::Item>,
    {
        self.lazy(job, items, true)
    }

    /// Like [`imap`](Pool::imap), but yields results as they complete,
    /// whatever their input order. Chunks are sized as for `imap`.
    pub fn imap_unordered<J, A, R, I>(&self, job: J, items: I) -> Imap<'_, R, I::IntoIter>
    where
        J: IntoJob<Args = A, Output = R>,
        A: JobArgs,
        R: Send + 'static,
        I: IntoIterator,
        I::Item: ItemFor<A::Item>,
    {
        self.lazy(job, items, false)
    }

    /// `imap` or `imap_unordered` with the pool's own chunk sizes.
    fn lazy<J, A, R, I>(&self, job: J, items: I, ordered: bool) -> Imap<'_, R, I::IntoIter>
    where
        J: IntoJob<Args = A, Output = R>,
        A: JobArgs,
        R: Send + 'static,
        I: IntoIterator,
        I::Item: ItemFor<A::Item>,
    {
        let chunking = match self.task_timeout {
            Some(_) => Chunking::Fixed(1),
            None => Chunking::Adaptive {
                max_bytes: MAX_AUTO_CHUNK_BYTES,
            },
        };
        Imap::new(
            self,
            job.name(),
            items.into_iter(),
            chunking,
            ordered,
            encode_items(&job),
            Decode::of(&job),
        )
    }

    /// Sets the chunk size for one call (Python's `chunksize=` argument):
    /// `pool.chunksize(1000).imap_unordered(square, 0..100_000)`.
    ///
    /// `chunksize` items travel to a worker in one message. Large chunks cut
    /// per-message costs; small ones balance uneven work. A chunk size of 0
    /// makes the call fail with [`Error::Config`].
    pub fn chunksize(&self, chunksize: usize) -> Chunked<'_> {
        Chunked {
            pool: self,
            chunksize,
        }
    }

    pub(crate) fn shows_progress(&self) -> bool {
        self.progress
    }

    pub(crate) fn submit_task(&self, task: Task) -> Result<(), Error> {
        self.backend.submit(task)
    }

    /// The backend's hard limit on a chunk's encoded size, if it has one.
    pub(crate) fn max_chunk_bytes(&self) -> Option<usize> {
        self.backend.max_chunk_bytes()
    }

    /// Like [`starmap`](Pool::starmap), but returns at once with an [`AsyncResult`].
    pub fn starmap_async<J, A, R, I>(&self, job: J, items: I) -> Result<AsyncResult<Vec<R>>, Error>
    where
        J: IntoJob<Args = A, Output = R>,
        A: JobArgs,
        R: Send + 'static,
        I: IntoIterator,
        I::Item: ItemFor<A>,
    {
        self.map_encoded(
            job.name(),
            items,
            None,
            encode_arg_tuples(&job),
            Decode::of(&job),
            None,
        )
    }

    /// Like [`apply`](Pool::apply), but returns at once with an [`AsyncResult`].
    pub fn apply_async<J, A, R>(&self, job: J, item: A::Item) -> Result<AsyncResult<R>, Error>
    where
        J: IntoJob<Args = A, Output = R>,
        A: JobArgs,
        R: Send + 'static,
    {
        self.apply_call(job, item, false)
    }

    /// `apply_async`; with `drive_here`, for a caller that waits for the
    /// result at once.
    fn apply_call<J, A, R>(
        &self,
        job: J,
        item: A::Item,
        drive_here: bool,
    ) -> Result<AsyncResult<R>, Error>
    where
        J: IntoJob<Args = A, Output = R>,
        A: JobArgs,
        R: Send + 'static,
    {
        let call = self.submit::<_, _, One, _>(
            job.name(),
            1,
            std::iter::once(item),
            Some(1),
            (encode_items(&job), Decode::of(&job)),
            Waiting::Here(drive_here),
        )?;
        Ok(AsyncResult::new(call))
    }

    /// Stops accepting work. Queued and running tasks still finish; later
    /// calls fail with [`Error::Closed`].
    pub fn close(&self) {
        self.backend.close();
    }

    /// Waits for all queued work to finish and every worker to exit.
    /// Closes the pool first if [`close`](Pool::close) was not called.
    pub fn join(&self) -> Result<(), Error> {
        self.backend.join()
    }

    /// Stops the workers now (SIGKILL). Calls still running or queued fail
    /// promptly with [`Error::Terminated`]; later calls fail with [`Error::Closed`].
    pub fn terminate(&self) {
        self.backend.terminate();
    }

    /// Encodes `items` into chunks and queues them as they fill, so workers
    /// start while later items are still being encoded.
    fn submit<X, R, M, E>(
        &self,
        job: &'static str,
        expected: usize,
        items: impl IntoIterator<Item = X>,
        chunksize: Option<usize>,
        (encode, decode): (E, Decode<R>),
        waiting: Waiting,
    ) -> Result<Arc<Call<R, M>>, Error>
    where
        R: Send + 'static,
        M: Finish<R>,
        E: Encode<X>,
    {
        if self.backend.is_closed() {
            return Err(Error::Closed);
        }
        // A chunk size the caller chose is kept as is (Python's meaning).
        let max_bytes = if chunksize.is_some() {
            usize::MAX
        } else {
            MAX_AUTO_CHUNK_BYTES
        };
        let chunksize = chunksize
            .unwrap_or_else(|| default_chunksize(expected, self.processes()))
            .max(1);
        // A bar for a single `apply` would only flicker.
        let progress = Progress::new(self.progress && expected > 1, job, Some(expected));
        let call = Call::<R, M>::new(job, decode, progress, expected);
        let (window, drive_here) = match waiting {
            Waiting::Window(window) => (Some(window), false),
            Waiting::Here(drive_here) => (None, drive_here),
        };
        let mut chunk = ChunkBuilder {
            drive_here,
            ..ChunkBuilder::default()
        };
        // A backend's hard limit (a cluster's `max_payload`): a chunk that
        // an item would take over it goes without that item.
        let byte_limit = self.backend.max_chunk_bytes();
        let serialization = |index: usize, problem: crate::codec::Problem| {
            let error =
                crate::codec::error_for(job, format!("serialize argument {index}"), problem);
            call.abandon(error.clone());
            error
        };
        for (index, item) in items.into_iter().enumerate() {
            if let Err(problem) = encode(&item, &mut chunk.items) {
                return Err(serialization(index, problem));
            }
            if byte_limit.is_some_and(|limit| chunk.items.byte_len() > limit)
                && chunk.items.len() > 1
            {
                chunk.items.undo_last();
                if !self.send_in_window(job, &call, &mut chunk, window)? {
                    break;
                }
                // A single item over the limit is the backend's to refuse.
                if let Err(problem) = encode(&item, &mut chunk.items) {
                    return Err(serialization(index, problem));
                }
            }
            if (chunk.items.len() == chunksize || chunk.items.byte_len() >= max_bytes)
                && !self.send_in_window(job, &call, &mut chunk, window)?
            {
                break;
            }
        }
        if chunk.items.len() > 0 {
            self.send_chunk(job, &call, &mut chunk)?;
        }
        call.seal();
        Ok(call)
    }

    /// Sends `chunk` once fewer than `window` of the call's tasks await
    /// their outcome. `Ok(false)`, with the chunk dropped, once the call has
    /// failed: its error is what `get` returns, and nothing more is sent.
    fn send_in_window<R, M>(
        &self,
        job: &'static str,
        call: &Arc<Call<R, M>>,
        chunk: &mut ChunkBuilder,
        window: Option<usize>,
    ) -> Result<bool, Error>
    where
        R: Send + 'static,
        M: Finish<R>,
    {
        if window.is_some_and(|window| !call.wait_in_flight_below(window)) {
            chunk.items = ChunkWriter::default();
            return Ok(false);
        }
        self.send_chunk(job, call, chunk)?;
        Ok(true)
    }

    fn send_chunk<R, M>(
        &self,
        job: &'static str,
        call: &Arc<Call<R, M>>,
        chunk: &mut ChunkBuilder,
    ) -> Result<(), Error>
    where
        R: Send + 'static,
        M: Finish<R>,
    {
        let mut items = std::mem::take(&mut chunk.items);
        let count = items.len();
        let attached = items.take_attached();
        let task = Task {
            job,
            chunk: chunk.number,
            first: chunk.first,
            count,
            items: items.finish(),
            sink: Arc::clone(call) as Arc<dyn crate::backend::Sink>,
            retried: 0,
            before: Vec::new(),
            attached: attached.into(),
        };
        chunk.number += 1;
        chunk.first += count;
        call.expect_chunk();
        let submitted = if chunk.drive_here {
            self.backend.submit_and_drive(task)
        } else {
            self.backend.submit(task)
        };
        if let Err(error) = submitted {
            call.abandon(error.clone());
            return Err(error);
        }
        Ok(())
    }
}

/// A [`Pool`] with a chunk size chosen for the next call. Created by [`Pool::chunksize`].
#[derive(Debug, Clone, Copy)]
#[must_use = "call map, imap, ... on it"]
pub struct Chunked<'pool> {
    pool: &'pool Pool,
    chunksize: usize,
}

impl<'pool> Chunked<'pool> {
    fn checked(&self) -> Result<usize, Error> {
        if self.chunksize == 0 {
            Err(Error::Config("chunksize must be at least 1".into()))
        } else {
            Ok(self.chunksize)
        }
    }

    /// [`Pool::map`] with this chunk size.
    pub fn map<J, A, R, I>(&self, job: J, items: I) -> Result<Vec<R>, Error>
    where
        J: IntoJob<Args = A, Output = R>,
        A: JobArgs,
        R: Send + 'static,
        I: IntoIterator,
        I::Item: ItemFor<A::Item>,
    {
        self.pool.map_blocking(
            job.name(),
            items,
            Some(self.checked()?),
            encode_items(&job),
            Decode::of(&job),
        )
    }

    /// [`Pool::map_async`] with this chunk size.
    pub fn map_async<J, A, R, I>(&self, job: J, items: I) -> Result<AsyncResult<Vec<R>>, Error>
    where
        J: IntoJob<Args = A, Output = R>,
        A: JobArgs,
        R: Send + 'static,
        I: IntoIterator,
        I::Item: ItemFor<A::Item>,
    {
        self.pool.map_encoded(
            job.name(),
            items,
            Some(self.checked()?),
            encode_items(&job),
            Decode::of(&job),
            None,
        )
    }

    /// [`Pool::starmap`] with this chunk size.
    pub fn starmap<J, A, R, I>(&self, job: J, items: I) -> Result<Vec<R>, Error>
    where
        J: IntoJob<Args = A, Output = R>,
        A: JobArgs,
        R: Send + 'static,
        I: IntoIterator,
        I::Item: ItemFor<A>,
    {
        self.pool.map_blocking(
            job.name(),
            items,
            Some(self.checked()?),
            encode_arg_tuples(&job),
            Decode::of(&job),
        )
    }

    /// [`Pool::imap`] with this chunk size.
    pub fn imap<J, A, R, I>(&self, job: J, items: I) -> Imap<'pool, R, I::IntoIter>
    where
        J: IntoJob<Args = A, Output = R>,
        A: JobArgs,
        R: Send + 'static,
        I: IntoIterator,
        I::Item: ItemFor<A::Item>,
    {
        self.lazy(job, items, true)
    }

    /// [`Pool::imap_unordered`] with this chunk size.
    pub fn imap_unordered<J, A, R, I>(&self, job: J, items: I) -> Imap<'pool, R, I::IntoIter>
    where
        J: IntoJob<Args = A, Output = R>,
        A: JobArgs,
        R: Send + 'static,
        I: IntoIterator,
        I::Item: ItemFor<A::Item>,
    {
        self.lazy(job, items, false)
    }

    fn lazy<J, A, R, I>(&self, job: J, items: I, ordered: bool) -> Imap<'pool, R, I::IntoIter>
    where
        J: IntoJob<Args = A, Output = R>,
        A: JobArgs,
        R: Send + 'static,
        I: IntoIterator,
        I::Item: ItemFor<A::Item>,
    {
        match self.checked() {
            Ok(size) => Imap::new(
                self.pool,
                job.name(),
                items.into_iter(),
                Chunking::Fixed(size),
                ordered,
                encode_items(&job),
                Decode::of(&job),
            ),
            Err(error) => Imap::failed(
                self.pool,
                job.name(),
                items.into_iter(),
                error,
                encode_items(&job),
                Decode::of(&job),
            ),
        }
    }
}

/// A chunk being filled.
#[derive(Default)]
struct ChunkBuilder {
    number: usize,
    first: usize,
    items: ChunkWriter,
    /// The caller waits for this (single-chunk) call at once: the backend
    /// may run it on the caller's thread.
    drive_here: bool,
}

/// How a caller waits for the call it submits.
#[derive(Clone, Copy)]
enum Waiting {
    /// Blocked until fewer than this many of its tasks are unanswered
    /// while submitting (a blocking `map` that bounds its memory).
    Window(usize),
    /// Not while submitting; with `true`, it waits for its single task
    /// right after (a blocking `apply`).
    Here(bool),
}

/// About 16 chunks per worker: `ceil(n / (16 × processes))`, but never
/// smaller than Python's `ceil(n / (4 × processes))` capped at 256 items.
///
/// Python's 4 chunks per worker leave the pipeline idle while the first
/// chunk is encoded and the last one decoded: measured here, `map` of a
/// trivial job over 10⁶ integers took 19 ms with Python's rule and 12 ms
/// with 16 chunks per worker. Small calls keep Python's coarser chunks,
/// where the cost of a message dominates. (Chunks are also cut at
/// [`MAX_AUTO_CHUNK_BYTES`], see there.)
fn default_chunksize(items: usize, processes: usize) -> usize {
    let processes = processes.max(1);
    let fine = items.div_ceil(16 * processes);
    let python = items.div_ceil(4 * processes);
    fine.max(python.min(256)).max(1)
}

/// Where a chunk whose size the pool chose is cut, whatever its count.
///
/// It keeps the few chunks in flight small beside a large map's result:
/// the caller's peak memory over a map of 10⁷ `u64` is 1.02 times the
/// result with this cut, 1.11 to 1.14 times with chunks of 16 per worker
/// (312 500 items). Smaller cuts cost speed (more messages and replies):
/// a map of 10⁶ `u64` took 17 ms (median of 30) cut at 128 KiB against 9
/// to 12 ms at 512 KiB or more, measured when each reply still came back
/// in a memfd of its own.
pub(crate) const MAX_AUTO_CHUNK_BYTES: usize = 512 << 10;

#[cfg(test)]
mod tests {
    use super::default_chunksize;

    #[test]
    fn chunksize_is_python_for_small_calls_and_finer_for_large_ones() {
        assert_eq!(default_chunksize(0, 2), 1);
        // Small calls: Python's rule.
        assert_eq!(default_chunksize(10, 2), 2);
        assert_eq!(default_chunksize(8, 2), 1);
        assert_eq!(default_chunksize(2_000, 2), 250);
        // Large calls: 16 chunks per worker.
        assert_eq!(default_chunksize(10_000, 2), 313);
        assert_eq!(default_chunksize(1_000_000, 2), 31_250);
    }
}

/// Pools work inside a library's own unit tests: the test binary is re-run as the worker.
#[cfg(test)]
#[allow(unsafe_code)] // linkme's registry entry of a #[pool_job] (see the top)
mod unit_tests_can_use_pools {
    use crate::{Pool, pool_job};

    #[pool_job]
    fn triple(x: i32) -> i32 {
        x * 3
    }

    #[test]
    fn map_in_a_unit_test() {
        let pool = Pool::with_processes(1).unwrap();
        assert_eq!(pool.map(triple, [1, 2, 3]).unwrap(), vec![3, 6, 9]);
        assert_ne!(
            pool.apply(super::tests_pid, ()).unwrap(),
            std::process::id()
        );
    }
}

#[cfg(test)]
#[allow(unsafe_code)] // linkme's registry entry of a #[pool_job] (see the top)
#[crate::pool_job]
fn tests_pid() -> u32 {
    std::process::id()
}
