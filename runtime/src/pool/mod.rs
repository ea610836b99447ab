//! The pool: its public calls (`map`, `imap`, `apply`, ...), each cut into
//! chunks by [`submit`] (or by [`crate::imap`] for the lazy ones) and handed
//! to a backend; [`builder`] is how a pool is configured and started.

// Nothing here touches the OS or shared memory, so nothing here needs
// `unsafe`: types are checked by the compiler, not by contracts. (`deny`,
// not `forbid`: the test jobs below are registered by linkme, whose entry
// is a `link_section` static, which the lint counts as unsafe.)
#![deny(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

mod builder;
mod submit;

pub use builder::PoolBuilder;
pub(crate) use submit::MAX_AUTO_CHUNK_BYTES;
use submit::Waiting;

use crate::Error;
use crate::backend::{Backend, Task};
use crate::call::{All, AsyncResult, One};
use crate::imap::{Chunking, Imap};
use crate::job::{
    Decode, Encode, IntoJob, ItemFor, JobArgs, OwnedChunk, encode_arg_tuples, encode_items,
    item_encoding,
};
use crate::stats::CallBoard;

/// A pool of worker processes, like Python's `multiprocessing.Pool`.
///
/// Jobs are functions marked [`#[pool_job]`](crate::pool_job). Results come
/// back in input order. The pool is `Send + Sync`: share it between threads
/// (by reference, or a [`clone`](Clone::clone) of the handle) and submit
/// from all of them at once.
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
/// A pool is a handle: [`clone`](Clone::clone) it (cheaply) to share its
/// workers with another thread, a server's state or a `'static` task; the
/// iterators of [`imap`](Pool::imap) and [`imap_unordered`](Pool::imap_unordered)
/// hold one too, so they can outlive the `pool` variable (be moved into
/// another thread, or returned as a response body's stream).
///
/// [`close`](Pool::close), [`join`](Pool::join) and
/// [`terminate`](Pool::terminate) act on the workers every handle shares.
/// Dropping the last handle stops the workers at once (like Python's
/// `terminate`) and reaps them; call `close` and `join` first to let queued
/// work finish. While an `Imap` is alive its handle keeps the workers, and
/// it finishes its items.
pub struct Pool {
    workers: Arc<Workers>,
    /// The chunk size this handle's calls use; `None`: the pool chooses.
    /// Set by [`Pool::chunksize`].
    chunksize: Option<usize>,
}

/// What every handle to one pool shares.
struct Workers {
    /// The dashboard's server, if one was asked for: first, so it stops
    /// before the workers do.
    #[cfg(feature = "dashboard")]
    dashboard: std::sync::OnceLock<crate::dashboard::Dashboard>,
    /// The calls in flight, kept only for a dashboard.
    calls: Option<Arc<CallBoard>>,
    backend: Box<dyn Backend>,
    progress: bool,
    /// Set, on a backend that limits whole tasks (a cluster), it keeps an
    /// untuned `imap` at one item per task (see `Backend::limits_each_item`).
    task_timeout: Option<Duration>,
}

impl Clone for Pool {
    /// Another handle to the same workers (and the same chunk size).
    fn clone(&self) -> Pool {
        Pool {
            workers: Arc::clone(&self.workers),
            chunksize: self.chunksize,
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.workers.backend.processes())
            .field("chunksize", &self.chunksize)
            .finish()
    }
}

impl Pool {
    /// A pool over any backend: the in-process fake of the unit tests.
    #[cfg(test)]
    pub(crate) fn from_backend(backend: Box<dyn Backend>) -> Pool {
        Pool::over(backend, false, None)
    }

    fn over(backend: Box<dyn Backend>, progress: bool, task_timeout: Option<Duration>) -> Pool {
        Pool::with_board(backend, progress, task_timeout, None)
    }

    fn with_board(
        backend: Box<dyn Backend>,
        progress: bool,
        task_timeout: Option<Duration>,
        calls: Option<Arc<CallBoard>>,
    ) -> Pool {
        Pool {
            workers: Arc::new(Workers {
                #[cfg(feature = "dashboard")]
                dashboard: std::sync::OnceLock::new(),
                calls,
                backend,
                progress,
                task_timeout,
            }),
            chunksize: None,
        }
    }

    /// The pool `build()` returns: with its dashboard, if one was bound.
    fn finish(
        backend: Box<dyn Backend>,
        progress: bool,
        task_timeout: Option<Duration>,
        #[cfg(feature = "dashboard")] bound: Option<crate::dashboard::Bound>,
    ) -> Result<Pool, Error> {
        #[cfg(feature = "dashboard")]
        if let Some(bound) = bound {
            return Pool::with_dashboard(backend, progress, task_timeout, bound);
        }
        Ok(Pool::over(backend, progress, task_timeout))
    }

    /// A pool over `backend` whose dashboard serves on `bound`. The
    /// server holds no handle: it stops when the pool's last one drops.
    #[cfg(feature = "dashboard")]
    fn with_dashboard(
        backend: Box<dyn Backend>,
        progress: bool,
        task_timeout: Option<Duration>,
        bound: crate::dashboard::Bound,
    ) -> Result<Pool, Error> {
        let pool = Pool::with_board(
            backend,
            progress,
            task_timeout,
            Some(Arc::new(CallBoard::default())),
        );
        let started = std::time::Instant::now();
        let weak = Arc::downgrade(&pool.workers);
        let source: crate::dashboard::Source = Box::new(move || {
            let workers = weak.upgrade()?;
            Some(crate::dashboard::Snapshot {
                processes: workers.backend.processes(),
                uptime: started.elapsed(),
                stats: workers.backend.stats(),
                calls: workers
                    .calls
                    .as_ref()
                    .map(|calls| calls.snapshot())
                    .unwrap_or_default(),
            })
        });
        let site = crate::dashboard::Site::pool(source);
        let dashboard = crate::dashboard::Dashboard::start(bound, site)?;
        let _ = pool.workers.dashboard.set(dashboard);
        Ok(pool)
    }

    /// The address of this pool's live dashboard,
    /// `Some("http://127.0.0.1:PORT/")` with the port it listens on, for a
    /// pool built with `PoolBuilder::dashboard` (cargo feature
    /// `dashboard`); `None` otherwise.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// let pool = procpool::Pool::with_processes(1)?;
    /// assert_eq!(pool.dashboard_url(), None);
    /// # Ok(())
    /// # }
    /// ```
    pub fn dashboard_url(&self) -> Option<String> {
        #[cfg(feature = "dashboard")]
        if let Some(dashboard) = self.workers.dashboard.get() {
            return Some(dashboard.url().to_owned());
        }
        None
    }

    /// Where calls show themselves while in flight (with a dashboard).
    pub(crate) fn call_board(&self) -> Option<&CallBoard> {
        self.workers.calls.as_deref()
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
        self.workers.backend.stats()
    }

    /// A builder for a pool with more settings.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The number of worker processes; for a cluster pool, the number of
    /// workers its chunks are sized for (see `PoolBuilder::cluster`).
    pub fn processes(&self) -> usize {
        self.workers.backend.processes()
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
            self.chosen_chunksize()?,
            item_encoding(&job),
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
        encode: (impl Encode<X>, OwnedChunk<X>),
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
            self.chosen_chunksize()?,
            (encode_arg_tuples(&job), None),
            Decode::of(&job),
        )
    }

    /// Runs `job` once on `item` in a worker and returns its result.
    /// A job with several arguments takes them as a tuple.
    pub fn apply<J, A, R, X>(&self, job: J, item: X) -> Result<R, Error>
    where
        J: IntoJob<Args = A, Output = R>,
        A: JobArgs,
        R: Send + 'static,
        X: ItemFor<A::Item>,
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
            self.chosen_chunksize()?,
            item_encoding(&job),
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
        (encode, owned): (impl Encode<X>, OwnedChunk<X>),
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
            self.submit::<_, _, All, _>(
                job,
                low,
                items,
                chunksize,
                (encode, owned, decode),
                waiting,
            )?
        } else {
            // Python's rule needs the length: collect an iterator of unknown size first.
            let items: Vec<X> = items.collect();
            self.submit::<_, _, All, _>(
                job,
                items.len(),
                items,
                None,
                (encode, owned, decode),
                waiting,
            )?
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
    /// 200 times with one item per task). A worker that dies, or an item
    /// that runs past the [`task_timeout`](PoolBuilder::task_timeout),
    /// fails only that item: the rest of its chunk runs on (see
    /// [`retries`](PoolBuilder::retries)). With [`chunksize(n)`](Pool::chunksize), chunks hold exactly `n`
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
    pub fn imap<J, A, R, I>(&self, job: J, items: I) -> Imap<R, I::IntoIter>
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
    pub fn imap_unordered<J, A, R, I>(&self, job: J, items: I) -> Imap<R, I::IntoIter>
    where
        J: IntoJob<Args = A, Output = R>,
        A: JobArgs,
        R: Send + 'static,
        I: IntoIterator,
        I::Item: ItemFor<A::Item>,
    {
        self.lazy(job, items, false)
    }

    /// `imap` or `imap_unordered`, with this handle's chunk size.
    fn lazy<J, A, R, I>(&self, job: J, items: I, ordered: bool) -> Imap<R, I::IntoIter>
    where
        J: IntoJob<Args = A, Output = R>,
        A: JobArgs,
        R: Send + 'static,
        I: IntoIterator,
        I::Item: ItemFor<A::Item>,
    {
        let (chunking, refused) = match self.chosen_chunksize() {
            Ok(Some(size)) => (Chunking::Fixed(size), None),
            // A time limit on whole tasks (a cluster's) fails a whole
            // chunk: one item per task keeps a timeout to the item that
            // ran over.
            Ok(None)
                if self.workers.task_timeout.is_some()
                    && !self.workers.backend.limits_each_item() =>
            {
                (Chunking::Fixed(1), None)
            }
            Ok(None) => (
                Chunking::Adaptive {
                    max_bytes: MAX_AUTO_CHUNK_BYTES,
                },
                None,
            ),
            Err(error) => (Chunking::Fixed(1), Some(error)),
        };
        let imap = Imap::new(
            self.clone(),
            job.name(),
            items.into_iter(),
            chunking,
            ordered,
            encode_items(&job),
            Decode::of(&job),
        );
        match refused {
            Some(error) => imap.refused(error),
            None => imap,
        }
    }

    /// A handle to the same workers whose calls cut their input into
    /// chunks of `chunksize` items (Python's `chunksize=` argument):
    /// `pool.chunksize(1000).imap_unordered(square, 0..100_000)`.
    ///
    /// `chunksize` items travel to a worker in one message. Large chunks cut
    /// per-message costs; small ones balance uneven work. `None` lets the
    /// pool choose, as a pool's calls do unless told, so an optional value
    /// (a command-line flag) needs no branch:
    /// `pool.chunksize(args.chunksize).map(...)`. A chunk size of 0 makes
    /// the calls fail with [`Error::Config`].
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
    /// let flag: Option<usize> = None; // say, from the command line
    /// assert_eq!(pool.chunksize(flag).map(square, 0..4)?, vec![0, 1, 4, 9]);
    /// assert_eq!(pool.chunksize(2).map(square, 0..4)?, vec![0, 1, 4, 9]);
    /// # Ok(())
    /// # }
    /// ```
    #[must_use = "chunksize returns a handle for the calls that follow: pool.chunksize(n).map(...)"]
    pub fn chunksize(&self, chunksize: impl Into<Option<usize>>) -> Pool {
        Pool {
            workers: Arc::clone(&self.workers),
            chunksize: chunksize.into(),
        }
    }

    /// This handle's chunk size, if one was chosen; 0 is refused here, at
    /// the call, where the error can be returned.
    fn chosen_chunksize(&self) -> Result<Option<usize>, Error> {
        match self.chunksize {
            Some(0) => Err(Error::Config(
                "chunksize must be at least 1 (or None to let the pool choose)".into(),
            )),
            chosen => Ok(chosen),
        }
    }

    pub(crate) fn shows_progress(&self) -> bool {
        self.workers.progress
    }

    pub(crate) fn submit_task(&self, task: Task) -> Result<(), Error> {
        self.workers.backend.submit(task)
    }

    /// The backend's hard limit on a chunk's encoded size, if it has one.
    pub(crate) fn max_chunk_bytes(&self) -> Option<usize> {
        self.workers.backend.max_chunk_bytes()
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
            self.chosen_chunksize()?,
            (encode_arg_tuples(&job), None),
            Decode::of(&job),
            None,
        )
    }

    /// Like [`apply`](Pool::apply), but returns at once with an [`AsyncResult`].
    pub fn apply_async<J, A, R, X>(&self, job: J, item: X) -> Result<AsyncResult<R>, Error>
    where
        J: IntoJob<Args = A, Output = R>,
        A: JobArgs,
        R: Send + 'static,
        X: ItemFor<A::Item>,
    {
        self.apply_call(job, item, false)
    }

    /// `apply_async`; with `drive_here`, for a caller that waits for the
    /// result at once.
    fn apply_call<J, A, R, X>(
        &self,
        job: J,
        item: X,
        drive_here: bool,
    ) -> Result<AsyncResult<R>, Error>
    where
        J: IntoJob<Args = A, Output = R>,
        A: JobArgs,
        R: Send + 'static,
        X: ItemFor<A::Item>,
    {
        // A caller that waits for one large byte string's result may run
        // it on an idle worker from its own thread: the value's bytes are
        // then copied once, straight into the worker's memory.
        if drive_here
            && let Some((head, tail)) = crate::codec::borrowed_chunk(item.as_item())
            && tail.len() >= submit::BORROW_MIN
        {
            let call = self.apply_borrowed(job.name(), head, tail, Decode::of(&job))?;
            return Ok(AsyncResult::new(call));
        }
        let call = self.submit::<_, _, One, _>(
            job.name(),
            1,
            std::iter::once(item),
            Some(1),
            {
                let (encode, owned) = item_encoding(&job);
                (encode, owned, Decode::of(&job))
            },
            Waiting::Here(drive_here),
        )?;
        Ok(AsyncResult::new(call))
    }

    /// Stops accepting work. Queued and running tasks still finish; later
    /// calls fail with [`Error::Closed`].
    pub fn close(&self) {
        self.workers.backend.close();
    }

    /// Waits for all queued work to finish and every worker to exit.
    /// Closes the pool first if [`close`](Pool::close) was not called.
    pub fn join(&self) -> Result<(), Error> {
        self.workers.backend.join()
    }

    /// Stops the workers now (SIGKILL). Calls still running or queued fail
    /// promptly with [`Error::Terminated`]; later calls fail with [`Error::Closed`].
    pub fn terminate(&self) {
        self.workers.backend.terminate();
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
mod copies;

#[cfg(test)]
#[allow(unsafe_code)] // linkme's registry entry of a #[pool_job] (see the top)
#[crate::pool_job]
fn tests_pid() -> u32 {
    std::process::id()
}
