//! A cluster worker's heartbeat: a thread that shows the worker is alive
//! (its score in the queue's `workers` set and its jobs' `serves` sets),
//! keeps the claim on the tasks it holds, tells it when lost tasks wait in
//! its jobs' lost sets, and enforces the running task's `task_timeout`.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::link::Link;
use super::protocol::{self, GROUP, Keys, Refusal};
use super::serve::{Delivery, store};
use super::settings::Settings;
use crate::Error;

/// A worker not seen for an hour is dropped from the queue's `workers` set.
const STALE_WORKER_MS: u64 = 3_600_000;
/// The per-job worker sets are swept of such workers once per this many
/// heartbeats (and on the first).
const SWEEP_SETS_EVERY: u64 = 30;

/// A thread that shows this worker is alive: it keeps the worker in the
/// queue's `workers` set and, while a task runs, claims that task again
/// every third of the visibility timeout, which resets its idle time, so
/// no other worker takes a long task from a live worker.
pub(super) struct Heartbeat {
    shared: Arc<(Mutex<Beat>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Beat {
    /// The tasks (stream, id) this worker holds: the one running and those
    /// read with it.
    watching: Vec<(String, String)>,
    /// The running task's deadline, if its caller set a `task_timeout`.
    watchdog: Option<Watchdog>,
    /// Whether the last beat found lost tasks of this worker's jobs (see
    /// [`super::recover`]).
    lost: bool,
    stop: bool,
}

/// What the heartbeat does when a task runs past its caller's `task_timeout`.
#[derive(Clone)]
pub(super) struct Watchdog {
    pub(super) at: Instant,
    pub(super) timeout_ms: u64,
    pub(super) task: Delivery,
    /// Tasks read with it, not started yet: handed back to other workers.
    pub(super) waiting: Vec<(String, String)>,
}

/// The exit code of a worker whose task ran past its `task_timeout`.
const TIMED_OUT_EXIT: i32 = 3;

/// Fails the task with `Refusal::TimedOut` and ends the process, whose
/// job may never return: a supervisor ([`super::Workers`]) starts another.
fn time_out(
    link: &mut Link,
    settings: &Settings,
    keys: &Keys,
    (name, job_ids): (&str, &[String]),
    dog: &Watchdog,
) -> ! {
    let started = Instant::now();
    let patience = || started.elapsed() >= Duration::from_secs(10);
    let refusal = Refusal::TimedOut {
        timeout_ms: dog.timeout_ms,
    };
    // Counted for `inspect` and the fleet page before the caller can read
    // the failure; a count lost with the connection stops nothing.
    let _ = link.query::<()>(
        redis::cmd("HINCRBY")
            .arg(keys.stats())
            .arg("timed_out_tasks")
            .arg(1),
    );
    if let Err(err) = store(
        link,
        (settings, keys, name),
        &dog.task,
        Err(refusal),
        &patience,
    ) {
        eprintln!(
            "procpool cluster worker {name}: cannot store the timeout of task {}: {err}",
            dog.task.id
        );
    }
    // The tasks it held but did not start look idle for a day and go to
    // their jobs' lost sets, so that the next worker to beat takes them.
    // This worker counts as dead from now on (a heartbeat past the limit,
    // not zero, which the hourly sweep of stale workers would remove
    // before the scanner forgets it): `inspect` lists it as such.
    let mut pipe = redis::pipe();
    for (stream, id) in &dog.waiting {
        pipe.cmd("XCLAIM")
            .arg(stream)
            .arg(GROUP)
            .arg(name)
            .arg(0)
            .arg(id)
            .arg("IDLE")
            .arg(86_400_000)
            .arg("JUSTID")
            .ignore();
        if let Some(job_id) = keys.job_of(stream) {
            pipe.cmd("SADD").arg(keys.lost(job_id)).arg(id).ignore();
        }
    }
    let dead_since =
        protocol::now_ms().saturating_sub(2 * settings.visibility.as_millis() as u64 + 1000);
    pipe.cmd("ZADD")
        .arg(keys.workers())
        .arg(dead_since)
        .arg(name)
        .ignore();
    for id in job_ids {
        pipe.cmd("ZREM").arg(keys.serves(id)).arg(name).ignore();
    }
    pipe.cmd("HDEL").arg(keys.running()).arg(name).ignore();
    let _ = link.run(|conn| pipe.query::<()>(conn));
    eprintln!(
        "procpool cluster worker {name}: job `{}` ran past its task_timeout of {:?}; \
         exiting, to be replaced",
        dog.task.job,
        Duration::from_millis(dog.timeout_ms)
    );
    // At once, without running exit handlers that could wait for locks
    // the still-running job holds.
    crate::sys::exit_now(TIMED_OUT_EXIT)
}

impl Heartbeat {
    pub(super) fn start(
        mut link: Link,
        keys: &Keys,
        settings: &Settings,
        name: &str,
        job_ids: Vec<String>,
    ) -> Result<Heartbeat, Error> {
        let visibility = settings.visibility;
        let settings = settings.clone();
        let shared = Arc::new((Mutex::new(Beat::default()), Condvar::new()));
        let (keys, name, beat) = (keys.clone(), name.to_owned(), Arc::clone(&shared));
        let lost_sets: Vec<String> = job_ids.iter().map(|id| keys.lost(id)).collect();
        let period = visibility / 3;
        let thread = thread::Builder::new()
            .name("procpool-cluster-heartbeat".into())
            .spawn(move || {
                let (state, wake) = &*beat;
                let mut guard = state.lock().unwrap_or_else(PoisonError::into_inner);
                let mut beats: u64 = 0;
                while !guard.stop {
                    let watching = guard.watching.clone();
                    if let Some(dog) = &guard.watchdog
                        && Instant::now() >= dog.at
                    {
                        let dog = dog.clone();
                        drop(guard);
                        time_out(&mut link, &settings, &keys, (&name, &job_ids), &dog);
                    }
                    drop(guard);
                    beats += 1;
                    let beaten = link.run(|conn| {
                        let mut pipe = redis::pipe();
                        let now = protocol::now_ms();
                        let stale = now.saturating_sub(STALE_WORKER_MS);
                        let sets = std::iter::once(keys.workers())
                            .chain(job_ids.iter().map(|id| keys.serves(id)));
                        for (index, set) in sets.enumerate() {
                            pipe.cmd("ZADD").arg(&set).arg(now).arg(&name).ignore();
                            // Killed workers never remove themselves, and the
                            // scanner forgets them only from the sets of its
                            // own build's jobs. The job sets are swept now
                            // and then: readers count fresh members anyway,
                            // and a beat then costs one command per job.
                            if index == 0 || beats % SWEEP_SETS_EVERY == 1 {
                                pipe.cmd("ZREMRANGEBYSCORE")
                                    .arg(&set)
                                    .arg("-inf")
                                    .arg(stale)
                                    .ignore();
                            }
                        }
                        for (stream, id) in &watching {
                            pipe.cmd("XCLAIM")
                                .arg(stream)
                                .arg(GROUP)
                                .arg(&name)
                                .arg(0)
                                .arg(id)
                                .arg("JUSTID")
                                .ignore();
                        }
                        // Lost tasks of this worker's jobs, for it to take
                        // (one command, whatever the number of jobs).
                        pipe.cmd("EXISTS").arg(&lost_sets);
                        pipe.query::<(u64,)>(conn)
                    });
                    guard = state.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Ok((lost,)) = beaten {
                        guard.lost = lost > 0;
                    }
                    if !guard.stop {
                        let wait = match &guard.watchdog {
                            Some(dog) => {
                                period.min(dog.at.saturating_duration_since(Instant::now()))
                            }
                            None => period,
                        };
                        guard = wake
                            .wait_timeout(guard, wait)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                }
                drop(guard);
                let mut pipe = redis::pipe();
                let sets =
                    std::iter::once(keys.workers()).chain(job_ids.iter().map(|id| keys.serves(id)));
                for set in sets {
                    pipe.cmd("ZREM").arg(set).arg(&name).ignore();
                }
                pipe.cmd("HDEL").arg(keys.running()).arg(&name).ignore();
                let _ = link.run(|conn| pipe.query::<()>(conn));
            })
            .map_err(|e| Error::system("cannot start the cluster worker's heartbeat thread", e))?;
        Ok(Heartbeat {
            shared,
            thread: Some(thread),
        })
    }

    /// The task now running, whose claim must be kept fresh. No need to
    /// claim it at once: delivering a task (or claiming it from a lost
    /// worker) resets its idle time, and the next beat comes within a third
    /// of the visibility timeout.
    pub(super) fn watch(&self, held: Vec<(String, String)>) {
        let (state, _) = &*self.shared;
        state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .watching = held;
    }

    /// Whether the last beat found lost tasks to take.
    pub(super) fn lost(&self) -> bool {
        let (state, _) = &*self.shared;
        state.lock().unwrap_or_else(PoisonError::into_inner).lost
    }

    /// Takes note that lost tasks are there (or that none are left).
    pub(super) fn set_lost(&self, lost: bool) {
        let (state, _) = &*self.shared;
        state.lock().unwrap_or_else(PoisonError::into_inner).lost = lost;
    }

    /// Starts the running task's deadline.
    pub(super) fn arm(&self, dog: Watchdog) {
        let (state, wake) = &*self.shared;
        state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .watchdog = Some(dog);
        wake.notify_all();
    }

    /// The task ended in time.
    pub(super) fn disarm(&self) {
        let (state, _) = &*self.shared;
        state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .watchdog = None;
    }

    pub(super) fn stop(&mut self) {
        let (state, wake) = &*self.shared;
        state.lock().unwrap_or_else(PoisonError::into_inner).stop = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
