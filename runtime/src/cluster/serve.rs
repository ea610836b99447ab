//! The worker's side: take tasks from the queue's consumer group (lost
//! tasks of dead workers first), check each (in `serve/admit.rs`:
//! `read_task` for fields and tag, `admit` for the caller's presence and
//! the claim that makes a task run once), run registered jobs
//! (`run_task`), store each result and acknowledge the task in one
//! transaction (`store`). The heartbeat thread is in `heartbeat.rs`,
//! recovery of dead workers' tasks in `recover.rs`.

mod admit;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::Value;
use redis::streams::StreamPendingCountReply;

use super::auth::{Presence, ResultFields};
use super::heartbeat::{Heartbeat, Watchdog};
use super::link::{Link, is_connection_error};
use super::protocol::{self, Clock, Entry, GROUP, Keys, Refusal, TASK_LIFETIME};
use super::recover::{Recovery, Scope, deliveries, take_lost};
use super::settings::Settings;
use crate::Error;
use crate::failure::{Failure, FailureKind};
use admit::{Admission, Task};

/// Set by SIGINT or SIGTERM: finish the current task, then return.
static STOP: std::sync::LazyLock<std::sync::Arc<AtomicBool>> =
    std::sync::LazyLock::new(Default::default);

pub(crate) fn stopping() -> bool {
    STOP.load(Ordering::Acquire)
}

/// The first SIGINT or SIGTERM asks for a clean stop; a second one, with
/// the stop already asked for, ends the process at once (the signal's
/// default action), through `signal-hook`.
pub(crate) fn install_stop_handlers() {
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Registered first, so it sees the flag before the second handler
        // sets it: only a signal that finds it set already ends the process.
        let _ = signal_hook::flag::register_conditional_default(signal, STOP.clone());
        let _ = signal_hook::flag::register(signal, STOP.clone());
    }
}

/// How the consumer name of the worker with process id `pid` on this host
/// starts: `<host>-<pid>-`, then a random suffix (pids are reused).
pub(crate) fn name_prefix(pid: u32) -> String {
    let host = crate::sys::host_name();
    format!("{host}-{pid}-")
}

/// One job this worker can run, and where its tasks are.
struct Served {
    name: &'static str,
    /// Its argument and result types, as written.
    signature: &'static str,
    /// Its id on this queue (see [`Keys::job_id`]).
    id: String,
    /// Its tasks stream.
    stream: String,
}

/// Serves the queue as the consumer `<host>-<pid>-<suffix>`; a random
/// suffix when none is given (a supervisor gives one, to know the name).
pub(crate) fn serve(url: &str, suffix: Option<String>) -> Result<(), Error> {
    let settings = Settings::parse(url)?;
    let registry = crate::job::registry()?;
    let suffix = match suffix {
        Some(suffix) => suffix,
        None => protocol::random_id()?[..8].to_owned(),
    };
    let name = format!("{}{suffix}", name_prefix(std::process::id()));
    let keys = Keys::new(&settings);
    let mut jobs: Vec<Served> = registry
        .values()
        .map(|entry| {
            let id = keys.job_id(entry.name, entry.signature);
            Served {
                name: entry.name,
                signature: entry.signature,
                stream: keys.tasks(&id),
                id,
            }
        })
        .collect();
    if jobs.is_empty() {
        return Err(Error::Config(
            "this program registers no #[pool_job] function, so a cluster worker has nothing \
             to serve"
                .into(),
        ));
    }
    jobs.sort_by_key(|job| job.name);
    let mut link = Link::open(&settings, format!("procpool-worker-{name}"))?;
    ensure_groups(&mut link, &jobs)?;
    if let Some(warning) = link.eviction_risk() {
        eprintln!("procpool cluster worker {name}: {warning}");
    }
    // What each job id stands for, for callers' messages and inspection.
    let mut describe = redis::cmd("HSET");
    describe.arg(keys.jobs());
    for job in &jobs {
        describe
            .arg(&job.id)
            .arg(format!("{}: {}", job.name, job.signature));
    }
    link.query::<()>(&describe)
        .map_err(|err| link.error("cannot describe this worker's jobs", &err))?;
    install_stop_handlers();
    crate::worker::become_worker(format!("ClusterWorker-{name}"));
    let beat = Heartbeat::start(
        link.sibling(format!("procpool-worker-{name}-beat")),
        &keys,
        &settings,
        &name,
        jobs.iter().map(|job| job.id.clone()).collect(),
    )?;
    let mut worker = Worker {
        recovery: Recovery::new(settings.visibility),
        streams: jobs.iter().map(|job| job.stream.clone()).collect(),
        job_ids: jobs.iter().map(|job| job.id.clone()).collect(),
        settings,
        keys,
        name,
        jobs,
        link,
        beat,
        recovery_failed: false,
        present: HashMap::new(),
        clock: Clock::default(),
        generation: 0,
    };
    let outcome = worker.run();
    worker.beat.stop();
    worker.leave();
    outcome
}

/// Creates the tasks stream `stream` and its group if they do not exist
/// yet, waiting up to half a minute for a Redis that is not ready (loading
/// its data). The group starts at the stream's beginning, so tasks added
/// before any worker came are delivered.
fn ensure_group(link: &mut Link, stream: &str) -> Result<(), redis::RedisError> {
    let created = link.run_retrying(Some(Duration::from_secs(30)), &|| false, |conn| {
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query::<()>(conn)
    });
    match created {
        Err(err) if err.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Creates the tasks stream and group of every job in `jobs` that lacks them.
fn ensure_groups(link: &mut Link, jobs: &[Served]) -> Result<(), Error> {
    for job in jobs {
        ensure_group(link, &job.stream)
            .map_err(|err| link.error("cannot create the queue", &err))?;
    }
    Ok(())
}

struct Worker {
    settings: Settings,
    keys: Keys,
    /// This worker's consumer name in the groups.
    name: String,
    /// The jobs it runs, sorted by name.
    jobs: Vec<Served>,
    /// The tasks streams and ids of `jobs`, in the same order.
    streams: Vec<String>,
    job_ids: Vec<String>,
    link: Link,
    beat: Heartbeat,
    recovery: Recovery,
    /// Whether a failure of recovery was reported already (once is enough).
    recovery_failed: bool,
    /// Callers recently seen present, when, and what their presence said
    /// (see `caller_present`).
    present: HashMap<String, (Instant, Presence)>,
    /// Redis' clock, which signed expiries follow.
    clock: Clock,
    /// The link's connection count when this worker last found nothing of
    /// its own pending.
    generation: u64,
}

impl Worker {
    /// Leaves the consumer groups, so that they list only live workers,
    /// unless a task is still pending under this worker's name (deleting
    /// the consumer would drop it from the pending list, and no one would
    /// run it again).
    fn leave(&mut self) {
        let mut pipe = redis::pipe();
        for job in &self.jobs {
            pipe.cmd("XPENDING")
                .arg(&job.stream)
                .arg(GROUP)
                .arg("-")
                .arg("+")
                .arg(1)
                .arg(&self.name);
        }
        let mine = self
            .link
            .run(|conn| pipe.query::<Vec<StreamPendingCountReply>>(conn));
        let idle = mine.is_ok_and(|replies| replies.iter().all(|reply| reply.ids.is_empty()));
        if idle {
            let mut pipe = redis::pipe();
            for job in &self.jobs {
                pipe.cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&job.stream)
                    .arg(GROUP)
                    .arg(&self.name)
                    .ignore();
            }
            let _ = self.link.run(|conn| pipe.query::<()>(conn));
        }
    }

    fn run(&mut self) -> Result<(), Error> {
        let block = (self.settings.visibility / 2).min(Duration::from_secs(1));
        while !stopping() {
            let scope = Scope {
                settings: &self.settings,
                keys: &self.keys,
                name: &self.name,
                streams: &self.streams,
                job_ids: &self.job_ids,
            };
            let mut lost = self.beat.lost();
            match self.recovery.step(&mut self.link, &scope) {
                Ok(published) => lost |= published,
                Err(err) => self.recovery_failed(err)?,
            }
            // Lost tasks first: they are older than any new one.
            if lost {
                match self.take_lost() {
                    Ok(Some((entry, deliveries))) => {
                        self.handle(entry, deliveries, &[]);
                        continue;
                    }
                    Ok(None) => self.beat.set_lost(false),
                    Err(err) => self.recovery_failed(err)?,
                }
            }
            // After a new connection, first the tasks already delivered to
            // this worker: a reply lost with the old connection left them
            // pending under its name ("0"), not new (">").
            let generation = self.link.generation();
            let own = generation != self.generation;
            let mut read = redis::cmd("XREADGROUP");
            read.arg("GROUP")
                .arg(GROUP)
                .arg(&self.name)
                .arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(block.as_millis().max(1) as u64)
                .arg("STREAMS");
            for job in &self.jobs {
                read.arg(&job.stream);
            }
            for _ in &self.jobs {
                read.arg(if own { "0" } else { ">" });
            }
            let read = self
                .link
                .run_retrying(None, &stopping, |conn| read.query::<Value>(conn));
            match read {
                Ok(reply) => {
                    let entries = protocol::read_reply(reply);
                    if own && entries.is_empty() {
                        self.generation = generation;
                    }
                    // One read may bring one task of each job: they run in
                    // turn, and the heartbeat keeps the claim on those
                    // waiting, so no other worker takes them meanwhile.
                    let mut waiting: Vec<(String, String)> = entries
                        .iter()
                        .map(|entry| (entry.stream.clone(), entry.id.clone()))
                        .collect();
                    for entry in entries {
                        waiting.retain(|(_, id)| *id != entry.id);
                        let deliveries = if own {
                            deliveries(&mut self.link, &entry.stream, &entry.id).unwrap_or(1)
                        } else {
                            1
                        };
                        self.handle(entry, deliveries, &waiting);
                    }
                }
                Err(err) => self.recover(err)?,
            }
        }
        Ok(())
    }

    /// One task from the lost sets of this worker's jobs (see
    /// [`super::recover`]), claimed by this worker, if any is left.
    fn take_lost(&mut self) -> Result<Option<(Entry, u64)>, redis::RedisError> {
        let scope = Scope {
            settings: &self.settings,
            keys: &self.keys,
            name: &self.name,
            streams: &self.streams,
            job_ids: &self.job_ids,
        };
        for index in 0..self.jobs.len() {
            if let Some(found) = take_lost(&mut self.link, &scope, index)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// After recovery failed: the queue was deleted (recreate it), the
    /// connection dropped (the read that follows waits it out), or Redis
    /// refused (said once; the tasks wait for another worker).
    fn recovery_failed(&mut self, err: redis::RedisError) -> Result<(), Error> {
        if matches!(err.code(), Some("NOGROUP" | "UNBLOCKED")) {
            return self.recover(err);
        }
        if !is_connection_error(&err) && !self.recovery_failed {
            eprintln!(
                "procpool cluster worker {}: cannot recover the tasks of dead workers: {err}; \
                 they wait for another worker",
                self.name
            );
            self.recovery_failed = true;
        }
        Ok(())
    }

    /// After a failed command: the queue was deleted (recreate it), the
    /// worker is stopping (fine), or something a worker cannot fix.
    fn recover(&mut self, err: redis::RedisError) -> Result<(), Error> {
        if stopping() {
            return Ok(());
        }
        // A stream expired (all its callers gone) or was deleted: while
        // blocked on it (UNBLOCKED) or at the next read (NOGROUP).
        if matches!(err.code(), Some("NOGROUP" | "UNBLOCKED")) {
            return ensure_groups(&mut self.link, &self.jobs);
        }
        Err(self.link.error("cannot read tasks", &err))
    }

    /// Runs (or refuses) one task and stores the outcome.
    /// `waiting` are the tasks this worker holds to run next.
    fn handle(&mut self, mut entry: Entry, deliveries: u64, waiting: &[(String, String)]) {
        let Some(served) = self.jobs.iter().find(|job| job.stream == entry.stream) else {
            return; // Not read from one of this worker's streams.
        };
        let served_name = served.name;
        let Some(task) = self.read_task(&mut entry) else {
            return;
        };
        // Callers never put a job into another job's stream. With a key the
        // tag is valid, so this is a copy of a genuine task, moved: it must
        // not take the task's claim (and fail it) before the real entry.
        let misplaced = task.job != served_name;
        if misplaced && self.settings.auth.keyed() {
            let why = format!("it was added to the stream of job `{served_name}`");
            self.drop_replay(&entry, &task, &why);
            return;
        }
        // A caller that ended or was terminated reads no result: its tasks
        // do not run. One that is only late learns why from the refusal.
        let presence = self.caller_present(&task.caller);
        let outcome = match presence.filter(|_| !misplaced) {
            Some(presence) => match self.admit(&entry, &task, presence) {
                Admission::Run => None,
                Admission::Dropped => return,
                Admission::Unclaimed(reason) => Some(Err(Refusal::Unclaimed { reason })),
            },
            None if presence.is_none() => Some(Err(Refusal::Abandoned)),
            None => {
                // Without a key, anyone may put a job into another job's stream.
                Some(Err(Refusal::Failed(Failure::new(
                    FailureKind::UnknownJob,
                    format!(
                        "{} (the task was in the stream of `{served_name}`)",
                        task.job
                    ),
                ))))
            }
        };
        let outcome = outcome.unwrap_or_else(|| self.run_task(&entry, &task, deliveries, waiting));
        let task = Delivery {
            stream: entry.stream,
            id: entry.id,
            caller: task.caller,
            seq: task.seq,
            job: task.job,
        };
        if let Err(err) = store(
            &mut self.link,
            (&self.settings, &self.keys, &self.name),
            &task,
            outcome,
            &stopping,
        ) {
            eprintln!(
                "procpool cluster worker {}: cannot store the result of task {}: {err}; \
                 another worker will run it again",
                self.name, task.id
            );
        }
    }

    /// Runs an admitted task, unless it expired, was delivered too often
    /// or is too large; the heartbeat keeps its claim, and its watchdog
    /// enforces the caller's `task_timeout`.
    fn run_task(
        &mut self,
        entry: &Entry,
        task: &Task,
        deliveries: u64,
        waiting: &[(String, String)],
    ) -> Result<Vec<u8>, Refusal> {
        let limit = self.settings.max_payload as u64;
        if task.expires_ms.is_some_and(|at| self.clock.now() >= at) {
            return Err(Refusal::Expired {
                lifetime_ms: TASK_LIFETIME.as_millis() as u64,
            });
        }
        if deliveries > self.settings.max_deliveries {
            // Counted for `inspect` and the fleet page; a count lost with
            // the connection is no reason to keep the task.
            let stats = self.keys.stats();
            let _ = self
                .link
                .query::<()>(redis::cmd("HINCRBY").arg(stats).arg("lost_tasks").arg(1));
            return Err(Refusal::Lost {
                deliveries: deliveries - 1,
            });
        }
        if task.items.len() as u64 > limit {
            return Err(Refusal::TooLarge {
                what: format!("the task for {} items", task.count),
                bytes: task.items.len() as u64,
                limit,
            });
        }
        let mut held = waiting.to_vec();
        held.push((entry.stream.clone(), entry.id.clone()));
        self.beat.watch(held);
        // A limit no `Instant` can hold (a caller's `Duration::MAX`, or a
        // forged task's) is no limit: nothing to arm.
        let deadline = (task.timeout_ms > 0)
            .then(|| crate::deadline::after(Duration::from_millis(task.timeout_ms)))
            .flatten();
        if let Some(at) = deadline {
            self.beat.arm(Watchdog {
                at,
                timeout_ms: task.timeout_ms,
                task: Delivery {
                    stream: entry.stream.clone(),
                    id: entry.id.clone(),
                    caller: task.caller.clone(),
                    seq: task.seq,
                    job: task.job.clone(),
                },
                waiting: waiting.to_vec(),
            });
        }
        let ran = crate::worker::run_chunk(&task.job, task.count, &task.items);
        self.beat.disarm();
        self.beat.watch(waiting.to_vec());
        match ran {
            Ok((output, _)) if output.len() as u64 > limit => Err(Refusal::TooLarge {
                what: format!("the result of {} items", task.count),
                bytes: output.len() as u64,
                limit,
            }),
            Ok((output, _)) => Ok(output),
            Err(failure) => Err(Refusal::Failed(failure)),
        }
    }

    /// Removes a task that will not run from the group and the stream (and
    /// from what `inspect` shows this worker running, if it was claimed).
    fn acknowledge(&mut self, stream: &str, id: &str) {
        let running = self.keys.running();
        let _ = self.link.run_retrying(None, &stopping, |conn| {
            retire(&mut redis::pipe(), stream, id)
                .cmd("HDEL")
                .arg(&running)
                .arg(&self.name)
                .ignore()
                .query::<()>(conn)
        });
    }
}

/// Which task an outcome belongs to, and who waits for it.
#[derive(Clone)]
pub(super) struct Delivery {
    pub(super) stream: String,
    pub(super) id: String,
    pub(super) caller: String,
    pub(super) seq: u64,
    pub(super) job: String,
}

/// Stores the outcome and acknowledges the task in one transaction, so a
/// task is never acknowledged without its result. Retries while Redis is
/// unreachable, until `give_up` says so; then the task stays pending, and
/// another worker runs it again.
pub(super) fn store(
    link: &mut Link,
    (settings, keys, worker): (&Settings, &Keys, &str),
    task: &Delivery,
    outcome: Result<Vec<u8>, Refusal>,
    give_up: &dyn Fn() -> bool,
) -> Result<(), String> {
    let (field, value) = match outcome {
        Ok(items) => ("ok", items),
        Err(refusal) => match postcard::to_stdvec(&refusal) {
            Ok(bytes) => ("err", bytes),
            Err(err) => return Err(format!("cannot encode a refusal: {err}")),
        },
    };
    let tag = settings.auth.result_tag(&ResultFields {
        queue: &settings.queue,
        caller: &task.caller,
        seq: task.seq,
        job: &task.job,
        kind: field,
        value: &value,
    });
    let results = keys.results(&task.caller);
    let ttl = settings.ttl.as_millis().max(1) as u64;
    link.run_retrying(None, give_up, |conn| {
        let mut pipe = redis::pipe();
        let add = pipe
            .atomic()
            .cmd("XADD")
            .arg(&results)
            .arg("*")
            .arg("seq")
            .arg(task.seq)
            .arg(field)
            .arg(&value);
        if let Some(tag) = &tag {
            add.arg("tag").arg(tag);
        }
        add.ignore().cmd("PEXPIRE").arg(&results).arg(ttl).ignore();
        retire(&mut pipe, &task.stream, &task.id)
            .cmd("HDEL")
            .arg(keys.running())
            .arg(worker)
            .ignore()
            .query::<()>(conn)
    })
    .map_err(|err| err.to_string())
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
