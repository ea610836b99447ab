//! What callers and workers store in Redis, and where.
//!
//! For a queue `q`, every key starts with `procpool:{q}:` (the braces make
//! `q` the hash tag, so a Redis Cluster keeps a queue's keys in one slot):
//!
//! | key | type | written by | holds |
//! |---|---|---|---|
//! | `tasks:<job id>` | stream, group `workers`, with a TTL | callers | one entry per task of that job: `caller`, `seq`, `job`, `count`, `expires` (ms since the epoch, Redis' clock), `items`, with a `task_timeout` `timeout` (ms), and with a key `tag` |
//! | `serves:<job id>` | sorted set | workers | the live workers that can run that job, scored by the time each was last seen |
//! | `jobs` | hash | workers, and callers for jobs with tasks queued | job id → `name: signature`, for messages and inspection |
//! | `results:<caller>` | stream | workers | one entry per finished task: `seq`, then `ok` (the encoded outcomes) or `err`, and with a key `tag` |
//! | `caller:<caller>` | string, with a TTL of `presence` | callers | `p1:<expires>:<low>:<tag>` while the caller lives: until when it counts as present, the number below which all its tasks are settled, and with a key the HMAC of both; workers skip the tasks of a caller that is gone, and drop those numbered below `low` |
//! | `claims:<caller>` | hash, with a TTL of `ttl` | workers | task number → the stream entry id that runs it: a second entry with the same number (a copy) never runs; the caller removes numbers below its `low` |
//! | `callers` | sorted set, with a TTL | callers | each live caller, scored by its last refresh |
//! | `about:<caller>` | string, with a TTL of `presence` | callers | `<host> <pid> <tasks in Redis> <tasks waiting in the caller>`, for `inspect` |
//! | `workers` | sorted set | workers | each live worker, scored by the time it was last seen |
//! | `running` | hash | workers | worker → when its current task started and its job: set with the task's claim, removed with its result |
//! | `scanner` | string, with a TTL | workers | the worker that looks for dead workers' tasks, for half a visibility timeout |
//! | `lost:<job id>` | set, with a TTL of `ttl` | the scanning worker | entry ids of that job's tasks pending under dead workers, idle past the visibility timeout: any worker of the job takes one (`SPOP`, then `XCLAIM`) before reading new tasks |
//! | `stats` | hash | both | counters: `forged_tasks` (dropped by workers), `replayed_tasks` (copies of a task dropped by workers), `forged_results` (dropped by callers), `lost_tasks` and `timed_out_tasks` (failed by workers with `TaskLost`, `TaskTimedOut`) |
//!
//! A job's id is derived from its name, its argument and result types as
//! written, and the queue's key (see [`Keys::job_id`]): a worker reads the
//! streams of the jobs it has, exactly as the caller has them, so a worker
//! of another build (or with another key) never takes a task it cannot run,
//! and a rolling deploy only affects the jobs that changed.

use std::time::Duration;

use redis::Value;
use redis::streams::StreamId;
use serde::{Deserialize, Serialize};

use super::auth::Auth;
use super::settings::Settings;
use crate::failure::Failure;
use crate::{ClusterCause, Error};

/// The consumer group every worker of a queue reads through.
pub(crate) const GROUP: &str = "workers";

/// The names of a queue's keys.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
    auth: Auth,
}

impl Keys {
    pub(crate) fn new(settings: &Settings) -> Keys {
        Keys {
            // The queue's name in braces is the hash tag: in a Redis
            // Cluster every key of one queue is in the same slot, as the
            // transactions and multi-key commands need.
            prefix: format!("procpool:{{{}}}:", settings.queue),
            auth: settings.auth.clone(),
        }
    }
    /// The id of job `name` with `signature` (its argument and result
    /// types) on this queue: equal for a caller and a worker exactly when
    /// both have the same job and the same key.
    pub(crate) fn job_id(&self, name: &str, signature: &str) -> String {
        self.auth.derive_id(&format!("{name}: {signature}"))
    }
    /// The stream of the tasks of the job with id `job_id`.
    pub(crate) fn tasks(&self, job_id: &str) -> String {
        format!("{}tasks:{job_id}", self.prefix)
    }
    /// The id of the job whose tasks stream is `stream`.
    pub(crate) fn job_of<'s>(&self, stream: &'s str) -> Option<&'s str> {
        stream.strip_prefix(&self.prefix)?.strip_prefix("tasks:")
    }
    /// The live workers that can run the job with id `job_id`.
    pub(crate) fn serves(&self, job_id: &str) -> String {
        format!("{}serves:{job_id}", self.prefix)
    }
    pub(crate) fn jobs(&self) -> String {
        format!("{}jobs", self.prefix)
    }
    /// Worker name → `<started ms> <job>` of the task it runs, as of its
    /// last heartbeat.
    pub(crate) fn running(&self) -> String {
        format!("{}running", self.prefix)
    }
    /// The lost tasks (entry ids) of the job with id `job_id`: pending under
    /// a dead worker, for any live worker to take (see `recover`).
    pub(crate) fn lost(&self, job_id: &str) -> String {
        format!("{}lost:{job_id}", self.prefix)
    }
    /// Held by the worker that looks for dead workers' tasks (see `recover`).
    pub(crate) fn scanner(&self) -> String {
        format!("{}scanner", self.prefix)
    }
    pub(crate) fn stats(&self) -> String {
        format!("{}stats", self.prefix)
    }
    pub(crate) fn results(&self, caller: &str) -> String {
        format!("{}results:{caller}", self.prefix)
    }
    /// The live callers, scored by their last refresh (for inspection).
    pub(crate) fn callers(&self) -> String {
        format!("{}callers", self.prefix)
    }
    pub(crate) fn caller(&self, caller: &str) -> String {
        format!("{}caller:{caller}", self.prefix)
    }
    /// What `caller` tells operators about itself (see [`CallerAbout`]).
    pub(crate) fn about(&self, caller: &str) -> String {
        format!("{}about:{caller}", self.prefix)
    }
    /// Task number → the entry id that claimed it, for `caller`'s tasks.
    pub(crate) fn claims(&self, caller: &str) -> String {
        format!("{}claims:{caller}", self.prefix)
    }
    pub(crate) fn workers(&self) -> String {
        format!("{}workers", self.prefix)
    }
}

/// Why a worker stored no outcomes for a task; the `err` field of a result,
/// in postcard (a fixed procpool type, as the worker channel's messages:
/// see runtime/Cargo.toml), decoded with an error, never a panic, whatever
/// Redis holds.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Refusal {
    /// No item ran: unknown job, undecodable chunk.
    Failed(Failure),
    /// The task or its result is over the worker's `max_payload`.
    TooLarge {
        what: String,
        bytes: u64,
        limit: u64,
    },
    /// The task was delivered this many times, each worker lost.
    Lost { deliveries: u64 },
    /// The caller's presence key was gone: the task did not run.
    Abandoned,
    /// The job ran past the caller's `task_timeout`; its worker process
    /// exited, to be replaced.
    TimedOut { timeout_ms: u64 },
    /// The task waited in Redis past its signed expiry; it did not run.
    /// (Last, so that the encoding of the others is unchanged.)
    Expired { lifetime_ms: u64 },
    /// Redis refused the claim that makes a task run once; it did not run.
    Unclaimed { reason: String },
}

impl Refusal {
    /// The caller-facing error, for a task of `job` over items `first..first + count`.
    pub(crate) fn into_error(self, job: &str, first: usize, count: usize) -> Error {
        match self {
            Refusal::Failed(failure) => failure.into_error(job, first),
            Refusal::TooLarge { what, bytes, limit } => Error::PayloadTooLarge {
                job: job.to_owned(),
                what,
                bytes,
                limit,
            },
            Refusal::Lost { deliveries } => Error::TaskLost {
                job: job.to_owned(),
                first,
                count,
                deliveries,
            },
            Refusal::TimedOut { timeout_ms } => Error::TaskTimedOut {
                job: job.to_owned(),
                first,
                count,
                timeout: Duration::from_millis(timeout_ms),
            },
            Refusal::Expired { lifetime_ms } => Error::cluster(format!(
                "job `{job}`: the task for items {first}..{end} waited in Redis longer than \
                 its lifetime of {lifetime:?} before a worker took it, so it was dropped \
                 unrun (an older task could be a replayed copy). Run the call again, and \
                 start workers for this queue",
                end = first + count,
                lifetime = Duration::from_millis(lifetime_ms)
            )),
            Refusal::Unclaimed { reason } => Error::cluster(format!(
                "job `{job}`: a worker did not run the task for items {first}..{end}: Redis \
                 refused the claim that makes each task run once ({reason}). Allow procpool's \
                 user the hash commands (HSETNX, HGET, HDEL) on the queue's keys",
                end = first + count
            )),
            Refusal::Abandoned => Error::cluster(format!(
                "job `{job}`: a worker dropped the task for items {first}..{end} without running \
                 it, because this caller's presence key had expired: the caller did not refresh \
                 it for `presence` seconds (it was stalled, cut off from Redis, or Redis lost the key), \
                 each time it sent the task again (`max_deliveries` times). Run the call again",
                end = first + count
            )),
        }
    }
}

/// What a caller says about itself in `about:<caller>`, for inspection:
/// where it runs and how much work it has. Read back defensively (anyone
/// who can write to Redis can write it): `None` unless all four parts are there.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CallerAbout {
    pub(crate) host: String,
    pub(crate) pid: u32,
    /// Tasks sent to Redis whose results did not come back yet.
    pub(crate) in_redis: u64,
    /// Tasks waiting in the caller for room in its window.
    pub(crate) backlog: u64,
}

impl CallerAbout {
    pub(crate) fn encode(&self) -> String {
        // A host name has no spaces; one that had would be cut there.
        let host: String = self
            .host
            .split_whitespace()
            .next()
            .unwrap_or("?")
            .to_owned();
        format!("{host} {} {} {}", self.pid, self.in_redis, self.backlog)
    }

    pub(crate) fn decode(text: &str) -> Option<CallerAbout> {
        let mut parts = text.split(' ');
        let about = CallerAbout {
            host: parts.next().filter(|h| !h.is_empty())?.to_owned(),
            pid: parts.next()?.parse().ok()?,
            in_redis: parts.next()?.parse().ok()?,
            backlog: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(about)
    }
}

/// One stream entry: its id and its fields.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The stream it was read from (empty when the reply does not say).
    pub(crate) stream: String,
    pub(crate) id: String,
    pub(crate) fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    pub(crate) fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(key, _)| key == name.as_bytes())
            .map(|(_, value)| value.as_slice())
    }

    pub(crate) fn text(&self, name: &str) -> Option<&str> {
        self.field(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub(crate) fn number(&self, name: &str) -> Option<u64> {
        self.text(name).and_then(|v| v.parse().ok())
    }

    /// Takes a field's bytes out of the entry (large payloads are not copied).
    pub(crate) fn take(&mut self, name: &str) -> Option<Vec<u8>> {
        self.fields
            .iter_mut()
            .find(|(key, _)| key == name.as_bytes())
            .map(|(_, value)| std::mem::take(value))
    }
}

impl Entry {
    /// An entry of `stream` from a typed reply (`XCLAIM`, `XAUTOCLAIM`);
    /// the values are moved, not copied.
    pub(crate) fn from_stream_id(stream: &str, entry: StreamId) -> Entry {
        Entry {
            stream: stream.to_owned(),
            id: entry.id,
            fields: entry
                .map
                .into_iter()
                .map(|(name, value)| (name.into_bytes(), bytes(value)))
                .collect(),
        }
    }
}

/// The entries of an `XREAD`/`XREADGROUP` reply (all streams). Deleted
/// entries (`nil` fields) are returned with no fields.
///
/// Parsed by hand rather than through the redis crate's typed
/// `StreamReadReply`, which clones the whole reply before parsing it: these
/// replies carry tasks and results of up to `max_payload` bytes.
pub(crate) fn read_reply(value: Value) -> Vec<Entry> {
    let mut entries = Vec::new();
    for stream in into_items(value) {
        // [key, [entry, ...]]
        let mut parts = into_items(stream).into_iter();
        let key = parts.next().and_then(text).unwrap_or_default();
        if let Some(list) = parts.next() {
            entries.extend(entry_list(list).into_iter().map(|mut entry| {
                entry.stream.clone_from(&key);
                entry
            }));
        }
    }
    entries
}

/// A list of `[id, [field, value, ...]]`.
fn entry_list(value: Value) -> Vec<Entry> {
    into_items(value)
        .into_iter()
        .filter_map(|entry| {
            let mut parts = into_items(entry).into_iter();
            let id = text(parts.next()?)?;
            let mut fields = Vec::new();
            let mut flat = into_items(parts.next().unwrap_or(Value::Nil)).into_iter();
            while let (Some(key), Some(value)) = (flat.next(), flat.next()) {
                fields.push((bytes(key), bytes(value)));
            }
            Some(Entry {
                stream: String::new(),
                id,
                fields,
            })
        })
        .collect()
}

/// The items of an array (or of a RESP3 map, as key, value, key, ...).
pub(crate) fn into_items(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

fn bytes(value: Value) -> Vec<u8> {
    match value {
        Value::BulkString(bytes) => bytes,
        Value::SimpleString(text) => text.into_bytes(),
        Value::Int(n) => n.to_string().into_bytes(),
        _ => Vec::new(),
    }
}

pub(crate) fn text(value: Value) -> Option<String> {
    String::from_utf8(bytes(value)).ok()
}

/// 128 random bits in hex, for caller and worker names.
pub(crate) fn random_id() -> Result<String, Error> {
    crate::sys::random_hex().map_err(|e| {
        Error::cluster_caused(
            "cannot read the kernel's random source for a caller or worker id",
            ClusterCause::io(e),
        )
    })
}

/// How long a task is valid after its caller signed it: a worker drops it
/// unrun after that (with [`Refusal::Expired`]). It bounds how long a copy
/// of a task could run if Redis lost (or someone deleted) the claim records
/// that otherwise stop it; a task waits in Redis this long at most.
pub(crate) const TASK_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Redis' clock, in ms since the epoch: one clock for every host, so that
/// signed expiries mean the same to callers and workers whose own clocks
/// disagree.
pub(crate) fn redis_time_ms(conn: &mut dyn redis::ConnectionLike) -> redis::RedisResult<u64> {
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query(conn)?;
    Ok(seconds * 1000 + micros / 1000)
}

/// The difference between Redis' clock and this host's, in ms, learnt from
/// `TIME` now and then: `now()` is then Redis' time without asking.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    offset_ms: std::sync::atomic::AtomicI64,
}

impl Clock {
    /// Learns the offset from a `TIME` reply `redis_ms` read just now.
    pub(crate) fn learn(&self, redis_ms: u64) {
        let offset = redis_ms as i64 - now_ms() as i64;
        self.offset_ms
            .store(offset, std::sync::atomic::Ordering::Relaxed);
    }

    /// Redis' time now, in ms since the epoch, as of the last `learn`.
    pub(crate) fn now(&self) -> u64 {
        let offset = self.offset_ms.load(std::sync::atomic::Ordering::Relaxed);
        now_ms().saturating_add_signed(offset)
    }
}

/// Milliseconds since the Unix epoch, for the workers' last-seen scores.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_caller_says_about_itself_reads_back() {
        let about = CallerAbout {
            host: "web-01".into(),
            pid: 4242,
            in_redis: 12,
            backlog: 300,
        };
        assert_eq!(about.encode(), "web-01 4242 12 300");
        assert_eq!(CallerAbout::decode(&about.encode()), Some(about));
        for bad in [
            "",
            "h",
            "h 1 2",
            "h 1 2 3 4",
            "h x 2 3",
            " 1 2 3",
            "h -1 2 3",
        ] {
            assert_eq!(CallerAbout::decode(bad), None, "{bad}");
        }
    }

    proptest::proptest! {
        /// Whatever Redis holds, decoding answers without panicking, and
        /// what it accepts encodes back to the same text.
        #[test]
        fn any_about_text_decodes_or_is_refused(text in "\\PC{0,40}") {
            if let Some(about) = CallerAbout::decode(&text) {
                proptest::prop_assert_eq!(CallerAbout::decode(&about.encode()), Some(about));
            }
        }
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn xread_replies_are_parsed() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("procpool:q:results:c"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("seq"), bulk("7"), bulk("ok"), bulk("\u{1}")]),
                ]),
                // A deleted entry, as XAUTOCLAIM on Redis 6 may return.
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let mut entries = read_reply(reply);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, "1-0");
        assert_eq!(entries[0].stream, "procpool:q:results:c");
        assert_eq!(entries[0].number("seq"), Some(7));
        assert_eq!(entries[0].take("ok"), Some(vec![1]));
        assert_eq!(entries[0].field("ok"), Some(&[][..]));
        assert!(entries[1].fields.is_empty());
        assert!(read_reply(Value::Nil).is_empty());
    }
}
