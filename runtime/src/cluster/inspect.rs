//! A queue's state, as an operator wants to see it (like `rq info` or
//! `celery inspect`): read from Redis, without taking part in the queue.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use redis::streams::StreamInfoConsumersReply;

use super::link::Link;
use super::protocol::{self, GROUP, Keys};
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
    /// The ids of the callers whose presence key is set.
    pub callers: Vec<String>,
    /// Tasks that workers dropped because their tag did not match the key.
    pub forged_tasks: u64,
    /// Copies of genuine tasks (the same signed fields added again) that
    /// workers dropped unrun, because the task ran or runs from another
    /// entry, or its caller settled it already.
    pub replayed_tasks: u64,
    /// Results that callers dropped because their tag did not match the key.
    pub forged_results: u64,
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
    /// The job it is running and for how long, as of its last heartbeat.
    pub running: Option<(String, Duration)>,
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
    let fresh =
        now.saturating_sub((settings.visibility + Duration::from_secs(1)).as_millis() as u64);
    let ago = |ms: u64| Duration::from_millis(now.saturating_sub(ms));

    let seen: Vec<(String, f64)> = link
        .query(
            redis::cmd("ZRANGE")
                .arg(keys.workers())
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES"),
        )
        .map_err(|e| failed(&link, e))?;
    let running: HashMap<String, String> = link
        .query(redis::cmd("HGETALL").arg(keys.running()))
        .map_err(|e| failed(&link, e))?;
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
            }
        })
        .collect();
    workers.sort_by(|a, b| a.name.cmp(&b.name));
    let alive: Vec<&str> = workers.iter().map(|w| w.name.as_str()).collect();

    let known: HashMap<String, String> = link
        .query(redis::cmd("HGETALL").arg(keys.jobs()))
        .map_err(|e| failed(&link, e))?;
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
        let (length, serving): (u64, u64) = link
            .run(|conn| pipe.query(conn))
            .map_err(|e| failed(&link, e))?;
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
        jobs.push(JobReport {
            job,
            waiting: length.saturating_sub(taken),
            taken,
            workers: serving,
        });
    }
    jobs.sort_by(|a, b| a.job.cmp(&b.job));
    let mut dead_consumers: Vec<DeadConsumer> = dead.into_values().collect();
    dead_consumers.sort_by(|a, b| a.name.cmp(&b.name));

    let present = now.saturating_sub(settings.presence.as_millis() as u64);
    let mut callers: Vec<String> = link
        .query(
            redis::cmd("ZRANGEBYSCORE")
                .arg(keys.callers())
                .arg(present)
                .arg("+inf"),
        )
        .map_err(|e| failed(&link, e))?;
    callers.sort();
    let stats: HashMap<String, u64> = link
        .query(redis::cmd("HGETALL").arg(keys.stats()))
        .map_err(|e| failed(&link, e))?;
    Ok(QueueReport {
        queue: settings.queue.clone(),
        server: settings.display.clone(),
        workers,
        jobs,
        dead_consumers,
        callers,
        forged_tasks: stats.get("forged_tasks").copied().unwrap_or(0),
        replayed_tasks: stats.get("replayed_tasks").copied().unwrap_or(0),
        forged_results: stats.get("forged_results").copied().unwrap_or(0),
    })
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
                Some((job, time)) => writeln!(f, ", running {job} for {}", seconds(*time))?,
                None => writeln!(f, ", idle")?,
            }
        }
        writeln!(f, "jobs: {}", self.jobs.len())?;
        for j in &self.jobs {
            write!(
                f,
                "  {}: {} waiting, {} taken, {} workers",
                j.job, j.waiting, j.taken, j.workers
            )?;
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
            writeln!(f, "  {c}")?;
        }
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
