//! The one error type every fallible procpool call returns.

use std::fmt;
use std::sync::Arc;

/// How a worker process ended.
///
/// Follows Python's `Process.exitcode` convention in [`ExitCause::python_exit_code`]:
/// a normal exit is its code, a death by signal `N` is `-N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExitCause {
    /// The process called `exit` (or returned from `main`) with this code.
    Code(i32),
    /// The process was killed by this signal number (9 for SIGKILL, 11 for SIGSEGV, ...).
    Signal(i32),
    /// The process ended but its status could not be read (it was reaped elsewhere).
    Unknown,
    /// The process ended, but its status could not be read because this
    /// program ignores `SIGCHLD` (or set `SA_NOCLDWAIT`): the kernel then
    /// reaps its children itself and keeps no exit status for it. Restore
    /// `SIGCHLD`'s default disposition to see exit codes and signals.
    SigchldIgnored,
}

impl ExitCause {
    /// The Python-style exit code: `Some(code)` for a normal exit, `Some(-N)`
    /// for signal `N`; `None` when the process ended with a status that
    /// could not be read ([`ExitCause::Unknown`], [`ExitCause::SigchldIgnored`]).
    pub fn python_exit_code(self) -> Option<i32> {
        match self {
            ExitCause::Code(c) => Some(c),
            ExitCause::Signal(s) => Some(-s),
            ExitCause::Unknown | ExitCause::SigchldIgnored => None,
        }
    }

    pub(crate) fn from_status(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => ExitCause::Code(code),
            (None, Some(sig)) => ExitCause::Signal(sig),
            (None, None) => ExitCause::Unknown,
        }
    }
}

impl From<crate::sys::Exit> for ExitCause {
    fn from(exit: crate::sys::Exit) -> Self {
        match exit {
            crate::sys::Exit::Code(code) => ExitCause::Code(code),
            crate::sys::Exit::Signal(signal) => ExitCause::Signal(signal),
            crate::sys::Exit::Unknown => ExitCause::Unknown,
            crate::sys::Exit::SigchldIgnored => ExitCause::SigchldIgnored,
        }
    }
}

impl fmt::Display for ExitCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitCause::Code(code) => write!(f, "exited with code {code}"),
            ExitCause::Signal(sig) => {
                let name = crate::sys::signal_name(sig).unwrap_or("unknown signal");
                write!(f, "killed by signal {sig} ({name})")
            }
            ExitCause::Unknown => f.write_str("ended with an unknown status"),
            ExitCause::SigchldIgnored => f.write_str(
                "ended, but its exit status could not be read because this program ignores \
                 SIGCHLD (the kernel reaps its children itself; restore SIGCHLD's default \
                 disposition to see exit codes and signals)",
            ),
        }
    }
}

/// Everything that can go wrong when work is sent to other processes.
///
/// Each variant's `Display` text says what happened and, where there is
/// something to do about it, what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The job panicked while processing one item. The worker survived and
    /// the pool is still usable.
    #[error("job `{job}` panicked on item {index}: {message}")]
    Panicked {
        /// Registered name of the job.
        job: String,
        /// Position of the failing item in the call's input (0 for `apply`).
        index: usize,
        /// The panic message, with the source location when known.
        message: String,
    },

    /// A worker process ended while it was running a task: it crashed, called
    /// `exit`, was killed (by `kill -9`, the OOM killer, ...). The pool has
    /// already started a replacement.
    #[error(
        "worker process {pid} {cause} while running job `{job}` on items {first}..{end}{advice}",
        end = first + count,
        advice = died_advice(*attempts)
    )]
    WorkerDied {
        /// Registered name of the job that was running.
        job: String,
        /// Process id of the worker that died.
        pid: u32,
        /// Its exit code or the signal that killed it.
        cause: ExitCause,
        /// Index of the first input item of the task that was lost.
        first: usize,
        /// Number of input items in that task.
        count: usize,
        /// How many times the task was started: 1, or up to 1 + `retries`
        /// with [`PoolBuilder::retries`](crate::PoolBuilder::retries); the
        /// pid and cause are those of the last attempt.
        attempts: usize,
    },

    /// The pool no longer accepts work: [`Pool::close`](crate::Pool::close),
    /// [`Pool::join`](crate::Pool::join) or [`Pool::terminate`](crate::Pool::terminate)
    /// was called. Build a new pool to submit more.
    #[error("the pool is closed and accepts no new work; create a new Pool to submit more")]
    Closed,

    /// The call was cancelled with
    /// [`AsyncResult::cancel`](crate::AsyncResult::cancel) before its result
    /// arrived: its tasks that had not started were skipped, and the results
    /// of those already running were discarded.
    #[error(
        "the call of job `{job}` was cancelled before it finished: its queued tasks were \
         skipped and the results of running ones discarded"
    )]
    Cancelled {
        /// Registered name of the job.
        job: String,
    },

    /// The pool was terminated (or dropped) while this call was still running.
    #[error("the pool was terminated while job `{job}` was pending; its result is lost")]
    Terminated {
        /// Registered name of the job whose result was lost.
        job: String,
    },

    /// A value could not go through the channel between processes.
    #[error("job `{job}`: cannot {direction}: {message}")]
    Serialization {
        /// Registered name of the job.
        job: String,
        /// What failed, e.g. "serialize argument 3" or "decode the result of item 0".
        direction: String,
        /// The underlying message, including the text of a failing `Serialize` impl.
        message: String,
    },

    /// A worker process could not be started or did not connect back: it
    /// died or timed out while starting, or its greeting was wrong. When
    /// the operating system refused what a start needed (processes, file
    /// descriptors, memory), the error is [`Error::System`] instead, with
    /// the OS error as its source.
    #[error("could not start a worker process: {0}")]
    Spawn(String),

    /// The worker does not know the job it was sent. Only happens when the
    /// worker runs a different binary than the caller.
    #[error(
        "the worker has no job registered as `{0}`; workers run the caller's own executable, \
         so this means the binary changed on disk or the message was forged"
    )]
    UnknownJob(String),

    /// The pool's initializer failed (panicked) in a new worker, so the pool
    /// could not start or could not replace a worker.
    #[error(
        "the initializer job `{job}` failed in a new worker, so the pool cannot start it: {message}"
    )]
    InitializerFailed {
        /// Registered name of the initializer job.
        job: String,
        /// What went wrong.
        message: String,
    },

    /// An item ran longer than the pool's `task_timeout` (on a local pool,
    /// `count` is 1: the limit is per item); its worker was killed and
    /// replaced. On a cluster pool the limit applies to a whole task, and
    /// `first..first + count` are its items.
    #[error(
        "job `{job}` on {items} ran longer than the task timeout of {timeout:?}; its worker \
         was killed and replaced",
        items = item_range(*first, *count)
    )]
    TaskTimedOut {
        /// Registered name of the job.
        job: String,
        /// Index of the first input item that ran over (of the task's
        /// items, on a cluster pool).
        first: usize,
        /// Number of input items that failed (1 on a local pool).
        count: usize,
        /// The configured limit.
        timeout: std::time::Duration,
    },

    /// [`AsyncResult::get_timeout`](crate::AsyncResult::get_timeout) gave up
    /// waiting. The call is still running; wait again to get its result.
    #[error("no result within {0:?}; the call is still running, wait again to get its result")]
    Timeout(std::time::Duration),

    /// The pool was configured with an impossible setting.
    #[error("invalid pool configuration: {0}")]
    Config(String),

    /// The job registry is inconsistent, e.g. two functions registered under one name.
    #[error("job registry error: {0}")]
    Registry(String),

    /// A cluster pool or worker (see `PoolBuilder::cluster`, cargo feature
    /// `cluster`) failed: Redis could not be reached or refused a command,
    /// Redis lost a pending call's tasks, a worker dropped a task unrun
    /// (it expired, or its caller's presence was gone), or no worker was
    /// alive for `no_workers` seconds. `message` says what procpool was
    /// doing, names the server (its password masked) and, where there is
    /// something to do, what; `source` is the Redis or I/O error
    /// underneath, when there is one, and is what
    /// [`source`](std::error::Error::source) returns: print the chain
    /// (e.g. anyhow's `{:#}`) to see both.
    #[error("cluster broker error: {message}")]
    Cluster {
        /// What procpool was doing and what to check, e.g. "cannot connect
        /// (redis://10.0.0.5:6379/0); check that redis-server runs there
        /// and is reachable from this host".
        message: String,
        /// The Redis or I/O error that caused it; `None` when nothing
        /// failed underneath (Redis lost a task, a worker dropped one, no
        /// worker was alive).
        #[source]
        source: Option<ClusterCause>,
    },

    /// A cluster task was handed to workers again and again, and each one
    /// was lost before it stored a result (it crashed, was killed, or lost
    /// its connection for longer than the visibility timeout).
    #[error(
        "job `{job}` on items {first}..{end} was delivered to {deliveries} cluster workers and \
         each was lost before storing a result (crash, kill or lost connection); the task is \
         dropped. If the job crashes its process, fix the job; to allow more attempts, raise \
         max_deliveries in the workers' URL",
        end = first + count
    )]
    TaskLost {
        /// Registered name of the job.
        job: String,
        /// Index of the first input item of the task.
        first: usize,
        /// Number of input items in the task.
        count: usize,
        /// How many times the task was delivered.
        deliveries: u64,
    },

    /// A cluster task or result is larger than the limit set with
    /// `max_payload` in the cluster URL, so it was not sent.
    #[error(
        "job `{job}`: {what} is {bytes} bytes, over the cluster's limit of {limit} bytes; \
         send smaller chunks (pool.chunksize(n)) or smaller items, or raise max_payload in the \
         cluster URL of the callers and workers"
    )]
    PayloadTooLarge {
        /// Registered name of the job.
        job: String,
        /// What was too large, e.g. "the task for items 0..100".
        what: String,
        /// Its size.
        bytes: u64,
        /// The limit that applied.
        limit: u64,
    },

    /// Communication with a worker failed in an unexpected way, or a
    /// worker broke the protocol (an OS error on the way is
    /// [`Error::System`] instead) (a job wrote to the worker's channel or
    /// forked a process that answered); the worker was replaced.
    #[error("inter-process communication failed: {0}")]
    Ipc(String),

    /// The operating system refused something procpool needed (file
    /// descriptors, memory, processes). The text says what procpool was
    /// doing and, where there is something to change, what;
    /// [`source`](std::error::Error::source) is the operating system's
    /// error (print the chain, e.g. anyhow's `{:#}`, to see both).
    #[error("{context}{advice}", advice = cause.advice())]
    System {
        /// What procpool was doing, e.g. "could not start a worker process".
        context: String,
        /// The operating system's error.
        #[source]
        cause: IoCause,
    },

    /// A [`Queue`](crate::Queue), [`Connection`](crate::Connection) or
    /// other exchange handle can make no more progress, so a wait on it
    /// ended instead of hanging: the other end of a pipe is closed, or no
    /// other live process holds a queue that is empty (for `get`) or full
    /// (for `put`). The text says which.
    #[error("{0}")]
    Disconnected(String),

    /// The API was used in a way that cannot work, e.g. taking a call's
    /// result a second time after [`AsyncResult::get_timeout`](crate::AsyncResult::get_timeout)
    /// returned it.
    #[error("procpool used incorrectly: {0}")]
    Misuse(String),
}

/// "item 7", or "items 3..9".
fn item_range(first: usize, count: usize) -> String {
    if count == 1 {
        format!("item {first}")
    } else {
        format!("items {first}..{}", first + count)
    }
}

/// The end of a [`Error::WorkerDied`] message: what to do, given how many
/// times the task was tried.
fn died_advice(attempts: usize) -> String {
    if attempts > 1 {
        format!(
            ", the last of {attempts} attempts (1 run and {} retries, each on a fresh worker): \
             the job crashes its process every time (abort, segfault, exit, out of memory); \
             fix the job",
            attempts - 1
        )
    } else {
        "; the pool replaced the worker. If the job crashes the process (abort, segfault, \
         exit, out of memory), fix the job, or let the pool re-run it with \
         Pool::builder().retries(n)"
            .to_owned()
    }
}

/// The text of a panic's payload (`panic!("...")` gives a `&str` or a
/// `String`; anything else has no text).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "Box<dyn Any>".to_owned())
}

impl Error {
    /// An [`Error::System`] for `err`, met while doing `context`.
    pub(crate) fn system(context: impl Into<String>, err: std::io::Error) -> Self {
        Error::System {
            context: context.into(),
            cause: IoCause(Arc::new(err)),
        }
    }
}

impl Error {
    /// An [`Error::Cluster`] with nothing underneath.
    #[cfg(feature = "cluster")]
    pub(crate) fn cluster(message: impl Into<String>) -> Self {
        Error::Cluster {
            message: message.into(),
            source: None,
        }
    }

    /// An [`Error::Cluster`] caused by `cause`, met while doing what
    /// `message` says.
    #[cfg(feature = "cluster")]
    pub(crate) fn cluster_caused(message: impl Into<String>, cause: ClusterCause) -> Self {
        Error::Cluster {
            message: message.into(),
            source: Some(cause),
        }
    }
}

/// The error underneath an [`Error::Cluster`]: Redis' error (a refused
/// command, or a connection that failed, with its I/O error) or an I/O
/// error. Shared, so that `Error` stays `Clone`. It displays as that
/// error's own text; the `Cluster` error it belongs to says what procpool
/// was doing.
#[derive(Debug, Clone)]
pub struct ClusterCause(CauseRepr);

// Without the `cluster` feature nothing makes a cause: the type exists so
// that `Error` has the same shape with every set of features.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
enum CauseRepr {
    #[cfg(feature = "cluster")]
    Redis(Arc<redis::RedisError>),
    Io(Arc<std::io::Error>),
}

impl ClusterCause {
    #[cfg(feature = "cluster")]
    pub(crate) fn redis(err: redis::RedisError) -> Self {
        ClusterCause(CauseRepr::Redis(Arc::new(err)))
    }

    #[cfg(feature = "cluster")]
    pub(crate) fn io(err: std::io::Error) -> Self {
        ClusterCause(CauseRepr::Io(Arc::new(err)))
    }

    /// Redis' error, when the cause is one. Its type is the `redis`
    /// crate's, of the version procpool depends on.
    #[cfg(feature = "cluster")]
    pub fn redis_error(&self) -> Option<&redis::RedisError> {
        match &self.0 {
            CauseRepr::Redis(err) => Some(err),
            CauseRepr::Io(_) => None,
        }
    }

    /// The I/O error: the cause itself, or the one under Redis' error
    /// (a refused connection, a timeout, a TLS failure).
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match &self.0 {
            CauseRepr::Io(err) => Some(err),
            #[cfg(feature = "cluster")]
            CauseRepr::Redis(err) => {
                // Redis keeps the I/O error of a failed connection as an
                // `Arc<dyn Error>`, which is what its `source()` returns.
                let inner = std::error::Error::source(&**err)?;
                inner.downcast_ref::<std::io::Error>().or_else(|| {
                    inner
                        .downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>()?
                        .downcast_ref::<std::io::Error>()
                })
            }
        }
    }

    fn inner(&self) -> &(dyn std::error::Error + 'static) {
        match &self.0 {
            #[cfg(feature = "cluster")]
            CauseRepr::Redis(err) => &**err,
            CauseRepr::Io(err) => &**err,
        }
    }
}

impl fmt::Display for ClusterCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.inner(), f)
    }
}

// What lies under the error this cause displays, skipping the errors whose
// text it displayed already: Redis' error displays the error it wraps (an
// I/O error, a server's reply) and also returns it from `source()`, and an
// io::Error does the same with its own, so a printed chain would say the
// OS error twice.
impl std::error::Error for ClusterCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let shown = self.inner().to_string();
        let mut next = self.inner().source();
        while let Some(err) = next
            && err.to_string() == shown
        {
            next = err.source();
        }
        next
    }
}

/// Two causes are equal when they are the same kind of error with the same
/// text (Redis' errors) or the same OS error (I/O errors).
impl PartialEq for ClusterCause {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            #[cfg(feature = "cluster")]
            (CauseRepr::Redis(a), CauseRepr::Redis(b)) => {
                a.kind() == b.kind() && a.to_string() == b.to_string()
            }
            (CauseRepr::Io(a), CauseRepr::Io(b)) => {
                a.kind() == b.kind() && a.raw_os_error() == b.raw_os_error()
            }
            #[cfg(feature = "cluster")]
            _ => false,
        }
    }
}

impl Eq for ClusterCause {}

/// An operating-system error kept by [`Error::System`]: shared, so that
/// `Error` stays `Clone`. It displays as the OS error itself (the system's
/// text and number); the `System` error it belongs to says what to do.
#[derive(Debug, Clone)]
pub struct IoCause(Arc<std::io::Error>);

impl IoCause {
    /// The underlying error.
    pub fn io_error(&self) -> &std::io::Error {
        &self.0
    }

    /// `": what to do"`, when there is something to do, for
    /// [`Error::System`]'s text.
    fn advice(&self) -> String {
        crate::sys::io_advice(&self.0).map_or_else(String::new, |advice| format!(": {advice}"))
    }
}

impl fmt::Display for IoCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

// The io::Error's own source, not the io::Error again: its text is this
// cause's text, and a printed chain says each thing once.
impl std::error::Error for IoCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.0)
    }
}

/// Two causes are equal when they are the same kind of OS error.
impl PartialEq for IoCause {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind() == other.0.kind() && self.0.raw_os_error() == other.0.raw_os_error()
    }
}

impl Eq for IoCause {}

#[cfg(test)]
mod tests {
    use super::Error;

    /// `err` and its causes, as anyhow's `{:#}` prints them.
    fn chain(err: &Error) -> String {
        let mut text = err.to_string();
        let mut cause = std::error::Error::source(err);
        while let Some(inner) = cause {
            text += &format!(": {inner}");
            cause = inner.source();
        }
        text
    }

    #[test]
    fn a_system_errors_chain_says_the_os_error_once_and_what_to_do_once() {
        for (errno, advice) in [
            (libc::EMFILE, Some("ulimit -n")),
            (libc::EAGAIN, Some("ulimit -u")),
            (libc::EACCES, None),
        ] {
            let os = std::io::Error::from_raw_os_error(errno).to_string();
            let err = Error::system(
                "could not start a worker process",
                std::io::Error::from_raw_os_error(errno),
            );
            let printed = chain(&err);
            assert_eq!(printed.matches(&os).count(), 1, "{printed}");
            assert_eq!(
                printed.matches("could not start a worker process").count(),
                1,
                "{printed}"
            );
            if let Some(advice) = advice {
                assert_eq!(printed.matches(advice).count(), 1, "{printed}");
                assert!(err.to_string().contains(advice), "{err}");
            }
            // The cause is reachable for code, with its number.
            let cause = std::error::Error::source(&err)
                .and_then(|cause| cause.downcast_ref::<super::IoCause>())
                .map(|cause| cause.io_error().raw_os_error());
            assert_eq!(cause, Some(Some(errno)), "{printed}");
        }
    }
    /// A failed connection to Redis: Redis' error wraps the OS error, and
    /// both display the same text; the chain says it once, after what
    /// procpool was doing and what to check, each said once.
    #[cfg(feature = "cluster")]
    #[test]
    fn a_cluster_errors_chain_says_the_redis_error_once() {
        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        let os = refused.to_string();
        let err = Error::cluster_caused(
            "cannot connect (redis://127.0.0.1:1/0); check that redis-server runs there",
            super::ClusterCause::redis(redis::RedisError::from(refused)),
        );
        let printed = chain(&err);
        assert_eq!(printed.matches(&os).count(), 1, "{printed}");
        assert_eq!(printed.matches("cannot connect").count(), 1, "{printed}");
        assert_eq!(printed.matches("redis-server").count(), 1, "{printed}");
        assert!(!err.to_string().contains(&os), "{err}");
        // The cause is reachable for code: Redis' error, and the OS error
        // under it, with its number.
        let cause = std::error::Error::source(&err)
            .and_then(|cause| cause.downcast_ref::<super::ClusterCause>())
            .expect("a ClusterCause");
        assert!(
            cause
                .redis_error()
                .is_some_and(|e| e.is_connection_refusal())
        );
        let errno = cause.io_error().and_then(std::io::Error::raw_os_error);
        assert_eq!(errno, Some(libc::ECONNREFUSED), "{printed}");
        assert_eq!(err, err.clone());

        // A command Redis refused: its reply, once.
        let refused = redis::make_extension_error(
            "WRONGPASS".into(),
            Some("invalid username-password pair".into()),
        );
        let err = Error::cluster_caused(
            "cannot connect (redis://127.0.0.1:6379/0); check the user and password",
            super::ClusterCause::redis(refused),
        );
        let printed = chain(&err);
        assert_eq!(printed.matches("WRONGPASS").count(), 1, "{printed}");
        assert_eq!(printed.matches("invalid username").count(), 1, "{printed}");

        // With nothing underneath, the chain is the message alone.
        let err = Error::cluster("no worker was alive");
        assert_eq!(chain(&err), "cluster broker error: no worker was alive");
        assert!(std::error::Error::source(&err).is_none());
    }
}
