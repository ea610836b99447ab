//! The fleet's live page: [`serve_inspection`], what
//! `procpool-inspect --serve ADDR URL` runs. The same server and page style
//! as a pool's dashboard, over [`inspect`](super::inspect) reports.

use std::fmt::Write as _;
use std::sync::Arc;

use super::inspect::{QueueReport, inspect};
use crate::Error;
use crate::dashboard::{self, Site, json_f64, json_string, metric_head, metric_label};

/// A fleet page being served: from [`serve_inspection`]. The server
/// stops when this is dropped.
pub struct FleetDashboard {
    inner: dashboard::Dashboard,
}

impl std::fmt::Debug for FleetDashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetDashboard")
            .field("url", &self.url())
            .finish()
    }
}

impl FleetDashboard {
    /// The page's address, `http://HOST:PORT/` with the port it listens on.
    pub fn url(&self) -> &str {
        self.inner.url()
    }
}

/// Serves a live page of the cluster queue named by `url` on `addr`
/// (cargo features `cluster` and `dashboard`): workers by host with what
/// they run, tasks waiting and taken per job with the oldest waiting
/// task's age, callers, dead consumers, forged and replayed tasks and
/// Redis' memory, from a fresh [`inspect`] at every poll (one a second
/// per open page); and `/metrics` in the Prometheus text format. Read-only,
/// like a pool's dashboard: no request reaches Redis but the reads
/// `inspect` makes.
///
/// A queue that cannot be inspected now fails here with `inspect`'s error;
/// later failures (Redis restarting) show on the page until it answers
/// again. An address that cannot be bound is an [`Error::System`].
///
/// ```no_run
/// # fn main() -> Result<(), procpool::Error> {
/// let page = procpool::cluster::serve_inspection(
///     "127.0.0.1:9000",
///     "redis://127.0.0.1:6379/0?queue=images",
/// )?;
/// println!("the fleet: {}", page.url());
/// # Ok(())
/// # }
/// ```
pub fn serve_inspection(addr: &str, url: &str) -> Result<FleetDashboard, Error> {
    inspect(url)?;
    let bound = dashboard::bind(addr)?;
    let url: Arc<str> = Arc::from(url);
    let for_metrics = Arc::clone(&url);
    let site = Site {
        page: dashboard::FLEET_PAGE,
        script: dashboard::FLEET_SCRIPT,
        json: Box::new(move || Some(to_json(inspect(&url)))),
        metrics: Box::new(move || Some(metrics(inspect(&for_metrics)))),
    };
    Ok(FleetDashboard {
        inner: dashboard::Dashboard::start(bound, site)?,
    })
}

fn seconds(out: &mut String, name: &str, d: Option<std::time::Duration>) {
    let _ = write!(out, ",\"{name}\":");
    match d {
        Some(d) => json_f64(out, d.as_secs_f64()),
        None => out.push_str("null"),
    }
}

/// The JSON the fleet page polls.
fn to_json(report: Result<QueueReport, Error>) -> String {
    let mut out = String::with_capacity(4096);
    let report = match report {
        Ok(report) => report,
        Err(err) => {
            out.push_str("{\"error\":");
            json_string(&mut out, &err.to_string());
            out.push('}');
            return out;
        }
    };
    out.push_str("{\"queue\":");
    json_string(&mut out, &report.queue);
    out.push_str(",\"server\":");
    json_string(&mut out, &report.server);
    for (name, value) in [
        ("used_memory", report.used_memory),
        ("maxmemory", report.maxmemory),
    ] {
        let _ = write!(out, ",\"{name}\":");
        match value {
            Some(v) => {
                let _ = write!(out, "{v}");
            }
            None => out.push_str("null"),
        }
    }
    let _ = write!(
        out,
        ",\"forged_tasks\":{},\"replayed_tasks\":{},\"forged_results\":{},\
         \"lost_tasks\":{},\"timed_out_tasks\":{}",
        report.forged_tasks,
        report.replayed_tasks,
        report.forged_results,
        report.lost_tasks,
        report.timed_out_tasks
    );
    out.push_str(",\"workers\":[");
    for (i, w) in report.workers.iter().enumerate() {
        out.push_str(if i > 0 { ",{\"name\":" } else { "{\"name\":" });
        json_string(&mut out, &w.name);
        out.push_str(",\"host\":");
        json_string(&mut out, &w.host);
        let _ = write!(
            out,
            ",\"pid\":{},\"unresponsive\":{}",
            w.pid, w.unresponsive
        );
        seconds(&mut out, "last_seen_s", Some(w.last_seen));
        out.push_str(",\"job\":");
        match &w.running {
            Some((job, _)) => json_string(&mut out, job),
            None => out.push_str("null"),
        }
        seconds(&mut out, "running_s", w.running.as_ref().map(|(_, d)| *d));
        out.push('}');
    }
    out.push_str("],\"jobs\":[");
    for (i, j) in report.jobs.iter().enumerate() {
        out.push_str(if i > 0 { ",{\"job\":" } else { "{\"job\":" });
        json_string(&mut out, &j.job);
        let _ = write!(
            out,
            ",\"waiting\":{},\"taken\":{},\"workers\":{}",
            j.waiting, j.taken, j.workers
        );
        seconds(&mut out, "oldest_waiting_s", j.oldest_waiting);
        out.push('}');
    }
    out.push_str("],\"callers\":[");
    for (i, c) in report.callers.iter().enumerate() {
        out.push_str(if i > 0 { ",{\"id\":" } else { "{\"id\":" });
        json_string(&mut out, &c.id);
        out.push_str(",\"host\":");
        match &c.host {
            Some(host) => json_string(&mut out, host),
            None => out.push_str("null"),
        }
        let _ = write!(
            out,
            ",\"pid\":{},\"in_redis\":{},\"backlog\":{}}}",
            c.pid, c.in_redis, c.backlog
        );
    }
    out.push_str("],\"dead_consumers\":[");
    for (i, d) in report.dead_consumers.iter().enumerate() {
        out.push_str(if i > 0 { ",{\"name\":" } else { "{\"name\":" });
        json_string(&mut out, &d.name);
        let _ = write!(out, ",\"pending\":{}", d.pending);
        seconds(&mut out, "idle_s", Some(d.idle));
        out.push('}');
    }
    out.push_str("]}");
    out
}

/// A per-job number for `/metrics`.
type PerJob = fn(&super::JobReport) -> f64;

/// The fleet's `/metrics`.
fn metrics(report: Result<QueueReport, Error>) -> String {
    let mut out = String::with_capacity(2048);
    metric_head(
        &mut out,
        "procpool_fleet_up",
        "gauge",
        "1 when the queue could be inspected now, 0 when Redis did not answer.",
    );
    let report = match report {
        Ok(report) => report,
        Err(_) => {
            out.push_str("procpool_fleet_up 0\n");
            return out;
        }
    };
    out.push_str("procpool_fleet_up 1\n");
    let queue = metric_label(&report.queue);
    let gauges = [
        (
            "procpool_fleet_workers",
            "Live workers of the queue.",
            report.workers.len() as f64,
        ),
        (
            "procpool_fleet_workers_busy",
            "Live workers running a task.",
            report
                .workers
                .iter()
                .filter(|w| w.running.is_some())
                .count() as f64,
        ),
        (
            "procpool_fleet_workers_unresponsive",
            "Workers whose heartbeat is late.",
            report.workers.iter().filter(|w| w.unresponsive).count() as f64,
        ),
        (
            "procpool_fleet_callers",
            "Callers connected to the queue.",
            report.callers.len() as f64,
        ),
        (
            "procpool_fleet_dead_consumers",
            "Consumers without a recent heartbeat.",
            report.dead_consumers.len() as f64,
        ),
        (
            "procpool_fleet_redis_used_memory_bytes",
            "Redis' used_memory.",
            report.used_memory.unwrap_or(0) as f64,
        ),
    ];
    for (name, help, value) in gauges {
        metric_head(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name}{{queue=\"{queue}\"}} {value}");
    }
    let counters = [
        (
            "procpool_fleet_forged_tasks_total",
            "Tasks workers dropped: their tag did not match the key.",
            report.forged_tasks,
        ),
        (
            "procpool_fleet_replayed_tasks_total",
            "Copies of genuine tasks workers dropped unrun.",
            report.replayed_tasks,
        ),
        (
            "procpool_fleet_forged_results_total",
            "Results callers dropped: their tag did not match the key.",
            report.forged_results,
        ),
        (
            "procpool_fleet_lost_tasks_total",
            "Tasks failed with TaskLost: delivered more than max_deliveries times.",
            report.lost_tasks,
        ),
        (
            "procpool_fleet_timed_out_tasks_total",
            "Tasks failed with TaskTimedOut by the worker that ran them.",
            report.timed_out_tasks,
        ),
    ];
    for (name, help, value) in counters {
        metric_head(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name}{{queue=\"{queue}\"}} {value}");
    }
    let per_job: [(&str, &str, PerJob); 3] = [
        (
            "procpool_fleet_tasks_waiting",
            "Tasks no worker has taken yet, by job.",
            |j| j.waiting as f64,
        ),
        (
            "procpool_fleet_tasks_taken",
            "Tasks taken and not finished, by job.",
            |j| j.taken as f64,
        ),
        (
            "procpool_fleet_oldest_waiting_seconds",
            "Age of the oldest waiting task, by job (0: none waits).",
            |j| j.oldest_waiting.map_or(0.0, |d| d.as_secs_f64()),
        ),
    ];
    for (name, help, value) in per_job {
        metric_head(&mut out, name, "gauge", help);
        for job in &report.jobs {
            let _ = writeln!(
                out,
                "{name}{{queue=\"{queue}\",job=\"{}\"}} {}",
                metric_label(&job.job),
                value(job)
            );
        }
    }
    out
}
