// The files of this module (what a reader looks for → where it is):
//
//   mod.rs          serve, run_workers, the worker's start-up hook, warn
//   settings.rs     the cluster URL: Redis' URL plus procpool's parameters
//   link.rs         one Redis connection that reconnects by itself, the
//                   nodes of a Redis Cluster, caller-facing Redis errors
//   protocol.rs     the keys in Redis and what they hold, stream entries,
//                   refusals, caller ids, Redis' clock
//   auth.rs         HMAC tags on tasks, results and presence (the `key`)
//   backend/        the caller: ClusterBackend, the Backend of a pool
//     mod.rs        start-up, the Backend impl, terminate, shared state
//     pending.rs    the pending tasks, the backlog, the window, the watermark
//     submit.rs     sending tasks, sending them again, withdrawing them
//     results.rs    the collector thread: reading and delivering results
//     lost.rs       finding and failing the tasks Redis lost
//     served.rs     counting live workers; jobs no live worker can run
//     presence.rs   the presence thread, the caller's presence and about: keys
//   serve.rs        the worker: its loop, running a task, storing its result
//   serve/admit.rs  a worker's checks before a task runs: fields and tag,
//                   the caller's presence, the claim that runs it once
//   heartbeat.rs    the worker's heartbeat thread and task_timeout watchdog
//   recover.rs      recovery of dead workers' tasks (the lost sets)
//   supervise.rs    Workers: several worker processes on one host
//   inspect.rs      inspect(): a queue's state for operators
//   guide.md        the user's guide, included in this module's docs

//! Pools whose workers run on any number of hosts, through Redis.
//!
//! A caller builds its pool with
//! [`Pool::builder().cluster(url)`](crate::PoolBuilder::cluster) and uses it
//! like a local one: `map`, `starmap`, `apply`, `imap`, `imap_unordered`,
//! the `_async` forms and [`AsyncResult`](crate::AsyncResult) behave the
//! same. Tasks go to a Redis stream; workers on any host take them through
//! a consumer group and store each result, which comes back to the caller.
//! Workers are programs that call [`serve`] (one worker) or
//! [`run_workers`] / [`Workers`] (several processes on one host), built from
//! the same code as the callers, so they have the same `#[pool_job]`
//! functions.
//!
//! ```no_run
//! use procpool::{pool_job, Pool};
//!
//! #[pool_job]
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! fn main() -> Result<(), procpool::Error> {
//!     let url = "redis://127.0.0.1:6379/0?queue=squares";
//!     if std::env::args().nth(1).as_deref() == Some("worker") {
//!         // On each worker host: 4 processes, until Ctrl-C.
//!         return procpool::cluster::run_workers(url, 4);
//!     }
//!     let pool = Pool::builder().cluster(url).build()?;
//!     assert_eq!(pool.map(square, 0..10)?, vec![0, 1, 4, 9, 16, 25, 36, 49, 64, 81]);
//!     Ok(())
//! }
//! ```
//!
//! # Delivery
//!
//! - A worker acknowledges a task in the same Redis transaction that stores
//!   its result, so no task is acknowledged without its result.
//! - A task whose worker died (crash, `kill -9`, lost host) is claimed by
//!   another worker once the dead worker's heartbeat has been silent for the
//!   visibility timeout (plus a second), up to `max_deliveries` times in
//!   all; then the call fails with [`Error::TaskLost`]. One worker at a time
//!   looks for dead workers, hands their tasks to every live worker (each
//!   takes one before any new task, so many lost tasks run at once), and
//!   forgets dead workers that hold nothing any more.
//!   A live worker renews its claim while the job runs, however long that
//!   takes, unless the caller set a
//!   [`task_timeout`](crate::PoolBuilder::task_timeout): then the worker
//!   fails the task with [`Error::TaskTimedOut`] and exits, to be replaced.
//! - Tasks therefore run **at least once**: a job whose worker died after a
//!   side effect repeats it. Make cluster jobs idempotent.
//! - A task never runs from two stream entries: before running one, a
//!   worker claims the caller's task number for its entry, in Redis, where
//!   every worker of the queue sees the claim. A copy of the entry added
//!   again (the same fields, another entry id) is dropped unrun and counted
//!   as `replayed_tasks`; the same entry delivered again after its worker
//!   died holds the claim, and runs. So "once" is about copies: crash
//!   recovery stays at-least-once. A caller's presence key carries a
//!   watermark (every task numbered below it is settled), below which
//!   tasks are dropped too, and claims under it are removed.
//! - The caller receives each result **exactly once**: results carry the
//!   task's number, and a second result for a task is dropped.
//! - Nothing is lost when a connection drops: tasks and results wait in
//!   Redis, workers reconnect forever and callers resume reading where they
//!   stopped. A caller that cannot reach Redis for `reconnect` seconds fails
//!   its pending calls with [`Error::Cluster`], and so does a caller that
//!   finds that Redis lost the tasks of a pending call (a restart without
//!   persistence, a flush, an eviction; checked after every reconnect and
//!   every 10 seconds): calls never wait for tasks that are gone.
//! - Compatibility is decided per job: tasks go to one stream per job,
//!   named after the job's name, its argument and result types as written,
//!   and the queue's key. A worker reads only the streams of the jobs it
//!   has, so during a rolling deploy each task waits for a worker that can
//!   run it, and jobs that did not change run on old and new workers alike.
//!   If workers are alive but none can run a job for `unserved` seconds
//!   (30 by default), its calls fail with [`Error::Registry`], which names
//!   the job and the versions live workers have (or says that their key
//!   differs). A changed `struct` that keeps its name is not detected: give
//!   such a build its own queue.
//! - With no worker alive at all, calls wait for one (autoscaling may be
//!   starting them). After 10 seconds (or `unserved`, if shorter) the
//!   caller says so, through `log` or on stderr, and [`inspect`] shows the
//!   job with no live worker; `no_workers=<seconds>` in the URL makes such
//!   calls fail with [`Error::Cluster`] after that long instead.
//!
//! # Resources
//!
//! - A caller keeps at most `window` bytes (32 MiB) of its tasks in Redis;
//!   the rest waits in the caller until results come back. Chunks are cut
//!   past 4 MiB or `max_payload`, and sized for the live workers.
//! - With `cluster=true` the URL names any node of a Redis Cluster (and
//!   `seeds=host:port,...` more): a queue's keys share one hash slot
//!   (`procpool:{queue}:...`) and callers and workers talk to the node
//!   that owns it, found through any node they know, so the death of the
//!   node in the URL stops nothing once a replica took over.
//! - [`inspect`] reports a queue's workers (what each runs, as of now),
//!   tasks (and the oldest waiting task's age), dead consumers, callers
//!   (host, pid, backlog) and Redis' memory; the `procpool-inspect` binary
//!   prints it.
//!
//! # Security
//!
//! Anyone who can write to the Redis database can submit tasks and forge
//! results, unless the queue has a `key` (URL parameter, or the environment
//! variable `PROCPOOL_KEY`): then every task and result carries an
//! HMAC-SHA256 tag, and workers drop tasks, callers results, without a
//! valid one. A task's tag also covers its expiry (a day after it was
//! signed, on Redis' clock), and the caller's presence key carries a tag
//! over its expiry and watermark: nobody without the key can revive a
//! caller that is gone or reopen its settled tasks. Without a key, workers
//! still drop plain copies of a task, but nothing is authenticated. Protect the database too, with a password or ACL user
//! (`redis://user:password@host`) and TLS (`rediss://`; the server's
//! certificate goes unchecked only with `tls_insecure=true`, which every
//! process warns about, never by the redis crate's `#insecure` fragment).
//! Dropped forged or replayed tasks and forged results are reported through
//! the `log` crate, or on stderr when no logger would show them. A worker runs
//! only `#[pool_job]` functions registered in its own binary and refuses
//! tasks and results over `max_payload`. A caller's presence key expires
//! `presence` seconds (10) after its last refresh, and workers then drop
//! its queued tasks unrun (a caller that was only paused sends those again
//! when it comes back); its results and the task streams it used expire
//! `ttl` seconds after, even if no worker runs.
//! The URL, password included, reaches the worker processes that
//! [`Workers`] starts through their environment, which only the same user
//! can read.
//!
#![doc = include_str!("guide.md")]

mod auth;
mod backend;
#[cfg(feature = "dashboard")]
mod fleet;
mod heartbeat;
mod inspect;
mod link;
mod protocol;
mod recover;
mod serve;
mod settings;
mod supervise;

pub(crate) use backend::ClusterBackend;
#[cfg(feature = "dashboard")]
pub use fleet::{FleetDashboard, serve_inspection};
pub use inspect::{CallerReport, DeadConsumer, JobReport, QueueReport, WorkerReport, inspect};
pub use supervise::Workers;

use crate::Error;

/// Turns the current process into one cluster worker: it serves every
/// `#[pool_job]` linked into this binary from the queue named by `url` (see
/// [`PoolBuilder::cluster`](crate::PoolBuilder::cluster)) until it gets
/// SIGINT or SIGTERM, then finishes its current task and returns `Ok(())`.
/// A second signal stops it at once (its task goes to another worker).
///
/// Fails at once if the URL is invalid, Redis cannot be reached or refuses
/// the credentials, or the job registry is inconsistent. Once serving, it
/// rides out lost connections and Redis restarts by reconnecting.
///
/// The process handles its jobs one at a time; start several (see
/// [`run_workers`]) to use several cores. It also takes over the panic
/// hook, so that a job's panic goes to its caller rather than to stderr.
///
/// ```no_run
/// fn main() -> Result<(), procpool::Error> {
///     procpool::cluster::serve("redis://:password@10.0.0.5:6379/0?queue=images")
/// }
/// ```
pub fn serve(url: &str) -> Result<(), Error> {
    serve::serve(url, None)
}

/// Runs `processes` cluster workers on this host (see [`Workers`]) until
/// this process gets SIGINT (Ctrl-C) or SIGTERM, then lets each finish its
/// current task and returns.
///
/// ```no_run
/// fn main() -> Result<(), procpool::Error> {
///     procpool::cluster::run_workers("redis://10.0.0.5:6379/0", procpool::cpu_count())
/// }
/// ```
pub fn run_workers(url: &str, processes: usize) -> Result<(), Error> {
    let workers = Workers::start(url, processes)?;
    serve::install_stop_handlers();
    while !serve::stopping() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    workers.stop()
}

/// Whether this process was started by [`Workers`] as a cluster worker.
pub(crate) fn started_as_worker() -> bool {
    std::env::var_os(supervise::CLUSTER_ENV).is_some()
}

/// Called by procpool's start-up hook: a process started by [`Workers`]
/// serves the queue and exits, without reaching `main`.
pub(crate) fn bootstrap() {
    let Some(url) = std::env::var_os(supervise::CLUSTER_ENV) else {
        return;
    };
    let parent = std::env::var(crate::sys::PARENT_ENV).ok();
    let suffix = std::env::var(supervise::SUFFIX_ENV).ok();
    // SAFETY: start-up hooks run while the process has one thread.
    unsafe {
        std::env::remove_var(supervise::CLUSTER_ENV);
        std::env::remove_var(supervise::SUFFIX_ENV);
        std::env::remove_var(crate::sys::PARENT_ENV);
    }
    // Stop with the supervisor, even if it is killed with SIGKILL.
    if !crate::sys::tie_to_parent(crate::sys::Signal::TERM, parent) {
        eprintln!(
            "procpool cluster worker {}: the process that started it is gone; exiting",
            std::process::id()
        );
        std::process::exit(1);
    }
    let code = match url.into_string() {
        Ok(url) => match serve::serve(&url, suffix) {
            Ok(()) => 0,
            Err(err) => {
                eprintln!(
                    "procpool cluster worker {}: {}",
                    std::process::id(),
                    with_causes(&err)
                );
                1
            }
        },
        Err(_) => {
            eprintln!("procpool: {} is not valid UTF-8", supervise::CLUSTER_ENV);
            1
        }
    };
    std::process::exit(code);
}

/// Reports something an operator must know (a dropped forged or replayed
/// task, a forged result, certificate checks turned off) through the `log`
/// crate, or on stderr when no logger would show a warning: a worker binary
/// that installed no logger still says it.
pub(crate) fn warn(message: std::fmt::Arguments<'_>) {
    if log::log_enabled!(log::Level::Warn) {
        log::warn!("{message}");
    } else {
        // One write: workers sharing a terminal do not interleave lines.
        let line = format!("{message}\n");
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    }
}

/// `err` and its causes, as anyhow's `{:#}` prints them: for a line on
/// stderr, where nobody can ask for the source of the error (an
/// [`Error::Cluster`] says Redis' error only there).
pub(crate) fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        text += ": ";
        text += &inner.to_string();
        cause = inner.source();
    }
    text
}
