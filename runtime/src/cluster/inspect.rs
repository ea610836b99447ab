//! A queue's state, as an operator wants to see it (like `rq info` or
//! `celery inspect`): read from Redis, without taking part in the queue.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use redis::streams::StreamInfoConsumersReply;

use super::link::Link;
use super::protocol::{self, CallerAbout, GROUP, Keys};
use super::settings::Settings;
use crate::Error;

/// The state of a cluster queue, from [`inspect`](super::inspect).
///
/// Its `Display` form is what `procpool-inspect <url>` prints.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct QueueReport {
    /// The queue's name (the URL's `queue`).
    pub queue: String,
    /// The Redis server, password masked.
    pub server: String,
    /// Workers whose heartbeat is recent, by name.
    pub workers: Vec<WorkerReport>,
    /// Every job some worker has served on this queue, by name.
    pub jobs: Vec<JobReport>,
    /// Consumers of the queue's groups without a recent heartbeat: killed
    /// workers not forgotten yet, or consumers made by other programs.
    pub dead_consumers: Vec<DeadConsumer>,
    /// The callers that refreshed their presence within `presence`, by id.
    pub callers: Vec<CallerReport>,
    /// Redis' `used_memory` in bytes, if Redis says (`INFO memory`).
    pub used_memory: Option<u64>,
    /// Redis' `maxmemory` in bytes (0: no limit), if Redis says.
    pub maxmemory: Option<u64>,
    /// Tasks that workers dropped because their tag did not match the key.
    pub forged_tasks: u64,
    /// Copies of genuine tasks (the same signed fields added again) that
    /// workers dropped unrun, because the task ran or runs from another
    /// entry, or its caller settled it already.
    pub replayed_tasks: u64,
    /// Results that callers dropped because their tag did not match the key.
    pub forged_results: u64,
    /// Tasks that workers failed with [`Error::TaskLost`](crate::Error::TaskLost):
    /// delivered more than `max_deliveries` times, each worker lost.
    pub lost_tasks: u64,
    /// Tasks that workers failed with
    /// [`Error::TaskTimedOut`](crate::Error::TaskTimedOut) (each then exited).
    pub timed_out_tasks: u64,
}

/// A live worker.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct WorkerReport {
    /// Its consumer name: `<host>-<pid>-<random suffix>`.
    pub name: String,
    /// The host it runs on (its hostname).
    pub host: String,
    /// Its process id on that host.
    pub pid: u32,
    /// How long ago its last heartbeat was.
    pub last_seen: Duration,
    /// The job it is running and for how long: set when the task is
    /// claimed and removed with its result, so it is current.
    pub running: Option<(String, Duration)>,
    /// Whether its heartbeat (every third of the visibility timeout) is
    /// late: not seen for more than two beats and a second. It is stopped,
    /// starved or dead; it counts as dead after the visibility timeout and
    /// a second. (A worker started by `Workers` that dies is marked dead by
    /// its supervisor at once, and no longer listed.)
    pub unresponsive: bool,
}

/// A caller with a pool on this queue.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CallerReport {
    /// Its random id (its keys are named after it).
    pub id: String,
    /// The host it runs on (its hostname), if it said.
    pub host: Option<String>,
    /// Its process id on that host (0 if it did not say).
    pub pid: u32,
    /// Its tasks in Redis whose results did not come back yet.
    pub in_redis: u64,
    /// Its tasks waiting in the caller for room in its `window`.
    pub backlog: u64,
}

/// The tasks of one job (its name and argument and result types).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct JobReport {
    /// `name: signature`, as workers registered it.
    pub job: String,
    /// Tasks no worker has taken yet.
    pub waiting: u64,
    /// Tasks taken by a worker and not finished yet (running, or held by a
    /// dead worker until recovered).
    pub taken: u64,
    /// How long the oldest task no worker has taken yet has waited (on
    /// Redis' clock), if one waits.
    pub oldest_waiting: Option<Duration>,
    /// Live workers that can run it. With tasks waiting and none, its
    /// callers wait for one (or fail after `unserved` seconds if other
    /// workers are alive, or after `no_workers` if none is and the URL sets
    /// it); the report says "no live worker can run it".
    pub workers: u64,
}

/// A consumer of the queue without a recent heartbeat.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DeadConsumer {
    /// Its consumer name (`<host>-<pid>-<suffix>` for procpool's workers).
    pub name: String,
    /// Tasks it took and did not finish: another worker takes them.
    pub pending: u64,
    /// How long since it last read or claimed a task.
    pub idle: Duration,
}

/// Reads the state of the queue named by `url` (the URL callers and
/// workers use): workers alive with their host and pid and what they run,
/// tasks waiting and taken per job and the live workers that can run each
/// (callers describe their jobs too, so a job no worker ever had shows
/// up), dead consumers, connected callers, and the tasks and results
/// dropped as forged or replayed.
///
/// ```no_run
/// # fn main() -> Result<(), procpool::Error> {
/// let report = procpool::cluster::inspect("redis://127.0.0.1:6379/0?queue=images")?;
/// println!("{report}");
/// assert!(report.workers.len() <= 64);
/// # Ok(())
/// # }
/// ```
pub fn inspect(url: &str) -> Result<QueueReport, Error> {
    let settings = Settings::parse(url)?;
    let keys = Keys::new(&settings);
    let mut link = Link::open(&settings, "procpool-inspect".into())?;
    let failed = |link: &Link, err: redis::RedisError| link.error("cannot inspect the queue", &err);
    let now = protocol::now_ms();
    let workers = workers(&mut link, &keys, &settings, now).map_err(|e| failed(&link, e))?;
    let alive: Vec<&str> = workers.iter().map(|w| w.name.as_str()).collect();
    let (jobs, dead_consumers) =
        jobs(&mut link, &keys, &settings, &alive).map_err(|e| failed(&link, e))?;
    let callers = callers(&mut link, &keys, &settings, now).map_err(|e| failed(&link, e))?;
    let stats: HashMap<String, u64> = link
        .query(redis::cmd("HGETALL").arg(keys.stats()))
        .map_err(|e| failed(&link, e))?;
    // `INFO` may be denied (an ACL, a managed service): then unknown.
    let memory = link
        .query::<String>(redis::cmd("INFO").arg("memory"))
        .unwrap_or_default();
    let info = |field: &str| {
        memory.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            (name == field).then(|| value.trim().parse().ok()).flatten()
        })
    };
    Ok(QueueReport {
        queue: settings.queue.clone(),
        server: settings.display.clone(),
        workers,
        jobs,
        dead_consumers,
        callers,
        used_memory: info("used_memory"),
        maxmemory: info("maxmemory"),
        forged_tasks: stats.get("forged_tasks").copied().unwrap_or(0),
        replayed_tasks: stats.get("replayed_tasks").copied().unwrap_or(0),
        forged_results: stats.get("forged_results").copied().unwrap_or(0),
        lost_tasks: stats.get("lost_tasks").copied().unwrap_or(0),
        timed_out_tasks: stats.get("timed_out_tasks").copied().unwrap_or(0),
    })
}

/// The live workers (heartbeat within the visibility timeout and a
/// second), by name, with what each runs.
fn workers(
    link: &mut Link,
    keys: &Keys,
    settings: &Settings,
    now: u64,
) -> Result<Vec<WorkerReport>, redis::RedisError> {
    let ago = |ms: u64| Duration::from_millis(now.saturating_sub(ms));
    let fresh = ago_ms(now, settings.visibility + Duration::from_secs(1));
    let late = 2 * settings.visibility / 3 + Duration::from_secs(1);
    let seen: Vec<(String, f64)> = link.query(
        redis::cmd("ZRANGE")
            .arg(keys.workers())
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES"),
    )?;
    let running: HashMap<String, String> = link.query(redis::cmd("HGETALL").arg(keys.running()))?;
    let mut workers: Vec<WorkerReport> = seen
        .iter()
        .filter(|(_, score)| *score as u64 >= fresh)
        .map(|(name, score)| {
            let (host, pid) = split_name(name);
            let running = running.get(name).and_then(|text| {
                let (started, job) = text.split_once(' ')?;
                Some((job.to_owned(), ago(started.parse().ok()?)))
            });
            WorkerReport {
                name: name.clone(),
                host,
                pid,
                last_seen: ago(*score as u64),
                running,
                unresponsive: ago(*score as u64) > late,
            }
        })
        .collect();
    workers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(workers)
}

/// Every job with tasks or live workers, and the consumers of their
/// groups that are not `alive`.
fn jobs(
    link: &mut Link,
    keys: &Keys,
    settings: &Settings,
    alive: &[&str],
) -> Result<(Vec<JobReport>, Vec<DeadConsumer>), redis::RedisError> {
    let fresh = ago_ms(
        protocol::now_ms(),
        settings.visibility + Duration::from_secs(1),
    );
    let redis_now = link.run(|conn| protocol::redis_time_ms(conn))?;
    let known: HashMap<String, String> = link.query(redis::cmd("HGETALL").arg(keys.jobs()))?;
    let mut jobs = Vec::new();
    let mut dead: HashMap<String, DeadConsumer> = HashMap::new();
    for (id, job) in known {
        let stream = keys.tasks(&id);
        let mut pipe = redis::pipe();
        pipe.cmd("XLEN")
            .arg(&stream)
            .cmd("ZCOUNT")
            .arg(keys.serves(&id))
            .arg(fresh)
            .arg("+inf");
        let (length, serving): (u64, u64) = link.run(|conn| pipe.query(conn))?;
        // A stream that expired has no group any more: nothing taken.
        let consumers: StreamInfoConsumersReply = link
            .query(redis::cmd("XINFO").arg("CONSUMERS").arg(&stream).arg(GROUP))
            .unwrap_or_default();
        let mut taken = 0;
        for consumer in consumers.consumers {
            let name = consumer.name;
            let (pending, idle) = (consumer.pending as u64, consumer.idle as u64);
            taken += pending;
            if alive.contains(&name.as_str()) {
                continue;
            }
            let entry = dead.entry(name.clone()).or_insert(DeadConsumer {
                name,
                pending: 0,
                idle: Duration::from_millis(idle),
            });
            entry.pending += pending;
            entry.idle = entry.idle.min(Duration::from_millis(idle));
        }
        if length == 0 && serving == 0 && taken == 0 {
            continue; // A job no live worker has and nobody uses now.
        }
        let waiting = length.saturating_sub(taken);
        let oldest_waiting = if waiting > 0 {
            oldest_undelivered(link, &stream)
                .map(|ms| Duration::from_millis(redis_now.saturating_sub(ms)))
        } else {
            None
        };
        jobs.push(JobReport {
            job,
            waiting,
            taken,
            oldest_waiting,
            workers: serving,
        });
    }
    jobs.sort_by(|a, b| a.job.cmp(&b.job));
    let mut dead_consumers: Vec<DeadConsumer> = dead.into_values().collect();
    dead_consumers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((jobs, dead_consumers))
}

/// When (ms since the epoch, Redis' clock: an entry id starts with it)
/// the first task of `stream` that the group has not delivered yet was
/// added, if Redis says. Before any worker made the group, every task
/// waits.
fn oldest_undelivered(link: &mut Link, stream: &str) -> Option<u64> {
    let groups: redis::streams::StreamInfoGroupsReply = link
        .query(redis::cmd("XINFO").arg("GROUPS").arg(stream))
        .ok()?;
    let from = match groups.groups.into_iter().find(|g| g.name == GROUP) {
        Some(group) => format!("({}", group.last_delivered_id),
        None => "-".to_owned(),
    };
    let reply: redis::streams::StreamRangeReply = link
        .query(
            redis::cmd("XRANGE")
                .arg(stream)
                .arg(from)
                .arg("+")
                .arg("COUNT")
                .arg(1),
        )
        .ok()?;
    let id = &reply.ids.first()?.id;
    id.split_once('-')?.0.parse().ok()
}

/// The callers present (refreshed within `presence`), with what each
/// says about itself.
fn callers(
    link: &mut Link,
    keys: &Keys,
    settings: &Settings,
    now: u64,
) -> Result<Vec<CallerReport>, redis::RedisError> {
    let mut ids: Vec<String> = link.query(
        redis::cmd("ZRANGEBYSCORE")
            .arg(keys.callers())
            .arg(ago_ms(now, settings.presence))
            .arg("+inf"),
    )?;
    ids.sort();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for id in &ids {
        pipe.cmd("GET").arg(keys.about(id));
    }
    let abouts: Vec<Option<String>> = link.run(|conn| pipe.query(conn))?;
    Ok(ids
        .into_iter()
        .zip(abouts)
        .map(|(id, about)| {
            let about = about.as_deref().and_then(CallerAbout::decode);
            CallerReport {
                id,
                host: about.as_ref().map(|a| a.host.clone()),
                pid: about.as_ref().map_or(0, |a| a.pid),
                in_redis: about.as_ref().map_or(0, |a| a.in_redis),
                backlog: about.as_ref().map_or(0, |a| a.backlog),
            }
        })
        .collect())
}

/// The time `ago` before `now`, in ms since the epoch.
fn ago_ms(now: u64, ago: Duration) -> u64 {
    now.saturating_sub(ago.as_millis() as u64)
}

/// `host-with-dashes-4242-1c9e08f2` → (`host-with-dashes`, 4242).
fn split_name(name: &str) -> (String, u32) {
    let mut parts = name.rsplitn(3, '-');
    let _suffix = parts.next();
    let pid = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let host = parts.next().unwrap_or("").to_owned();
    (host, pid)
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

impl fmt::Display for QueueReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "queue `{}` on {}", self.queue, self.server)?;
        writeln!(f, "workers alive: {}", self.workers.len())?;
        for w in &self.workers {
            write!(
                f,
                "  {} pid {} ({}), seen {} ago",
                w.host,
                w.pid,
                w.name,
                seconds(w.last_seen)
            )?;
            match &w.running {
                Some((job, time)) => write!(f, ", running {job} for {}", seconds(*time))?,
                None => write!(f, ", idle")?,
            }
            if w.unresponsive {
                write!(f, " (unresponsive: its heartbeat is late)")?;
            }
            writeln!(f)?;
        }
        writeln!(f, "jobs: {}", self.jobs.len())?;
        for j in &self.jobs {
            write!(
                f,
                "  {}: {} waiting, {} taken, {} workers",
                j.job, j.waiting, j.taken, j.workers
            )?;
            if let Some(age) = j.oldest_waiting {
                write!(f, ", oldest waiting {}", seconds(age))?;
            }
            if j.workers == 0 && j.waiting + j.taken > 0 {
                // Calls wait (or fail after `unserved` / `no_workers`).
                write!(f, ", no live worker can run it")?;
            }
            writeln!(f)?;
        }
        writeln!(f, "dead consumers: {}", self.dead_consumers.len())?;
        for d in &self.dead_consumers {
            writeln!(
                f,
                "  {}: {} pending, idle {}",
                d.name,
                d.pending,
                seconds(d.idle)
            )?;
        }
        writeln!(f, "callers connected: {}", self.callers.len())?;
        for c in &self.callers {
            match &c.host {
                Some(host) => writeln!(
                    f,
                    "  {host} pid {} ({}): {} tasks in Redis, {} waiting in the caller",
                    c.pid, c.id, c.in_redis, c.backlog
                )?,
                None => writeln!(f, "  {}", c.id)?,
            }
        }
        let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
        match (self.used_memory, self.maxmemory) {
            (Some(used), Some(limit)) if limit > 0 => writeln!(
                f,
                "redis memory: {:.1} MiB of {:.1} MiB",
                mib(used),
                mib(limit)
            )?,
            (Some(used), _) => writeln!(f, "redis memory: {:.1} MiB (no limit)", mib(used))?,
            (None, _) => writeln!(f, "redis memory: unknown (INFO denied)")?,
        }
        writeln!(
            f,
            "failed: {} tasks lost (delivered more than max_deliveries times), {} timed out",
            self.lost_tasks, self.timed_out_tasks
        )?;
        write!(
            f,
            "dropped for a wrong tag: {} tasks, {} results; dropped as copies: {} replayed tasks",
            self.forged_tasks, self.forged_results, self.replayed_tasks
        )
    }
}

#[cfg(test)]
mod tests {
    use super::split_name;

    #[test]
    fn worker_names_give_host_and_pid() {
        assert_eq!(split_name("web-01-4242-1c9e08f2"), ("web-01".into(), 4242));
        assert_eq!(split_name("h-7-x"), ("h".into(), 7));
        assert_eq!(split_name("odd"), (String::new(), 0));
    }
}
