//! The caller's side of a cluster pool: tasks go into the queue's stream,
//! and one collector thread reads this caller's results stream.
//!
//! Each task gets a sequence number. A result whose number is not pending
//! any more (a task that ran twice because its first worker was presumed
//! dead) is dropped, so the caller receives every result exactly once.
//!
//! This file holds [`ClusterBackend`] (start-up, its [`Backend`] impl,
//! `terminate`) and the state its threads share; the rest is in:
//!
//! - `pending.rs`: the table of pending tasks, the backlog and the watermark;
//! - `submit.rs`: sending tasks, sending them again, withdrawing them;
//! - `results.rs`: the collector thread, which reads and delivers results;
//! - `lost.rs`: finding and failing the tasks Redis lost;
//! - `served.rs`: counting live workers, and jobs no live worker can run;
//! - `presence.rs`: the presence thread, the caller's presence and `about:` keys.

mod lost;
mod pending;
mod presence;
mod results;
mod served;
mod submit;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::link::Link;
use super::protocol::{self, Clock, Keys};
use super::settings::Settings;
use crate::Error;
use crate::backend::{Backend, Task};
use pending::{Pending, State};
use submit::withdraw;

/// Chunks are cut past this many bytes: Redis holds a task up to three
/// times while it passes (the command being read, the stream entry, the
/// reply to a worker), so large chunks make large memory peaks, while
/// tasks of a few MiB already cost little per byte.
const CHUNK_BYTES: usize = 4 << 20;

/// What the caller's threads share: the submitting threads (through
/// [`ClusterBackend`]), the collector (`results.rs`) and the presence
/// thread (`presence.rs`).
struct Shared {
    settings: Settings,
    keys: Keys,
    caller: String,
    /// Job name → its id on this queue, and its signature (see [`Keys::job_id`]).
    job_ids: Mutex<HashMap<&'static str, (String, &'static str)>>,
    /// The connection tasks are added through.
    submitter: Mutex<Link>,
    state: Mutex<State>,
    /// Signalled whenever a pending task leaves the table.
    settled: Condvar,
    /// Set by `terminate` (and so by drop): the collector ends, and a
    /// submit that has not sent its task yet gives up.
    stop: AtomicBool,
    /// The workers alive at the last count (see `count_workers`).
    live_workers: AtomicUsize,
    /// The builder's `task_timeout`, in milliseconds (0: none); workers
    /// enforce it.
    timeout_ms: u64,
    /// Redis' clock, which signed expiries follow.
    clock: Clock,
    /// The longest time this caller went without refreshing its presence,
    /// if it was longer than `presence` (the process was stopped or
    /// starved): said in the errors of tasks lost meanwhile.
    stalled: Mutex<Option<Duration>>,
    /// When the presence thread last refreshed this caller's presence: a
    /// pause still in progress as far as that thread knows (it may not have
    /// run yet since the process was continued) shows here.
    announced_at: Mutex<Instant>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections are single map or flag updates: a panic cannot
    // leave them half done.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A cluster pool's backend: the caller's side of the queue, with its
/// collector and presence threads, which end when it is dropped.
pub(crate) struct ClusterBackend {
    shared: Arc<Shared>,
    collector: Mutex<Option<JoinHandle<()>>>,
    presence: Mutex<Option<JoinHandle<()>>>,
    /// The number of workers chunks are sized for, if the builder said;
    /// otherwise the live workers are counted.
    processes: Option<usize>,
}

impl ClusterBackend {
    /// Connects, announces this caller and starts collecting. `processes`
    /// is only a hint for chunk sizes; by default the live workers are counted.
    pub(crate) fn start(
        url: &str,
        processes: Option<usize>,
        task_timeout: Option<Duration>,
    ) -> Result<Self, Error> {
        let settings = Settings::parse(url)?;
        crate::job::registry()?;
        let caller = protocol::random_id()?;
        let keys = Keys::new(&settings);
        let mut link = Link::open(&settings, format!("procpool-caller-{caller}"))?;
        let seen = link
            .query::<u64>(
                redis::cmd("ZCOUNT")
                    .arg(keys.workers())
                    .arg(fresh_since(&settings))
                    .arg("+inf"),
            )
            .map_err(|err| link.error("cannot count the workers", &err))?;
        if let Some(warning) = link.eviction_risk() {
            eprintln!("procpool: {warning}");
        }
        let collector_link = link.sibling(format!("procpool-caller-{caller}-results"));
        let presence_link = link.sibling(format!("procpool-caller-{caller}-presence"));
        let shared = Arc::new(Shared {
            settings,
            keys,
            caller,
            job_ids: Mutex::new(HashMap::new()),
            submitter: Mutex::new(link),
            state: Mutex::new(State::default()),
            settled: Condvar::new(),
            stop: AtomicBool::new(false),
            live_workers: AtomicUsize::new(seen as usize),
            // A limit past u64::MAX ms (`Duration::MAX`) is none at all.
            timeout_ms: task_timeout
                .and_then(|t| u64::try_from(t.as_millis()).ok())
                .map_or(0, |ms| ms.max(1)),
            clock: Clock::default(),
            stalled: Mutex::new(None),
            announced_at: Mutex::new(Instant::now()),
        });
        // Workers skip the tasks of a caller whose presence key is gone, so
        // it must exist before the first task.
        {
            let mut link = lock(&shared.submitter);
            let result = link.run(|conn| shared.announce(conn, 0));
            result.map_err(|err| link.error("cannot register the caller", &err))?;
        }
        let collector = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("procpool-cluster-results".into())
                .spawn(move || shared.collect(collector_link))
                .map_err(|e| Error::system("cannot start the cluster pool's results thread", e))?
        };
        // A thread of its own, so that a slow callback on the collector
        // thread never lets the presence key expire.
        let presence = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("procpool-cluster-presence".into())
                .spawn(move || shared.keep_present(presence_link))
        };
        let presence = match presence {
            Ok(handle) => handle,
            Err(e) => {
                shared.stop.store(true, Ordering::Release);
                let _ = collector.join();
                return Err(Error::system(
                    "cannot start the cluster pool's presence thread",
                    e,
                ));
            }
        };
        Ok(ClusterBackend {
            shared,
            collector: Mutex::new(Some(collector)),
            presence: Mutex::new(Some(presence)),
            processes,
        })
    }
}

/// The time (ms since the epoch) from which a worker's last heartbeat
/// shows it alive: three missed beats (a beat every third of the
/// visibility timeout), and a second for a busy Redis.
fn fresh_since(settings: &Settings) -> u64 {
    let window = settings.visibility + Duration::from_secs(1);
    protocol::now_ms().saturating_sub(window.as_millis() as u64)
}

impl Shared {
    /// Applies `f` to the state and wakes `join` if nothing is pending any more.
    fn settle<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = lock(&self.state);
        let value = f(&mut state);
        if state.pending.is_empty() {
            self.settled.notify_all();
        }
        value
    }

    /// This queue's id and the signature of `job`, registered in this program.
    fn job_id(&self, job: &'static str) -> Result<(String, &'static str), Error> {
        let mut ids = lock(&self.job_ids);
        if let Some(found) = ids.get(job) {
            return Ok(found.clone());
        }
        let signature = crate::job::registry()?
            .get(job)
            .map(|entry| entry.signature)
            .ok_or_else(|| Error::Registry(format!("job `{job}` is not registered")))?;
        let found = (self.keys.job_id(job, signature), signature);
        ids.insert(job, found.clone());
        Ok(found)
    }

    /// Fails every pending call with `error` (Redis out of reach for
    /// `reconnect`), and forgets the tasks not sent yet.
    fn fail_all(&self, error: &Error) {
        let lost: Vec<Pending> = self.settle(|state| state.take_all());
        for pending in lost {
            pending.task.fail(error.clone());
        }
    }
}

impl Backend for ClusterBackend {
    fn submit(&self, task: Task) -> Result<(), Error> {
        self.shared.submit(task)
    }

    fn close(&self) {
        lock(&self.shared.state).closed = true;
    }

    fn is_closed(&self) -> bool {
        lock(&self.shared.state).closed
    }

    fn join(&self) -> Result<(), Error> {
        self.close();
        let mut state = lock(&self.shared.state);
        while !state.pending.is_empty() {
            state = self
                .shared
                .settled
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        Ok(())
    }

    fn terminate(&self) {
        let shared = &self.shared;
        // A submit retrying against an unreachable Redis gives up, and
        // releases the connection this needs.
        shared.stop.store(true, Ordering::Release);
        let lost: Vec<Pending> = shared.settle(|state| {
            state.closed = true;
            state.take_all()
        });
        // Withdraw what no worker took yet, and say this caller is gone so
        // that workers skip what they took. Best effort: if Redis cannot be
        // reached, those tasks run and their results expire unread.
        let entries: Vec<(String, String)> = lost.iter().filter_map(|p| p.entry.clone()).collect();
        let mut link = lock(&shared.submitter);
        let _ = link.run(|conn| {
            withdraw(&mut redis::pipe(), &entries)
                .cmd("ZREM")
                .arg(shared.keys.callers())
                .arg(&shared.caller)
                .ignore()
                .cmd("DEL")
                .arg(shared.keys.caller(&shared.caller))
                .arg(shared.keys.about(&shared.caller))
                .arg(shared.keys.results(&shared.caller))
                .ignore()
                .query::<()>(conn)
        });
        drop(link);
        for pending in lost {
            let job = pending.task.job.to_owned();
            pending.task.fail(Error::Terminated { job });
        }
    }

    fn processes(&self) -> usize {
        self.processes
            .unwrap_or_else(|| self.shared.live_workers.load(Ordering::Relaxed))
            .max(1)
    }

    fn max_chunk_bytes(&self) -> Option<usize> {
        Some(self.shared.settings.max_payload.min(CHUNK_BYTES))
    }
}

impl Drop for ClusterBackend {
    fn drop(&mut self) {
        if !self.shared.stop.load(Ordering::Acquire) {
            self.terminate();
        }
        for thread in [lock(&self.collector).take(), lock(&self.presence).take()]
            .into_iter()
            .flatten()
        {
            let _ = thread.join();
        }
    }
}
