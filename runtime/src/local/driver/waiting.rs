//! Waiting for a worker's answer: within the task's time limit per item,
//! reporting the items that finish meanwhile, and checking that what comes
//! answers the task sent.

use std::time::{Duration, Instant};

use super::{Active, Driver, Sent};
use crate::local::launch::Lost;
use crate::local::may_spin;
use crate::local::messages::FromWorker;

/// How long a caller running its own task watches for the reply before it
/// sleeps: about a short job's round trip here, and a small share of a
/// long one.
const SPIN: Duration = Duration::from_micros(50);

/// How often a driver looks at how many items of a running task finished.
const PROGRESS_STEP: Duration = Duration::from_millis(100);

/// Checks that `reply` answers task number `id`.
pub(super) fn matches_task(reply: &FromWorker, id: u64) -> Result<(), String> {
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

impl Driver {
    /// Waits for the reply to `sent` until its deadline (then the worker is
    /// killed), reporting the items that finish meanwhile as progress.
    pub(super) fn await_reply(
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
}
