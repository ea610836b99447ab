//! What callers and workers store in Redis, and where.
//!
//! For a queue `q`, every key starts with `procpool:q:`:
//!
//! | key | type | written by | holds |
//! |---|---|---|---|
//! | `tasks` (`tasks:<key id>` with a key) | stream, group `workers` | callers | one entry per task: `caller`, `seq`, `job`, `fp`, `count`, `items`, and with a key `tag` |
//! | `results:<caller>` | stream | workers | one entry per finished task: `seq`, then `ok` (the encoded outcomes) or `err`, and with a key `tag` |
//! | `caller:<caller>` | string, with a TTL | callers | present while the caller lives; workers skip the tasks of a caller that is gone |
//! | `registry:<fp>` | string, with a TTL | callers | the caller's job list, so a refusing worker can say what differs |
//! | `workers` | sorted set | workers | each live worker, scored by the time it was last seen |
//! | `stats` | hash | both | counters: `forged_tasks` (dropped by workers), `forged_results` (dropped by callers) |
//!
//! With a key, the tasks stream's name is derived from it, so that workers
//! with another key (or none) never read the caller's tasks.

use redis::Value;
use serde::{Deserialize, Serialize};

use super::settings::Settings;
use crate::Error;
use crate::wire::Failure;

/// The consumer group every worker of a queue reads through.
pub(crate) const GROUP: &str = "workers";

/// The names of a queue's keys.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
    tasks: String,
}

impl Keys {
    pub(crate) fn new(settings: &Settings) -> Keys {
        let prefix = format!("procpool:{}:", settings.queue);
        let tasks = if settings.auth.keyed() {
            format!("{prefix}tasks:{}", settings.auth.derive_id("tasks"))
        } else {
            format!("{prefix}tasks")
        };
        Keys { prefix, tasks }
    }
    pub(crate) fn tasks(&self) -> String {
        self.tasks.clone()
    }
    pub(crate) fn stats(&self) -> String {
        format!("{}stats", self.prefix)
    }
    pub(crate) fn results(&self, caller: &str) -> String {
        format!("{}results:{caller}", self.prefix)
    }
    pub(crate) fn caller(&self, caller: &str) -> String {
        format!("{}caller:{caller}", self.prefix)
    }
    pub(crate) fn registry(&self, fingerprint: &str) -> String {
        format!("{}registry:{fingerprint}", self.prefix)
    }
    pub(crate) fn workers(&self) -> String {
        format!("{}workers", self.prefix)
    }
}

/// Why a worker stored no outcomes for a task; the `err` field of a result.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Refusal {
    /// No item ran: unknown job, undecodable chunk.
    Failed(Failure),
    /// The worker's registry differs from the caller's: what differs.
    Mismatch(String),
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
}

impl Refusal {
    /// The caller-facing error, for a task of `job` over items `first..first + count`.
    pub(crate) fn into_error(self, job: &str, first: usize, count: usize) -> Error {
        match self {
            Refusal::Failed(failure) => failure.into_error(job, first),
            Refusal::Mismatch(message) => Error::Registry(message),
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
            Refusal::Abandoned => Error::Cluster(format!(
                "job `{job}`: a worker dropped the task for items {first}..{end} without running \
                 it, because this caller's presence key had expired: the caller did not refresh \
                 it for `ttl` seconds (it was stalled, cut off from Redis, or Redis lost the key). \
                 Run the call again",
                end = first + count
            )),
        }
    }
}

/// One stream entry: its id and its fields.
#[derive(Debug)]
pub(crate) struct Entry {
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

/// The entries of an `XREAD`/`XREADGROUP` reply (all streams), or of the
/// entry list of an `XAUTOCLAIM` reply. Deleted entries (`nil` fields) are
/// returned with no fields.
pub(crate) fn read_reply(value: Value) -> Vec<Entry> {
    let mut entries = Vec::new();
    for stream in into_items(value) {
        // [key, [entry, ...]]
        if let Some(list) = into_items(stream).into_iter().nth(1) {
            entries.extend(entry_list(list));
        }
    }
    entries
}

/// A list of `[id, [field, value, ...]]`.
pub(crate) fn entry_list(value: Value) -> Vec<Entry> {
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
            Some(Entry { id, fields })
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
    crate::process::random_hex()
        .map_err(|e| Error::Cluster(format!("cannot read /dev/urandom for an id: {e}")))
}

/// Milliseconds since the Unix epoch, for the workers' last-seen scores.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a refusing worker tells the caller about two registries.
pub(crate) fn registry_difference(caller: Option<&str>, worker: &str) -> String {
    let Some(caller) = caller else {
        return "the caller's job list has expired from Redis, so the difference is unknown"
            .to_owned();
    };
    let caller_jobs: Vec<&str> = caller.lines().collect();
    let worker_jobs: Vec<&str> = worker.lines().collect();
    let only = |a: &[&str], b: &[&str]| -> Vec<String> {
        a.iter()
            .filter(|line| !b.contains(line))
            .map(|line| format!("`{line}`"))
            .collect()
    };
    let mut parts = Vec::new();
    let in_caller = only(&caller_jobs, &worker_jobs);
    let in_worker = only(&worker_jobs, &caller_jobs);
    if !in_caller.is_empty() {
        parts.push(format!("only the caller has {}", in_caller.join(", ")));
    }
    if !in_worker.is_empty() {
        parts.push(format!("only the worker has {}", in_worker.join(", ")));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(entries[0].number("seq"), Some(7));
        assert_eq!(entries[0].take("ok"), Some(vec![1]));
        assert_eq!(entries[0].field("ok"), Some(&[][..]));
        assert!(entries[1].fields.is_empty());
        assert!(read_reply(Value::Nil).is_empty());
    }

    #[test]
    fn registry_difference_names_both_sides() {
        let text = registry_difference(
            Some("a: fn(u64) -> u64\nb: fn()"),
            "a: fn(u32) -> u32\nb: fn()",
        );
        assert_eq!(
            text,
            "only the caller has `a: fn(u64) -> u64`; only the worker has `a: fn(u32) -> u32`"
        );
    }
}
