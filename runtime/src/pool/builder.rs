//! [`PoolBuilder`]: a pool's settings, checked, and the start of its
//! workers (local, or a cluster's with the `cluster` feature).

use std::time::Duration;

use super::Pool;
use crate::Error;
use crate::job::{IntoJob, JobArgs, encode_one};
use crate::local::launch::Initializer;
use crate::local::{LocalBackend, LocalConfig};

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
    #[cfg(feature = "dashboard")]
    dashboard: Option<String>,
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
            #[cfg(feature = "dashboard")]
            dashboard: None,
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

    /// Kills a worker whose current item runs longer than `timeout`, and
    /// fails that item with [`Error::TaskTimedOut`]; the pool starts a
    /// replacement. The limit applies to each item, whatever the chunk
    /// size: the items of the chunk that finished before it keep their
    /// results, and the rest of the chunk runs on another worker (an item
    /// may run up to a tenth of a second past the limit, never less). With
    /// a cluster pool the limit applies to a whole task, enforced by the
    /// worker that runs it, which exits to be replaced; an `imap` without a
    /// chunk size then sends one item per task. `Duration::MAX` (or any
    /// limit too far away to reach) is no limit.
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
    /// items done out of the total, rate and ETA (an `imap` over an input
    /// of unknown length shows the count and rate). Drawn only when stderr
    /// is a terminal.
    ///
    /// Needs the cargo feature `progress`: `show` is a `bool` then, and
    /// without the feature a call is a compile error that says so
    /// ([`ShowProgress`](crate::ShowProgress)).
    pub fn progress(mut self, show: impl crate::ShowProgress) -> Self {
        self.progress = show.show();
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

    /// Serves a live dashboard of this pool on `addr` (cargo feature
    /// `dashboard`): a page that shows every worker slot (pid, state, the
    /// job it runs and for how long, tasks done), the items done, why
    /// workers left, utilization and throughput charts and the calls in
    /// flight with their progress, updated every second without
    /// reloading; and `/metrics` in the Prometheus text format. See the
    /// [guide's dashboard page](crate::guide::dashboard).
    ///
    /// `addr` is where to listen, e.g. `"127.0.0.1:0"` (port 0 picks a
    /// free port; [`Pool::dashboard_url`] says which). It listens only
    /// there: use a loopback address unless others should see the page.
    /// The server is read-only (GET only), shows job names and counts,
    /// never job arguments or results, runs on threads of its own and
    /// stops when the pool's last handle drops. An address that cannot be
    /// bound fails [`build`](PoolBuilder::build) with [`Error::System`],
    /// before any worker starts.
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
    /// let pool = Pool::builder().processes(2).dashboard("127.0.0.1:0").build()?;
    /// let url = pool.dashboard_url().expect("built with a dashboard");
    /// println!("watch the pool at {url}");
    /// assert!(url.starts_with("http://127.0.0.1:"));
    /// pool.map(square, 0..1000)?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "dashboard")]
    pub fn dashboard(mut self, addr: impl Into<String>) -> Self {
        self.dashboard = Some(addr.into());
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
        // Bound before any worker starts: a taken port fails here.
        #[cfg(feature = "dashboard")]
        let bound = self
            .dashboard
            .as_deref()
            .map(crate::dashboard::bind)
            .transpose()?;
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
            return Pool::finish(
                Box::new(backend),
                self.progress,
                self.task_timeout,
                #[cfg(feature = "dashboard")]
                bound,
            );
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
        Pool::finish(
            Box::new(backend),
            self.progress,
            self.task_timeout,
            #[cfg(feature = "dashboard")]
            bound,
        )
    }
}
