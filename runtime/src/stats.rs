//! What a pool has done so far: [`PoolStats`], from [`Pool::stats`](crate::Pool::stats).
//!
//! Like MPIRE's worker insights: how many tasks ran and failed, how many
//! workers were started and why any left, and per worker slot how long it
//! spent running jobs against waiting for work.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// A snapshot of a pool's counters. A task is one chunk of a call (an
/// `apply` is one task; a `map` is cut into several).
///
/// # When the counts are exact
///
/// Counters move while the pool's threads work, so a snapshot taken while
/// calls run is a view of one moment. What a caller has already seen is
/// counted by the time it sees it: when a call returns, an `imap` yields
/// an item or an `AsyncResult` is ready, `tasks_done`, `tasks_failed`,
/// `items_done` and the departures (`workers_died`, `workers_timed_out`,
/// `workers_broke_protocol`, `workers_retired`) include that call's tasks,
/// items and workers. Replacements come after: a worker that left is
/// replaced once its task's outcome is delivered, so right after an error
/// such as [`Error::TaskTimedOut`](crate::Error::TaskTimedOut),
/// `workers_replaced` may be below the departures and that slot's `pid`
/// `None` for as long as a worker takes to start (at most the pool's
/// `spawn_timeout`); `workers_replaced` then catches up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Tasks whose worker replied (items inside may still have failed,
    /// e.g. with a panic: the worker survived them).
    pub tasks_done: u64,
    /// Tasks that ended without a reply: their worker died, timed out or
    /// broke the protocol, or no worker could be started for them.
    pub tasks_failed: u64,
    /// Tasks queued again after their worker died (`retries`).
    pub tasks_retried: u64,
    /// Items a worker got to, counted as each one finishes inside its chunk
    /// (an item that failed, or whose worker died or ran out of time on
    /// it, counts too): what a progress display shows. Items that never
    /// reached a worker (the pool was terminated, no worker could start)
    /// do not count.
    pub items_done: u64,
    /// Worker processes started, the first ones included.
    pub workers_started: u64,
    /// Workers started to replace one that left (died, timed out, was
    /// retired), so `workers_started - processes` when nothing failed to start.
    pub workers_replaced: u64,
    /// Workers that died on their own (crash, signal, `exit`, out of memory).
    pub workers_died: u64,
    /// Workers killed because a task ran past `task_timeout`.
    pub workers_timed_out: u64,
    /// Workers killed because they broke the protocol (a job that forked,
    /// or wrote to the worker's socket).
    pub workers_broke_protocol: u64,
    /// Workers retired on purpose: `max_tasks_per_child` or
    /// `max_memory_per_child`.
    pub workers_retired: u64,
    /// One entry per worker slot (a slot keeps its place when its worker
    /// is replaced).
    pub workers: Vec<WorkerStats>,
}

/// One worker slot's share of the work.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// The slot's current worker process, if one is running.
    pub pid: Option<u32>,
    /// Tasks the slot's workers replied to.
    pub tasks: u64,
    /// Time the slot's workers spent with a task in hand.
    pub busy: Duration,
    /// Time since the pool started not spent busy: waiting for work, or
    /// starting a worker.
    pub idle: Duration,
    /// The job the slot's worker is running now (`None`: idle, or
    /// starting). Never its arguments: only the job's registered name.
    pub running: Option<&'static str>,
    /// How long the slot's worker has had its current task (zero when idle).
    pub running_for: Duration,
}

impl WorkerStats {
    /// The share of the slot's time spent running tasks, from 0 to 1.
    pub fn utilization(&self) -> f64 {
        let total = (self.busy + self.idle).as_secs_f64();
        if total > 0.0 {
            self.busy.as_secs_f64() / total
        } else {
            0.0
        }
    }
}

/// Why a worker left, for the counters.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Departure {
    Died,
    TimedOut,
    BrokeProtocol,
    Retired,
}

/// The counters a backend keeps, shared by its threads.
#[derive(Debug)]
pub(crate) struct Counters {
    started_at: Instant,
    tasks_done: AtomicU64,
    tasks_failed: AtomicU64,
    tasks_retried: AtomicU64,
    items_done: AtomicU64,
    workers_started: AtomicU64,
    departures: [AtomicU64; 4],
    slots: Vec<Mutex<Slot>>,
}

#[derive(Debug, Default)]
struct Slot {
    tasks: u64,
    busy: Duration,
    /// The task in the worker's hands: its job and when it was sent.
    running: Option<(&'static str, Instant)>,
}

impl Counters {
    pub(crate) fn new(slots: usize) -> Self {
        Counters {
            started_at: Instant::now(),
            tasks_done: AtomicU64::new(0),
            tasks_failed: AtomicU64::new(0),
            tasks_retried: AtomicU64::new(0),
            items_done: AtomicU64::new(0),
            workers_started: AtomicU64::new(0),
            departures: Default::default(),
            slots: (0..slots).map(|_| Mutex::default()).collect(),
        }
    }

    /// A task of `job` went to `slot`'s worker at `sent_at`: one
    /// uncontended lock per task (the slot's, which `task_done` takes
    /// too), never one per item.
    pub(crate) fn task_started(&self, slot: usize, job: &'static str, sent_at: Instant) {
        if let Some(slot) = self.slots.get(slot) {
            slot.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .running = Some((job, sent_at));
        }
    }

    /// A task of `slot` got its reply after `busy` in the worker's hands.
    pub(crate) fn task_done(&self, slot: usize, busy: Duration) {
        self.tasks_done.fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = self.slots.get(slot) {
            let mut slot = slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            slot.tasks += 1;
            slot.busy += busy;
            slot.running = None;
        }
    }

    /// A task of `slot` was lost after `busy` in a worker's hands.
    pub(crate) fn task_lost(&self, slot: usize, busy: Duration, retried: bool) {
        let counter = if retried {
            &self.tasks_retried
        } else {
            &self.tasks_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = self.slots.get(slot) {
            let mut slot = slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            slot.busy += busy;
            slot.running = None;
        }
    }

    /// A task failed before reaching a worker (no worker could be started).
    pub(crate) fn items_done(&self, items: usize) {
        self.items_done.fetch_add(items as u64, Ordering::Relaxed);
    }

    pub(crate) fn task_failed(&self) {
        self.tasks_failed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn worker_started(&self) {
        self.workers_started.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn worker_left(&self, why: Departure) {
        self.departures[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The snapshot; `pids` gives each slot's current worker.
    pub(crate) fn snapshot(&self, pids: impl Fn(usize) -> Option<u32>) -> PoolStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let started = load(&self.workers_started);
        let age = self.started_at.elapsed();
        PoolStats {
            tasks_done: load(&self.tasks_done),
            tasks_failed: load(&self.tasks_failed),
            tasks_retried: load(&self.tasks_retried),
            items_done: load(&self.items_done),
            workers_started: started,
            workers_replaced: started.saturating_sub(self.slots.len() as u64),
            workers_died: load(&self.departures[Departure::Died as usize]),
            workers_timed_out: load(&self.departures[Departure::TimedOut as usize]),
            workers_broke_protocol: load(&self.departures[Departure::BrokeProtocol as usize]),
            workers_retired: load(&self.departures[Departure::Retired as usize]),
            workers: self
                .slots
                .iter()
                .enumerate()
                .map(|(index, slot)| {
                    let slot = slot
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let busy = slot.busy.min(age);
                    let pid = pids(index);
                    // A slot without a worker runs nothing, whatever it last sent.
                    let running = slot.running.filter(|_| pid.is_some());
                    WorkerStats {
                        pid,
                        tasks: slot.tasks,
                        busy,
                        idle: age - busy,
                        running: running.map(|(job, _)| job),
                        running_for: running.map_or(Duration::ZERO, |(_, at)| at.elapsed()),
                    }
                })
                .collect(),
        }
    }
}

/// The calls in flight, for a pool with a dashboard: each call registers
/// once (one lock, one allocation per call, only with a dashboard) and
/// counts its finished items in an atomic it owns.
#[derive(Debug, Default)]
pub(crate) struct CallBoard {
    calls: Mutex<Vec<Weak<LiveCall>>>,
}

/// One call in flight: what the dashboard shows of it (never its items).
// Read only by the dashboard.
#[cfg_attr(not(feature = "dashboard"), allow(dead_code))]
#[derive(Debug)]
pub(crate) struct LiveCall {
    pub(crate) job: &'static str,
    pub(crate) total: Option<u64>,
    pub(crate) started: Instant,
    pub(crate) done: AtomicU64,
}

/// A call in flight as a snapshot shows it.
#[cfg_attr(not(feature = "dashboard"), allow(dead_code))]
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CallStats {
    pub(crate) job: &'static str,
    pub(crate) done: u64,
    pub(crate) total: Option<u64>,
    pub(crate) age: Duration,
}

impl CallBoard {
    /// Registers a call; it leaves the board when the returned handle
    /// (and its clones) drop.
    pub(crate) fn enter(&self, job: &'static str, total: Option<usize>) -> Arc<LiveCall> {
        let call = Arc::new(LiveCall {
            job,
            total: total.map(|t| t as u64),
            started: Instant::now(),
            done: AtomicU64::new(0),
        });
        let mut calls = self
            .calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Ended calls are swept here too, so a board nobody reads stays small.
        if calls.len() >= 64 && calls.len().is_power_of_two() {
            calls.retain(|call| call.strong_count() > 0);
        }
        calls.push(Arc::downgrade(&call));
        call
    }

    /// The calls still in flight, oldest first.
    #[cfg_attr(not(feature = "dashboard"), allow(dead_code))]
    pub(crate) fn snapshot(&self) -> Vec<CallStats> {
        let mut calls = self
            .calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        calls.retain(|call| call.strong_count() > 0);
        calls
            .iter()
            .filter_map(Weak::upgrade)
            .map(|call| CallStats {
                job: call.job,
                done: call.done.load(Ordering::Relaxed),
                total: call.total,
                age: call.started.elapsed(),
            })
            .collect()
    }
}
