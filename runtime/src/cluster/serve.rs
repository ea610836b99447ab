//! The worker's side: take tasks from the queue's consumer group, run
//! registered jobs, store each result and acknowledge the task in one
//! transaction.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use redis::Value;

use super::auth::{ResultFields, TaskFields};
use super::backend::ensure_group;
use super::link::Link;
use super::protocol::{self, Entry, GROUP, Keys, Refusal};
use super::settings::Settings;
use crate::Error;

/// A worker not seen for an hour is dropped from the queue's `workers` set.
const STALE_WORKER_MS: u64 = 3_600_000;

/// Set by SIGINT or SIGTERM: finish the current task, then return.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: nix::libc::c_int) {
    STOP.store(true, Ordering::Release);
}

pub(crate) fn stopping() -> bool {
    STOP.load(Ordering::Acquire)
}

/// The first SIGINT or SIGTERM asks for a clean stop; the handler is reset
/// by it (`SA_RESETHAND`), so a second one ends the process at once.
pub(crate) fn install_stop_handlers() {
    let action = SigAction::new(
        SigHandler::Handler(on_stop),
        SaFlags::SA_RESETHAND | SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        let _ = unsafe { sigaction(signal, &action) };
    }
}

/// How the consumer name of the worker with process id `pid` on this host
/// starts: `<host>-<pid>-`, then a random suffix (pids are reused).
pub(crate) fn name_prefix(pid: u32) -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "host".to_owned());
    format!("{host}-{pid}-")
}

/// Serves the queue as the consumer `<host>-<pid>-<suffix>`; a random
/// suffix when none is given (a supervisor gives one, to know the name).
pub(crate) fn serve(url: &str, suffix: Option<String>) -> Result<(), Error> {
    let settings = Settings::parse(url)?;
    let (fingerprint, listing) = crate::job::fingerprint()?;
    let suffix = match suffix {
        Some(suffix) => suffix,
        None => protocol::random_id()?[..8].to_owned(),
    };
    let name = format!("{}{suffix}", name_prefix(std::process::id()));
    let keys = Keys::new(&settings);
    let mut link = Link::open(&settings, format!("procpool-worker-{name}"))?;
    ensure_group(&mut link, &keys).map_err(|err| link.error("cannot create the queue", &err))?;
    install_stop_handlers();
    crate::worker::become_worker(format!("ClusterWorker-{name}"));
    let beat = Heartbeat::start(
        link.sibling(format!("procpool-worker-{name}-beat")),
        &keys,
        &name,
        settings.visibility,
    )?;
    let mut worker = Worker {
        settings,
        keys,
        name,
        fingerprint,
        listing,
        link,
        beat,
        claim_from: "0-0".to_owned(),
        generation: 0,
    };
    let outcome = worker.run();
    worker.beat.stop();
    worker.leave();
    outcome
}

struct Worker {
    settings: Settings,
    keys: Keys,
    /// This worker's consumer name in the group.
    name: String,
    fingerprint: String,
    listing: String,
    link: Link,
    beat: Heartbeat,
    /// Where the next `XAUTOCLAIM` scan of the pending list starts: each
    /// scan reads at most 10 entries, so it must go on where it stopped.
    claim_from: String,
    /// The link's connection count when this worker last found nothing of
    /// its own pending.
    generation: u64,
}

impl Worker {
    /// Leaves the consumer group, so that the group lists only live
    /// workers, unless a task is still pending under this worker's name
    /// (deleting the consumer would drop it from the pending list, and no
    /// one would run it again).
    fn leave(&mut self) {
        let tasks = self.keys.tasks();
        let mine = self.link.query::<Value>(
            redis::cmd("XPENDING")
                .arg(&tasks)
                .arg(GROUP)
                .arg("-")
                .arg("+")
                .arg(1)
                .arg(&self.name),
        );
        if mine.is_ok_and(|reply| protocol::into_items(reply).is_empty()) {
            let _ = self.link.query::<()>(
                redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&tasks)
                    .arg(GROUP)
                    .arg(&self.name),
            );
        }
    }

    fn run(&mut self) -> Result<(), Error> {
        let tasks = self.keys.tasks();
        let block = (self.settings.visibility / 2).min(Duration::from_secs(1));
        let mut next_claim = Instant::now();
        while !stopping() {
            if Instant::now() >= next_claim {
                match self.claim_stale()? {
                    // Look again at once: a dead worker may have left several.
                    Some((entry, deliveries)) => {
                        self.handle(entry, deliveries);
                        continue;
                    }
                    // More of the pending list to scan.
                    None if self.claim_from != "0-0" => continue,
                    None => next_claim = Instant::now() + self.settings.visibility / 2,
                }
            }
            // After a new connection, first the tasks already delivered to
            // this worker: a reply lost with the old connection left them
            // pending under its name ("0"), not new (">").
            let generation = self.link.generation();
            let own = generation != self.generation;
            let read = self.link.run_retrying(None, &stopping, |conn| {
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(&self.name)
                    .arg("COUNT")
                    .arg(1)
                    .arg("BLOCK")
                    .arg(block.as_millis().max(1) as u64)
                    .arg("STREAMS")
                    .arg(&tasks)
                    .arg(if own { "0" } else { ">" })
                    .query::<Value>(conn)
            });
            match read {
                Ok(reply) => {
                    let entries = protocol::read_reply(reply);
                    if own && entries.is_empty() {
                        self.generation = generation;
                    }
                    for entry in entries {
                        let deliveries = if own {
                            self.deliveries(&entry.id, 1)
                        } else {
                            1
                        };
                        self.handle(entry, deliveries);
                    }
                }
                Err(err) => self.recover(err)?,
            }
        }
        Ok(())
    }

    /// How many times task `id` was delivered, or `unknown` if Redis cannot say.
    fn deliveries(&mut self, id: &str, unknown: u64) -> u64 {
        self.link
            .query::<Value>(
                redis::cmd("XPENDING")
                    .arg(self.keys.tasks())
                    .arg(GROUP)
                    .arg(id)
                    .arg(id)
                    .arg(1),
            )
            .ok()
            .and_then(|reply| protocol::into_items(reply).into_iter().next())
            .and_then(|row| protocol::into_items(row).into_iter().nth(3))
            .and_then(|count| match count {
                Value::Int(n) => u64::try_from(n).ok(),
                _ => None,
            })
            .unwrap_or(unknown)
    }

    /// After a failed command: the queue was deleted (recreate it), the
    /// worker is stopping (fine), or something a worker cannot fix.
    fn recover(&mut self, err: redis::RedisError) -> Result<(), Error> {
        if stopping() {
            return Ok(());
        }
        if err.code() == Some("NOGROUP") {
            return ensure_group(&mut self.link, &self.keys)
                .map_err(|err| self.link.error("cannot create the queue", &err));
        }
        Err(self.link.error("cannot read tasks", &err))
    }

    /// Claims one task that a lost worker left idle past the visibility
    /// timeout, with how many times it has been delivered.
    fn claim_stale(&mut self) -> Result<Option<(Entry, u64)>, Error> {
        let tasks = self.keys.tasks();
        let idle = self.settings.visibility.as_millis() as u64;
        let claimed = self.link.run_retrying(None, &stopping, |conn| {
            redis::cmd("XAUTOCLAIM")
                .arg(&tasks)
                .arg(GROUP)
                .arg(&self.name)
                .arg(idle)
                .arg(&self.claim_from)
                .arg("COUNT")
                .arg(1)
                .query::<Value>(conn)
        });
        let reply = match claimed {
            Ok(reply) => reply,
            Err(err) => {
                self.recover(err)?;
                return Ok(None);
            }
        };
        let mut parts = protocol::into_items(reply).into_iter();
        self.claim_from = parts
            .next()
            .and_then(protocol::text)
            .unwrap_or_else(|| "0-0".to_owned());
        let Some(list) = parts.next() else {
            return Ok(None);
        };
        let Some(entry) = protocol::entry_list(list).into_iter().next() else {
            return Ok(None);
        };
        // Claimed, so delivered at least twice.
        let deliveries = self.deliveries(&entry.id, 2);
        Ok(Some((entry, deliveries)))
    }

    /// Runs (or refuses) one task and stores the outcome.
    fn handle(&mut self, mut entry: Entry, deliveries: u64) {
        if entry.fields.is_empty() {
            // Withdrawn by its caller after it was delivered.
            self.acknowledge(&entry.id);
            return;
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
            self.acknowledge(&entry.id);
            return;
        };
        let items = entry.take("items").unwrap_or_default();
        let task = TaskFields {
            queue: &self.settings.queue,
            caller: &caller,
            seq,
            job: &job,
            count,
            items: &items,
        };
        if !self.settings.auth.task_valid(&task, entry.field("tag")) {
            log::warn!(
                "procpool cluster worker {}: dropped task {} (job `{job}`) without running it: \
                 its tag does not match this queue's key, so someone without the key added it",
                self.name,
                entry.id
            );
            let stats = self.keys.stats();
            let _ = self
                .link
                .query::<()>(redis::cmd("HINCRBY").arg(stats).arg("forged_tasks").arg(1));
            self.acknowledge(&entry.id);
            return;
        }
        // The caller id becomes part of a key name: only ids procpool makes.
        if caller.is_empty() || !caller.bytes().all(|b| b.is_ascii_hexdigit()) {
            eprintln!(
                "procpool cluster worker {}: dropping task {} with an invalid caller id",
                self.name, entry.id
            );
            self.acknowledge(&entry.id);
            return;
        }
        // A caller that ended or was terminated reads no result: its tasks
        // do not run. One that is only late learns why from the refusal.
        let absent = self
            .link
            .query::<bool>(redis::cmd("EXISTS").arg(self.keys.caller(&caller)))
            == Ok(false);
        let theirs = entry.text("fp").unwrap_or("").to_owned();
        let limit = self.settings.max_payload as u64;
        let outcome = if absent {
            Err(Refusal::Abandoned)
        } else if deliveries > self.settings.max_deliveries {
            Err(Refusal::Lost {
                deliveries: deliveries - 1,
            })
        } else if theirs != self.fingerprint {
            Err(Refusal::Mismatch(self.mismatch(&theirs)))
        } else if items.len() as u64 > limit {
            Err(Refusal::TooLarge {
                what: format!("the task for {count} items"),
                bytes: items.len() as u64,
                limit,
            })
        } else {
            self.beat.watch(Some(entry.id.clone()));
            let ran = crate::worker::run_chunk(&job, count, &items);
            self.beat.watch(None);
            match ran {
                Ok((output, _)) if output.len() as u64 > limit => Err(Refusal::TooLarge {
                    what: format!("the result of {count} items"),
                    bytes: output.len() as u64,
                    limit,
                }),
                Ok((output, _)) => Ok(output),
                Err(failure) => Err(Refusal::Failed(failure)),
            }
        };
        self.store(&entry.id, &caller, seq, &job, outcome);
    }

    fn mismatch(&mut self, theirs: &str) -> String {
        let listing = self
            .link
            .query::<Option<String>>(redis::cmd("GET").arg(self.keys.registry(theirs)))
            .ok()
            .flatten();
        let difference = protocol::registry_difference(listing.as_deref(), &self.listing);
        format!(
            "cluster worker {} refused the task: its jobs differ from the caller's \
             (registry fingerprint {} in the worker, {theirs} in the caller: {difference}). \
             Run workers built from the same program as the caller, or give each build its \
             own queue (?queue=name in the cluster URL)",
            self.name, self.fingerprint
        )
    }

    /// Stores the outcome and acknowledges the task in one transaction, so
    /// a task is never acknowledged without its result. Retries while Redis
    /// is unreachable; if the worker is told to stop meanwhile, the task
    /// stays pending and another worker runs it again.
    fn store(
        &mut self,
        id: &str,
        caller: &str,
        seq: u64,
        job: &str,
        outcome: Result<Vec<u8>, Refusal>,
    ) {
        let (field, value) = match outcome {
            Ok(items) => ("ok", items),
            Err(refusal) => match postcard::to_stdvec(&refusal) {
                Ok(bytes) => ("err", bytes),
                Err(err) => {
                    eprintln!("procpool cluster worker: cannot encode a refusal: {err}");
                    return;
                }
            },
        };
        let tag = self.settings.auth.result_tag(&ResultFields {
            queue: &self.settings.queue,
            caller,
            seq,
            job,
            kind: field,
            value: &value,
        });
        let results = self.keys.results(caller);
        let ttl = self.settings.ttl.as_millis().max(1) as u64;
        let tasks = self.keys.tasks();
        let stored = self.link.run_retrying(None, &stopping, |conn| {
            let mut pipe = redis::pipe();
            let add = pipe
                .atomic()
                .cmd("XADD")
                .arg(&results)
                .arg("*")
                .arg("seq")
                .arg(seq)
                .arg(field)
                .arg(&value);
            if let Some(tag) = &tag {
                add.arg("tag").arg(tag);
            }
            add.ignore().cmd("PEXPIRE").arg(&results).arg(ttl).ignore();
            retire(&mut pipe, &tasks, id).query::<()>(conn)
        });
        if let Err(err) = stored {
            eprintln!(
                "procpool cluster worker {}: cannot store the result of task {id}: {err}; \
                 another worker will run it again",
                self.name
            );
        }
    }

    /// Removes a task that will not run from the group and the stream.
    fn acknowledge(&mut self, id: &str) {
        let tasks = self.keys.tasks();
        let _ = self.link.run_retrying(None, &stopping, |conn| {
            retire(&mut redis::pipe(), &tasks, id).query::<()>(conn)
        });
    }
}

/// Adds to `pipe` what takes task `id` off the queue: acknowledged in the
/// group, deleted from the stream.
fn retire<'p>(pipe: &'p mut redis::Pipeline, tasks: &str, id: &str) -> &'p mut redis::Pipeline {
    pipe.cmd("XACK")
        .arg(tasks)
        .arg(GROUP)
        .arg(id)
        .ignore()
        .cmd("XDEL")
        .arg(tasks)
        .arg(id)
        .ignore()
}

/// A thread that shows this worker is alive: it keeps the worker in the
/// queue's `workers` set and, while a task runs, claims that task again
/// every third of the visibility timeout, which resets its idle time, so
/// no other worker takes a long task from a live worker.
struct Heartbeat {
    shared: Arc<(Mutex<Beat>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Beat {
    watching: Option<String>,
    stop: bool,
}

impl Heartbeat {
    fn start(
        mut link: Link,
        keys: &Keys,
        name: &str,
        visibility: Duration,
    ) -> Result<Heartbeat, Error> {
        let shared = Arc::new((Mutex::new(Beat::default()), Condvar::new()));
        let (keys, name, beat) = (keys.clone(), name.to_owned(), Arc::clone(&shared));
        let period = visibility / 3;
        let thread = thread::Builder::new()
            .name("procpool-cluster-heartbeat".into())
            .spawn(move || {
                let (state, wake) = &*beat;
                let mut guard = state.lock().unwrap_or_else(PoisonError::into_inner);
                while !guard.stop {
                    let watching = guard.watching.clone();
                    drop(guard);
                    let _ = link.run(|conn| {
                        let mut pipe = redis::pipe();
                        let now = protocol::now_ms();
                        pipe.cmd("ZADD")
                            .arg(keys.workers())
                            .arg(now)
                            .arg(&name)
                            .ignore()
                            // Workers that were killed never remove themselves.
                            .cmd("ZREMRANGEBYSCORE")
                            .arg(keys.workers())
                            .arg("-inf")
                            .arg(now.saturating_sub(STALE_WORKER_MS))
                            .ignore();
                        if let Some(id) = &watching {
                            pipe.cmd("XCLAIM")
                                .arg(keys.tasks())
                                .arg(GROUP)
                                .arg(&name)
                                .arg(0)
                                .arg(id)
                                .arg("JUSTID")
                                .ignore();
                        }
                        pipe.query::<()>(conn)
                    });
                    guard = state.lock().unwrap_or_else(PoisonError::into_inner);
                    if !guard.stop {
                        guard = wake
                            .wait_timeout(guard, period)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                }
                drop(guard);
                let _ = link.query::<()>(redis::cmd("ZREM").arg(keys.workers()).arg(&name));
            })
            .map_err(|e| Error::Cluster(format!("cannot start the heartbeat thread: {e}")))?;
        Ok(Heartbeat {
            shared,
            thread: Some(thread),
        })
    }

    /// The task now running, whose claim must be kept fresh. No need to
    /// claim it at once: delivering a task (or claiming it from a lost
    /// worker) resets its idle time, and the next beat comes within a third
    /// of the visibility timeout.
    fn watch(&self, id: Option<String>) {
        let (state, _) = &*self.shared;
        state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .watching = id;
    }

    fn stop(&mut self) {
        let (state, wake) = &*self.shared;
        state.lock().unwrap_or_else(PoisonError::into_inner).stop = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
