//! The collector thread: it reads this caller's results stream, checks
//! each result's tag, hands it to its call once, and between reads sends
//! the backlog, looks for lost tasks and unserved jobs, and gives up on
//! pending calls when Redis stays out of reach.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use super::pending::Pending;
use super::served::Unserved;
use super::{Shared, lock};
use crate::Error;
use crate::cluster::auth::ResultFields;
use crate::cluster::link::Link;
use crate::cluster::protocol::{self, Entry, Refusal};

/// How long the collector blocks in one `XREAD`.
const READ_BLOCK: Duration = Duration::from_millis(500);
/// How many results the collector takes per read, at most.
const READ_BATCH: usize = 256;
/// How many bytes of results one read may bring, at most (with results of
/// `max_payload` bytes each).
const READ_BYTES: usize = 256 << 20;
/// How often the caller checks that Redis still holds its pending tasks.
const RECONCILE_EVERY: Duration = Duration::from_secs(10);
/// How often the tasks of calls that ended early are taken off the queue.
const WITHDRAW_EVERY: Duration = Duration::from_secs(1);
/// How often the caller checks that some live worker can run each job it
/// has tasks queued for.
const SERVED_EVERY: Duration = Duration::from_secs(2);

/// Where the collector is in this caller's results stream.
pub(super) struct Reader {
    results: String,
    /// The id of the last result read.
    last: String,
    /// How many results one read takes at most.
    batch: usize,
}

impl Shared {
    /// The collector thread: reads results until the backend is dropped.
    pub(super) fn collect(&self, mut link: Link) {
        let mut reader = Reader {
            results: self.keys.results(&self.caller),
            last: "0-0".to_owned(),
            // At most 256 MiB of results in one reply.
            batch: (READ_BYTES / self.settings.max_payload).clamp(1, READ_BATCH),
        };
        let mut withdrawn = Instant::now();
        let mut reconciled = Instant::now();
        let mut reconcile_owed = false;
        let mut served = Instant::now();
        let mut unserved: HashMap<&'static str, Unserved> = HashMap::new();
        let mut generation = None;
        let mut down_since: Option<Instant> = None;
        while !self.stop.load(Ordering::Acquire) {
            if withdrawn.elapsed() >= WITHDRAW_EVERY {
                self.withdraw_cancelled(&mut link);
                withdrawn = Instant::now();
            }
            if served.elapsed() >= SERVED_EVERY {
                self.count_workers(&mut link);
                self.check_served(&mut link, &mut unserved);
                served = Instant::now();
            }
            self.feed(&mut link);
            match self.read(&mut link, &mut reader, Some(READ_BLOCK)) {
                Ok(_) => {
                    down_since = None;
                    // A new connection, whichever command made it: Redis may
                    // have restarted meanwhile, so look for lost tasks. Look
                    // now and then anyway: a flush or an eviction loses
                    // tasks without dropping connections.
                    if generation
                        .replace(link.generation())
                        .is_some_and(|g| g != link.generation())
                    {
                        reconcile_owed = true;
                    }
                    if (reconcile_owed || reconciled.elapsed() >= RECONCILE_EVERY)
                        && self.reconcile(&mut link, &mut reader)
                    {
                        reconcile_owed = false;
                        reconciled = Instant::now();
                    }
                }
                Err(err) => {
                    let since = *down_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.settings.reconnect {
                        // Results stay in Redis; only the calls waiting now
                        // give up, with the reason.
                        self.fail_all(&link.error(
                            &format!(
                                "lost the connection for {:?} (the URL's reconnect setting) \
                                 while results were pending",
                                self.settings.reconnect
                            ),
                            &err,
                        ));
                        down_since = None;
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Reads the next results (waiting up to `block` for one), hands them
    /// to their calls and deletes them; returns how many were read.
    pub(super) fn read(
        &self,
        link: &mut Link,
        reader: &mut Reader,
        block: Option<Duration>,
    ) -> Result<usize, redis::RedisError> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(reader.batch);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(&reader.results).arg(&reader.last);
        let entries = protocol::read_reply(link.query::<redis::Value>(&cmd)?);
        if let Some(entry) = entries.last() {
            reader.last.clone_from(&entry.id);
        }
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        for entry in entries {
            if self.authentic(link, &entry) {
                self.receive(link, entry);
            }
        }
        if !ids.is_empty() {
            // Read already; deleting only keeps the stream short.
            let _ = link.query::<()>(redis::cmd("XDEL").arg(&reader.results).arg(&ids));
        }
        Ok(ids.len())
    }

    /// Whether a result carries a valid tag for a task pending under its
    /// number. One that does not is dropped (never delivered, also not as an
    /// error), counted in the queue's `stats` and logged; the call goes on
    /// waiting for its real result.
    fn authentic(&self, link: &mut Link, entry: &Entry) -> bool {
        let auth = &self.settings.auth;
        if !auth.keyed() {
            return true;
        }
        let Some(seq) = entry.number("seq") else {
            return true; // Dropped by `receive` anyway.
        };
        let job = match lock(&self.state).pending.get(&seq) {
            Some(pending) => pending.task.job,
            None => return true, // Not pending: dropped by `receive` anyway.
        };
        let (kind, value) = match (entry.field("ok"), entry.field("err")) {
            (Some(value), _) => ("ok", value),
            (None, Some(value)) => ("err", value),
            (None, None) => ("", &[][..]),
        };
        let fields = ResultFields {
            queue: &self.settings.queue,
            caller: &self.caller,
            seq,
            job,
            kind,
            value,
        };
        if auth.result_valid(&fields, entry.field("tag")) {
            return true;
        }
        crate::cluster::warn(format_args!(
            "procpool cluster caller {}: dropped result {} for task {seq} (job `{job}`): its tag \
             does not match this queue's key; someone without the key wrote to {}",
            self.caller,
            entry.id,
            self.keys.results(&self.caller)
        ));
        let _ = link.query::<()>(
            redis::cmd("HINCRBY")
                .arg(self.keys.stats())
                .arg("forged_results")
                .arg(1),
        );
        false
    }

    /// Hands one result to its call, unless it was delivered already, or
    /// sends its task again if a worker dropped it unrun while this caller
    /// counted as gone.
    fn receive(&self, link: &mut Link, mut entry: Entry) {
        let Some(seq) = entry.number("seq") else {
            return;
        };
        let abandoned = entry.field("ok").is_none()
            && entry.field("err").is_some_and(|bytes| {
                matches!(
                    postcard::from_bytes::<Refusal>(bytes),
                    Ok(Refusal::Abandoned)
                )
            });
        if abandoned && self.resend(link, seq) {
            return;
        }
        let Some(Pending { task, .. }) = self.settle(|state| state.take(seq)) else {
            return; // A duplicate from a re-run task, or a terminated call.
        };
        let outcome = match (entry.take("ok"), entry.take("err")) {
            (Some(items), _) => Ok(items),
            (None, Some(bytes)) => Err(match postcard::from_bytes::<Refusal>(&bytes) {
                Ok(refusal) => refusal.into_error(task.job, task.first, task.count),
                Err(e) => Error::cluster(format!("cannot decode a worker's refusal: {e}")),
            }),
            (None, None) => Err(Error::cluster(format!(
                "result {} has neither `ok` nor `err`",
                entry.id
            ))),
        };
        task.sink
            .deliver(task.info(), outcome.as_deref().map_err(Error::clone));
    }
}
