//! A worker slot's driver: it owns the worker process, sends it tasks,
//! waits for each reply (reporting progress meanwhile) and delivers it;
//! when the worker dies it keeps what the worker finished, re-queues or
//! fails the rest, and starts a replacement.
//!
//! Queued tasks are run by the slot's own thread. A caller that waits for
//! its single task runs it on an idle worker from its own thread instead
//! ([`Driver::try_run_here`]): the request and the reply then cross no
//! other thread, which is half the context switches of an `apply`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, TryLockError, mpsc};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use super::{LocalConfig, Shared, lock, may_spin, next_worker_name};
use crate::Error;
use crate::backend::{Part, Sink, Task, TaskInfo};
use crate::codec;
use crate::error::{ExitCause, panic_message};
use crate::failure::{Failure, FailureKind};
use crate::local::launch::{ForkFrom, Lost, WorkerProcess};
use crate::local::messages::{FromWorker, ToWorker};
use crate::reply_log::Partial;
use crate::stats::Departure;
use crate::sys::{InPlace, ReplyCopy};

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

/// How the item a worker was running when it was lost ended.
#[derive(Debug, Clone, Copy)]
enum ItemEnd {
    /// The worker died (crashed, was killed by someone else).
    Died(ExitCause),
    /// The driver killed it: the item ran longer than `task_timeout`.
    TimedOut,
}

/// How long a caller running its own task watches for the reply before it
/// sleeps: about a short job's round trip here, and a small share of a
/// long one.
const SPIN: Duration = Duration::from_micros(50);

/// How often a driver looks at how many items of a running task finished.
const PROGRESS_STEP: Duration = Duration::from_millis(100);

/// Checks that `reply` answers task number `id`.
fn matches_task(reply: &FromWorker, id: u64) -> Result<(), String> {
    match reply {
        FromWorker::Done { task, .. }
        | FromWorker::Failed { task, .. }
        | FromWorker::Forked { task }
            if *task == id =>
        {
            Ok(())
        }
        FromWorker::Done { task, .. } | FromWorker::Failed { task, .. } => Err(format!(
            "it answered task {task} while task {id} was running"
        )),
        other => Err(format!("it sent {other:?} while task {id} was running")),
    }
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

/// How many times a driver tries to start a worker for one task before the
/// task fails with the start's error (fewer once `spawn_timeout` has passed
/// since the first try). Starts that fail are not attempts of the task: it
/// never reached a worker.
const STARTS_PER_TASK: usize = 3;

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

    /// Hands the reply of `sent`, still in its worker's region, to the
    /// task's caller where that caller can take it from there (see
    /// [`Sink::take_in_place`]); `false` if it cannot.
    fn take_in_place(&self, sent: &Sent, reply: &InPlace<'_>) -> bool {
        if !sent.task.before.is_empty() {
            return false;
        }
        let mut info = sent.task.info();
        info.reported = sent.reported;
        let sink = &sent.task.sink;
        // Nothing of the user's decodes here (numbers, bytes, strings), but
        // a caller's callback may run as the call completes, and this
        // thread must survive whatever it does.
        match catch_unwind(AssertUnwindSafe(|| sink.take_in_place(info, reply))) {
            Ok(taken) => taken,
            Err(panic) => {
                self.delivery_panicked(sink, info, sent.task.job, &*panic);
                true
            }
        }
    }

    /// Whatever answered is not in step with this driver: a job that
    /// forked, or one that wrote to the worker's socket. Nothing it says can
    /// be trusted, this reply included: the worker is replaced.
    fn broke_protocol(&self, current: Active, sent: Sent, violation: String) -> State {
        let pid = current.worker.pid();
        log::warn!("procpool: worker {pid} broke the protocol ({violation}); replacing it");
        drop(current);
        self.lost(sent, pid, Lost::Protocol(violation), None);
        self.respawn()
    }

    /// Waits for the reply to `sent` until its deadline (then the worker is
    /// killed), reporting the items that finish meanwhile as progress.
    fn await_reply(
        &self,
        current: &mut Active,
        sent: &mut Sent,
        spin: bool,
    ) -> Result<FromWorker, Lost> {
        if spin && may_spin() {
            // A caller that waits on its own thread first watches the
            // worker's shared memory for a moment, where the worker notes
            // each answer it sent: a short job is answered before a sleep
            // and a wake-up would be over.
            let until = Instant::now() + SPIN;
            while !current.worker.answered(sent.id) && Instant::now() < until {
                std::hint::spin_loop();
            }
        }
        loop {
            let step = Instant::now() + PROGRESS_STEP;
            let until = sent.deadline.map_or(step, |deadline| deadline.min(step));
            match current
                .worker
                .recv_until(Some(until), &self.shared.terminated)?
            {
                // A copy forked during an earlier task, which its worker
                // answered: this task's answer is still to come from the
                // worker itself (which is replaced after it).
                Some(FromWorker::Forked { task }) if task != sent.id => {}
                Some(reply) => return Ok(reply),
                None => {
                    let done = current.worker.items_done(sent.id);
                    if let Some(done) = done {
                        self.report(sent, done);
                    }
                    if self.item_ran_over(sent, done) {
                        current.worker.kill_and_reap();
                        return Err(Lost::TimedOut);
                    }
                }
            }
        }
    }

    /// Whether the item `sent`'s worker runs now has passed the pool's
    /// `task_timeout`, given `done`, the items its worker says it finished.
    ///
    /// The limit is per item: when more items are done than at the last
    /// look, the next one started since, so its limit runs from now. The
    /// driver looks every [`PROGRESS_STEP`], so an item may run up to that
    /// much past the limit, never less than the limit. A worker cannot buy
    /// time by claiming progress: `done` counts at most the chunk's items,
    /// so a chunk runs at most `count` limits.
    fn item_ran_over(&self, sent: &mut Sent, done: Option<usize>) -> bool {
        let Some(deadline) = sent.deadline else {
            return false;
        };
        let done = done.unwrap_or(0).min(sent.task.count);
        if done > sent.seen_done {
            sent.seen_done = done;
            sent.deadline = self.config.task_timeout.and_then(crate::deadline::after);
            return false;
        }
        Instant::now() >= deadline
    }

    /// `done` items of `sent` have finished: counts the new ones.
    fn report(&self, sent: &mut Sent, done: usize) {
        let done = done.min(sent.task.count);
        if done > sent.reported {
            sent.task.sink.progress(done - sent.reported);
            self.shared.counters.items_done(done - sent.reported);
            sent.reported = done;
        }
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

    /// Starts a worker for `task` and sends it. A start that fails is tried
    /// again (up to [`STARTS_PER_TASK`]), then fails the task.
    fn start_with_new_worker(&self, task: Task) -> State {
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

    fn spawn(&self) -> Result<WorkerProcess, Error> {
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
    fn start(&self, current: Active, task: Task) -> State {
        self.start_with(current, task, &[])
    }

    /// [`Driver::start`] for a task whose chunk is its `items` followed by
    /// `tail` (see [`Driver::try_run_here`]).
    fn start_with(&self, mut current: Active, mut task: Task, mut tail: &[u8]) -> State {
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

    /// Hands a reply (already matched to `task`), or the failure of the
    /// whole task, to the task's caller.
    ///
    /// Delivering decodes the results with the caller's `Deserialize`
    /// impls, which may panic; this thread must survive that and the call
    /// must still end, so the panic fails the task instead.
    fn deliver(&self, task: Task, reported: usize, outcome: Result<&[u8], Failure>) {
        let sink = Arc::clone(&task.sink);
        let info = task.info();
        let job = task.job;
        let delivered = catch_unwind(AssertUnwindSafe(move || match outcome {
            Ok(bytes) => task.deliver(Ok(bytes), reported),
            Err(failure) => {
                let error = failure.into_error(task.job, task.first);
                task.deliver(Err(error), reported);
            }
        }));
        if let Err(panic) = delivered {
            self.delivery_panicked(&sink, info, job, &*panic);
        }
    }

    /// Delivering the results of `info` panicked: fails them instead.
    fn delivery_panicked(
        &self,
        sink: &Arc<dyn Sink>,
        info: TaskInfo,
        job: &str,
        panic: &(dyn std::any::Any + Send),
    ) {
        log::error!(
            "procpool: delivering the results of job `{job}` panicked: {}",
            panic_message(panic)
        );
        let error = Error::Serialization {
            job: job.to_owned(),
            direction: format!(
                "decode the results of items {}..{}",
                info.first,
                info.first + info.count
            ),
            message: format!("decoding panicked: {}", panic_message(panic)),
        };
        // Failing needs no decoding; a sink that panics even then has
        // nothing left to tell its caller.
        let _ = catch_unwind(AssertUnwindSafe(|| sink.deliver(info, Err(error))));
    }

    /// The worker running `sent` is gone: keeps what it finished (`partial`,
    /// read from its reply region), and re-queues the rest or reports why
    /// it failed.
    fn lost(&self, sent: Sent, pid: u32, lost: Lost, partial: Option<Partial>) {
        let terminated = self.shared.terminated.load(Ordering::Acquire);
        let departure = match lost {
            _ if terminated => None,
            Lost::Died(_) => Some(Departure::Died),
            Lost::TimedOut => Some(Departure::TimedOut),
            Lost::Protocol(_) => Some(Departure::BrokeProtocol),
            // Killed by this side, which could not go on with it.
            Lost::System(_) => Some(Departure::Died),
            Lost::Aborted => None,
        };
        if let Some(departure) = departure {
            self.shared.counters.worker_left(departure);
        }
        // A worker that died, or was killed for running over its time,
        // part-way through its chunk costs only the item it was running;
        // it must have got somewhere, or a crash outside any item could
        // send the same items round for ever.
        let item_end = match &lost {
            Lost::Died(cause) => Some(ItemEnd::Died(*cause)),
            Lost::TimedOut => Some(ItemEnd::TimedOut),
            _ => None,
        };
        if let Some(item_end) = item_end
            && let Some(partial) = partial
            && !terminated
            && (partial.done > 0 || partial.crashed)
        {
            return self.split(sent, pid, item_end, partial);
        }
        let Sent {
            mut task,
            may_retry,
            sent_at,
            reported,
            ..
        } = sent;
        let job = task.job.to_owned();
        let retry = may_retry && !terminated && matches!(lost, Lost::Died(_) | Lost::Protocol(_));
        self.shared
            .counters
            .task_lost(self.slot, sent_at.elapsed(), retry);
        if retry {
            task.retried += 1;
            self.shared.retry(task);
            return;
        }
        if !terminated && !matches!(lost, Lost::Aborted) {
            // The worker got to these items: they are done, as failures,
            // and counted before the caller sees them.
            self.shared
                .counters
                .items_done(task.count.saturating_sub(reported));
        }
        let error = match lost {
            _ if terminated => Error::Terminated { job },
            Lost::Died(cause) => Error::WorkerDied {
                job,
                pid,
                cause,
                first: task.first,
                count: task.count,
                attempts: task.retried + 1,
            },
            Lost::TimedOut => Error::TaskTimedOut {
                job,
                first: task.first,
                count: task.count,
                timeout: self.config.task_timeout.unwrap_or_default(),
            },
            Lost::Aborted => Error::Terminated { job },
            Lost::System(err) => Error::system(
                format!(
                    "could not exchange messages with worker {pid} running job `{job}` on \
                     items {}..{}; it was killed and replaced",
                    task.first,
                    task.first + task.count
                ),
                err,
            ),
            Lost::Protocol(violation) => Error::Ipc(format!(
                "worker {pid} broke the protocol while running job `{job}` on items {}..{}: \
                 {violation}; it was killed and replaced. A job must not fork a process that \
                 returns, nor touch the worker's own file descriptors",
                task.first,
                task.first + task.count
            )),
        };
        task.deliver(Err(error), reported);
    }

    /// The worker died during item `partial.done` of `sent` (or between
    /// items): keeps the finished items' outcomes with the task, fails that
    /// one item (or lets it run again, under `retries`), and queues the
    /// items not started, for any worker. Those never ran: sending them is
    /// not a retry.
    fn split(&self, sent: Sent, pid: u32, item_end: ItemEnd, partial: Partial) {
        let Sent {
            mut task,
            sent_at,
            reported,
            ..
        } = sent;
        let Partial {
            done,
            crashed,
            reply,
        } = partial;
        let end = task.first + task.count;
        let accounted = done + usize::from(crashed);
        if accounted > reported {
            task.sink.progress(accounted - reported);
            self.shared.counters.items_done(accounted - reported);
        }
        if done > 0 {
            task.before.push(Part {
                first: task.first,
                count: done,
                outcome: Ok(reply),
            });
        }
        let mut rest = task.first + done;
        let mut retried = 0;
        let mut retry = false;
        if crashed {
            // The item that crashed ran as often as the task's first item
            // did if it is that item, else once. One that ran over its
            // time is not run again: it would most likely hang again.
            let attempts = if done == 0 { task.retried + 1 } else { 1 };
            if attempts <= self.config.retries && matches!(item_end, ItemEnd::Died(_)) {
                retried = attempts;
                retry = true;
            } else {
                let job = task.job.to_owned();
                let error = match item_end {
                    ItemEnd::Died(cause) => Error::WorkerDied {
                        job,
                        pid,
                        cause,
                        first: rest,
                        count: 1,
                        attempts,
                    },
                    ItemEnd::TimedOut => Error::TaskTimedOut {
                        job,
                        first: rest,
                        count: 1,
                        timeout: self.config.task_timeout.unwrap_or_default(),
                    },
                };
                if rest + 1 == end || !task.sink.per_item() {
                    // Nothing left to run, or a call that this failure
                    // decides: deliver now.
                    task.items = Vec::new();
                    task.first = rest;
                    task.count = 1;
                    self.shared
                        .counters
                        .task_lost(self.slot, sent_at.elapsed(), false);
                    return task.deliver(Err(error), 1);
                }
                task.before.push(Part {
                    first: rest,
                    count: 1,
                    outcome: Err(error),
                });
                rest += 1;
            }
        }
        self.shared
            .counters
            .task_lost(self.slot, sent_at.elapsed(), retry);
        if rest == end {
            // Died after its last item: everything is in hand.
            let Some(last) = task.before.pop() else {
                return;
            };
            task.first = last.first;
            task.count = last.count;
            let outcome = last.outcome;
            return match outcome {
                Ok(bytes) => task.deliver(Ok(&bytes), last.count),
                Err(error) => task.deliver(Err(error), last.count),
            };
        }
        // The items are cut from the whole chunk: a tail the task carries
        // apart joins it first.
        let tail = task.tail.take();
        let rest_of_chunk = codec::try_append(&mut task.items, &tail)
            .and_then(|()| codec::chunk_rest(&task.items, rest - task.first));
        drop(tail);
        match rest_of_chunk {
            Ok(items) => {
                task.items = items;
                task.count = end - rest;
                task.first = rest;
                task.retried = retried;
                self.shared.retry(task);
            }
            Err(problem) if problem.is_out_of_memory() => {
                let error = Error::system(
                    format!(
                        "cannot keep the items {rest}..{end} of job `{}` that a dead worker \
                         did not start: {}",
                        task.job, problem.message
                    ),
                    std::io::Error::from_raw_os_error(libc::ENOMEM),
                );
                task.count = end - rest;
                task.first = rest;
                self.shared.counters.items_done(task.count);
                task.deliver(Err(error), 0);
            }
            Err(problem) => {
                let error = Error::Ipc(format!(
                    "cannot cut the items a dead worker did not start from their chunk: {}",
                    problem.message
                ));
                task.count = end - rest;
                task.first = rest;
                self.shared.counters.items_done(task.count);
                task.deliver(Err(error), 0);
            }
        }
    }

    /// Replaces a lost worker at once, so capacity is back before the next task.
    fn respawn(&self) -> State {
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
