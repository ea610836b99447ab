//! Recovery of the tasks of dead workers, at a cost that grows with the
//! dead workers, not with the live ones or the tasks in flight, and run by
//! every live worker at once.
//!
//! Every worker keeps its heartbeat in the queue's `workers` set. One worker
//! at a time (whoever takes the `scanner` lock for half a visibility
//! timeout) looks for workers whose heartbeat stopped, and puts their
//! pending tasks, once idle for the visibility timeout, into the job's
//! `lost:<job id>` set; once a dead worker holds nothing any more, it
//! removes it from the consumer groups and the worker sets. Every worker's
//! heartbeat asks whether a lost set of its jobs has members, and a worker
//! that learns so takes one task from there ([`take_lost`]: `SPOP`, then
//! `XCLAIM` with the visibility timeout as minimum idle time, so that one
//! worker alone gets it) before it reads new tasks. The tasks of eight dead
//! workers thus run on eight live ones at once. A full sweep of the pending
//! lists, for consumers that never had a heartbeat, runs only every ten
//! visibility timeouts.

use std::time::{Duration, Instant};

use redis::RedisError;
use redis::streams::{StreamClaimReply, StreamPendingCountReply};

use super::link::Link;
use super::protocol::{self, Entry, GROUP, Keys};
use super::settings::Settings;

/// How many dead workers one round looks at, at most.
const DEAD_BATCH: usize = 256;
/// How many pending tasks of one dead worker in one stream (or of one
/// sweep step) go to the lost set per round, at most.
const LOST_BATCH: usize = 256;
/// The full sweep runs once per this many visibility timeouts.
const SWEEP_EVERY: u32 = 10;

/// Removes a consumer from the groups of `KEYS` only if it holds no task in
/// any of them: the check and the removal are one atomic step, so a worker
/// that was only stopped (`SIGSTOP`) and reads a task meanwhile keeps it.
const FORGET_SCRIPT: &str = r"
for _, key in ipairs(KEYS) do
  local ok, pending = pcall(redis.call, 'XPENDING', key, ARGV[1], '-', '+', 1, ARGV[2])
  if ok and #pending > 0 then return 0 end
end
for _, key in ipairs(KEYS) do
  pcall(redis.call, 'XGROUP', 'DELCONSUMER', key, ARGV[1], ARGV[2])
end
return 1
";

/// What a worker needs to know to recover lost tasks.
pub(crate) struct Scope<'a> {
    pub(crate) settings: &'a Settings,
    pub(crate) keys: &'a Keys,
    /// This worker's consumer name.
    pub(crate) name: &'a str,
    /// The tasks streams of its jobs.
    pub(crate) streams: &'a [String],
    /// The ids of its jobs.
    pub(crate) job_ids: &'a [String],
}

/// One worker's part in recovery: when it scans next, and where its sweep is.
pub(crate) struct Recovery {
    next_scan: Instant,
    /// Until when this worker holds the scanner lock.
    held_until: Option<Instant>,
    next_sweep: Instant,
    /// The stream the current sweep is at, and where in its pending list
    /// (`-`, or `(<id>` after the last entry looked at).
    sweep_stream: usize,
    sweep_from: String,
}

impl Recovery {
    pub(crate) fn new(visibility: Duration) -> Recovery {
        let now = Instant::now();
        Recovery {
            next_scan: now,
            held_until: None,
            next_sweep: now + visibility * SWEEP_EVERY,
            sweep_stream: 0,
            sweep_from: "-".to_owned(),
        }
    }

    /// Does the next bit of recovery, if it is time and this worker holds
    /// the scanner lock: puts the lost tasks it finds into their jobs' lost
    /// sets. Returns whether it put any there (this worker then takes one
    /// at once; the others learn it from their heartbeats).
    pub(crate) fn step(&mut self, link: &mut Link, scope: &Scope<'_>) -> Result<bool, RedisError> {
        let now = Instant::now();
        if now < self.next_scan {
            return Ok(false);
        }
        let period = scope.settings.visibility / 2;
        if self.held_until.is_none_or(|until| now >= until) {
            let taken: Option<String> = link.query(
                redis::cmd("SET")
                    .arg(scope.keys.scanner())
                    .arg(scope.name)
                    .arg("NX")
                    .arg("PX")
                    .arg(period.as_millis().max(1) as u64),
            )?;
            if taken.is_none() {
                self.next_scan = now + period;
                return Ok(false);
            }
            self.held_until = Some(now + period);
        }
        let mut published = self.publish_from_dead(link, scope)?;
        if now >= self.next_sweep {
            published |= self.sweep(link, scope)?;
            if self.sweep_stream < scope.streams.len() {
                return Ok(published); // More to sweep; the next step goes on.
            }
            self.sweep_stream = 0;
            self.next_sweep = now + scope.settings.visibility * SWEEP_EVERY;
        }
        self.next_scan = now + period;
        Ok(published)
    }

    /// Puts the idle tasks of workers whose heartbeat stopped into the lost
    /// sets, and forgets the dead workers that hold nothing any more.
    fn publish_from_dead(
        &mut self,
        link: &mut Link,
        scope: &Scope<'_>,
    ) -> Result<bool, RedisError> {
        let visibility = scope.settings.visibility.as_millis() as u64;
        let cutoff = protocol::now_ms().saturating_sub(visibility + 1000);
        let dead: Vec<String> = link.query(
            redis::cmd("ZRANGEBYSCORE")
                .arg(scope.keys.workers())
                .arg("-inf")
                .arg(cutoff)
                .arg("LIMIT")
                .arg(0)
                .arg(DEAD_BATCH),
        )?;
        let mut published = false;
        for worker in dead.iter().filter(|w| *w != scope.name) {
            let mut holds = false;
            for (stream, job_id) in scope.streams.iter().zip(scope.job_ids) {
                let pending: StreamPendingCountReply = link.query(
                    redis::cmd("XPENDING")
                        .arg(stream)
                        .arg(GROUP)
                        .arg("-")
                        .arg("+")
                        .arg(LOST_BATCH)
                        .arg(worker),
                )?;
                holds |= !pending.ids.is_empty();
                // A task claimed recently (its worker's last beat) waits.
                let idle: Vec<&str> = pending
                    .ids
                    .iter()
                    .filter(|task| task.last_delivered_ms as u64 >= visibility)
                    .map(|task| task.id.as_str())
                    .collect();
                published |= publish(link, scope, job_id, &idle)?;
            }
            if !holds {
                // Best effort (an ACL may deny EVAL): recovering matters more.
                let _ = forget(link, scope, worker);
            }
        }
        Ok(published)
    }

    /// Puts the tasks idle past the visibility timeout anywhere in the
    /// pending list of the stream the sweep is at into its lost set.
    fn sweep(&mut self, link: &mut Link, scope: &Scope<'_>) -> Result<bool, RedisError> {
        let (Some(stream), Some(job_id)) = (
            scope.streams.get(self.sweep_stream),
            scope.job_ids.get(self.sweep_stream),
        ) else {
            return Ok(false);
        };
        let reply: StreamPendingCountReply = link.query(
            redis::cmd("XPENDING")
                .arg(stream)
                .arg(GROUP)
                .arg("IDLE")
                .arg(scope.settings.visibility.as_millis() as u64)
                .arg(&self.sweep_from)
                .arg("+")
                .arg(LOST_BATCH),
        )?;
        match reply.ids.last() {
            Some(last) if reply.ids.len() == LOST_BATCH => {
                self.sweep_from = format!("({}", last.id);
            }
            _ => {
                self.sweep_from = "-".to_owned();
                self.sweep_stream += 1;
            }
        }
        let ids: Vec<&str> = reply.ids.iter().map(|task| task.id.as_str()).collect();
        publish(link, scope, job_id, &ids)
    }
}

/// Adds `ids` (lost tasks of the job `job_id`) to its lost set, which
/// expires with the job's stream if no worker is left to take them.
fn publish(
    link: &mut Link,
    scope: &Scope<'_>,
    job_id: &str,
    ids: &[&str],
) -> Result<bool, RedisError> {
    if ids.is_empty() {
        return Ok(false);
    }
    let lost = scope.keys.lost(job_id);
    let mut pipe = redis::pipe();
    pipe.cmd("SADD")
        .arg(&lost)
        .arg(ids)
        .ignore()
        .cmd("PEXPIRE")
        .arg(&lost)
        .arg(scope.settings.ttl.as_millis().max(1) as u64)
        .ignore();
    link.run(|conn| pipe.query::<()>(conn))?;
    Ok(true)
}

/// Takes one task from the lost set of the job at `index` in `scope`, if
/// one is there and no other worker took it meanwhile: the entry, claimed
/// by this worker, with how many times it has been delivered. `None` when
/// the set is empty. Ids that are not pending any more (the task finished,
/// or another worker took it) are skipped, as are malformed ones.
pub(crate) fn take_lost(
    link: &mut Link,
    scope: &Scope<'_>,
    index: usize,
) -> Result<Option<(Entry, u64)>, RedisError> {
    let (Some(stream), Some(job_id)) = (scope.streams.get(index), scope.job_ids.get(index)) else {
        return Ok(None);
    };
    let lost = scope.keys.lost(job_id);
    // Bounded: a set of stale ids costs a few rounds, then it is empty.
    for _ in 0..LOST_BATCH {
        let Some(id) = link.query::<Option<String>>(redis::cmd("SPOP").arg(&lost))? else {
            return Ok(None);
        };
        if !is_entry_id(&id) {
            continue;
        }
        // Only a task idle for the visibility timeout: if another worker
        // claimed it since (or its worker was alive after all), that
        // claim reset its idle time, and this one gets nothing.
        let claimed: StreamClaimReply = link.query(
            redis::cmd("XCLAIM")
                .arg(stream)
                .arg(GROUP)
                .arg(scope.name)
                .arg(scope.settings.visibility.as_millis() as u64)
                .arg(&id),
        )?;
        if let Some(entry) = claimed.ids.into_iter().next() {
            let entry = Entry::from_stream_id(stream, entry);
            // Claimed, so delivered at least twice.
            let deliveries = deliveries(link, stream, &entry.id).unwrap_or(2);
            return Ok(Some((entry, deliveries)));
        }
    }
    Ok(None)
}

/// Whether `id` reads as a stream entry id (`<ms>-<seq>`).
fn is_entry_id(id: &str) -> bool {
    id.split_once('-').is_some_and(|(ms, seq)| {
        !ms.is_empty()
            && !seq.is_empty()
            && ms.len() <= 20
            && seq.len() <= 20
            && ms.bytes().chain(seq.bytes()).all(|b| b.is_ascii_digit())
    })
}

/// Removes dead `worker` from the consumer groups of this worker's streams
/// if it holds nothing there, and from the worker sets unless it also ran
/// jobs this worker does not have (workers of that build forget it there).
fn forget(link: &mut Link, scope: &Scope<'_>, worker: &str) -> Result<(), RedisError> {
    let mut script = redis::cmd("EVAL");
    script.arg(FORGET_SCRIPT).arg(scope.streams.len());
    for stream in scope.streams {
        script.arg(stream);
    }
    script.arg(GROUP).arg(worker);
    let forgotten: i64 = link.query(&script)?;
    if forgotten == 0 {
        return Ok(());
    }
    let ids: Vec<String> = link.query(redis::cmd("HKEYS").arg(scope.keys.jobs()))?;
    let foreign: Vec<&String> = ids
        .iter()
        .filter(|id| !scope.job_ids.contains(id))
        .collect();
    if !foreign.is_empty() {
        let mut pipe = redis::pipe();
        for id in &foreign {
            pipe.cmd("ZSCORE").arg(scope.keys.serves(id)).arg(worker);
        }
        let scores: Vec<Option<f64>> = link.run(|conn| pipe.query(conn))?;
        if scores.iter().any(Option::is_some) {
            return Ok(());
        }
    }
    let mut pipe = redis::pipe();
    pipe.cmd("ZREM")
        .arg(scope.keys.workers())
        .arg(worker)
        .ignore()
        .cmd("HDEL")
        .arg(scope.keys.running())
        .arg(worker)
        .ignore();
    for id in scope.job_ids {
        pipe.cmd("ZREM")
            .arg(scope.keys.serves(id))
            .arg(worker)
            .ignore();
    }
    link.run(|conn| pipe.query::<()>(conn))
}

/// How many times task `id` of `stream` was delivered, if Redis says.
pub(crate) fn deliveries(link: &mut Link, stream: &str, id: &str) -> Option<u64> {
    let reply: StreamPendingCountReply = link
        .query(
            redis::cmd("XPENDING")
                .arg(stream)
                .arg(GROUP)
                .arg(id)
                .arg(id)
                .arg(1),
        )
        .ok()?;
    let count = reply.ids.first()?.times_delivered;
    u64::try_from(count).ok()
}

#[cfg(test)]
mod tests {
    use super::is_entry_id;

    #[test]
    fn only_stream_entry_ids_are_taken_from_a_lost_set() {
        assert!(is_entry_id("1718000000000-0") && is_entry_id("1-12"));
        for bad in ["", "-", "1-", "-1", "1", "a-1", "1-0-0", "1 -0", "+", "$"] {
            assert!(!is_entry_id(bad), "{bad}");
        }
    }
}
