//! The local worker's loop: take the channel from stdin, greet the parent,
//! then run each task it sends until it says `Exit` or goes away.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::failure::{Failure, FailureKind};
use rustix::event::{PollFd, PollFlags};

use crate::local::channel::{Channel, ChannelError, Incoming, poll_any};
use crate::local::may_spin;
use crate::local::messages::{FromWorker, Payload, ToWorker};
use crate::reply_log;
use crate::sys::{self, Region};
use crate::worker;

/// Exit code of a worker that could not connect back to its parent.
pub(crate) const EXIT_BOOTSTRAP_FAILED: i32 = 86;

/// Serves the parent over the channel it passed as stdin; the exit code.
pub(crate) fn run(parent: Option<String>) -> i32 {
    if !sys::tie_to_parent(sys::Signal::KILL, parent) {
        return EXIT_BOOTSTRAP_FAILED;
    }
    match take_channel_from_stdin() {
        Ok(socket) => serve(socket),
        Err(why) => {
            eprintln!("procpool worker: {why}; exiting");
            EXIT_BOOTSTRAP_FAILED
        }
    }
}

/// Serves the parent over `socket`, in a worker just forked by the worker
/// template (`local::template`), whose stdin is already `/dev/null`; the
/// exit code.
pub(crate) fn run_forked(parent: Option<String>, socket: OwnedFd) -> i32 {
    // A fork clears the parent-death signal: set it again, and check that
    // the parent did not die before.
    if !sys::tie_to_parent(sys::Signal::KILL, parent) {
        return EXIT_BOOTSTRAP_FAILED;
    }
    serve(socket)
}

/// Moves the channel off stdin (to a close-on-exec descriptor, so programs
/// a job starts do not inherit it) and puts `/dev/null` there, so a job
/// reading stdin reads nothing, as in every worker.
pub(crate) fn take_channel_from_stdin() -> Result<OwnedFd, String> {
    let stdin = std::io::stdin();
    let stdin = stdin.as_fd();
    // Only a socket may become the channel: a forged marker on a program
    // started with a terminal or a file as stdin ends here.
    let is_socket = rustix::fs::fstat(stdin)
        .is_ok_and(|stat| rustix::fs::FileType::from_raw_mode(stat.st_mode).is_socket());
    if !is_socket {
        return Err("stdin is not the channel to the parent".into());
    }
    let socket = rustix::io::fcntl_dupfd_cloexec(stdin, 3)
        .map_err(|err| format!("cannot take the channel from stdin: {err}"))?;
    let null = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|err| format!("cannot open /dev/null: {err}"))?;
    // dup2 leaves the new stdin inheritable, as a stdin should be.
    rustix::stdio::dup2_stdin(&null)
        .map_err(|err| format!("cannot put /dev/null on stdin: {err}"))?;
    Ok(socket)
}

/// The worker's shared regions: replies from `Init` on, requests from the
/// first large task on.
struct Regions {
    requests: Option<Region>,
    replies: Region,
}

/// The worker's channel, for a forked copy's notice ([`forked_copy_exits`]).
static CHANNEL_FD: AtomicI32 = AtomicI32::new(-1);
/// The task the worker is running (0: none, or the initializer).
static CURRENT_TASK: AtomicU64 = AtomicU64::new(0);

/// Run by the fork guard in a copy of the worker that a job forked, when
/// it is about to return into procpool (write a result, answer): tells
/// the parent, whose kernel-given sender pid shows it is not the worker,
/// and exits before touching anything of the worker's.
fn forked_copy_exits() -> ! {
    let notice = FromWorker::Forked {
        task: CURRENT_TASK.load(Ordering::Relaxed),
    };
    let fd = CHANNEL_FD.load(Ordering::Relaxed);
    if fd >= 0
        && let Ok(bytes) = postcard::to_stdvec(&notice)
    {
        // SAFETY: the worker's channel, copied into this process by the
        // fork; if the job closed it meanwhile, the send fails harmlessly.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let flags = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
        let _ = rustix::net::send(fd, &bytes, flags);
    }
    // At once: no destructor, atexit handler or buffered output of the
    // worker's runs twice.
    sys::exit_now(0)
}

/// Greets the parent, then runs its tasks; the exit code.
fn serve(socket: OwnedFd) -> i32 {
    CHANNEL_FD.store(socket.as_raw_fd(), Ordering::Relaxed);
    // Without the guard (a kernel before 4.14), the pid check before each
    // answer below still keeps a copy from answering.
    let _ = sys::arm_fork_guard(forked_copy_exits);
    let mut channel = Channel::new(socket);
    let hello = FromWorker::Hello {
        pid: std::process::id(),
    };
    if channel.send(&hello).is_err() {
        return EXIT_BOOTSTRAP_FAILED;
    }
    let own_pid = std::process::id();
    let mut regions = None;
    let mut soon = false;

    loop {
        // A closed channel means the parent is gone or done with us, and
        // anything that is not our message means it is not our parent
        // speaking: either way, exit quietly.
        let (message, fds) = match next_message(&mut channel, &mut soon, SPIN) {
            Ok(incoming) => (incoming.message, incoming.fds),
            Err(ChannelError::Io(_)) => return EXIT_BOOTSTRAP_FAILED,
            Err(_) => return 0,
        };
        let received = Instant::now();
        let carries_region = message.carries_region();
        let (reply, exit) = match message {
            ToWorker::Init { name, initializer } => {
                let opened = match fds.into_iter().next() {
                    Some(replies) => Region::open(replies, true),
                    None => Err("the reply region did not come with Init".to_owned()),
                };
                match opened {
                    Ok(replies) => {
                        regions = Some(Regions {
                            requests: None,
                            replies,
                        })
                    }
                    Err(why) => {
                        eprintln!("procpool worker: {why}; exiting");
                        return EXIT_BOOTSTRAP_FAILED;
                    }
                }
                worker::become_worker(name);
                let failure = initializer.and_then(|(job, arg)| {
                    worker::run_chunk(&job, 1, &arg).map_or_else(Some, |(_, failure)| failure)
                });
                match failure {
                    None => (FromWorker::Ready, None),
                    // The parent gives up on this worker; exit once it knows why.
                    Some(failure) => (FromWorker::Failed { task: 0, failure }, Some(1)),
                }
            }
            ToWorker::Run {
                task,
                job,
                count,
                items,
                last,
                ..
            } => {
                // Tasks come only after Init.
                let Some(regions) = regions.as_mut() else {
                    return EXIT_BOOTSTRAP_FAILED;
                };
                CURRENT_TASK.store(task, Ordering::Relaxed);
                // The request region first, if it came; then the handles'.
                let mut fds = fds.into_iter();
                let region = if carries_region { fds.next() } else { None };
                let attached: Vec<_> = fds.collect();
                if let Some(fd) = region {
                    match Region::open(fd, true) {
                        Ok(requests) => regions.requests = Some(requests),
                        Err(why) => {
                            eprintln!("procpool worker: {why}; exiting");
                            return EXIT_BOOTSTRAP_FAILED;
                        }
                    }
                }
                // Shared values whose creator is gone are not kept for it.
                crate::exchange::sweep_cache();
                let (reply, failure) = crate::codec::attach::receiving(attached, || {
                    run_task(task, &job, count, &items, regions)
                });
                (reply, last.then_some(i32::from(failure.is_some())))
            }
            ToWorker::Exit => return 0,
        };
        // A job forked and its copy returned here: only the worker itself
        // may answer. The guard (one load) catches it; the pid is the
        // fallback where the guard could not be armed.
        sys::check_fork_guard();
        if std::process::id() != own_pid {
            forked_copy_exits();
        }
        if channel.send(&reply).is_err() {
            return 0;
        }
        soon = watch_next(soon, received.elapsed());
        if let (Some(regions), FromWorker::Done { task, .. } | FromWorker::Failed { task, .. }) =
            (&regions, &reply)
        {
            reply_log::answered(&regions.replies, *task);
        }
        if let Some(code) = exit {
            return code;
        }
    }
}

/// How long a worker that answered watches its socket for its next task
/// before it sleeps, when tasks have been coming that soon: about a round
/// trip between two processes that both sleep here, and a few system calls'
/// worth of CPU.
const SPIN: Duration = Duration::from_micros(50);

/// Tasks that ran this long or longer are not followed by a watch for the
/// next one: the watch would save a wake-up that is a small share of such
/// a task, and its CPU would compete with the parent's threads where cores
/// are few (200 tasks of 5 ms on 2 workers and 2 cores, alternating runs:
/// 1.02–1.05 × rayon's time with a watch after every task, 0.99–1.03 ×
/// without, within this machine's noise).
const SHORT_TASK: Duration = Duration::from_millis(1);

/// Whether to watch for the task after one that `ran` this long, tasks
/// having come `soon` (see [`next_message`]) so far.
fn watch_next(soon: bool, ran: Duration) -> bool {
    soon && ran < SHORT_TASK
}

/// The next message from the parent.
///
/// A worker whose previous task came within `window` ([`SPIN`]) of its
/// answer (as back-to-back `apply` calls do) first polls its socket for that
/// long: a
/// task that comes meanwhile then costs neither side a sleep and a wake-up
/// (the caller watches for the answer likewise, see the driver). One miss
/// stops the polling until tasks come that soon again, so a worker whose
/// tasks are sporadic spends nothing on it; nor does one whose tasks are
/// long ([`SHORT_TASK`]).
fn next_message(
    channel: &mut Channel,
    soon: &mut bool,
    window: Duration,
) -> Result<Incoming<ToWorker>, ChannelError> {
    let answered = Instant::now();
    if *soon && may_spin() {
        while answered.elapsed() < window {
            match channel.try_recv_with() {
                Err(ChannelError::WouldBlock) => std::hint::spin_loop(),
                other => return other,
            }
        }
    }
    let incoming = wait_for_message(channel);
    *soon = answered.elapsed() < window;
    incoming
}

/// Waits for the parent's next message. Meanwhile a worker holding shared
/// values (`Shared`) also watches whether their creators still hold them,
/// and lets go of those they dropped at once, rather than at its next task:
/// an idle worker does not keep a dropped value's memory.
fn wait_for_message(channel: &mut Channel) -> Result<Incoming<ToWorker>, ChannelError> {
    loop {
        let alive = crate::exchange::cached_liveness().unwrap_or_default();
        if alive.is_empty() {
            return channel.recv_with();
        }
        let message = {
            let socket = channel.fd();
            let mut fds: Vec<PollFd<'_>> = std::iter::once(PollFd::new(&socket, PollFlags::IN))
                .chain(alive.iter().map(|fd| PollFd::new(fd, PollFlags::empty())))
                .collect();
            poll_any(&mut fds, None).map_err(ChannelError::Io)?;
            !fds[0].revents().is_empty()
        };
        if message {
            match channel.try_recv_with() {
                Err(ChannelError::WouldBlock) => continue,
                other => return other,
            }
        }
        let held = crate::exchange::cached_count();
        crate::exchange::sweep_cache();
        if crate::exchange::cached_count() == held {
            // Nothing to let go of after all: wait for the message alone,
            // rather than wake again at once.
            return channel.recv_with();
        }
    }
}

/// Runs task number `task`; the reply, and the first failure in it.
fn run_task(
    task: u64,
    job: &str,
    count: u64,
    items: &Payload,
    regions: &mut Regions,
) -> (FromWorker, Option<Failure>) {
    let failed = |failure: Failure| {
        (
            FromWorker::Failed {
                task,
                failure: failure.clone(),
            },
            Some(failure),
        )
    };
    let items = match items {
        Payload::Inline(bytes) => &bytes[..],
        Payload::Shared { len, .. } => {
            let len = usize::try_from(*len).unwrap_or(usize::MAX);
            let viewed = match regions.requests.as_mut() {
                Some(requests) => requests.view(len).and_then(|()| {
                    // SAFETY: only the parent writes the request region,
                    // and not before this task is answered; forks of this
                    // process do not have it (`Region::open` above).
                    unsafe { requests.trusted_bytes(len) }
                }),
                None => Err("no request region came before it".to_owned()),
            };
            match viewed {
                Ok(items) => items,
                Err(why) => {
                    return failed(Failure::new(
                        FailureKind::DecodeArguments,
                        format!("the chunk's shared memory: {why}"),
                    ));
                }
            }
        }
    };
    match worker::run_chunk_streaming(job, count, items, &mut regions.replies, task) {
        Ok((len, failure)) => (FromWorker::Done { task, len }, failure),
        Err(failure) => failed(failure),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{SHORT_TASK, next_message, watch_next};
    use crate::local::channel::{Channel, pair};
    use crate::local::messages::ToWorker;

    /// `next_message` with `soon` as given, the parent's `Exit` already
    /// there (`None`) or sent after a delay; what `soon` becomes.
    fn soon_after(soon: bool, delay: Option<Duration>, window: Duration) -> bool {
        let (parent, theirs) = pair().unwrap();
        let mut worker = Channel::new(theirs);
        let mut soon = soon;
        std::thread::scope(|scope| {
            match delay {
                None => parent.send(&ToWorker::Exit).unwrap(),
                Some(delay) => {
                    let parent = &parent;
                    scope.spawn(move || {
                        std::thread::sleep(delay);
                        parent.send(&ToWorker::Exit).unwrap();
                    });
                }
            }
            let message = next_message(&mut worker, &mut soon, window)
                .unwrap()
                .message;
            assert!(matches!(message, ToWorker::Exit));
        });
        soon
    }

    /// A worker polls for its next task only while tasks come within the
    /// window ([`SPIN`]) of its answers: a message already there keeps it
    /// polling (or starts it); one that comes late, after polling or not,
    /// stops it (and the message still arrives). Windows far from the
    /// delays, so a busy machine cannot blur them.
    #[test]
    fn a_worker_polls_for_its_next_task_only_while_tasks_come_soon() {
        let wide = Duration::from_secs(5);
        assert!(soon_after(false, None, wide));
        assert!(soon_after(true, None, wide));
        let late = Some(Duration::from_millis(100));
        let narrow = Duration::from_micros(50);
        assert!(!soon_after(true, late, narrow));
        assert!(!soon_after(false, late, narrow));
        // And only after short tasks.
        assert!(watch_next(true, Duration::from_micros(100)));
        assert!(!watch_next(true, SHORT_TASK));
        assert!(!watch_next(false, Duration::ZERO));
    }
}
