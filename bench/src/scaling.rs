//! `--scaling`: how procpool's costs grow against Python's Pool, in one run
//! (`cargo run --release -p procpool-bench -- --scaling`): a map over
//! 10³…10⁷ trivial items, an `apply` round trip of a 1 KiB…64 MiB payload,
//! and 64 CPU-bound tasks of about 5 ms on 1…8 workers. Each point is the
//! median of 3 runs on each side. Prints a Markdown table, writes every
//! run to `target/scaling.jsonl` and one SVG chart per series to
//! `bench/scaling/` (drawn with plotters, see [`chart`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use procpool::Pool;

use crate::systems::{echo, spin, spin_iterations, square};
use crate::{Measured, since, three};

/// One series: what grows along it, and its points.
struct Series {
    name: &'static str,
    /// What the x axis counts.
    x_label: &'static str,
    /// What each point's figure is.
    y_label: &'static str,
    xs: &'static [u64],
}

const SERIES: [Series; 3] = [
    Series {
        name: "map",
        x_label: "items in one map",
        y_label: "seconds per map",
        xs: &[1_000, 10_000, 100_000, 1_000_000, 10_000_000],
    },
    Series {
        name: "apply",
        x_label: "payload bytes, there and back",
        y_label: "seconds per apply",
        xs: &[1 << 10, 16 << 10, 256 << 10, 4 << 20, 64 << 20],
    },
    Series {
        name: "cpu",
        x_label: "workers (2 cores)",
        y_label: "seconds for 64 tasks of 5 ms",
        xs: &[1, 2, 4, 8],
    },
];

/// CPU-bound tasks per point, as `python_pool.py --scaling` runs them.
const CPU_TASKS: usize = 64;

/// Round trips per apply point, as `python_pool.py` counts them.
fn echo_rounds(size: u64) -> usize {
    if size > 16 << 20 {
        3
    } else if size > 1 << 20 {
        10
    } else {
        50
    }
}

fn procpool_point(series: &str, x: u64) -> Measured {
    match series {
        "map" => three(|| {
            let pool = Pool::with_processes(2).expect("pool");
            pool.map(square, 0..100).expect("map");
            let start = Instant::now();
            let r = pool.map(square, 0..x).expect("map");
            let dt = since(start);
            assert_eq!(r.len() as u64, x);
            dt
        }),
        "apply" => {
            let blob: Vec<u8> = (0..x).map(|i| i as u8).collect();
            three(|| {
                let pool = Pool::with_processes(2).expect("pool");
                for _ in 0..3 {
                    pool.apply(echo, blob.clone()).expect("apply");
                }
                let rounds = echo_rounds(x);
                let mut total = 0.0;
                for _ in 0..rounds {
                    let arg = blob.clone();
                    let start = Instant::now();
                    let back = pool.apply(echo, arg).expect("apply");
                    total += since(start);
                    assert_eq!(back.len() as u64, x);
                }
                total / rounds as f64
            })
        }
        _ => {
            let n = spin_iterations();
            three(|| {
                let pool = Pool::with_processes(x as usize).expect("pool");
                pool.map(square, 0..10).expect("map");
                let start = Instant::now();
                pool.chunksize(1)
                    .map(spin, vec![n; CPU_TASKS])
                    .expect("map");
                since(start)
            })
        }
    }
}

/// Python's points: `python_pool.py fork --json --scaling`.
fn python_points() -> BTreeMap<(String, u64), Measured> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python_pool.py");
    let mut found = BTreeMap::new();
    let output = Command::new("python3")
        .args([script, "fork", "--json", "--scaling"])
        .stderr(Stdio::inherit())
        .output();
    let output = match output {
        Ok(output) if output.status.success() => output,
        Ok(output) => {
            eprintln!("python3 failed: {}", output.status);
            return found;
        }
        Err(err) => {
            eprintln!("python3: {err}");
            return found;
        }
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(series), Some(x), Some(median), Some(runs)) = (
            value["series"].as_str(),
            value["x"].as_u64(),
            value["median"].as_f64(),
            value["runs"].as_array(),
        ) else {
            continue;
        };
        let runs = runs.iter().filter_map(serde_json::Value::as_f64).collect();
        found.insert((series.to_owned(), x), Measured { median, runs });
    }
    found
}

fn format_x(series: &str, x: u64) -> String {
    match series {
        "apply" if x >= 1 << 20 => format!("{} MiB", x >> 20),
        "apply" => format!("{} KiB", x >> 10),
        "map" => format!("10^{}", (x as f64).log10().round()),
        _ => x.to_string(),
    }
}

pub(crate) fn run() {
    eprintln!(
        "machine: {} CPUs, {}; load {}",
        procpool::cpu_count(),
        crate::systems::machine_description(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    eprintln!("running python_pool.py --scaling (fork) ...");
    let python = python_points();
    let mut ours = BTreeMap::new();
    for series in &SERIES {
        for &x in series.xs {
            eprintln!(
                "{} {} / procpool ...",
                series.name,
                format_x(series.name, x)
            );
            ours.insert((series.name.to_owned(), x), procpool_point(series.name, x));
        }
    }
    let out_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/scaling.jsonl");
    let mut out = std::fs::File::create(out_path).ok();
    println!("| series | x | procpool (s) | Python (s) | procpool / Python |");
    println!("|---|---|---|---|---|");
    for series in &SERIES {
        for &x in series.xs {
            let key = (series.name.to_owned(), x);
            let ours = ours.get(&key);
            let theirs = python.get(&key);
            let cell =
                |m: Option<&Measured>| m.map_or("n/a".to_owned(), |m| format!("{:.3e}", m.median));
            let ratio = match (ours, theirs) {
                (Some(a), Some(b)) => format!("{:.3}", a.median / b.median),
                _ => "n/a".to_owned(),
            };
            println!(
                "| {} | {} | {} | {} | {ratio} |",
                series.name,
                format_x(series.name, x),
                cell(ours),
                cell(theirs)
            );
            for (system, m) in [("procpool", ours), ("python_fork", theirs)] {
                if let (Some(out), Some(m)) = (out.as_mut(), m) {
                    let line = serde_json::json!({
                        "series": series.name, "x": x, "system": system,
                        "median": m.median, "runs": m.runs,
                    });
                    let _ = writeln!(out, "{line}");
                }
            }
        }
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scaling");
    if let Err(err) = std::fs::create_dir_all(dir) {
        eprintln!("cannot create {dir}: {err}");
        return;
    }
    for series in &SERIES {
        let line = |points: &BTreeMap<(String, u64), Measured>| -> Vec<(f64, f64)> {
            series
                .xs
                .iter()
                .filter_map(|&x| Some((x as f64, points.get(&(series.name.to_owned(), x))?.median)))
                .collect()
        };
        let path = format!("{dir}/{}.svg", series.name);
        match chart::draw(
            &path,
            series.name,
            series.x_label,
            series.y_label,
            &line(&ours),
            &line(&python),
        ) {
            Ok(()) => eprintln!("wrote {path}"),
            Err(err) => eprintln!("cannot draw {path}: {err}"),
        }
    }
    eprintln!("raw runs written to {out_path}");
}

/// The charts, with plotters (SVG backend only, no font files: text stays
/// SVG text). A dependency of the benchmark alone, not of procpool: the
/// de-facto Rust plotting crate, maintained, pure Rust, and with default
/// features off it pulls in no system libraries.
mod chart {
    use plotters::prelude::*;

    /// A log-log chart (linear for the worker counts) of procpool's and
    /// Python's points.
    pub(super) fn draw(
        path: &str,
        name: &str,
        x_label: &str,
        y_label: &str,
        ours: &[(f64, f64)],
        python: &[(f64, f64)],
    ) -> Result<(), String> {
        let e = |err: &dyn std::fmt::Display| err.to_string();
        let all = || ours.iter().chain(python);
        let (x_min, x_max) = bounds(all().map(|p| p.0));
        let (y_min, y_max) = bounds(all().map(|p| p.1));
        let root = SVGBackend::new(path, (720, 450)).into_drawing_area();
        root.fill(&WHITE).map_err(|err| e(&err))?;
        let caption = format!("{name}: procpool and Python's Pool");
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(caption, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(75);
        let styles = [("procpool", RED), ("Python Pool (fork)", BLUE)];
        if name == "cpu" {
            // Linear: the times stay within a few times of each other.
            let mut chart = builder
                .build_cartesian_2d(x_min - 0.5..x_max + 0.5, 0.0..y_max * 1.2)
                .map_err(|err| e(&err))?;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc(y_label)
                .x_labels(x_max as usize + 1)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .draw()
                .map_err(|err| e(&err))?;
            for ((label, color), points) in styles.into_iter().zip([ours, python]) {
                series(&mut chart, label, color, points)?;
            }
            legend(&mut chart)?;
        } else {
            let y_range = (y_min / 1.5..y_max * 1.5).log_scale();
            let mut chart = builder
                .build_cartesian_2d((x_min / 1.5..x_max * 1.5).log_scale(), y_range)
                .map_err(|err| e(&err))?;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc(y_label)
                .x_label_formatter(&|x| format!("{x:.0e}"))
                .y_label_formatter(&|y| format!("{y:.0e}"))
                .draw()
                .map_err(|err| e(&err))?;
            for ((label, color), points) in styles.into_iter().zip([ours, python]) {
                series(&mut chart, label, color, points)?;
            }
            legend(&mut chart)?;
        }
        root.present().map_err(|err| e(&err))?;
        Ok(())
    }

    fn series<'a, DB, X, Y>(
        chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
        label: &str,
        color: RGBColor,
        points: &[(f64, f64)],
    ) -> Result<(), String>
    where
        DB: DrawingBackend + 'a,
        X: Ranged<ValueType = f64>,
        Y: Ranged<ValueType = f64>,
    {
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|err| err.to_string())?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|err| err.to_string())?;
        Ok(())
    }

    fn legend<'a, DB, X, Y>(
        chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    ) -> Result<(), String>
    where
        DB: DrawingBackend + 'a,
        X: Ranged<ValueType = f64>,
        Y: Ranged<ValueType = f64>,
    {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|err| err.to_string())?;
        Ok(())
    }

    fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
        values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        })
    }
}
