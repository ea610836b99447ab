//! Side-by-side benchmark of procpool against the systems users would pick
//! instead, in one run on one machine. Not a test: run it with
//!
//! ```sh
//! cargo run --release -p procpool-bench
//! ```
//!
//! Every workload runs 3 times per system; the table shows medians, and
//! every run goes to a JSON-lines file (`target/bench.jsonl` unless
//! `--out PATH`). Workload names and shapes match `python_pool.py`, which
//! is run alongside (`python3 python_pool.py fork --json`).
//!
//! Options: `--workloads a,b` and `--systems procpool,rayon,...` to run a
//! subset; `--out PATH`.
//!
//! `--scaling` instead measures how procpool's costs grow against
//! Python's (see `scaling.rs`): a table, and SVG charts in `bench/scaling/`.
//!
//! `--redis-scale 8,16,32,64 [--tasks N]` instead measures what the Redis
//! backend costs Redis per task as workers grow (see `scale.rs`).

mod scale;
mod scaling;
mod systems;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::Instant;

use systems::{System, Workload};

/// One measured cell: a workload under a system.
#[derive(Debug, Clone)]
pub struct Measured {
    /// The median of the runs, in the workload's unit (seconds, or bytes
    /// for memory rows).
    pub median: f64,
    /// Every run's figure, in the order they ran.
    pub runs: Vec<f64>,
}

/// Runs `f` three times and keeps the median.
pub fn three(mut f: impl FnMut() -> f64) -> Measured {
    let mut runs: Vec<f64> = (0..3).map(|_| f()).collect();
    let out = runs.clone();
    runs.sort_by(f64::total_cmp);
    Measured {
        median: runs[1],
        runs: out,
    }
}

/// Seconds since `start`.
pub fn since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

fn arg_list(args: &[String], flag: &str) -> Option<Vec<String>> {
    let at = args.iter().position(|a| a == flag)?;
    Some(args.get(at + 1)?.split(',').map(str::to_owned).collect())
}

fn main() {
    // procspawn's children run `main` until this call diverts them.
    procspawn::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--pong") {
        systems::pong();
        return;
    }
    if args.first().map(String::as_str) == Some("--echo") {
        systems::echo_child();
        return;
    }
    if args.iter().any(|a| a == "--scaling") {
        scaling::run();
        return;
    }
    if let Some(counts) = arg_list(&args, "--redis-scale") {
        let counts: Vec<usize> = counts.iter().filter_map(|n| n.parse().ok()).collect();
        let tasks = arg_list(&args, "--tasks")
            .and_then(|n| n.first()?.parse().ok())
            .unwrap_or(20_000);
        scale::run(&counts, tasks);
        return;
    }
    let wanted_workloads = arg_list(&args, "--workloads");
    let wanted_systems = arg_list(&args, "--systems");
    let out_path = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|at| args.get(at + 1).cloned())
        .unwrap_or_else(|| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench.jsonl").to_owned()
        });

    let workloads: Vec<Workload> = Workload::ALL
        .iter()
        .copied()
        .filter(|w| {
            wanted_workloads
                .as_ref()
                .is_none_or(|list| list.iter().any(|n| n == w.name()))
        })
        .collect();
    let systems: Vec<System> = System::ALL
        .iter()
        .copied()
        .filter(|s| {
            wanted_systems
                .as_ref()
                .is_none_or(|list| list.iter().any(|n| n == s.name()))
        })
        .collect();

    eprintln!(
        "machine: {} CPUs, {}; spin calibrated to {} iterations (about 5 ms)",
        procpool::cpu_count(),
        systems::machine_description(),
        systems::spin_iterations()
    );
    let mut results: BTreeMap<(usize, usize), Result<Measured, String>> = BTreeMap::new();
    let python = if systems.contains(&System::Python) {
        eprintln!("running python_pool.py (fork) ...");
        Some(systems::python(&workloads))
    } else {
        None
    };
    for (wi, workload) in workloads.iter().enumerate() {
        for (si, system) in systems.iter().enumerate() {
            let cell = match (system, &python) {
                (System::Python, Some(python)) => python
                    .get(workload.name())
                    .cloned()
                    .unwrap_or_else(|| Err("not reported".into())),
                _ => {
                    eprintln!("{} / {} ...", workload.name(), system.name());
                    systems::run(*system, *workload)
                }
            };
            results.insert((wi, si), cell);
        }
    }

    let mut out = match std::fs::File::create(&out_path) {
        Ok(file) => Some(file),
        Err(err) => {
            eprintln!("cannot write {out_path}: {err}");
            None
        }
    };
    // Table.
    print!("| workload | unit |");
    for system in &systems {
        print!(" {} |", system.name());
    }
    println!(" goal | procpool ratio | met |");
    print!("|---|---|");
    for _ in &systems {
        print!("---|");
    }
    println!("---|---|---|");
    let medians: HashMap<(Workload, System), f64> = results
        .iter()
        .filter_map(|(&(wi, si), cell)| {
            let m = cell.as_ref().ok()?;
            Some(((workloads[wi], systems[si]), m.median))
        })
        .collect();
    let median = |workload, system| medians.get(&(workload, system)).copied();
    for (wi, workload) in workloads.iter().enumerate() {
        print!("| {} | {} |", workload.name(), workload.unit());
        for (si, system) in systems.iter().enumerate() {
            match &results[&(wi, si)] {
                Ok(m) => {
                    print!(" {} |", format_value(m.median));
                    if let Some(out) = out.as_mut() {
                        let line = serde_json::json!({
                            "workload": workload.name(),
                            "system": system.name(),
                            "unit": workload.unit(),
                            "median": m.median,
                            "runs": m.runs,
                        });
                        let _ = writeln!(out, "{line}");
                    }
                }
                Err(why) => print!(" n/a ({why}) |"),
            }
        }
        let verdict = workload.verdict(&median);
        println!(" {} | {} | {} |", verdict.goal, verdict.ratios, verdict.met);
    }
    systems::cluster::finish();
    eprintln!("raw runs written to {out_path}");
}

fn format_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}
