//! `Process`: one job in one new process, like Python's `multiprocessing.Process`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::Error;
use crate::error::ExitCause;
use crate::job::{Decode, IntoJob, JobArgs};
use crate::local::launch::{ForkFrom, Lost, WorkerProcess};
use crate::local::messages::{FromWorker, ToWorker};
use crate::sys::{self, CopyFailed, ReplyCopy};

/// Python numbers processes across the whole program: `Process-1`, `Process-2`, ...
static PROCESS_NUMBER: AtomicU64 = AtomicU64::new(0);

/// How long a process may take to exit after sending its result.
const EXIT_AFTER_REPLY: Duration = Duration::from_secs(10);

/// Nothing aborts a `Process` start but its own timeout.
static NEVER: AtomicBool = AtomicBool::new(false);

/// One job running in its own process, like Python's `multiprocessing.Process`.
///
/// The process runs the job once and exits: with code 0 if it returned,
/// 1 if it panicked. [`join`](Process::join) returns the job's value,
/// something Python's `Process` cannot do.
///
/// ```
/// use procpool::{pool_job, Process};
///
/// #[pool_job]
/// fn greet(name: String) -> String {
///     format!("hello {name} from {}", procpool::current_process().name())
/// }
///
/// # fn main() -> Result<(), procpool::Error> {
/// let mut process = Process::builder().name("greeter").spawn(greet, "Ada".to_string())?;
/// assert_eq!(process.name(), "greeter");
/// assert_eq!(process.join()?, "hello Ada from greeter");
/// # Ok(())
/// # }
/// ```
///
/// Dropping a `Process` that was not joined kills it (SIGKILL) and reaps
/// it, so no process outlives its handle.
#[must_use = "dropping a Process kills it at once; keep the handle and call .join() for its result"]
pub struct Process<R> {
    worker: WorkerProcess,
    name: String,
    job: &'static str,
    decode: Decode<R>,
    /// Whether `join` returned the job's outcome: it is returned once.
    joined: bool,
}

impl<R> std::fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("pid", &self.worker.pid())
            .field("job", &self.job)
            .finish()
    }
}

/// Settings for a [`Process`]. Created by [`Process::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until .spawn() is called"]
pub struct ProcessBuilder {
    name: Option<String>,
    spawn_timeout: Duration,
}

impl ProcessBuilder {
    /// The name `current_process().name()` reports inside the job. Defaults
    /// to `Process-N`, numbered like Python's.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How long the process may take to start. Defaults to 10 seconds;
    /// `Duration::MAX` waits without a limit.
    pub fn spawn_timeout(mut self, timeout: Duration) -> Self {
        self.spawn_timeout = timeout;
        self
    }

    /// Starts a process running `job(arg)`. Returns once it runs.
    pub fn spawn<J, A, R>(self, job: J, arg: A::Item) -> Result<Process<R>, Error>
    where
        J: IntoJob<Args = A, Output = R>,
        A: JobArgs,
        R: 'static,
    {
        let name = self.name.unwrap_or_else(|| {
            format!(
                "Process-{}",
                PROCESS_NUMBER.fetch_add(1, Ordering::Relaxed) + 1
            )
        });
        let (items, attached) = crate::job::encode_one_attached(&job, &arg).map_err(|problem| {
            crate::codec::error_for(job.name(), "serialize the argument".to_owned(), problem)
        })?;
        let mut worker = WorkerProcess::spawn(
            &name,
            self.spawn_timeout,
            &NEVER,
            None,
            ForkFrom::LongLivedThread,
        )?;
        // SAFETY: the worker was sent no task yet.
        let items = unsafe { worker.stage(&items, &[]) }
            .map_err(|err| Error::system("cannot put the argument in shared memory", err))?;
        let run = ToWorker::Run {
            task: 1,
            job: job.name().to_owned(),
            count: 1,
            items,
            last: true,
            attached: u32::try_from(attached.len()).unwrap_or(u32::MAX),
        };
        for attachment in &attached {
            attachment.sent_to(worker.pid());
        }
        let fds: Vec<_> = attached.iter().map(|a| a.fd()).collect();
        // A send fails only if the process is already gone; join reports how.
        let _ = worker.send_attached(run, &fds, None, &NEVER);
        // The handles' descriptors are the process's now: none stays here,
        // so a Pipe's end given to it closes when it ends.
        drop(fds);
        drop(attached);
        Ok(Process {
            worker,
            name,
            job: job.name(),
            decode: Decode::of(&job),
            joined: false,
        })
    }
}

impl Process<()> {
    /// A builder, to name the process.
    pub fn builder() -> ProcessBuilder {
        ProcessBuilder {
            name: None,
            spawn_timeout: Duration::from_secs(10),
        }
    }
}

impl<R: 'static> Process<R> {
    /// Starts a process running `job(arg)`, named `Process-N`.
    pub fn spawn<J, A>(job: J, arg: A::Item) -> Result<Process<R>, Error>
    where
        J: IntoJob<Args = A, Output = R>,
        A: JobArgs,
    {
        Process::builder().spawn(job, arg)
    }

    /// The operating system's process id.
    pub fn pid(&self) -> u32 {
        self.worker.pid()
    }

    /// The process's name, unique unless you chose it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the process is still running: `false` once it ended, even
    /// when how it ended cannot be read (see [`exit_cause`](Process::exit_cause)).
    pub fn is_alive(&self) -> bool {
        self.worker.peek_exit().is_none()
    }

    /// Python's `exitcode`: `None` while running, the exit code once it
    /// exited (0 after the job returned, 1 after it panicked), `-N` if it was
    /// killed by signal `N`.
    ///
    /// Also `None` for a process that ended with a status that cannot be
    /// read, as when this program ignores `SIGCHLD` (the kernel then reaps
    /// children itself): [`is_alive`](Process::is_alive) is `false` then,
    /// and [`exit_cause`](Process::exit_cause) says why.
    pub fn exit_code(&self) -> Option<i32> {
        self.exit_cause().and_then(ExitCause::python_exit_code)
    }

    /// How the process ended, or `None` while it runs: its exit code, the
    /// signal that killed it, or [`ExitCause::SigchldIgnored`] when this
    /// program ignores `SIGCHLD` and the kernel kept no status.
    pub fn exit_cause(&self) -> Option<ExitCause> {
        self.worker.peek_exit()
    }

    /// Asks the process to stop (SIGTERM).
    pub fn terminate(&self) {
        self.worker.signal(sys::Signal::TERM);
    }

    /// Kills the process (SIGKILL).
    pub fn kill(&self) {
        self.worker.signal(sys::Signal::KILL);
    }

    /// Waits for the job to finish and returns its value; the process has
    /// exited when this returns, so [`exit_code`](Process::exit_code) tells
    /// how, as Python's `p.join(); p.exitcode` does:
    ///
    /// ```
    /// # use procpool::{pool_job, Process};
    /// # #[pool_job]
    /// # fn double(x: u64) -> u64 { x * 2 }
    /// # fn main() -> Result<(), procpool::Error> {
    /// let mut process = Process::spawn(double, 21)?;
    /// assert_eq!(process.join()?, 42);
    /// assert_eq!(process.exit_code(), Some(0));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// [`Error::Panicked`] if the job panicked, [`Error::WorkerDied`] if the
    /// process was killed or exited before answering. The outcome is
    /// returned once: a second `join` is [`Error::Misuse`].
    pub fn join(&mut self) -> Result<R, Error> {
        self.wait_result(None)
    }

    /// Like [`join`](Process::join), but gives up after `timeout` with
    /// [`Error::Timeout`]; the process keeps running and the handle stays
    /// usable, so join again later to get the value. `Duration::MAX` waits
    /// as long as [`join`](Process::join).
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<R, Error> {
        self.wait_result(Some(timeout))
    }

    fn wait_result(&mut self, timeout: Option<Duration>) -> Result<R, Error> {
        if self.joined {
            return Err(Error::Misuse(format!(
                "process {} ({}) was joined already and its outcome returned then; an \
                 outcome is returned once (keep the value, or clone it)",
                self.worker.pid(),
                self.name
            )));
        }
        let outcome = self.wait_outcome(timeout);
        self.joined = !matches!(outcome, Err(Error::Timeout(_)));
        outcome
    }

    fn wait_outcome(&mut self, timeout: Option<Duration>) -> Result<R, Error> {
        // `Duration::MAX` is no deadline (see `crate::deadline`).
        let deadline = timeout.and_then(crate::deadline::after);
        let reply = match self.worker.recv_until(deadline, &NEVER) {
            Ok(Some(reply)) => reply,
            Ok(None) => return Err(Error::Timeout(timeout.unwrap_or_default())),
            Err(Lost::Died(cause)) => return Err(self.died(cause)),
            Err(Lost::System(err)) => {
                return Err(Error::system(
                    format!(
                        "could not read the result of process {} (job `{}`); it was killed",
                        self.worker.pid(),
                        self.job
                    ),
                    err,
                ));
            }
            Err(Lost::Aborted | Lost::TimedOut | Lost::Protocol(_)) => {
                return Err(self.died(ExitCause::Unknown));
            }
        };
        let outcome = match reply {
            FromWorker::Done { task: 1, len } => self.result(len),
            FromWorker::Failed { task: 1, failure } => Err(failure.into_error(self.job, 0)),
            FromWorker::Forked { .. } => Err(Error::Ipc(format!(
                "the process's job `{}` broke the protocol: {}",
                self.job,
                self.worker.forked_copy().unwrap_or_default()
            ))),
            other => Err(Error::Ipc(format!(
                "unexpected reply from the process: {other:?}"
            ))),
        };
        // The process exits right after its reply; one whose exit hangs
        // (an atexit handler, say) is not waited for without end.
        self.worker.wait_exit(EXIT_AFTER_REPLY);
        outcome
    }

    /// The process's result from its reply of `len` bytes: a number, byte
    /// string or string copied once, from the process's region straight
    /// into the value; anything else copied out, then decoded.
    fn result(&mut self, len: u64) -> Result<R, Error> {
        let job = self.job;
        let reply_error = |failed: CopyFailed| match failed {
            CopyFailed::NoMemory(_) => Error::system(
                format!("the result of process job `{job}`: {failed}"),
                std::io::Error::from(std::io::ErrorKind::OutOfMemory),
            ),
            CopyFailed::Outside(why) => Error::Ipc(format!("the process's reply: {why}")),
        };
        let reply = self.worker.reply_in_place(1, len).map_err(reply_error)?;
        let mut values = Vec::with_capacity(1);
        match crate::codec::values_in_place::<R>(&reply, 1, &mut values) {
            Ok(true) => {
                return values
                    .pop()
                    .ok_or_else(|| Error::Ipc("the process's reply held no result".into()));
            }
            Ok(false) => {}
            Err(problem) => {
                return Err(crate::codec::error_for(
                    job,
                    "decode the result of item 0".into(),
                    problem,
                ));
            }
        }
        let mut copy = ReplyCopy::default();
        copy.fill_from(&reply).map_err(reply_error)?;
        let mut outcomes = Vec::with_capacity(1);
        self.decode
            .outcomes(job, 0, 1, copy.bytes(), &mut outcomes)?;
        outcomes
            .pop()
            .unwrap_or_else(|| Err(Error::Ipc("the process's reply held no result".into())))
    }

    fn died(&self, cause: ExitCause) -> Error {
        Error::WorkerDied {
            job: self.job.to_owned(),
            pid: self.worker.pid(),
            cause,
            first: 0,
            count: 1,
            attempts: 1,
        }
    }
}
