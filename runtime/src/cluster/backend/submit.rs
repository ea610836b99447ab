//! Sending tasks: a task is numbered, signed and added to its job's
//! stream, or waits in the backlog until results free room in the window;
//! a task a worker dropped unrun is sent again; tasks of calls that ended
//! are withdrawn from the queue.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::pending::{Pending, Queued};
use super::{Shared, lock};
use crate::Error;
use crate::backend::Task;
use crate::cluster::auth::TaskFields;
use crate::cluster::link::Link;
use crate::cluster::protocol::TASK_LIFETIME;

impl Shared {
    /// Registers `task` and sends it to its job's stream, or keeps it in
    /// the backlog while the window is full (see [`Backend::submit`]).
    pub(super) fn submit(&self, mut task: Task) -> Result<(), Error> {
        if !task.attached.is_empty() {
            // A Queue, Pipe, Event or Shared is descriptors on this host.
            return Err(crate::exchange::refused_by_cluster(task.job));
        }
        let limit = self.settings.max_payload;
        if task.items.len() > limit {
            return Err(Error::PayloadTooLarge {
                job: task.job.to_owned(),
                what: format!(
                    "the task for items {}..{}",
                    task.first,
                    task.first + task.count
                ),
                bytes: task.items.len() as u64,
                limit: limit as u64,
            });
        }
        let (job, count) = (task.job, task.count);
        let stream = self.keys.tasks(&self.job_id(job)?.0);
        let items = std::mem::take(&mut task.items);
        let bytes = items.len();
        // Registered before it is sent: its result may come back at once.
        let (seq, queued) = {
            let mut state = lock(&self.state);
            if state.closed {
                return Err(Error::Closed);
            }
            let seq = state.next_seq;
            state.next_seq += 1;
            let expires_ms = self.clock.now() + TASK_LIFETIME.as_millis() as u64;
            let tag = self.settings.auth.task_tag(&TaskFields {
                queue: &self.settings.queue,
                caller: &self.caller,
                seq,
                job,
                count: count as u64,
                timeout_ms: self.timeout_ms,
                expires_ms,
                items: &items,
            });
            let queued = Queued {
                seq,
                job,
                count,
                stream,
                items,
                expires_ms,
                tag,
            };
            // Behind the tasks already waiting, or when the window is full,
            // the task waits here: the collector sends it as results free
            // room, so Redis holds at most a window of this caller's input.
            let now = state.backlog.is_empty() && state.admits(bytes, self.settings.window);
            let in_flight = if now { bytes } else { 0 };
            state.in_flight += in_flight;
            state.pending.insert(
                seq,
                Pending {
                    task,
                    entry: None,
                    in_flight,
                    sent: None,
                    resent: 0,
                },
            );
            if !now {
                state.backlog.push_back(queued);
                return Ok(());
            }
            (seq, queued)
        };
        let mut link = lock(&self.submitter);
        if self.stop.load(Ordering::Acquire) {
            // Terminated since the task was registered: it already failed.
            drop(link);
            self.settle(|state| state.take(seq));
            return Err(Error::Closed);
        }
        let added = link.run_retrying(
            Some(self.settings.reconnect),
            &|| self.stop.load(Ordering::Acquire),
            |conn| self.add(conn, &queued),
        );
        match added {
            Ok(id) => {
                self.sent(&mut link, queued, id);
                Ok(())
            }
            Err(err) => {
                let error = link.error("cannot add a task to the queue", &err);
                drop(link);
                self.settle(|state| state.take(seq));
                Err(error)
            }
        }
    }

    /// Adds one task to its stream; returns its entry id.
    pub(super) fn add(
        &self,
        conn: &mut dyn redis::ConnectionLike,
        task: &Queued,
    ) -> redis::RedisResult<String> {
        // Presence first, in the same round trip: a worker never sees this
        // task without it, even right after Redis restarted.
        let mut pipe = redis::pipe();
        self.mark_present(&mut pipe);
        let add = pipe
            .cmd("XADD")
            .arg(&task.stream)
            .arg("*")
            .arg("caller")
            .arg(&self.caller)
            .arg("seq")
            .arg(task.seq)
            .arg("job")
            .arg(task.job)
            .arg("count")
            .arg(task.count)
            .arg("expires")
            .arg(task.expires_ms)
            .arg("items")
            .arg(&task.items);
        if self.timeout_ms > 0 {
            add.arg("timeout").arg(self.timeout_ms);
        }
        if let Some(tag) = &task.tag {
            add.arg("tag").arg(tag);
        }
        // The stream lives on while a caller has tasks in it; once every
        // such caller is gone, it expires, also with no worker.
        add.cmd("PEXPIRE")
            .arg(&task.stream)
            .arg(self.settings.ttl.as_millis().max(1) as u64)
            .ignore();
        let (id,): (String,) = pipe.query(conn)?;
        Ok(id)
    }

    /// Records that `task` went out as entry `id`, or withdraws it if its
    /// call ended meanwhile (terminated, failed): no task nobody waits for.
    pub(super) fn sent(&self, link: &mut Link, task: Queued, id: String) {
        let withdraw = {
            let mut state = lock(&self.state);
            match state.pending.get_mut(&task.seq) {
                Some(pending) => {
                    pending.entry = Some((task.stream.clone(), id));
                    pending.sent = Some(task);
                    None
                }
                None => Some((task.stream, id)),
            }
        };
        if let Some((stream, id)) = withdraw {
            let _ = link.query::<()>(redis::cmd("XDEL").arg(stream).arg(&id));
        }
    }

    /// Sends task `seq` again after a worker dropped it unrun because this
    /// caller's presence had expired (it was stalled: SIGSTOP, a long
    /// pause, a laptop lid): the task provably did not run, and with this
    /// caller present again it will. Up to `max_deliveries` times per
    /// task; false when the task is not pending or was sent that often
    /// (its call then fails, saying why). A task that Redis cannot take
    /// now waits in the backlog, sent with the others.
    pub(super) fn resend(&self, link: &mut Link, seq: u64) -> bool {
        let task = {
            let mut state = lock(&self.state);
            let Some(pending) = state.pending.get_mut(&seq) else {
                return false;
            };
            if pending.resent >= self.settings.max_deliveries {
                return false;
            }
            let Some(task) = pending.sent.take() else {
                return false;
            };
            pending.resent += 1;
            task
        };
        match link.run(|conn| self.add(conn, &task)) {
            Ok(id) => self.sent(link, task, id),
            Err(_) => {
                let mut state = lock(&self.state);
                if let Some(pending) = state.pending.get_mut(&seq) {
                    state.in_flight -= std::mem::take(&mut pending.in_flight);
                    state.backlog.push_front(task);
                }
            }
        }
        true
    }

    /// Sends the tasks waiting for room in the window, as room frees up.
    pub(super) fn feed(&self, link: &mut Link) {
        loop {
            let next = {
                let mut state = lock(&self.state);
                // Tasks of calls that ended meanwhile are dropped unsent.
                while let Some(front) = state.backlog.front()
                    && !state.pending.contains_key(&front.seq)
                {
                    state.backlog.pop_front();
                }
                let Some(front) = state.backlog.front() else {
                    return;
                };
                let bytes = front.items.len();
                if !state.admits(bytes, self.settings.window) {
                    return;
                }
                let task = state.backlog.pop_front();
                if let Some(task) = &task
                    && let Some(pending) = state.pending.get_mut(&task.seq)
                {
                    pending.in_flight = bytes;
                    state.in_flight += bytes;
                }
                task
            };
            let Some(task) = next else { return };
            match link.run(|conn| self.add(conn, &task)) {
                Ok(id) => self.sent(link, task, id),
                Err(_) => {
                    // Tried again on the next round; a Redis down for
                    // `reconnect` fails every pending call meanwhile.
                    let mut state = lock(&self.state);
                    if let Some(pending) = state.pending.get_mut(&task.seq) {
                        state.in_flight -= std::mem::take(&mut pending.in_flight);
                        state.backlog.push_front(task);
                    }
                    return;
                }
            }
        }
    }

    /// Removes the tasks of calls nobody waits for (a dropped `imap`) from
    /// the queue, so workers do not run them.
    pub(super) fn withdraw_cancelled(&self, link: &mut Link) {
        let entries: Vec<(String, String)> = self.settle(|state| {
            let cancelled: Vec<u64> = state
                .pending
                .iter()
                .filter(|(_, p)| p.task.sink.cancelled())
                .map(|(seq, _)| *seq)
                .collect();
            cancelled
                .iter()
                .filter_map(|seq| state.take(*seq))
                .filter_map(|p| p.entry)
                .collect()
        });
        if !entries.is_empty() {
            let _ = link.run(|conn| withdraw(&mut redis::pipe(), &entries).query::<()>(conn));
        }
    }
}

/// Adds to `pipe` what deletes the task entries `entries` (stream, id).
pub(super) fn withdraw<'p>(
    pipe: &'p mut redis::Pipeline,
    entries: &[(String, String)],
) -> &'p mut redis::Pipeline {
    let mut by_stream: HashMap<&str, Vec<&str>> = HashMap::new();
    for (stream, id) in entries {
        by_stream.entry(stream).or_default().push(id);
    }
    for (stream, ids) in by_stream {
        pipe.cmd("XDEL").arg(stream).arg(ids).ignore();
    }
    pipe
}
