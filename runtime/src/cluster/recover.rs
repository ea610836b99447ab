//! Recovery of the tasks of dead workers, at a cost that grows with the
//! dead workers, not with the live ones or the tasks in flight.
//!
//! Every worker keeps its heartbeat in the queue's `workers` set. One worker
//! at a time (whoever takes the `scanner` lock for half a visibility
//! timeout) looks for workers whose heartbeat stopped, claims their pending
//! tasks once idle for the visibility timeout, and once a dead worker holds
//! nothing any more, removes it from the consumer groups and the worker
//! sets. A full `XAUTOCLAIM` sweep of the pending lists, for consumers that
//! never had a heartbeat, runs only every ten visibility timeouts.

use std::time::{Duration, Instant};

use redis::RedisError;
use redis::streams::{StreamAutoClaimReply, StreamClaimReply, StreamPendingCountReply};

use super::link::Link;
use super::protocol::{self, Entry, GROUP, Keys};
use super::settings::Settings;

/// How many dead workers one round looks at, at most.
const DEAD_BATCH: usize = 256;
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
    /// The stream the current sweep is at, and where in its pending list.
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
            sweep_from: "0-0".to_owned(),
        }
    }

    /// Does the next bit of recovery, if it is time: a task claimed from a
    /// dead worker, with how many times it has been delivered, to run now
    /// (then call again at once: there may be more).
    pub(crate) fn step(
        &mut self,
        link: &mut Link,
        scope: &Scope<'_>,
    ) -> Result<Option<(Entry, u64)>, RedisError> {
        let now = Instant::now();
        if now < self.next_scan {
            return Ok(None);
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
                return Ok(None);
            }
            self.held_until = Some(now + period);
        }
        if let Some(found) = self.claim_from_dead(link, scope)? {
            return Ok(Some(found));
        }
        if now >= self.next_sweep {
            if let Some(found) = self.sweep(link, scope)? {
                return Ok(Some(found));
            }
            if self.sweep_stream < scope.streams.len() {
                return Ok(None); // More to sweep; the next step goes on.
            }
            self.sweep_stream = 0;
            self.next_sweep = now + scope.settings.visibility * SWEEP_EVERY;
        }
        self.next_scan = now + period;
        Ok(None)
    }

    /// Claims one idle task of a worker whose heartbeat stopped, and
    /// forgets the dead workers that hold nothing any more.
    fn claim_from_dead(
        &mut self,
        link: &mut Link,
        scope: &Scope<'_>,
    ) -> Result<Option<(Entry, u64)>, RedisError> {
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
        for worker in dead.iter().filter(|w| *w != scope.name) {
            let mut holds = false;
            for stream in scope.streams {
                let pending: StreamPendingCountReply = link.query(
                    redis::cmd("XPENDING")
                        .arg(stream)
                        .arg(GROUP)
                        .arg("-")
                        .arg("+")
                        .arg(1)
                        .arg(worker),
                )?;
                let Some(task) = pending.ids.first() else {
                    continue;
                };
                holds = true;
                if (task.last_delivered_ms as u64) < visibility {
                    continue; // Its claim is recent: wait.
                }
                let claimed: StreamClaimReply = link.query(
                    redis::cmd("XCLAIM")
                        .arg(stream)
                        .arg(GROUP)
                        .arg(scope.name)
                        .arg(visibility)
                        .arg(&task.id),
                )?;
                if let Some(entry) = claimed.ids.into_iter().next() {
                    // XCLAIM counted one more delivery.
                    let deliveries = task.times_delivered as u64 + 1;
                    return Ok(Some((Entry::from_stream_id(stream, entry), deliveries)));
                }
            }
            if !holds {
                // Best effort (an ACL may deny EVAL): claiming matters more.
                let _ = forget(link, scope, worker);
            }
        }
        Ok(None)
    }

    /// Claims one task idle past the visibility timeout anywhere in the
    /// pending list of the stream the sweep is at.
    fn sweep(
        &mut self,
        link: &mut Link,
        scope: &Scope<'_>,
    ) -> Result<Option<(Entry, u64)>, RedisError> {
        let Some(stream) = scope.streams.get(self.sweep_stream) else {
            return Ok(None);
        };
        let reply: StreamAutoClaimReply = link.query(
            redis::cmd("XAUTOCLAIM")
                .arg(stream)
                .arg(GROUP)
                .arg(scope.name)
                .arg(scope.settings.visibility.as_millis() as u64)
                .arg(&self.sweep_from)
                .arg("COUNT")
                .arg(1),
        )?;
        self.sweep_from = reply.next_stream_id;
        if self.sweep_from == "0-0" {
            self.sweep_stream += 1;
        }
        let Some(entry) = reply.claimed.into_iter().next() else {
            return Ok(None);
        };
        let entry = Entry::from_stream_id(stream, entry);
        // Claimed, so delivered at least twice.
        let deliveries = deliveries(link, stream, &entry.id).unwrap_or(2);
        Ok(Some((entry, deliveries)))
    }
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
