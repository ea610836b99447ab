//! A worker lost with a task in hand (died, timed out, broke the
//! protocol): what it finished is kept, the rest re-queued, or the items
//! failed with the reason.

use std::sync::atomic::Ordering;

use super::{Active, Driver, Sent, State};
use crate::Error;
use crate::backend::Part;
use crate::codec;
use crate::error::ExitCause;
use crate::local::launch::Lost;
use crate::reply_log::Partial;
use crate::stats::Departure;

/// How the item a worker was running when it was lost ended.
#[derive(Debug, Clone, Copy)]
enum ItemEnd {
    /// The worker died (crashed, was killed by someone else).
    Died(ExitCause),
    /// The driver killed it: the item ran longer than `task_timeout`.
    TimedOut,
}

impl Driver {
    /// Whatever answered is not in step with this driver: a job that
    /// forked, or one that wrote to the worker's socket. Nothing it says can
    /// be trusted, this reply included: the worker is replaced.
    pub(super) fn broke_protocol(&self, current: Active, sent: Sent, violation: String) -> State {
        let pid = current.worker.pid();
        log::warn!("procpool: worker {pid} broke the protocol ({violation}); replacing it");
        drop(current);
        self.lost(sent, pid, Lost::Protocol(violation), None);
        self.respawn()
    }

    /// The worker running `sent` is gone: keeps what it finished (`partial`,
    /// read from its reply region), and re-queues the rest or reports why
    /// it failed.
    pub(super) fn lost(&self, sent: Sent, pid: u32, lost: Lost, partial: Option<Partial>) {
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
}
