//! `/metrics`: a snapshot in the Prometheus text exposition format 0.0.4
//! (`# HELP`, `# TYPE`, then `name{label="value"} number` lines; counters
//! end in `_total`).
//!
//! Written by hand: the format is a few lines of text, and the crates that
//! write it (`prometheus`, `prometheus-client`, `metrics-exporter-prometheus`)
//! bring registries, their own metric types and (for some) an async
//! runtime, for the dozen numbers a snapshot already holds.

use std::fmt::Write as _;

use super::Snapshot;
use crate::stats::PoolStats;

/// Seconds every slot spent with a task in hand, the running tasks' time
/// so far included (so the number grows while long tasks run).
pub(super) fn busy_seconds(stats: &PoolStats) -> f64 {
    stats
        .workers
        .iter()
        .map(|w| (w.busy + w.running_for).as_secs_f64())
        .sum()
}

/// A label value with `\`, `"` and newlines escaped, as the format asks.
pub(crate) fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric's `# HELP` and `# TYPE` lines.
pub(crate) fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One metric without labels.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    head(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// The whole page.
pub(super) fn render(snapshot: &Snapshot) -> String {
    let stats = &snapshot.stats;
    let mut out = String::with_capacity(2048 + 512 * stats.workers.len());
    let counters = [
        (
            "procpool_tasks_done_total",
            "Tasks (chunks of a call) whose worker replied.",
            stats.tasks_done,
        ),
        (
            "procpool_tasks_failed_total",
            "Tasks that ended without a reply (worker died, timed out, broke the protocol, or none could start).",
            stats.tasks_failed,
        ),
        (
            "procpool_tasks_retried_total",
            "Tasks queued again after their worker died.",
            stats.tasks_retried,
        ),
        (
            "procpool_items_done_total",
            "Items a worker got to (failed ones included).",
            stats.items_done,
        ),
        (
            "procpool_workers_started_total",
            "Worker processes started, the first ones included.",
            stats.workers_started,
        ),
        (
            "procpool_workers_replaced_total",
            "Workers started to replace one that left.",
            stats.workers_replaced,
        ),
    ];
    for (name, help, value) in counters {
        single(&mut out, name, "counter", help, value);
    }
    head(
        &mut out,
        "procpool_worker_departures_total",
        "counter",
        "Workers that left, by reason.",
    );
    for (reason, value) in [
        ("died", stats.workers_died),
        ("timed_out", stats.workers_timed_out),
        ("broke_protocol", stats.workers_broke_protocol),
        ("retired", stats.workers_retired),
    ] {
        let _ = writeln!(
            out,
            "procpool_worker_departures_total{{reason=\"{reason}\"}} {value}"
        );
    }
    single(
        &mut out,
        "procpool_busy_seconds_total",
        "counter",
        "Seconds all worker slots together spent with a task in hand.",
        busy_seconds(stats),
    );
    single(
        &mut out,
        "procpool_processes",
        "gauge",
        "Worker slots of the pool.",
        snapshot.processes,
    );
    single(
        &mut out,
        "procpool_workers_busy",
        "gauge",
        "Worker slots running a task now.",
        stats.workers.iter().filter(|w| w.running.is_some()).count(),
    );
    single(
        &mut out,
        "procpool_calls_in_flight",
        "gauge",
        "Calls (map, imap, apply_async, ...) not finished yet.",
        snapshot.calls.len(),
    );
    single(
        &mut out,
        "procpool_uptime_seconds",
        "gauge",
        "Seconds since the pool started.",
        snapshot.uptime.as_secs_f64(),
    );
    head(
        &mut out,
        "procpool_worker_tasks_total",
        "counter",
        "Tasks each worker slot's workers replied to.",
    );
    for (slot, worker) in stats.workers.iter().enumerate() {
        let _ = writeln!(
            out,
            "procpool_worker_tasks_total{{slot=\"{slot}\"}} {}",
            worker.tasks
        );
    }
    head(
        &mut out,
        "procpool_worker_busy_seconds_total",
        "counter",
        "Seconds each worker slot spent with a task in hand (finished tasks).",
    );
    for (slot, worker) in stats.workers.iter().enumerate() {
        let _ = writeln!(
            out,
            "procpool_worker_busy_seconds_total{{slot=\"{slot}\"}} {}",
            worker.busy.as_secs_f64()
        );
    }
    head(
        &mut out,
        "procpool_worker_running_seconds",
        "gauge",
        "Seconds the slot's current task has run, by job (0 and job=\"\" when idle).",
    );
    for (slot, worker) in stats.workers.iter().enumerate() {
        let _ = writeln!(
            out,
            "procpool_worker_running_seconds{{slot=\"{slot}\",job=\"{}\"}} {}",
            label(worker.running.unwrap_or("")),
            worker.running_for.as_secs_f64()
        );
    }
    head(
        &mut out,
        "procpool_worker_up",
        "gauge",
        "1 when the slot has a worker process, 0 while one starts.",
    );
    for (slot, worker) in stats.workers.iter().enumerate() {
        let _ = writeln!(
            out,
            "procpool_worker_up{{slot=\"{slot}\"}} {}",
            u8::from(worker.pid.is_some())
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    /// Parses the text format strictly enough to catch a malformed line:
    /// every sample's metric has a `# TYPE` before it, counters end in
    /// `_total`, values are numbers, labels are `name="value"`.
    fn parse(text: &str) -> BTreeMap<String, f64> {
        let mut types = BTreeMap::new();
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge"].contains(&kind), "{line}");
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "{line}");
                }
                assert!(types.insert(name.to_owned(), kind.to_owned()).is_none());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            assert!(types.contains_key(name), "no # TYPE before {line}");
            if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
                let inner = labels.strip_prefix('{').unwrap().strip_suffix('}').unwrap();
                for pair in inner.split("\",") {
                    let (key, value) = pair.split_once("=\"").unwrap();
                    assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                    assert!(!value.trim_end_matches('"').contains('\n'));
                }
            }
            samples.insert(series.to_owned(), value.parse::<f64>().unwrap());
        }
        samples
    }

    #[test]
    fn the_text_format_parses_with_the_counters() {
        let text = super::render(&super::super::tests::sample());
        let samples = parse(&text);
        assert_eq!(samples["procpool_items_done_total"], 12.0);
        assert_eq!(samples["procpool_tasks_done_total"], 3.0);
        assert_eq!(
            samples["procpool_worker_departures_total{reason=\"died\"}"],
            1.0
        );
        assert_eq!(samples["procpool_worker_tasks_total{slot=\"0\"}"], 3.0);
        assert_eq!(samples["procpool_workers_busy"], 1.0);
        assert_eq!(samples["procpool_worker_up{slot=\"1\"}"], 0.0);
        assert!(text.contains(
            "procpool_worker_running_seconds{slot=\"0\",job=\"my::job \\\"quoted\\\"</script>\"} 1.5"
        ));
    }
}
