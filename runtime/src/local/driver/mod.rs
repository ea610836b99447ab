//! A worker slot's driver: it owns the worker process, sends it tasks,
//! waits for each reply (reporting progress meanwhile) and delivers it;
//! when the worker dies it keeps what the worker finished, re-queues or
//! fails the rest, and starts a replacement.
//!
//! Queued tasks are run by the slot's own thread. A caller that waits for
//! its single task runs it on an idle worker from its own thread instead
//! ([`Driver::try_run_here`]): the request and the reply then cross no
//! other thread, which is half the context switches of an `apply`.
//!
//! Here: the slot's states and its loop (send, wait, deliver, next).
//! - [`starting`]: a worker for the slot, and a task on the worker;
//! - [`waiting`]: for the worker's answer, within the time limit per item;
//! - [`delivery`]: the outcome to the caller's sink;
//! - [`lost`]: a worker lost with a task in hand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, TryLockError, mpsc};
use std::thread::{self, ThreadId};
use std::time::Instant;

use super::{LocalConfig, Shared, lock};
use crate::Error;
use crate::backend::Task;
use crate::failure::{Failure, FailureKind};
use crate::local::launch::WorkerProcess;
use crate::local::messages::FromWorker;
use crate::stats::Departure;
use crate::sys::ReplyCopy;

mod delivery;
mod lost;
mod starting;
mod waiting;

use waiting::matches_task;

/// One worker slot: its worker, and the thread that runs queued tasks on it.
pub(super) struct Driver {
    slot: usize,
    shared: Arc<Shared>,
    config: LocalConfig,
    /// The worker, in the hands of whoever drives it: the slot's thread,
    /// or a caller running its own task on it ([`Driver::try_run_here`]).
    /// Between tasks it holds `NoWorker` or `Idle`.
    hand: Mutex<State>,
    /// The last reply, copied out of the worker's region; reused.
    copy: Mutex<ReplyCopy>,
    /// The number of the last task this driver sent.
    last_id: AtomicU64,
    /// The slot's own thread, which outlives the workers it starts.
    thread: OnceLock<ThreadId>,
}

/// A driver's live worker and how many tasks it has finished.
struct Active {
    worker: WorkerProcess,
    done: usize,
}

/// A task that was sent to the worker and awaits its reply.
struct Sent {
    task: Task,
    /// When the item running now exceeds the pool's `task_timeout` (which
    /// limits each item, not the whole chunk): reset each time the driver
    /// sees an item finish.
    deadline: Option<Instant>,
    /// Items the driver has seen finished, for the deadline (`reported` is
    /// the progress counted for the caller).
    seen_done: usize,
    /// Whether the task may be re-run if the worker dies (`retries`).
    may_retry: bool,
    /// The number the worker must echo in its reply.
    id: u64,
    /// When it was handed to the worker.
    sent_at: Instant,
    /// Items of it counted as progress so far.
    reported: usize,
}

/// Where a driver stands. Each state holds exactly what it needs, so a
/// task in flight without a worker cannot be expressed.
enum State {
    /// No worker (none started yet, or the last one was lost and its
    /// replacement failed to start): one is started for the next task.
    NoWorker,
    /// A live worker waiting for a task.
    Idle(Active),
    /// A worker running a task.
    Busy(Active, Sent),
    /// The worker is stopped (the queue is closed and drained, or the
    /// pool was terminated); also what the hand holds while a state is out.
    Stopped,
}

impl Driver {
    pub(super) fn new(slot: usize, shared: Arc<Shared>, config: LocalConfig) -> Self {
        Driver {
            slot,
            shared,
            config,
            hand: Mutex::new(State::NoWorker),
            copy: Mutex::default(),
            last_id: AtomicU64::new(0),
            thread: OnceLock::new(),
        }
    }

    /// The slot's thread: starts the worker, then runs queued tasks on it
    /// until the queue is closed and drained, or the pool terminated.
    pub(super) fn run(self: Arc<Self>, started: mpsc::Sender<Result<(), Error>>) {
        let _ = self.thread.set(thread::current().id());
        match self.spawn() {
            Ok(worker) => {
                *lock(&self.hand) = State::Idle(Active { worker, done: 0 });
                let _ = started.send(Ok(()));
            }
            Err(err) => {
                let _ = started.send(Err(err));
                return;
            }
        }
        drop(started);
        while let Some(task) = self.shared.next_task() {
            let mut hand = match self.hand.try_lock() {
                Ok(hand) => hand,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => {
                    // A caller is running its own task on this worker: the
                    // task is another driver's to take, and this one waits
                    // for its worker.
                    self.shared.retry(task);
                    drop(lock(&self.hand));
                    continue;
                }
            };
            let state = std::mem::replace(&mut *hand, State::Stopped);
            *hand = self.drive(state, task, true);
        }
        if let State::Idle(current) = std::mem::replace(&mut *lock(&self.hand), State::Stopped) {
            self.stop(current);
        }
    }

    /// Runs `task` on this slot's worker from the caller's thread, if the
    /// worker is idle and nobody else drives it: the request and the reply
    /// then wake no other thread. Gives the task back otherwise.
    ///
    /// The task's chunk is its `items` followed by `tail` (empty, or a
    /// large value's bytes borrowed from the caller's item, copied once,
    /// straight into the worker's request region).
    #[allow(clippy::result_large_err)] // as `Backend::drive_with_tail`
    pub(super) fn try_run_here(&self, task: Task, tail: &[u8]) -> Result<(), Task> {
        let mut hand = match self.hand.try_lock() {
            Ok(hand) => hand,
            Err(_) => return Err(task),
        };
        match std::mem::replace(&mut *hand, State::Stopped) {
            // A worker found dead is the slot thread's to replace: a
            // caller's thread starts no process.
            State::Idle(current) if current.worker.is_alive() => {
                *hand = self.until_idle(self.start_with(current, task, tail), false);
                Ok(())
            }
            other => {
                *hand = other;
                Err(task)
            }
        }
    }

    /// Runs `task` from `state` (`NoWorker` or `Idle`) until the worker is
    /// idle again, with `pipeline`, running the queued tasks that come up
    /// meanwhile too. The state to keep.
    fn drive(&self, state: State, task: Task, pipeline: bool) -> State {
        let state = match state {
            State::Idle(current) if task.sink.cancelled() => State::Idle(current),
            // A worker that died while idle (killed, out of memory) is
            // replaced before the task is sent: the task did not run, so
            // it must not fail or cost a retry.
            State::Idle(current) if !current.worker.is_alive() => {
                self.shared.counters.worker_left(Departure::Died);
                drop(current);
                self.start_with_new_worker(task)
            }
            State::Idle(current) => self.start(current, task),
            _ if task.sink.cancelled() => State::NoWorker,
            _ => self.start_with_new_worker(task),
        };
        self.until_idle(state, pipeline)
    }

    /// Waits for the replies of a busy worker (with `pipeline`, also of the
    /// queued tasks it is given meanwhile) until it is idle or lost.
    fn until_idle(&self, mut state: State, pipeline: bool) -> State {
        while let State::Busy(current, sent) = state {
            state = self.finish(current, sent, pipeline);
        }
        state
    }

    /// Waits for the reply to `sent` and delivers it, after sending the next
    /// queued task when the reply is small: one task runs in the worker
    /// while the driver delivers (decodes) the previous reply, so the
    /// worker never waits for the parent.
    fn finish(&self, mut current: Active, mut sent: Sent, pipeline: bool) -> State {
        let reply = match self.await_reply(&mut current, &mut sent, !pipeline) {
            Ok(reply) => reply,
            Err(lost) => {
                let pid = current.worker.pid();
                let partial = current.worker.partial(sent.id, sent.task.count);
                drop(current);
                self.lost(sent, pid, lost, partial);
                return self.respawn();
            }
        };
        let answer = match matches_task(&reply, sent.id).map(|()| reply) {
            Ok(FromWorker::Done { len, .. }) => Ok(len),
            Ok(FromWorker::Failed { failure, .. }) => Err(failure),
            // A copy of the worker, forked during this task, came back into
            // procpool (from the worker's own pid, the notice is a forgery).
            Ok(FromWorker::Forked { task }) => {
                let violation = current.worker.forked_copy().unwrap_or_else(|| {
                    format!("its own process sent a forked copy's notice for task {task}")
                });
                return self.broke_protocol(current, sent, violation);
            }
            Ok(other) => return self.broke_protocol(current, sent, format!("it sent {other:?}")),
            Err(violation) => return self.broke_protocol(current, sent, violation),
        };
        let next = match answer {
            Ok(len) => {
                let reply = match current.worker.reply_in_place(sent.id, len) {
                    Ok(reply) => reply,
                    Err(why) => {
                        let violation = format!("its reply cannot be read: {why}");
                        return self.broke_protocol(current, sent, violation);
                    }
                };
                self.answered(&mut current.done, &sent);
                // Values that are copies of bytes (numbers, byte vectors,
                // strings) go from the worker's region straight into their
                // own storage: one copy, taking as long as the private copy
                // of the reply below would.
                if self.take_in_place(&sent, &reply) {
                    self.next(current, pipeline)
                } else {
                    // Anything else is copied out of the worker's region
                    // once (the worker may write there at any time, see
                    // `sys::Region`), so the worker can run its next task
                    // while this one is decoded.
                    let mut copy = lock(&self.copy);
                    let outcome = match copy.fill_from(&reply) {
                        Ok(()) => Ok(copy.bytes()),
                        // The worker did its part: only this call fails.
                        Err(_) => Err(Failure::new(
                            FailureKind::System(Some(libc::ENOMEM)),
                            format!(
                                "answered, but this process has no memory for the reply's {len} bytes"
                            ),
                        )),
                    };
                    let next = self.next(current, pipeline);
                    self.deliver(sent.task, sent.reported, outcome);
                    next
                }
            }
            Err(failure) => {
                self.answered(&mut current.done, &sent);
                let next = self.next(current, pipeline);
                self.deliver(sent.task, sent.reported, Err(failure));
                next
            }
        };
        match next {
            State::NoWorker => self.respawn(),
            other => other,
        }
    }

    /// Counts a task its worker answered, and its items, before its caller
    /// can see the outcome (so the caller's `stats()` include them).
    fn answered(&self, done: &mut usize, sent: &Sent) {
        *done += 1;
        self.shared
            .counters
            .task_done(self.slot, sent.sent_at.elapsed());
        self.shared
            .counters
            .items_done(sent.task.count.saturating_sub(sent.reported));
    }

    /// After a task: with `pipeline`, sends the next queued one; or retires
    /// the worker.
    fn next(&self, current: Active, pipeline: bool) -> State {
        if let Some(violation) = current.worker.forked_copy() {
            let pid = current.worker.pid();
            log::warn!("procpool: worker {pid} broke the protocol ({violation}); replacing it");
            self.shared.counters.worker_left(Departure::BrokeProtocol);
            drop(current);
            return State::NoWorker;
        }
        if self.keeps(&current) {
            let next = if pipeline {
                self.shared.try_next_task()
            } else {
                None
            };
            match next {
                Some(next) if !next.sink.cancelled() => self.start(current, next),
                _ => State::Idle(current),
            }
        } else {
            // Python's maxtasksperchild, or billiard's max_memory_per_child.
            self.shared.counters.worker_left(Departure::Retired);
            current.worker.shutdown();
            State::NoWorker
        }
    }

    /// Stops a worker whose driver is done.
    fn stop(&self, current: Active) {
        if self.shared.terminated.load(Ordering::Acquire) {
            drop(current);
        } else {
            current.worker.shutdown();
        }
    }

    /// Whether a worker that just finished a task may take another.
    fn keeps(&self, current: &Active) -> bool {
        if self.config.max_tasks_per_child == Some(current.done) {
            return false;
        }
        match self.config.max_memory_per_child {
            Some(limit) => current
                .worker
                .resident_bytes()
                .is_none_or(|rss| rss <= limit),
            None => true,
        }
    }
}
