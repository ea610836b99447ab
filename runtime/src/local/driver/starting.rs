//! Starting: a worker for a slot (and again after one is lost), and a
//! task on a worker, its chunk staged into the worker's request region.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Instant;

use super::{Active, Driver, Sent, State};
use crate::Error;
use crate::backend::Task;
use crate::codec;
use crate::error::panic_message;
use crate::local::launch::{ForkFrom, Lost, WorkerProcess};
use crate::local::messages::ToWorker;
use crate::local::next_worker_name;
use crate::stats::Departure;

/// How many times a driver tries to start a worker for one task before the
/// task fails with the start's error (fewer once `spawn_timeout` has passed
/// since the first try). Starts that fail are not attempts of the task: it
/// never reached a worker.
const STARTS_PER_TASK: usize = 3;

impl Driver {
    /// Starts a worker for `task` and sends it. A start that fails is tried
    /// again (up to [`STARTS_PER_TASK`]), then fails the task.
    pub(super) fn start_with_new_worker(&self, task: Task) -> State {
        let mut failure = None;
        let first_try = Instant::now();
        for _ in 0..STARTS_PER_TASK {
            // A start that timed out would time out again: only quick
            // failures (a worker killed while starting) are worth retrying.
            if self.shared.terminated.load(Ordering::Acquire)
                || (failure.is_some() && first_try.elapsed() >= self.config.spawn_timeout)
            {
                break;
            }
            match self.spawn() {
                Ok(worker) => return self.start(Active { worker, done: 0 }, task),
                // A failing initializer fails the same way every time.
                Err(err @ Error::InitializerFailed { .. }) => {
                    failure = Some(err);
                    break;
                }
                Err(err) => failure = Some(err),
            }
        }
        let job = task.job.to_owned();
        self.shared.counters.task_failed();
        task.fail(failure.unwrap_or(Error::Terminated { job }));
        State::NoWorker
    }

    pub(super) fn spawn(&self) -> Result<WorkerProcess, Error> {
        // A start that panics (an OS call's assertion deep in a dependency)
        // must not take this driver, and the tasks it serves, with it.
        let mut worker = catch_unwind(AssertUnwindSafe(|| {
            WorkerProcess::spawn(
                &next_worker_name(),
                self.config.spawn_timeout,
                &self.shared.terminated,
                self.config.initializer.as_ref(),
                // The slot's thread outlives its workers, and forking there
                // lets every driver start its worker at the same time; a
                // caller's thread (a replacement after a crash in a task it
                // ran itself) may end first.
                if self.thread.get() == Some(&thread::current().id()) {
                    ForkFrom::ThisThread
                } else {
                    ForkFrom::LongLivedThread
                },
            )
        }))
        .unwrap_or_else(|panic| {
            Err(Error::Spawn(format!(
                "starting a worker panicked: {}",
                panic_message(&*panic)
            )))
        })?;
        worker.register(Arc::clone(&self.shared.pids[self.slot]));
        self.shared.counters.worker_started();
        if self.shared.terminated.load(Ordering::Acquire) {
            // terminate() ran before the pid was visible to it.
            return Err(Error::Spawn("the pool was terminated".into()));
        }
        Ok(worker)
    }

    /// Sends `task` to the worker: `Busy` on success. A worker found dead
    /// before it got the task is replaced and the task queued again as it
    /// was (it never ran).
    pub(super) fn start(&self, current: Active, task: Task) -> State {
        self.start_with(current, task, &[])
    }

    /// [`Driver::start`] for a task whose chunk is its `items` followed by
    /// `tail` (see [`Driver::try_run_here`]).
    pub(super) fn start_with(&self, mut current: Active, mut task: Task, mut tail: &[u8]) -> State {
        let may_retry = task.retried < self.config.retries;
        if may_retry && !tail.is_empty() {
            // A task that may run again keeps its whole chunk.
            if let Err(error) = self.append_tail(&mut task, tail) {
                task.fail(error);
                return State::Idle(current);
            }
            tail = &[];
        }
        // A tail the caller lent (`tail`) or gave up (`task.tail`): the
        // value's bytes are copied once, from its own buffer.
        let rest = if tail.is_empty() {
            task.tail.as_slice()
        } else {
            tail
        };
        let len = task.items.len() + rest.len();
        // The task keeps its items: if the worker dies part-way, the items
        // it did not start run elsewhere.
        // SAFETY: an idle worker answered every task it was sent.
        let items = match unsafe { current.worker.stage(&task.items, rest) } {
            Ok(items) => items,
            Err(err) => {
                task.fail(Error::system(
                    format!("cannot put a task's {len} bytes in shared memory"),
                    err,
                ));
                return State::Idle(current);
            }
        };
        let id = self.last_id.fetch_add(1, Ordering::Relaxed) + 1;
        let message = ToWorker::Run {
            task: id,
            job: task.job.to_owned(),
            count: task.count as u64,
            items,
            last: false,
            attached: u32::try_from(task.attached.len()).unwrap_or(u32::MAX),
        };
        let deadline = self.config.task_timeout.and_then(crate::deadline::after);
        let mut sent = Sent {
            task,
            deadline,
            seen_done: 0,
            may_retry,
            id,
            sent_at: Instant::now(),
            reported: 0,
        };
        let pid = current.worker.pid();
        for attachment in sent.task.attached.iter() {
            attachment.sent_to(pid);
        }
        let attached: Vec<_> = sent.task.attached.iter().map(|a| a.fd()).collect();
        let outcome =
            current
                .worker
                .send_attached(message, &attached, deadline, &self.shared.terminated);
        drop(attached);
        match outcome {
            Ok(()) => {
                // For `WorkerStats::running`: this thread also takes the
                // reply, so the mark cannot land after the task is done.
                self.shared
                    .counters
                    .task_started(self.slot, sent.task.job, sent.sent_at);
                // A single item that will not run again is needed no more
                // (it is in the worker's region): a large payload is held
                // once, not twice, while it runs.
                if sent.task.count == 1 && !sent.may_retry {
                    sent.task.items = Vec::new();
                    sent.task.tail = Default::default();
                }
                // Its handles' descriptors are the worker's now (in flight
                // or received): this process holds no copy for a task that
                // will not run again, so a Pipe's other end sees its close.
                if !sent.may_retry {
                    sent.task.attached = Default::default();
                }
                State::Busy(current, sent)
            }
            Err(Lost::Died(_)) if !self.shared.terminated.load(Ordering::Acquire) => {
                // The message never reached a live worker.
                self.shared.counters.worker_left(Departure::Died);
                drop(current);
                match self.append_tail(&mut sent.task, tail) {
                    Ok(()) => self.shared.retry(sent.task),
                    Err(error) => sent.task.fail(error),
                }
                self.respawn()
            }
            Err(lost) => {
                drop(current);
                self.lost(sent, pid, lost, None);
                self.respawn()
            }
        }
    }

    /// Appends `tail` (see [`Driver::try_run_here`]) to the task's own
    /// items, for a task that goes back to the queue or may run again.
    fn append_tail(&self, task: &mut Task, tail: &[u8]) -> Result<(), Error> {
        codec::try_append(&mut task.items, tail).map_err(|problem| {
            Error::system(
                format!(
                    "cannot keep a task's {} bytes: {}",
                    tail.len(),
                    problem.message
                ),
                std::io::Error::from_raw_os_error(libc::ENOMEM),
            )
        })
    }

    /// Replaces a lost worker at once, so capacity is back before the next task.
    pub(super) fn respawn(&self) -> State {
        if self.shared.terminated.load(Ordering::Acquire) {
            return State::NoWorker;
        }
        match self.spawn() {
            Ok(worker) => State::Idle(Active { worker, done: 0 }),
            Err(err) => {
                // Not fatal: the next task tries again and reports the error.
                log::warn!("procpool: could not replace a lost worker (will retry): {err}");
                State::NoWorker
            }
        }
    }
}
