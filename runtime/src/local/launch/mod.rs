//! Handles to worker processes: start one, talk to it, watch it die, reap it.
//!
//! A worker is a child of this process holding its end of a fresh socket
//! pair, its only descriptor of procpool's: forked by the program's worker
//! template ([`template`], the usual way), or this executable started
//! again with that end as its standard input ([`WORKER_ENV`] tells it so)
//! where the system refuses the template's fork. Every wait watches two
//! things: the channel, and a pidfd of the worker, so its death is seen at
//! once even when a process it forked still holds its socket. Every child
//! is reaped by the handle that owns it (on drop at the latest), so no
//! zombie outlives its handle.
//!
//! Here: starting a worker and its greeting. [`tasks`]: a running worker's
//! tasks and answers; [`ending`]: its end.

use std::os::fd::{AsFd, OwnedFd};
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustix::event::PollFlags;
use serde_bytes::ByteBuf;

use crate::Error;
use crate::error::ExitCause;
use crate::local::channel::{self, Channel, ChannelError};
use crate::local::messages::{FromWorker, ToWorker};
use crate::local::template::{self, Start};
use crate::sys::{self, Region, WORKER_ENV, WORKER_ON_STDIN};

mod ending;
mod tasks;

/// The longest single `poll`: how often a wait looks at its abort flag.
const STEP: Duration = Duration::from_millis(100);
/// How long a worker may take to exit after it was asked to before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// Why a conversation with a worker ended early.
#[derive(Debug)]
pub(crate) enum Lost {
    /// The worker process is gone (or unreachable) and has been reaped.
    Died(ExitCause),
    /// The caller asked to stop waiting.
    Aborted,
    /// No answer within the time limit; the worker has been killed and reaped.
    TimedOut,
    /// The worker said something out of turn (described); it has been
    /// killed and reaped, as nothing it says can be trusted any more.
    Protocol(String),
    /// This process could not send to or read from the worker (out of file
    /// descriptors or memory); the worker has been killed and reaped, as
    /// the exchange cannot be resumed.
    System(std::io::Error),
}

/// Which thread starts a worker by exec, when it does not come from the
/// template (whose workers' parent is always the long-lived thread that
/// started the template).
///
/// Linux sends `PR_SET_PDEATHSIG` when the *thread* that forked the child
/// exits, not the process, so the forking thread must outlive the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ForkFrom {
    /// The calling thread, which outlives the child (a pool's driver
    /// threads do: they stop their worker before they end). Drivers start
    /// their workers in parallel this way.
    ThisThread,
    /// One thread that lives as long as the program, for callers that may
    /// end first (a `Process` started from a short-lived thread).
    LongLivedThread,
}

/// A job run once in every new worker before it takes tasks.
#[derive(Debug, Clone)]
pub(crate) struct Initializer {
    pub(crate) job: &'static str,
    /// The encoded argument.
    pub(crate) arg: Vec<u8>,
    /// How long it may run (`PoolBuilder::initializer_timeout`); `None`:
    /// as long as it needs.
    pub(crate) timeout: Option<Duration>,
}

/// Where another thread can find a worker to kill it, and its pid.
///
/// The owning [`WorkerProcess`] holds the lock while it reaps and clears
/// the slot before releasing it; the slot holds the worker's pidfd, so
/// [`PidSlot::kill`] can never signal another process.
#[derive(Debug, Default)]
pub(crate) struct PidSlot(Mutex<Option<(u32, Arc<OwnedFd>)>>);

impl PidSlot {
    /// The registered worker's pid, if one is running.
    pub(crate) fn get(&self) -> Option<u32> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(pid, _)| *pid)
    }

    /// Sends SIGKILL to the registered worker, if any.
    pub(crate) fn kill(&self) {
        if let Some((_, pidfd)) = &*self.0.lock().unwrap_or_else(PoisonError::into_inner) {
            sys::send_signal(pidfd.as_fd(), sys::Signal::KILL);
        }
    }
}

/// A running worker process and its channel.
pub(crate) struct WorkerProcess {
    pid: u32,
    channel: Channel,
    /// Readable once the process has exited (whoever holds its socket).
    /// Shared with the [`PidSlot`] it is registered in.
    pidfd: Arc<OwnedFd>,
    reaped: Option<ExitCause>,
    slot: Option<Arc<PidSlot>>,
    /// Replies, written by the worker as each item finishes (see
    /// [`crate::reply_log`]), read here; made at `init`, kept for the
    /// worker's life (see [`crate::sys::Region`]).
    replies: Option<Region>,
    /// Large chunks of items, written here, read by the worker; made for
    /// the first large task, then kept.
    requests: Option<Region>,
    /// Whether the worker has the request region (a task carried it).
    requests_shared: bool,
    /// A copy of the worker that a job forked announced itself (its pid,
    /// and the task it was forked in): the worker is replaced after the
    /// task in hand.
    forked_copy: Option<(Option<u32>, u64)>,
}

/// What a wait saw first.
enum Event {
    Readable,
    Exited,
    Nothing,
}

impl WorkerProcess {
    /// Starts a worker named `name` (see [`WorkerProcess::launch`]) and waits until
    /// it is connected and initialised. Fails (never hangs) if the child dies
    /// first, does not say hello within `timeout`, or `abort` becomes true.
    pub(crate) fn spawn(
        name: &str,
        timeout: Duration,
        abort: &AtomicBool,
        initializer: Option<&Initializer>,
        fork_from: ForkFrom,
    ) -> Result<Self, Error> {
        if !sys::bootstrap_ran() {
            return Err(Error::Spawn(sys::BOOTSTRAP_MISSING.into()));
        }
        // `Duration::MAX` waits without end (see `crate::deadline`).
        let deadline = crate::deadline::after_or_never(timeout);
        let mut worker = Self::launch(fork_from, deadline, timeout, abort)?;
        worker.handshake(deadline, timeout, abort)?;
        worker.init(name, initializer, deadline, timeout, abort)?;
        Ok(worker)
    }

    /// Starts the child with its end of a new channel as its only inherited
    /// descriptor of procpool's: forked by the program's worker template
    /// (`local::template`), or by exec where that is not possible. Opens a
    /// pidfd on it; from here on, dropping the handle kills and reaps it.
    fn launch(
        fork_from: ForkFrom,
        deadline: Instant,
        timeout: Duration,
        abort: &AtomicBool,
    ) -> Result<Self, Error> {
        let mut retried = false;
        loop {
            let (mut channel, theirs) = channel::pair()
                .and_then(|(channel, theirs)| Ok((channel, sys::above_stdio(theirs)?)))
                .map_err(|e| launch_error("create a worker's channel", e))?;
            let pid = match template::fork_worker(theirs.as_fd(), deadline, timeout, abort)? {
                // `theirs` is dropped at the end of this statement: only the
                // worker holds that end then.
                Start::Forked(pid) => pid,
                Start::Exec => exec_worker(theirs, fork_from)?,
                Start::Unknown if !retried => {
                    drop(theirs);
                    put_down_orphan(&mut channel, deadline);
                    retried = true;
                    continue;
                }
                Start::Unknown => {
                    return Err(Error::Spawn(
                        "the worker template died or broke its protocol twice while starting a \
                         worker"
                            .into(),
                    ));
                }
            };
            return Self::watch(pid, channel);
        }
    }

    /// The handle on a new child `pid` (not reaped, so its pid cannot have
    /// been reused): opens its pidfd, or kills and reaps it.
    fn watch(pid: u32, channel: Channel) -> Result<Self, Error> {
        match sys::open_pidfd(pid) {
            Ok(pidfd) => Ok(WorkerProcess {
                pid,
                channel,
                pidfd: Arc::new(pidfd),
                reaped: None,
                slot: None,
                replies: None,
                requests: None,
                requests_shared: false,
                forked_copy: None,
            }),
            Err(err) => {
                sys::kill_and_reap(pid);
                Err(launch_error("watch the worker process (pidfd_open)", err))
            }
        }
    }

    /// Waits, until `deadline`, for the worker's greeting from its own pid.
    fn handshake(
        &mut self,
        deadline: Instant,
        timeout: Duration,
        abort: &AtomicBool,
    ) -> Result<(), Error> {
        let spawn = |message: String| Err(Error::Spawn(message));
        match self.recv(Some(deadline), abort) {
            Ok(FromWorker::Hello { pid }) if pid == self.pid => Ok(()),
            Ok(other) => {
                self.kill_and_reap();
                spawn(format!(
                    "the worker's first message was not a greeting from itself: {other:?}"
                ))
            }
            Err(Lost::Died(cause)) => spawn(format!(
                "the worker process {cause} before connecting back (its stderr, above, may \
                 say why)"
            )),
            Err(Lost::TimedOut) => spawn(format!(
                "the worker did not connect back within {timeout:?}"
            )),
            Err(Lost::Aborted) => spawn("the pool was terminated".into()),
            Err(Lost::Protocol(why)) => spawn(format!("the worker's greeting was garbled: {why}")),
            Err(Lost::System(err)) => {
                Err(Error::system("could not read a new worker's greeting", err))
            }
        }
    }

    /// Names the worker and runs the initializer in it.
    fn init(
        &mut self,
        name: &str,
        initializer: Option<&Initializer>,
        deadline: Instant,
        timeout: Duration,
        abort: &AtomicBool,
    ) -> Result<(), Error> {
        let pid = self.pid;
        let init = ToWorker::Init {
            name: name.to_owned(),
            initializer: initializer
                .map(|init| (init.job.to_owned(), ByteBuf::from(init.arg.clone()))),
        };
        // An initializer may legitimately take long (loading a model, say):
        // only the connection is bounded by the start-up timeout then, and
        // the initializer by its own limit, if the pool has one.
        let init_limit = initializer.and_then(|init| init.timeout);
        let init_deadline = match initializer {
            Some(_) => init_limit.and_then(crate::deadline::after),
            None => Some(deadline),
        };
        let replies = Region::create().map_err(|err| {
            Error::system(
                "could not start a worker process: cannot create its shared memory",
                err,
            )
        })?;
        let reply = self
            .send_with(&init, &[replies.fd()], init_deadline, abort)
            .and_then(|()| self.recv(init_deadline, abort));
        self.replies = Some(replies);
        let job = initializer.map(|init| init.job).unwrap_or_default();
        let reply = reply.map_err(|lost| match lost {
            // Only the initializer's own limit can pass with one: `recv`
            // killed and reaped the worker.
            Lost::TimedOut if init_limit.is_some() => Error::InitializerFailed {
                job: job.to_owned(),
                message: format!(
                    "it ran longer than the initializer_timeout of {:?}; the worker was killed",
                    init_limit.unwrap_or_default()
                ),
            },
            Lost::Died(cause) => {
                Error::Spawn(format!("the worker process {pid} {cause} while starting"))
            }
            Lost::TimedOut => Error::Spawn(format!("the worker did not start within {timeout:?}")),
            Lost::Aborted => Error::Spawn("the worker start was interrupted".to_owned()),
            Lost::Protocol(why) => Error::Spawn(format!("the worker broke the protocol: {why}")),
            Lost::System(err) => Error::system("could not start a worker process", err),
        })?;
        match reply {
            FromWorker::Ready => Ok(()),
            FromWorker::Failed { failure, .. } => Err(Error::InitializerFailed {
                job: job.to_owned(),
                message: failure.into_error(job, 0).to_string(),
            }),
            other => Err(Error::Spawn(format!(
                "the worker sent an unexpected reply: {other:?}"
            ))),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Publishes this worker's pid in `slot` until it is reaped.
    pub(crate) fn register(&mut self, slot: Arc<PidSlot>) {
        *slot.0.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((self.pid, Arc::clone(&self.pidfd)));
        self.slot = Some(slot);
    }
}

fn launch_error(what: &str, err: std::io::Error) -> Error {
    Error::system(
        format!("could not start a worker process: cannot {what}"),
        err,
    )
}

/// Starts this executable again as a worker whose stdin is `theirs`; its pid.
fn exec_worker(theirs: OwnedFd, fork_from: ForkFrom) -> Result<u32, Error> {
    let mut command = sys::exe_command();
    // The child's end becomes the child's stdin (the worker moves it
    // away and puts /dev/null there before any job runs). Every other
    // descriptor of procpool's stays close-on-exec, so this worker holds
    // no other's socket, and no other program gets this one.
    command
        .env(WORKER_ENV, WORKER_ON_STDIN)
        .stdin(Stdio::from(theirs));
    // `command` owns this process's copy of the child's end: both ways
    // drop it once the child exists, so only the child holds that end.
    let child = match fork_from {
        ForkFrom::ThisThread => command.spawn(),
        ForkFrom::LongLivedThread => sys::spawn_from_long_lived_thread(command),
    }
    .map_err(|e| launch_error("start /proc/self/exe as a worker process", e))?;
    // Dropping `Child` neither kills nor reaps: the handle does both by pid.
    Ok(child.id())
}

/// After the template died with a request in hand: if it forked a worker
/// on `channel` before dying, that worker greets with its pid; kills and
/// reaps it, so that no stray process or zombie stays behind. Returns when
/// the channel closes (no such worker), or at `deadline`.
fn put_down_orphan(channel: &mut Channel, deadline: Instant) {
    loop {
        match channel.try_recv::<FromWorker>() {
            Ok(FromWorker::Hello { pid }) if sys::is_unreaped_child(pid) => {
                log::debug!(
                    "procpool: put down worker {pid}, forked by a template that died before answering"
                );
                sys::kill_and_reap(pid);
                return;
            }
            Err(ChannelError::WouldBlock) => {}
            _ => return,
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || channel::wait(&channel.fd(), PollFlags::IN, Some(left)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::messages::Payload;

    static NEVER: AtomicBool = AtomicBool::new(false);

    fn worker(name: &str) -> WorkerProcess {
        WorkerProcess::spawn(
            name,
            Duration::from_secs(10),
            &NEVER,
            None,
            ForkFrom::ThisThread,
        )
        .unwrap()
    }

    fn run(task: u64, job: &str) -> ToWorker {
        ToWorker::Run {
            task,
            job: job.into(),
            count: 1,
            items: Payload::Inline(vec![1, 2, 3].into()),
            last: false,
            attached: 0,
        }
    }

    #[test]
    fn garbage_from_the_parent_makes_the_worker_exit_cleanly() {
        let mut worker = worker("garbage-test");
        let garbage = b"not a ToWorker message".repeat(10);
        rustix::net::send(
            worker.channel.fd(),
            &garbage,
            rustix::net::SendFlags::empty(),
        )
        .unwrap();
        match worker.recv(Some(Instant::now() + Duration::from_secs(10)), &NEVER) {
            Err(Lost::Died(cause)) => assert_eq!(cause, ExitCause::Code(0)),
            other => panic!("expected a clean exit, got {other:?}"),
        }
    }

    #[test]
    fn unknown_job_gets_an_error_reply() {
        let mut worker = worker("unknown-job-test");
        let deadline = Some(Instant::now() + Duration::from_secs(10));
        match worker.call(run(1, "no::such::job"), deadline, &NEVER) {
            Ok(FromWorker::Failed { task: 1, failure }) => {
                let error = failure.into_error("no::such::job", 0);
                assert!(matches!(error, Error::UnknownJob(ref job) if job == "no::such::job"));
            }
            other => panic!("expected an error reply, got {other:?}"),
        }
        // The worker is still serving.
        assert!(matches!(
            worker.call(run(2, "still::unknown"), deadline, &NEVER),
            Ok(FromWorker::Failed { task: 2, .. })
        ));
    }

    #[test]
    fn a_worker_holds_its_own_channel_and_nothing_else_of_ours() {
        let worker = worker("fds-test");
        let fds = std::fs::read_dir(format!("/proc/{}/fd", worker.pid()))
            .unwrap()
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .count();
        assert_eq!(fds, 1);
    }

    /// Not a test but a measurement, run on request:
    /// `cargo test --release -p procpool --lib -- --ignored spawn_to_hello --nocapture`.
    /// Median time from asking for a worker to its greeting, through the
    /// template and by exec.
    #[test]
    #[ignore = "a measurement, run on request"]
    fn spawn_to_hello() {
        let deadline = || Instant::now() + Duration::from_secs(10);
        let timeout = Duration::from_secs(10);
        let greet = |pid: u32, channel: Channel| {
            let mut worker = WorkerProcess::watch(pid, channel).unwrap();
            worker.handshake(deadline(), timeout, &NEVER).unwrap();
            worker
        };
        let forked_worker = || {
            let (channel, theirs) = channel::pair().unwrap();
            let Ok(Start::Forked(pid)) =
                template::fork_worker(theirs.as_fd(), deadline(), timeout, &NEVER)
            else {
                panic!("the template did not fork");
            };
            drop(theirs);
            greet(pid, channel)
        };
        let median = |mut times: Vec<Duration>| {
            times.sort();
            times[times.len() / 2]
        };
        // The first start through the template starts the template itself.
        let started = Instant::now();
        drop(forked_worker());
        eprintln!(
            "first start, with the template's own: {:?}",
            started.elapsed()
        );
        let (mut forked, mut execd) = (Vec::new(), Vec::new());
        for _ in 0..50 {
            let started = Instant::now();
            let worker = forked_worker();
            forked.push(started.elapsed());
            worker.shutdown();

            let started = Instant::now();
            let (channel, theirs) = channel::pair().unwrap();
            let theirs = sys::above_stdio(theirs).unwrap();
            let pid = exec_worker(theirs, ForkFrom::ThisThread).unwrap();
            let worker = greet(pid, channel);
            execd.push(started.elapsed());
            worker.shutdown();
        }
        eprintln!(
            "spawn to hello, median of 50: template {:?}, exec {:?}",
            median(forked),
            median(execd)
        );
    }
}
