//! The local backend: one driver per worker process, fed from one queue.
//!
//! A driver (`driver`) owns its worker: it sends a task, waits for the
//! reply, and when the worker dies it reports what was lost, reaps the
//! process and starts a replacement. `launch` starts and watches a worker,
//! `template` is the process that forks workers,
//! `channel` carries the `messages`, `worker_loop` is the loop that runs in the
//! worker process.

pub(crate) mod channel;
mod driver;
pub(crate) mod launch;
pub(crate) mod messages;
pub(crate) mod template;
pub(crate) mod worker_loop;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::Error;
use crate::backend::{Backend, Task};
use crate::local::driver::Driver;
use crate::local::launch::{Initializer, PidSlot};
use crate::stats::{Counters, PoolStats};

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

    /// Puts a task back at the front of the queue: its worker died before
    /// it ran (or part-way), or its driver's worker is busy with a caller.
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
    /// One per worker slot, shared with its thread.
    slots: Vec<Arc<Driver>>,
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
        let mut slots = Vec::with_capacity(config.processes);
        let mut outcome = Ok(());
        for slot in 0..config.processes {
            let driver = Arc::new(Driver::new(slot, Arc::clone(&shared), config.clone()));
            slots.push(Arc::clone(&driver));
            let started_tx = started_tx.clone();
            match thread::Builder::new()
                .name(format!("procpool-driver-{slot}"))
                .spawn(move || driver.run(started_tx))
            {
                Ok(handle) => drivers.push(handle),
                Err(err) => {
                    // EAGAIN here is the limit on processes and threads:
                    // the error's text names `ulimit -u`.
                    outcome = Err(Error::system(
                        "could not start the pool: cannot start a driver thread",
                        err,
                    ));
                    break;
                }
            }
        }
        drop(started_tx);
        let backend = LocalBackend {
            shared,
            slots,
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
    fn limits_each_item(&self) -> bool {
        true
    }

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

    fn takes_tails(&self) -> bool {
        true
    }

    fn submit_and_drive(&self, task: Task) -> Result<(), Error> {
        match self.drive_with_tail(task, &[]) {
            Ok(()) => Ok(()),
            Err(task) => self.submit(task),
        }
    }

    fn drive_with_tail(&self, mut task: Task, tail: &[u8]) -> Result<(), Task> {
        {
            // A task must not overtake queued ones, and a closed pool
            // takes none.
            let queue = lock(&self.shared.queue);
            if !queue.tasks.is_empty()
                || queue.closed
                || self.shared.terminated.load(Ordering::Acquire)
            {
                return Err(task);
            }
        }
        for driver in &self.slots {
            match driver.try_run_here(task, tail) {
                Ok(()) => return Ok(()),
                Err(back) => task = back,
            }
        }
        Err(task)
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

/// Whether spinning can help: with a single CPU the process waited for
/// would have to wait for the spinning one to be preempted before it could
/// go on. (A caller watching for its answer, a worker for its next task.)
pub(crate) fn may_spin() -> bool {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from)) > 1
}

#[cfg(test)]
mod tests {
    use std::os::fd::BorrowedFd;
    use std::time::Duration;

    use crate::local::messages::FromWorker;
    use crate::{Error, Pool, pool_job};

    /// Sends, on its worker's channel, a well-formed reply to task 0 (no
    /// task has that number) claiming the result 999, then returns `x`.
    #[pool_job]
    fn forge_a_stale_reply(x: u64) -> u64 {
        let forged = FromWorker::Done { task: 0, len: 8 };
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
