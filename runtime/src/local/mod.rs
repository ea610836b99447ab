//! The local backend: one driver thread per worker process, fed from one queue.
//!
//! A driver owns its worker: it sends a task, waits for the reply, and when
//! the worker dies it reports the lost task, reaps the process and starts a
//! replacement. Each driver is a [`State`] machine; `launch` starts and
//! watches a worker, `template` is the process that forks workers,
//! `channel` carries the messages, `serve` is the loop that runs in the
//! worker process.

pub(crate) mod channel;
pub(crate) mod launch;
pub(crate) mod serve;
pub(crate) mod template;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::Error;
use crate::error::panic_message;
use crate::local::launch::{ForkFrom, Initializer, Lost, PidSlot, WorkerProcess};
use crate::stats::{Counters, Departure, PoolStats};
use crate::transport::{Backend, Task};
use crate::wire::{FromWorker, Scratch, ToWorker};

/// Settings the local backend needs.
#[derive(Debug, Clone)]
pub(crate) struct LocalConfig {
    pub(crate) processes: usize,
    pub(crate) spawn_timeout: Duration,
    pub(crate) initializer: Option<Initializer>,
    pub(crate) max_tasks_per_child: Option<usize>,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) retries: usize,
    pub(crate) max_memory_per_child: Option<u64>,
}

/// Python numbers pool workers across the whole program; so do we.
static WORKER_NUMBER: AtomicU64 = AtomicU64::new(0);

fn next_worker_name() -> String {
    format!(
        "PoolWorker-{}",
        WORKER_NUMBER.fetch_add(1, Ordering::Relaxed) + 1
    )
}

struct Queue {
    tasks: VecDeque<Task>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    work: Condvar,
    terminated: AtomicBool,
    /// Each driver's live worker, for `terminate` to kill.
    pids: Vec<Arc<PidSlot>>,
    counters: Counters,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent
    // (every critical section is a single push, pop or flag write).
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// The next task if one is queued, without waiting.
    fn try_next_task(&self) -> Option<Task> {
        if self.terminated.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.queue).tasks.pop_front()
    }

    /// Puts a task whose worker died back at the front of the queue.
    fn retry(&self, task: Task) {
        let mut queue = lock(&self.queue);
        if self.terminated.load(Ordering::Acquire) {
            drop(queue);
            let job = task.job.to_owned();
            task.fail(Error::Terminated { job });
            return;
        }
        queue.tasks.push_front(task);
        drop(queue);
        self.work.notify_one();
    }

    /// The next task, or `None` when the driver should stop.
    fn next_task(&self) -> Option<Task> {
        let mut queue = lock(&self.queue);
        loop {
            if self.terminated.load(Ordering::Acquire) {
                return None;
            }
            if let Some(task) = queue.tasks.pop_front() {
                return Some(task);
            }
            if queue.closed {
                return None;
            }
            queue = self
                .work
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

pub(crate) struct LocalBackend {
    shared: Arc<Shared>,
    drivers: Mutex<Vec<JoinHandle<()>>>,
    processes: usize,
}

impl LocalBackend {
    /// Starts every worker and returns once all are connected, or fails with
    /// the first start-up error after stopping the ones that did start.
    pub(crate) fn start(config: LocalConfig) -> Result<Self, Error> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                tasks: VecDeque::new(),
                closed: false,
            }),
            work: Condvar::new(),
            terminated: AtomicBool::new(false),
            pids: (0..config.processes).map(|_| Arc::default()).collect(),
            counters: Counters::new(config.processes),
        });
        let (started_tx, started) = mpsc::channel();
        let mut drivers = Vec::with_capacity(config.processes);
        let mut outcome = Ok(());
        for slot in 0..config.processes {
            let driver = Driver {
                slot,
                shared: Arc::clone(&shared),
                config: config.clone(),
                scratch: RefCell::default(),
                last_id: Cell::new(0),
            };
            let started_tx = started_tx.clone();
            match thread::Builder::new()
                .name(format!("procpool-driver-{slot}"))
                .spawn(move || driver.run(started_tx))
            {
                Ok(handle) => drivers.push(handle),
                Err(err) => {
                    outcome = Err(Error::Spawn(format!("cannot start a driver thread: {err}")));
                    break;
                }
            }
        }
        drop(started_tx);
        let backend = LocalBackend {
            shared,
            drivers: Mutex::new(drivers),
            processes: config.processes,
        };
        outcome?;
        // Each driver reports exactly once; a driver that died without
        // reporting closes its sender, which ends this loop too.
        for _ in 0..config.processes {
            match started.recv() {
                Ok(Ok(())) => {}
                Ok(Err(err)) => return Err(err),
                Err(_) => return Err(Error::Spawn("a driver thread ended during start-up".into())),
            }
        }
        Ok(backend)
    }

    fn join_drivers(&self) {
        let handles = std::mem::take(&mut *lock(&self.drivers));
        for handle in handles {
            let _ = handle.join();
        }
    }
}

impl Backend for LocalBackend {
    fn submit(&self, task: Task) -> Result<(), Error> {
        let mut queue = lock(&self.shared.queue);
        if queue.closed || self.shared.terminated.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        queue.tasks.push_back(task);
        drop(queue);
        self.shared.work.notify_one();
        Ok(())
    }

    fn close(&self) {
        lock(&self.shared.queue).closed = true;
        self.shared.work.notify_all();
    }

    fn is_closed(&self) -> bool {
        lock(&self.shared.queue).closed
    }

    fn join(&self) -> Result<(), Error> {
        self.close();
        self.join_drivers();
        Ok(())
    }

    fn terminate(&self) {
        let orphaned = {
            let mut queue = lock(&self.shared.queue);
            queue.closed = true;
            self.shared.terminated.store(true, Ordering::Release);
            std::mem::take(&mut queue.tasks)
        };
        self.shared.work.notify_all();
        for slot in &self.shared.pids {
            slot.kill();
        }
        for task in orphaned {
            let job = task.job.to_owned();
            task.fail(Error::Terminated { job });
        }
    }

    fn processes(&self) -> usize {
        self.processes
    }

    fn stats(&self) -> PoolStats {
        self.shared
            .counters
            .snapshot(|slot| self.shared.pids.get(slot).and_then(|pid| pid.get()))
    }
}

impl Drop for LocalBackend {
    fn drop(&mut self) {
        // Only reached once nobody can submit: stop now rather than wait for
        // a queue nobody will collect, and never leave a child behind.
        if !lock(&self.drivers).is_empty() {
            self.terminate();
            self.join_drivers();
        }
    }
}

struct Driver {
    slot: usize,
    shared: Arc<Shared>,
    config: LocalConfig,
    /// Shared memory for large tasks, refilled only once the worker has
    /// replied to the task that used it before.
    scratch: RefCell<Scratch>,
    /// The number of the last task this driver sent.
    last_id: Cell<u64>,
}

/// A driver's live worker and how many tasks it has finished.
struct Active {
    worker: WorkerProcess,
    done: usize,
}

/// A task that was sent to the worker and awaits its reply.
struct Sent {
    task: Task,
    deadline: Option<Instant>,
    /// Whether the task may be re-run if the worker dies (`retries`).
    may_retry: bool,
    /// The number the worker must echo in its reply.
    id: u64,
    /// When it was handed to the worker.
    sent_at: Instant,
}

/// Checks that `reply` answers task number `id`.
fn matches_task(reply: &FromWorker, id: u64) -> Result<(), String> {
    match reply {
        FromWorker::Done { task, .. } | FromWorker::Failed { task, .. } if *task == id => Ok(()),
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
    /// The queue is closed and drained, or the pool was terminated.
    Stopped,
}

/// How many times a driver tries to start a worker for one task before the
/// task fails with the start's error (fewer once `spawn_timeout` has passed
/// since the first try). Starts that fail are not attempts of the task: it
/// never reached a worker.
const STARTS_PER_TASK: usize = 3;

impl Driver {
    fn run(self, started: mpsc::Sender<Result<(), Error>>) {
        let mut state = match self.spawn() {
            Ok(worker) => {
                let _ = started.send(Ok(()));
                State::Idle(Active { worker, done: 0 })
            }
            Err(err) => {
                let _ = started.send(Err(err));
                return;
            }
        };
        drop(started);
        loop {
            state = match state {
                State::NoWorker => match self.shared.next_task() {
                    None => State::Stopped,
                    Some(task) if task.sink.cancelled() => State::NoWorker,
                    Some(task) => self.start_with_new_worker(task),
                },
                State::Idle(current) => match self.shared.next_task() {
                    None => {
                        self.stop(current);
                        State::Stopped
                    }
                    Some(task) if task.sink.cancelled() => State::Idle(current),
                    // A worker that died while idle (killed, out of memory)
                    // is replaced before the task is sent: the task did
                    // not run, so it must not fail or cost a retry.
                    Some(task) if !current.worker.is_alive() => {
                        self.shared.counters.worker_left(Departure::Died);
                        drop(current);
                        self.start_with_new_worker(task)
                    }
                    Some(task) => self.start(current, task),
                },
                State::Busy(current, sent) => self.finish(current, sent),
                State::Stopped => break,
            };
        }
    }

    /// Waits for the reply to `sent` and delivers it, after sending the next
    /// queued task: one task runs in the worker while the driver delivers
    /// (decodes) the previous reply, so the worker never waits for the parent.
    fn finish(&self, mut current: Active, sent: Sent) -> State {
        let pid = current.worker.pid();
        let reply = match current.worker.recv(sent.deadline, &self.shared.terminated) {
            Ok(reply) => reply,
            Err(lost) => {
                drop(current);
                self.lost(sent, pid, lost);
                return self.respawn();
            }
        };
        if let Err(violation) = matches_task(&reply, sent.id) {
            // Whatever answered is not in step with this driver: a job
            // that forked, or one that wrote to the worker's socket.
            // Nothing it says can be trusted, this reply included.
            log::warn!("procpool: worker {pid} broke the protocol ({violation}); replacing it");
            drop(current);
            self.lost(sent, pid, Lost::Protocol(violation));
            return self.respawn();
        }
        current.done += 1;
        self.shared
            .counters
            .task_done(self.slot, sent.sent_at.elapsed());
        let next = if self.keeps(&current) {
            match self.shared.try_next_task() {
                Some(next) if !next.sink.cancelled() => self.start(current, next),
                _ => State::Idle(current),
            }
        } else {
            // Python's maxtasksperchild, or billiard's max_memory_per_child.
            self.shared.counters.worker_left(Departure::Retired);
            current.worker.shutdown();
            State::NoWorker
        };
        self.deliver(sent.task, reply);
        match next {
            State::NoWorker => self.respawn(),
            other => other,
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
                // Drivers outlive their workers, and forking here lets every
                // driver start its worker at the same time.
                ForkFrom::ThisThread,
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
    fn start(&self, mut current: Active, mut task: Task) -> State {
        let may_retry = task.retried < self.config.retries;
        // Keep the input only when it may be needed again.
        let items = if may_retry {
            task.items.clone()
        } else {
            std::mem::take(&mut task.items)
        };
        let len = items.len();
        // SAFETY: this driver's scratch was last filled for a task whose
        // worker has replied since, or has been killed and reaped.
        let items = match unsafe { self.scratch.borrow_mut().fill(items) } {
            Ok(items) => items,
            Err(err) => {
                task.fail(Error::system(
                    format!("cannot put a task's {len} bytes in shared memory"),
                    err,
                ));
                return State::Idle(current);
            }
        };
        let id = self.last_id.get() + 1;
        self.last_id.set(id);
        let message = ToWorker::Run {
            task: id,
            job: task.job.to_owned(),
            count: task.count as u64,
            items,
            last: false,
        };
        let deadline = self.config.task_timeout.map(|limit| Instant::now() + limit);
        let sent = Sent {
            task,
            deadline,
            may_retry,
            id,
            sent_at: Instant::now(),
        };
        let pid = current.worker.pid();
        match current
            .worker
            .send(message, deadline, &self.shared.terminated)
        {
            Ok(()) => State::Busy(current, sent),
            Err(Lost::Died(_)) if !self.shared.terminated.load(Ordering::Acquire) => {
                // The message never reached a live worker.
                self.shared.counters.worker_left(Departure::Died);
                drop(current);
                self.shared.retry(sent.task);
                self.respawn()
            }
            Err(lost) => {
                drop(current);
                self.lost(sent, pid, lost);
                self.respawn()
            }
        }
    }

    /// Hands a reply (already matched to `task`) to the task's caller.
    ///
    /// Delivering decodes the results with the caller's `Deserialize`
    /// impls, which may panic; this thread must survive that and the call
    /// must still end, so the panic fails the task instead.
    fn deliver(&self, task: Task, reply: FromWorker) {
        let sink = Arc::clone(&task.sink);
        let info = task.info();
        let job = task.job;
        let delivered = catch_unwind(AssertUnwindSafe(move || match reply {
            FromWorker::Done { items, .. } => task.sink.deliver(task.info(), Ok(&items)),
            FromWorker::Failed { failure, .. } => {
                let error = failure.into_error(task.job, task.first);
                task.fail(error);
            }
            other => task.fail(Error::Ipc(format!("unexpected reply: {other:?}"))),
        }));
        if let Err(panic) = delivered {
            log::error!(
                "procpool: delivering the results of job `{job}` panicked: {}",
                panic_message(&*panic)
            );
            let error = Error::Serialization {
                job: job.to_owned(),
                direction: format!(
                    "decode the results of items {}..{}",
                    info.first,
                    info.first + info.count
                ),
                message: format!("decoding panicked: {}", panic_message(&*panic)),
            };
            // Failing needs no decoding; a sink that panics even then has
            // nothing left to tell its caller.
            let _ = catch_unwind(AssertUnwindSafe(|| sink.deliver(info, Err(error))));
        }
    }

    /// The worker running `sent` is gone: re-queue the task or report why.
    fn lost(&self, sent: Sent, pid: u32, lost: Lost) {
        let Sent {
            mut task,
            may_retry,
            sent_at,
            ..
        } = sent;
        let job = task.job.to_owned();
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
        let retry = may_retry && !terminated && matches!(lost, Lost::Died(_) | Lost::Protocol(_));
        self.shared
            .counters
            .task_lost(self.slot, sent_at.elapsed(), retry);
        if retry {
            task.retried += 1;
            self.shared.retry(task);
            return;
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
        task.fail(error);
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

#[cfg(test)]
mod tests {
    use std::os::fd::BorrowedFd;
    use std::time::Duration;

    use crate::wire::{FromWorker, Payload};
    use crate::{Error, Pool, pool_job};

    /// Sends, on its worker's channel, a well-formed reply to task 0 (no
    /// task has that number) claiming the result 999, then returns `x`.
    #[pool_job]
    fn forge_a_stale_reply(x: u64) -> u64 {
        let mut reply = crate::codec::ReplyWriter::<u64>::default();
        reply.value(&999).unwrap();
        let items = reply.finish();
        let forged = FromWorker::Done {
            task: 0,
            items: Payload::new(items).unwrap(),
        };
        let bytes = postcard::to_stdvec(&forged).unwrap();
        for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            let is_socket = std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
            let fd: i32 = entry.file_name().to_str().unwrap().parse().unwrap();
            if is_socket {
                // SAFETY: the descriptor is open (listed just now) and stays
                // open for this call.
                let fd = unsafe { BorrowedFd::borrow_raw(fd) };
                let _ = rustix::net::send(fd, &bytes, rustix::net::SendFlags::empty());
            }
        }
        x
    }

    #[pool_job]
    fn plus_one(x: u64) -> u64 {
        x + 1
    }

    #[test]
    fn a_reply_to_another_task_is_never_delivered() {
        let pool = Pool::with_processes(1).unwrap();
        let mut call = pool.apply_async(forge_a_stale_reply, 5).unwrap();
        match call.get_timeout(Duration::from_secs(10)) {
            Err(Error::Ipc(message)) => {
                assert!(message.contains("broke the protocol"), "{message}")
            }
            other => panic!("expected a protocol error, got {other:?}"),
        }
        for x in 0..20 {
            assert_eq!(pool.apply(plus_one, x).unwrap(), x + 1);
        }
        // With a retry, the task runs again on a new worker, which forges
        // again: the forged value is still never delivered.
        let pool = Pool::builder().processes(1).retries(1).build().unwrap();
        let err = pool.apply(forge_a_stale_reply, 5).unwrap_err();
        assert!(matches!(err, Error::Ipc(_)), "{err:?}");
    }
}
