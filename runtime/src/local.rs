//! The local backend: one driver thread per worker process, fed from one queue.
//!
//! A driver owns its worker: it sends a task, waits for the reply, and when
//! the worker dies it reports the lost task, reaps the process and starts a
//! replacement.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::Error;
use crate::process::{ForkFrom, Initializer, Lost, PidSlot, WorkerProcess};
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
}

impl Driver {
    fn run(self, started: mpsc::Sender<Result<(), Error>>) {
        let mut active = match self.spawn() {
            Ok(worker) => {
                let _ = started.send(Ok(()));
                Some(Active { worker, done: 0 })
            }
            Err(err) => {
                let _ = started.send(Err(err));
                return;
            }
        };
        drop(started);

        // One task runs in the worker while the driver delivers (decodes)
        // the previous reply: the worker never waits for the parent.
        let mut inflight: Option<Sent> = None;
        loop {
            let sent = match inflight.take() {
                Some(sent) => sent,
                None => {
                    let Some(task) = self.shared.next_task() else {
                        break;
                    };
                    if task.sink.cancelled() {
                        continue;
                    }
                    let current = match active.take() {
                        Some(current) => current,
                        None => match self.spawn() {
                            Ok(worker) => Active { worker, done: 0 },
                            Err(err) => {
                                task.fail(err);
                                continue;
                            }
                        },
                    };
                    match self.start(current, task) {
                        Ok((current, sent)) => {
                            active = Some(current);
                            sent
                        }
                        Err(()) => continue,
                    }
                }
            };
            let Some(mut current) = active.take() else {
                // Unreachable: a task is only in flight on a live worker.
                sent.task.fail(Error::Ipc(
                    "internal error: no worker for a sent task".into(),
                ));
                continue;
            };
            let pid = current.worker.pid();
            let reply = current.worker.recv(sent.deadline, &self.shared.terminated);
            let reply = match reply {
                Ok(reply) => reply,
                Err(lost) => {
                    drop(current);
                    self.lost(sent, pid, lost);
                    active = self.respawn();
                    continue;
                }
            };
            current.done += 1;
            let usable = matches!(reply, FromWorker::Done { .. } | FromWorker::Failed(_));
            if usable && self.keeps(&current) {
                // Start the next queued task before delivering this reply.
                if let Some(next) = self.shared.try_next_task()
                    && !next.sink.cancelled()
                {
                    match self.start(current, next) {
                        Ok((next_active, next_sent)) => {
                            active = Some(next_active);
                            inflight = Some(next_sent);
                        }
                        Err(()) => active = None,
                    }
                } else {
                    active = Some(current);
                }
            } else if usable {
                // Python's maxtasksperchild, or billiard's max_memory_per_child.
                current.worker.shutdown();
            } else {
                drop(current);
            }
            self.deliver(sent.task, pid, reply);
            if active.is_none() && inflight.is_none() {
                active = self.respawn();
            }
        }

        if let Some(current) = active {
            if self.shared.terminated.load(Ordering::Acquire) {
                drop(current);
            } else {
                current.worker.shutdown();
            }
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
        let mut worker = WorkerProcess::spawn(
            &next_worker_name(),
            self.config.spawn_timeout,
            &self.shared.terminated,
            self.config.initializer.as_ref(),
            // Drivers outlive their workers, and forking here lets every
            // driver start its worker at the same time.
            ForkFrom::ThisThread,
        )?;
        worker.register(Arc::clone(&self.shared.pids[self.slot]));
        if self.shared.terminated.load(Ordering::Acquire) {
            // terminate() ran before the pid was visible to it.
            return Err(Error::Spawn("the pool was terminated".into()));
        }
        Ok(worker)
    }

    /// Sends `task` to the worker. If the worker turns out to be dead, the
    /// task is reported (or queued again) and the worker is gone.
    fn start(&self, mut current: Active, mut task: Task) -> Result<(Active, Sent), ()> {
        let may_retry = task.retried < self.config.retries;
        // Keep the input only when it may be needed again.
        let items = if may_retry {
            task.items.clone()
        } else {
            std::mem::take(&mut task.items)
        };
        let message = ToWorker::Run {
            job: task.job.to_owned(),
            count: task.count as u64,
            items: self.scratch.borrow_mut().fill(items),
            last: false,
        };
        let deadline = self.config.task_timeout.map(|limit| Instant::now() + limit);
        let sent = Sent {
            task,
            deadline,
            may_retry,
        };
        let pid = current.worker.pid();
        match current.worker.send(message) {
            Ok(()) => Ok((current, sent)),
            Err(lost) => {
                drop(current);
                self.lost(sent, pid, lost);
                Err(())
            }
        }
    }

    /// Hands a reply to the task's caller.
    fn deliver(&self, task: Task, pid: u32, reply: FromWorker) {
        match reply {
            FromWorker::Done { items } => task.sink.deliver(task.info(), Ok(items)),
            FromWorker::Failed(failure) => {
                let error = failure.into_error(task.job, task.first);
                task.fail(error);
            }
            other => task.fail(Error::Ipc(format!(
                "worker {pid} sent an unexpected reply: {other:?}"
            ))),
        }
    }

    /// The worker running `sent` is gone: re-queue the task or report why.
    fn lost(&self, sent: Sent, pid: u32, lost: Lost) {
        let Sent {
            mut task,
            may_retry,
            ..
        } = sent;
        let job = task.job.to_owned();
        let terminated = self.shared.terminated.load(Ordering::Acquire);
        if may_retry && !terminated && matches!(lost, Lost::Died(_)) {
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
        };
        task.fail(error);
    }

    /// Replaces a lost worker at once, so capacity is back before the next task.
    fn respawn(&self) -> Option<Active> {
        if self.shared.terminated.load(Ordering::Acquire) {
            return None;
        }
        self.spawn().ok().map(|worker| Active { worker, done: 0 })
    }
}
