//! A worker's checks before a task runs: the entry's fields and tag
//! (`read_task`), its caller's presence (`caller_present`), and the claim
//! that runs each task once (`admit`); a copy of a task is dropped unrun
//! as a replay (`drop_replay`).

use std::time::{Duration, Instant};

use super::{Worker, stopping};
use crate::cluster::auth::{Presence, TaskFields};
use crate::cluster::protocol::{self, Entry};

/// How long a caller seen present counts as present without asking again.
const PRESENCE_CACHE: Duration = Duration::from_secs(1);

impl Worker {
    /// What `caller`'s presence key says, or `None` if the caller is gone:
    /// no key, a value not signed with the queue's key (anyone can set a
    /// key; only the caller can sign it), or one whose signed expiry passed
    /// on Redis' clock (a copy of an old value set again). A caller seen
    /// present less than `PRESENCE_CACHE` ago counts as present without
    /// asking again, which saves a round trip per task in a stream of tasks
    /// from one caller; its tasks then stop within `presence` plus that.
    pub(super) fn caller_present(&mut self, caller: &str) -> Option<Presence> {
        let now = Instant::now();
        self.present
            .retain(|_, (seen, _)| now.duration_since(*seen) < PRESENCE_CACHE);
        if let Some((_, presence)) = self.present.get(caller) {
            return Some(*presence);
        }
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(self.keys.caller(caller)).cmd("TIME");
        let read = self
            .link
            .run(|conn| pipe.query::<(Option<Vec<u8>>, (u64, u64))>(conn));
        let presence = match read {
            Ok((value, (seconds, micros))) => {
                let redis_now = seconds * 1000 + micros / 1000;
                self.clock.learn(redis_now);
                let presence =
                    self.settings
                        .auth
                        .presence(&self.settings.queue, caller, &value?)?;
                if presence.expires_ms <= redis_now {
                    return None;
                }
                presence
            }
            // Unknown (Redis unreachable) counts as present: the claim and
            // the store that follow wait for Redis anyway.
            Err(_) => Presence {
                expires_ms: u64::MAX,
                low: 0,
            },
        };
        self.present.insert(caller.to_owned(), (now, presence));
        Some(presence)
    }

    /// Claims task `seq` of `caller` for stream entry `id`: true if this
    /// entry holds the claim (now, or since an earlier delivery of the same
    /// entry, whose worker died), false if another entry does (a copy). The
    /// claims are shared by every worker of the queue, in the caller's hash
    /// `claims:<caller>` (same hash tag, so one slot of a Redis Cluster),
    /// which expires `ttl` after the caller's last refresh.
    fn claim(
        &mut self,
        (caller, seq, job): (&str, u64, &str),
        id: &str,
    ) -> Result<bool, redis::RedisError> {
        let claims = self.keys.claims(caller);
        let ttl = self.settings.ttl.as_millis().max(1) as u64;
        // HSETNX is atomic by itself; the holder is read only when the
        // number was claimed already (a re-delivery or a copy), so a task
        // costs two commands in one round trip.
        let mut pipe = redis::pipe();
        pipe.cmd("HSETNX")
            .arg(&claims)
            .arg(seq)
            .arg(id)
            .cmd("PEXPIRE")
            .arg(&claims)
            .arg(ttl)
            .ignore()
            // What this worker runs, for `inspect`, in the same round trip:
            // current from the task's start (the heartbeat comes every
            // third of the visibility timeout), removed with its result.
            .cmd("HSET")
            .arg(self.keys.running())
            .arg(&self.name)
            .arg(format!("{} {job}", protocol::now_ms()))
            .ignore();
        let (fresh,): (bool,) = self
            .link
            .run_retrying(None, &stopping, |conn| pipe.query(conn))?;
        if fresh {
            return Ok(true);
        }
        let holder: Option<String> = self.link.run_retrying(None, &stopping, |conn| {
            redis::cmd("HGET").arg(&claims).arg(seq).query(conn)
        })?;
        Ok(holder.as_deref() == Some(id))
    }

    /// Drops a copy of a task that ran (or runs) from another entry: never
    /// run, acknowledged and deleted, counted in the queue's `stats` as
    /// `replayed_tasks` and reported.
    pub(super) fn drop_replay(&mut self, entry: &Entry, task: &Task, why: &str) {
        crate::cluster::warn(format_args!(
            "procpool cluster worker {}: dropped task {} (job `{}`, task {} of caller \
             {}) without running it: {why}. Someone added a copy of a genuine task to \
             the queue",
            self.name, entry.id, task.job, task.seq, task.caller
        ));
        let _ = self.link.query::<()>(
            redis::cmd("HINCRBY")
                .arg(self.keys.stats())
                .arg("replayed_tasks")
                .arg(1),
        );
        self.acknowledge(&entry.stream, &entry.id);
    }

    /// The task in `entry`, its signed fields checked; `None` (the entry
    /// acknowledged, and reported if it was forged) when it was withdrawn,
    /// is malformed, has no valid tag or an invalid caller id.
    pub(super) fn read_task(&mut self, entry: &mut Entry) -> Option<Task> {
        if entry.fields.is_empty() {
            // Withdrawn by its caller after it was delivered.
            self.acknowledge(&entry.stream, &entry.id);
            return None;
        }
        let (Some(caller), Some(seq), Some(job), Some(count)) = (
            entry.text("caller").map(str::to_owned),
            entry.number("seq"),
            entry.text("job").map(str::to_owned),
            entry.number("count"),
        ) else {
            eprintln!(
                "procpool cluster worker {}: dropping malformed task {}",
                self.name, entry.id
            );
            self.acknowledge(&entry.stream, &entry.id);
            return None;
        };
        let task = Task {
            items: entry.take("items").unwrap_or_default(),
            timeout_ms: entry.number("timeout").unwrap_or(0),
            // Absent only from an older release's (unkeyed) caller: no expiry.
            expires_ms: entry.number("expires"),
            caller,
            seq,
            job,
            count,
        };
        let fields = TaskFields {
            queue: &self.settings.queue,
            caller: &task.caller,
            seq,
            job: &task.job,
            count,
            timeout_ms: task.timeout_ms,
            expires_ms: task.expires_ms.unwrap_or(0),
            items: &task.items,
        };
        if !self.settings.auth.task_valid(&fields, entry.field("tag")) {
            crate::cluster::warn(format_args!(
                "procpool cluster worker {}: dropped task {} (job `{}`) without running it: \
                 its tag does not match this queue's key, so someone without the key added it \
                 (or a caller of an older procpool release signed it)",
                self.name, entry.id, task.job
            ));
            let stats = self.keys.stats();
            let _ = self
                .link
                .query::<()>(redis::cmd("HINCRBY").arg(stats).arg("forged_tasks").arg(1));
            self.acknowledge(&entry.stream, &entry.id);
            return None;
        }
        // The caller id becomes part of a key name: only ids procpool makes.
        if task.caller.is_empty() || !task.caller.bytes().all(|b| b.is_ascii_hexdigit()) {
            eprintln!(
                "procpool cluster worker {}: dropping task {} with an invalid caller id",
                self.name, entry.id
            );
            self.acknowledge(&entry.stream, &entry.id);
            return None;
        }
        Some(task)
    }

    /// Whether the task of a present caller may run: each task runs once,
    /// so a copy of its entry (same signed fields, another entry id) is
    /// dropped unrun, whether the task is settled (below the caller's
    /// signed watermark) or not (another entry holds its claim). A
    /// re-delivery of the same entry (its worker died) holds the claim
    /// already, and runs.
    pub(super) fn admit(&mut self, entry: &Entry, task: &Task, presence: Presence) -> Admission {
        if task.seq < presence.low {
            // Settled. The entry is gone if another worker stored its
            // result (or the caller withdrew it) after this one read it:
            // nothing to count then.
            let exists = self
                .link
                .query::<Vec<redis::Value>>(
                    redis::cmd("XRANGE")
                        .arg(&entry.stream)
                        .arg(&entry.id)
                        .arg(&entry.id),
                )
                .map_or(true, |found| !found.is_empty());
            if exists {
                self.drop_replay(entry, task, "its caller settled it already");
            } else {
                self.acknowledge(&entry.stream, &entry.id);
            }
            return Admission::Dropped;
        }
        match self.claim((&task.caller, task.seq, &task.job), &entry.id) {
            Ok(true) => Admission::Run,
            Ok(false) => {
                self.drop_replay(
                    entry,
                    task,
                    "another entry of the same task holds its claim",
                );
                Admission::Dropped
            }
            // Stopping: unclaimed, so not run; it goes to another worker.
            Err(_) if stopping() => Admission::Dropped,
            // Redis refused the claim (an ACL without hash commands):
            // running it could run a copy too, so it fails, saying why.
            Err(err) => Admission::Unclaimed(err.to_string()),
        }
    }
}

/// A task as its entry says, its tag checked.
pub(super) struct Task {
    pub(super) caller: String,
    pub(super) seq: u64,
    pub(super) job: String,
    pub(super) count: u64,
    pub(super) items: Vec<u8>,
    /// The caller's `task_timeout` in ms (0: none).
    pub(super) timeout_ms: u64,
    /// Its signed expiry (Redis' clock), if it has one.
    pub(super) expires_ms: Option<u64>,
}

/// Whether a task of a present caller may run (see [`Worker::admit`]).
pub(super) enum Admission {
    Run,
    /// Dropped unrun: a copy, settled already, or the worker is stopping.
    Dropped,
    /// Redis refused the claim that makes it run once.
    Unclaimed(String),
}
